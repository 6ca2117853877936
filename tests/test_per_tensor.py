"""The ``per_tensor`` rule kind (:mod:`fastopt.per_tensor`), on a toy rule.

The toy, "RowSGD", has both kinds of state a per-tensor rule may keep: a
slot of its own shape (a running mean of the squared gradient per row:
``shape[:-1]``, a scalar for a vector) and a parameter-shaped one (a
momentum), which ``host_step`` updates through the backend's generated
``sgd_momentum`` kernel.  What must hold: it matches a float64 NumPy
reference on every host backend; the slots keep their own shapes through
``state_arrays``, ``state_dict``/``load_state_dict``, state files and
pickling; a slot of the wrong shape is refused and nothing changes; the
pipeline around the rule (weight decay, clipping, ``maximize``, ``None``
gradients, parameter groups) is the kernels'; bfloat16 state and
``ShardedOptimizer`` are refused with the rule's reasons; CUDA device
parameters (on Numba's CUDA simulator here) keep the slots on the device in
their own shapes and are staged through the host, with the numpy backend's
results bit for bit.
"""
import copy
import pickle

import numpy as np
import pytest

import fastopt
import fastopt.rule
from fastopt._validation import real
from fastopt.optimizer import Optimizer
from fastopt.rule import RULES, TENSOR_RULES, Rule, get_rule

from cases import HOST_BACKENDS
from cuda_helpers import dev, host, needs_cuda


def row_slot_shapes(shape):
    return {"rows": tuple(shape[:-1]), "momentum": tuple(shape)}


def prepare_rowsgd(learning_rate, beta, momentum):
    return {"lr": learning_rate, "beta": beta, "one_minus_beta": 1.0 - beta,
            "momentum": momentum}


def rowsgd_step(w, g, state, scalars, backend):
    rows = state["rows"]
    rows *= scalars["beta"]
    rows += scalars["one_minus_beta"] * np.mean(g * g, axis=-1)
    u = g / np.sqrt(rows[..., None] + 1e-8)
    backend.sgd_momentum(w.reshape(-1), u.reshape(-1), state["momentum"].reshape(-1),
                         scalars["lr"], scalars["momentum"])


def rowsgd_reference(w, g, rows, momentum, learning_rate, beta, momentum_coef):
    """rows <- beta rows + (1-beta) mean_j g_ij^2;  u = g / sqrt(rows + 1e-8);
    m <- momentum m - lr u;  w <- w + m."""
    rows = beta * rows + (1 - beta) * (g ** 2).sum(axis=-1) / g.shape[-1]
    u = g / np.sqrt(np.expand_dims(rows, -1) + 1e-8)
    momentum = momentum_coef * momentum - learning_rate * u
    return w + momentum, rows, momentum


TOY = Rule("rowsgd_toy", kind="per_tensor", slots=("rows", "momentum"),
           scalars=("learning_rate", "beta", "momentum"), prepare=prepare_rowsgd,
           slot_shapes=row_slot_shapes, host_step=rowsgd_step, reference=rowsgd_reference,
           shardable=False, shard_refusal="its row moments cannot be cut by flat index")


class RowSGD(Optimizer):
    _DEFAULTS = {"learning_rate": 0.1, "beta": 0.9, "momentum": 0.5}
    _TORCH_DEFAULTS = _DEFAULTS

    def __init__(self, params, learning_rate=None, beta=None, momentum=None, **kwargs):
        super().__init__(params, learning_rate=learning_rate,
                         hyper={"beta": beta, "momentum": momentum}, **kwargs)

    def _check(self, h, owner):
        return {"beta": real(owner, "beta", h["beta"], low=0.0, high=1.0),
                "momentum": real(owner, "momentum", h["momentum"], low=0.0, high=1.0)}

    def _rule_name(self, h):
        return "rowsgd_toy"

    def _scalars(self, h, lr, updates):
        return (lr, h["beta"], h["momentum"])


@pytest.fixture(autouse=True)
def toy_registered(monkeypatch):
    object.__setattr__(TOY, "family", "tests")
    monkeypatch.setitem(fastopt.rule._load_all()[1], TOY.name, TOY)
    monkeypatch.setattr(fastopt, "RowSGD", RowSGD, raising=False)  # from_config finds it
    yield


SHAPES = [(4, 3), (2, 3, 5), (6,)]


def make_params(dtype=np.float64):
    rng = np.random.default_rng(1)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def grads_at(t, dtype=np.float64):
    rng = np.random.default_rng(50 + t)
    g = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    g[0][1] = 0.0  # a zero row
    if t == 2:
        g = [np.zeros_like(a) for a in g]
    return g


def reference_run(params, steps, lr=0.1, beta=0.9, mom=0.5, keep=1.0):
    w = [p.astype(np.float64) for p in params]
    rows = [np.zeros(s[:-1]) for s in SHAPES]
    m = [np.zeros(s) for s in SHAPES]
    for t in range(steps):
        for k, g in enumerate(grads_at(t)):
            w[k], rows[k], m[k] = rowsgd_reference(w[k] * keep, g, rows[k], m[k], lr, beta,
                                                   mom)
    return w, rows, m


def test_registry_keeps_per_tensor_rules_apart():
    assert TOY.name in TENSOR_RULES and TOY.name not in RULES
    assert get_rule(TOY.name) is TOY and get_rule("adam") is RULES["adam"]
    assert all(r.kind != "per_tensor" for r in RULES.values())
    assert TOY.bf16_refusal  # state in the parameters' dtype unless the rule says otherwise


def test_rule_declaration_is_checked():
    with pytest.raises(ValueError, match="slot_shapes and host_step"):
        Rule("bad", kind="per_tensor", slots=("a",))
    with pytest.raises(ValueError, match="belong to per_tensor"):
        Rule("bad", slots=("a",), slot_shapes=row_slot_shapes)
    with pytest.raises(ValueError, match="shard_refusal"):
        Rule("bad", kind="per_tensor", slot_shapes=row_slot_shapes, host_step=rowsgd_step,
             shardable=False)
    with pytest.raises(ValueError, match="kind must be"):
        Rule("bad", kind="tensorwise")


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_matches_the_reference_on_every_backend(backend):
    params = make_params()
    opt = RowSGD(params, backend=backend)
    for t in range(5):
        opt.step(grads_at(t))
    w, rows, m = reference_run(make_params(), 5)
    for k in range(len(SHAPES)):
        np.testing.assert_allclose(params[k], w[k], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(opt.state_arrays()[f"rows/{k}"], rows[k], rtol=1e-12)
        np.testing.assert_allclose(opt.state_arrays()[f"momentum/{k}"], m[k], rtol=1e-12,
                                   atol=1e-15)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_float32(backend):
    params = make_params(np.float32)
    opt = RowSGD(params, backend=backend)
    for t in range(5):
        opt.step(grads_at(t, np.float32))
    w, _, _ = reference_run(make_params(np.float32), 5)
    assert all(p.dtype == np.float32 for p in params)
    assert opt.state_arrays()["rows/1"].dtype == np.float32
    for k in range(len(SHAPES)):
        np.testing.assert_allclose(params[k], w[k], rtol=2e-5, atol=2e-5)


def test_slots_keep_their_own_shapes():
    opt = RowSGD(make_params())
    live = opt.state_arrays()
    assert live["rows/0"].shape == (4,) and live["rows/1"].shape == (2, 3)
    assert live["rows/2"].shape == () and live["momentum/1"].shape == (2, 3, 5)
    opt.step(grads_at(0))
    state = opt.state_dict()
    assert state["slots"]["rows/1"].shape == (2, 3)


def test_state_dict_round_trip_and_resume_is_bit_identical(tmp_path):
    ref = make_params()
    a = RowSGD(ref)
    for t in range(6):
        a.step(grads_at(t))
    params = make_params()
    b = RowSGD(params)
    for t in range(3):
        b.step(grads_at(t))
    state = b.state_dict()
    fastopt.save_state(b, tmp_path / "s.npz")
    for how in ("dict", "file", "pickle"):
        p2 = [p.copy() for p in params]
        c = RowSGD(p2)
        if how == "dict":
            c.load_state_dict(state)
        elif how == "file":
            fastopt.load_state(c, tmp_path / "s.npz")
        else:
            c = pickle.loads(pickle.dumps(b))
            p2 = c.params
        for t in range(3, 6):
            c.step(grads_at(t))
        for x, y in zip(p2, ref):
            assert np.array_equal(x, y), how
    d = copy.deepcopy(b)
    assert d.state_arrays()["rows/1"].shape == (2, 3)


def test_a_slot_of_the_wrong_shape_is_refused_and_nothing_changes(tmp_path):
    opt = RowSGD(make_params())
    opt.step(grads_at(0))
    state = opt.state_dict()
    before = {k: v.copy() for k, v in opt.state_arrays().items()}
    bad = {**state, "slots": {**state["slots"], "rows/1": np.zeros((2, 3, 5))}}
    with pytest.raises(ValueError, match=r"slot 'rows/1' has shape \(2, 3, 5\).*expected "
                                         r"\(2, 3\)"):
        opt.load_state_dict(bad)
    bad_file = tmp_path / "bad.npz"
    np.savez(bad_file, **fastopt.state.state_to_arrays(bad))
    with pytest.raises(fastopt.StateFileError, match="rows/1"):
        fastopt.load_state(opt, bad_file)
    for k, v in opt.state_arrays().items():
        assert np.array_equal(v, before[k])
    assert opt.iterations == 1


def test_pipeline_around_host_step():
    """Decoupled weight decay, clipping by value and by norm, maximize and a
    None gradient: the gradient host_step sees is the kernels'."""
    params = make_params()
    opt = RowSGD(params, weight_decay=0.2, clipvalue=0.5)
    g = grads_at(0)
    g[2] = None
    opt.step(g)
    expected = make_params()
    rows = [np.zeros(s[:-1]) for s in SHAPES]
    m = [np.zeros(s) for s in SHAPES]
    for k in range(2):
        expected[k], _, _ = rowsgd_reference(expected[k] * (1 - 0.2 * 0.1),
                                             np.clip(grads_at(0)[k], -0.5, 0.5), rows[k],
                                             m[k], 0.1, 0.9, 0.5)
    for k in range(3):
        np.testing.assert_allclose(params[k], expected[k], rtol=1e-13, atol=1e-15)
    assert not opt.state_arrays()["rows/2"].any()  # untouched: its gradient was None

    params = make_params()
    opt = RowSGD(params, global_clipnorm=1.0, maximize=True)
    opt.step(grads_at(0))
    norm = np.sqrt(sum(np.sum(x ** 2) for x in grads_at(0)))
    for k in range(3):
        w, _, _ = rowsgd_reference(make_params()[k], -grads_at(0)[k] / norm,
                                   np.zeros(SHAPES[k][:-1]), np.zeros(SHAPES[k]), 0.1, 0.9, 0.5)
        np.testing.assert_allclose(params[k], w, rtol=1e-10, atol=1e-15)


def test_the_gradient_is_read_only_to_host_step():
    seen = []
    orig = TOY.host_step

    def spy(w, g, state, scalars, backend):
        seen.append(g.flags.writeable)
        orig(w, g, state, scalars, backend)
    object.__setattr__(TOY, "host_step", spy)
    try:
        RowSGD(make_params()).step(grads_at(0))
    finally:
        object.__setattr__(TOY, "host_step", orig)
    assert seen == [False, False, False]


def test_parameter_groups_and_mixed_dtypes():
    p = make_params()
    p[2] = p[2].astype(np.float32)
    opt = RowSGD([{"params": p[:2], "beta": 0.5}, {"params": p[2:]}])
    opt.step([grads_at(0)[:2], [grads_at(0)[2].astype(np.float32)]])
    w, rows, _ = rowsgd_reference(make_params()[0], grads_at(0)[0], np.zeros(4),
                                  np.zeros((4, 3)), 0.1, 0.5, 0.5)
    np.testing.assert_allclose(p[0], w, rtol=1e-13)
    assert opt.state_arrays()["rows/2"].dtype == np.float32


def test_refusals():
    with pytest.raises(ValueError, match="state_dtype='bfloat16' is not offered.*per_tensor"):
        RowSGD(make_params(np.float32), state_dtype="bfloat16")


@needs_cuda
def test_device_parameters_are_staged_through_the_host():
    """Slots on the device in their own shapes (a vector's row slot is 0-d);
    every step matches the numpy backend on host copies bit for bit,
    weight decay, clipping by value, a None gradient and a zero step
    included."""
    kwargs = dict(learning_rate=0.05, weight_decay=0.1, clipvalue=0.8)
    ref = make_params()
    on_host = RowSGD(ref, backend="numpy", **kwargs)
    on_device = [dev(p) for p in make_params()]
    opt = RowSGD(on_device, **kwargs)
    assert opt.backends == {"float64": "cuda"}
    live = opt.state_arrays()
    assert live["rows/0"].shape == (4,) and live["rows/2"].shape == ()
    assert all(hasattr(a, "copy_to_host") for a in live.values())  # device arrays
    for t in range(4):
        g = grads_at(t)
        if t == 1:
            g[1] = None
        on_host.step(g)
        opt.step([None if x is None else dev(x) for x in g])
        for a, b in zip(ref, on_device):
            assert np.array_equal(host(b), a)
    want = on_host.state_dict()["slots"]
    got = opt.state_dict()["slots"]
    assert got.keys() == want.keys()
    for key in want:
        assert isinstance(got[key], np.ndarray) and np.array_equal(got[key], want[key]), key


def test_over_state_takes_slots_of_their_own_shapes():
    params = make_params()
    rows = [np.zeros(s[:-1]) for s in SHAPES]
    mom = [np.zeros(s) for s in SHAPES]
    opt = RowSGD._over_state(params, {"rows": rows, "momentum": mom})
    opt.step(grads_at(0))
    assert rows[0].any() and mom[1].any()
    with pytest.raises(ValueError, match=r"rows array of parameter 0 .*shape \(4,\)"):
        RowSGD._over_state(make_params(), {"rows": [np.zeros(s) for s in SHAPES],
                                           "momentum": mom})


def test_sharded_optimizer_refuses_with_the_rules_reason():
    pytest.importorskip("mpi4py")
    from fastopt.distributed import ShardedOptimizer
    with pytest.raises(ValueError, match="cannot be sharded.*row moments cannot be cut"):
        ShardedOptimizer(RowSGD, make_params())


def test_accumulation_and_ema_around_a_per_tensor_rule():
    """Gradient accumulation feeds host_step the mean gradient every k-th
    call; the moving average of the parameters follows the updates."""
    p = make_params()
    opt = RowSGD(p, gradient_accumulation_steps=2, use_ema=True, ema_momentum=0.5)
    g0, g1 = grads_at(0), grads_at(1)
    opt.step(g0)
    assert all(np.array_equal(a, b) for a, b in zip(p, make_params()))  # accumulated only
    opt.step(g1)
    for k in range(len(SHAPES)):
        want, _, _ = rowsgd_reference(make_params()[k], (g0[k] + g1[k]) / 2,
                                      np.zeros(SHAPES[k][:-1]), np.zeros(SHAPES[k]),
                                      0.1, 0.9, 0.5)
        np.testing.assert_allclose(p[k], want, rtol=1e-13, atol=1e-15)
    assert opt.iterations == 1 and opt.ema_params is not None
