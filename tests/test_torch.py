"""fastopt.torch against torch.optim itself, live, in the same process.

Every class x configuration runs the same gradient stream as its torch.optim
twin (the for-loop implementation, ``foreach=False``) and must land on the
same parameters and state:

* float64: within 1e-10 of the displacement (how far the parameters moved);
* float32: within 4x torch's own discrepancy between its for-loop and its
  foreach implementation on the same run, plus a few float32 ulps of the
  parameters' magnitude (the two orders of float32 rounding are both torch).

Then what a training script does around ``step``: schedulers that rewrite
``lr``/``betas``/``momentum``, groups, named parameters, closures,
``add_param_group``, parameters without gradients, moved parameters,
strided layouts, bf16/fp16, state_dict interop both ways, GradScaler, hooks,
version counters, and bad input (the same errors as torch, nothing changed).
"""
import copy
import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastopt  # noqa: E402
import fastopt.torch as ft  # noqa: E402

from fastopt.rule import RULES  # noqa: E402
from optim_db import TORCH_CLASSES as CLASSES, TORCH_ROWS, Tensor, fastopt_kwargs  # noqa: E402

# every torch.optim configuration of every row of tests/optim_db.py
CONFIGS = [(row.torch_class, kw) for row in TORCH_ROWS for kw in row.torch_configs]
CONFIG_IDS = [f"{c}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for c, kw in CONFIGS]

SHAPES = [(5, 3), (7,), (1,), (4, 3, 2, 2), (33,)]


#: per-parameter state that is a 0-d tensor in torch's scalar dtype, not a
#: tensor of the parameter's shape and dtype: the step count and the rules'
#: host-side state (NAdam's mu_product)
SCALAR_KEYS = {"step"} | {k for r in RULES.values() for k in r.host_state}


def _torch_host_keys(row):
    """The torch state keys of the row's rule's host state (those torch keeps)."""
    rule = row.rules["torch"]
    return {k for k in getattr(ft, row.torch_class)._HOST_KEYS.get(rule, ()) if k}

def _tensors(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in SHAPES]


def _grad_stream(dtype, steps, seed=1):
    """Gradients with exact zeros, a zero step, large and tiny steps, and a
    parameter without gradient now and then."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(steps):
        gs = [torch.randn(s, generator=g, dtype=torch.float64) for s in SHAPES]
        gs[0][0] = 0.0
        if k == 2:
            gs = [torch.zeros_like(x) for x in gs]
        if k == 3:
            gs = [x * 1e3 for x in gs]
        if k == 4:
            gs = [x * 1e-4 for x in gs]
        gs = [x.to(dtype) for x in gs]
        if k in (1, 5):
            gs[2] = None  # skipped: no step counted for it
        out.append(gs)
    return out


def _run(make, init, stream, lr_fn=None):
    params = [p.clone().requires_grad_() for p in init]
    opt = make(params)
    for k, gs in enumerate(stream):
        for p, g in zip(params, gs):
            p.grad = None if g is None else g.clone()
        opt.step()
        if lr_fn is not None:
            lr_fn(opt, k)
    return params, opt


def _torch_cls(name):
    return getattr(torch.optim, name)


def _kw(kw):
    """Fresh keywords: ``optim_db.Tensor`` values become new 0-d tensors."""
    def value(v):
        return torch.tensor(v.value) if isinstance(v, Tensor) else v
    return {k: tuple(value(x) for x in v) if isinstance(v, tuple) else value(v)
            for k, v in kw.items()}


def _tolerance(dtype, ref, other_ref, init):
    disp = max((a - b).abs().max().item() for a, b in zip(ref, init))
    if dtype == torch.float64:
        return 1e-10 * max(disp, 1e-300)
    between = max((a - b).abs().max().item() for a, b in zip(ref, other_ref))
    scale = max(a.abs().max().item() for a in ref)
    return 4 * between + 8 * torch.finfo(torch.float32).eps * scale


def _assert_close_state(fast_opt, ref_opt, fast_params, ref_params, tol_rel):
    for pf, pr in zip(fast_params, ref_params):
        sf, sr = fast_opt.state.get(pf, {}), ref_opt.state.get(pr, {})
        assert set(sf) == set(sr), (sorted(sf), sorted(sr))
        for key in sr:
            a, b = sf[key], sr[key]
            if key == "step":
                assert float(a) == float(b)
                continue
            assert a.dtype == b.dtype and a.shape == b.shape
            err = (a.double() - b.double()).abs().max().item()
            assert err <= tol_rel * (1 + b.double().abs().max().item()), (key, err)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name, kw", CONFIGS, ids=CONFIG_IDS)
def test_same_trajectory_as_torch(name, kw, dtype):
    init = _tensors(dtype)
    stream = _grad_stream(dtype, 8)
    fast, fo = _run(lambda ps: getattr(ft, name)(ps, **_kw(kw)), init, stream)
    ref, ro = _run(lambda ps: _torch_cls(name)(ps, **_kw(kw), foreach=False), init, stream)
    try:
        other, _ = _run(lambda ps: _torch_cls(name)(ps, **_kw(kw), foreach=True), init, stream)
    except ValueError:  # tensor lr or betas: torch has no foreach path for them
        other = ref
    tol = _tolerance(dtype, ref, other, init)
    if any(isinstance(v, Tensor) or isinstance(v, tuple) and
           isinstance(v[0], Tensor) for v in kw.values()):
        # a 0-d tensor lr or betas: torch computes lr / bias correction and
        # beta**step in the tensor's dtype (float32), fastopt in float64
        tol = max(tol, 1e-6 * max((a - b).abs().max().item() for a, b in zip(ref, init)))
    for a, b in zip(fast, ref):
        assert (a - b).abs().max().item() <= tol
    _assert_close_state(fo, ro, fast, ref, 1e-10 if dtype == torch.float64 else 1e-4)
    # a parameter that skipped two steps counts its own steps
    if "step" in ro.state[ref[2]]:
        assert float(fo.state[fast[2]]["step"]) == float(ro.state[ref[2]]["step"]) == 6


def test_optim_db_sample_inputs_match_torch():
    """torch's own sample configurations for each class (those without
    capturable/differentiable), float64, against torch."""
    from torch.testing._internal.common_optimizers import optim_db
    infos = {o.name: o for o in optim_db}
    ran = 0
    for name in CLASSES:
        for sample in infos[name].optim_inputs_func(device="cpu", dtype=torch.float64):
            kw = dict(sample.kwargs)
            if kw.get("capturable") or kw.get("differentiable") or kw.get("fused"):
                continue
            kw.pop("foreach", None)
            init = _tensors(torch.float64)
            stream = _grad_stream(torch.float64, 5)
            fast, _ = _run(lambda ps: getattr(ft, name)(ps, **_kw(kw)), init, stream)
            ref, _ = _run(lambda ps: _torch_cls(name)(ps, **_kw(kw), foreach=False), init,
                          stream)
            tol = _tolerance(torch.float64, ref, ref, init)
            for a, b in zip(fast, ref):
                assert (a - b).abs().max().item() <= tol, (name, sample.desc)
            ran += 1
    assert ran >= 20


def test_optim_db_error_inputs_raise_what_torch_raises():
    from torch.testing._internal.common_optimizers import OptimizerErrorEnum, optim_db
    infos = {o.name: o for o in optim_db}
    checked = 0
    for name in CLASSES:
        for err in infos[name].optim_error_inputs_func(device="cpu", dtype=torch.float32):
            sample = err.optimizer_error_input
            if sample.kwargs.get("capturable") or sample.kwargs.get("differentiable"):
                continue
            params = sample.params
            if params is None:
                params = [torch.nn.Parameter(torch.randn(2, 2))]
            cls = getattr(ft, name)
            if err.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
                if issubclass(err.error_type, Warning):
                    with pytest.warns(err.error_type, match=err.error_regex):
                        cls(params, **sample.kwargs)
                else:
                    with pytest.raises(err.error_type, match=err.error_regex):
                        cls(params, **sample.kwargs)
            else:
                opt = cls(params, **sample.kwargs)
                with pytest.raises(err.error_type, match=err.error_regex):
                    opt.step()
            checked += 1
    assert checked >= 25


@pytest.mark.parametrize("name", CLASSES)
def test_is_a_torch_optimizer_with_torch_signature(name):
    import inspect
    cls, tcls = getattr(ft, name), _torch_cls(name)
    assert issubclass(cls, tcls) and issubclass(cls, torch.optim.Optimizer)
    ours = inspect.signature(cls.__init__).parameters
    theirs = inspect.signature(tcls.__init__).parameters
    assert list(ours)[:len(theirs)] == list(theirs)
    extras = list(ours)[len(theirs):]
    assert extras == ["state_dtype", "state_rounding"]
    assert all(ours[k].kind == inspect.Parameter.KEYWORD_ONLY for k in extras)
    for k in theirs:
        assert ours[k].default == theirs[k].default and ours[k].kind == theirs[k].kind, k


@pytest.mark.parametrize("flag", ["capturable", "differentiable"])
def test_capturable_and_differentiable_are_refused(flag):
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match=flag):
        ft.Adam([p], **{flag: True})


def test_foreach_and_fused_are_accepted_and_change_nothing():
    init = _tensors(torch.float32)
    stream = _grad_stream(torch.float32, 4)
    plain, _ = _run(lambda ps: ft.AdamW(ps, lr=0.01), init, stream)
    for kw in (dict(fused=True), dict(foreach=True), dict(foreach=False)):
        other, _ = _run(lambda ps: ft.AdamW(ps, lr=0.01, **kw), init, stream)
        for a, b in zip(plain, other):
            assert torch.equal(a, b)


# -- what a training script does around step ---------------------------------------------

def _model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(),
                               torch.nn.Linear(8, 3)).to(dtype)


def _train(model, opt, steps, scheduler=None, seed=3):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=g, dtype=next(model.parameters()).dtype)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


def _assert_models_close(a, b, tol):
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb
        assert (pa - pb).abs().max().item() <= tol, na


@pytest.mark.parametrize("sched", ["onecycle_adam", "onecycle_sgd", "steplr", "cosine_rmsprop"])
def test_schedulers_rewrite_param_groups_between_steps(sched):
    name, make_sched = {
        "onecycle_adam": ("AdamW", lambda o: torch.optim.lr_scheduler.OneCycleLR(
            o, max_lr=0.05, total_steps=30, cycle_momentum=True)),
        "onecycle_sgd": ("SGD", lambda o: torch.optim.lr_scheduler.OneCycleLR(
            o, max_lr=0.05, total_steps=30, cycle_momentum=True)),
        "steplr": ("Adagrad", lambda o: torch.optim.lr_scheduler.StepLR(o, 5, gamma=0.5)),
        "cosine_rmsprop": ("RMSprop", lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(
            o, T_max=10)),
    }[sched]
    kw = dict(lr=0.01, momentum=0.9) if name in ("SGD", "RMSprop") else dict(lr=0.01)
    runs = []
    for cls in (getattr(ft, name), _torch_cls(name)):
        m = _model(dtype=torch.float64)
        o = cls(m.parameters(), **kw)
        _train(m, o, 25, make_sched(o))
        runs.append((m, o))
    _assert_models_close(runs[0][0], runs[1][0], 1e-10)
    assert runs[0][1].param_groups[0]["lr"] == runs[1][1].param_groups[0]["lr"]


def test_param_groups_named_parameters_and_add_param_group_mid_run():
    def build(cls):
        m = _model(dtype=torch.float64)
        extra = torch.nn.Linear(3, 2).double()
        named = list(m.named_parameters())
        o = cls([{"params": named[:2], "lr": 0.02},
                 {"params": named[2:], "weight_decay": 0.1}], lr=0.01)
        _train(m, o, 3)
        o.add_param_group({"params": list(extra.named_parameters()), "lr": 0.05,
                           "amsgrad": True})
        g = torch.Generator().manual_seed(9)
        for _ in range(4):
            o.zero_grad()
            x = torch.randn(5, 6, generator=g, dtype=torch.float64)
            extra(m(x)).square().mean().backward()
            o.step()
        return m, extra, o
    mf, ef, of = build(ft.AdamW)
    mr, er, orr = build(torch.optim.AdamW)
    _assert_models_close(mf, mr, 1e-10)
    _assert_models_close(ef, er, 1e-10)
    sf, sr = of.state_dict(), orr.state_dict()
    assert [g["param_names"] for g in sf["param_groups"]] == \
        [g["param_names"] for g in sr["param_groups"]]
    # the late group counts its own steps
    assert float(sf["state"][4]["step"]) == float(sr["state"][4]["step"]) == 4
    assert float(sf["state"][0]["step"]) == 7


def test_closure_is_called_with_grad_enabled_and_its_loss_returned():
    m = _model()
    o = ft.SGD(m.parameters(), lr=0.1)
    x = torch.randn(4, 6)

    def closure():
        o.zero_grad()
        assert torch.is_grad_enabled()
        loss = m(x).square().mean()
        loss.backward()
        return loss

    with torch.no_grad():
        loss = o.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.item() > 0


def test_zero_grad_set_to_none_and_to_zero():
    m = _model()
    o = ft.Adam(m.parameters())
    _train(m, o, 1)
    o.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in m.parameters())
    o.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_parameters_without_gradient_get_no_state_until_their_first():
    a, b = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(4))
    o = ft.Adam([a, b], lr=0.1)
    a.grad = torch.ones(3)
    o.step()
    assert b not in o.state and float(o.state[a]["step"]) == 1
    b.grad = torch.ones(4)
    o.step()
    assert float(o.state[b]["step"]) == 1 and float(o.state[a]["step"]) == 2
    s = ft.SGD([a, b], lr=0.1)  # no momentum: torch keeps no state at all
    s.step()
    assert len(s.state) == 0


def test_moved_parameters_are_updated_where_they_are_now():
    torch.manual_seed(0)
    for cls in (ft.AdamW, torch.optim.AdamW):
        pass
    runs = []
    for cls in (ft.AdamW, torch.optim.AdamW):
        m = _model(dtype=torch.float64)
        o = cls(m.parameters(), lr=0.01)
        _train(m, o, 3)
        # p.data = ..., and a model reload with assign=True, and a clone via .to()
        w = m[0].weight
        w.data = w.data.clone()
        m.load_state_dict({k: v.clone() for k, v in m.state_dict().items()}, assign=False)
        m[2].bias.data = m[2].bias.data.clone().contiguous()
        _train(m, o, 3, seed=4)
        runs.append(m)
    _assert_models_close(runs[0], runs[1], 1e-10)


def test_moved_parameter_is_not_left_behind():
    p = torch.nn.Parameter(torch.zeros(5))
    o = ft.SGD([p], lr=1.0)
    p.grad = torch.ones(5)
    o.step()
    old = p.data
    p.data = torch.zeros(5)
    o.step()
    assert torch.equal(p.detach(), -torch.ones(5))
    assert torch.equal(old, -torch.ones(5))  # the old storage saw one step only


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced", "grad_strided"])
def test_dense_and_strided_layouts_are_updated_in_place(layout):
    torch.manual_seed(0)
    if layout == "channels_last":
        base = torch.randn(4, 3, 5, 5, dtype=torch.float64).to(
            memory_format=torch.channels_last)
    elif layout == "transposed":
        base = torch.randn(7, 5, dtype=torch.float64).t()
    else:
        base = torch.randn(6, 8, dtype=torch.float64)[:, ::2]  # gaps: staged
    grads = [torch.randn(base.shape, dtype=torch.float64) for _ in range(4)]
    finals = []
    for cls in (ft.Adam, torch.optim.Adam):
        p = torch.nn.Parameter(base.clone(memory_format=torch.preserve_format)
                               if layout != "sliced" else
                               torch.randn(6, 8, dtype=torch.float64)[:, ::2])
        if layout == "sliced":
            with torch.no_grad():
                p.copy_(base)
        ptr = p.data_ptr()
        o = cls([p], lr=0.1, weight_decay=0.1)
        for g in grads:
            p.grad = g.clone() if layout != "grad_strided" else g.t().contiguous().t()
            o.step()
        assert p.data_ptr() == ptr  # in place
        if cls is ft.Adam and layout != "sliced":
            assert o.state[p]["exp_avg"].stride() == p.stride()
        finals.append(p.detach().clone())
    assert (finals[0] - finals[1]).abs().max().item() <= 1e-12


def _rounded_torch(name, kw, init, stream, dtype):
    """torch's for-loop optimizer in float32 on float32 copies, with the
    parameters and every state tensor rounded to ``dtype`` after each step:
    float32 arithmetic on ``dtype`` storage, built from torch alone."""
    params = [p.float().requires_grad_() for p in init]
    opt = _torch_cls(name)(params, **kw, foreach=False)
    for gs in stream:
        for p, g in zip(params, gs):
            p.grad = None if g is None else g.float()
        opt.step()
        with torch.no_grad():
            for p in params:
                p.copy_(p.to(dtype).float())
                for key, v in opt.state.get(p, {}).items():
                    if key not in SCALAR_KEYS:
                        v.copy_(v.to(dtype).float())
    return params


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("row", TORCH_ROWS, ids=str)
def test_low_precision_parameters_compute_in_float32(row, dtype):
    """bfloat16/float16 parameters: state in the parameter dtype, float32
    arithmetic inside, rounded to nearest on the way out (what torch's fused
    CPU optimizers do).  Checked against torch's own for-loop run in float32
    with that rounding after every step (one rounding of the dtype apart at
    most), and, where torch has fused kernels (Adam, AdamW, Adagrad), against
    them too.  (torch 2.13's fused SGD with momentum leaves bfloat16/float16
    parameters unchanged on the first step in its vectorised part, so it is
    no reference.)  Each row's plain torch configuration at its ``torch_lr``
    (0.01, Adadelta 3.0).
    bfloat16 runs in one pass (numba_bf16), except centred RMSprop and
    float16, which go through float32 staging copies."""
    import inspect
    name, kw = row.torch_class, {**row.torch_configs[0], "lr": row.torch_lr}
    init = _tensors(dtype)
    stream = _grad_stream(dtype, 6)
    fast, fo = _run(lambda ps: getattr(ft, name)(ps, **kw), init, stream)
    ulp = torch.finfo(dtype).eps
    refs = [_rounded_torch(name, kw, init, stream, dtype)]
    if name != "SGD" and "fused" in inspect.signature(_torch_cls(name)).parameters:
        refs.append(_run(lambda ps: _torch_cls(name)(ps, **kw, fused=True), init, stream)[0])
    for ref in refs:
        for a, b in zip(fast, ref):
            assert a.dtype == dtype
            diff = (a.float() - b.float()).abs()
            assert (diff <= 2 * ulp * b.float().abs() + 1e-6).all(), diff.max()
    moved = max((a.float() - b.float()).abs().max().item() for a, b in zip(fast, init))
    assert moved > 0.02  # the parameters moved: the comparison is not vacuous
    for p in fast:
        for key, v in fo.state.get(p, {}).items():
            if key not in SCALAR_KEYS:
                assert v.dtype == dtype


@pytest.mark.parametrize("row", TORCH_ROWS, ids=str)
def test_state_dict_interop_both_ways_and_through_torch_save(row):
    name, kw = row.torch_class, row.torch_configs[0]

    def fresh(cls):
        m = _model(dtype=torch.float64)
        return m, cls(m.parameters(), **_kw(kw))
    # fastopt -> file -> torch.optim, and torch.optim -> file -> fastopt
    for src_cls, dst_cls in ((getattr(ft, name), _torch_cls(name)),
                             (_torch_cls(name), getattr(ft, name))):
        m1, o1 = fresh(src_cls)
        _train(m1, o1, 5)
        buf = io.BytesIO()
        torch.save({"model": m1.state_dict(), "opt": o1.state_dict()}, buf)
        buf.seek(0)
        ck = torch.load(buf, weights_only=True)
        m2, o2 = fresh(dst_cls)
        m2.load_state_dict(ck["model"])
        o2.load_state_dict(ck["opt"])
        m3, o3 = fresh(src_cls)  # the source continuing
        m3.load_state_dict(m1.state_dict())
        o3.load_state_dict(copy.deepcopy(o1.state_dict()))
        _train(m2, o2, 5, seed=8)
        _train(m3, o3, 5, seed=8)
        _assert_models_close(m2, m3, 1e-10)
    sd = o2.state_dict()
    keys = set(RULES[row.rules["torch"]].torch_state) | _torch_host_keys(row)
    if getattr(ft, name)._COUNTS_STEPS:
        keys.add("step")
    assert set(sd["state"].get(0, {})) == keys
    if "step" in keys:
        assert sd["state"][0]["step"].shape == () and \
            sd["state"][0]["step"].dtype == torch.float32


@pytest.mark.parametrize("row", TORCH_ROWS, ids=str)
def test_state_dict_keys_match_torch(row):
    """Every variant's state_dict has torch's keys, dtypes and shapes, and
    the keys are those its rule declares (``Rule.torch_state``)."""
    name, kw = row.torch_class, _kw(row.torch_configs[0])
    sds = []
    for cls in (getattr(ft, name), _torch_cls(name)):
        m = _model()
        o = cls(m.parameters(), **kw)
        _train(m, o, 2)
        sds.append(o.state_dict())
    assert sds[0]["param_groups"] == sds[1]["param_groups"]
    assert set(sds[0]["state"]) == set(sds[1]["state"])
    for k in sds[1]["state"]:
        a, b = sds[0]["state"][k], sds[1]["state"][k]
        assert set(a) == set(b)
        assert set(b) - SCALAR_KEYS == set(RULES[row.rules["torch"]].torch_state)
        assert set(b) & SCALAR_KEYS - {"step"} == _torch_host_keys(row)
        for key in b:
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape


def test_state_tensors_are_live_and_written_in_place():
    """Writes into opt.state[p] (what FSDP and ZeRO do) reach the next step,
    and the step writes into the same tensors."""
    runs = []
    for cls in (ft.Adam, torch.optim.Adam):
        m = _model(dtype=torch.float64)
        o = cls(m.parameters(), lr=0.01)
        _train(m, o, 2)
        st = o.state[m[0].weight]
        ptr = st["exp_avg"].data_ptr()
        st["exp_avg"].mul_(0.5)
        st["exp_avg_sq"].fill_(1e-3)
        _train(m, o, 2, seed=5)
        assert o.state[m[0].weight]["exp_avg"].data_ptr() == ptr
        runs.append(m)
    _assert_models_close(runs[0], runs[1], 1e-12)


@pytest.mark.parametrize("change", ["state_tensor", "step_tensor", "moved", "none_grad",
                                    "strided_grad", "sparse_grad"])
def test_short_path_notices_each_change_among_many_parameters(change):
    """The prepared plan's checks (one C-level pass each over the group):
    whatever changed at the 30th of 40 parameters, the step is torch's."""
    runs = []
    for cls in (ft.Adam, torch.optim.Adam):
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64)) for _ in range(40)]
        o = cls(ps, lr=0.01)
        for step in range(4):
            for i, p in enumerate(ps):
                p.grad = torch.full((3, 4), 0.1 * (i + 1) * (step + 1), dtype=torch.float64)
            if step == 2:
                q = ps[29]
                if change == "state_tensor":
                    o.state[q]["exp_avg"] = o.state[q]["exp_avg"].clone() * 0.5
                elif change == "step_tensor":
                    o.state[q]["step"] = torch.tensor(7.0)
                elif change == "moved":
                    q.data = q.data.clone()
                elif change == "none_grad":
                    q.grad = None
                elif change == "strided_grad":
                    q.grad = torch.full((4, 3), 0.5, dtype=torch.float64).t()
                elif change == "sparse_grad":
                    q.grad = torch.full((3, 4), 0.5, dtype=torch.float64).to_sparse()
            if change == "sparse_grad" and step == 2:
                with pytest.raises(RuntimeError, match="sparse"):
                    o.step()
                ps[29].grad = None
            o.step()
        runs.append(([p.detach().clone() for p in ps], float(o.state[ps[29]]["step"])))
    for a, b in zip(runs[0][0], runs[1][0]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert runs[0][1] == runs[1][1]


def test_step_bumps_version_counters_like_torch():
    for cls in (ft.SGD, torch.optim.SGD):
        m = torch.nn.Linear(3, 1)
        o = cls(m.parameters(), lr=0.1)
        x = torch.randn(2, 3, requires_grad=True)
        m(x).sum().backward()
        out = (m.weight * m.weight).sum()   # saves the weight for backward
        o.step()
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            out.backward()


def test_grad_scaler_unscales_in_the_kernel_and_skips_on_inf():
    runs = []
    for cls in (ft.AdamW, torch.optim.AdamW):
        m = _model()
        o = cls(m.parameters(), lr=0.01, fused=True)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
        g = torch.Generator().manual_seed(0)
        for k in range(6):
            o.zero_grad()
            loss = m(torch.randn(8, 6, generator=g)).square().mean()
            scaler.scale(loss).backward()
            if k == 3:
                m[0].weight.grad[0, 0] = float("inf")
            scaler.step(o)
            scaler.update()
        runs.append((m, o, scaler.get_scale()))
    _assert_models_close(runs[0][0], runs[1][0], 1e-6)
    assert runs[0][2] == runs[1][2] < 2.0 ** 8  # the inf halved the scale
    assert float(runs[0][1].state[runs[0][0][0].weight]["step"]) == 5  # one step skipped


def test_step_hooks_run_and_profiler_sees_the_step():
    m = _model()
    o = ft.SGD(m.parameters(), lr=0.1)
    calls = []

    def check(opt, args, kwargs):  # torch's wrapper passes the optimizer first
        assert opt is o and args[0] is o and kwargs == {}
    o.register_step_pre_hook(check)
    h1 = o.register_step_pre_hook(lambda opt, a, k: calls.append("pre"))
    h2 = o.register_step_post_hook(lambda opt, a, k: calls.append("post"))
    from torch.optim.optimizer import register_optimizer_step_pre_hook
    h3 = register_optimizer_step_pre_hook(
        lambda opt, a, k: calls.append("global"))
    _train(m, o, 1)
    assert calls == ["global", "pre", "post"]
    for h in (h1, h2, h3):
        h.remove()
    _train(m, o, 1)
    assert len(calls) == 3
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _train(m, o, 1)
    assert any("Optimizer.step#SGD.step" in e.name for e in prof.events())


def test_thread_count_follows_torch_unless_set(monkeypatch):
    from fastopt import backends
    monkeypatch.setattr(backends, "_num_threads", None)
    before = fastopt.get_num_threads()
    try:
        torch_threads = torch.get_num_threads()
        ft.SGD([torch.nn.Parameter(torch.zeros(1))])
        assert fastopt.get_num_threads() == min(torch_threads,
                                                backends.get_backend("numba").max_threads())
        fastopt.set_num_threads(1)
        ft.SGD([torch.nn.Parameter(torch.zeros(1))])
        assert fastopt.get_num_threads() == 1
    finally:
        fastopt.set_num_threads(before)


# -- bad input: torch's errors, nothing changed ------------------------------------------

def _snapshot(opt, params):
    return ([p.detach().clone() for p in params],
            copy.deepcopy({k: v for k, v in opt.state_dict()["state"].items()}))


def _unchanged(opt, params, snap):
    for p, q in zip(params, snap[0]):
        assert torch.equal(p.detach(), q)
    now = opt.state_dict()["state"]
    assert set(now) == set(snap[1])
    for k in now:
        for key in now[k]:
            assert torch.equal(now[k][key], snap[1][k][key])


@pytest.mark.parametrize("bad", ["sparse", "dtype", "complex", "meta"])
def test_bad_gradients_raise_before_anything_changes(bad):
    a, b = torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(4))
    params = [a, b]
    if bad == "complex":
        params.append(torch.nn.Parameter(torch.randn(3, dtype=torch.complex64)))
    if bad == "meta":
        params.append(torch.nn.Parameter(torch.empty(3, device="meta")))
    o = ft.Adam([{"params": [a]}, {"params": params[1:]}], lr=0.1)
    a.grad = torch.ones(4)
    b.grad = torch.ones(4)
    o.step()
    snap = _snapshot(o, [a, b])
    if bad == "sparse":
        b.grad = torch.ones(4).to_sparse()
        err = RuntimeError
    elif bad == "dtype":
        b.grad = None
        b.grad = torch.ones(4)
        b.grad.data = torch.ones(4, dtype=torch.float64)
        err = TypeError
    elif bad == "complex":
        params[2].grad = torch.ones(3, dtype=torch.complex64)
        err = TypeError
    else:
        params[2].grad = torch.empty(3, device="meta")
        err = NotImplementedError
    with pytest.raises(err):
        o.step()
    _unchanged(o, [a, b], snap)


def test_state_on_another_layout_or_dtype_is_adopted():
    """A checkpoint whose state tensors differ in layout from the parameter
    (saved before a channels_last conversion) still trains like torch."""
    runs = []
    for cls in (ft.Adam, torch.optim.Adam):
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(3, 4, 3).double()
        o = cls(conv.parameters(), lr=0.01)
        x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
        for _ in range(2):
            o.zero_grad()
            conv(x).square().mean().backward()
            o.step()
        sd = copy.deepcopy(o.state_dict())
        conv = conv.to(memory_format=torch.channels_last)
        o = cls(conv.parameters(), lr=0.01)
        o.load_state_dict(sd)
        for _ in range(3):
            o.zero_grad()
            conv(x.to(memory_format=torch.channels_last)).square().mean().backward()
            o.step()
        runs.append(conv.weight.detach().clone())
    assert (runs[0] - runs[1]).abs().max().item() <= 1e-12


def test_many_small_instances_like_torchao_cpu_offload():
    """torchao's CPUOffloadOptimizer builds the wrapped class once per large
    parameter as ``cls([{"params": p, **group}], **kwargs)`` and once over
    the small ones it keeps on the device, then steps each.  Here on CPU
    tensors: the same numbers as one torch.optim.AdamW over everything."""
    m = _model(dtype=torch.float64)
    ref = copy.deepcopy(m)
    params = list(m.parameters())
    large = [p for p in params if p.numel() >= 20]
    small = [p for p in params if p.numel() < 20]
    group = {"lr": 0.01, "weight_decay": 0.1}
    opts = [ft.AdamW([{"params": p, **group}], betas=(0.9, 0.99)) for p in large]
    opts.append(ft.AdamW([{"params": small, **group}], betas=(0.9, 0.99)))
    ro = torch.optim.AdamW(ref.parameters(), lr=0.01, weight_decay=0.1, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randn(8, 6, generator=g, dtype=torch.float64)
        for model in (m, ref):
            model.zero_grad()
            model(x).square().mean().backward()
        for o in opts:
            o.step()
        ro.step()
    _assert_models_close(m, ref, 1e-10)


@pytest.mark.parametrize("backend", ["numba", "cython"])
@pytest.mark.parametrize("row", TORCH_ROWS, ids=str)
def test_same_bits_as_fastopt_optimizer_with_torch_convention(row, backend):
    """fastopt.torch.X and fastopt.X(convention='torch') run the same
    kernels: with every gradient present they agree bit for bit (each row's
    plain torch configuration)."""
    if backend not in fastopt.available_backends():
        pytest.skip(f"{backend} backend not built")
    init = [t.numpy().copy() for t in _tensors(torch.float32)]
    stream = [[torch.zeros_like(t) if g is None else g for g, t in zip(gs, _tensors(
        torch.float32))] for gs in _grad_stream(torch.float32, 6)]
    np_params = [a.copy() for a in init]
    name, kw = row.torch_class, row.torch_configs[0]
    npo = row.cls(np_params, convention="torch", backend=backend, **fastopt_kwargs(kw))
    for gs in stream:
        npo.step([g.numpy() for g in gs])
    import fastopt.torch._optim as impl
    old = impl.MultiTensorStep
    impl.MultiTensorStep = lambda *a, **k: old(*a, backend=backend)
    try:
        fast, _ = _run(lambda ps: getattr(ft, name)(ps, **_kw(kw)),
                       [torch.from_numpy(a.copy()) for a in init], stream)
    finally:
        impl.MultiTensorStep = old
    for p, q in zip(np_params, fast):
        np.testing.assert_array_equal(p, q.detach().numpy())


def test_warns_nothing_on_the_plain_path():
    m = _model()
    o = ft.AdamW(m.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(m, o, 2)


# -- optimizer offload (CPU tensors stand in for the device) ------------------------------

def _offload_run(dtype, accumulate=1, steps=5):
    model = _model(dtype=dtype)
    off = ft.CPUOffload(model.parameters(), lr=0.01, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    grads = []
    for _ in range(steps):
        total = [torch.zeros(p.shape) for p in model.parameters()]
        for _ in range(accumulate):
            x = torch.randn(8, 6, generator=g).to(dtype)
            loss = model(x).square().mean()
            # what the hooks saw, for the reference: the gradients of this backward
            gs = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
            total = [t + gi.float() for t, gi in zip(total, gs)]
            loss.backward()
        grads.append(total)
        assert all(p.grad is None for p in model.parameters())  # freed "on the device"
        off.step()
        off.zero_grad()
    return model, off, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("accumulate", [1, 3])
def test_offload_masters_follow_a_float32_adamw_and_the_device_copy_follows(dtype, accumulate):
    model, off, grads = _offload_run(dtype, accumulate)
    # reference: torch.optim.AdamW on float32 copies of the initial weights, fed
    # the host gradients (summed over the accumulated backward passes)
    ref = [p.detach().float().clone().requires_grad_() for p in _model(dtype=dtype).parameters()]
    ro = torch.optim.AdamW(ref, lr=0.01, weight_decay=0.1)
    for gs in grads:
        for p, gi in zip(ref, gs):
            p.grad = gi
        ro.step()
    for m, r, p in zip(off.masters, ref, model.parameters()):
        assert m.dtype == torch.float32 and m.device.type == "cpu"
        assert (m - r.detach()).abs().max().item() <= 1e-6
        assert p.dtype == dtype and torch.equal(p.detach(), m.to(dtype))  # rounded copy
    assert float(off.state[off.masters[0]]["step"]) == 5


def test_offload_skips_parameters_without_gradient_and_round_trips_state():
    a = torch.nn.Parameter(torch.ones(3))
    b = torch.nn.Parameter(torch.ones(2))
    off = ft.CPUOffload([a, b], lr=0.1)
    (a * 2).sum().backward()
    off.step()
    assert b not in off.state or not off.state.get(off.masters[1])
    assert torch.equal(b.detach(), torch.ones(2)) and not torch.equal(a.detach(), torch.ones(3))
    sd = copy.deepcopy(off.state_dict())
    a2 = torch.nn.Parameter(torch.zeros(3))
    b2 = torch.nn.Parameter(torch.zeros(2))
    off2 = ft.CPUOffload([a2, b2], lr=0.1)
    off2.load_state_dict(sd)
    assert torch.equal(a2.detach(), a.detach())
    for o, p in ((off, a), (off2, a2)):
        (p * 2).sum().backward()
        o.step()
    assert torch.equal(a2.detach(), a.detach())
    with pytest.raises(TypeError):
        ft.CPUOffload(a)
    with pytest.raises(ValueError):
        ft.CPUOffload([a, a])


# -- bfloat16 optimizer state --------------------------------------------------------------

@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("row", [row for row in TORCH_ROWS if row.bf16_state], ids=str)
def test_bfloat16_state_same_bits_as_fastopt_optimizer(row, rounding):
    """state_dtype='bfloat16' runs fastopt's bfloat16-state kernels: the same
    bits as fastopt's NumPy optimizer with convention='torch' (each row that
    takes bfloat16 state, its plain torch configuration)."""
    name, kw = row.torch_class, row.torch_configs[0]
    init = [t.numpy().copy() for t in _tensors(torch.float32)]
    stream = [[torch.zeros_like(t) if g is None else g for g, t in zip(gs, _tensors(
        torch.float32))] for gs in _grad_stream(torch.float32, 6)]
    np_params = [a.copy() for a in init]
    npo = row.cls(np_params, convention="torch", state_dtype="bfloat16",
                  state_rounding=rounding, **fastopt_kwargs(kw))
    for gs in stream:
        npo.step([g.numpy() for g in gs])
    fast, fo = _run(lambda ps: getattr(ft, name)(ps, state_dtype="bfloat16",
                                                 state_rounding=rounding, **_kw(kw)),
                    [torch.from_numpy(a.copy()) for a in init], stream)
    for p, q in zip(np_params, fast):
        np.testing.assert_array_equal(p, q.detach().numpy())
    for p in fast:
        for key, v in fo.state[p].items():
            if key not in SCALAR_KEYS:
                assert v.dtype == torch.bfloat16


def test_bfloat16_state_dict_round_trips_and_loads_into_torch():
    def build(cls, **kw):
        m = _model()
        return m, cls(m.parameters(), lr=0.01, **kw)
    m1, o1 = build(ft.AdamW, state_dtype="bfloat16")
    _train(m1, o1, 4)
    buf = io.BytesIO()
    torch.save(o1.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    assert sd["state"][0]["exp_avg"].dtype == torch.bfloat16
    m2, o2 = build(ft.AdamW, state_dtype="bfloat16")
    m2.load_state_dict(m1.state_dict())
    o2.load_state_dict(sd)
    m3, o3 = build(torch.optim.AdamW)
    m3.load_state_dict(m1.state_dict())
    o3.load_state_dict(sd)  # torch casts the state to the parameters' dtype
    _train(m1, o1, 3, seed=7)
    _train(m2, o2, 3, seed=7)
    _train(m3, o3, 3, seed=7)
    _assert_models_close(m1, m2, 0.0)
    _assert_models_close(m1, m3, 1e-3)  # float32 state from here on: close, not equal


def test_bfloat16_state_refusals():
    with pytest.raises(ValueError, match="centred RMSprop"):
        ft.RMSprop([torch.nn.Parameter(torch.zeros(2))], centered=True, state_dtype="bfloat16")
    with pytest.raises(TypeError, match="float32"):
        ft.AdamW([torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))],
                 state_dtype="bfloat16")
    with pytest.raises(ValueError, match="state_dtype"):
        ft.AdamW([torch.nn.Parameter(torch.zeros(2))], state_dtype="float16")
    with pytest.raises(ValueError, match="state_rounding"):
        ft.AdamW([torch.nn.Parameter(torch.zeros(2))], state_rounding="nearest")
    with pytest.raises(ValueError, match="state_rounding"):
        ft.AdamW([torch.nn.Parameter(torch.zeros(2))], state_dtype="bfloat16",
                 state_rounding="up")
    p = torch.nn.Parameter(torch.zeros(2))
    o = ft.RMSprop([p], state_dtype="bfloat16")
    o.param_groups[0]["centered"] = True  # a change between steps: refused at the step
    p.grad = torch.ones(2)
    with pytest.raises(ValueError, match="centred RMSprop"):
        o.step()
    assert torch.equal(p.detach(), torch.zeros(2)) and not o.state


def test_pickle_and_deepcopy_keep_stepping_like_the_original():
    import pickle
    m = _model(dtype=torch.float64)
    o = ft.AdamW(m.parameters(), lr=0.01, state_dtype=None)
    _train(m, o, 3)
    blob = pickle.dumps((m, o))
    m2, o2 = pickle.loads(blob)
    m3, o3 = copy.deepcopy((m, o))
    for model, opt in ((m, o), (m2, o2), (m3, o3)):
        _train(model, opt, 3, seed=11)
    _assert_models_close(m, m2, 0.0)
    _assert_models_close(m, m3, 0.0)
    assert float(o2.state[m2[0].weight]["step"]) == 6


@pytest.mark.parametrize("name", ["AdamW", "SGD", "RMSprop"])
def test_frozen_then_unfrozen_parameters(name):
    """Parameters that get no gradient for a while (frozen layers) neither
    get state nor stop the prepared short way; when they get gradients, they
    start their own step counts -- as in torch."""
    kw = dict(lr=0.01, momentum=0.9) if name == "RMSprop" else dict(lr=0.01)
    runs = []
    for cls in (getattr(ft, name), _torch_cls(name)):
        m = _model(dtype=torch.float64)
        m[0].requires_grad_(False)
        o = cls(m.parameters(), **kw)
        _train(m, o, 3)
        if cls is getattr(ft, name):  # white box: the short way was taken
            assert o._fastopt_plans
            assert m[0].weight not in o.state
        m[0].requires_grad_(True)
        _train(m, o, 3, seed=5)
        runs.append((m, o))
    _assert_models_close(runs[0][0], runs[1][0], 1e-10)
    if name != "SGD":
        assert float(runs[0][1].state[runs[0][0][0].weight]["step"]) == 3
        assert float(runs[0][1].state[runs[0][0][2].weight]["step"]) == 6
