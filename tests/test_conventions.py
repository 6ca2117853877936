"""The PyTorch convention, parameter groups, and Keras's optimizer extras.

Torch-convention trajectories are compared with the independent driver in
``tests/torch_spec.py`` (PyTorch's formulas written out in PyTorch's own
order).  Tolerances, relative to the largest parameter displacement: float64
``1e-10`` -- the two sides arrange the same formulas differently (Adam's
epsilon folded into the bias correction, ``m + (g - m)(1 - b1)`` against
``b1 m + (1 - b1) g``), which costs a few ulps per step; float32 as in
``test_optimizers``: ``2e-4`` of the displacement plus 8 float32 ulps.
The extras (EMA, accumulation, loss scaling, exclusion, maximize) are
checked against plain optimizers driven by hand, mostly bit for bit.
"""
import numpy as np
import pytest

import fastopt
from fastopt import schedules

from cases import HOST_BACKENDS, gradient
from optim_db import CLASSES, DB
from torch_spec import TORCH_DEFAULTS, TorchSpec

BACKENDS = HOST_BACKENDS
SHAPES = [(1,), (7, 3), (1025,)]

# every row's torch-convention samples: (sample id, class, fastopt keywords)
TORCH_SAMPLES = [(sample_id, row.cls, kw) for row in DB for sample_id, kw in row.torch_samples]


def assert_close_to_spec(params, spec, p0, dtype, rtol64=1e-10):
    disp = max(float(np.max(np.abs(s - p))) for s, p in zip(spec.params, p0))
    assert disp > 1e-4, "the trajectory did not move"
    for i, (p, s) in enumerate(zip(params, spec.params)):
        err = np.abs(p.astype(np.float64) - s)
        if dtype == np.float64:
            bound = rtol64 * disp
        else:
            bound = 2e-4 * disp + 8 * np.spacing(np.abs(s).astype(np.float32)).astype(np.float64)
        assert np.all(err <= bound), f"param {i}: max error {err.max():.3g}, displacement {disp:.3g}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("opt_id,cls,kwargs", TORCH_SAMPLES, ids=[o[0] for o in TORCH_SAMPLES])
def test_torch_trajectory_matches_torch_spec(opt_id, cls, kwargs, backend, dtype):
    rng = np.random.default_rng(1)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    p0 = [p.astype(np.float64) for p in params]
    opt = cls(params, backend=backend, convention="torch", **kwargs)
    spec = TorchSpec(cls.__name__, params, **kwargs)
    for step in range(20):
        grads = [gradient(rng, s, dtype, step % 10) for s in SHAPES]
        opt.step(grads)
        spec.step(grads)
    assert_close_to_spec(opt.params, spec, p0, dtype)
    if dtype == np.float64:  # slots too, under fastopt's (Keras) slot names
        slots = opt.state_dict()["slots"]
        for i, st in enumerate(spec.state):
            for name, value in st.items():
                if name == "step":
                    continue
                # a scalar torch keeps per parameter: fastopt's host state, one
                # per parameter group (every parameter steps together)
                got = opt.host_state()[f"{name}/0"] if np.ndim(value) == 0 \
                    else slots[f"{name}/{i}"]
                scale = float(np.max(np.abs(value))) + 1e-300
                assert np.max(np.abs(got - value)) <= 1e-10 * scale, f"slot {name}/{i}"


@pytest.mark.parametrize("cls", [c for c in CLASSES if "torch" in c._CONVENTIONS],
                         ids=lambda c: c.__name__)
def test_torch_defaults(cls):
    config = fastopt_config(cls(np.zeros(3), convention="torch"))
    for key, value in TORCH_DEFAULTS[cls.__name__].items():
        assert config[key] == pytest.approx(value) or (value == 0.0 and config[key] is None), key


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_each_class_offers_its_frameworks_conventions(cls):
    """A class defaults to its first convention and refuses, with a clear
    error, a convention whose framework has no such optimizer (Lion: Keras
    only)."""
    assert cls(np.zeros(3)).convention == cls._CONVENTIONS[0]
    for convention in ("keras", "torch"):
        if convention in cls._CONVENTIONS:
            assert cls(np.zeros(3), convention=convention).convention == convention
        else:
            with pytest.raises(ValueError, match=f"convention='{convention}' is not offered: "
                                                 f"{cls.__name__} exists in .* only"):
                cls(np.zeros(3), convention=convention)


def test_a_one_framework_class_is_refused_by_the_other_convention():
    with pytest.raises(ValueError, match="PyTorch 2.13 has no Lion"):
        fastopt.Lion(np.zeros(3), convention="torch")
    with pytest.raises(ValueError, match="convention must be 'keras', got 'tf'"):
        fastopt.Lion(np.zeros(3), convention="tf")


def fastopt_config(opt):
    return opt.get_config()


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_a_class_of_one_framework_has_that_convention_only(cls):
    """A class that exists in one framework (torch's RAdam) defaults to its
    convention and refuses the other, naming the framework; the others
    default to Keras's and take both."""
    offered = cls._CONVENTIONS
    assert cls(np.zeros(3)).convention == ("keras" if "keras" in offered else "torch")
    for convention in ("keras", "torch"):
        if convention in offered:
            assert cls(np.zeros(3), convention=convention).convention == convention
            continue
        name = cls.__name__
        with pytest.raises(ValueError, match=rf"{name}: convention='{convention}' is not "
                                             rf"offered: {name} exists in (PyTorch 2\.13|Keras "
                                             rf"3\.15|the schedulefree package) only"):
            cls(np.ones(3), convention=convention)


def test_every_row_has_torch_samples_under_its_own_rule():
    """Every variant that supports the torch convention is run against the
    spec, and each sample selects the row's torch rule."""
    for row in DB:
        if "torch" not in row.conventions:
            continue
        assert row.torch_samples, row.id
        for sample_id, kw in row.torch_samples:
            rule = row.cls(np.zeros(3), convention="torch", **kw).rule
            assert rule == row.rules["torch"], (sample_id, rule)


def test_keras_defaults_unchanged_by_the_torch_ones():
    assert fastopt.Adam(np.zeros(3)).get_config()["epsilon"] == 1e-7
    assert fastopt.RMSprop(np.zeros(3)).get_config()["rho"] == 0.9
    assert fastopt.Adagrad(np.zeros(3)).get_config()["initial_accumulator_value"] == 0.1
    assert fastopt.AdamW(np.zeros(3)).weight_decay == 0.004
    assert fastopt.AdamW(np.zeros(3), convention="torch").weight_decay == 0.01


def test_torch_and_keras_differ_where_documented():
    """Same hyperparameters, different formulas: the conventions really differ."""
    rng = np.random.default_rng(0)
    g = rng.standard_normal(50)
    out = {}
    for conv in ("keras", "torch"):
        p = np.ones(50)
        opt = fastopt.RMSprop(p, learning_rate=0.01, rho=0.9, epsilon=1e-2, momentum=0.5,
                              convention=conv)
        for _ in range(3):
            opt.step(g)
        out[conv] = p
    assert np.max(np.abs(out["keras"] - out["torch"])) > 1e-4


# -- parameter groups --------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_param_groups_match_separate_optimizers_with_one_call_per_group(backend):
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((4, 5)), rng.standard_normal(9)
    c = rng.standard_normal(6)
    twins = [x.copy() for x in (a, b, c)]
    opt = fastopt.SGD([{"params": [a, b], "learning_rate": 0.1},
                       {"params": {"c": c}, "weight_decay": 0.2, "momentum": 0.0}],
                      learning_rate=0.05, momentum=0.9, convention="torch", backend=backend)
    sep1 = fastopt.SGD(twins[:2], learning_rate=0.1, momentum=0.9, convention="torch",
                       backend=backend)
    sep2 = fastopt.SGD({"c": twins[2]}, learning_rate=0.05, weight_decay=0.2,
                       convention="torch", backend=backend)
    assert opt.rule == ("sgd_momentum_torch", "sgd")
    calls = []
    for group in opt._groups:
        real_step = group.plan.step
        group.plan.step = lambda *args, _s=real_step: (calls.append(1), _s(*args))
    for step in range(8):
        ga, gb, gc = (gradient(rng, x.shape, np.float64, step) for x in (a, b, c))
        opt.step([[ga, gb], {"c": gc}])
        sep1.step([ga, gb])
        sep2.step({"c": gc})
    assert len(calls) == 8 * 2  # one fused call per group per step, not per tensor
    for x, y in zip((a, b, c), twins):
        np.testing.assert_array_equal(x, y)
    structure = opt.params
    assert structure[0]["learning_rate"] == 0.1 and structure[0]["params"][0] is a
    assert structure[1]["params"]["c"] is c
    assert [g["learning_rate"] for g in opt.param_groups] == [0.1, 0.05]


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_decay_coupling_is_per_group(backend):
    """RAdam's ``decoupled_weight_decay`` set per group: each group decays as
    an optimizer of its own would (L2 in one, decoupled in the other)."""
    rng = np.random.default_rng(12)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal(5)
    twins = [a.copy(), b.copy()]
    opt = fastopt.RAdam([{"params": [a]}, {"params": [b], "decoupled_weight_decay": True}],
                        learning_rate=0.05, weight_decay=0.3, backend=backend)
    l2 = fastopt.RAdam([twins[0]], learning_rate=0.05, weight_decay=0.3, backend=backend)
    decoupled = fastopt.RAdam([twins[1]], learning_rate=0.05, weight_decay=0.3,
                              decoupled_weight_decay=True, backend=backend)
    for step in range(8):
        ga, gb = (gradient(rng, x.shape, np.float64, step) for x in (a, b))
        opt.step([[ga], [gb]])
        l2.step([ga])
        decoupled.step([gb])
    np.testing.assert_array_equal(a, twins[0])
    np.testing.assert_array_equal(b, twins[1])
    assert [g["decoupled_weight_decay"] for g in opt.param_groups] == [False, True]
    # and the two forms differ (the flag is not ignored): the same run both ways
    runs = []
    for flag in (False, True):
        x = np.linspace(-1.0, 1.0, 5)
        one = fastopt.RAdam(x, learning_rate=0.05, weight_decay=0.3,
                            decoupled_weight_decay=flag, backend=backend)
        for step in range(8):
            one.step(np.full(5, 0.5))
        runs.append(x)
    assert np.max(np.abs(runs[0] - runs[1])) > 1e-3


def test_param_groups_state_round_trip(tmp_path):
    def make():
        rng = np.random.default_rng(5)
        ps = [rng.standard_normal(s) for s in [(3,), (2, 2), (5,)]]
        return ps, fastopt.Adam([{"params": ps[:2]}, {"params": ps[2:], "learning_rate": 0.1,
                                                      "amsgrad": True}],
                                learning_rate=0.01, convention="torch")
    ps1, opt1 = make()
    ps2, opt2 = make()
    rng = np.random.default_rng(9)
    grads = [[gradient(rng, p.shape, np.float64, k) for p in ps1] for k in range(10)]
    for k in range(5):
        opt1.step([grads[k][:2], grads[k][2:]])
        opt2.step([grads[k][:2], grads[k][2:]])
    fastopt.save_state(opt1, tmp_path / "s.npz")
    ps3, opt3 = make()
    for dst, src in zip(ps3, ps1):
        dst[...] = src
    fastopt.load_state(opt3, tmp_path / "s.npz")
    assert opt3.rule == ("adam_torch", "adam_amsgrad_torch")
    for k in range(5, 10):
        opt2.step([grads[k][:2], grads[k][2:]])
        opt3.step([grads[k][:2], grads[k][2:]])
    for x, y in zip(ps2, ps3):
        np.testing.assert_array_equal(x, y)


def test_param_group_errors_change_nothing():
    p, q = np.ones(3), np.ones(2)
    with pytest.raises(ValueError, match=r"param group 1 has unknown key\(s\) \['lr'\]"):
        fastopt.SGD([{"params": [p]}, {"params": [q], "lr": 0.1}])
    with pytest.raises(ValueError, match=r"SGD \(param group 0\): momentum must be >= 0"):
        fastopt.SGD([{"params": [p], "momentum": -1.0}])
    with pytest.raises(TypeError, match="mixes parameter-group dicts and arrays"):
        fastopt.SGD([{"params": [p]}, q])
    opt = fastopt.SGD([{"params": [p]}, {"params": [q]}], learning_rate=0.1)
    with pytest.raises(TypeError, match="one entry per group"):
        opt.step([np.ones(3), np.ones(2)][:1])
    with pytest.raises(ValueError, match=r"grads\[1\] has shape \(3,\) but params\[1\] has shape \(2,\)"):
        opt.step([[np.ones(3)], [np.ones(3)]])
    assert (p == 1).all() and (q == 1).all() and opt.iterations == 0


# -- Keras extras ------------------------------------------------------------------

@pytest.mark.parametrize("convention", ["keras", "torch"])
def test_ema_and_overwrite_against_a_hand_driven_average(convention):
    rng = np.random.default_rng(2)
    p = rng.standard_normal(20)
    twin = p.copy()
    opt = fastopt.SGD(p, learning_rate=0.1, momentum=0.5, use_ema=True, ema_momentum=0.9,
                      ema_overwrite_frequency=4, convention=convention)
    plain = fastopt.SGD(twin, learning_rate=0.1, momentum=0.5, convention=convention)
    avg = None
    for step in range(10):
        g = gradient(rng, p.shape, np.float64, step)
        opt.step(g)
        plain.step(g)
        m = 0.9 if step else 0.0
        avg = twin.copy() if avg is None else m * avg + (1 - m) * twin
        if (step + 1) % 4 == 0:
            twin[...] = avg
        np.testing.assert_allclose(p, twin, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(opt.ema_params, avg, rtol=1e-14)
    opt.finalize_variable_values()
    np.testing.assert_array_equal(p, opt.ema_params)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_accumulation_equals_stepping_on_the_mean(backend):
    """Keras counting: schedules see every call, Adam's t the update count."""
    rng = np.random.default_rng(4)
    p = rng.standard_normal(30)
    twin = p.copy()
    lr = schedules.InverseTimeDecay(0.05, decay_steps=1, decay_rate=0.5)
    opt = fastopt.Adam(p, learning_rate=lr, gradient_accumulation_steps=3, backend=backend)
    plain = fastopt.Adam(twin, learning_rate=lambda it: lr(3 * it + 2), backend=backend)
    for update in range(4):
        gs = [gradient(rng, p.shape, np.float64, 3 * update + k) for k in range(3)]
        before = p.copy()
        for k, g in enumerate(gs):
            opt.step(g)
            if k < 2:
                np.testing.assert_array_equal(p, before)  # only accumulating
        plain.step((gs[2] + (gs[0] + gs[1])) / 3)
        np.testing.assert_allclose(p, twin, rtol=1e-13, atol=1e-15)
    assert opt.calls == 12 and opt.iterations == plain.iterations == plain.calls == 4
    assert all((v == 0).all() for k, v in opt.state_dict()["slots"].items()
               if k.startswith("gradient_accumulator/"))


def test_gradient_accumulation_rejects_none_gradients():
    p, q = np.ones(3), np.ones(2)
    opt = fastopt.SGD([p, q], gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match=r"grads\[1\] is None; with gradient_accumulation_steps"):
        opt.step([np.ones(3), None])
    assert opt.iterations == 0 and (p == 1).all()


@pytest.mark.parametrize("kwargs", [{}, {"clipnorm": 0.3}, {"global_clipnorm": 0.3},
                                    {"clipvalue": 0.01}], ids=["plain", "clipnorm",
                                                               "global", "clipvalue"])
@pytest.mark.parametrize("convention", ["keras", "torch"])
def test_loss_scale_factor_unscales_first(kwargs, convention):
    """A power-of-two scale is exact, so scaled and unscaled runs agree bit for bit."""
    rng = np.random.default_rng(6)
    ps = [rng.standard_normal(8), rng.standard_normal(5)]
    twins = [p.copy() for p in ps]
    opt = fastopt.Adam(ps, learning_rate=0.01, loss_scale_factor=1024.0,
                       convention=convention, **kwargs)
    plain = fastopt.Adam(twins, learning_rate=0.01, convention=convention, **kwargs)
    for step in range(6):
        gs = [gradient(rng, p.shape, np.float64, step) for p in ps]
        opt.step([g * 1024.0 for g in gs])
        plain.step(gs)
    for p, t in zip(ps, twins):
        np.testing.assert_allclose(p, t, rtol=1e-15, atol=0)


@pytest.mark.parametrize("convention", ["keras", "torch"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_exclude_from_weight_decay(backend, convention):
    w, bias = np.full(6, 2.0), np.full(3, 2.0)
    opt = fastopt.SGD({"w": w, "bias": bias}, learning_rate=0.1, weight_decay=0.5,
                      exclude_from_weight_decay=["bias"], convention=convention,
                      backend=backend)
    opt.step({"w": np.zeros(6), "bias": np.zeros(3)})
    assert (bias == 2.0).all()
    np.testing.assert_allclose(w, 2.0 * (1 - 0.1 * 0.5))  # same first step both ways
    by_index = fastopt.AdamW([np.full(4, 1.0), np.full(4, 1.0)], learning_rate=0.1,
                             exclude_from_weight_decay=[0], convention=convention,
                             backend=backend)
    by_index.step([np.zeros(4), np.zeros(4)])
    p0, p1 = by_index.params
    assert (p0 == 1.0).all() and (p1 < 1.0).all()


@pytest.mark.parametrize("convention", ["keras", "torch"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_maximize_is_descent_on_the_negated_gradient(backend, convention):
    rng = np.random.default_rng(8)
    p = rng.standard_normal(40)
    twin = p.copy()
    opt = fastopt.RMSprop(p, learning_rate=0.01, momentum=0.5, weight_decay=0.1,
                          maximize=True, convention=convention, backend=backend)
    plain = fastopt.RMSprop(twin, learning_rate=0.01, momentum=0.5, weight_decay=0.1,
                            convention=convention, backend=backend)
    for step in range(6):
        g = gradient(rng, p.shape, np.float64, step)
        opt.step(g)
        plain.step(-g)
    np.testing.assert_array_equal(p, twin)


def test_extras_round_trip_through_state(tmp_path):
    def make():
        rng = np.random.default_rng(10)
        ps = {"a": rng.standard_normal(7), "b": rng.standard_normal((2, 3))}
        return ps, fastopt.AdamW(ps, learning_rate=0.01, use_ema=True,
                                 ema_overwrite_frequency=5, gradient_accumulation_steps=2,
                                 exclude_from_weight_decay=["b"], loss_scale_factor=8.0)
    ps1, opt1 = make()
    ps2, opt2 = make()
    rng = np.random.default_rng(11)
    grads = [{k: gradient(rng, v.shape, np.float64, s) for k, v in ps1.items()}
             for s in range(13)]
    for g in grads[:7]:  # stop mid-accumulation
        opt1.step(g)
        opt2.step(g)
    fastopt.save_state(opt1, tmp_path / "s.npz")
    ps3, opt3 = make()
    for k in ps3:
        ps3[k][...] = ps1[k]
    fastopt.load_state(opt3, tmp_path / "s.npz")
    for g in grads[7:]:
        opt2.step(g)
        opt3.step(g)
    for k in ps2:
        np.testing.assert_array_equal(ps2[k], ps3[k])
    for k in ps2:
        np.testing.assert_array_equal(opt2.ema_params[k], opt3.ema_params[k])
    assert opt3.get_config()["exclude_from_weight_decay"] == ["b"]
