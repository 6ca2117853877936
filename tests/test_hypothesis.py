"""Property tests: the fused Numba backend against the NumPy reference backend.

Hypothesis draws the structure of a problem (number of tensors, shapes --
including 0-d, size-0 and size-1 arrays --, dtype, optimizer variant and
hyperparameters, clipping, weight decay, gradient scales) and a seed from which
the values are generated.  Both backends run the same few steps on copies of
the same parameters, and the trajectories must agree within the bounds derived
in :func:`tolerance`.

A second property: results do not depend on the thread count or on whether the
serial or the parallel driver runs (fixed chunking, fixed summation order), so
there the comparison is bit for bit.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

import fastopt

from optim_db import DB

pytestmark = pytest.mark.skipif("numba" not in fastopt.available_backends(),
                                reason="the numba backend is not available")

STEPS = 4
EXAMPLES = 200
SETTINGS = settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------
# Strategies

learning_rate = st.floats(0.0, 0.3)


@st.composite
def optimizers(draw):
    """``(class, kwargs)``: a row of tests/optim_db.py with random valid
    hyperparameters drawn from its ``search_space``.

    Ranges are the valid ranges, except where a formula itself is ill
    conditioned in float32 for any implementation (see :func:`tolerance`):
    Adam's ``beta_2`` stays >= 0.5 (Keras' ``v + (g^2 - v) * (1 - beta_2)``
    with ``beta_2`` near 0 and ``v >> g^2`` leaves ``v`` as float32 rounding
    noise of the old ``v``; drawing beta_2 in [0, 0.3] gives float32 errors
    ~1e10 times the bound below, float64 stays inside it), and epsilon >= 1e-8
    (epsilon = 0 with an all-zero gradient gives 0/0 = NaN in both backends,
    which says nothing about agreement).  Ftrl's learning rate stays >= 1e-3
    and its initial accumulator >= 0.01 for the same reason (it divides by
    the learning rate, and by ``sqrt(n)/lr`` where ``n`` is still 0).  A row
    may draw its own ``weight_decay`` (its ``search_space`` says how: Rprop's).
    """
    row = draw(st.sampled_from(DB))
    kw = {name: draw(strategy) for name, strategy in row.search_space.items()}
    if "learning_rate" not in kw:  # a row may bound it (Ftrl divides by it)
        kw["learning_rate"] = draw(learning_rate)
    if "weight_decay" not in kw and draw(st.booleans()):
        kw["weight_decay"] = draw(st.floats(0.0, 0.5))
    clip = draw(st.sampled_from([None, "clipnorm", "clipvalue", "global_clipnorm"]))
    if clip is not None:
        kw[clip] = draw(st.floats(1e-2, 10.0))
    return row.cls, kw


def problems(max_side=16):
    return st.tuples(
        st.lists(array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=max_side),
                 min_size=1, max_size=5),
        st.lists(st.sampled_from([np.float32, np.float64]), min_size=5, max_size=5),
        st.integers(0, 2 ** 32 - 1),
        st.lists(st.sampled_from([1e-3, 1.0, 1e3]), min_size=STEPS, max_size=STEPS),
    )


def make_data(shapes, dtypes, seed, scales):
    """Parameters, and per step one gradient per tensor (finite, ~25% exact
    zeros, one random scale per step, occasionally a whole zero gradient)."""
    rng = np.random.default_rng(seed)
    dtypes = dtypes[:len(shapes)]
    params = [rng.standard_normal(s).astype(dt) for s, dt in zip(shapes, dtypes)]
    grads = []
    for step in range(STEPS):
        gs = []
        for s, dt in zip(shapes, dtypes):
            g = rng.standard_normal(s) * scales[step]
            g = np.where(rng.random(s) < 0.25, 0.0, g)
            if rng.random() < 0.1:
                g = np.zeros(s)
            gs.append(np.asarray(g, dtype=dt))
        grads.append(gs)
    return params, grads


def run(cls, kw, params, grads, backend):
    params = [p.copy() for p in params]
    opt = cls(params, backend=backend, **kw)
    history = []
    for gs in grads:
        opt.step(gs)
        history.append((
            [p.copy() for p in params],
            {k: v.copy() for k, v in opt.state_dict()["slots"].items()},
        ))
    return opt, history


# ---------------------------------------------------------------------------
# The tolerance

def tolerance(opt, params0, history, i):
    """Elementwise bound on ``|w_numba - w_numpy|`` for tensor ``i``.

    The NumPy backend casts to float64, evaluates the formula and rounds once
    per step; the Numba backend evaluates the same formula in the parameter's
    dtype (float32 arithmetic for float32), rounding after each of its <= ~10
    operations, and rounds the host scalars (lr, alpha, 1 - beta, epsilon,
    clip values, ``keep``) to the dtype once.  Per step this perturbs the
    update by a few units of ``eps * |update|`` and the parameter by a few
    ``eps * |w|`` (the ``keep`` factor); slot differences carry into later
    steps with a gain of order one for these formulas (the range drawn for
    ``beta_2`` keeps Adam's ``v + (g^2 - v) * (1 - beta_2)`` from amplifying:
    its relative error is at most ~(1 + 2/beta_2) eps).  So after
    ``k`` steps the error is below ``C * eps * k * S`` with the *displacement
    scale* ``S = |w_0| + sum_t (|dw_t| + |mom_t|)`` (``mom``: a momentum
    buffer that *is* the update, whose cancellations ``dw`` alone would hide)
    and a small constant ``C``: 8 is used; over 1500 drawn examples the
    largest observed ``error / (eps * k * kappa * S)`` was ~1.0 (float32 Adam
    and RMSprop with momentum) and ~0.5 for float64.

    Centred RMSprop divides by ``sqrt(v - a^2 + eps)``: the subtraction
    cancels, and an error of ``eps * (v + a^2)`` in it is relatively
    ``kappa = (v + a^2) / (max(v - a^2, 0) + eps)`` times larger, so the bound
    is multiplied by the largest ``kappa`` seen along the (reference)
    trajectory.  Where ``kappa * eps`` approaches 1 the float32 result is
    rounding noise in any implementation and the bound says so (it exceeds
    ``S``) instead of hiding the case by choosing friendlier gradients.

    For float64 the same bound is about ``7e-15 * S`` (4 steps): the two
    backends differ there only by operation order of host scalars and sums of
    squares, i.e. a few float64 ulps.
    """
    dtype = params0[i].dtype
    eps = float(np.finfo(dtype).eps)
    key = (lambda slot: f"{slot}/{i}")
    w_prev = params0[i].astype(np.float64)
    scale = np.abs(w_prev)
    kappa = np.ones(params0[i].shape)
    rule = opt.rule
    for params, slots in history:
        w = params[i].astype(np.float64)
        scale = scale + np.abs(w - w_prev)
        if rule.startswith(("sgd_", "rmsprop")) and rule.endswith(("momentum", "nesterov")):
            scale = scale + np.abs(slots[key("momentum")].astype(np.float64))
        if rule.startswith("rmsprop_centered"):
            v = slots[key("velocity")].astype(np.float64)
            a = slots[key("average_gradient")].astype(np.float64)
            den = np.maximum(v - a * a, 0.0) + opt.get_config()["epsilon"]
            kappa = np.maximum(kappa, (v + a * a) / den)
        w_prev = w
    return 8.0 * eps * len(history) * kappa * scale


# ---------------------------------------------------------------------------
# Properties

@SETTINGS
@given(problem=problems(), optimizer=optimizers())
def test_numba_trajectory_matches_numpy_reference(problem, optimizer):
    shapes, dtypes, seed, scales = problem
    cls, kw = optimizer
    params0, grads = make_data(shapes, dtypes, seed, scales)
    ref_opt, ref = run(cls, kw, params0, grads, "numpy")
    _, fused = run(cls, kw, params0, grads, "numba")
    assert ref_opt.backends and set(ref_opt.backends.values()) == {"numpy"}
    for i in range(len(params0)):
        bound = tolerance(ref_opt, params0, ref, i)
        got = fused[-1][0][i].astype(np.float64)
        want = ref[-1][0][i].astype(np.float64)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.all(np.isfinite(want))
        err = np.abs(got - want)
        assert np.all(err <= bound), (
            f"tensor {i} ({params0[i].dtype}, shape {params0[i].shape}), rule "
            f"{ref_opt.rule}: max error {err.max()} exceeds the bound "
            f"(worst error/bound {np.max(err / np.maximum(bound, 1e-300))})")
    # the state agrees in structure, dtype and shape, and the iteration count matches
    ref_slots, fused_slots = ref[-1][1], fused[-1][1]
    assert set(ref_slots) == set(fused_slots)
    for k in ref_slots:
        assert ref_slots[k].dtype == fused_slots[k].dtype
        assert ref_slots[k].shape == fused_slots[k].shape


def test_tolerance_is_not_vacuous():
    """The bound above can fail: a wrong step is far outside it."""
    rng = np.random.default_rng(0)
    params0 = [rng.standard_normal(50).astype(np.float32)]
    grads = [[rng.standard_normal(50).astype(np.float32)] for _ in range(STEPS)]
    kw = {"learning_rate": 0.01}
    ref_opt, ref = run(fastopt.Adam, kw, params0, grads, "numpy")
    _, other = run(fastopt.Adam, {"learning_rate": 0.01 * (1 + 1e-4)}, params0, grads, "numba")
    bound = tolerance(ref_opt, params0, ref, 0)
    err = np.abs(other[-1][0][0].astype(np.float64) - ref[-1][0][0])
    assert np.any(err > bound)
    # and the Numba run with the same hyperparameters is well inside it
    _, same = run(fastopt.Adam, kw, params0, grads, "numba")
    assert np.all(np.abs(same[-1][0][0].astype(np.float64) - ref[-1][0][0]) <= bound / 4)


# ---------------------------------------------------------------------------
# Thread count and parallel threshold

@pytest.fixture(scope="module", autouse=True)
def restore_parallel_settings():
    defaults = {dt: fastopt.get_parallel_threshold(dt) for dt in ("float32", "float64")}
    threads = fastopt.get_num_threads()
    yield
    for dt in defaults:
        fastopt.set_parallel_threshold(None, dt)  # no override: the tuned values
    fastopt.set_num_threads(threads)
    assert {dt: fastopt.get_parallel_threshold(dt) for dt in defaults} == defaults


def _run_with(cls, kw, params0, grads, threads, threshold):
    fastopt.set_num_threads(threads)
    fastopt.set_parallel_threshold(threshold)
    opt, history = run(cls, kw, params0, grads, "numba")
    return history[-1]


big_problems = st.tuples(
    st.lists(array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=16) |
             st.sampled_from([(40000,), (16384,), (16385,), (3, 20000)]),
             min_size=1, max_size=5),
    st.lists(st.sampled_from([np.float32, np.float64]), min_size=5, max_size=5),
    st.integers(0, 2 ** 32 - 1),
    st.lists(st.sampled_from([1e-3, 1.0, 1e3]), min_size=STEPS, max_size=STEPS),
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(problem=big_problems, optimizer=optimizers())
def test_results_do_not_depend_on_threads_or_parallel_threshold(problem, optimizer):
    """Bit-identical with 1 or 2 threads and with the serial or parallel driver
    (tensors above one chunk of 16384 elements are drawn sometimes, so the
    chunked sums of squares of clipping run over several chunks too)."""
    shapes, dtypes, seed, scales = problem
    cls, kw = optimizer
    params0, grads = make_data(shapes, dtypes, seed, scales)
    defaults = {dt: fastopt.get_parallel_threshold(dt) for dt in ("float32", "float64")}
    threads = fastopt.get_num_threads()
    try:
        results = [_run_with(cls, kw, params0, grads, n, t)
                   for n in (1, min(2, fastopt.backends.get_backend("numba").max_threads()))
                   for t in (0, 2 ** 62)]
    finally:
        for dt in defaults:
            fastopt.set_parallel_threshold(None, dt)
        fastopt.set_num_threads(threads)
    base_params, base_slots = results[0]
    for params, slots in results[1:]:
        for a, b in zip(base_params, params):
            assert np.array_equal(a, b, equal_nan=True)
        assert set(slots) == set(base_slots)
        for k in slots:
            assert np.array_equal(slots[k], base_slots[k], equal_nan=True)
