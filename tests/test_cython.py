"""The Cython backend's own tests (the shared tables run it like every backend).

* its rendered C ``prepare()`` gives the same bits as ``Rule.pack``;
* results are bit-identical for any thread count and either driver;
* the plan rejects gradients that would make it read out of bounds;
* without the extension ``import fastopt`` works and asking for the backend
  says how to build it;
* another extension can ``cimport`` the ``.pxd`` and call every kernel under
  ``nogil`` (rendered from the registry and compiled here, at test time,
  against the installed package).
"""
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fastopt
from fastopt.rule import RULES
from fastopt.backends import numpy_backend as ref_backend

from cases import gradient
from optim_db import DB, step_inputs, with_conventions
from test_kernels import assert_close, initial_state, kappa

HAVE_CYTHON = "cython" in fastopt.available_backends()
needs_cython = pytest.mark.skipif(not HAVE_CYTHON, reason="the Cython extension is not built")


@needs_cython
@pytest.mark.parametrize("rule_name", list(RULES))
def test_c_packing_equals_rules_pack_bit_for_bit(rule_name):
    cb = fastopt.get_backend("cython")
    rule = RULES[rule_name]
    rng = np.random.default_rng(len(rule_name))
    for trial in range(200):
        scalars = [float(x) for x in rng.random(len(rule.scalars))]
        if "step" in rule.scalars:  # step 1 takes its own branch
            scalars[rule.scalars.index("step")] = int(rng.integers(1, 30))
        clip = math.inf if trial % 2 else float(rng.random())
        expected = tuple(float(x) for x in rule.pack(scalars, clip))
        got = cb._ext.pack(cb.rule_number(rule), scalars, clip)
        assert got == expected, (rule_name, scalars, got, expected)


@pytest.fixture
def restore_threads():
    cy = fastopt.get_backend("cython")
    before = (cy.get_num_threads(), cy.get_parallel_threshold("float32"),
              cy.get_parallel_threshold("float64"))
    yield cy
    cy.set_num_threads(before[0])
    cy.set_parallel_threshold(None, "float32")  # no override: the tuned values
    cy.set_parallel_threshold(None, "float64")


@needs_cython
@pytest.mark.parametrize("clip", [None, "clipnorm", "global_clipnorm"])
@pytest.mark.parametrize("row,convention", with_conventions())
def test_results_do_not_depend_on_threads_or_threshold(restore_threads, row, clip, convention):
    """Bit-identical with 1, 2 or 3 OpenMP threads and the serial or parallel
    driver, over tensors of several chunks (so the chunked sums of squares of
    clipping are exercised too), float32 and float64 in one optimizer."""
    if convention not in row.conventions:
        pytest.skip(f"{row.id} has no {convention} convention")
    cy = restore_threads
    cls = row.cls
    kw = {**row.kwargs, "learning_rate": row.learning_rate, "convention": convention}
    if clip:
        kw[clip] = 1.0
    rng = np.random.default_rng(11)
    shapes = [(40_000,), (16_385,), (3, 7), (16_384,)]
    dtypes = [np.float32, np.float64, np.float32, np.float64]
    start = [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)]
    grads = [[gradient(rng, s, d, k) for s, d in zip(shapes, dtypes)] for k in range(6)]
    results = []
    for threads in (1, 2, 3):
        for threshold in (0, 2 ** 62):
            cy.set_num_threads(threads)
            cy.set_parallel_threshold(threshold, "float32")
            cy.set_parallel_threshold(threshold, "float64")
            params = [p.copy() for p in start]
            opt = cls(params, backend="cython", **kw)
            for g in grads:
                opt.step(g)
            results.append((params, opt.state_dict()["slots"]))
    base_params, base_slots = results[0]
    for params, slots in results[1:]:
        for a, b in zip(base_params, params):
            assert np.array_equal(a, b, equal_nan=True)
        for k in base_slots:
            assert np.array_equal(slots[k], base_slots[k], equal_nan=True), k


@needs_cython
def test_sums_of_squares_equal_numba_bit_for_bit():
    """Both backends sum each chunk with the same four accumulators in the
    same order, so clipping norms agree exactly."""
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal(n).astype(dt) for n, dt in
             [(1, np.float32), (16_384 * 3 + 5, np.float32), (7, np.float32)]]
    params = [np.zeros_like(g) for g in grads]
    norms = {}
    for name in ("cython", "numba"):
        if name in fastopt.available_backends():
            plan = fastopt.get_backend(name).Plan(RULES["sgd"], params, [])
            norms[name] = plan.sumsq(grads).copy()
    expected = [float(np.sum(g.astype(np.float64) ** 2)) for g in grads]
    np.testing.assert_allclose(norms["cython"], expected, rtol=1e-13)
    if "numba" in norms:
        assert np.array_equal(norms["cython"], norms["numba"])


@needs_cython
def test_plan_rejects_gradients_it_cannot_read_safely():
    cy = fastopt.get_backend("cython")
    p = np.zeros(8, np.float32)
    m, v = np.zeros(8, np.float32), np.zeros(8, np.float32)
    plan = cy.Plan(RULES["adam"], [p], [[m], [v]])
    pt = np.array([[1.0], [1.0], [0.0]])
    sc = (0.1, 0.9, 0.999, 1e-7)
    for bad, err in [(np.zeros(7, np.float32), ValueError), (np.zeros(8), ValueError),
                     (np.zeros(16, np.float32)[::2], ValueError), ([0.0] * 8, TypeError)]:
        with pytest.raises(err):
            plan.step([bad], pt, sc)
    with pytest.raises(ValueError, match="expected 1 gradients"):
        plan.step([], pt, sc)
    with pytest.raises(ValueError, match="expected 4 scalars"):
        plan.step([np.ones(8, np.float32)], pt, sc[:3])
    assert not p.any() and not m.any() and not v.any()
    plan.step([None], pt, sc)           # None skips the tensor
    assert not p.any()


def test_import_without_the_extension_says_how_to_build_it():
    code = textwrap.dedent("""
        import sys
        sys.modules["fastopt.backends._cython_kernels"] = None   # as if never built
        import numpy as np, fastopt
        assert "cython" not in fastopt.available_backends(), fastopt.available_backends()
        assert "numba" in fastopt.available_backends()
        for ask in (lambda: fastopt.get_backend("cython"),
                    lambda: fastopt.Adam(np.ones(3), backend="cython")):
            try:
                ask()
            except ImportError as e:
                assert "pip install -e ." in str(e) and "cython" in str(e), e
            else:
                raise AssertionError("no ImportError")
        opt = fastopt.Adam(np.ones(3))   # auto still works
        opt.step(np.ones(3))
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# -- the cimport test ------------------------------------------------------------------

# The rules whose C-level kernels the user also calls without the optional
# arguments (their defaults: no decay, no scaling, no clipping).
CALLED_WITH_DEFAULTS = ("adam", "sgd")


def user_pyx():
    """A user's extension that ``cimport``s every kernel of the registry and
    calls it under ``nogil``: ``call(name, p, g, s0, s1, ..., scalars, keep,
    gscale, l2, clip)``, one branch per rule, rendered from the rules' slots
    and scalars (what the ``.pxd`` signatures are made of)."""
    rules = list(RULES.values())
    nslots = max(len(r.slots) for r in rules)
    nscalars = max(len(r.scalars) for r in rules)
    names = [r.name for r in rules]
    slot_args = "".join(f", floating[::1] s{i}" for i in range(nslots))
    slot_ptrs = "".join(f"    cdef floating* p{i} = &s{i}[0]\n" for i in range(nslots))
    branches = []
    for name in CALLED_WITH_DEFAULTS:
        r = RULES[name]
        args = ["w", "d", *(f"p{i}" for i in range(len(r.slots))), "n",
                *(f"c[{i}]" for i in range(len(r.scalars)))]
        branches.append(f"defaults and k == {names.index(name)}:\n"
                        f"            {name}({', '.join(args)})")
    for k, r in enumerate(rules):
        args = ["w", "d", *(f"p{i}" for i in range(len(r.slots))), "n",
                *(f"c[{i}]" for i in range(len(r.scalars))), "keep", "gscale", "l2", "clip"]
        branches.append(f"k == {k}:\n            {r.name}({', '.join(args)})")
    ladder = "        if " + "\n        elif ".join(branches)
    cimports = ",\n    ".join(names)
    return f'''
# cython: language_level=3, boundscheck=False, wraparound=False
"""A user's extension: calls fastopt's C-level kernels without the GIL."""
from cython cimport floating
from libc.math cimport INFINITY
from fastopt.backends._cython_kernels cimport (
    sumsq,
    {cimports})

NAMES = {names!r}
NSLOTS = {nslots}


def norm2(floating[::1] x):
    cdef double out
    with nogil:
        out = sumsq(&x[0], x.shape[0])
    return out


def call(name, floating[::1] p, floating[::1] g{slot_args}, scalars,
         double keep, double gscale, double l2, double clip):
    """Run kernel ``name``; with default extras, call some without the optional ones."""
    cdef int k = NAMES.index(name)
    cdef Py_ssize_t n = p.shape[0]
    cdef double c[{nscalars}]
    cdef int i
    cdef bint defaults = keep == 1.0 and gscale == 1.0 and l2 == 0.0 and clip == INFINITY
    for i in range({nscalars}):
        c[i] = scalars[i] if i < len(scalars) else 0.0
    cdef floating* w = &p[0]
    cdef floating* d = &g[0]
{slot_ptrs}    with nogil:
{ladder}
'''


BUILD_USER = '''
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

ext = Extension("fastopt_user", ["fastopt_user.pyx"], include_dirs=[numpy.get_include()],
                extra_compile_args=["-O1"])
setup(ext_modules=cythonize([ext], include_path=[{root!r}], quiet=True),
      script_args=["build_ext", "--inplace", "-q"])
'''


@pytest.fixture(scope="module")
def user_extension(tmp_path_factory):
    """Compile a tiny extension that cimports fastopt (via the installed package's .pxd)."""
    if not HAVE_CYTHON:
        pytest.skip("the Cython extension is not built")
    pytest.importorskip("Cython")
    pytest.importorskip("setuptools")
    root = Path(fastopt.__file__).resolve().parent.parent   # holds fastopt/backends/*.pxd
    assert (root / "fastopt" / "backends" / "_cython_kernels.pxd").is_file(), \
        "the .pxd is not installed with the package"
    tmp = tmp_path_factory.mktemp("cimport_user")
    (tmp / "fastopt_user.pyx").write_text(user_pyx())
    (tmp / "build_user.py").write_text(BUILD_USER.format(root=str(root)))
    out = subprocess.run([sys.executable, "build_user.py"], cwd=tmp, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    sys.path.insert(0, str(tmp))
    try:
        import fastopt_user
    finally:
        sys.path.remove(str(tmp))
    return fastopt_user


@needs_cython
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("rule_name", list(RULES))
def test_cimported_kernels_match_reference_under_nogil(user_extension, rule_name, dtype):
    """Every C-level kernel, called from another extension without the GIL,
    against the float64 reference (test_kernels' tolerance) and bit for bit
    against the backend's Python-level kernel."""
    rule = RULES[rule_name]
    py_kernel = getattr(fastopt.get_backend("cython"), rule_name)
    ref_kernel = getattr(ref_backend, rule_name)
    rng = np.random.default_rng([len(rule_name), np.dtype(dtype).itemsize])
    size = 1025
    param, slots = initial_state(rng, rule, size, dtype)
    for step in range(6):
        scalars, g, extras = step_inputs(rng, rule, size, dtype, step)
        old = [param.copy()] + [s.copy() for s in slots]
        ref = [a.copy() for a in old]
        ref_kernel(*ref[:1], g, *ref[1:], *scalars, **extras)
        twin = [a.copy() for a in old]
        py_kernel(*twin[:1], g, *twin[1:], *scalars, **extras)
        arrays = [param] + slots + [np.zeros(size, dtype)] * (user_extension.NSLOTS - len(slots))
        user_extension.call(rule_name, param, g, *arrays[1:], tuple(map(float, scalars)),
                            extras.get("keep", 1.0), extras.get("gscale", 1.0),
                            extras.get("l2", 0.0), extras.get("clipvalue", math.inf))
        k = kappa(rule_name, ref)
        for name, f, r, o, t in zip(("param",) + rule.slots, [param] + slots, ref, old, twin):
            assert_close(f"cimported {rule_name} step {step} {name}", f, r, o, dtype,
                         k if name == "param" else 1.0)
            assert np.array_equal(f, t, equal_nan=True), f"{rule_name} {name}: C != Python"
        if dtype == np.float32:   # keep both on the same inputs
            for dst, src in zip([param] + slots, ref):
                dst[...] = src
    x = rng.standard_normal(1001).astype(dtype)
    assert math.isclose(user_extension.norm2(x), float(np.sum(x.astype(np.float64) ** 2)),
                        rel_tol=1e-12)


AVX2_CASES = [("Adam", {}), ("RMSprop", dict(centered=True, momentum=0.9)),
              ("SGD", dict(momentum=0.9, nesterov=True)), ("Lamb", {}),
              ("Adam", dict(state_dtype="int8")), ("Adagrad", dict(state_dtype="int8"))]


@needs_cython
@pytest.mark.parametrize("name, kw", AVX2_CASES,
                         ids=[f"{n}-{'-'.join(kw) or 'plain'}" for n, kw in AVX2_CASES])
def test_the_avx2_copy_gives_the_baseline_build_s_bits(monkeypatch, name, kw):
    # setup.py builds the extension twice on x86-64; the AVX2 copy must be the
    # same arithmetic (no fused multiply-add), serial and parallel chunks alike
    cb = fastopt.get_backend("cython")
    avx2 = pytest.importorskip("fastopt.backends._cython_kernels_avx2")
    dtypes = (np.float32,) if "state_dtype" in kw else (np.float32, np.float64)
    for dtype in dtypes:
        rng = np.random.default_rng(7)
        shapes = [(3,), (40, 25), (70_001,)]
        start = [rng.standard_normal(s).astype(dtype) for s in shapes]
        grads = [[(rng.standard_normal(s) * 10.0 ** rng.uniform(-6, 2, s)).astype(dtype)
                  for s in shapes] for _ in range(3)]
        grads[1][0][1] = 0.0
        out = []
        for module in (cb._portable, avx2):
            monkeypatch.setattr(cb, "_ext", module)
            module.set_num_threads(2)
            params = [p.copy() for p in start]
            opt = getattr(fastopt, name)(params, backend="cython", **kw)
            for g in grads:
                opt.step(g)
            out.append(params + [np.asarray(a) for a in opt.state_dict()["slots"].values()])
        for a, b in zip(*out):
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


@needs_cython
def test_the_avx2_copy_runs_only_where_it_may(monkeypatch):
    cb = fastopt.get_backend("cython")
    monkeypatch.setenv("FASTOPT_CYTHON_ISA", "baseline")
    assert cb._pick_extension() == (cb._portable, "baseline")
    monkeypatch.delenv("FASTOPT_CYTHON_ISA")
    monkeypatch.setattr(cb, "_cpu_has_avx2", lambda: False)
    assert cb._pick_extension() == (cb._portable, "baseline")
    monkeypatch.setattr(cb, "_cpu_has_avx2", lambda: True)
    module, isa = cb._pick_extension()
    try:
        from fastopt.backends import _cython_kernels_avx2
    except ImportError:  # not built here (another CPU or compiler, FASTOPT_NO_AVX2)
        assert (module, isa) == (cb._portable, "baseline")
    else:
        assert (module, isa) == (_cython_kernels_avx2, "avx2")
