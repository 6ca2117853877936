"""pytest-benchmark suite: one optimizer step, fastopt vs the naive NumPy step.

Run with ``pytest benchmarks --benchmark-only`` (not part of the default
``pytest`` run, whose testpaths are ``tests/``).  About 2-4 minutes on a 2-core
machine.

* ``test_step``: rule (10) x implementation x size (float32).  Implementations:
  ``numba`` and ``cython`` (fastopt's compiled backends; cython when its
  extension is built), ``numpy`` (fastopt's float64 NumPy reference backend;
  1e3 and 1e5 only, it is slow) and ``naive`` (the textbook NumPy step in
  :mod:`naive`).  One warm-up step (the JIT compile, first-touch page faults)
  runs before the timed rounds.
* ``test_ceiling``: the rmw (Adam's traffic, 28 B/element) and copy kernels of
  :mod:`ceiling` at 1e7.
* ``test_many_tensors``: Adam (numba, cython) over 200 float32 tensors of mixed
  shapes totalling 2M parameters, vs one 2M tensor.

Every benchmark carries ``extra_info`` with ``size`` (elements) and
``bytes_per_param``, so GB/s = size * bytes_per_param / mean (or median) time.
"""
import numpy as np
import pytest

import fastopt

import ceiling
import naive

CASES = {rule: (cls, kw) for rule, cls, kw in naive.cases()}
SIZES = {"1e3": 1_000, "1e5": 100_000, "1e7": 10_000_000}
COMPILED = [b for b in ("numba", "cython") if b in fastopt.available_backends()]
# (implementation, size label) pairs: the numpy backend only at small sizes
IMPLS = [(impl, s) for s in SIZES for impl in (*COMPILED, "numpy", "naive")
         if not (impl == "numpy" and s == "1e7")]

# rounds x iterations per size: enough for a stable median, the suite < ~4 min
ROUNDS = {"1e3": (100, 20), "1e5": (40, 5), "1e7": (12, 1)}
ROUNDS_NAIVE_1E7 = (6, 1)   # ~50-150 ms per naive step at 1e7

_GRADS = {}


def _grad(n):
    """A cached float32 gradient of ``n`` elements (small, nonzero values)."""
    if n not in _GRADS:
        rng = np.random.default_rng(n)
        _GRADS[n] = (rng.standard_normal(n, dtype=np.float32) * np.float32(1e-2))
    return _GRADS[n]


def _param(n):
    return np.random.default_rng(n + 1).standard_normal(n, dtype=np.float32)


def _stepper(rule, impl, n):
    """A no-argument callable running one step of ``rule`` with ``impl``."""
    w, g = _param(n), _grad(n)
    if impl == "naive":
        return naive.stepper(rule, w, g)
    cls, kw = CASES[rule]
    opt = cls([w], backend=impl, **kw)
    grads = [g]
    return lambda: opt.step(grads)


def _run(benchmark, fn, rounds, iterations=1):
    fn()  # warm-up: JIT compile, page faults
    benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=1)


@pytest.mark.parametrize("impl,size", IMPLS, ids=[f"{i}-{s}" for i, s in IMPLS])
@pytest.mark.parametrize("rule", list(CASES))
def test_step(benchmark, rule, impl, size):
    n = SIZES[size]
    benchmark.group = f"step {rule} {size}"
    benchmark.extra_info.update(rule=rule, impl=impl, size=n, dtype="float32",
                                bytes_per_param=ceiling.bytes_per_param(rule, np.float32))
    rounds, iterations = ROUNDS[size]
    if impl == "naive" and size == "1e7":
        rounds, iterations = ROUNDS_NAIVE_1E7
    _run(benchmark, _stepper(rule, impl, n), rounds, iterations)


@pytest.mark.parametrize("kind", ["rmw", "copy"])
def test_ceiling(benchmark, kind):
    n = SIZES["1e7"]
    benchmark.group = "ceiling 1e7"
    if kind == "rmw":
        (p, g, m, v), (a, b, c) = ceiling._rmw_arrays(n)
        kernel = ceiling.RMW_FORMS["flat"]

        def fn():
            kernel(p, g, m, v, a, b, c)
        nbytes = ceiling.RMW_BYTES
    else:
        src = _param(n)
        dst = np.zeros_like(src)

        def fn():
            ceiling._copy(dst, src)
        nbytes = ceiling.COPY_BYTES
    benchmark.extra_info.update(kind=kind, size=n, dtype="float32", bytes_per_param=nbytes)
    _run(benchmark, fn, 20)


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("layout", ["200-tensors", "one-tensor"])
def test_many_tensors(benchmark, layout, backend):
    total = 2_000_000
    shapes = naive.mixed_shapes(200, total) if layout == "200-tensors" else [(total,)]
    rng = np.random.default_rng(7)
    params = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    grads = [rng.standard_normal(s, dtype=np.float32) * np.float32(1e-2) for s in shapes]
    opt = fastopt.Adam(params, backend=backend)
    benchmark.group = "adam 2M params: 200 tensors vs one"
    benchmark.extra_info.update(layout=layout, backend=backend, tensors=len(shapes), size=total,
                                dtype="float32",
                                bytes_per_param=ceiling.bytes_per_param("adam", np.float32))
    _run(benchmark, lambda: opt.step(grads), 40, 2)
