"""CPU bf16 detection and the fp32-compute fallback: the verdict from faked CPUs, the override, and
tiny runs that compute in fp32 (no autocast) with fp32 master weights and bf16 checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from rlsparse_lib.errors import ConfigError
from rlsparse_lib.training import builders
from rlsparse_lib.training.builders import common_args
from rlsparse_lib.training.config import config_from_dict
from rlsparse_lib.training.cpu_compute import ENV, cpu_flags, detect_cpu_bf16
from rlsparse_lib.training.precision_modes import Precision, compute_line, cpu_line
from rlsparse_lib.training.runner import train

from .test_train_factory import make_tiny, tiny_config

AVX2 = "fpu sse2 avx avx2 fma"
AVX512_BF16 = AVX2 + " avx512f avx512bw avx512_bf16"
AMX = AVX2 + " avx512f amx_bf16 amx_tile"


def x86(*cpus: str) -> str:
    """A /proc/cpuinfo text with one processor block per flags string."""
    return "".join(f"processor\t: {i}\nflags\t\t: {f}\n\n" for i, f in enumerate(cpus))


def arm(features: str) -> str:
    return f"processor\t: 0\nFeatures\t: {features}\nCPU implementer\t: 0x41\n\n"


def detect(cpuinfo: str, capability: str = "AVX512", machine: str = "x86_64", **env: str):
    return detect_cpu_bf16(capability=capability, cpuinfo=cpuinfo, machine=machine, env=env)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory)


# ---- detection ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cpuinfo", "capability", "machine", "native", "why"),
    [
        (x86(AVX512_BF16, AVX512_BF16), "AVX512", "x86_64", True, "avx512_bf16"),
        (x86(AMX), "AVX512", "x86_64", True, "amx_bf16"),
        (x86(AVX2, AVX2), "AVX2", "x86_64", False, "without avx512_bf16 / amx_bf16"),
        (x86(AVX512_BF16), "AVX2", "x86_64", False, "torch dispatches AVX2"),
        (x86(AVX512_BF16, AVX2), "AVX512", "x86_64", False, "without"),  # every CPU must have it
        (arm("fp asimd sve bf16 i8mm"), "SVE256", "aarch64", True, "bf16 feature"),
        (arm("fp asimd crc32 atomics"), "DEFAULT", "aarch64", False, "without the bf16 feature"),
        ("", "DEFAULT", "arm64", False, "no CPU flags readable"),
        (x86(AVX512_BF16), "VSX", "ppc64le", False, "no bf16 rule for ppc64le"),
    ],
    ids=[
        "avx512-bf16",
        "amx",
        "avx2",
        "avx2-dispatch",
        "mixed-cores",
        "arm-bf16",
        "arm",
        "mac",
        "ppc",
    ],
)
def test_detection_from_faked_cpus(
    cpuinfo: str, capability: str, machine: str, native: bool, why: str
) -> None:
    v = detect(cpuinfo, capability, machine)
    assert v.native is native and why in v.reason and v.source == "detected"
    assert v.capability == capability and v.machine == machine
    d = v.describe()
    assert d["bf16_native"] is native and d["torch_capability"] == capability


def test_override_forces_either_verdict() -> None:
    forced = detect(x86(AVX2), "AVX2", **{ENV: "native"})
    assert forced.native and forced.source == f"{ENV}=native" and ENV in forced.reason
    assert forced.capability == "AVX2"  # what the CPU is, recorded anyway
    assert not detect(x86(AVX512_BF16), **{ENV: " Emulated "}).native
    assert detect(x86(AVX512_BF16), **{ENV: "auto"}).source == "detected"
    assert detect(x86(AVX512_BF16), **{ENV: ""}).native
    with pytest.raises(ConfigError, match=f"{ENV}='fast'"):
        detect(x86(AVX2), **{ENV: "fast"})


def test_cpu_flags_are_those_of_every_processor() -> None:
    assert cpu_flags(x86("a b c", "b c d")) == {"b", "c"}
    assert cpu_flags("no flags here") == set()


def test_this_machine_gets_a_verdict(monkeypatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    v = detect_cpu_bf16()
    assert v.capability == torch.backends.cpu.get_cpu_capability() and v.reason
    assert cpu_line(v).startswith("CPU bf16: ")


# ---- what the verdict does to each mode --------------------------------------------------------
def test_precision_on_a_cpu_without_native_bf16() -> None:
    slow = detect(x86(AVX2), "AVX2")
    fast = detect(x86(AVX512_BF16))
    mixed = Precision.for_device("mixed", "cpu", slow)
    assert (mixed.weights, mixed.compute, mixed.autocast_bf16) == ("float32", "float32", False)
    assert mixed.keeps_fp32 and "fp32 compute" in mixed.note
    assert Precision.for_device("mixed", "cpu", fast).compute == "bfloat16"
    assert Precision.for_device("mixed", "cpu", fast).autocast_bf16
    assert Precision.for_device("mixed", "cuda", slow).autocast_bf16  # GPU runs are unchanged
    pure = Precision.for_device("bf16", "cpu", slow)  # bf16 weights are the mode's point
    assert (pure.weights, pure.compute, pure.keeps_fp32) == ("bfloat16", "bfloat16", False)
    assert "emulated" in pure.note
    fp32 = Precision.for_device("fp32", "cpu", slow)
    assert fp32.compute == "float32" and fp32 == Precision("fp32", fast_bf16=False)


def test_trainer_args_follow_the_override(tiny_dir: Path, monkeypatch) -> None:
    cfg = config_from_dict(tiny_config(tiny_dir, "sft"))
    monkeypatch.setenv(ENV, "emulated")
    assert common_args(cfg, Path("unused"), use_cpu=True)["bf16"] is False
    assert common_args(cfg, Path("unused"), use_cpu=False)["bf16"] is True  # CUDA
    monkeypatch.setenv(ENV, "native")
    assert common_args(cfg, Path("unused"), use_cpu=True)["bf16"] is True


# ---- runs --------------------------------------------------------------------------------------
def _spy_on_compute(monkeypatch) -> dict[str, set]:
    """Record the trainer's autocast flag and the dtypes of every Linear's output and weight."""
    seen: dict[str, set] = {"autocast": set(), "out": set(), "weight": set()}
    real = builders.build_trainer

    def spy(cfg, model, *args, **kwargs):
        trainer = real(cfg, model, *args, **kwargs)
        seen["autocast"].add(trainer.args.bf16)

        def hook(module, inputs, output) -> None:
            if torch.is_grad_enabled():  # training forwards, not the evaluation's generation
                seen["out"].add(output.dtype)
                seen["weight"].add(module.weight.dtype)

        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.register_forward_hook(hook)
        return trainer

    monkeypatch.setattr(builders, "build_trainer", spy)
    return seen


def _dtypes(folder: Path) -> set[torch.dtype]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118


@pytest.mark.parametrize(
    ("verdict", "compute"), [("emulated", torch.float32), ("native", torch.bfloat16)]
)
def test_mixed_run_computes_per_verdict_and_keeps_fp32_master(
    tmp_path: Path, tiny_dir: Path, monkeypatch, verdict: str, compute: torch.dtype
) -> None:
    monkeypatch.setenv(ENV, verdict)
    seen = _spy_on_compute(monkeypatch)
    cfg = config_from_dict(tiny_config(tiny_dir, "sft", name=f"cpu-{verdict}"))
    result = train(cfg, out_root=tmp_path, progress=False)
    assert seen["autocast"] == {verdict == "native"}
    assert seen["out"] == {compute}  # the forward's matmuls ran in this dtype
    assert seen["weight"] == {torch.float32}  # fp32 master weights either way
    m = result.manifest
    assert m["precision"]["compute"] == str(compute).removeprefix("torch.")
    assert m["precision"]["weights"] == "float32"
    assert m["precision"]["trainer_bf16_autocast"] is (verdict == "native")
    cpu = m["platform"]["cpu"]
    assert cpu["bf16_native"] is (verdict == "native") and cpu["source"] == f"{ENV}={verdict}"
    assert cpu["torch_capability"] == torch.backends.cpu.get_cpu_capability()
    assert cpu["reason"] == f"forced by {ENV}={verdict}"
    for c in m["checkpoints"]:
        assert _dtypes(result.path / c["bf16"]) == {torch.bfloat16}
        assert _dtypes(result.path / c["fp32"]) == {torch.float32}
    assert m["final_diff"]["fp32"]["n_changed"] > 0 and "bf16" in m["final_diff"]
    line = compute_line(m)
    assert line.startswith(f"compute: {m['precision']['compute']} on cpu (precision mixed")
    assert f"CPU bf16 {verdict}: forced by {ENV}={verdict}" in line


def test_bad_override_is_an_error_before_anything_is_written(
    tmp_path: Path, tiny_dir: Path, monkeypatch
) -> None:
    monkeypatch.setenv(ENV, "yes")
    with pytest.raises(ConfigError, match=ENV):
        train(config_from_dict(tiny_config(tiny_dir, "sft")), out_root=tmp_path, progress=False)
    assert not (tmp_path / "data" / "runs").exists() or not any(
        (tmp_path / "data" / "runs").iterdir()
    )


def test_compute_line_of_an_older_manifest() -> None:
    old = {"precision": {"mode": "mixed", "weights": "float32", "compute": "bfloat16"}}
    old["platform"] = {"device": "cpu"}
    assert compute_line(old) == (
        "compute: bfloat16 on cpu (precision mixed, weights float32); "
        "CPU bf16 verdict not recorded (a run made before it was)"
    )
