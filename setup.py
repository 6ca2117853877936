"""Build script: the Cython backend's extension module and its compiler flags.

All metadata lives in pyproject.toml.  ``pip install .`` (or ``pip install -e
.``) first renders ``fastopt/backends/_cython_kernels.pyx`` and ``.pxd`` from
their ``.tp`` templates and the rules of ``fastopt/algorithms`` (with
Cython's Tempita; ``fastopt/_codegen`` parses the family modules and never
imports them, so the build needs no Numba), then compiles the ``.pyx`` with

    -O3 -fopenmp -fno-math-errno

and never ``-march=native`` (a wheel must run on other x86-64 CPUs) nor
``-ffast-math`` (results must match the reference).  ``-fno-math-errno`` only
tells the compiler that ``sqrt`` need not set ``errno``, which lets it
vectorise the square roots.

On x86-64 with gcc or clang the same source is also compiled a second time,
as ``fastopt.backends._cython_kernels_avx2``, with

    -mavx2 -mno-fma -ffp-contract=off

(8 floats per vector instead of SSE2's 4, and no fused multiply-add, so the
results are the same bits).  The backend imports it only on a CPU that has
AVX2 (``fastopt.backends.cython_backend.ISA`` says which copy runs), so the
build still runs on any x86-64 CPU.

Environment variables:

``FASTOPT_NO_OPENMP=1``
    Build without OpenMP (every step runs serially).  Also the automatic
    fallback when the compiler cannot build an OpenMP program;
    ``fastopt info`` says which build you have.
``FASTOPT_NO_CYTHON=1``
    Do not build the extension at all (a pure-Python install: the ``numba``
    and ``numpy`` backends only).
``FASTOPT_NO_AVX2=1``
    Do not build the AVX2 copy (also skipped when the compiler refuses its
    flags).
"""
import os
import platform
import shutil
import tempfile

from setuptools import setup
from setuptools.command.build_ext import build_ext


def _flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


class BuildExt(build_ext):
    """build_ext that adds the optimisation and OpenMP flags the compiler takes."""

    def build_extensions(self):
        msvc = self.compiler.compiler_type == "msvc"
        compile_args = ["/O2", "/fp:precise"] if msvc else ["-O3", "-fno-math-errno"]
        link_args = []
        omp = None
        if _flag("FASTOPT_NO_OPENMP"):
            print("fastopt: FASTOPT_NO_OPENMP is set; building the Cython backend without "
                  "OpenMP (serial)")
        else:
            omp = self._openmp_flags(msvc)
            if omp is None:
                print("fastopt: the compiler cannot build OpenMP programs; building the "
                      "Cython backend without OpenMP (serial)")
        if omp is not None:
            compile_args += omp[0]
            link_args += omp[1]
        if msvc or not self._compiles(AVX2_FLAGS):
            self.extensions = [e for e in self.extensions if not e.name.endswith("_avx2")]
        for ext in self.extensions:
            ext.extra_compile_args = compile_args + list(ext.extra_compile_args or [])
            ext.extra_link_args = link_args + list(ext.extra_link_args or [])
        super().build_extensions()

    def _compiles(self, flags):
        """Whether the compiler builds a small program with ``flags``."""
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "flags_check.c")
            with open(path, "w") as f:
                f.write("int main(void) { return 0; }\n")
            try:
                self.compiler.compile([path], output_dir=tmp, extra_postargs=flags)
            except Exception:  # CompileError: the compiler does not take them
                return False
        return True

    def _openmp_flags(self, msvc):
        """(compile, link) flags for OpenMP, or None if a test program fails."""
        flags = (["/openmp"], []) if msvc else (["-fopenmp"], ["-fopenmp"])
        source = "#include <omp.h>\nint main(void) { return omp_get_max_threads() < 1; }\n"
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "omp_check.c")
            with open(path, "w") as f:
                f.write(source)
            try:
                objects = self.compiler.compile([path], output_dir=tmp,
                                                extra_postargs=flags[0])
                self.compiler.link_executable(objects, "omp_check", output_dir=tmp,
                                              extra_postargs=flags[1] or flags[0])
            except Exception:  # CompileError, LinkError: no usable OpenMP
                return None
        return flags


def _render_cython():
    """Render the Cython sources from the rules (the package fastopt/_codegen,
    loaded by path: importing fastopt would need its run-time dependencies)."""
    import importlib.util
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    folder = os.path.join(here, "fastopt", "_codegen")
    spec = importlib.util.spec_from_file_location(
        "_fastopt_codegen", os.path.join(folder, "__init__.py"),
        submodule_search_locations=[folder])
    codegen = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = codegen
    spec.loader.exec_module(codegen)
    codegen.render_cython(os.path.join(here, "fastopt"))


#: The second copy's flags (see above): AVX2 vectors, no fused multiply-add.
AVX2_FLAGS = ["-mavx2", "-mno-fma", "-ffp-contract=off"]


def _wants_avx2():
    return (not _flag("FASTOPT_NO_AVX2")
            and platform.machine().lower() in ("x86_64", "amd64"))


def _extensions():
    if _flag("FASTOPT_NO_CYTHON"):
        print("fastopt: FASTOPT_NO_CYTHON is set; not building the Cython backend")
        return []
    _render_cython()
    import numpy
    from Cython.Build import cythonize
    from setuptools import Extension

    common = dict(include_dirs=[numpy.get_include()],
                  define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
    exts = [Extension("fastopt.backends._cython_kernels",
                      ["fastopt/backends/_cython_kernels.pyx"], **common)]
    if _wants_avx2():
        src = "fastopt/backends/_cython_kernels.pyx"
        dst = "fastopt/backends/_cython_kernels_avx2.pyx"
        with open(src, encoding="utf-8") as f:
            text = f.read()
        old = None
        if os.path.exists(dst):
            with open(dst, encoding="utf-8") as f:
                old = f.read()
        if old != text:  # keep the time stamp (and Cython's build cache) otherwise
            shutil.copyfile(src, dst)
        exts.append(Extension("fastopt.backends._cython_kernels_avx2", [dst],
                              extra_compile_args=list(AVX2_FLAGS), **common))
    return cythonize(exts, compiler_directives={"language_level": "3"}, quiet=True)


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
