"""Lamb, the first two_phase rule (fastopt.two_phase): what the generic
tests of tests/optim_db.py do not reach.

* the first pass is deterministic: bit-identical results at 1 or 2 threads,
  serial or parallel, and the same sums of squares on the numba and cython
  backends (both add element i of a chunk to float64 lane i % 64, the lanes
  in a fixed tree, then the chunks in order);
* the sums are those of the whole tensor (tensors over several chunks);
* Keras's zero cases: a tensor at zero (ratio 1), an update of zero (no
  move), a NaN norm (ratio 1), each against the Keras-order spec;
* per parameter group learning rates scale each group's update.
"""
import math

import numpy as np
import pytest

import fastopt
from fastopt.rule import RULES

from spec import KerasSpec

BACKENDS = [b for b in ("numba", "cython") if b in fastopt.available_backends()]
RULE = RULES["lamb"]


def _problem(dtype, seed=3):
    rng = np.random.default_rng(seed)
    shapes = [(40_003,), (300, 110), (7,)]  # one tensor spans several chunks
    start = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(5)]
    return start, grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_results_do_not_depend_on_threads_or_threshold(backend, dtype):
    name = np.dtype(dtype).name
    start, grads = _problem(dtype)
    before = (fastopt.get_num_threads(), fastopt.get_parallel_threshold(name))
    results = []
    try:
        for threads, threshold in [(1, 2 ** 62), (2, 0), (1, 0), (2, 2 ** 62)]:
            if threads > fastopt.get_backend(backend).max_threads():
                continue
            fastopt.set_num_threads(threads)
            fastopt.set_parallel_threshold(threshold, name)
            params = [p.copy() for p in start]
            opt = fastopt.Lamb(params, learning_rate=0.01, weight_decay=0.1, backend=backend)
            for g in grads:
                opt.step(g)
            results.append(np.concatenate([p.ravel() for p in params]))
    finally:
        fastopt.set_num_threads(before[0])
        fastopt.set_parallel_threshold(None, name)  # the tuned values again
    assert len(results) >= 2
    for r in results[1:]:
        assert np.array_equal(r, results[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_first_pass_sums_agree_across_backends_and_with_numpy(dtype):
    start, grads = _problem(dtype)
    scalars = (0.01, 0.9, 0.999, 1e-7, 3.0)
    pt = np.array([[0.5] * 3, [0.99] * 3, [0.0] * 3, [1.0] * 3])
    sums = {}
    for backend in ["numpy", *BACKENDS]:
        params = [p.ravel().copy() for p in start]
        slots = [[np.full(p.size, 0.1, dtype) for p in params] for _ in RULE.slots]
        plan = fastopt.get_backend(backend).Plan(RULE, params, slots)
        sums[backend] = plan.reduce([g.ravel() for g in grads[0]], pt, scalars)
        assert sums[backend].shape == (2, 3)
        # nothing stored by the first pass
        assert all(np.array_equal(p, s.ravel()) for p, s in zip(params, start))
        assert all((s == np.float32(0.1) if dtype == np.float32 else s == 0.1).all()
                   for row in slots for s in row)
    if len(BACKENDS) == 2:
        assert np.array_equal(sums["numba"], sums["cython"])
    for backend in BACKENDS:  # the reference computes the same sums in float64
        rel = np.abs(sums[backend] - sums["numpy"]) / sums["numpy"]
        assert rel.max() < (1e-5 if dtype == np.float32 else 1e-12), (backend, rel.max())
    # the quantities: ||keep * w||^2 and ||u||^2 of the whole tensors
    w = [0.99 * p.astype(np.float64).ravel() for p in start]
    assert np.allclose(sums["numpy"][0], [np.sum(x * x) for x in w], rtol=1e-12)


def _keras(params, grads, **kw):
    spec = KerasSpec("Lamb", params, **kw)
    for g in grads:
        spec.step(g)
    return spec.params


@pytest.mark.parametrize("backend", ["numpy", *BACKENDS])
def test_zero_tensors_zero_updates_and_nan_norms_as_keras(backend):
    rng = np.random.default_rng(0)
    start = [np.zeros((3, 4)), rng.standard_normal(5), rng.standard_normal(6)]
    grads = []
    for t in range(6):
        g = [rng.standard_normal(s.shape) for s in start]
        if t < 2:
            g[1][...] = 0.0  # no update yet: ||u|| = 0, the tensor stays
        grads.append(g)
    params = [p.copy() for p in start]
    opt = fastopt.Lamb(params, learning_rate=0.05, backend=backend)
    opt.step(grads[0])
    assert np.array_equal(params[1], start[1])            # ||u|| = 0: ratio 1, u = 0
    moved = params[0] - start[0]                           # ||w|| = 0: ratio 1, lr * u
    assert np.abs(moved).max() > 0 and np.abs(np.abs(moved) - 0.05).max() < 1e-6
    for g in grads[1:]:
        opt.step(g)
    want = _keras(start, grads, learning_rate=0.05)
    for got, w in zip(params, want):
        assert np.allclose(got, w, rtol=0, atol=1e-12 * max(1.0, np.abs(w).max()))
    # a NaN gradient element: that tensor's norm is NaN, its ratio falls back to 1
    bad = [g.copy() for g in grads[0]]
    bad[2][3] = np.nan
    spec = KerasSpec("Lamb", params, learning_rate=0.05)
    slots = opt.state_dict()["slots"]
    spec.slots = {n: [slots[f"{n}/{k}"].copy() for k in range(3)] for n in RULE.slots}
    spec.iterations = opt.iterations
    with np.errstate(invalid="ignore"):
        opt.step(bad)
        spec.step(bad)
    assert np.isnan(params[2][3]) and np.isnan(spec.params[2][3])
    for got, w in zip(params, spec.params):  # tensor 2 moved by lr * u (ratio 1)
        keep = ~np.isnan(w)
        assert np.isfinite(got[keep]).all()
        assert np.allclose(got[keep], w[keep], rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", *BACKENDS])
def test_each_group_scales_by_its_own_learning_rate(backend):
    rng = np.random.default_rng(1)
    start = [rng.standard_normal((5, 3)), rng.standard_normal(4)]
    grads = [[rng.standard_normal(p.shape) for p in start] for _ in range(4)]
    params = [p.copy() for p in start]
    opt = fastopt.Lamb([{"params": [params[0]], "learning_rate": 0.02},
                        {"params": [params[1]], "learning_rate": 0.005}], backend=backend)
    for g in grads:
        opt.step([[g[0]], [g[1]]])
    for k, lr in enumerate((0.02, 0.005)):
        want = _keras([start[k]], [[g[k]] for g in grads], learning_rate=lr)[0]
        assert np.allclose(params[k], want, rtol=0, atol=1e-12)


def test_the_update_scale_is_keras_ratio_times_lr():
    """decide (per tensor, float64) against Keras's where(): positive norms
    give lr * ||w|| / ||u||, a zero or NaN norm lr."""
    s = (0.1, 0.9, 0.999, 1e-7, 1.0)
    sums = np.array([[4.0, 0.0, 4.0, np.nan, np.inf],
                     [1.0, 1.0, 0.0, 1.0, 4.0]])
    got = RULE.update_scales(sums, s)
    assert got.tolist()[:4] == [0.2, 0.1, 0.1, 0.1]
    assert math.isinf(got[4])


def test_a_two_phase_rule_declares_its_reductions_and_decision():
    from fastopt.rule import Rule
    with pytest.raises(ValueError, match="declares its reductions and a decide function"):
        Rule("x", kind="two_phase")
    with pytest.raises(ValueError, match="declares its reductions and a decide function"):
        Rule("x", reductions=("param_sumsq",), decide=RULE.decide)
    with pytest.raises(ValueError, match=r"unknown reductions \['grad_norm'\]"):
        Rule("x", kind="two_phase", reductions=("grad_norm",), decide=RULE.decide)
    with pytest.raises(ValueError, match="kind must be one of"):
        Rule("x", kind="per_element")


def test_many_tensors_decide_on_arrays_bit_for_bit():
    """From fastopt.rule._VECTOR_FROM tensors on, decide() runs once on
    arrays: the same bits as per tensor, zeros, NaN and infinities included."""
    from fastopt.rule import _VECTOR_FROM, _decide_arrays
    vals = np.array([0.0, -0.0, 1.0, 4.0, np.nan, np.inf, 1e-320, 1e300, 2.5])
    a, b = vals.repeat(len(vals)), np.tile(vals, len(vals))
    assert a.size > _VECTOR_FROM
    s = (0.01, 0.9, 0.999, 1e-7, 3.0)
    one_by_one = [RULE.decide(x, y, *s)["update_scale"] for x, y in zip(a.tolist(), b.tolist())]
    assert np.array_equal(_decide_arrays(RULE.decide_ast, [a, b], s), one_by_one,
                          equal_nan=True)
    assert np.array_equal(RULE.update_scales(np.array([a, b]), s), one_by_one, equal_nan=True)


def test_an_optimizer_over_many_tensors_matches_keras():
    rng = np.random.default_rng(4)
    start = [rng.standard_normal(3 + k % 5) for k in range(40)]
    start[7][...] = 0.0
    grads = [[rng.standard_normal(p.shape) for p in start] for _ in range(3)]
    for g in grads:
        g[11][...] = 0.0
    params = [p.copy() for p in start]
    opt = fastopt.Lamb(params, learning_rate=0.02, backend="numpy")
    for g in grads:
        opt.step(g)
    for got, want in zip(params, _keras(start, grads, learning_rate=0.02)):
        assert np.allclose(got, want, rtol=0, atol=1e-13)
