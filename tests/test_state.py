"""Saving, restoring and configuring optimizers.

Resuming from a saved state must be *bit-identical* to never having stopped:
same kernels, same slots, same iteration count (Adam's bias correction), same
hyperparameters and learning-rate schedule.  Loading a state that does not fit
raises ``ValueError`` and changes nothing.
"""
import json
import os

import numpy as np
import pytest

import fastopt
from fastopt import schedules
from cases import gradient
from optim_db import DB

BACKENDS = [b for b in ("numpy", "numba") if b in fastopt.available_backends()]

SHAPES = [(3, 4), (5,), (), (2, 1, 3), (0,)]
PARAM_SETS = ["float32", "float64", "mixed", "dict"]


def make_params(kind, seed=0):
    rng = np.random.default_rng(seed)
    if kind in ("float32", "float64"):
        return [rng.standard_normal(s).astype(kind) for s in SHAPES]
    dtypes = [np.float32, np.float64, np.float64, np.float32, np.float64]
    arrays = [rng.standard_normal(s).astype(dt) for s, dt in zip(SHAPES, dtypes)]
    if kind == "mixed":
        return arrays
    return {f"layer{i}.w": a for i, a in enumerate(arrays)}


def copy_params(params):
    if isinstance(params, dict):
        return {k: v.copy() for k, v in params.items()}
    return [p.copy() for p in params]


def as_list(params):
    return list(params.values()) if isinstance(params, dict) else list(params)


def grads_for(params, rng, step):
    if isinstance(params, dict):
        return {k: gradient(rng, v.shape, v.dtype, step) for k, v in params.items()}
    return [gradient(rng, p.shape, p.dtype, step) for p in params]


def snapshot(opt):
    state = opt.state_dict()
    return ([p.copy() for p in as_list(opt.params)], state["slots"],
            (opt.iterations, opt.calls), json.dumps(opt.get_config(), sort_keys=True))


def assert_same_snapshot(a, b):
    params_a, slots_a, it_a, config_a = a
    params_b, slots_b, it_b, config_b = b
    assert it_a == it_b
    assert config_a == config_b
    assert len(params_a) == len(params_b)
    for x, y in zip(params_a, params_b):
        assert x.dtype == y.dtype and np.array_equal(x, y)
    assert set(slots_a) == set(slots_b)
    for k in slots_a:
        assert slots_a[k].dtype == slots_b[k].dtype
        assert np.array_equal(slots_a[k], slots_b[k]), k


def assert_same_state(opt_a, opt_b):
    assert_same_snapshot(snapshot(opt_a), snapshot(opt_b))


# ---------------------------------------------------------------------------
# Save, load, resume: bit-identical

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", PARAM_SETS)
@pytest.mark.parametrize("row", DB, ids=str)
def test_save_load_resume_is_bit_identical(tmp_path, backend, kind, row):
    cls, kw = row.cls, row.kwargs
    params = make_params(kind)
    opt = row.make(params, backend=backend)
    rng = np.random.default_rng(1)
    k = 4
    for step in range(k):
        opt.step(grads_for(params, rng, step))
    path = tmp_path / "state.npz"
    fastopt.save_state(opt, path)

    resumed_params = copy_params(params)
    # a new optimizer of the same variant (same slot set) but the default
    # learning rate: the learning rate comes from the file
    resumed = cls(resumed_params, backend=backend, **kw)
    assert resumed.learning_rate != opt.learning_rate
    fastopt.load_state(resumed, path)
    assert resumed.iterations == k
    assert resumed.get_config() == opt.get_config()
    assert_same_state(opt, resumed)

    for step in range(k, k + 5):
        g = grads_for(params, rng, step)
        opt.step(g)
        resumed.step(g)
    assert resumed.iterations == opt.iterations == k + 5
    assert_same_state(opt, resumed)
    # and training really moved things after the load (the comparison is not vacuous)
    assert not all(np.array_equal(a, b) for a, b in
                   zip(as_list(resumed_params), as_list(make_params(kind))) if a.size)


@pytest.mark.parametrize("row", DB, ids=str)
def test_state_dict_round_trip_in_memory(row):
    cls, kw = row.cls, row.kwargs
    params = make_params("mixed")
    opt = row.make(params)
    rng = np.random.default_rng(2)
    for step in range(3):
        opt.step(grads_for(params, rng, step))
    state = opt.state_dict()
    other_params = copy_params(params)
    other = cls(other_params, **kw)
    other.load_state_dict(state)
    assert_same_state(opt, other)
    for step in range(3, 6):
        g = grads_for(params, rng, step)
        opt.step(g)
        other.step(g)
    assert_same_state(opt, other)


def test_resume_with_schedule_learning_rate(tmp_path):
    schedule = schedules.ExponentialDecay(0.05, decay_steps=3, decay_rate=0.5)
    params = make_params("mixed")
    opt = fastopt.Adam(params, learning_rate=schedule)
    rng = np.random.default_rng(3)
    for step in range(4):
        opt.step(grads_for(params, rng, step))
    path = tmp_path / "s.npz"
    fastopt.save_state(opt, path)
    with np.load(path, allow_pickle=False) as z:
        config = json.loads(str(z["__config__"]))
    assert config["learning_rate"] == {"class_name": "ExponentialDecay",
                                       "config": schedule.get_config()}

    resumed = fastopt.Adam(copy_params(params), learning_rate=0.5)
    fastopt.load_state(resumed, path)
    assert isinstance(resumed.learning_rate, schedules.ExponentialDecay)
    assert resumed.learning_rate.get_config() == schedule.get_config()
    assert resumed.current_learning_rate() == opt.current_learning_rate() == schedule(4)
    for step in range(4, 10):
        g = grads_for(params, rng, step)
        opt.step(g)
        resumed.step(g)
    assert_same_state(opt, resumed)


def test_custom_callable_learning_rate(tmp_path):
    def lr(t):
        return 0.01 / (1 + t)

    params = make_params("float64")
    opt = fastopt.RMSprop(params, learning_rate=lr, momentum=0.5)
    rng = np.random.default_rng(4)
    for step in range(3):
        opt.step(grads_for(params, rng, step))
    state = opt.state_dict()  # works
    assert state["config"]["learning_rate"]["class_name"] == "callable"
    json.dumps(state["config"])
    with pytest.raises(ValueError, match="custom callable"):
        fastopt.RMSprop.from_config(copy_params(params), state["config"])

    path = tmp_path / "c.npz"
    fastopt.save_state(opt, path)

    # an optimizer without the callable cannot take the state, and is unchanged
    plain = fastopt.RMSprop(copy_params(params), learning_rate=0.1, momentum=0.5)
    plain.step(grads_for(as_list(plain.params), np.random.default_rng(9), 0))
    before = snapshot(plain)
    with pytest.raises(ValueError, match="custom callable"):
        plain.load_state_dict(state)
    with pytest.raises(ValueError, match="custom callable"):
        fastopt.load_state(plain, path)
    assert_same_snapshot(before, snapshot(plain))
    assert plain.learning_rate == 0.1

    # one given the callable can, from memory and from the file
    for source in (state, path):
        resumed_params = copy_params(params)
        resumed = fastopt.RMSprop(resumed_params, learning_rate=lr, momentum=0.5)
        if isinstance(source, dict):
            resumed.load_state_dict(source)
        else:
            fastopt.load_state(resumed, source)
        assert resumed.learning_rate is lr
        assert resumed.iterations == 3
        ref = fastopt.RMSprop(copy_params(params), learning_rate=lr, momentum=0.5)
        ref.load_state_dict(opt.state_dict())
        rng2 = np.random.default_rng(5)
        for step in range(3, 6):
            g = grads_for(params, rng2, step)
            ref.step(g)
            resumed.step(g)
        assert_same_state(ref, resumed)


@pytest.mark.parametrize("row", DB, ids=str)
def test_file_reads_without_pickle(tmp_path, row):
    cls, kw = row.cls, row.kwargs
    params = make_params("dict")
    opt = cls(params, **kw)
    opt.step(grads_for(params, np.random.default_rng(0), 0))
    path = tmp_path / "x.npz"
    fastopt.save_state(opt, path)
    with np.load(path, allow_pickle=False) as z:
        assert z.files
        arrays = {k: z[k] for k in z.files}
    for k, a in arrays.items():
        assert a.dtype != object and not a.dtype.hasobject, k
    slots = opt.state_dict()["slots"]
    assert {k for k in arrays if k.startswith("slot:")} == {"slot:" + k for k in slots}
    for k, v in slots.items():
        assert arrays["slot:" + k].dtype == v.dtype
        assert np.array_equal(arrays["slot:" + k], v)
    assert int(arrays["__iterations__"]) == 1
    assert json.loads(str(arrays["__config__"])) == opt.get_config()


# ---------------------------------------------------------------------------
# Gradient accumulation: two counters, a resume mid-cycle, older states
#
# ``iterations`` counts the updates, ``calls`` the step calls (what schedules
# see); the state holds both, and the gradient accumulators.  A state without
# "calls" (written before it existed) counted the calls in "iterations".

STEPS = 3  # gradient_accumulation_steps of the tests below


def accumulating(params, backend="numpy", **kw):
    return fastopt.Adam(params, learning_rate=schedules.ExponentialDecay(
        0.05, decay_steps=1, decay_rate=0.8), gradient_accumulation_steps=STEPS,
        use_ema=True, ema_overwrite_frequency=2, backend=backend, **kw)


def run_calls(opt, params, start, stop):
    rng = np.random.default_rng(7)
    grads = [grads_for(params, rng, step) for step in range(stop)]
    for step in range(start, stop):
        opt.step(grads[step])


def resumed_from(opt, make, params, route, tmp_path):
    """A new optimizer over copies of ``params`` that loaded ``opt``'s state
    (``route``: its state dict, or its file)."""
    new_params = copy_params(params)
    other = make(new_params)
    if route == "state_dict":
        other.load_state_dict(opt.state_dict())
    else:
        fastopt.save_state(opt, tmp_path / "s.npz")
        fastopt.load_state(other, tmp_path / "s.npz")
    return other, new_params


@pytest.mark.parametrize("route", ["state_dict", "file"])
@pytest.mark.parametrize("convention", ["keras", "torch"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_mid_accumulation_cycle_is_bit_identical(tmp_path, backend, convention, route):
    def make(params):
        return accumulating(params, backend=backend, convention=convention)
    params = make_params("dict")
    uninterrupted_params = copy_params(params)
    uninterrupted = make(uninterrupted_params)
    run_calls(uninterrupted, uninterrupted_params, 0, 14)
    for stop in (7, 8, 9):  # one and two calls into a cycle, and at its end
        stopped_params = copy_params(params)
        stopped = make(stopped_params)
        run_calls(stopped, stopped_params, 0, stop)
        state = stopped.state_dict()
        assert (state["calls"], state["iterations"]) == (stop, stop // STEPS)
        if stop % STEPS:
            assert any(np.any(v) for k, v in state["slots"].items()
                       if k.startswith("gradient_accumulator/"))
        resumed, resumed_params = resumed_from(stopped, make, stopped_params, route, tmp_path)
        assert (resumed.calls, resumed.iterations) == (stop, stop // STEPS)
        assert_same_state(stopped, resumed)
        run_calls(resumed, resumed_params, stop, 14)
        assert (resumed.calls, resumed.iterations) == (14, 14 // STEPS)
        assert_same_state(uninterrupted, resumed)
        np.testing.assert_array_equal(uninterrupted.ema_params["layer0.w"],
                                      resumed.ema_params["layer0.w"])


@pytest.mark.parametrize("route", ["state_dict", "file"])
@pytest.mark.parametrize("row", DB, ids=str)
def test_every_optimizer_resumes_mid_accumulation_cycle(tmp_path, row, route):
    def make(params):
        return row.make(params, gradient_accumulation_steps=STEPS)
    params = make_params("mixed")
    uninterrupted = make(copy_params(params))
    run_calls(uninterrupted, as_list(uninterrupted.params), 0, 10)
    stopped_params = copy_params(params)
    stopped = make(stopped_params)
    run_calls(stopped, stopped_params, 0, 5)
    resumed, resumed_params = resumed_from(stopped, make, stopped_params, route, tmp_path)
    run_calls(resumed, resumed_params, 5, 10)
    assert (resumed.calls, resumed.iterations) == (10, 3)
    assert_same_state(uninterrupted, resumed)


def test_the_file_stores_the_call_count(tmp_path):
    params = make_params("float64")
    opt = accumulating(params)
    run_calls(opt, params, 0, 7)
    fastopt.save_state(opt, tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:
        counters = {k: int(z[k]) for k in z.files if k.startswith("__") and "iter" in k}
        assert not any("call" in k for k in z.files)
    assert counters == {"__iterations__": 7}  # as every release has stored it


def _old_format_after(calls):
    """A state after ``calls`` calls, as a release before ``calls`` wrote it
    (its "iterations" counted the calls), and the optimizer that saved it."""
    params = make_params("float64")
    opt = accumulating(params)
    run_calls(opt, params, 0, calls)
    new = opt.state_dict()
    return {"config": new["config"], "iterations": calls, "slots": new["slots"]}, opt, params


@pytest.mark.parametrize("route", ["state_dict", "file"])
def test_an_old_format_state_counts_calls(tmp_path, route):
    old, opt, params = _old_format_after(7)
    target = accumulating(copy_params(params))
    if route == "state_dict":
        target.load_state_dict(old)
    else:  # written by hand, without __format_version__, as the first files were
        path = tmp_path / "old.npz"
        np.savez(path, __config__=np.array(json.dumps(old["config"])),
                 __iterations__=np.array(7), **{"slot:" + k: v for k, v in old["slots"].items()})
        fastopt.load_state(target, path)
    assert (target.calls, target.iterations) == (7, 2)
    assert_same_state(opt, target)
    run_calls(opt, as_list(opt.params), 7, 12)
    run_calls(target, as_list(target.params), 7, 12)
    assert_same_state(opt, target)


def test_a_state_with_only_calls_loads():
    old, opt, params = _old_format_after(8)
    target = accumulating(copy_params(params))
    target.load_state_dict({"config": old["config"], "calls": 8, "slots": old["slots"]})
    assert (target.calls, target.iterations) == (8, 2)
    assert_same_state(opt, target)


@pytest.mark.parametrize("accumulation", [True, False])
def test_counters_that_disagree_are_refused(accumulation):
    params = make_params("float64")
    opt = accumulating(params) if accumulation else fastopt.Adam(params)
    run_calls(opt, params, 0, 7)
    target = accumulating(copy_params(params)) if accumulation \
        else fastopt.Adam(copy_params(params))
    run_calls(target, as_list(target.params), 0, 2)
    before = snapshot(target)
    state = opt.state_dict()
    rule = "with gradient_accumulation_steps=3, 7 calls are 2 updates" if accumulation \
        else "without gradient accumulation the two are equal"
    for iterations in (state["iterations"] - 1, state["iterations"] + 1, 7 if accumulation
                       else 0):
        with pytest.raises(ValueError, match=r"the state's iterations \(\d+\) and calls "
                                             rf"\(7\) disagree: {rule}"):
            target.load_state_dict({**state, "iterations": iterations})
        assert_same_snapshot(before, snapshot(target))
    for calls in (-1, 2.0, "7", True, None):
        with pytest.raises(ValueError, match="calls must be an integer >= 0"):
            target.load_state_dict({**state, "calls": calls})
        assert_same_snapshot(before, snapshot(target))
    with pytest.raises(ValueError, match=r"'iterations' \(or 'calls'\)"):
        target.load_state_dict({"config": state["config"], "slots": state["slots"]})
    assert_same_snapshot(before, snapshot(target))
    target.load_state_dict(state)  # and the consistent state loads
    assert (target.calls, target.iterations) == (opt.calls, opt.iterations)


# ---------------------------------------------------------------------------
# Loading what does not fit: ValueError, nothing changed

def _trained(cls, params, seed=0, **kw):
    opt = cls(params, **kw)
    rng = np.random.default_rng(seed)
    for step in range(2):
        opt.step(grads_for(params, rng, step))
    return opt


MISMATCHES = {
    "other_class": (lambda: _trained(fastopt.AdamW, make_params("mixed")),
                    lambda: _trained(fastopt.Adam, make_params("mixed", 7), 7), "AdamW"),
    "other_class_sgd": (lambda: _trained(fastopt.SGD, make_params("mixed"), momentum=0.5),
                        lambda: _trained(fastopt.RMSprop, make_params("mixed", 7), 7,
                                         momentum=0.5), "SGD"),
    "amsgrad_true_into_false": (
        lambda: _trained(fastopt.Adam, make_params("mixed"), amsgrad=True),
        lambda: _trained(fastopt.Adam, make_params("mixed", 7), 7, amsgrad=False),
        "adam_amsgrad"),
    "amsgrad_false_into_true": (
        lambda: _trained(fastopt.Adam, make_params("mixed"), amsgrad=False),
        lambda: _trained(fastopt.Adam, make_params("mixed", 7), 7, amsgrad=True), "adam"),
    "momentum_into_plain": (
        lambda: _trained(fastopt.SGD, make_params("float64"), momentum=0.9),
        lambda: _trained(fastopt.SGD, make_params("float64", 7), 7), "sgd_momentum"),
    "centered_into_plain": (
        lambda: _trained(fastopt.RMSprop, make_params("float32"), centered=True),
        lambda: _trained(fastopt.RMSprop, make_params("float32", 7), 7), "rmsprop_centered"),
    "other_shapes": (
        lambda: _trained(fastopt.Adam, [np.ones((3, 4)), np.ones(5)]),
        lambda: _trained(fastopt.Adam, [np.ones((4, 3)), np.ones(5)], 7), r"\(3, 4\)"),
    "other_dtypes": (
        lambda: _trained(fastopt.Adagrad, [np.ones((3, 4)), np.ones(5, np.float32)]),
        lambda: _trained(fastopt.Adagrad, [np.ones((3, 4)), np.ones(5)], 7), "float32"),
    "other_count": (
        lambda: _trained(fastopt.Adam, [np.ones(3), np.ones(5)]),
        lambda: _trained(fastopt.Adam, [np.ones(3)], 7), "slots differ"),
    "other_names": (
        lambda: _trained(fastopt.Adam, {"a": np.ones(3), "b": np.ones(5)}),
        lambda: _trained(fastopt.Adam, {"a": np.ones(3), "c": np.ones(5)}, 7), "slots differ"),
}


@pytest.mark.parametrize("via", ["file", "dict"])
@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_loading_a_mismatched_state_raises_and_changes_nothing(tmp_path, case, via):
    make_source, make_target, match = MISMATCHES[case]
    source, target = make_source(), make_target()
    before = snapshot(target)
    lr_before = target.learning_rate
    with pytest.raises(ValueError, match=match):
        if via == "file":
            path = tmp_path / "m.npz"
            fastopt.save_state(source, path)
            fastopt.load_state(target, path)
        else:
            target.load_state_dict(source.state_dict())
    assert_same_snapshot(before, snapshot(target))
    assert target.learning_rate == lr_before


def test_loading_a_non_state_file_raises(tmp_path):
    opt = _trained(fastopt.Adam, make_params("float64"))
    before = snapshot(opt)
    path = tmp_path / "other.npz"
    np.savez(path, a=np.ones(3))
    with pytest.raises(ValueError, match="not a fastopt state file"):
        fastopt.load_state(opt, path)
    with pytest.raises(ValueError, match="iterations"):
        opt.load_state_dict({**opt.state_dict(), "iterations": -1})
    with pytest.raises(ValueError, match="'config'"):
        opt.load_state_dict({"slots": {}})
    assert_same_snapshot(before, snapshot(opt))


def test_load_restores_hyperparameters_and_iterations():
    params = make_params("float64")
    src = _trained(fastopt.SGD, params, momentum=0.25, nesterov=True, learning_rate=0.03,
                   clipvalue=0.5, weight_decay=0.01)
    dst = fastopt.SGD(copy_params(params), momentum=0.9, nesterov=True)
    assert dst.iterations == 0
    dst.load_state_dict(src.state_dict())
    assert dst.iterations == src.iterations == 2
    assert (dst.momentum, dst.nesterov, dst.learning_rate) == (0.25, True, 0.03)
    assert (dst.clipvalue, dst.weight_decay) == (0.5, 0.01)
    assert dst.get_config() == src.get_config()


# ---------------------------------------------------------------------------
# Config

CONFIG_VARIANTS = [
    {},
    {"clipnorm": 0.5},
    {"clipvalue": 2.0, "weight_decay": 0.01},
    {"global_clipnorm": 1.5, "learning_rate": 0.02},
    {"learning_rate": schedules.ExponentialDecay(0.1, 10, 0.9, staircase=True)},
    {"learning_rate": schedules.CosineDecay(0.1, 100, alpha=0.1)},
    {"backend": "numpy"},
]


@pytest.mark.parametrize("variant", range(len(CONFIG_VARIANTS)))
@pytest.mark.parametrize("row", DB, ids=str)
def test_get_config_is_json_and_from_config_round_trips(row, variant):
    cls, kw = row.cls, row.kwargs
    params = make_params("mixed")
    opt = cls(params, **{**kw, **CONFIG_VARIANTS[variant]})
    config = opt.get_config()
    text = json.dumps(config)
    assert json.loads(text) == config
    assert config["class_name"] == cls.__name__
    for k, v in {**kw, **CONFIG_VARIANTS[variant]}.items():
        if k != "learning_rate" or not callable(v):
            assert config[k] == v
    rebuilt = cls.from_config(copy_params(params), json.loads(text))
    assert type(rebuilt) is cls
    assert rebuilt.get_config() == config
    assert rebuilt.rule == opt.rule
    assert rebuilt.current_learning_rate() == opt.current_learning_rate()
    # a config is refused by another class, naming the class it is for
    other = fastopt.SGD if cls is not fastopt.SGD else fastopt.Adam
    with pytest.raises(ValueError, match=cls.__name__):
        other.from_config(copy_params(params), config)


def test_from_config_rebuilds_a_working_optimizer():
    params = make_params("mixed")
    opt = fastopt.AdamW(params, learning_rate=0.01, amsgrad=True, global_clipnorm=1.0)
    twin = fastopt.AdamW.from_config(copy_params(params), opt.get_config())
    rng = np.random.default_rng(0)
    for step in range(4):
        g = grads_for(params, rng, step)
        opt.step(g)
        twin.step(g)
    assert_same_state(opt, twin)


# ---------------------------------------------------------------------------
# A state_dict is a copy

@pytest.mark.parametrize("row", DB, ids=str)
def test_state_dict_is_a_copy(row):
    cls, kw = row.cls, row.kwargs
    params = make_params("mixed")
    opt = _trained(cls, params, **kw)
    twin = _trained(cls, copy_params(make_params("mixed")), **kw)
    assert_same_state(opt, twin)
    state = opt.state_dict()
    for a in state["slots"].values():
        a[...] = 123.0
    state["slots"].clear()
    state["config"]["learning_rate"] = 99.0
    for k in list(state["config"]):
        if k not in ("class_name", "learning_rate"):
            state["config"][k] = None
    state["iterations"] = 77
    assert_same_state(opt, twin)
    g = grads_for(params, np.random.default_rng(1), 2)
    opt.step(g)
    twin.step(g)
    assert_same_state(opt, twin)


def test_loaded_state_is_copied_in():
    """The optimizer does not keep references to the arrays it loaded."""
    params = make_params("float64")
    src = _trained(fastopt.Adam, params)
    state = src.state_dict()
    dst = fastopt.Adam(copy_params(params))
    dst.load_state_dict(state)
    expected = snapshot(dst)
    for a in state["slots"].values():
        a[...] = -5.0
    assert_same_snapshot(expected, snapshot(dst))


# ---------------------------------------------------------------------------
# Atomic write

def test_save_replaces_existing_file_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "state.npz"
    path.write_bytes(b"not an npz file at all")
    opt = _trained(fastopt.Adam, make_params("mixed"))
    fastopt.save_state(opt, path)
    assert os.listdir(tmp_path) == ["state.npz"]
    fresh = fastopt.Adam(copy_params(make_params("mixed")))
    fastopt.load_state(fresh, path)
    assert fresh.iterations == 2
    # saving again over a valid file replaces it too
    opt.step(grads_for(make_params("mixed"), np.random.default_rng(3), 2))
    fastopt.save_state(opt, str(path))
    assert os.listdir(tmp_path) == ["state.npz"]
    fastopt.load_state(fresh, path)
    assert fresh.iterations == 3
    s_opt, s_fresh = opt.state_dict()["slots"], fresh.state_dict()["slots"]
    assert set(s_opt) == set(s_fresh)
    assert all(np.array_equal(s_opt[k], s_fresh[k]) for k in s_opt)


def test_failed_save_keeps_the_old_file_and_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "state.npz"
    opt = _trained(fastopt.Adam, make_params("mixed"))
    fastopt.save_state(opt, path)
    old = path.read_bytes()

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    opt.step(grads_for(make_params("mixed"), np.random.default_rng(3), 2))
    with pytest.raises(OSError, match="disk full"):
        fastopt.save_state(opt, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["state.npz"]
    assert path.read_bytes() == old
