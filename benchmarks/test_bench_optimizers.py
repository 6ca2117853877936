"""pytest-benchmark suite: the grid of ``fastopt bench``, one benchmark per cell.

Run with ``pytest benchmarks --benchmark-only`` (not part of the default
``pytest`` run, whose testpaths are ``tests/``).  The optimizers, their
inputs, the naive NumPy steps and the torch twins all come from
:mod:`fastopt.bench`, so this suite and the command measure the same things.

* ``test_step[<optimizer>-<impl>-<size>]``: every optimizer of
  :data:`fastopt.bench.CASES` x implementation x size (1e3, 1e5, 1e7, float32,
  one tensor).  Implementations: ``auto``, ``numba`` and ``cython`` (fastopt;
  cython when its extension is built), ``numpy`` (fastopt's float64 NumPy
  reference backend; 1e3 and 1e5 only, it is slow), ``naive`` (the textbook
  NumPy step) and ``torch`` (``torch.optim``, fused or foreach, when torch can
  be imported).  Warm-up steps (the JIT compile, first-touch page faults) run
  before the timed rounds.
* ``test_ceiling[<kind>-<size>]``: the rmw kernel (Adam's traffic, in its
  ``flat`` and ``blocks`` forms, and ``serial`` at 1e3) and the copy, at each size.
* ``test_many_tensors[<layout>-<impl>]``: Adam over 200 float32 tensors of
  mixed shapes totalling 2M parameters, and over one 2M tensor.

Every benchmark carries ``extra_info`` with ``size`` (elements) and
``bytes_per_param``, so GB/s = size * bytes_per_param / time.
"""
import pytest

import fastopt
from fastopt.bench import CASES, bytes_per_param, ceiling, split_shapes
from fastopt.bench.cases import fastopt_stepper, naive_stepper, timing_arrays, torch_stepper

try:
    import torch
except ImportError:
    torch = None

SIZES = {"1e3": 1_000, "1e5": 100_000, "1e7": 10_000_000}
COMPILED = [b for b in ("numba", "cython") if b in fastopt.available_backends()]
IMPLS = ["auto", *COMPILED, "numpy", "naive"] + (["torch"] if torch is not None else [])
# (implementation, size label) pairs: the numpy backend only at small sizes
GRID = [(impl, s) for s in SIZES for impl in IMPLS if not (impl == "numpy" and s == "1e7")]

# (rounds, iterations) per size: enough for a stable median, the suite a few minutes
ROUNDS = {"1e3": (100, 20), "1e5": (40, 5), "1e7": (12, 1)}
SLOW_1E7 = (6, 1)   # the naive step at 1e7: 30-150 ms


def _stepper(name, impl, shapes, seed=0):
    """A no-argument callable running one step of ``name`` with ``impl``."""
    params, grads = timing_arrays(shapes, "float32", seed)
    if impl == "naive":
        return naive_stepper(name, params, grads)
    if impl == "torch":
        return torch_stepper(name, params, grads)[0]
    return fastopt_stepper(name, params, grads, impl)[1]


def _run(benchmark, fn, rounds, iterations=1):
    fn()  # warm-up: JIT compile, page faults
    benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=1)


@pytest.mark.parametrize("impl,size", GRID, ids=[f"{i}-{s}" for i, s in GRID])
@pytest.mark.parametrize("name", list(CASES))
def test_step(benchmark, name, impl, size):
    n = SIZES[size]
    benchmark.group = f"step {name} {size}"
    benchmark.extra_info.update(optimizer=name, impl=impl, size=n, dtype="float32",
                                bytes_per_param=bytes_per_param(CASES[name].rule))
    rounds, iterations = ROUNDS[size]
    if impl == "naive" and size == "1e7":
        rounds, iterations = SLOW_1E7
    _run(benchmark, _stepper(name, impl, [(n,)]), rounds, iterations)


CEILING = [(kind, s) for s in SIZES for kind in ("rmw-flat", "rmw-blocks", "copy")] + [
    ("rmw-serial", "1e3")]


@pytest.mark.parametrize("kind,size", CEILING, ids=[f"{k}-{s}" for k, s in CEILING])
def test_ceiling(benchmark, kind, size):
    n = SIZES[size]
    benchmark.group = f"ceiling {size}"
    if kind == "copy":
        fn, nbytes = ceiling.copy_step(n, "float32", "parallel"), ceiling.COPY_BYTES
    else:
        fn, nbytes = ceiling.rmw_step(n, "float32", kind[4:]), ceiling.RMW_BYTES
    benchmark.extra_info.update(kind=kind, size=n, dtype="float32", bytes_per_param=nbytes)
    rounds, iterations = ROUNDS[size]
    _run(benchmark, fn, rounds * 2, iterations)


MANY = [(layout, impl) for layout in ("200-tensors", "one-tensor")
        for impl in ("auto", *COMPILED, "naive") + (("torch",) if torch is not None else ())]


@pytest.mark.parametrize("layout,impl", MANY, ids=[f"{la}-{i}" for la, i in MANY])
def test_many_tensors(benchmark, layout, impl):
    total = 2_000_000
    shapes = split_shapes(total, 200) if layout == "200-tensors" else [(total,)]
    benchmark.group = "adam 2M params: 200 tensors vs one"
    benchmark.extra_info.update(layout=layout, impl=impl, tensors=len(shapes), size=total,
                                dtype="float32", bytes_per_param=bytes_per_param("adam"))
    _run(benchmark, _stepper("adam", impl, shapes, seed=7), 20 if impl == "naive" else 40,
         1 if impl == "naive" else 2)
