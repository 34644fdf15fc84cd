"""Builds the compiled CPU kernels; everything else is in pyproject.toml.

The diff kernel (rlsparse_lib/diff/kernels/diffcore.c, bound by _diffcore.pyx) and the mask
kernels (rlsparse_lib/masks/bitcore.c, bound by _bitcore.pyx) are compiled with OpenMP when the
compiler supports it, single-threaded otherwise, and with SSSE3 where the building CPU has it.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP = ["-fopenmp"]
OPTIMIZE = ["-O3"]
# SSSE3 (every x86-64 CPU since 2006): the FP8 kernel's byte-set lookups (pshufb); used where the
# compiler takes the flag and the building CPU runs it, the kernels' SSE2 code otherwise
SSSE3 = ["-mssse3"]
PROBES = {
    "openmp": "#include <omp.h>\nint main(void) { return omp_get_max_threads() < 1; }\n",
    "ssse3": 'int main(void) { return !__builtin_cpu_supports("ssse3"); }\n',
}


class BuildExt(build_ext):
    """Adds the OpenMP and SSSE3 flags where the compiler takes them and the CPU runs them."""

    def build_extensions(self) -> None:
        flags = OPENMP if self._runs("openmp", OPENMP) else []
        if not flags:
            print("rlsparse: the C compiler lacks OpenMP; the CPU kernels run on one thread")
        simd = SSSE3 if self._runs("ssse3", SSSE3) else []
        for ext in self.extensions:
            ext.extra_compile_args = [*OPTIMIZE, *simd, *flags]
            ext.extra_link_args = flags
        super().build_extensions()

    def _runs(self, probe: str, flags: list[str]) -> bool:
        """Whether PROBES[probe] compiles and links with ``flags`` and exits 0."""
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, f"{probe}.c")
            with open(src, "w") as fh:
                fh.write(PROBES[probe])
            try:
                objs = self.compiler.compile([src], output_dir=tmp, extra_postargs=flags)
                self.compiler.link_executable(objs, probe, output_dir=tmp, extra_postargs=flags)
                subprocess.run([os.path.join(tmp, probe)], check=True, timeout=60)
            except Exception:
                return False
        return True


setup(
    ext_modules=cythonize(
        [
            Extension(
                "rlsparse_lib.diff.kernels._diffcore",
                ["rlsparse_lib/diff/kernels/_diffcore.pyx", "rlsparse_lib/diff/kernels/diffcore.c"],
                include_dirs=["rlsparse_lib/diff/kernels"],
            ),
            Extension(
                "rlsparse_lib.masks._bitcore",
                ["rlsparse_lib/masks/_bitcore.pyx", "rlsparse_lib/masks/bitcore.c"],
                include_dirs=["rlsparse_lib/masks"],
            ),
        ],
        language_level=3,
    ),
    cmdclass={"build_ext": BuildExt},
)
