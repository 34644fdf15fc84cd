"""Output paths are checked before any work: one line naming the path, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

import rlsparse_lib.diff.engine as engine
from rlsparse_lib.atomic import check_writable
from rlsparse_lib.cli import main
from rlsparse_lib.errors import OutputError

from .ckpt_factory import save_hf
from .test_diff_exact import planted


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    base, tuned, _ = planted()
    return save_hf(tmp_path / "base", base), save_hf(tmp_path / "tuned", tuned)


def _bad_paths(tmp_path: Path) -> dict[str, str]:
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    (tmp_path / "adir").mkdir()
    return {
        "under /proc": "/proc/rlsparse-test/out.json",
        "a directory": str(tmp_path / "adir"),
        "under a file": str(a_file / "sub" / "out.json"),
    }


@pytest.mark.parametrize("option", ["--json", "--csv", "--mask-out"])
def test_diff_refuses_before_the_pass(tmp_path: Path, pair, option, capsys, monkeypatch) -> None:
    def never(*a, **k):
        raise AssertionError("the diff ran although its output cannot be written")

    monkeypatch.setattr(engine, "diff_checkpoints", never)
    for why, bad in _bad_paths(tmp_path).items():
        rc = main(["diff", str(pair[0]), str(pair[1]), option, bad, "-q"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2, why
        assert len(err) == 1 and bad in err[0] and "Traceback" not in err[0], (why, err)
        assert ".tmp" not in err[0]
    assert not list(tmp_path.glob("**/.rlsparse-probe.*"))


def test_other_commands_check_their_outputs(tmp_path: Path, pair, capsys) -> None:
    bad = str(tmp_path / "plain.txt" / "x.json")
    (tmp_path / "plain.txt").write_text("x")
    for argv in (
        ["dynamics", str(pair[0]), str(pair[1]), "--json", bad],
        ["rank", str(pair[0]), str(pair[1]), "--csv", bad],
        ["closeness", str(pair[1]), str(pair[1]), "--init", str(pair[0]), "--json", bad],
    ):
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2 and bad in err, (argv, err)


def test_check_writable_accepts_new_folders_and_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "new" / "deeper" / "r.json"
    check_writable(target)
    check_writable(tmp_path / "new-root", directory=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with pytest.raises(OutputError, match="is a directory"):
        check_writable(tmp_path)
