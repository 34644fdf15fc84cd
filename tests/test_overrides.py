"""The one KEY=VALUE parser of `rlsparse run -p`, `rlsparse eval --param` and config overrides."""

from __future__ import annotations

import math

import pytest

from rlsparse_lib.errors import ConfigError
from rlsparse_lib.overrides import (
    format_assignment,
    parse_assignment,
    parse_assignments,
    parse_value,
)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("1", 1),
        ("1.5", 1.5),
        ("1e-5", 1e-5),
        ("-3E+2", -300.0),
        ("true", True),
        ("null", None),
        ("hub", "hub"),
        ('"1"', "1"),
        ("'1e-5'", "1e-5"),
        ("[1, 2]", [1, 2]),
        ("{a: 1}", {"a": 1}),
        ("", None),
        ("/tmp/out root", "/tmp/out root"),
    ],
)
def test_values_are_yaml_with_exponent_numbers_as_floats(raw: str, value: object) -> None:
    assert parse_value(raw) == value and type(parse_value(raw)) is type(value)


def test_assignments_keep_dotted_keys_and_the_last_value_wins() -> None:
    assert parse_assignment("train.lr=1e-5") == ("train.lr", 1e-5)
    assert parse_assignment("a=b=c") == ("a", "b=c")
    assert parse_assignments(["SEED=1", "SOURCE=hub", "SEED=2"], identifier=True) == {
        "SEED": 2,
        "SOURCE": "hub",
    }


@pytest.mark.parametrize(
    ("item", "kwargs", "match"),
    [
        ("SEED", {"flag": "-p"}, r"-p 'SEED': expected KEY=VALUE \(e\.g\. KEY=VALUE\)"),
        ("=1", {}, r"override '=1': expected KEY=VALUE"),
        ("train.lr=1", {"identifier": True, "flag": "-p"}, r"-p 'train.lr=1'"),
        ("a b=1", {}, r"override 'a b=1'"),
        ("x=[1, 2", {"flag": "--param"}, r"--param 'x=\[1, 2': the value is not valid YAML"),
    ],
)
def test_bad_items_are_named_in_a_config_error(item: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_assignment(item, **kwargs)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -7,
        1e-5,
        3e-05,
        1.5e20,
        0.1,
        "yes",
        "1e-5",
        "null",
        "a: b",
        [1, "x"],
        {"min_terms": 2},
        math.inf,
        -math.inf,
    ],
)
def test_format_then_parse_round_trips(value: object) -> None:
    assert parse_assignment(format_assignment("k.x", value)) == ("k.x", value)


def test_nan_round_trips() -> None:
    assert math.isnan(parse_value(format_assignment("k", math.nan).split("=", 1)[1]))


def test_all_three_callers_use_it() -> None:
    """Config overrides, notebook parameters and `eval --param` give the same values and errors."""
    from rlsparse_lib.experiments.papermill_runner import parse_params
    from rlsparse_lib.training.config import apply_overrides

    assert apply_overrides({"train": {}}, ["train.lr=1e-5"], "x") == {"train": {"lr": 1e-5}}
    assert parse_params(["SEED=1", "OUT_ROOT=/tmp/x"]) == {"SEED": 1, "OUT_ROOT": "/tmp/x"}
    with pytest.raises(ConfigError, match="-p 'SEED'"):
        parse_params(["SEED"])
    with pytest.raises(ConfigError, match="override 'lr'"):
        apply_overrides({}, ["lr"], "x")


def test_eval_param_errors_name_the_item(capsys) -> None:
    from rlsparse_lib.cli import main

    assert main(["eval", "tiny-random", "--param", "max_terms"]) == 2
    assert "--param 'max_terms': expected KEY=VALUE" in capsys.readouterr().err
