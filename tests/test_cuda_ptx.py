"""Every kernel of the cuda backend compiles for a real GPU (PTX), without one.

The CUDA simulator runs kernels as Python, so it accepts code that Numba's
CUDA compiler would reject.  This test compiles every kernel of
``fastopt/backends/_cuda_kernels.py`` -- the step kernel of every rule, the two
sums-of-squares reduction kernels and the element-wise helpers, for float32
and float64 -- with ``numba.cuda.compile_ptx`` for compute capability 7.5,
the oldest that CUDA 13 supports (PTX runs on every newer GPU), and the
8-bit-state step kernel (``step_q8_<rule>``, float32) of every rule that
keeps 8-bit state.  The step
kernels are generated from the rules (``_cuda_kernels.render``), so the check
also compiles :data:`EVERY_CALL`, a rule that uses every call and every
statement of the element language, whatever the registry's rules use today;
and no float32 kernel may do float64 arithmetic (a literal or a helper that
promotes would).

It needs NVIDIA's NVVM compiler and NVRTC libraries, about 310 MB on top of
numba-cuda, so they are not in the ``test`` extra but in their own ``ptx``
extra, which CI installs too (see ``.ci/run``)::

    pip install -e '.[test,ptx]' && python -m pytest tests/test_cuda_ptx.py

Without the libraries the test is skipped, except where
``FASTOPT_REQUIRE_PTX=1`` (set by CI), where that is a failure.
"""
import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fastopt.backends._q8 import refusal as q8_refusal
from fastopt.rule import RULES, Rule

ROOT = Path(__file__).resolve().parent.parent
NO_COMPILER = 3  # the subprocess's exit status when NVVM/NVRTC cannot be loaded


# A rule for the code generator's sake, never registered: every call of the
# element language (fastopt._codegen.CALLS), literals, augmented assignment
# and branches.  tests/test_cuda.py runs it against the Numba CPU loop.

def prepare_every_call(rate, power):
    return {"rate": rate, "power": power, "half": 0.5 * rate}


def element_every_call(g, w, state, rate, power, half):
    high = max(state, g)
    low = min(g, state)
    state = high - rate * low
    w = w - rate * sign(g) * sqrt(abs(state))  # noqa: F821 - the element language
    w += copysign(pow(abs(g), power), -g) * half  # noqa: F821
    if w > 1.0 and not (g < 0.0):
        w = w * 0.5
    elif w != w or g == 0.0:
        state = -state
    else:
        w = w - 2 ** -3 * w
    return w, state


EVERY_CALL = Rule("every_call", slots=("state",), scalars=("rate", "power"),
                  prepare=prepare_every_call, element=element_every_call)

COMPILE = textwrap.dedent("""
    import json, re, sys, types
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
    from numba.cuda import types as nt
    from fastopt.backends import _cuda_kernels as kernels
    assert not kernels.SIMULATOR
    sys.path.insert(0, "tests")
    from test_cuda_ptx import EVERY_CALL
    extra = [(f"step_every_call[{dt}]", kernels.step_function(EVERY_CALL),
              (nt.int64[:, ::1], nt.int64[::1], nt.int64[:, ::1], nt.float64[:, ::1],
               dt[::1], nt.UniTuple(nt.float64, 1 + len(EVERY_CALL.prepared))))
             for dt in (nt.float32, nt.float64)]
    # float64 arithmetic, comparisons and conversions to float64 (PTX writes
    # cvt.<rounding>.<to>.<from>: reading the float64 scalars, cvt.rn.f32.f64,
    # is expected)
    F64 = re.compile(r"\\b(?:(?:add|sub|mul|div|fma|sqrt|max|min|abs|neg|setp|copysign|"
                     r"ex2|lg2|rcp|rsqrt)[.a-z0-9]*\\.f64|cvt[.a-z]*\\.f64\\.[a-z0-9]+)\\b")
    for name, fn, sig in kernels.ptx_signatures() + extra:
        ptx, _ = cuda.compile_ptx(fn, sig, cc=CC)
        print(json.dumps({"name": name, "target": ".target sm_75" in ptx,
                          "entry": ".entry" in ptx, "sqrt": "sqrt.rn." in ptx,
                          "f64_ops": sorted(set(F64.findall(ptx))), "bytes": len(ptx)}))
""" % NO_COMPILER)


def uses_sqrt(rule):
    return any(isinstance(n, ast.Call) and "sqrt" in ast.unparse(n.func)
               for n in ast.walk(rule.element_ast))


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
    rules = {f"step_{name}": rule for name, rule in RULES.items()}
    rules.update({f"step_ema_{name}": rule for name, rule in RULES.items()})
    rules["step_every_call"] = EVERY_CALL
    reduces = {f"reduce_{name}" for name, rule in RULES.items() if rule.two_phase}
    expected = {f"{k}[{dt}]" for dt in ("float32", "float64")
                for k in set(rules) | reduces
                | {"sumsq_chunks", "lerp", "add_scaled", "add_mean", "fill"}}
    expected.add("sumsq_tensors")
    # 8-bit state (float32 only), and the fill that allocates its codes
    q8 = {f"step_q8_{name}": rule for name, rule in RULES.items() if q8_refusal(rule) is None}
    assert {"step_q8_adam", "step_q8_rmsprop", "step_q8_sgd_momentum",
            "step_q8_adagrad"} <= set(q8)
    rules.update(q8)
    expected |= {f"{k}[float32]" for k in q8} | {"fill[int8]", "fill[uint8]"}
    assert set(compiled) == expected
    for name, r in compiled.items():
        assert r["target"] and r["entry"], name
        rule = rules.get(name.split("[")[0])
        if rule is not None:  # IEEE square roots where the rule has one
            assert r["sqrt"] == uses_sqrt(rule), name
            if name.endswith("[float32]"):  # float32 arithmetic only
                assert r["f64_ops"] == [], (name, r["f64_ops"])


def test_ptx_signatures_cover_every_rule():
    """Without the compiler: the list the check compiles names every rule's
    step kernel, with its packed scalar tuple (clipvalue, then ``prepared``),
    and the 8-bit-state kernel of every rule that keeps such state."""
    code = textwrap.dedent("""
        import json
        from fastopt.backends import _cuda_kernels as kernels
        sigs = kernels.ptx_signatures()
        print(json.dumps([[(name, [str(sig[-1].dtype), sig[-1].count])
                           for name, fn, sig in sigs
                           if name.startswith("step_") and not name.startswith("step_ema_")
                           and not name.startswith("step_q8_")],
                          [(name, [str(sig[5].dtype), sig[5].count])
                           for name, fn, sig in sigs if name.startswith("step_ema_")],
                          [(name, [str(sig[-1].dtype), sig[-1].count])
                           for name, fn, sig in sigs if name.startswith("step_q8_")]]))
    """)
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    steps, emas, q8 = json.loads(out.stdout)
    got = dict(steps)
    want = {f"step_{name}[{dt}]": ["float64", 1 + len(rule.prepared)]
            for name, rule in RULES.items() for dt in ("float32", "float64")}
    assert got == want
    assert dict(emas) == {k.replace("step_", "step_ema_", 1): v for k, v in want.items()}
    assert {"step_adamax[float32]", "step_adamax_torch[float64]"} <= set(got)
    # 8-bit state: float32, every rule that keeps it
    assert dict(q8) == {f"step_q8_{name}[float32]": ["float64", 1 + len(rule.prepared)]
                        for name, rule in RULES.items() if q8_refusal(rule) is None}
