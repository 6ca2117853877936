"""``fastopt.torch`` with 8-bit optimizer state (``state_dtype="int8"``).

The NumPy-level optimizer with ``convention="torch", state_dtype="int8"``
(tests/test_int8_state.py checks it against the float32-state kernels and
the reference encoder) is the reference here: the torch adapter must give the
same parameters, codes and scales bit for bit, step after step; state dicts
round-trip exactly; state of the other kind is refused on load.
"""
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastopt  # noqa: E402
import fastopt.torch as ft  # noqa: E402
from fastopt import reference as R  # noqa: E402
from fastopt.rule import RULES  # noqa: E402
from optim_db import TORCH_ROWS, fastopt_kwargs  # noqa: E402

pytestmark = pytest.mark.skipif("numba" not in fastopt.available_backends(),
                                reason="8-bit state runs on the numba backend")

#: 2-D, 1-element, and sizes that are and are not multiples of the block (256)
SHAPES = [(5, 3), (1,), (17, 40), (512,), (3, 100)]

#: (row, its torch configuration with the most options): every rule the
#: adapter offers 8-bit state for
CASES = [("sgd_momentum", 1), ("sgd_nesterov", 0), ("adagrad", 1), ("rmsprop", 0),
         ("rmsprop_momentum", 0), ("adam", 2), ("adam_amsgrad", 0), ("adamw", 0),
         ("adamw_amsgrad", 1)]
ROWS = {row.id: row for row in TORCH_ROWS}


def test_cases_cover_every_offered_torch_rule():
    offered = {row.rules["torch"] for row in TORCH_ROWS
               if RULES[row.rules["torch"]].slots and not RULES[row.rules["torch"]].int8_refusal}
    assert offered == {ROWS[rid].rules["torch"] for rid, _ in CASES}


def _kw(kw):
    """Fresh keywords; ``optim_db.Tensor`` values become float64 0-d tensors
    (the float the NumPy-level optimizer gets)."""
    def value(v):
        return torch.tensor(v.value, dtype=torch.float64) if hasattr(v, "value") else v
    return {k: tuple(value(x) for x in v) if isinstance(v, tuple) else value(v)
            for k, v in kw.items()}


def _stream(steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(steps):
        gs = [torch.randn(s, generator=g) for s in SHAPES]
        gs[0][0, 0] = 0.0
        if k == 2:
            gs = [x * 1e3 for x in gs]
        if k == 3:
            gs = [x * 1e-4 for x in gs]
        out.append(gs)
    return out


def _numpy_slots(opts, rule):
    """``{(torch key, i): array}`` of the NumPy-level optimizers' codes and scales."""
    out = {}
    for i, opt in enumerate(opts):
        sd = opt.state_dict()["slots"]
        for slot, key in zip(rule.slots, rule.torch_state):
            out[key, i] = sd[f"{slot}/0"]
            out[key + "_scales", i] = sd[f"{slot}_scales/0"]
    return out


#: the steps at which tensor 1 has no gradient
SKIPPED = (1, 4)


@pytest.mark.parametrize("rid,config", CASES, ids=[f"{r}-{c}" for r, c in CASES])
def test_same_bits_as_the_numpy_level_int8_optimizer(rid, config):
    """Parameters, codes and scales equal fastopt's NumPy-level int8 optimizer
    (``convention="torch"``) after every step.  One NumPy optimizer per
    tensor, so that each keeps its own step count as torch does: tensor 1
    has no gradient at some steps, and is then left exactly as it was."""
    row = ROWS[rid]
    kw = row.torch_configs[config]
    rule = RULES[row.rules["torch"]]
    g = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=g) for s in SHAPES]
    stream = _stream(6)
    nps = [p.numpy().copy() for p in init]
    npos = [row.cls([a], convention="torch", state_dtype="int8", **fastopt_kwargs(kw))
            for a in nps]
    params = [p.clone().requires_grad_() for p in init]
    opt = getattr(ft, row.torch_class)(params, state_dtype="int8", **_kw(kw))
    for k, gs in enumerate(stream):
        skip = k in SKIPPED
        for i, (p, gi) in enumerate(zip(params, gs)):
            p.grad = None if skip and i == 1 else gi.clone()
        before = params[1].detach().clone()
        before_state = {key: v.clone() for key, v in opt.state[params[1]].items()}
        opt.step()
        for i, (npo, gi) in enumerate(zip(npos, gs)):
            if not (skip and i == 1):
                npo.step([gi.numpy()])
        for p, q in zip(params, nps):
            np.testing.assert_array_equal(p.detach().numpy(), q)
        for (key, i), value in _numpy_slots(npos, rule).items():
            got = opt.state[params[i]][key]
            assert got.dtype == {np.int8: torch.int8, np.uint8: torch.uint8,
                                 np.float32: torch.float32}[value.dtype.type], key
            assert got.shape == ((-(-params[i].numel() // 256),) if key.endswith("_scales")
                                 else params[i].shape)
            np.testing.assert_array_equal(got.numpy().reshape(-1), value.reshape(-1),
                                          err_msg=f"{key}[{i}] after step {k}")
        if skip:
            assert torch.equal(params[1].detach(), before)
            for key, v in before_state.items():
                assert torch.equal(opt.state[params[1]][key], v), key
    assert opt._fastopt_plans  # the short way ran after the first step


def test_layouts_and_2_byte_parameters_go_through_float32_copies():
    """A transposed float32 parameter, and bfloat16/float16 ones: the blocks
    are the row-major order's, the update float32, the parameter rounded to
    nearest as it is written back -- the same as a contiguous float32
    parameter holding the same values, rounded after each step."""
    g = torch.Generator().manual_seed(2)
    v = torch.randn(40, 30, generator=g).t()  # (30, 40), column-major in memory
    cases = {"transposed": v, "bf16": v.contiguous().to(torch.bfloat16),
             "fp16": v.contiguous().to(torch.float16)}
    grads = [torch.randn(30, 40, generator=g) for _ in range(4)]
    for name, value in cases.items():
        p = torch.nn.Parameter(value.clone())
        ref = torch.nn.Parameter(value.float().contiguous())
        o = ft.AdamW([p], lr=0.01, weight_decay=0.1, state_dtype="int8")
        r = ft.AdamW([ref], lr=0.01, weight_decay=0.1, state_dtype="int8")
        for gi in grads:
            p.grad = gi.t().contiguous().t() if name == "transposed" else gi.to(p.dtype)
            ref.grad = p.grad.float().contiguous()
            o.step()
            r.step()
            with torch.no_grad():
                ref.copy_(ref.to(p.dtype).float())  # what writing back does
        assert p.dtype == value.dtype and p.stride() == value.stride(), name
        assert torch.equal(p.detach().float(), ref.detach()), name
        for key in ("exp_avg", "exp_avg_scales", "exp_avg_sq", "exp_avg_sq_scales"):
            assert torch.equal(o.state[p][key], r.state[ref][key]), (name, key)


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 300), torch.nn.Tanh(),
                               torch.nn.Linear(300, 3)).to(dtype)


def _train(model, opt, steps, seed=3):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=g).to(next(model.parameters()).dtype)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


def _saved(opt):
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_state_dict_round_trip_and_bit_identical_resume(dtype):
    """(bfloat16 parameters: torch's loader would round the scales to
    bfloat16; they are loaded as saved.)"""
    m1 = _model(dtype)
    o1 = ft.AdamW(m1.parameters(), lr=0.01, amsgrad=True, state_dtype="int8")
    _train(m1, o1, 3)
    sd = _saved(o1)
    st = sd["state"][0]
    assert st["exp_avg"].dtype == torch.int8 and st["exp_avg"].shape == (300, 6)
    assert st["exp_avg_sq"].dtype == torch.uint8 and st["max_exp_avg_sq"].dtype == torch.uint8
    assert st["exp_avg_scales"].dtype == torch.float32 and st["exp_avg_scales"].shape == (8,)
    assert set(st) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "exp_avg_scales",
                       "exp_avg_sq_scales", "max_exp_avg_sq_scales"}
    m2 = _model(dtype)
    m2.load_state_dict(m1.state_dict())
    o2 = ft.AdamW(m2.parameters(), lr=0.01, amsgrad=True, state_dtype="int8")
    o2.load_state_dict(sd)
    for p in m2.parameters():  # loaded as saved, not cast to the parameters' dtype
        assert o2.state[p]["exp_avg"].dtype == torch.int8
    _train(m1, o1, 3, seed=7)
    _train(m2, o2, 3, seed=7)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
        for key, v in o1.state[a].items():
            assert torch.equal(v, o2.state[b][key]), key


@pytest.mark.parametrize("direction", ["float_into_int8", "int8_into_float"])
def test_state_of_the_other_kind_is_refused_and_nothing_changes(direction):
    src_dtype, dst_dtype = ((None, "int8") if direction == "float_into_int8"
                            else ("int8", None))
    m1 = _model()
    o1 = ft.Adam(m1.parameters(), lr=0.01, state_dtype=src_dtype)
    _train(m1, o1, 2)
    m2 = _model()
    o2 = ft.Adam(m2.parameters(), lr=0.02, state_dtype=dst_dtype)
    _train(m2, o2, 1)
    before = _saved(o2)
    with pytest.raises(ValueError, match="state_dtype='int8'"):
        o2.load_state_dict(o1.state_dict())
    after = _saved(o2)
    assert after["param_groups"] == before["param_groups"]
    for i, st in before["state"].items():
        for key, v in st.items():
            assert torch.equal(after["state"][i][key], v)


def test_refusals():
    def param(dtype=torch.float32):
        return torch.nn.Parameter(torch.zeros(3, dtype=dtype))
    with pytest.raises(ValueError, match="centred RMSprop"):
        ft.RMSprop([param()], centered=True, state_dtype="int8")
    with pytest.raises(ValueError, match="measured"):
        ft.Adamax([param()], state_dtype="int8")
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        ft.Adam([param(torch.float64)], state_dtype="int8")
    with pytest.raises(ValueError, match="nearest"):
        ft.Adam([param()], state_dtype="int8", state_rounding="stochastic")
    with pytest.raises(ValueError, match="'int8'"):
        ft.Adam([param()], state_dtype="uint8")
    ft.SGD([param()], lr=0.1, state_dtype="int8")  # no state: nothing to keep
    p = param()
    o = ft.RMSprop([p], state_dtype="int8")
    o.param_groups[0]["centered"] = True  # a change between steps: refused at the step
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match="centred RMSprop"):
        o.step()
    assert torch.equal(p.detach(), torch.zeros(3)) and not o.state


def test_plain_sgd_and_torch_dtype_spelling():
    p = torch.nn.Parameter(torch.ones(3))
    o = ft.SGD([p], lr=0.5, state_dtype=torch.int8)
    assert o.state_dtype == "int8"
    p.grad = torch.ones(3)
    o.step()
    assert torch.equal(p.detach(), torch.full((3,), 0.5)) and not o.state.get(p)


def test_multi_tensor_step_pointer_rows_and_refusals():
    fused = fastopt.MultiTensorStep("adam_torch", "float32", [300, 5], state_dtype="int8")
    assert fused.nrows == 6 and fused.empty_pointers().shape == (6, 2)
    rng = np.random.default_rng(0)
    w = [rng.standard_normal(n).astype(np.float32) for n in (300, 5)]
    g = [rng.standard_normal(n).astype(np.float32) for n in (300, 5)]
    ref = [x.copy() for x in w]
    npo = fastopt.Adam(ref, learning_rate=0.01, convention="torch", state_dtype="int8")
    codes = [[np.zeros(n, np.int8) for n in (300, 5)], [np.zeros(n, np.uint8) for n in (300, 5)]]
    scales = [[np.zeros(-(-n // 256), np.float32) for n in (300, 5)] for _ in range(2)]
    ptrs = fused.empty_pointers()
    ptrs[0] = [x.ctypes.data for x in w]
    ptrs[1] = [x.ctypes.data for x in g]
    for j in range(2):
        ptrs[2 + j] = [x.ctypes.data for x in codes[j]]
        ptrs[4 + j] = [x.ctypes.data for x in scales[j]]
    for _ in range(2):
        fused.step(ptrs, (0.01, 0.9, 0.999, 1e-8), steps=[1.0, 1.0] if _ == 0 else [2.0, 2.0])
        npo.step(g)
    for a, b in zip(w, ref):
        np.testing.assert_array_equal(a, b)
    sd = npo.state_dict()["slots"]
    np.testing.assert_array_equal(codes[1][0], sd["velocity/0"])
    np.testing.assert_array_equal(scales[0][1], sd["momentum_scales/1"])
    with pytest.raises(TypeError, match="float32"):
        fastopt.MultiTensorStep("adam_torch", "float64", [3], state_dtype="int8")
    with pytest.raises(ValueError, match="backend must be 'auto', 'cython' or 'numba'"):
        fastopt.MultiTensorStep("adam_torch", "float32", [3], state_dtype="int8",
                                backend="numpy")
    with pytest.raises(ValueError, match="8 bits"):
        fastopt.MultiTensorStep("rmsprop_centered_torch", "float32", [3], state_dtype="int8")
    with pytest.raises(ValueError, match="state_rounding"):
        fastopt.MultiTensorStep("adam_torch", "float32", [3], state_dtype="int8",
                                state_rounding="stochastic")
