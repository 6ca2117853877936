"""8-bit optimizer state (``state_dtype="int8"``) on the cuda backend.

On Numba's CUDA simulator (``tests/conftest.py`` switches it on), where the
kernel's element formulas and the code's bit manipulation run as NumPy
scalars, the cuda backend's ``step_q8_<rule>`` kernels must give **the
numba backend's 8-bit plan's bits** -- parameters, codes and scales -- which
``tests/test_int8_state.py`` ties to :func:`fastopt.reference.q8_encode`.
Sizes around the block size (1, 255, 256, 257, 600), an all-zero block, a
``None`` gradient, per-tensor factors, NaN and inf; the simulator's helpers
for the code against the reference on every code; optimizers on device
arrays against the same optimizers on host arrays (numba backend), state
dicts and files; bad input rejected with nothing changed.  The launch
geometry is small (4 threads per block, at most 3 blocks), so each thread
walks 64 elements of a block and blocks share a CUDA block; one test runs
the default 256 threads (one element per thread, as on a GPU).

On a GPU (``NUMBA_ENABLE_CUDASIM=0``; never run yet) NVVM may fuse
multiply-adds, so there the comparisons with the CPU allow codes within one
and floats to 1e-5 (:func:`agree`); results across launch geometries stay
bit for bit.  ``tests/test_cuda_ptx.py`` compiles the kernels to PTX.
"""
import sys

import numpy as np
import pytest

import fastopt
from fastopt import reference as R
from fastopt.rule import RULES

from cases import gradient
from cuda_helpers import SIMULATOR, Foreign, cb, cuda, dev, host, needs_cuda, step_launches

pytestmark = [needs_cuda,
              pytest.mark.skipif("numba" not in fastopt.available_backends(),
                                 reason="compared with the numba backend's 8-bit plan")]
#: the helpers of the simulator (plain Python; on a GPU they are intrinsics)
simulator_only = pytest.mark.skipif(not SIMULATOR, reason="the simulator's helpers")

if "numba" in fastopt.available_backends() and cb is not None:
    from fastopt.backends import _cuda_kernels as K
    from fastopt.backends import _q8
    from fastopt.backends import numba_int8

#: every family that keeps 8-bit state, signed and unsigned codes, one to
#: three slots, both conventions
KERNEL_RULES = ["adam", "adam_amsgrad_torch", "rmsprop", "rmsprop_momentum_torch",
                "sgd_momentum", "sgd_nesterov_torch", "adagrad"]
SIZES = [1, 255, 256, 257, 600]


@pytest.fixture(autouse=True)
def geometry(monkeypatch):
    monkeypatch.setattr(cb, "CHUNK", 64)
    monkeypatch.setattr(cb, "MAX_BLOCKS", 3)
    monkeypatch.setattr(cb, "THREADS_PER_BLOCK", 4)
    # the simulator's threads hand the GIL over at once (see tests/test_cuda.py)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(5e-6)
    yield
    sys.setswitchinterval(interval)


def bits(a):
    a = np.asarray(a)
    return a.view(np.uint32) if a.dtype == np.float32 else a


def same(a, b):
    """Bit for bit (NaN payloads and signs included)."""
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(bits(a), bits(b))


def agree(gpu, cpu):
    """The device's result and the CPU's: bit for bit on the simulator; on a
    GPU, whose fused multiply-adds remove roundings, codes within one and
    floats to 1e-5 (NaN where the CPU has NaN)."""
    if SIMULATOR:
        return same(gpu, cpu)
    if gpu.shape != cpu.shape or gpu.dtype != cpu.dtype:
        return False
    if cpu.dtype != np.float32:
        return bool(np.all(np.abs(gpu.astype(np.int16) - cpu.astype(np.int16)) <= 1))
    return bool(np.allclose(gpu, cpu, rtol=1e-5, atol=1e-6, equal_nan=True))


# ---------------------------------------------------------------------------
# The simulator's helpers for the code

def kernel_encode(x, signed):
    """A block's scale and codes as the kernel computes them, with the
    simulator's helpers: the largest bits of |x|, the scale, 1/scale, codes."""
    like = np.empty(0, np.int8 if signed else np.uint8)
    scale = K._scale_of(max(K._abs_bits(v) for v in x))
    with np.errstate(all="ignore"):
        inv = np.float32(0.0) if scale == 0 else np.float32(1.0) / scale
        codes = np.array([K._q8_encode(v, inv, like) for v in x], like.dtype)
    return codes, np.array([scale], np.float32)


@simulator_only
@pytest.mark.parametrize("signed", [True, False])
def test_simulated_code_helpers_match_the_reference(signed):
    """Every code decodes as the reference decodes it (three scales, NaN
    included); blocks of values of every exponent of the range and their
    rounding boundaries, at three magnitudes, and blocks with zero, a
    subnormal largest value, NaN or inf encode as the reference encodes
    them (codes and scale)."""
    codes = np.arange(-128, 128).astype(np.int8) if signed else np.arange(256).astype(np.uint8)
    for scale in (np.float32(3.5), np.float32(0.0), np.float32(np.nan)):
        with np.errstate(all="ignore"):
            got = np.array([K._q8_decode(c, scale) for c in codes], np.float32)
            want = R.q8_decode(codes, np.array([scale], np.float32), block=codes.size)
        assert same(got, want)
    exps = np.arange(-36, 1)
    mant = np.array([0, 1, (1 << 19) - 1, 1 << 19, (1 << 19) + 1, 3 << 20, (1 << 23) - 1])
    sweep = ((exps[:, None] + 127) << 23 | mant[None, :]).reshape(-1).astype(np.uint32)
    sweep = np.concatenate([sweep.view(np.float32), [0.0]]).astype(np.float32)
    blocks = [sweep * np.float32(f) for f in (1.0, 2.0 ** -20, 3.7e5)]
    blocks += [np.zeros(5, np.float32), np.array([0.0, 2.0 ** -140, 2.0 ** -149], np.float32),
               np.array([1.0, np.nan, 0.5], np.float32), np.array([0.25, np.inf], np.float32)]
    for x in blocks:
        if signed:
            x = np.concatenate([x, -x[::2]])
        with np.errstate(all="ignore"):
            want = R.q8_encode(x, signed, block=x.size)
        got = kernel_encode(x, signed)
        assert np.array_equal(got[0], want[0]) and same(got[1], want[1]), x[:4]


# ---------------------------------------------------------------------------
# The step kernel against the numba backend's 8-bit plan

def initial_state(rng, rule, sizes, zero_block=True):
    """Parameters and per slot, per tensor, host ``(codes, scales)``: random
    values of a few magnitudes, encoded; the second block of the last tensor
    all zero (``zero_block``)."""
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    slots = []
    for signed in _q8.signed_slots(rule):
        row = []
        for n in sizes:
            x = rng.standard_normal(n) * 10.0 ** rng.uniform(-6, 0, n)
            if not signed:
                x = np.abs(x)
            if zero_block and n > 512:
                x[256:512] = 0.0
            row.append(R.q8_encode(x.astype(np.float32), signed))
        slots.append(row)
    return params, slots


def to_device(params, slots):
    return ([dev(p) for p in params], [[(dev(c), dev(s)) for c, s in row] for row in slots])


def assert_same_state(params, slots, d_params, d_slots):
    for t, (p, d) in enumerate(zip(params, d_params)):
        assert agree(host(d), p), f"param {t}"
    for j, (row, drow) in enumerate(zip(slots, d_slots)):
        for t, ((c, s), (dc, ds)) in enumerate(zip(row, drow)):
            assert agree(host(dc), c), f"slot {j} tensor {t}: codes"
            assert agree(host(ds), s), f"slot {j} tensor {t}: scales"


def step_both(rule, hplan, dplan, grads, pt, scalars, clipvalue):
    hplan.step(grads, pt, scalars, clipvalue)
    dplan.step([None if g is None else dev(g) for g in grads], pt, scalars, clipvalue)


@pytest.mark.parametrize("rule_name", KERNEL_RULES)
def test_step_is_the_numba_plans_bit_for_bit(rule_name):
    """Three steps over five tensors: per-tensor gradient scales, decay
    factors and L2, a clip value, a None gradient (that tensor untouched),
    and a block that stays all zero (scale 0, the ``1/scale = 0`` path)."""
    from optim_db import scalars_at
    rule = RULES[rule_name]
    rng = np.random.default_rng(len(rule_name))
    params, slots = initial_state(rng, rule, SIZES)
    d_params, d_slots = to_device(params, slots)
    hplan = numba_int8.Plan(rule, params, slots)
    dplan = cb.Int8Plan(rule, d_params, d_slots)
    for step in range(3):
        before = [host(d_params[2])] + [host(a) for row in d_slots for a in row[2]]
        grads = [gradient(rng, (n,), np.float32, step) for n in SIZES]
        grads[-1][256:512] = 0.0
        grads[2] = None if step == 1 else grads[2]
        pt = np.array([[1.0, 0.7, 1.0, 0.5, 1.0],     # gradient scale
                       [1.0, 1.0, 0.999, 1.0, 0.99],  # decoupled decay
                       [0.0, 0.01 * step, 0.0, 0.0, 0.0]])  # L2 (not on the zero block)
        step_both(rule, hplan, dplan, grads, pt, scalars_at(rule, step),
                  2.0 if step == 2 else np.inf)
        assert_same_state(params, slots, d_params, d_slots)
        if step == 1:  # its gradient was None: its parameter, codes and scales unchanged
            after = [host(d_params[2])] + [host(a) for row in d_slots for a in row[2]]
            assert all(same(a, b) for a, b in zip(before, after))
    for row in slots:  # the zero block stayed zero: its scale is 0
        assert row[-1][1][1] == 0 and not row[-1][0][256:512].any()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the simulator's NumPy scalars warn
@pytest.mark.parametrize("rule_name", ["adam", "adagrad", "sgd_momentum"])
def test_nan_and_inf_give_their_blocks_a_nan_scale_as_on_the_cpu(rule_name):
    from optim_db import scalars_at
    rule = RULES[rule_name]
    rng = np.random.default_rng(3)
    sizes = [257, 600]
    params, slots = initial_state(rng, rule, sizes, zero_block=False)
    d_params, d_slots = to_device(params, slots)
    hplan = numba_int8.Plan(rule, params, slots)
    dplan = cb.Int8Plan(rule, d_params, d_slots)
    grads = [gradient(rng, (n,), np.float32, 0) for n in sizes]
    grads[0][3] = np.nan       # block 0 of tensor 0
    grads[1][300] = np.inf     # block 1 of tensor 1
    grads[1][600 - 1] = -np.inf  # block 2 of tensor 1
    pt = np.ones((3, 2))
    pt[2] = 0.0
    step_both(rule, hplan, dplan, grads, pt, scalars_at(rule, 0), np.inf)
    assert_same_state(params, slots, d_params, d_slots)
    for row in slots:
        assert np.isnan(row[0][1][0]) and np.isfinite(row[0][1][1])
        assert np.isfinite(row[1][1][0]) and np.isnan(row[1][1][1:]).all()


def test_results_do_not_depend_on_the_launch_geometry(monkeypatch):
    """1, 4 and 256 threads per block (256: one element per thread, the
    default and a GPU's geometry), one block or several: the same bits."""
    from optim_db import scalars_at
    rule = RULES["adam_amsgrad_torch"]
    sizes = [300, 5]
    results = []
    for threads, blocks in ((4, 3), (1, 2), (256, 1)):
        monkeypatch.setattr(cb, "THREADS_PER_BLOCK", threads)
        monkeypatch.setattr(cb, "MAX_BLOCKS", blocks)
        rng = np.random.default_rng(5)
        params, slots = initial_state(rng, rule, sizes)
        d_params, d_slots = to_device(params, slots)
        plan = cb.Int8Plan(rule, d_params, d_slots)
        pt = np.ones((3, 2))
        pt[2] = 0.0
        for step in range(2):
            g = [dev(gradient(rng, (n,), np.float32, step)) for n in sizes]
            plan.step(g, pt, scalars_at(rule, step))
        results.append([host(a) for a in d_params]
                       + [host(a) for row in d_slots for pair in row for a in pair])
    for other in results[1:]:
        assert all(same(a, b) for a, b in zip(results[0], other))


@pytest.mark.parametrize("backend", ["auto", "cuda"])
def test_one_launch_per_step(monkeypatch, backend):
    launches = step_launches(monkeypatch)
    opt = fastopt.Adam([dev(np.ones(300, np.float32)), dev(np.ones(7, np.float32))],
                       state_dtype="int8", backend=backend)
    assert opt.backends == {"float32": "cuda"}
    launches.clear()
    opt.step([dev(np.ones(300, np.float32)), dev(np.ones(7, np.float32))])
    assert launches == [K.q8_kernel(RULES["adam"])]


def test_plan_rejects_what_it_cannot_do():
    p = [dev(np.zeros(300, np.float32))]
    i8 = (dev(np.zeros(300, np.int8)), dev(np.zeros(2, np.float32)))
    u8 = (dev(np.zeros(300, np.uint8)), dev(np.zeros(2, np.float32)))
    with pytest.raises(ValueError, match="cannot keep its state in 8 bits"):
        cb.Int8Plan(RULES["adamax"], p, [[i8], [u8]])
    with pytest.raises(TypeError, match="needs float32 parameters"):
        cb.Int8Plan(RULES["adam"], [dev(np.zeros(300))], [[i8], [u8]])
    with pytest.raises(TypeError, match="codes must be uint8"):
        cb.Int8Plan(RULES["adam"], p, [[i8], [i8]])
    with pytest.raises(TypeError, match="scales must be float32 arrays of 2"):
        cb.Int8Plan(RULES["adam"], p, [[i8], [(u8[0], dev(np.zeros(1, np.float32)))]])
    with pytest.raises(ValueError, match="rounding must be one of"):
        cb.Int8Plan(RULES["adam"], p, [[i8], [u8]], rounding="stochastic")
    assert cb.Int8Plan.refusal(RULES["rmsprop_centered"]) and cb.Int8Plan.fuses_ema is False
    plan = cb.Int8Plan(RULES["adam"], [Foreign(p[0])], [[i8], [(Foreign(u8[0]), u8[1])]])
    with pytest.raises(ValueError, match="moving average is a pass of its own"):
        plan.attach_ema([dev(np.zeros(300, np.float32))])


# ---------------------------------------------------------------------------
# Optimizers on device arrays

SHAPES = [(3, 4), (300,), (), (0,), (2, 130)]
CASES = {
    "adam+ema+decay": (fastopt.Adam, dict(learning_rate=0.01, weight_decay=0.01,
                                          use_ema=True, ema_momentum=0.9)),
    "adamw-amsgrad-torch+clipvalue": (fastopt.AdamW, dict(learning_rate=0.01, amsgrad=True,
                                                           clipvalue=0.5,
                                                           convention="torch")),
    "rmsprop-momentum": (fastopt.RMSprop, dict(learning_rate=0.01, momentum=0.9)),
    "sgd-nesterov-torch+accumulation": (fastopt.SGD, dict(learning_rate=0.05, momentum=0.9,
                                                          nesterov=True, convention="torch",
                                                          gradient_accumulation_steps=2)),
    "adagrad": (fastopt.Adagrad, dict(learning_rate=0.1, initial_accumulator_value=0.1)),
}


def make_pair(case, rng):
    cls, kw = CASES[case]
    init = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    gpu = cls([dev(p) for p in init], state_dtype="int8", **kw)
    cpu = cls([p.copy() for p in init], state_dtype="int8", backend="numba", **kw)
    return gpu, cpu


def grads_at(rng, step, none=True):
    """Gradients of one step (one None every third step, where ``none``)."""
    g = [gradient(rng, s, np.float32, step) for s in SHAPES]
    if none and step % 3 == 1:
        g[1] = None
    return g


def assert_twins(gpu, cpu):
    for d, c in zip(gpu._params, cpu._params):
        assert agree(host(d), c)
    a, b = gpu.state_dict()["slots"], cpu.state_dict()["slots"]
    assert a.keys() == b.keys()
    for key in a:
        assert isinstance(a[key], np.ndarray) and agree(a[key], b[key]), key
    assert gpu.iterations == cpu.iterations


@pytest.mark.parametrize("case", list(CASES))
def test_optimizer_on_device_arrays_is_the_host_optimizer(case):
    rng = np.random.default_rng(9)
    gpu, cpu = make_pair(case, rng)
    assert gpu.backends == {"float32": "cuda"}
    assert isinstance(gpu._groups[0].plan, cb.Int8Plan)
    assert "momentum_scales/1" in gpu.state_dict()["slots"] or case == "adagrad"
    for step in range(4):
        g = grads_at(rng, step, none=not gpu.gradient_accumulation_steps)
        gpu.step([None if x is None else dev(x) for x in g])
        cpu.step(g)
    assert_twins(gpu, cpu)
    if gpu.use_ema:
        for a, b in zip(gpu.ema_params, cpu.ema_params):
            assert agree(host(a), b)


def test_clipping_by_norm_clips_as_on_the_host():
    """Norm clipping sums squares on the device, in another order than the
    CPU (tests/test_cuda.py), so the clip factors may differ in their last
    float64 bit: parameters to float32 rounding, codes within one."""
    rng = np.random.default_rng(14)
    init = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    kw = dict(learning_rate=0.01, clipnorm=0.1)
    gpu = fastopt.Adam([dev(p) for p in init], state_dtype="int8", **kw)
    cpu = fastopt.Adam([p.copy() for p in init], state_dtype="int8", backend="numba", **kw)
    for step in range(3):
        g = [np.array(100 * x, np.float32) for x in grads_at(rng, step, none=False)]
        gpu.step([dev(x) for x in g])
        cpu.step(g)
    for d, c in zip(gpu._params, cpu._params):
        np.testing.assert_allclose(host(d), c, rtol=1e-6, atol=1e-7)
    a, b = gpu.state_dict()["slots"], cpu.state_dict()["slots"]
    for key in a:
        if a[key].dtype == np.float32:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5)
        else:
            assert np.all(np.abs(a[key].astype(np.int16) - b[key].astype(np.int16)) <= 1), key
    # clipped: every |m| <= 0.1 (the clipped gradients' norm), not ~100
    m = R.q8_decode(a["momentum/4"], a["momentum_scales/4"])
    assert 0 < np.abs(m).max() <= 0.1


def test_state_dict_and_files_round_trip(tmp_path):
    """Codes and scales come to the host as NumPy arrays; load_state_dict and
    load_state copy them back; resuming is bit-identical, on the device or
    on the host."""
    rng = np.random.default_rng(12)
    grads = [grads_at(rng, s) for s in range(5)]
    cls, kw = CASES["adam+ema+decay"]
    init = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    first = cls([dev(p) for p in init], state_dtype="int8", **kw)
    straight = cls([dev(p) for p in init], state_dtype="int8", **kw)
    for g in grads:
        straight.step([None if x is None else dev(x) for x in g])
    for g in grads[:3]:
        first.step([None if x is None else dev(x) for x in g])
    state = first.state_dict()
    assert {k: a.dtype for k, a in state["slots"].items() if k.endswith("/1")} == {
        "momentum/1": np.dtype(np.int8), "velocity/1": np.dtype(np.uint8),
        "momentum_scales/1": np.dtype(np.float32), "velocity_scales/1": np.dtype(np.float32),
        "average/1": np.dtype(np.float32)}
    assert state["slots"]["momentum_scales/1"].shape == (2,)
    fastopt.save_state(first, tmp_path / "opt.npz")
    now = [host(p) for p in first._params]
    resumed = [cls([dev(p) for p in now], state_dtype="int8", **kw) for _ in range(2)]
    resumed[0].load_state_dict(state)
    fastopt.load_state(resumed[1], tmp_path / "opt.npz")
    on_host = cls([p.copy() for p in now], state_dtype="int8", backend="numba", **kw)
    on_host.load_state_dict(state)
    for g in grads[3:]:
        on_host.step(g)
        for opt in resumed:
            opt.step([None if x is None else dev(x) for x in g])
    for opt in resumed + [on_host]:
        assert opt.iterations == 5
        params = [host(p) if not isinstance(p, np.ndarray) else p for p in opt._params]
        assert all(agree(host(b), a) for a, b in zip(params, straight._params))
        want = straight.state_dict()["slots"]
        got = opt.state_dict()["slots"]
        assert got.keys() == want.keys() and all(agree(want[k], got[k]) for k in want)


def snapshot(opt):
    return [host(p) for p in opt._params], opt.state_dict()["slots"], opt.iterations


def assert_unchanged(before, after):
    assert all(same(a, b) for a, b in zip(before[0], after[0]))
    assert before[1].keys() == after[1].keys()
    assert all(same(before[1][k], after[1][k]) for k in before[1])
    assert before[2] == after[2]


def test_bad_gradients_and_state_change_nothing():
    opt = fastopt.Adam([dev(np.ones(300, np.float32)), dev(np.ones(3, np.float32))],
                       learning_rate=0.1, state_dtype="int8", use_ema=True)
    good = [dev(np.full(300, 0.5, np.float32)), dev(np.full(3, 0.5, np.float32))]
    opt.step(good)
    before = snapshot(opt)
    for bad, exc in (([good[0], dev(np.ones(4, np.float32))], ValueError),
                     ([good[0], dev(np.ones(3))], TypeError),
                     ([good[0]], ValueError)):
        with pytest.raises(exc):
            opt.step(bad)
        assert_unchanged(before, snapshot(opt))
    state = opt.state_dict()
    for key, value in (("velocity_scales/0", np.zeros(3, np.float32)),
                       ("momentum/0", np.zeros(300, np.uint8))):
        with pytest.raises(ValueError, match=f"slot '{key}'"):
            opt.load_state_dict({**state, "slots": {**state["slots"], key: value}})
        assert_unchanged(before, snapshot(opt))


@pytest.mark.parametrize("kw,match", [
    (dict(params64=True), "needs float32 parameters"),
    (dict(cls=fastopt.Adamax), "not offered for the 'adamax' kernel"),
    (dict(state_rounding="stochastic"), r"state_rounding must be one of \('nearest',\)"),
    (dict(backend="numba"), "CUDA device arrays, which backend 'numba' cannot update"),
])
def test_bad_int8_options_on_device_arrays_are_rejected(kw, match):
    kw = dict(kw)
    cls = kw.pop("cls", fastopt.Adam)
    dtype = np.float64 if kw.pop("params64", False) else np.float32
    d = dev(np.ones(3, dtype))
    with pytest.raises(ValueError, match=match):
        cls([d], state_dtype="int8", **kw)
    assert same(host(d), np.ones(3, dtype))
