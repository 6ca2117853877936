"""Every kernel of the cuda backend compiles for a real GPU (PTX), without one.

The CUDA simulator runs kernels as Python, so it accepts code that Numba's
CUDA compiler would reject.  This test compiles every kernel of
``fastopt/backends/_cuda_kernels.py`` -- the step kernel of every rule, the two
sums-of-squares reduction kernels and the element-wise helpers, for float32
and float64 -- with ``numba.cuda.compile_ptx`` for compute capability 7.5,
the oldest that CUDA 13 supports (PTX runs on every newer GPU).

It needs NVIDIA's NVVM compiler and NVRTC libraries, about 310 MB on top of
numba-cuda, so they are not in the ``test`` extra but in their own ``ptx``
extra, which CI installs too (see ``.ci/run``)::

    pip install -e '.[test,ptx]' && python -m pytest tests/test_cuda_ptx.py

Without the libraries the test is skipped, except where
``FASTOPT_REQUIRE_PTX=1`` (set by CI), where that is a failure.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NO_COMPILER = 3  # the subprocess's exit status when NVVM/NVRTC cannot be loaded

COMPILE = textwrap.dedent("""
    import json, sys, types
    try:
        import numba_cuda  # noqa: F401
        from numba.cuda.cudadrv import nvrtc
        from numba.cuda.cudadrv.nvvm import NVVM
        NVVM()
        nvrtc.get_supported_ccs()
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}")
        sys.exit(%d)
    # numba-cuda compiles the device functions a kernel calls for the current
    # GPU; without a GPU there is none, so give it the target's capability.
    import numba.cuda.dispatcher as dispatcher
    CC = (7, 5)
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=CC)
    from numba import cuda
    from fastopt.backends import _cuda_kernels as kernels
    assert not kernels.SIMULATOR
    for name, fn, sig in kernels.ptx_signatures():
        ptx, _ = cuda.compile_ptx(fn, sig, cc=CC)
        print(json.dumps({"name": name, "target": ".target sm_75" in ptx,
                          "entry": ".entry" in ptx, "sqrt": "sqrt.rn." in ptx,
                          "bytes": len(ptx)}))
""" % NO_COMPILER)


@pytest.mark.ptx
def test_every_kernel_compiles_to_ptx():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", COMPILE], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    if out.returncode == NO_COMPILER:
        reason = f"no CUDA compiler libraries ({out.stdout.strip()}); pip install -e '.[ptx]'"
        if os.environ.get("FASTOPT_REQUIRE_PTX") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    assert out.returncode == 0, out.stderr[-3000:]
    compiled = {r["name"]: r for r in map(json.loads, out.stdout.splitlines())}
    from fastopt._rules import RULES
    steps = {f"step_{name}" for name, r in RULES.items() if r.convention == "keras"}
    expected = {f"{k}[{dt}]" for dt in ("float32", "float64")
                for k in steps | {"sumsq_chunks", "lerp", "add_scaled", "divide", "fill"}}
    expected.add("sumsq_tensors")
    assert set(compiled) == expected
    for name, r in compiled.items():
        assert r["target"] and r["entry"], name
        uses_sqrt = any(k in name for k in ("adagrad", "rmsprop", "adam"))
        assert r["sqrt"] == uses_sqrt, name  # IEEE square roots where the rule has one
