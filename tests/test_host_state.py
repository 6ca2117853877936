"""Host-side scalar state (:attr:`fastopt.rule.Rule.host_state`): the running
products Nadam (Keras's ``u_product``) and NAdam (torch's ``mu_product``)
keep across steps, through every state path.

What must hold: the product advances once per *applied* step (never on a
call that only accumulates), it is saved and restored with the slots by
``state_dict``, state files and pickling (``ShardedOptimizer``:
tests/test_distributed.py and tests/mpi_worker.py), a resumed run is bit
for bit the uninterrupted one, a bad or missing host state is refused with
nothing changed, and the state of optimizers without host state -- dicts
and files written before it existed -- is as before.
"""
import copy
import pickle

import numpy as np
import pytest

import fastopt
from fastopt.rule import RULES, Rule

from cases import HOST_BACKENDS

SHAPES = [(3, 4), (5,)]


def params(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def grads_at(t, dtype=np.float64):
    rng = np.random.default_rng(100 + t)
    return [(rng.standard_normal(s) * (0.0 if t == 3 else 1.0)).astype(dtype) for s in SHAPES]


def keras_u(beta_1, t):
    return beta_1 * (1.0 - 0.5 * 0.96 ** t)


OPTIMIZERS = {
    "nadam": lambda p, **kw: fastopt.Nadam(p, learning_rate=0.01, **kw),
    "nadam_accumulation": lambda p, **kw: fastopt.Nadam(
        p, learning_rate=0.01, gradient_accumulation_steps=3, use_ema=True, **kw),
    "nadam_groups": lambda p, **kw: fastopt.Nadam(
        [{"params": [p[0]], "beta_1": 0.8}, {"params": [p[1]]}], learning_rate=0.01, **kw),
    "nadam_torch": lambda p, **kw: fastopt.NAdam(p, learning_rate=0.01, weight_decay=0.1,
                                                 decoupled_weight_decay=True, **kw),
    "asgd": lambda p, **kw: fastopt.ASGD(p, learning_rate=0.05, lambd=0.01, t0=3, **kw),
    "schedulefree_adamw": lambda p, **kw: fastopt.ScheduleFreeAdamW(
        p, learning_rate=0.05, warmup_steps=3, r=0.5, weight_decay=0.1,
        gradient_accumulation_steps=2, **kw),
}


def _step(opt, t, dtype=np.float64):
    g = grads_at(t, dtype)
    opt.step([[g[0]], [g[1]]] if opt._tree.kind == "groups" else g)


def test_the_product_advances_once_per_applied_step():
    opt = fastopt.Nadam(params(), learning_rate=0.01, gradient_accumulation_steps=3)
    assert opt.host_state() == {"u_product/0": 1.0}
    expected = 1.0
    for call in range(9):
        _step(opt, call)
        if (call + 1) % 3 == 0:  # an applied update: t = the update's number
            expected *= keras_u(0.9, (call + 1) // 3)
        assert float(opt.host_state()["u_product/0"]) == expected, call


def test_each_parameter_group_keeps_its_own_product():
    opt = OPTIMIZERS["nadam_groups"](params())
    for t in range(4):
        _step(opt, t)
    host = opt.host_state()
    want = [np.prod([keras_u(b, t) for t in range(1, 5)]) for b in (0.8, 0.9)]
    assert set(host) == {"u_product/0", "u_product/1"}
    np.testing.assert_allclose([host["u_product/0"], host["u_product/1"]], want, rtol=1e-15)


def test_torch_keeps_mu_product_in_float32_as_torch_does():
    opt = fastopt.NAdam(params(), learning_rate=0.01)
    p = np.float32(1.0)
    for t in range(1, 40):
        _step(opt, t)
        p = np.float32(p * np.float32(0.9 * (1.0 - 0.5 * 0.96 ** (t * 0.004))))
        got = float(opt.host_state()["mu_product/0"])
        assert got == float(p) and float(np.float32(got)) == got, t


@pytest.mark.parametrize("route", ["state_dict", "file", "pickle"])
@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_resume_mid_run_is_bit_identical(tmp_path, name, backend, route):
    make = OPTIMIZERS[name]
    p_run = params()
    run = make(p_run, backend=backend)
    p_cut = params()
    cut = make(p_cut, backend=backend)
    for t in range(7):  # 7 calls: with accumulation over 3, mid-cycle
        _step(run, t)
        _step(cut, t)
    p_resumed = [a.copy() for a in p_cut]
    resumed = make(p_resumed, backend=backend)
    if route == "state_dict":
        resumed.load_state_dict(cut.state_dict())
    elif route == "file":
        fastopt.save_state(cut, tmp_path / "s.npz")
        fastopt.load_state(resumed, tmp_path / "s.npz")
    else:
        resumed = pickle.loads(pickle.dumps(cut))
        p_resumed = resumed._params
    assert resumed.host_state() == cut.host_state() != {}
    # advanced (schedule-free AdamW's train_mode is the mode, 1 in training)
    assert all(float(v) != 1.0 for k, v in resumed.host_state().items()
               if not k.startswith("train_mode/"))
    for t in range(7, 15):
        _step(run, t)
        _step(resumed, t)
    for a, b in zip(p_run, p_resumed):
        np.testing.assert_array_equal(a, b)
    for key, value in run.state_dict()["host_state"].items():
        assert resumed.state_dict()["host_state"][key] == value


def test_state_dict_and_file_hold_the_product_exactly(tmp_path):
    opt = fastopt.Nadam(params(), learning_rate=0.01)
    for t in range(5):
        _step(opt, t)
    state = opt.state_dict()
    value = state["host_state"]["u_product/0"]
    assert isinstance(value, np.ndarray) and value.shape == () and value.dtype == np.float64
    fastopt.save_state(opt, tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as z:
        assert z["host:u_product/0"] == value
    assert fastopt.state.read_state(tmp_path / "s.npz", "x")["host_state"] == {
        "u_product/0": value}


@pytest.mark.parametrize("cls", [fastopt.Adam, fastopt.SGD, fastopt.Adamax])
def test_optimizers_without_host_state_keep_their_old_state_format(tmp_path, cls):
    opt = cls(params(), learning_rate=0.01)
    _step(opt, 0)
    state = opt.state_dict()
    assert "host_state" not in state and opt.host_state() == {}
    fastopt.save_state(opt, tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as z:
        assert not [k for k in z.files if k.startswith("host:")]
    # a state dict or file written before host state existed loads as before
    again = cls(params(), learning_rate=0.01)
    again.load_state_dict(state)
    fastopt.load_state(again, tmp_path / "s.npz")
    assert again.iterations == 1
    # and an empty host_state is the same as none
    again.load_state_dict({**state, "host_state": {}})


def bad_host_states():
    return [
        (None, "host state differs; missing \\['u_product/0'\\]"),
        ({}, "host state differs; missing \\['u_product/0'\\]"),
        ({"u_product/0": 0.5, "u_product/1": 0.5}, "unexpected \\['u_product/1'\\]"),
        ({"mu_product/0": 0.5}, "missing \\['u_product/0'\\], unexpected \\['mu_product/0'\\]"),
        ({"u_product/0": float("nan")}, "must be a finite float"),
        ({"u_product/0": np.array(np.inf)}, "must be a finite float"),
        ({"u_product/0": True}, "must be a finite float"),
        ({"u_product/0": "0.5"}, "must be a finite float"),
        ({"u_product/0": np.array([0.5])}, "must be a finite float"),
        ([0.5], "'host_state' must be a dict"),
    ]


@pytest.mark.parametrize("host, message", bad_host_states())
def test_a_bad_host_state_is_refused_and_changes_nothing(host, message):
    opt = fastopt.Nadam(params(), learning_rate=0.01)
    for t in range(3):
        _step(opt, t)
    state = opt.state_dict()
    target = fastopt.Nadam(params(seed=1), learning_rate=0.01)
    _step(target, 0)
    before = target.state_dict()
    bad = {k: v for k, v in state.items() if k != "host_state"}
    if host is not None:
        bad["host_state"] = host
    with pytest.raises(ValueError, match=message):
        target.load_state_dict(bad)
    after = target.state_dict()
    assert after["host_state"] == before["host_state"] and after["calls"] == before["calls"]
    for k, v in before["slots"].items():
        np.testing.assert_array_equal(after["slots"][k], v)


def test_a_file_without_the_product_is_refused_for_nadam(tmp_path):
    opt = fastopt.Nadam(params(), learning_rate=0.01)
    _step(opt, 0)
    arrays = fastopt.state.state_to_arrays(opt.state_dict())
    del arrays["host:u_product/0"]
    np.savez(tmp_path / "old.npz", **arrays)
    with pytest.raises(fastopt.StateFileError, match="missing \\['u_product/0'\\]"):
        fastopt.load_state(fastopt.Nadam(params(), learning_rate=0.01), tmp_path / "old.npz")


def test_float32_parameters_keep_a_float64_product():
    opt = fastopt.Nadam(params(np.float32), learning_rate=0.01)
    for t in range(3):
        _step(opt, t, np.float32)
    want = keras_u(0.9, 1) * keras_u(0.9, 2) * keras_u(0.9, 3)
    assert opt.host_state()["u_product/0"] == want


def test_the_rule_declares_host_state_as_its_last_scalars():
    nadam = RULES["nadam"]
    assert nadam.host_state == ("u_product",) and nadam.scalars[-1] == "u_product"
    assert RULES["nadam_torch"].host_state == ("mu_product",)
    assert RULES["asgd_torch"].host_state == ("eta_now", "mu_now", "eta", "mu")
    assert RULES["schedulefree_adamw"].host_state == ("lr_max", "weight_sum", "train_mode")
    assert all(not r.host_state for r in RULES.values()
               if r.family not in ("nadam", "asgd", "schedulefree"))
    with pytest.raises(ValueError, match="host_state must be the last scalars"):
        Rule("bad", scalars=("learning_rate", "p", "step"), host_state=("p",),
             host_init=(1.0,), advance=len)
    with pytest.raises(ValueError, match="one host_init value each and an advance"):
        Rule("bad", scalars=("learning_rate", "p"), host_state=("p",), host_init=(1.0,))


def test_torch_adapter_keeps_torch_mu_product_per_parameter():
    """fastopt.torch.NAdam: one running product per parameter, as torch's,
    also when parameters have taken different numbers of steps (a gradient
    missing at one step), and checkpoints load into torch.optim.NAdam."""
    torch = pytest.importorskip("torch")
    import fastopt.torch as ft
    torch.manual_seed(0)
    ps = [torch.randn(3, 4, dtype=torch.float64, requires_grad=True),
          torch.randn(5, dtype=torch.float64, requires_grad=True)]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    kw = dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, decoupled_weight_decay=True,
              momentum_decay=0.01)
    fast, ref = ft.NAdam(ps, **kw), torch.optim.NAdam(qs, foreach=False, **kw)
    for t in range(12):
        for p, q in zip(ps, qs):
            g = torch.randn_like(p)
            p.grad, q.grad = (None, None) if (t in (2, 5) and p is ps[1]) else (g, g.clone())
        fast.step()
        ref.step()
    for p, q in zip(ps, qs):
        assert torch.equal(fast.state[p]["mu_product"], ref.state[q]["mu_product"])
        assert fast.state[p]["mu_product"].dtype == ref.state[q]["mu_product"].dtype
        torch.testing.assert_close(p, q, rtol=0, atol=1e-15)
    assert float(fast.state[ps[0]]["step"]) == 12 and float(fast.state[ps[1]]["step"]) == 10
    assert fast.state[ps[0]]["mu_product"] != fast.state[ps[1]]["mu_product"]
    back = torch.optim.NAdam([q.detach().clone().requires_grad_() for q in qs], **kw)
    back.load_state_dict(fast.state_dict())
    assert torch.equal(back.state[back.param_groups[0]["params"][1]]["mu_product"],
                       fast.state[ps[1]]["mu_product"])


def test_asgd_averaged_params_are_the_ax_slot_in_the_params_structure():
    w = {"kernel": np.ones((3, 2)), "bias": np.zeros(2, np.float32)}
    opt = fastopt.ASGD(w, learning_rate=0.1, t0=0)
    assert set(opt.averaged_params) == {"kernel", "bias"}
    np.testing.assert_array_equal(opt.averaged_params["kernel"], 0.0)  # before any step
    history = []
    for t in range(5):
        opt.step({"kernel": np.full((3, 2), 0.5), "bias": np.ones(2, np.float32)})
        history.append(w["kernel"].copy())
    avg = opt.averaged_params
    slots = opt.state_dict()["slots"]
    np.testing.assert_array_equal(avg["kernel"], slots["ax/kernel"])
    assert avg["bias"].dtype == np.float32
    # t0 = 0: step t averages with mu = 1/max(1, t - 1), torch's mu of the step
    # before, so ax is the running mean of the iterates from the second on (to
    # float32 rounding: torch keeps mu = 1/3 in float32)
    np.testing.assert_allclose(avg["kernel"], np.mean(history[1:], axis=0), rtol=1e-8)
    avg["kernel"][...] = 7.0  # a copy
    assert not (opt.averaged_params["kernel"] == 7.0).any()


def test_asgd_bfloat16_averaged_params_are_decoded():
    w = [np.ones(4, np.float32)]
    opt = fastopt.ASGD(w, learning_rate=0.1, t0=0, state_dtype="bfloat16")
    for _ in range(3):
        opt.step([np.full(4, 0.5, np.float32)])
    avg = opt.averaged_params[0]
    assert avg.dtype == np.float32 and 0.8 < avg[0] < 1.0


def test_asgd_eta_and_mu_as_torch_keeps_them():
    opt = fastopt.ASGD(params(), learning_rate=0.05, lambd=0.01, alpha=0.5, t0=2)
    for t in range(1, 6):
        _step(opt, t)
        host = opt.host_state()
        assert host["eta/0"] == float(np.float32(0.05 / (1 + 0.01 * 0.05 * t) ** 0.5))
        assert host["mu/0"] == float(np.float32(1 / max(1, t - 2)))


@pytest.mark.parametrize("name", ["ASGD", "NAdam"])
def test_torch_adapter_short_way_keeps_per_parameter_host_state(name):
    """The prepared short way of fastopt.torch (one advance for a group whose
    parameters share count and host values) against torch.optim, through
    steps where the parameters drift apart (a missing gradient), a host value
    written in place by the user, and a checkpoint loaded mid-run."""
    torch = pytest.importorskip("torch")
    import fastopt.torch as ft
    from fastopt.torch._plan import _GroupPlan
    torch.manual_seed(1)
    kw = {"ASGD": dict(lr=0.05, lambd=0.01, alpha=0.6, t0=3),
          "NAdam": dict(lr=0.01, momentum_decay=0.01)}[name]
    ps = [torch.randn(4, 3, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    fast, ref = getattr(ft, name)(ps, **kw), getattr(torch.optim, name)(qs, foreach=False, **kw)
    short = 0
    for t in range(14):
        for p, q in zip(ps, qs):
            g = torch.randn_like(p)
            p.grad, q.grad = (None, None) if (t == 9 and p is ps[2]) else (g, g.clone())
        plan = fast._fastopt_plans.get(id(fast.param_groups[0]))
        short += plan is not None and plan.grads(fast.state, plan.rule) is not None
        if t == 6:  # the user writes a host value in place, in both
            key = "eta" if name == "ASGD" else "mu_product"
            for p, q in zip(ps, qs):
                fast.state[p][key].fill_(0.5)
                ref.state[q][key].fill_(0.5)
        if t == 11:  # (a copy: torch's state_dict holds its live tensors)
            fast.load_state_dict(copy.deepcopy(ref.state_dict()))
        fast.step()
        ref.step()
        for p, q in zip(ps, qs):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-14)
    for p, q in zip(ps, qs):
        for k, v in ref.state[q].items():
            if v.ndim:  # slots: the parameters' rounding (torch does not fuse)
                torch.testing.assert_close(fast.state[p][k], v, rtol=0, atol=1e-14)
            else:       # the count and the host values: exactly torch's
                assert torch.equal(fast.state[p][k], v), k
    # steps 1 to 8 the short way (step 0 builds the plan; from step 9 on the
    # parameters' counts differ)
    assert isinstance(plan, _GroupPlan) and short == 8
