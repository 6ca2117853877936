"""Ftrl's own edge cases, beyond the generic tests that iterate tests/optim_db.py.

The two kernels (square roots for ``learning_rate_power = -0.5``, ``pow``
otherwise) against each other and against Keras's behaviour where it is
unusual: a zero gradient recomputes the parameter from ``linear`` (a first
step of zeros sets it to 0), L1 thresholding gives exact zeros, a zero
accumulator with ``l2 = beta = 0`` gives 0/0 = NaN, and a learning rate of 0
is refused before anything changes.
"""
import numpy as np
import pytest

import fastopt
from fastopt.rule import RULES

from cases import HOST_BACKENDS
from spec import KerasSpec

BACKENDS = HOST_BACKENDS


def _run(backend, dtype=np.float64, steps=6, seed=0, **kw):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(257).astype(dtype)
    opt = fastopt.Ftrl(p, backend=backend, **kw)
    for _ in range(steps):
        opt.step(rng.standard_normal(257).astype(dtype))
    return p, opt


def test_the_default_power_runs_the_square_root_kernel():
    p = np.zeros(3)
    assert fastopt.Ftrl(p).rule == "ftrl_sqrt"
    assert fastopt.Ftrl(p, learning_rate_power=-0.3).rule == "ftrl"
    assert fastopt.Ftrl(p, learning_rate_power=0.0).rule == "ftrl"
    groups = fastopt.Ftrl([{"params": [np.zeros(2)]},
                           {"params": [np.zeros(2)], "learning_rate_power": -0.7}])
    assert groups.rule == ("ftrl_sqrt", "ftrl")
    assert RULES["ftrl_sqrt"].scalars == tuple(s for s in RULES["ftrl"].scalars
                                               if s != "learning_rate_power")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "numpy"])
def test_the_two_kernels_agree_at_power_one_half(backend, dtype):
    """pow(n, 0.5) and sqrt(n) are both correctly rounded or nearly: the
    general kernel run at p = 0.5 gives the square-root kernel's result."""
    rng = np.random.default_rng(1)
    k = fastopt.get_backend(backend)
    p0 = rng.standard_normal(1025).astype(dtype)
    a = [p0.copy(), np.full(1025, 0.1, dtype), np.zeros(1025, dtype)]
    b = [x.copy() for x in a]
    for _ in range(5):
        g = rng.standard_normal(1025).astype(dtype)
        k.ftrl_sqrt(a[0], g, a[1], a[2], 0.1, 0.01, 0.02, 0.03, 0.5)
        k.ftrl(b[0], g, b[1], b[2], 0.1, -0.5, 0.01, 0.02, 0.03, 0.5)
    eps = np.finfo(dtype).eps
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=64 * eps, atol=64 * eps)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_zero_first_step_sets_the_parameters_to_zero_as_keras(backend):
    p = np.array([1.0, -2.0, 3.0])
    opt = fastopt.Ftrl(p, learning_rate=0.1, backend=backend)
    opt.step(np.zeros(3))
    assert np.array_equal(p, np.zeros(3))
    state = opt.state_dict()["slots"]
    assert np.array_equal(state["accumulator/0"], np.full(3, 0.1))
    assert np.array_equal(state["linear/0"], np.zeros(3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_zero_step_later_keeps_the_parameters(backend):
    """Without shrinkage a zero gradient leaves n and z, and w = f(z, n) is
    recomputed to the same value: the parameters do not move."""
    p, opt = _run(backend, learning_rate=0.1, l1_regularization_strength=0.05,
                  l2_regularization_strength=0.1, beta=0.5)
    before = p.copy()
    opt.step(np.zeros_like(p))
    np.testing.assert_allclose(p, before, rtol=1e-15, atol=1e-300)


@pytest.mark.parametrize("backend", BACKENDS)
def test_l1_thresholds_to_exact_zeros(backend):
    p, opt = _run(backend, learning_rate=0.1, l1_regularization_strength=1.5)
    z = opt.state_dict()["slots"]["linear/0"]
    inside = np.abs(z) <= 1.5
    assert 0 < inside.sum() < inside.size  # both kinds of element occur
    assert np.all(p[inside] == 0.0)
    assert np.all(p[~inside] != 0.0)
    assert np.all(np.sign(p[~inside]) == -np.sign(z[~inside]))  # w opposes z


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_accumulator_without_l2_or_beta_gives_nan_as_keras(backend):
    # Keras 3.15.1 gives [nan, 1.9, nan] here (checked by hand against
    # keras.optimizers.Ftrl): q = sqrt(0)/lr = 0 and z = 0 where g = 0
    p = np.array([1.0, 2.0, 3.0])
    opt = fastopt.Ftrl(p, learning_rate=0.1, initial_accumulator_value=0.0, backend=backend)
    opt.step(np.array([0.0, 1.0, 0.0]))
    assert np.isnan(p[0]) and np.isnan(p[2])
    assert p[1] == pytest.approx(1.9, rel=1e-15)
    # beta > 0 keeps q > 0
    p = np.array([1.0, 2.0, 3.0])
    fastopt.Ftrl(p, learning_rate=0.1, initial_accumulator_value=0.0, beta=1.0,
                 backend=backend).step(np.array([0.0, 1.0, 0.0]))
    assert np.all(np.isfinite(p)) and p[0] == 0.0 and p[2] == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_and_tiny_gradients_match_the_keras_spec(backend):
    rng = np.random.default_rng(4)
    p = rng.standard_normal(64)
    spec = KerasSpec("Ftrl", [p], learning_rate=0.05, learning_rate_power=-0.3,
                     l1_regularization_strength=0.01, l2_shrinkage_regularization_strength=0.1)
    opt = fastopt.Ftrl(p, learning_rate=0.05, learning_rate_power=-0.3,
                       l1_regularization_strength=0.01,
                       l2_shrinkage_regularization_strength=0.1, backend=backend)
    for scale in (1.0, 1e150, 1.0, 1e-150, 1e-300, 1.0):
        g = rng.standard_normal(64) * scale
        opt.step(g)
        spec.step([g])
        np.testing.assert_allclose(p, spec.params[0], rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "numpy"])
def test_float32_overflow_of_the_square_is_nan_as_in_keras(backend):
    """g = 1e20 in float32: g*g overflows to inf, and the float32 kernels
    give what Keras 3.15.1's float32 ops give (checked by hand: [nan,
    -0.44459057, nan]), written out here in NumPy float32.  (The numpy
    backend computes in float64, where nothing overflows.)"""
    p = np.array([0.5, -0.5, 0.0], np.float32)
    g = np.array([1e20, 1.0, 1e20], np.float32)
    fastopt.Ftrl(p, learning_rate=0.1, backend=backend).step(g)
    with np.errstate(all="ignore"):
        w0 = np.array([0.5, -0.5, 0.0], np.float32)
        n = np.float32(0.1) + g * g
        z = g - (np.sqrt(n) - np.sqrt(np.float32(0.1))) / np.float32(0.1) * w0
        want = (np.clip(z, 0, 0) - z) / (np.sqrt(n) / np.float32(0.1))
    assert np.array_equal(np.isnan(p), np.isnan(want))
    assert np.isfinite(p[1]) and p[1] == pytest.approx(want[1], rel=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_gradient_stays_in_its_element(backend):
    p = np.array([1.0, 2.0, 3.0])
    opt = fastopt.Ftrl(p, learning_rate=0.1, backend=backend)
    opt.step(np.array([np.nan, 1.0, 1.0]))
    slots = opt.state_dict()["slots"]
    assert np.isnan(p[0]) and np.isnan(slots["accumulator/0"][0])
    assert np.isnan(slots["linear/0"][0])
    assert np.all(np.isfinite(p[1:]))


def test_a_schedule_reaching_zero_raises_and_changes_nothing():
    p = np.ones(4)
    opt = fastopt.Ftrl(p, learning_rate=lambda it: 0.1 if it < 2 else 0.0)
    opt.step(np.ones(4))
    opt.step(np.ones(4))
    before = (p.copy(), opt.state_dict())
    with pytest.raises(ValueError, match=r"Ftrl: learning_rate must be > 0 \(Ftrl divides "
                                         r"by it\), got 0.0 at call 2"):
        opt.step(np.ones(4))
    assert np.array_equal(p, before[0]) and opt.calls == opt.iterations == 2
    for k, v in opt.state_dict()["slots"].items():
        assert np.array_equal(v, before[1]["slots"][k])


def test_a_learning_rate_whose_reciprocal_overflows_is_refused():
    with pytest.raises(ValueError, match="learning_rate must be > 0 .*got 5e-310"):
        fastopt.Ftrl(np.ones(2), learning_rate=5e-310)
    fastopt.Ftrl(np.ones(2), learning_rate=1e-300).step(np.ones(2))


def test_learning_rate_zero_is_refused_in_groups_and_by_assignment():
    with pytest.raises(ValueError, match=r"Ftrl \(param group 1\): learning_rate must be > 0"):
        fastopt.Ftrl([{"params": [np.ones(2)]},
                      {"params": [np.ones(2)], "learning_rate": 0.0}])
    p = np.ones(2)
    opt = fastopt.Ftrl(p, learning_rate=0.1)
    opt.learning_rate = 0.0  # a float like any other until a step uses it
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        opt.step(np.ones(2))
    assert np.array_equal(p, np.ones(2)) and opt.iterations == 0


def test_bfloat16_state_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="not offered for the 'ftrl_sqrt' kernel: Ftrl "
                                         "recomputes the parameters from the linear slot"):
        fastopt.Ftrl(np.ones(3, np.float32), state_dtype="bfloat16")


def test_config_round_trip_keeps_the_kernel():
    p = np.ones(3)
    opt = fastopt.Ftrl(p, learning_rate=0.05, learning_rate_power=-0.25, beta=0.3,
                       l1_regularization_strength=0.01)
    config = opt.get_config()
    assert config["convention"] == "keras" and config["learning_rate_power"] == -0.25
    again = fastopt.Ftrl.from_config(np.ones(3), config)
    assert again.rule == "ftrl" and again.get_config() == config
