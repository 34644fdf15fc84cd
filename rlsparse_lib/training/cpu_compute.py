"""Is bf16 arithmetic native on this CPU? The verdict behind CPU runs' compute dtype.

Without bf16 matrix instructions (e.g. an AVX2-only x86-64 CPU) torch emulates bf16 matmuls
through fp32 conversions, about 40x slower than fp32 itself (a 1024³ matmul: 2.57 s vs 0.065 s on
an AVX2 AMD EPYC), so a CPU run's bf16 autocast would crawl there. The rule, conservative (when in
doubt the verdict is *emulated*, and fp32 compute is never slow):

* ``RLSPARSE_CPU_BF16=native`` or ``=emulated`` in the environment decides outright
  (``auto`` or unset: detect);
* x86-64: native iff every CPU lists ``avx512_bf16`` or ``amx_bf16`` in ``/proc/cpuinfo`` *and*
  torch dispatches AVX512 kernels (``torch.backends.cpu.get_cpu_capability()`` is ``AVX512`` or
  above; ``ATEN_CPU_CAPABILITY=avx2`` therefore makes it emulated);
* aarch64: native iff every CPU lists the ARMv8.6 ``bf16`` feature (``Features`` in
  ``/proc/cpuinfo``; Graviton3, Neoverse V1/V2 and later);
* anything else, or unreadable CPU flags (macOS, Windows): emulated.

:func:`detect_cpu_bf16` takes every input as an argument, so tests fake any CPU.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rlsparse_lib.errors import ConfigError

#: the environment override
ENV = "RLSPARSE_CPU_BF16"
CHOICES = ("native", "emulated", "auto")
X86_FLAGS = ("avx512_bf16", "amx_bf16")
ARM_FLAGS = ("bf16",)
#: torch CPU capabilities whose kernels can use AVX512-BF16 / AMX
X86_CAPABILITIES = ("AVX512", "AVX512_BF16", "AMX")


@dataclass(frozen=True)
class CpuBf16:
    """The verdict: ``native`` bf16 compute or not, and why.

    Attributes:
        native: bf16 matmuls run on native instructions (as fast as or faster than fp32).
        reason: one line saying what decided it.
        capability: ``torch.backends.cpu.get_cpu_capability()`` (``AVX2``, ``AVX512``, ``SVE256``…).
        machine: ``platform.machine()``.
        flags: the bf16 CPU flags found (on every CPU).
        source: ``detected`` or the override (``RLSPARSE_CPU_BF16=…``).
    """

    native: bool
    reason: str
    capability: str
    machine: str
    flags: tuple[str, ...] = field(default_factory=tuple)
    source: str = "detected"

    def describe(self) -> dict[str, object]:
        """The manifest's record of it."""
        return {
            "bf16_native": self.native,
            "reason": self.reason,
            "torch_capability": self.capability,
            "machine": self.machine,
            "bf16_flags": list(self.flags),
            "source": self.source,
        }


def cpu_flags(cpuinfo: str) -> set[str]:
    """Flags listed by *every* processor in a ``/proc/cpuinfo`` text (x86 ``flags``, ARM
    ``Features``); empty when there are none."""
    common: set[str] | None = None
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            found = set(value.split())
            common = found if common is None else common & found
    return common or set()


def detect_cpu_bf16(
    *,
    capability: str | None = None,
    cpuinfo: str | None = None,
    machine: str | None = None,
    env: Mapping[str, str] | None = None,
) -> CpuBf16:
    """Decide whether bf16 compute is native on this CPU (rule: the module docstring).

    Args:
        capability: torch's CPU capability (default: ``torch.backends.cpu.get_cpu_capability()``).
        cpuinfo: ``/proc/cpuinfo`` text (default: read it; ``""`` when unreadable).
        machine: ``platform.machine()`` (default: this machine's).
        env: environment holding the override (default: ``os.environ``).

    Raises:
        ConfigError: the override has a value other than native / emulated / auto.
    """
    if capability is None:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    if machine is None:
        machine = platform.machine()
    if cpuinfo is None:
        cpuinfo = _read_cpuinfo()
    env = os.environ if env is None else env
    arch = machine.lower()
    x86 = arch in ("x86_64", "amd64", "i386", "i686")
    arm = arch in ("aarch64", "arm64")
    flags = cpu_flags(cpuinfo)
    wanted = X86_FLAGS if x86 else ARM_FLAGS if arm else ()
    found = tuple(f for f in wanted if f in flags)

    forced = env.get(ENV, "").strip().lower()
    if forced not in ("", *CHOICES):
        raise ConfigError(f"{ENV}={env[ENV]!r}: expected one of {', '.join(CHOICES)}")
    if forced in ("native", "emulated"):
        return CpuBf16(
            forced == "native",
            f"forced by {ENV}={forced}",
            capability,
            machine,
            found,
            f"{ENV}={forced}",
        )

    def verdict(native: bool, reason: str) -> CpuBf16:
        return CpuBf16(native, reason, capability, machine, found)

    if not flags:
        return verdict(False, f"no CPU flags readable on {machine} (conservative: emulated)")
    if x86:
        if not found:
            return verdict(False, f"{machine} CPU without {' / '.join(X86_FLAGS)}")
        if capability.upper() not in X86_CAPABILITIES:
            return verdict(
                False, f"CPU lists {', '.join(found)} but torch dispatches {capability} kernels"
            )
        return verdict(True, f"CPU lists {', '.join(found)}; torch dispatches {capability} kernels")
    if arm:
        if not found:
            return verdict(False, f"{machine} CPU without the bf16 feature")
        return verdict(True, f"{machine} CPU lists the bf16 feature (torch: {capability})")
    return verdict(False, f"no bf16 rule for {machine} (conservative: emulated)")


def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
