"""Optimizer state kept in bfloat16 (``state_dtype="bfloat16"``).

Four layers, each against something independent:

1. **Rounding.**  The kernels' bfloat16 encoders against
   :func:`fastopt.reference.bf16_round`, whose round-to-nearest-even is
   arithmetic on float64 (``frexp``/``rint``), not bit tricks: hand-computed
   cases (ties to even, subnormals, overflow, infinities, NaN, signed zeros)
   and every one of the 65536 upper halves with the interesting lower halves.
   Stochastic rounding: bit-exact against the reference for given random
   numbers, and exactly unbiased over all 2**16 of them.
2. **Kernels.**  Each step of every rule that takes bfloat16 state against
   :func:`fastopt.reference.apply_rule_bf16` (float64 arithmetic, then the
   same rounding), from the same inputs.  The parameter must agree to float32
   rounding (the tolerance of ``tests/test_kernels.py``).  A slot is rounded
   to bfloat16 from a float32 value in the kernel and from the exact value
   in the reference, so the two may differ by that float32 error bound plus
   one bfloat16 spacing; and at most 1% of the slot elements may differ at
   all.  Measured: 0.001% to 0.005% for most rules; 0.38% for Keras RMSprop
   with round-to-nearest, whose ``v <- 0.9 v + 0.1 g^2`` lands exactly
   halfway between two bfloat16 values for one significand in ten when
   ``g`` is (nearly) zero -- then a tiny ``g^2`` decides the rounding in
   float64 but vanishes in float32.
3. **Optimizers.**  A bfloat16-state optimizer must do *exactly* what the
   float32-state optimizer does from the decoded state, followed by the
   rounding: bit-equal parameters and slots, step after step, for every
   optimizer with clipping, weight decay, parameter groups, ``None``
   gradients, gradient accumulation and EMA, under both conventions.
4. **State and errors.**  Bit-identical resume from files, thread
   independence, clear errors.  Convergence on the quadratic and Rosenbrock
   problems is in ``tests/test_convergence.py``.
"""
import json

import numpy as np
import pytest

import fastopt
from fastopt import reference as R
from fastopt.rule import RULES

from cases import gradient
from optim_db import DB, KERNEL_SCALARS, step_inputs, with_conventions
from test_kernels import assert_close

pytestmark = pytest.mark.skipif("numba" not in fastopt.available_backends(),
                                reason="bfloat16 state runs on the numba backend")
if "numba" in fastopt.available_backends():
    from fastopt.backends import numba_bf16 as bf16
    from fastopt.backends import numba_backend

ROUNDINGS = ["nearest", "stochastic"]  # bf16.ROUNDINGS, also where numba is missing
BF16_RULES = [name for name, r in RULES.items() if r.slots and not r.bf16_refusal]


def f32(bits):
    """float32 values from uint32 bit patterns."""
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


def kernel_round(x, rounding="nearest", random_bits=None):
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(x.shape, np.uint16)
    if rounding == "nearest":
        bf16._encode_nearest(x, out)
    else:
        bf16._encode_stochastic(x, np.ascontiguousarray(random_bits, dtype=np.uint32), out)
    return out


def bf16_steps(a, b):
    """How many bfloat16 values apart two bit patterns are (+0 and -0 alike)."""
    def ordered(u):
        u = np.asarray(u, dtype=np.int64)
        return np.where(u & 0x8000, -(u & 0x7FFF), u)
    return np.abs(ordered(a) - ordered(b))


# ---------------------------------------------------------------------------
# 1. Rounding

NEAREST_CASES = [  # (float32 bits, bfloat16 bits, what)
    (0x00000000, 0x0000, "+0"),
    (0x80000000, 0x8000, "-0"),
    (0x3F800000, 0x3F80, "1"),
    (0x3F808000, 0x3F80, "1 + 2^-8: tie, to even (down)"),
    (0x3F818000, 0x3F82, "1 + 3*2^-8: tie, to even (up)"),
    (0x3F808001, 0x3F81, "just above a tie"),
    (0x3F807FFF, 0x3F80, "just below a tie"),
    (0xBF808000, 0xBF80, "negative tie, to even"),
    (0xBF818000, 0xBF82, "negative tie, to even (away)"),
    (0x3DCCCCCD, 0x3DCD, "0.1"),
    (0x7F7F0000, 0x7F7F, "largest bfloat16"),
    (0x7F7F7FFF, 0x7F7F, "below the overflow threshold"),
    (0x7F7F8000, 0x7F80, "tie between the largest and 2^128: to even, inf"),
    (0x7F7FFFFF, 0x7F80, "largest float32 overflows"),
    (0xFF7FFFFF, 0xFF80, "most negative float32 overflows"),
    (0x7F800000, 0x7F80, "+inf"),
    (0xFF800000, 0xFF80, "-inf"),
    (0x00800000, 0x0080, "smallest normal"),
    (0x007FFFFF, 0x0080, "largest subnormal rounds up to the smallest normal"),
    (0x00010000, 0x0001, "smallest bfloat16 subnormal, 2^-133"),
    (0x00008000, 0x0000, "2^-134: tie, to even (zero)"),
    (0x00018000, 0x0002, "3*2^-134: tie, to even (up)"),
    (0x00000001, 0x0000, "smallest float32 subnormal"),
    (0x80000001, 0x8000, "tiny negative: -0"),
    (0x00008001, 0x0001, "just above half the smallest subnormal"),
]
NAN_CASES = [  # NaN: sign kept, made quiet, payload's top bits kept
    (0x7FC00000, 0x7FC0), (0xFFC00000, 0xFFC0), (0x7F800001, 0x7FC0),
    (0x7FFFFFFF, 0x7FFF), (0xFFFFFFFF, 0xFFFF), (0x7F81FFFF, 0x7FC1),
]


@pytest.mark.parametrize("rounding", ["reference", "kernel"])
def test_round_to_nearest_even_exact_cases(rounding):
    bits = np.array([c[0] for c in NEAREST_CASES + NAN_CASES], np.uint32)
    with np.errstate(invalid="ignore"):
        got = R.bf16_round(f32(bits)) if rounding == "reference" else kernel_round(f32(bits))
    for (b, w, *what), g in zip(NEAREST_CASES + NAN_CASES, got):
        assert g == w, f"{b:#010x} ({what[0] if what else 'NaN'}): got {g:#06x}, want {w:#06x}"


def test_round_to_nearest_even_from_float64_is_one_rounding():
    # the reference rounds the exact value once; a float64 just above a tie
    # rounds up even though its float32 rounding would be the tie itself
    x = np.array([1 + 2 ** -8 + 2 ** -40, 1 + 2 ** -8, -(1 + 2 ** -8 + 2 ** -40), 3.0e38 * 10,
                  2 ** -134 + 2 ** -160, -0.0])
    assert list(R.bf16_round(x)) == [0x3F81, 0x3F80, 0xBF81, 0x7F80, 0x0001, 0x8000]


def _all_upper_halves():
    rng = np.random.default_rng(0)
    upper = np.arange(1 << 16, dtype=np.uint32) << 16
    lower = np.array([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF], np.uint32)
    bits = (upper[:, None] | lower[None, :]).ravel()
    return np.concatenate([bits, rng.integers(0, 1 << 32, 200_000, dtype=np.uint64)
                           .astype(np.uint32)])


def test_kernel_rounds_every_upper_half_like_the_reference():
    x = f32(_all_upper_halves())
    with np.errstate(invalid="ignore"):
        want = R.bf16_round(x)
    got = kernel_round(x)
    assert np.array_equal(got, want)
    nan = np.isnan(x)
    assert np.isnan(R.bf16_to_float(got[nan])).all()
    assert not np.isnan(R.bf16_to_float(got[~nan])).any()


def test_rounding_agrees_with_torch_bfloat16():
    """A third implementation, where PyTorch is installed (NaN payloads aside)."""
    torch = pytest.importorskip("torch")
    x = f32(_all_upper_halves())
    t = torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    finite = ~np.isnan(x)
    assert np.array_equal(kernel_round(x)[finite], t[finite])


def test_decode_is_exact_for_every_pattern():
    u = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    out = np.empty(u.shape, np.float32)
    bf16._decode(u, out)
    assert np.array_equal(out.view(np.uint32), u.astype(np.uint32) << 16)
    assert np.array_equal(R.bf16_to_float(u).view(np.uint32), u.astype(np.uint32) << 16)
    values = R.bf16_to_float(u)
    finite = ~np.isnan(values)
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 1 << 32, u.size, dtype=np.uint64).astype(np.uint32)
    # a value already in bfloat16 is kept by both roundings, whatever the random bits
    assert np.array_equal(kernel_round(values)[finite], u[finite])
    assert np.array_equal(kernel_round(values, "stochastic", bits)[finite], u[finite])


def test_stochastic_rounding_matches_the_reference_bit_for_bit():
    rng = np.random.default_rng(2)
    x = f32(_all_upper_halves())
    bits = rng.integers(0, 1 << 32, x.size, dtype=np.uint64)
    with np.errstate(invalid="ignore"):
        want = R.bf16_round(x, "stochastic", bits)
    assert np.array_equal(kernel_round(x, "stochastic", bits), want)
    nan = np.isnan(x)
    assert np.array_equal(want[nan], R.bf16_round(x[nan]))  # NaN: as round-to-nearest


@pytest.mark.parametrize("value", [1 + 0.3 * 2 ** -7, -(1 + 0.3 * 2 ** -7), 2 ** -130 * 1.7,
                                   0.1, -3.3e38, 1 + 2 ** -23, 7e-45])
def test_stochastic_rounding_is_unbiased_over_all_random_numbers(value):
    x = np.full(1 << 16, value, np.float32)
    r = np.arange(1 << 16, dtype=np.uint32)
    out = R.bf16_to_float(kernel_round(x, "stochastic", r)).astype(np.float64)
    # the two neighbours, found by arithmetic: |x| truncated to 8 significant bits
    xv = float(x[0])
    frac, exp = np.frexp(abs(xv))
    q = 2.0 ** (max(exp, -125) - 8)
    lo = np.floor(abs(xv) / q) * q
    hi = lo + q
    assert set(np.abs(out)) <= {lo, hi}
    ups = int(np.sum(np.abs(out) == hi))
    assert ups == round((abs(xv) - lo) / q * 2 ** 16)  # probability exactly d / 2^16
    assert np.mean(out) == pytest.approx(xv, rel=1e-12, abs=1e-300)  # exactly unbiased


def test_stochastic_rounding_overflow_and_infinities():
    big = f32([0x7F7FFFFF] * 4 + [0x7F800000, 0xFF800000])
    r = np.array([0, 1, 0xFFFF, 0x8000, 0xFFFF, 0xFFFF], np.uint32)
    assert list(kernel_round(big, "stochastic", r)) == [0x7F7F, 0x7F80, 0x7F80, 0x7F80,
                                                        0x7F80, 0xFF80]


def test_random_numbers_are_uniform_and_fresh():
    a = R.bf16_random_bits(0, 0, 0, 200_000) & 0xFFFF
    counts = np.bincount((a >> 12).astype(np.int64), minlength=16)
    chi2 = float(np.sum((counts - a.size / 16) ** 2 / (a.size / 16)))
    assert chi2 < 45  # 15 degrees of freedom: p < 1e-4 above 45
    b = R.bf16_random_bits(1, 0, 0, 200_000) & 0xFFFF     # next update
    c = R.bf16_random_bits(0, 0, 1, 200_000) & 0xFFFF     # next tensor
    d = R.bf16_random_bits(0, 1, 0, 200_000)              # slot 1: the high halves
    for other in (b, c, d):
        assert np.mean(a == other) < 0.001
        assert abs(np.corrcoef(a.astype(float), other.astype(float))[0, 1]) < 0.01
    assert np.array_equal(R.bf16_random_bits(0, 2, 0, 100), R.bf16_random_bits(0, 1, 0, 100))


# ---------------------------------------------------------------------------
# 2. Kernels against the float64 reference

def make_plan(rule, params, rounding, tensor_ids=None, init=0.0):
    slots = [[np.full(p.size, R.bf16_round(0.1 if s == "accumulator" else init), np.uint16)
              for p in params] for s in rule.slots]
    return bf16.Plan(rule, params, slots, rounding, tensor_ids), slots


def reference_step(rule, params, grads, slots, scalars, extras, rounding, updates, ids):
    out = []
    for t, (p, g) in enumerate(zip(params, grads)):
        if g is None:
            out.append([p] + [s[t] for s in slots])
            continue
        bits = [R.bf16_random_bits(updates, k, ids[t], p.size) for k in range(len(slots))] \
            if rounding == "stochastic" else None
        out.append(list(R.apply_rule_bf16(
            rule.name, p, g, [s[t] for s in slots], dict(zip(rule.scalars, scalars)),
            rounding=rounding, random_bits=bits, **extras)))
    return out


def check_slots(label, fast, ref, old, counts):
    """The kernel rounds a float32 value, the reference the exact one: they
    may differ by the float32 error bound of tests/test_kernels.py plus one
    bfloat16 spacing.  Counts the elements that are not bit-equal."""
    f, r, o = (R.bf16_to_float(a).astype(np.float64) for a in (fast, ref, old))
    bound = 16 * 2.0 ** -24 * (np.abs(o) + np.abs(r) + np.max(np.abs(r - o), initial=0))
    spacing = np.maximum(np.ldexp(1.0, np.frexp(np.maximum(np.abs(f), np.abs(r)))[1] - 8),
                         2.0 ** -133)
    bad = ~(np.abs(f - r) <= bound + spacing)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AssertionError(f"{label}: {bad.sum()} elements off, first at [{i}]: kernel "
                             f"{f[i]!r}, reference {r[i]!r}, old {o[i]!r}")
    counts[0] += int(np.count_nonzero(fast != ref))
    counts[1] += fast.size


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("rule_name", BF16_RULES)
def test_kernel_matches_reference_every_step(rule_name, rounding):
    rule = RULES[rule_name]
    rng = np.random.default_rng([len(rule_name), len(rounding)])
    sizes = [1, 7, 1023, 20_000, 1025]
    ids = [4, 0, 9, 2, 7]
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    plan, slots = make_plan(rule, params, rounding, ids)
    counts = [0, 0]
    for step in range(10):
        scalars, _, extras = step_inputs(rng, rule, 1, np.float32, step)
        grads = [gradient(rng, (n,), np.float32, step) for n in sizes]
        if step == 4:
            grads[1] = None  # skipped: its slots and parameter stay
        old = [[p.copy()] + [s[t].copy() for s in slots] for t, p in enumerate(params)]
        ref = reference_step(rule, [o[0] for o in old], grads, [[o[1 + k] for o in old]
                             for k in range(len(slots))], scalars, extras, rounding, step, ids)
        plan.updates = step
        pt = np.array([[extras.get("gscale", 1.0)], [extras.get("keep", 1.0)],
                       [extras.get("l2", 0.0)]]).repeat(len(sizes), axis=1)
        if rule.two_phase:  # the first pass over the bfloat16 slots decides the update scales
            pt = np.vstack([pt, np.ones(len(sizes))])
            sums = plan.reduce(grads, pt, scalars, extras.get("clipvalue", np.inf))
            pt[3] = rule.update_scales(sums, scalars)
        plan.step(grads, pt, scalars, extras.get("clipvalue", np.inf))
        if step == 4:  # the skipped tensor is untouched
            assert all(np.array_equal(a, b) for a, b in zip([params[1]] + [s[1] for s in slots],
                                                           old[1]))
        for t in range(len(sizes)):
            label = f"{rule_name} {rounding} step {step} tensor {t}"
            assert_close(label + " param", params[t], ref[t][0], old[t][0], np.float32)
            for k, name in enumerate(rule.slots):
                check_slots(f"{label} {name}", slots[k][t], ref[t][1 + k], old[t][1 + k],
                            counts)
            # the same inputs for the next step
            params[t][...] = ref[t][0]
            for k in range(len(slots)):
                slots[k][t][...] = ref[t][1 + k]
    assert counts[0] <= 0.01 * counts[1], f"{counts[0]} of {counts[1]} slot elements differ"


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_results_do_not_depend_on_threads_or_the_parallel_threshold(rounding):
    rule = RULES["adam_amsgrad"]
    sizes = [50_000, 3, 70_001]
    runs = []
    threads = fastopt.get_num_threads()
    try:
        for n_threads, parallel_from in ((1, 1 << 40), (1, 0), (threads, 0)):
            fastopt.set_num_threads(n_threads)
            numba_backend.set_parallel_threshold(parallel_from, "float32")
            params = [np.random.default_rng(6).standard_normal(n).astype(np.float32)
                      for n in sizes]
            plan, slots = make_plan(rule, params, rounding)
            for step in range(4):
                plan.updates = step
                g = [gradient(np.random.default_rng(step), (n,), np.float32, step) for n in sizes]
                plan.step(g, np.ones((3, len(sizes))) * [[1.0], [1.0], [0.0]],
                          KERNEL_SCALARS["adam_amsgrad"])
            runs.append(params + [a for s in slots for a in s])
    finally:
        fastopt.set_num_threads(threads)
        numba_backend.set_parallel_threshold(None, "float32")  # the tuned values again
    for other in runs[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(runs[0], other))


def test_nan_and_inf_propagate_into_bfloat16_slots():
    p = np.ones(4, np.float32)
    opt = fastopt.Adam(p, learning_rate=0.1, state_dtype="bfloat16")
    opt.step(np.array([np.nan, np.inf, -np.inf, 1.0], np.float32))
    m, v = (R.bf16_to_float(opt.state_dict()["slots"][k]) for k in ("momentum/0", "velocity/0"))
    assert np.isnan(p[:3]).all() and np.isfinite(p[3]) and p[3] < 1
    assert np.isnan(m[0]) and m[1] == np.inf and m[2] == -np.inf
    assert np.isnan(v[0]) and v[1] == np.inf and v[2] == np.inf


def test_plan_rejects_what_it_cannot_do():
    p = [np.zeros(3, np.float32)]
    with pytest.raises(ValueError, match="no state"):
        bf16.Plan(RULES["sgd"], p, [])
    with pytest.raises(ValueError, match="centred RMSprop"):
        bf16.Plan(RULES["rmsprop_centered"], p, [[np.zeros(3, np.uint16)]] * 2)
    with pytest.raises(TypeError, match="float32 parameters"):
        bf16.Plan(RULES["adagrad"], [np.zeros(3)], [[np.zeros(3, np.uint16)]])
    with pytest.raises(TypeError, match="uint16"):
        bf16.Plan(RULES["adagrad"], p, [[np.zeros(3, np.float32)]])
    with pytest.raises(ValueError, match="rounding"):
        bf16.Plan(RULES["adagrad"], p, [[np.zeros(3, np.uint16)]], "down")


# ---------------------------------------------------------------------------
# 3. Optimizers: exactly the float32-state step from the decoded state, rounded

SHAPES = [(3, 4), (5,), (), (20_000,)]
VARIANTS = {
    "plain": {},
    "clipnorm+decay": {"clipnorm": 0.5, "weight_decay": 0.01},
    "groups+global_clip+none": {"global_clipnorm": 1.0, "groups": True},
    "accumulation+ema": {"gradient_accumulation_steps": 2, "use_ema": True,
                         "clipvalue": 0.7},
}
TAKES_BF16 = [row for row in DB if row.bf16_state]  # centred RMSprop: refused


def test_the_rows_that_take_bfloat16_state_are_those_the_optimizers_accept():
    """``bf16_state`` is derived from the registry's refusals; the classes agree."""
    for row in DB:
        params = [np.ones(3, np.float32)]
        for convention in row.conventions:
            if row.bf16_state:
                row.make(params, convention=convention, state_dtype="bfloat16")
            else:
                with pytest.raises(ValueError, match="state_dtype='bfloat16' is not offered"):
                    row.make(params, convention=convention, state_dtype="bfloat16")
    assert any(not row.bf16_state for row in DB) and len(TAKES_BF16) > 1


def as_f32_twin(state):
    """The state with its bfloat16 slots decoded, for a float32-state optimizer."""
    config = {**state["config"], "state_dtype": None, "state_rounding": None}
    slots = {k: R.bf16_to_float(v).reshape(v.shape) if v.dtype == np.uint16 else v
             for k, v in state["slots"].items()}
    return {"config": config, "iterations": state["iterations"], "calls": state["calls"],
            "slots": slots, **({"host_state": state["host_state"]} if "host_state" in state
                               else {})}


def build(row, variant, params, **options):
    cls, kw = row.cls, dict(row.kwargs)
    v = dict(VARIANTS[variant])
    if v.pop("groups", False):
        params = [{"params": params[:2]}, {"params": params[2:], "learning_rate": 0.003}]
    return cls(params, learning_rate=0.05 if cls is fastopt.SGD else 0.01, **{**kw, **v},
               **options)


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("row,convention", with_conventions(TAKES_BF16))
def test_optimizer_is_the_float32_step_then_the_rounding(row, variant, convention, rounding):
    if convention not in row.conventions:
        pytest.skip(f"{row.id} has no {convention} convention")
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    opt = build(row, variant, params, convention=convention, state_dtype="bfloat16",
                state_rounding=rounding)
    rules = opt.rule if isinstance(opt.rule, tuple) else (opt.rule,)
    if any(RULES[r].slots for r in rules):  # a rule without state runs where auto puts it
        assert opt.backends == {"float32": "numba"}
    steps = opt.gradient_accumulation_steps or 1
    for step in range(6):
        grads = [gradient(rng, s, np.float32, step) for s in SHAPES]
        if variant.startswith("groups") and step == 2:
            grads[1] = None
        state = opt.state_dict()
        twin_params = [p.copy() for p in params]
        twin = build(row, variant, twin_params, convention=convention, backend="numba")
        twin.load_state_dict(as_f32_twin(state))
        updates = opt.iterations
        opt.step([[grads[0], grads[1]], grads[2:]] if variant.startswith("groups") else grads)
        twin.step([[grads[0], grads[1]], grads[2:]] if variant.startswith("groups") else grads)
        for p, q in zip(params, twin_params):
            assert np.array_equal(p, q), f"step {step}: parameters differ"
        new, twin_new = opt.state_dict()["slots"], twin.state_dict()["slots"]
        for key, bits in new.items():
            if bits.dtype != np.uint16:  # EMA, gradient accumulators: float32 as before
                assert np.array_equal(bits, twin_new[key]), key
                continue
            name, i = key.split("/")
            i = int(i)
            rule = RULES[rules[0 if len(rules) == 1 or i < 2 else 1]]
            random_bits = R.bf16_random_bits(updates, rule.slots.index(name), i, bits.size) \
                if rounding == "stochastic" else None
            want = R.bf16_round(twin_new[key].ravel(), rounding, random_bits).reshape(bits.shape)
            if grads[i] is None or (steps > 1 and step % steps == 0):
                want = state["slots"][key]  # not updated this call
            assert np.array_equal(bits, want), f"step {step}: {key}"
    assert opt.calls == 6 and opt.iterations == 6 // steps


def test_default_is_the_parameters_dtype_and_unchanged():
    x = np.ones(10, np.float32)
    opt = fastopt.Adam(x)
    assert (opt.state_dtype, opt.state_rounding) == (None, None)
    config = opt.get_config()
    assert config["state_dtype"] is None and config["state_rounding"] is None
    assert all(a.dtype == np.float32 for a in opt.state_dict()["slots"].values())
    opt64 = fastopt.Adam(np.ones(3))
    assert all(a.dtype == np.float64 for a in opt64.state_dict()["slots"].values())
    assert "state" not in repr(opt)


def test_bfloat16_slots_halve_the_state_memory():
    x = np.ones((100, 30), np.float32)
    opt = fastopt.Adam(x, amsgrad=True, state_dtype="bfloat16")
    slots = opt.state_dict()["slots"]
    assert {k: (a.dtype, a.shape) for k, a in slots.items()} == {
        f"{s}/0": (np.dtype(np.uint16), (100, 30)) for s in ("momentum", "velocity",
                                                               "velocity_hat")}
    assert sum(a.nbytes for a in slots.values()) == 3 * 2 * x.size
    assert "state_dtype='bfloat16', state_rounding='nearest'" in repr(opt)


def test_adagrad_initial_accumulator_is_rounded_to_bfloat16():
    opt = fastopt.Adagrad(np.ones(3, np.float32), initial_accumulator_value=0.1,
                          state_dtype="bfloat16")
    acc = opt.state_dict()["slots"]["accumulator/0"]
    assert list(acc) == [0x3DCD] * 3 and R.bf16_to_float(acc)[0] == np.float32(0.10009765625)


def test_sgd_without_momentum_has_no_state_to_narrow():
    x = np.ones(3, np.float32)
    opt = fastopt.SGD(x, learning_rate=0.5, state_dtype="bfloat16")
    opt.step(np.ones(3, np.float32))
    assert opt.state_dict()["slots"] == {} and np.all(x == 0.5)


def test_param_groups_draw_different_random_numbers():
    a, b = np.ones(64, np.float32), np.ones(64, np.float32)
    g = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    for rounding, same in (("nearest", True), ("stochastic", False)):
        opt = fastopt.Adam([{"params": [a]}, {"params": [b]}], state_dtype="bfloat16",
                           state_rounding=rounding)
        opt.step([[g], [g]])
        slots = opt.state_dict()["slots"]
        assert np.array_equal(slots["velocity/0"], slots["velocity/1"]) == same


# ---------------------------------------------------------------------------
# 4. State, errors, convergence

@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("row", TAKES_BF16, ids=str)
def test_save_load_resume_is_bit_identical(tmp_path, row, rounding):
    rng = np.random.default_rng(4)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    options = dict(state_dtype="bfloat16", state_rounding=rounding,
                   gradient_accumulation_steps=2)
    opt = row.make(params, **options)
    for step in range(5):
        opt.step([gradient(rng, s, np.float32, step) for s in SHAPES])
    fastopt.save_state(opt, tmp_path / "s.npz")
    resumed_params = [p.copy() for p in params]
    resumed = row.cls(resumed_params, **row.kwargs, **options)
    fastopt.load_state(resumed, tmp_path / "s.npz")
    for k, a in opt.state_dict()["slots"].items():
        assert np.array_equal(resumed.state_dict()["slots"][k], a)
    for step in range(5, 12):
        g = [gradient(rng, s, np.float32, step) for s in SHAPES]
        opt.step(g)
        resumed.step(g)
    assert all(np.array_equal(a, b) for a, b in zip(params, resumed_params))
    a, b = opt.state_dict()["slots"], resumed.state_dict()["slots"]
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("direction", ["bf16 into float32", "float32 into bf16"])
def test_loading_a_state_of_the_other_state_dtype_raises_and_changes_nothing(direction):
    x, y = np.ones(5, np.float32), np.ones(5, np.float32)
    bf = fastopt.Adam(x, state_dtype="bfloat16")
    fl = fastopt.Adam(y)
    for opt in (bf, fl):
        opt.step(np.full(5, 0.5, np.float32))
    src, dst = (bf, fl) if direction.startswith("bf16") else (fl, bf)
    before = dst.state_dict()
    with pytest.raises(ValueError, match="state_dtype="):
        dst.load_state_dict(src.state_dict())
    after = dst.state_dict()
    assert after["config"] == before["config"] and after["iterations"] == before["iterations"]
    assert all(np.array_equal(after["slots"][k], before["slots"][k]) for k in before["slots"])


def test_a_state_with_float32_arrays_for_bfloat16_slots_is_rejected():
    opt = fastopt.Adam(np.ones(5, np.float32), state_dtype="bfloat16")
    state = opt.state_dict()
    state["slots"]["velocity/0"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="slot 'velocity/0'.*uint16"):
        opt.load_state_dict(state)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(state_dtype="float16"), ValueError, r"state_dtype must be None .*'bfloat16'"),
    (dict(state_dtype=np.float32), ValueError, "state_dtype must be None"),
    (dict(state_rounding="stochastic"), ValueError, "state_rounding='stochastic' applies only"),
    (dict(state_dtype="bfloat16", state_rounding="up"), ValueError,
     r"state_rounding must be one of \('nearest', 'stochastic'\)"),
    (dict(state_dtype="bfloat16", backend="numpy"), ValueError,
     "runs on the 'numba' backend only, not 'numpy'"),
    (dict(state_dtype="bfloat16", backend="cython"), ValueError,
     "runs on the 'numba' backend only, not 'cython'"),
    (dict(state_dtype="bfloat16", params64=True), ValueError,
     r"needs float32 parameters .*params\[1\] is float64"),
    (dict(state_dtype="bfloat16", centered=True, cls=fastopt.RMSprop), ValueError,
     "not offered for the 'rmsprop_centered' kernel"),
    (dict(state_dtyp="bfloat16"), ValueError, "unknown hyperparameter.*state_dtype"),
    # 8-bit state
    (dict(state_dtype="int8", backend="numpy"), ValueError,
     r"runs on the .*'cython'.* only, not 'numpy'"),
    (dict(state_dtype="int8", params64=True), ValueError,
     r"needs float32 parameters"),
    (dict(state_dtype="int8", state_rounding="stochastic"), ValueError,
     r"state_rounding must be one of \('nearest',\)"),
    (dict(state_dtype="int8", cls=fastopt.RMSprop, centered=True), ValueError,
     "not offered for the 'rmsprop_centered' kernel: centred RMSprop"),
    (dict(state_dtype="int8", cls=fastopt.Lamb), ValueError,
     "not offered for the 'lamb' kernel"),
    (dict(state_dtype="uint8"), ValueError,
     r"state_dtype must be None .*'int8'"),
])
def test_bad_state_options_are_rejected(kw, exc, match):
    kw = dict(kw)
    cls = kw.pop("cls", fastopt.Adam)
    params = [np.ones(3, np.float32), np.ones(2, np.float64 if kw.pop("params64", False)
                                                 else np.float32)]
    before = [p.copy() for p in params]
    with pytest.raises(exc, match=match):
        cls(params, **kw)
    assert all(np.array_equal(a, b) for a, b in zip(params, before))


# ---------------------------------------------------------------------------
# fastopt compare --state-dtype

def test_compare_with_bfloat16_state(tmp_path, capsys):
    from fastopt.cli import main
    argv = ["compare", "--optimizers", "adam,momentum,rmsprop", "--epochs", "2", "--no-plot",
            "--json", str(tmp_path / "runs.json")]
    assert main(argv) == 0
    plain = json.loads((tmp_path / "runs.json").read_text())
    assert main(argv + ["--state-dtype", "bfloat16", "--state-rounding", "stochastic"]) == 0
    out = capsys.readouterr().out
    assert "float32, backend auto, bfloat16 optimizer state (stochastic rounding)" in out
    report = json.loads((tmp_path / "runs.json").read_text())
    assert (report["config"]["state_dtype"], report["config"]["state_rounding"]) == \
        ("bfloat16", "stochastic")
    assert (plain["config"]["state_dtype"], plain["config"]["state_rounding"]) == (None, None)
    for a, b in zip(plain["runs"], report["runs"]):
        la, lb = a["history"]["loss"][-1], b["history"]["loss"][-1]
        assert la != lb and abs(la - lb) < 0.01 * la, (a["optimizer"], la, lb)


@pytest.mark.parametrize("argv,message", [
    (["--state-rounding", "stochastic"], "--state-rounding needs --state-dtype bfloat16"),
    (["--state-dtype", "bfloat16", "--dtype", "float64"], "needs --dtype float32"),
    (["--state-dtype", "bfloat16", "--backend", "numpy"], "runs on --backend numba"),
    (["--state-dtype", "int8", "--backend", "numpy"],
     "--state-dtype int8 runs on --backend numba or cython (or auto), not numpy"),
    (["--state-dtype", "float16"], "invalid choice: 'float16'"),
    (["--state-dtype", "bfloat16", "--optimizers", "rmsprop_centered"],
     "rmsprop_centered: RMSprop: state_dtype='bfloat16' is not offered"),
])
def test_compare_rejects_bad_state_options(argv, message, capsys):
    from fastopt.cli import main
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--no-plot", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
