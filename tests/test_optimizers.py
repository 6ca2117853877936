"""Optimizer classes against the independent Keras-order spec (tests/spec.py).

Tolerances.  float64: the classes and the spec do the same float64
operations except for the order of the sums inside norms, so parameters
agree to ``1e-12`` relative to the largest displacement.  float32: the
parameters and slots are float32 and every step rounds them, while the spec
stays in float64; over 20 steps the drift is bounded by ``2e-4`` times the
largest displacement plus 8 float32 ulps of the parameter (measured drift is
well below; a wrong formula or scalar moves parameters by a sizeable fraction
of the displacement).
"""
import math

import numpy as np
import pytest

import fastopt
from fastopt import schedules

from cases import HOST_BACKENDS, gradient
from optim_db import KERAS_CLASSES, KERAS_ROWS, with_conventions
from spec import KERAS_DEFAULTS, KerasSpec

BACKENDS = HOST_BACKENDS
SHAPES = [(1,), (7, 3), (1025,)]


def run_pair(cls, kwargs, dtype, backend, steps=20, shapes=SHAPES, seed=0, none_at=None,
             lr_change=None):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    p0 = [p.astype(np.float64) for p in params]
    opt = cls(params, backend=backend, **kwargs)
    spec = KerasSpec(cls.__name__, params, **kwargs)
    for step in range(steps):
        grads = [gradient(rng, s, dtype, step % 10) for s in shapes]
        if none_at is not None and step % 3 == 0:
            grads[none_at] = None
        if lr_change is not None and step == steps // 2:
            opt.learning_rate = lr_change
            spec.h["learning_rate"] = lr_change
        opt.step(grads)
        spec.step(grads)
    return opt, spec, p0


def assert_trajectory(opt, spec, p0, dtype):
    params = opt.params
    disp = max(float(np.max(np.abs(s - p))) for s, p in zip(spec.params, p0))
    assert disp > 1e-4, "the trajectory did not move"
    for i, (p, s) in enumerate(zip(params, spec.params)):
        if dtype == np.float64:
            np.testing.assert_allclose(p, s, rtol=0, atol=1e-12 * disp, err_msg=f"param {i}")
        else:
            ulp = np.spacing(np.abs(s).astype(np.float32)).astype(np.float64)
            err = np.abs(p.astype(np.float64) - s)
            assert np.all(err <= 2e-4 * disp + 8 * ulp), (
                f"param {i}: max error {err.max():.3g}, displacement {disp:.3g}")
    assert opt.iterations == spec.iterations


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("row", KERAS_ROWS, ids=str)
def test_trajectory_matches_keras_spec(row, backend, dtype):
    if "keras" not in row.conventions:
        pytest.skip(f"{row.id} is PyTorch's only (tests/test_conventions.py runs it)")
    cls, kwargs = row.cls, {"learning_rate": row.learning_rate, **row.kwargs}
    opt, spec, p0 = run_pair(cls, kwargs, dtype, backend)
    assert_trajectory(opt, spec, p0, dtype)
    # slots too, by Keras name
    state = opt.state_dict()["slots"]
    for name, values in spec.slots.items():
        for i, v in enumerate(values):
            got = state[f"{name}/{i}"].astype(np.float64)
            scale = np.max(np.abs(v)) + 1e-30
            tol = 1e-12 if dtype == np.float64 else 2e-4
            assert np.max(np.abs(got - v)) <= tol * scale, f"slot {name}/{i}"


FEATURES = {
    "clipnorm": (fastopt.Adam, dict(learning_rate=0.01, clipnorm=0.5)),
    "global_clipnorm": (fastopt.Adam, dict(learning_rate=0.01, global_clipnorm=0.5)),
    "clipvalue": (fastopt.SGD, dict(learning_rate=0.05, momentum=0.3, clipvalue=0.1)),
    "weight_decay_sgd": (fastopt.SGD, dict(learning_rate=0.05, weight_decay=0.1)),
    "weight_decay_rmsprop": (fastopt.RMSprop, dict(learning_rate=0.01, weight_decay=0.05)),
    "adamw_clipnorm": (fastopt.AdamW, dict(learning_rate=0.01, weight_decay=0.1, clipnorm=1.0)),
    "schedule": (fastopt.Adam, dict(learning_rate=schedules.ExponentialDecay(0.05, 5, 0.5))),
    "schedule_weight_decay": (fastopt.SGD, dict(
        learning_rate=schedules.CosineDecay(0.1, 20, warmup_target=0.2, warmup_steps=4),
        weight_decay=0.2, momentum=0.5)),
    "callable_lr": (fastopt.Adagrad, dict(learning_rate=lambda it: 0.1 / (1 + it))),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("feature", list(FEATURES))
def test_features_match_keras_spec(feature, backend, dtype):
    cls, kwargs = FEATURES[feature]
    opt, spec, p0 = run_pair(cls, kwargs, dtype, backend)
    assert_trajectory(opt, spec, p0, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_clipping_really_clips(backend):
    """The clip paths are exercised: with large gradients, clipped and
    unclipped runs differ, and per-tensor differs from global."""
    results = {}
    for clip in ("clipnorm", "global_clipnorm", None):
        kw = {clip: 0.5} if clip else {}
        opt, spec, _ = run_pair(fastopt.SGD, dict(learning_rate=0.05, **kw), np.float64,
                                backend, steps=6)
        results[clip] = np.concatenate([p.ravel() for p in opt.params])
    assert not np.allclose(results["clipnorm"], results[None])
    assert not np.allclose(results["global_clipnorm"], results[None])
    assert not np.allclose(results["clipnorm"], results["global_clipnorm"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_none_gradient_skips_parameter_and_its_slots(backend):
    opt, spec, p0 = run_pair(fastopt.Adam, dict(learning_rate=0.01), np.float64, backend,
                             none_at=1)
    assert_trajectory(opt, spec, p0, np.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_learning_rate_assignable_between_steps(backend):
    opt, spec, p0 = run_pair(fastopt.RMSprop, dict(learning_rate=0.01, momentum=0.2),
                             np.float64, backend, lr_change=0.002)
    assert_trajectory(opt, spec, p0, np.float64)
    assert opt.learning_rate == 0.002


@pytest.mark.parametrize("backend", BACKENDS)
def test_dict_params_and_mixed_dtypes(backend):
    rng = np.random.default_rng(3)
    params = {"w": rng.standard_normal((5, 4)).astype(np.float32),
              "b": rng.standard_normal(4),
              "e": rng.standard_normal((3, 2)).astype(np.float32)}
    spec = KerasSpec("Adam", list(params.values()), learning_rate=0.01)
    opt = fastopt.Adam(params, learning_rate=0.01, backend=backend)
    assert opt.backends.keys() == {"float32", "float64"}
    assert opt.params["w"] is params["w"]
    for step in range(10):
        grads = {k: gradient(rng, v.shape, v.dtype, step) for k, v in params.items()}
        opt.step(grads)
        spec.step(list(grads.values()))
    for (k, p), s in zip(params.items(), spec.params):
        assert p.dtype == (np.float64 if k == "b" else np.float32)
        np.testing.assert_allclose(p, s, rtol=1e-5 if p.dtype == np.float32 else 1e-12)
    assert set(opt.state_dict()["slots"]) == {f"{s}/{k}" for s in ("momentum", "velocity")
                                              for k in params}


def test_many_tensors_equal_one_concatenated_tensor():
    """The multi-tensor path computes exactly what one big tensor computes."""
    rng = np.random.default_rng(4)
    shapes = [tuple(rng.integers(1, 40, size=rng.integers(1, 3))) for _ in range(200)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    flat = np.concatenate([p.ravel() for p in params])
    many = fastopt.Adam(params, learning_rate=0.01, backend="numba")
    one = fastopt.Adam(flat, learning_rate=0.01, backend="numba")
    for step in range(5):
        grads = [gradient(rng, s, np.float32, step) for s in shapes]
        many.step(grads)
        one.step(np.concatenate([g.ravel() for g in grads]))
    assert np.array_equal(np.concatenate([p.ravel() for p in params]), flat)


@pytest.mark.parametrize("clip", [None, "clipnorm", "global_clipnorm"])
def test_results_do_not_depend_on_threads_or_threshold(clip):
    """Bit-identical results: 1 or 2 threads, serial or parallel kernels."""
    if "numba" not in BACKENDS:
        pytest.skip("numba backend not available")
    kw = {clip: 1.0} if clip else {}
    rng = np.random.default_rng(5)
    shapes = [(100_003,), (70_001,), (9,)]
    grads = [[gradient(rng, s, np.float32, k) for s in shapes] for k in range(8)]
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    before = (fastopt.get_num_threads(), fastopt.get_parallel_threshold("float32"))
    results = []
    try:
        for threads, threshold in [(1, 2 ** 62), (2, 0), (1, 0), (2, 2 ** 62)]:
            if threads > fastopt.backends.get_backend("numba").max_threads():
                continue
            fastopt.set_num_threads(threads)
            fastopt.set_parallel_threshold(threshold, "float32")
            params = [p.copy() for p in start]
            opt = fastopt.Adam(params, learning_rate=0.01, backend="numba", **kw)
            for g in grads:
                opt.step(g)
            results.append(np.concatenate(params))
    finally:
        fastopt.set_num_threads(before[0])
        fastopt.set_parallel_threshold(None, "float32")  # the tuned values again
    assert len(results) >= 2
    for r in results[1:]:
        assert np.array_equal(r, results[0])


@pytest.mark.parametrize("name", [cls.__name__ for cls in KERAS_CLASSES])
def test_defaults_are_keras_defaults(name):
    opt = getattr(fastopt, name)(np.zeros(3))
    config = opt.get_config()
    for key, value in KERAS_DEFAULTS[name].items():
        assert config[key] == value, key
    assert config["convention"] == "keras"


def test_iterations_count_and_schedule_sees_them():
    seen = []
    opt = fastopt.SGD(np.zeros(2), learning_rate=lambda it: seen.append(it) or 0.1)
    for _ in range(3):
        opt.step(np.ones(2))
    assert seen == [0, 1, 2] and opt.iterations == opt.calls == 3


@pytest.mark.parametrize("convention", ["keras", "torch"])
def test_under_accumulation_iterations_counts_updates_and_schedules_see_calls(convention):
    """Keras 3's counters: ``iterations`` is ``_iterations // steps`` (the
    updates), while schedules are called with ``_iterations`` (the calls)."""
    seen = []
    opt = fastopt.Adam(np.zeros(2), learning_rate=lambda it: seen.append(it) or 0.1,
                       gradient_accumulation_steps=3, convention=convention)
    counts = []
    for _ in range(8):
        opt.step(np.ones(2))
        counts.append((opt.calls, opt.iterations))
    assert counts == [(1, 0), (2, 0), (3, 1), (4, 1), (5, 1), (6, 2), (7, 2), (8, 2)]
    assert seen == [2, 5]  # evaluated on the updating calls, at the call count
    assert opt.current_learning_rate() == 0.1 and seen[-1] == 8


@pytest.mark.parametrize("row, convention", with_conventions())
def test_each_row_selects_its_kernel(row, convention):
    """The kernel rule tests/optim_db.py names for a variant is the one its
    class picks (the kernel tests feed that rule the row's scalars)."""
    assert row.cls(np.zeros(1), convention=convention, **row.kwargs).rule == \
        row.rules[convention]


@pytest.mark.parametrize("variant,rule", [
    (dict(), "sgd"), (dict(momentum=0.5), "sgd_momentum"),
    (dict(momentum=0.5, nesterov=True), "sgd_nesterov"), (dict(nesterov=True), "sgd")])
def test_sgd_variant_selects_kernel(variant, rule):
    assert fastopt.SGD(np.zeros(1), **variant).rule == rule


def test_zero_size_and_zero_d_params():
    p0 = np.array(1.5)  # 0-d
    empty = np.zeros((0, 3))
    opt = fastopt.Adam([p0, empty], learning_rate=0.1)
    opt.step([np.array(1.0), np.zeros((0, 3))])
    assert p0.shape == () and math.isclose(float(p0), 1.5 - 0.1, rel_tol=1e-6)


def test_exclude_from_weight_decay_method_follows_keras():
    kernel, bias, scale = np.ones(4), np.ones(2), np.ones(3)
    params = {"dense/kernel": kernel, "dense/bias": bias, "norm/scale": scale}
    opt = fastopt.AdamW(params, learning_rate=0.1, weight_decay=0.5)
    opt.exclude_from_weight_decay(var_names=["bias", "^norm/"])   # one regex, searched
    assert opt.get_config()["exclude_from_weight_decay"] == ["dense/bias", "norm/scale"]
    opt.exclude_from_weight_decay(var_list=[kernel])              # replaces the names
    assert opt.get_config()["exclude_from_weight_decay"] == ["dense/kernel"]
    zero = {k: np.zeros_like(v) for k, v in params.items()}
    opt.step(zero)                     # zero gradients: only the decay moves weights
    assert np.all(kernel == 1.0) and np.all(bias < 1.0) and np.all(scale < 1.0)
    with pytest.raises(ValueError, match="before the first step"):
        opt.exclude_from_weight_decay(var_names=["bias"])
    other = fastopt.AdamW([np.ones(2)])
    with pytest.raises(ValueError, match="not one of the optimizer's parameters"):
        other.exclude_from_weight_decay(var_list=[np.ones(2)])
    with pytest.raises(ValueError, match="regular expression"):
        other.exclude_from_weight_decay(var_names=["("])
    with pytest.raises(TypeError, match="strings"):
        other.exclude_from_weight_decay(var_names=[3])
    restored = fastopt.AdamW.from_config(params, opt.get_config())
    assert restored.get_config()["exclude_from_weight_decay"] == ["dense/kernel"]


def test_groups_of_named_parameters_take_one_flat_dict_of_gradients():
    w, b, s = np.ones(3), np.ones(2), np.ones(4)
    groups = [{"params": {"w": w, "b": b}}, {"params": {"s": s}, "learning_rate": 0.5}]
    opt = fastopt.SGD(groups, learning_rate=0.1)
    opt.step({"s": np.ones(4), "w": np.ones(3), "b": np.ones(2)})   # any order
    np.testing.assert_allclose(w, 0.9)
    np.testing.assert_allclose(s, 0.5)
    twin_w, twin_b, twin_s = np.ones(3), np.ones(2), np.ones(4)
    twin = fastopt.SGD([{"params": {"w": twin_w, "b": twin_b}},
                        {"params": {"s": twin_s}, "learning_rate": 0.5}], learning_rate=0.1)
    twin.step([{"w": np.ones(3), "b": np.ones(2)}, {"s": np.ones(4)}])  # per group, as before
    np.testing.assert_array_equal(w, twin_w)
    with pytest.raises(ValueError, match="missing \\['s'\\]"):
        opt.step({"w": np.ones(3), "b": np.ones(2)})
    unnamed = fastopt.SGD([{"params": [np.ones(2)]}, {"params": {"x": np.ones(2)}}])
    with pytest.raises(TypeError, match="a flat dict of gradients needs every"):
        unnamed.step({"x": np.ones(2)})
    with pytest.raises(ValueError, match="names repeat across param groups"):
        fastopt.SGD([{"params": {"x": np.ones(2)}}, {"params": {"x": np.ones(2)}}])
