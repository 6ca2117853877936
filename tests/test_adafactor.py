"""Adafactor (fastopt/algorithms/adafactor.py), both conventions.

The real frameworks' trajectories are replayed by tests/test_golden.py
(``keras_adafactor*``, ``torch_adafactor*``).  Here: every host backend
against the independent float64 references (float64 and float32, 0-d to 3-D
tensors, tall and wide, zero steps, weight decay, maximize); the factored
state's shapes and bytes; every state path; the refusals; CUDA device
parameters (host staging, on Numba's CUDA simulator here) against the numpy
backend; and
``fastopt.torch.Adafactor`` against ``torch.optim.Adafactor`` with
checkpoints moving both ways.
"""
import copy
import math

import numpy as np
import pytest

import fastopt
from fastopt.algorithms import adafactor as af

from cases import HOST_BACKENDS
from cuda_helpers import dev, host, needs_cuda

SHAPES = [(3, 4), (6, 2), (2, 3, 4), (5,), ()]
SLOT_SHAPES = {"keras": af.slot_shapes_keras, "torch": af.slot_shapes_torch}


def params(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.standard_normal(s), dtype=dtype) for s in SHAPES]


def grads_at(t, dtype=np.float64):
    rng = np.random.default_rng(100 + t)
    g = [np.asarray(rng.standard_normal(s), dtype=dtype) for s in SHAPES]
    if t == 2:
        g = [np.zeros_like(x) for x in g]
    if t == 4:
        g = [np.asarray(x * 1e3) for x in g]
    g[0][0, 0] = 0.0
    return g


def reference_run(convention, dtype, steps, lr, wd=0.0, maximize=False, **kw):
    """The float64 reference, tensor by tensor, from params(dtype)."""
    hyper = {"beta_2_decay": -0.8, "epsilon_1": 1e-30 if convention == "keras" else None,
             "epsilon_2": 1e-3, "clip_threshold": 1.0, **kw}
    w = [p.astype(np.float64) for p in params(dtype)]
    slots = [[np.zeros(s) for s in SLOT_SHAPES[convention](shape).values()] for shape in SHAPES]
    for t in range(steps):
        for k, g in enumerate(grads_at(t, dtype)):
            g = -g.astype(np.float64) if maximize else g.astype(np.float64)
            if convention == "keras":
                out = af.adafactor(w[k] * (1 - wd * lr), g, *slots[k], lr, step=t + 1, **hyper)
            else:
                eps = hyper["epsilon_1"]
                out = af.adafactor_torch(
                    np.asarray(w[k], dtype=dtype) if eps is None else w[k], g, *slots[k], lr,
                    hyper["beta_2_decay"], eps, hyper["epsilon_2"], hyper["clip_threshold"],
                    t + 1, weight_decay=wd)
            w[k], slots[k] = np.asarray(out[0], np.float64), list(out[1:])
    return w, slots


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("convention", ["keras", "torch"])
def test_backends_match_the_reference(convention, backend, dtype):
    p = params(dtype)
    opt = fastopt.Adafactor(p, learning_rate=0.05, weight_decay=0.1, convention=convention,
                            backend=backend)
    for t in range(6):
        opt.step(grads_at(t, dtype))
    want, slots = reference_run(convention, dtype, 6, 0.05, wd=0.1)
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    init = params(dtype)
    for k in range(len(SHAPES)):
        scale = np.max(np.abs(want[k] - init[k]))
        assert np.max(np.abs(p[k] - want[k])) <= rtol * scale, k
        live = [opt.state_arrays()[f"{name}/{k}"] for name in opt._param_groups[0].rule.slots]
        for got, ref in zip(live, slots[k]):
            assert got.shape == np.shape(ref)
            np.testing.assert_allclose(got, ref, rtol=rtol * 10, atol=0)


def test_torch_maximize_and_options():
    p = params()
    opt = fastopt.Adafactor(p, learning_rate=0.05, convention="torch", maximize=True,
                            beta_2_decay=-0.6, epsilon_1=1e-12, epsilon_2=1e-2,
                            clip_threshold=1.5)
    for t in range(6):
        opt.step(grads_at(t))
    want, _ = reference_run("torch", np.float64, 6, 0.05, maximize=True, beta_2_decay=-0.6,
                            epsilon_1=1e-12, epsilon_2=1e-2, clip_threshold=1.5)
    for k in range(len(SHAPES)):
        np.testing.assert_allclose(p[k], want[k], rtol=1e-12, atol=1e-14)


def test_torch_default_epsilon_is_the_dtypes():
    """epsilon_1=None: torch's finfo(dtype).eps -- 2.2e-16 for float64, 1.2e-7 for
    float32; it floors sqrt(V), so a zero column moves differently."""
    opt = fastopt.Adafactor([np.zeros((2, 2))], convention="torch")
    assert opt.get_config()["epsilon_1"] is None
    for dtype in (np.float64, np.float32):
        w = np.ones((2, 2), dtype)
        opt = fastopt.Adafactor([w], convention="torch")
        opt.step([np.array([[1e-5, 0.0], [1e-5, 0.0]], dtype)])
        ref = af.adafactor_torch(np.ones((2, 2), dtype), np.array([[1e-5, 0.0], [1e-5, 0.0]]),
                                 np.zeros((2, 1)), np.zeros((1, 2)), None, 0.01, -0.8, None,
                                 1e-3, 1.0, 1)[0]
        np.testing.assert_allclose(w, ref, rtol=1e-6)


def test_state_is_factored_and_small():
    """A (1024, 4096) float32 matrix: 16 MiB of parameter, 20 KiB of state
    (Adam: 32 MiB); a vector keeps a full second moment."""
    m, n = 1024, 4096
    for convention in ("keras", "torch"):
        opt = fastopt.Adafactor([np.zeros((m, n), np.float32), np.zeros(n, np.float32)],
                                convention=convention)
        state = opt.state_arrays()
        matrix = sum(a.nbytes for k, a in state.items() if k.endswith("/0"))
        vector = sum(a.nbytes for k, a in state.items() if k.endswith("/1"))
        assert matrix == (m + n) * 4 == 20480
        assert vector == n * 4
    keras = fastopt.Adafactor([np.zeros((2, 3, 4))]).state_arrays()
    assert {k: a.shape for k, a in keras.items()} == {"r/0": (2, 3), "c/0": (2, 4),
                                                      "velocity/0": (0,)}
    torch_ = fastopt.Adafactor([np.zeros((2, 3, 4))], convention="torch").state_arrays()
    assert {k: a.shape for k, a in torch_.items()} == {
        "row_var/0": (2, 3, 1), "col_var/0": (2, 1, 4), "variance/0": (0,)}


@pytest.mark.parametrize("convention", ["keras", "torch"])
def test_state_paths_round_trip_and_refuse_wrong_shapes(convention, tmp_path):
    ref = params()
    a = fastopt.Adafactor(ref, learning_rate=0.05, convention=convention)
    for t in range(6):
        a.step(grads_at(t))
    p = params()
    b = fastopt.Adafactor(p, learning_rate=0.05, convention=convention)
    for t in range(3):
        b.step(grads_at(t))
    fastopt.save_state(b, tmp_path / "s.npz")
    state = b.state_dict()
    c_params = [x.copy() for x in p]
    c = fastopt.Adafactor(c_params, learning_rate=0.05, convention=convention)
    fastopt.load_state(c, tmp_path / "s.npz")
    for t in range(3, 6):
        c.step(grads_at(t))
    assert all(np.array_equal(x, y) for x, y in zip(c_params, ref))
    row = "r/0" if convention == "keras" else "row_var/0"
    before = {k: v.copy() for k, v in b.state_arrays().items()}
    bad = {**state, "slots": {**state["slots"], row: np.zeros((3, 4))}}
    with pytest.raises(ValueError, match=f"slot '{row}' has shape"):
        b.load_state_dict(bad)
    assert all(np.array_equal(v, before[k]) for k, v in b.state_arrays().items())


def test_refusals():
    with pytest.raises(ValueError, match="state_dtype='bfloat16' is not offered.*factored"):
        fastopt.Adafactor([np.zeros((2, 2), np.float32)], state_dtype="bfloat16")
    with pytest.raises(ValueError, match="clip_threshold must be >= 1"):
        fastopt.Adafactor([np.zeros(2)], convention="torch", clip_threshold=0.5)
    with pytest.raises(ValueError, match="clip_threshold must be > 0"):
        fastopt.Adafactor([np.zeros(2)], clip_threshold=0.0)
    with pytest.raises(ValueError, match="beta_2_decay must be <= 0"):
        fastopt.Adafactor([np.zeros(2)], beta_2_decay=0.5)
    with pytest.raises(TypeError, match="epsilon_2 must be a real number"):
        fastopt.Adafactor([np.zeros(2)], epsilon_2="x")
    with pytest.raises(ValueError, match="epsilon_1 must be >= 0"):
        fastopt.Adafactor([np.zeros(2)], epsilon_1=-1.0, convention="torch")
    with pytest.raises(ValueError, match="Did you mean|beta_2_decay"):
        fastopt.Adafactor([np.zeros(2)], beta2_decay=-0.8)


def test_sharded_optimizer_refuses_adafactor():
    pytest.importorskip("mpi4py")
    from fastopt.distributed import ShardedOptimizer
    with pytest.raises(ValueError, match="cannot be sharded.*factored second moment"):
        ShardedOptimizer(fastopt.Adafactor, [np.zeros((4, 3))])


@needs_cuda
@pytest.mark.parametrize("convention", ["keras", "torch"])
def test_device_parameters_are_staged_through_the_host(convention):
    """The factored moments live on the device in their own shapes; each
    step runs the host code on copies (numpy backend): bit-identical."""
    ref = params()
    on_host = fastopt.Adafactor(ref, learning_rate=0.5, weight_decay=0.01, backend="numpy",
                                convention=convention)
    on_device = [dev(p) for p in params()]
    opt = fastopt.Adafactor(on_device, learning_rate=0.5, weight_decay=0.01,
                            convention=convention)
    assert opt.backends == {"float64": "cuda"}
    live, want_live = opt.state_arrays(), on_host.state_arrays()
    assert live.keys() == want_live.keys()
    for key, a in live.items():
        assert hasattr(a, "copy_to_host") and a.shape == want_live[key].shape, key
    for t in range(5):
        on_host.step(grads_at(t))
        opt.step([dev(g) for g in grads_at(t)])
    for a, b in zip(ref, on_device):
        assert np.array_equal(host(b), a)
    want = on_host.state_dict()["slots"]
    for key, a in opt.state_dict()["slots"].items():
        assert np.array_equal(a, want[key]), key


def test_relative_step_changes_nothing_as_in_keras():
    a, b = params(), params()
    oa = fastopt.Adafactor(a, learning_rate=0.5)
    ob = fastopt.Adafactor(b, learning_rate=0.5, relative_step=False)
    for t in range(4):
        oa.step(grads_at(t))
        ob.step(grads_at(t))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert ob.get_config()["relative_step"] is False


# ---------------------------------------------------------------------------
# fastopt.torch.Adafactor

torch = pytest.importorskip("torch")


def _torch_run(cls, dtype, kw, steps=8, **extra):
    torch.manual_seed(0)
    ps = [torch.randn(s, dtype=dtype) for s in SHAPES]
    opt = cls(ps, **kw, **extra)
    for t in range(steps):
        for p, g in zip(ps, grads_at(t, np.float64)):
            p.grad = torch.tensor(g, dtype=dtype)
        opt.step()
    return ps, opt


TORCH_KW = [{}, dict(lr=0.05, beta2_decay=-0.6, eps=(1e-12, 1e-2), d=1.5, weight_decay=0.1,
                     maximize=True)]


@pytest.mark.parametrize("kw", TORCH_KW, ids=["defaults", "options"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("foreach", [False, True])
def test_torch_adapter_matches_torch(kw, dtype, foreach):
    dtype = getattr(torch, dtype)
    want, topt = _torch_run(torch.optim.Adafactor, dtype, {**kw, "foreach": foreach})
    got, fopt = _torch_run(fastopt.torch.Adafactor, dtype, kw)
    tol = 1e-15 if dtype == torch.float64 else 2e-7
    for a, b in zip(got, want):
        assert float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max()))
    sa, sb = fopt.state_dict()["state"], topt.state_dict()["state"]
    for k in sa:
        assert set(sa[k]) == set(sb[k])
        for key in sa[k]:
            assert sa[k][key].shape == sb[k][key].shape
            torch.testing.assert_close(sa[k][key], sb[k][key], rtol=tol * 10, atol=0)


def test_torch_checkpoints_move_both_ways():
    for src, dst in ((torch.optim.Adafactor, fastopt.torch.Adafactor),
                     (fastopt.torch.Adafactor, torch.optim.Adafactor)):
        ps, opt = _torch_run(src, torch.float64, {"lr": 0.05}, steps=4)
        sd = copy.deepcopy(opt.state_dict())  # torch's state_dict shares the tensors
        qs = [p.detach().clone() for p in ps]
        twin = dst(qs, lr=0.05)
        twin.load_state_dict(sd)
        for t in range(4, 8):
            for p, q, g in zip(ps, qs, grads_at(t)):
                p.grad = torch.tensor(g)
                q.grad = torch.tensor(g)
            opt.step()
            twin.step()
        for p, q in zip(ps, qs):
            torch.testing.assert_close(p, q, rtol=1e-14, atol=1e-15)


def test_torch_adapter_refuses_what_it_cannot_run():
    p = torch.zeros(4, 3, dtype=torch.float16)
    p.grad = torch.ones_like(p)
    opt = fastopt.torch.Adafactor([p])
    with pytest.raises(TypeError, match="contiguous CPU float32 or float64"):
        opt.step()
    assert not opt.state
    q = torch.zeros(3, 4).t()
    q.grad = torch.ones_like(q)
    with pytest.raises(TypeError, match="contiguous=False"):
        fastopt.torch.Adafactor([q]).step()
    with pytest.raises(ValueError, match="backend must be"):
        fastopt.torch.Adafactor([torch.zeros(2)], backend="cuda")
    assert math.isclose(fastopt.torch.Adafactor([torch.zeros(2)]).defaults["lr"], 1e-2)


# ---------------------------------------------------------------------------
# fastopt.keras.Adafactor

def test_keras_adapter_matches_keras_and_keeps_r_c_in_keras_variables():
    """float64 variables, 12 steps, decay: within the golden recordings'
    bound (Keras computes its means and extrema in float32, ~1e-7); r and c
    are Keras's own variables, updated in place."""
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":  # pragma: no cover - conftest sets torch
        pytest.skip("fastopt.keras needs KERAS_BACKEND=torch")
    import fastopt.keras as fk
    runs = []
    keras.config.set_floatx("float64")  # Python floats as float64 (the golden recordings')
    try:
        for cls in (keras.optimizers.Adafactor, fk.Adafactor):
            variables = [keras.Variable(p, dtype="float64") for p in params()]
            opt = cls(learning_rate=0.05, weight_decay=0.1)
            for t in range(12):
                opt.apply([torch.tensor(g) for g in grads_at(t)], variables)
            runs.append((variables, opt))
    finally:
        keras.config.set_floatx("float32")
    (kv, kopt), (fv, fopt) = runs
    init = params()
    for a, b, w0 in zip(fv, kv, init):
        moved = np.max(np.abs(b.numpy() - w0))
        assert np.max(np.abs(a.numpy() - b.numpy())) <= 3e-7 * max(moved, 1e-300)
    for k in (0, 1, 2):  # the matrices' factored moments, in Keras's variables
        np.testing.assert_allclose(fopt._r[k].numpy(), kopt._r[k].numpy(), rtol=1e-6)
        np.testing.assert_allclose(fopt._c[k].numpy(), kopt._c[k].numpy(), rtol=1e-6)
    np.testing.assert_allclose(fopt._v[3].numpy(), kopt._v[3].numpy(), rtol=1e-6)
