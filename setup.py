"""Builds the compiled CPU kernels; everything else is in pyproject.toml.

The diff kernel (rlsparse_lib/diff/kernels/diffcore.c, bound by _diffcore.pyx) and the mask
kernels (rlsparse_lib/masks/bitcore.c, bound by _bitcore.pyx) are compiled with OpenMP when the
compiler supports it, single-threaded otherwise.
"""

from __future__ import annotations

import os
import tempfile

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP = ["-fopenmp"]
OPTIMIZE = ["-O3"]


class BuildExt(build_ext):
    """Adds OpenMP flags where the compiler accepts them."""

    def build_extensions(self) -> None:
        flags = OPENMP if self._accepts(OPENMP) else []
        if not flags:
            print("rlsparse: the C compiler lacks OpenMP; the CPU kernels run on one thread")
        for ext in self.extensions:
            ext.extra_compile_args = [*OPTIMIZE, *flags]
            ext.extra_link_args = flags
        super().build_extensions()

    def _accepts(self, flags: list[str]) -> bool:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "omp.c")
            with open(src, "w") as fh:
                fh.write("#include <omp.h>\nint main(void) { return omp_get_max_threads() < 1; }\n")
            try:
                objs = self.compiler.compile([src], output_dir=tmp, extra_postargs=flags)
                self.compiler.link_executable(objs, "omp", output_dir=tmp, extra_postargs=flags)
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
