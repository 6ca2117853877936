"""Schedule-free AdamW: the modes (``train()``/``eval()``), the first step,
the host state through the state paths, and Keras's ScheduleFreeAdamW
against the authors' package.

The golden replays (tests/test_golden.py, ``schedulefree_adamw*``) check the
trajectories against the package itself on every host backend; here, what
those cannot: what each mode call does and refuses, and *why* Keras 3.15.1
differs.  ``tests/golden/differences/keras_schedulefree_*`` hold Keras's run
and the package's run on the same gradients (``tools/make_golden.py``); a
NumPy replica of Keras's ``update_step`` reproduces Keras's run when it
recovers ``x`` from the *new* ``z`` (the aliasing of ``momentum.value``) and
the package's run when it reads the old one.
"""
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

import fastopt
from fastopt.algorithms.schedulefree import schedulefree_adamw

from cases import HOST_BACKENDS

DIFFERENCES = Path(__file__).parent / "golden" / "differences"
SHAPES = [(5, 3), (2, 6), (4,)]


def params(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in SHAPES]


def grads_at(t):
    rng = np.random.default_rng(100 + t)
    return [rng.standard_normal(s) for s in SHAPES]


def make(p, **kw):
    return fastopt.ScheduleFreeAdamW(p, **{"learning_rate": 0.05, "warmup_steps": 2,
                                           "weight_decay": 0.1, **kw})


# ---------------------------------------------------------------------------
# Modes

def test_eval_moves_to_x_and_train_back_to_y():
    p = params()
    opt = make(p, beta_1=0.8)
    for t in range(5):
        opt.step(grads_at(t))
    y = [a.copy() for a in p]
    z = [opt.state_dict()["slots"][f"momentum/{k}"] for k in range(len(p))]
    assert opt.train_mode
    opt.eval()
    assert not opt.train_mode
    for a, yk, zk in zip(p, y, z):
        np.testing.assert_allclose(a, (yk - 0.2 * zk) / 0.8, rtol=1e-13, atol=1e-13)
    x = [a.copy() for a in p]
    opt.eval()  # nothing to do in eval mode
    for a, xk in zip(p, x):
        np.testing.assert_array_equal(a, xk)
    opt.train()
    for a, yk in zip(p, y):
        np.testing.assert_allclose(a, yk, rtol=1e-13, atol=1e-13)
    y2 = [a.copy() for a in p]
    opt.train()  # nothing to do in train mode
    for a, yk in zip(p, y2):
        np.testing.assert_array_equal(a, yk)


def test_step_in_eval_mode_is_refused_and_changes_nothing():
    p = params()
    opt = make(p)
    opt.step(grads_at(0))
    opt.eval()
    before = [a.copy() for a in p]
    state = opt.state_dict()
    with pytest.raises(RuntimeError, match="step\\(\\) in eval mode: call train\\(\\) first"):
        opt.step(grads_at(1))
    for a, b in zip(p, before):
        np.testing.assert_array_equal(a, b)
    assert opt.iterations == 1 and opt.host_state() == state["host_state"]


def test_modes_before_the_first_step_move_nothing():
    p = params()
    opt = make(p)
    before = [a.copy() for a in p]
    opt.eval()
    opt.train()
    for a, b in zip(p, before):
        np.testing.assert_array_equal(a, b)


def test_z_is_the_parameters_at_the_first_update():
    """As the package copies ``z`` at a parameter's first step: parameters
    changed in place after building the optimizer are the starting point."""
    p = params()
    opt = make(p)
    for a in p:
        a *= 3.0
    start = [a.copy() for a in p]
    opt.step(grads_at(0))
    want, *_ = zip(*[schedulefree_adamw(s, g, s, np.zeros_like(s), learning_rate=0.05,
                                        beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                                        weight_decay=0.1, warmup_steps=2, r=0.0,
                                        weight_lr_power=2.0, step=1, lr_max=0.025,
                                        weight_sum=0.025 ** 2, train_mode=1.0)
                     for s, g in zip(start, grads_at(0))])
    for a, w in zip(p, want):
        np.testing.assert_allclose(a, w, rtol=1e-14)


def test_a_bad_first_gradient_leaves_z_unchanged():
    p = params()
    opt = make(p)
    before = opt.state_dict()["slots"]
    for a in p:
        a += 1.0
    with pytest.raises(ValueError):
        opt.step([np.zeros((2, 2))] * 3)
    after = opt.state_dict()["slots"]
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v)


def test_exclude_from_weight_decay_is_refused():
    opt = make(params())
    with pytest.raises(ValueError, match="put those parameters in a group with weight_decay=0"):
        opt.exclude_from_weight_decay(var_names=["x"])


@pytest.mark.parametrize("route", ["state_dict", "file", "pickle"])
@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_a_checkpoint_in_eval_mode_resumes_bit_identically(tmp_path, backend, route):
    """The package's advice: save in eval mode.  The mode travels with the
    state, so the resumed optimizer knows its parameters hold ``x``."""
    p_run, p_cut = params(), params()
    run, cut = make(p_run, backend=backend), make(p_cut, backend=backend)
    for t in range(6):
        run.step(grads_at(t))
        cut.step(grads_at(t))
    cut.eval()
    saved = [a.copy() for a in p_cut]  # the checkpointed parameters: x
    resumed = make(saved, backend=backend)
    if route == "state_dict":
        resumed.load_state_dict(cut.state_dict())
    elif route == "file":
        fastopt.save_state(cut, tmp_path / "s.npz")
        fastopt.load_state(resumed, tmp_path / "s.npz")
    else:
        resumed = pickle.loads(pickle.dumps(cut))
        saved = resumed._params
    assert not resumed.train_mode and resumed.host_state()["train_mode/0"] == 0.0
    resumed.train()
    cut.train()
    for t in range(6, 12):
        run.step(grads_at(t))
        resumed.step(grads_at(t))
    # eval() then train() round-trips y to within a rounding of the lerps
    for a, b in zip(p_run, saved):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)


def test_each_parameter_group_has_its_own_weights_and_mode_switch():
    p = params()
    opt = fastopt.ScheduleFreeAdamW([{"params": p[:2], "learning_rate": 0.01},
                                     {"params": p[2:], "learning_rate": 0.03,
                                      "warmup_steps": 4, "beta_1": 0.5}])
    for t in range(3):
        g = grads_at(t)
        opt.step([g[:2], g[2:]])
    host = opt.host_state()
    assert host["lr_max/0"] == 0.01 and host["lr_max/1"] == 0.03 * 3 / 4
    assert host["weight_sum/0"] == pytest.approx(3 * 0.01 ** 2, rel=1e-15)
    assert host["weight_sum/1"] == pytest.approx(sum((0.03 * t / 4) ** 2 for t in (1, 2, 3)),
                                                 rel=1e-15)
    z = opt.state_dict()["slots"]["momentum/2"]
    y = p[2].copy()
    opt.eval()
    np.testing.assert_allclose(p[2], (y - 0.5 * z) / 0.5, rtol=1e-13, atol=1e-13)
    assert host.keys() == opt.host_state().keys()
    assert opt.host_state()["train_mode/0"] == opt.host_state()["train_mode/1"] == 0.0


def test_sharded_optimizer_steps_switches_and_consolidates_the_mode():
    pytest.importorskip("mpi4py")
    from fastopt.distributed import ShardedOptimizer
    p_ref, p_sh = params(), params()
    ref = make(p_ref)
    sharded = ShardedOptimizer(fastopt.ScheduleFreeAdamW, p_sh, learning_rate=0.05,
                               warmup_steps=2, weight_decay=0.1)
    for t in range(4):
        ref.step(grads_at(t))
        sharded.step(grads_at(t))
    ref.eval()
    sharded.eval()
    for a, b in zip(p_ref, sharded.params):
        np.testing.assert_array_equal(a, b)
    full = sharded.consolidated_state_dict()
    assert full["host_state"] == ref.state_dict()["host_state"]
    with pytest.raises(RuntimeError, match="eval mode"):
        sharded.step(grads_at(4))
    sharded.train()
    ref.train()
    sharded.step(grads_at(4))
    ref.step(grads_at(4))
    for a, b in zip(p_ref, sharded.params):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# Keras's ScheduleFreeAdamW against the package

def load_difference(name):
    meta = json.loads((DIFFERENCES / f"{name}.json").read_text())
    with np.load(DIFFERENCES / f"{name}.npz") as data:
        return meta, dict(data)


def keras_replica(init, grads, *, learning_rate, warmup_steps=0, aliased, beta_1=0.9,
                  beta_2=0.999, epsilon=1e-8):
    """Keras 3.15.1's ScheduleFreeAdamW.update_step in NumPy, float64; with
    ``aliased``, ``momentum_old`` is the momentum *after* its update (what
    ``momentum.value`` holds under the torch backend by the time it is read)."""
    y = [a.copy() for a in init]
    z = [a.copy() for a in init]  # build(): momentum = copy of the variable
    v = [np.zeros_like(a) for a in init]
    steps = grads[0].shape[0]
    out = [np.empty((steps, *a.shape)) for a in init]
    for t in range(1, steps + 1):
        # ops.minimum(local_step / warmup_steps, 1.0): result_type(float64, float) is
        # float32 on the torch backend, so the warmup factor is rounded to float32
        lr = learning_rate * (float(np.float32(min(t / warmup_steps, 1.0)))
                              if warmup_steps > 0 else 1.0)
        for k in range(len(init)):
            g = grads[k][t - 1]
            z_old = z[k].copy()
            v[k] = v[k] + (g * g - v[k]) * (1 - beta_2)
            denom = np.sqrt(v[k] / (1 - beta_2 ** t)) + epsilon
            z[k] = z[k] - lr * g / denom
            w = 1.0 / t
            x_old = (y[k] - (1 - beta_1) * (z[k] if aliased else z_old)) / beta_1
            x_new = (1 - w) * x_old + w * z[k]
            y[k] = (1 - beta_1) * z[k] + beta_1 * x_new
            out[k][t - 1] = y[k]
    return out


def deviation(want, got, init):
    worst = 0.0
    for w, g, i in zip(want, got, init):
        moved = np.maximum.accumulate(np.max(np.abs(w - i).reshape(len(w), -1), axis=1))
        err = np.max(np.abs(g - w).reshape(len(w), -1), axis=1)
        worst = max(worst, float(np.max(err / np.maximum(moved, 1e-300))))
    return worst


NAMES = ["keras_schedulefree_adamw", "keras_schedulefree_adamw_warmup"]


def keras_kwargs(name):
    """The recordings' hyperparameters (tools/make_golden.py), checked
    against their constructor strings by the tests."""
    if name.endswith("_warmup"):
        return {"learning_rate": 0.02, "warmup_steps": 10}
    return {"learning_rate": 0.01, "warmup_steps": 0}


def _unpack(arrays, n):
    return ([arrays[f"init_{k}"] for k in range(n)], [arrays[f"grads_{k}"] for k in range(n)],
            [arrays[f"params_{k}"] for k in range(n)],
            [arrays[f"package_params_{k}"] for k in range(n)])


@pytest.mark.parametrize("name", NAMES)
def test_keras_recovers_x_from_the_new_z(name):
    meta, arrays = load_difference(name)
    assert meta["framework_version"] == "3.15.1" and meta["package_version"] == "1.4.1"
    init, grads, keras_run, package_run = _unpack(arrays, len(meta["shapes"]))
    kw = keras_kwargs(name)
    assert meta["constructor"] == "keras.optimizers.ScheduleFreeAdamW(" + ", ".join(
        f"{k}={v!r}" for k, v in kw.items() if v) + ")"
    aliased = keras_replica(init, grads, aliased=True, **kw)
    assert deviation(keras_run, aliased, init) == 0.0  # bit for bit
    # reading the old z instead is another trajectory, as far from Keras's as the
    # package is when weights agree (no warmup) ...
    fixed = keras_replica(init, grads, aliased=False, **kw)
    assert deviation(keras_run, fixed, init) > 0.1
    # ... and the sidecar's measured difference is the recordings'
    assert deviation(package_run, keras_run, init) == pytest.approx(
        meta["measured"]["deviation_keras_vs_package"], rel=1e-12)
    measured = meta["measured"]
    assert measured["max_abs_param_difference_final"] == max(
        float(np.max(np.abs(a[-1] - b[-1]))) for a, b in zip(keras_run, package_run))
    assert measured["max_abs_param_displacement_final_package"] == max(
        float(np.max(np.abs(b[-1] - i))) for b, i in zip(package_run, init))
    if not kw["warmup_steps"]:  # with equal weights (1/t), the fixed replica is the package
        assert deviation(package_run, fixed, init) < 1e-12
    else:  # the weights alone (1/t against lr_t^2 during warmup): the README's 0.48
        assert deviation(package_run, fixed, init) == pytest.approx(0.48, abs=0.005)


@pytest.mark.parametrize("name", NAMES)
def test_fastopt_is_the_package_on_keras_gradients(name):
    meta, arrays = load_difference(name)
    init, grads, keras_run, package_run = _unpack(arrays, len(meta["shapes"]))
    ctor = meta["package_constructor"]
    kw = keras_kwargs(name)
    assert ctor == ("schedulefree.AdamWScheduleFree(params, lr="
                    f"{kw['learning_rate']!r}{', warmup_steps=10' if kw['warmup_steps'] else ''}"
                    ", foreach=False)")
    p = [a.copy() for a in init]
    opt = fastopt.ScheduleFreeAdamW(p, **kw)
    for t in range(meta["steps"]):
        opt.step([g[t] for g in grads])
        for k in range(len(p)):
            scale = max(np.max(np.abs(package_run[k][: t + 1] - init[k])), 1e-300)
            assert np.max(np.abs(p[k] - package_run[k][t])) <= 1e-9 * scale, (t, k)


# ---------------------------------------------------------------------------
# fastopt.torch.AdamWScheduleFree against the package itself

def _torch_pair(dtype, groups=False, **kw):
    torch = pytest.importorskip("torch")
    schedulefree = pytest.importorskip("schedulefree")
    import fastopt.torch as ft
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]
    ps = [a.clone().requires_grad_() for a in init]
    qs = [a.clone().requires_grad_() for a in init]

    def structure(ts):
        if not groups:
            return ts
        return [{"params": ts[:2]}, {"params": ts[2:], "lr": 0.03, "warmup_steps": 4,
                                     "weight_decay": 0.0}]
    fast = ft.AdamWScheduleFree(structure(ps), **kw)
    ref = schedulefree.AdamWScheduleFree(structure(qs), foreach=False, **kw)
    return torch, schedulefree, ft, fast, ref, ps, qs


def _grads(torch, t, dtype, skip=None):
    gen = torch.Generator().manual_seed(1000 + t)
    return [None if k == skip else torch.randn(s, generator=gen, dtype=dtype)
            for k, s in enumerate(SHAPES)]


@pytest.mark.parametrize("groups", [False, True])
@pytest.mark.parametrize("dtype_name", ["float64", "float32"])
def test_torch_adapter_is_the_package(dtype_name, groups):
    import_torch = pytest.importorskip("torch")
    dtype = getattr(import_torch, dtype_name)
    torch, _, _, fast, ref, ps, qs = _torch_pair(dtype, groups, lr=0.02, weight_decay=0.05,
                                                 warmup_steps=3, r=0.5)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for t in range(12):
        fast.train()
        ref.train()
        gs = _grads(torch, t, dtype, skip=1 if t < 2 else None)  # tensor 1's first grad: t=2
        for p, q, g in zip(ps, qs, gs):
            p.grad = None if g is None else g.clone()
            q.grad = None if g is None else g.clone()
        fast.step()
        ref.step()
        if t % 4 == 3:
            fast.eval()
            ref.eval()
        for p, q in zip(ps, qs):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=tol, atol=tol)
    for g_fast, g_ref in zip(fast.param_groups, ref.param_groups):
        for key in ("k", "train_mode", "lr_max", "weight_sum", "scheduled_lr"):
            assert g_fast[key] == pytest.approx(g_ref[key], rel=1e-15), key
    for p, q in zip(ps, qs):
        for key in ("z", "exp_avg_sq"):
            torch.testing.assert_close(fast.state[p][key], ref.state[q][key], rtol=tol,
                                       atol=tol)


def test_torch_adapter_checkpoints_move_both_ways():
    torch, schedulefree, ft, fast, ref, ps, qs = _torch_pair(__import__("torch").float64,
                                                             lr=0.02)

    def saved(opt):  # through a file's bytes (load_state_dict alone would share the tensors)
        buffer = io.BytesIO()
        torch.save(opt.state_dict(), buffer)
        buffer.seek(0)
        return torch.load(buffer)

    for opt, ts in ((fast, ps), (ref, qs)):
        opt.train()
        for t in range(3):
            for p, g in zip(ts, _grads(torch, t, torch.float64)):
                p.grad = g
            opt.step()
        opt.eval()
    # fastopt -> package and package -> fastopt, in eval mode as the package advises
    into_ref = schedulefree.AdamWScheduleFree([p.detach().clone().requires_grad_() for p in ps],
                                             lr=0.02, foreach=False)
    into_ref.load_state_dict(saved(fast))
    into_fast = ft.AdamWScheduleFree([q.detach().clone().requires_grad_() for q in qs], lr=0.02)
    into_fast.load_state_dict(saved(ref))
    runs = [(fast, ps), (into_ref, into_ref.param_groups[0]["params"]),
            (ref, qs), (into_fast, into_fast.param_groups[0]["params"])]
    for opt, ts in runs:
        opt.train()
        for t in range(3, 6):
            for p, g in zip(ts, _grads(torch, t, torch.float64)):
                p.grad = g
            opt.step()
    for a, b, c, d in zip(*(ts for _, ts in runs)):
        for x in (b, c, d):
            torch.testing.assert_close(x.detach(), a.detach(), rtol=1e-12, atol=1e-12)


def test_torch_adapter_refuses_a_step_in_eval_mode_as_the_package():
    torch, _, _, fast, ref, ps, qs = _torch_pair(__import__("torch").float64)
    for p, q, g in zip(ps, qs, _grads(torch, 0, torch.float64)):
        p.grad, q.grad = g, g.clone()
    with pytest.raises(Exception, match="not in train mode") as fast_error:
        fast.step()
    with pytest.raises(Exception, match="not in train mode") as ref_error:
        ref.step()
    assert str(fast_error.value) == str(ref_error.value)
    assert fast.state_dict() == {"state": {}, "param_groups": fast.state_dict()["param_groups"]}
    assert fast.param_groups[0]["k"] == 0


def test_fit_validates_at_the_average_and_goes_on_training_at_y():
    from fastopt import train
    X, y, _ = train.load_builtin()
    X, y = X[:200].astype(np.float64), y[:200].astype(np.float64)
    model = train.LogisticRegression(X.shape[1], seed=0, dtype="float64")
    opt = fastopt.ScheduleFreeAdamW(model.params, learning_rate=0.05)
    history = train.fit(model, X, y, opt, epochs=2, batch_size=16, validation_data=(X, y),
                        verbose=0)
    assert opt.train_mode
    y_loss = train.evaluate(model, X, y)["loss"]
    opt.eval()
    x_loss = train.evaluate(model, X, y)["loss"]
    assert history.history["val_loss"][-1] == pytest.approx(x_loss, rel=1e-12)
    assert x_loss != pytest.approx(y_loss, rel=1e-6)


def test_torch_adapter_refuses_what_it_cannot_take_with_nothing_changed():
    torch = pytest.importorskip("torch")
    import fastopt.torch as ft
    good = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    half = torch.randn(5, dtype=torch.bfloat16, requires_grad=True)
    opt = ft.AdamWScheduleFree([good, half])
    opt.train()
    good.grad, half.grad = torch.ones_like(good), torch.ones_like(half)
    before = good.detach().clone()
    with pytest.raises(TypeError, match="float32 or float64 parameters"):
        opt.step()
    assert torch.equal(good.detach(), before) and not any(opt.state.values())
    assert opt.param_groups[0]["k"] == 0 and opt.param_groups[0]["weight_sum"] == 0.0
    with pytest.raises(ValueError, match="betas must be in"):
        ft.AdamWScheduleFree([good], betas=(0.0, 0.999))


def test_torch_adapter_pickles_and_steps_on_alike():
    torch = pytest.importorskip("torch")
    import fastopt.torch as ft
    p = torch.randn(6, dtype=torch.float64, requires_grad=True)
    opt = ft.AdamWScheduleFree([p], lr=0.05, warmup_steps=2)
    opt.train()
    p.grad = torch.linspace(-1, 1, 6, dtype=torch.float64)
    opt.step()
    twin = pickle.loads(pickle.dumps(opt))
    q = twin.param_groups[0]["params"][0]
    q.grad = p.grad.clone()
    opt.step()
    twin.step()
    assert torch.equal(p.detach(), q.detach())
    assert twin.param_groups[0]["weight_sum"] == opt.param_groups[0]["weight_sum"]
