"""Optimizer state kept in 8 bits (``state_dtype="int8"``).

Four layers, each against something independent:

1. **The code.**  :func:`fastopt.reference.q8_encode` / ``q8_decode`` (NumPy
   bit arithmetic, the specification) on hand-checked values: exact powers of
   two and significands, the rounding boundary, signs, the range ends, all-zero
   blocks, NaN and inf; the kernels' intrinsics against it for every float32
   bit pattern class and every code.
2. **Kernels.**  A step of every rule that takes 8-bit state is, bit for bit,
   the float32-state kernel run on the decoded state followed by the reference
   encoder (the issue's definition); and against the float64 reference
   (:func:`fastopt.reference.apply_rule` on the decoded state, then encoded),
   the codes are within one of each other and the scales equal to float32
   rounding; the counts of differing codes and scales are reported.
3. **Optimizers.**  An int8-state optimizer does exactly what the
   float32-state optimizer does from the decoded state, followed by the
   encoding, step after step, with clipping, weight decay, parameter groups,
   ``None`` gradients, gradient accumulation and EMA.
4. **State and errors.**  Bit-identical resume from files, the state dict's
   keys and dtypes, thread independence, clear refusals.

The Cython backend's 8-bit step (``cython_backend.Int8Plan``) runs through
the same tests where that is cheap, and is also compared with the Numba
backend's bit for bit (kernels, ``MultiTensorStep``, optimizers, state files).
"""
import numpy as np
import pytest

import fastopt
from fastopt import reference as R
from fastopt.rule import RULES

from cases import gradient
from optim_db import DB, step_inputs

pytestmark = pytest.mark.skipif("numba" not in fastopt.available_backends(),
                                reason="8-bit state runs on the numba backend")
if "numba" in fastopt.available_backends():
    from fastopt.backends import numba_backend as nb
    from fastopt.backends import numba_int8 as q8
    from fastopt.backends.numba_q8 import q8_decode, q8_encode
HAS_CYTHON = "cython" in fastopt.available_backends()
if HAS_CYTHON:
    from fastopt.backends import _cython_kernels as cy_ext
    from fastopt.backends import cython_backend as cy
needs_cython = pytest.mark.skipif(not HAS_CYTHON, reason="the Cython extension is not built")
#: the backends that keep 8-bit state, as test parameters
BACKENDS = ["numba", pytest.param("cython", marks=needs_cython)]


def plans(backend):
    """``(8-bit plan class, float32 plan class)`` of a backend."""
    if backend == "cython":
        return cy.Int8Plan, cy.Plan
    return q8.Plan, nb.Plan

INT8_RULES = [name for name, r in RULES.items() if r.slots and not r.int8_refusal]
#: the rules the kernel tests run (every family and both conventions; each
#: rule compiles its own 8-bit drivers, ~8 s on the 2-core machine)
KERNEL_RULES = ["adam", "adam_amsgrad_torch", "rmsprop_momentum", "rmsprop_torch",
                "sgd_nesterov", "sgd_momentum_torch", "adagrad_torch"]


def f32(bits):
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


# ---------------------------------------------------------------------------
# 1. The code

def test_the_offered_rules_are_the_measured_families():
    assert {RULES[r].family for r in INT8_RULES} == {"adam", "rmsprop", "sgd", "adagrad"}
    assert set(KERNEL_RULES) <= set(INT8_RULES)
    assert "rmsprop_centered" not in INT8_RULES and "adamax" not in INT8_RULES


@pytest.mark.parametrize("signed", [True, False])
def test_codes_of_exact_values(signed):
    """A block of 256 whose largest magnitude is 8: q = x / 8 rounds to 3
    significand bits (half away from zero); codes count up from the bias."""
    top = R.Q8_TOP[signed]
    x = np.zeros(256, np.float32)
    x[0] = 8.0                     # q = 1: the top code
    x[1] = 4.0                     # q = 1/2: eight codes lower (3 significand bits)
    x[2] = 5.0                     # q = 0.625 = 1.25 * 2^-1: two above that
    x[3] = 8.0 * (1 + 1 / 16) / 2  # q = 1.0625 * 2^-1: a tie, rounds away: 1.125 * 2^-1
    x[4] = 8.0 * 1.0624 / 2        # just below the tie: down
    codes, scales = R.q8_encode(x, signed)
    assert scales.tolist() == [8.0]
    assert codes[:5].tolist() == [top, top - 8, top - 6, top - 7, top - 8]
    values = R.q8_decode(codes, scales)
    assert values[:5].tolist() == [8.0, 4.0, 5.0, 4.5, 4.0]
    assert values[5:].tolist() == [0.0] * 251


def test_signs_and_the_signed_range():
    x = np.array([-3.0, 3.0, -0.75, 3.0 * 2.0 ** -16, -3.0 * 2.0 ** -16 * 1.25], np.float32)
    codes, scales = R.q8_encode(x, True)
    assert codes.dtype == np.int8 and scales.tolist() == [3.0]
    assert codes[0] == -codes[1] == -127 and codes[2] == -(127 - 16)
    values = R.q8_decode(codes, scales)
    assert values[:3].tolist() == [-3.0, 3.0, -0.75]
    assert values[3] == 0.0                    # below 1.25 * 2^-16 of the largest: 0
    assert codes[4] == -1 and values[4] == np.float32(-3.0 * 2.0 ** -16 * 1.25)


def test_a_positive_second_moment_never_becomes_zero():
    x = np.array([1.0, 1e-20, 1e-9, 0.0], np.float32)
    codes, scales = R.q8_encode(x, False)
    assert codes.dtype == np.uint8 and codes.tolist()[-1] == 0 and codes[1] == 1
    values = R.q8_decode(codes, scales)
    assert values[1] == np.float32(2.0 ** -32 * 1.25)  # the smallest code, not 0
    assert abs(values[2] / 1e-9 - 1) < 1 / 16          # within range: 3 significand bits
    assert values[3] == 0.0


@pytest.mark.parametrize("signed", [True, False])
def test_all_zero_blocks_nan_and_inf(signed):
    x = np.zeros(600, np.float32)
    x[300] = np.nan
    x[520] = np.inf if signed else 2.0
    x[521] = -np.inf if signed else np.inf
    codes, scales = R.q8_encode(x, signed)
    assert scales[0] == 0 and not codes[:256].any()      # zeros: scale 0, code 0
    assert np.isnan(scales[1]) and np.isnan(scales[2])   # a NaN or inf: the block is NaN
    values = R.q8_decode(codes, scales)
    assert not values[:256].any() and np.isnan(values[256:]).all()


def test_relative_error_is_at_most_half_a_step():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(4096) * 10.0 ** rng.uniform(-3, 3, 4096)).astype(np.float32)
    for signed, xs in ((True, x), (False, x * x)):
        codes, scales = R.q8_encode(xs, signed)
        values = R.q8_decode(codes, scales).astype(np.float64)
        per = np.repeat(scales, 256)[:xs.size]
        big = np.abs(xs) >= per * 2.0 ** -15
        rel = np.abs(values[big] - xs[big]) / np.abs(xs[big])
        assert rel.max() <= 1 / 16 + 1e-6  # half of the significand step 1/8


def kernel_encode(x, signed):
    import numba

    @numba.njit
    def run(x, out, inv):
        for i in range(x.shape[0]):
            out[i] = q8_encode(x[i], inv, out)
    out = np.empty(x.size, np.int8 if signed else np.uint8)
    codes_ref, scales = R.q8_encode(x, signed, block=x.size)
    inv = np.float32(0) if scales[0] == 0 else np.float32(1) / scales[0]
    run(x, out, inv)
    return out, codes_ref


@pytest.mark.parametrize("signed", [True, False])
def test_kernel_encoder_and_decoder_match_the_reference(signed):
    """Every code decodes as the reference decodes it, and the encoder agrees
    with the reference on every significand near each exponent of the range,
    on its rounding boundaries, and on NaN and inf."""
    rng = np.random.default_rng(1)
    exps = np.arange(-40, 1)
    mant = np.concatenate([np.arange(0, 1 << 23, 1 << 17), [(1 << 19) - 1, 1 << 19,
                                                              (1 << 19) + 1]])
    bits = ((exps[:, None] + 127) << 23 | mant[None, :]).reshape(-1).astype(np.uint32)
    x = f32(bits)
    x = np.concatenate([x, [0.0, 1.0, 2.0 ** -130]]).astype(np.float32)
    if signed:
        x = x * np.where(rng.random(x.size) < 0.5, -1, 1).astype(np.float32)
    got, want = kernel_encode(x, signed)
    assert np.array_equal(got, want)
    import numba

    @numba.njit
    def decode(codes, scale, out):
        for i in range(codes.shape[0]):
            out[i] = q8_decode(codes[i], scale)
    codes = np.arange(-128, 128).astype(np.int8) if signed else np.arange(256).astype(np.uint8)
    for scale in (np.float32(3.5), np.float32(0.0), np.float32(np.nan)):
        out = np.empty(codes.size, np.float32)
        decode(codes, scale, out)
        want = R.q8_decode(codes, np.array([scale], np.float32), block=codes.size)
        assert np.array_equal(out, want, equal_nan=True)


@needs_cython
@pytest.mark.parametrize("signed", [True, False])
def test_cython_encoder_and_decoder_match_the_reference(signed):
    """The Cython backend's C encoder and decoder: the reference's constants,
    and the reference's codes and scales on the bit patterns of the test
    above (blocks of 256 holding both tiny and large values, zeros, NaN and
    inf), every code decoded with a finite, a zero and a NaN scale."""
    assert cy_ext.Q8_CONSTANTS == (R.Q8_BLOCK, R.Q8_BIAS, R.Q8_TOP)
    rng = np.random.default_rng(1)
    exps = np.arange(-40, 1)
    mant = np.concatenate([np.arange(0, 1 << 23, 1 << 17), [(1 << 19) - 1, 1 << 19,
                                                              (1 << 19) + 1]])
    bits = ((exps[:, None] + 127) << 23 | mant[None, :]).reshape(-1).astype(np.uint32)
    x = np.concatenate([f32(bits), [0.0, 1.0, 2.0 ** -130], np.zeros(512),
                        [np.nan, 1.0, -np.inf, 2.0]]).astype(np.float32)
    if signed:
        x = x * np.where(rng.random(x.size) < 0.5, -1, 1).astype(np.float32)
    codes, scales = cy_ext.q8_encode(x, signed)
    want_codes, want_scales = R.q8_encode(x, signed)
    assert np.isnan(scales[-1]) and (scales == 0).any()
    assert np.array_equal(scales, want_scales, equal_nan=True)
    assert np.array_equal(codes, want_codes)
    codes = np.arange(-128, 128).astype(np.int8) if signed else np.arange(256).astype(np.uint8)
    for scale in (np.float32(3.5), np.float32(0.0), np.float32(np.nan)):
        scales = np.array([scale], np.float32)
        assert np.array_equal(cy_ext.q8_decode(codes, scales), R.q8_decode(codes, scales),
                              equal_nan=True)


# ---------------------------------------------------------------------------
# 2. Kernels

SIZES = [700, 256, 40_000, 3, 0]


def initial_state(rng, rule, sizes=SIZES):
    state = []
    for signed in q8.signed_slots(rule):
        tensors = []
        for n in sizes:
            if signed:
                a = rng.standard_normal(n) * 0.1
            else:
                a = rng.standard_normal(n) ** 2 * 10.0 ** rng.uniform(-8, 0, n)
            if n > 10:
                a[5] = 0.0
            tensors.append(a.astype(np.float32))
        state.append(tensors)
    return state


def run_int8(rule, params, codes, grads, pt, scalars, clipvalue, threads=None):
    plan = q8.Plan(rule, params, codes)
    plan.step(grads, pt, scalars, clipvalue)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule_name", KERNEL_RULES)
def test_kernel_is_the_float32_step_then_the_reference_encoder(rule_name, backend):
    rule = RULES[rule_name]
    int8_plan, float_plan = plans(backend)
    rng = np.random.default_rng(2)
    params = [rng.standard_normal(n).astype(np.float32) for n in SIZES]
    state = initial_state(rng, rule)
    codes = [[R.q8_encode(a, sg) for a in sl] for sl, sg in zip(state, q8.signed_slots(rule))]
    for step in range(4):
        scalars, _, extras = step_inputs(rng, rule, 1, np.float32, step)
        grads = [gradient(rng, (n,), np.float32, step) for n in SIZES]
        grads[1] = None
        pt = np.ones((3, len(SIZES)))
        pt[0], pt[1], pt[2] = extras.get("gscale", 1.0), extras.get("keep", 1.0), \
            extras.get("l2", 0.0)
        clip = extras.get("clipvalue", np.inf)
        decoded = [[R.q8_decode(c, s) for c, s in sl] for sl in codes]
        twin_params = [p.copy() for p in params]
        float_plan(rule, twin_params, decoded).step(grads, pt, scalars, clip)
        int8_plan(rule, params, codes).step(grads, pt, scalars, clip)
        for p, q in zip(params, twin_params):
            assert np.array_equal(p, q), f"step {step}: parameters differ"
        for j, signed in enumerate(q8.signed_slots(rule)):
            for t in range(len(SIZES)):
                c, s = codes[j][t]
                want_c, want_s = (R.q8_encode(decoded[j][t], signed) if grads[t] is not None
                                  else R.q8_encode(R.q8_decode(c, s), signed))
                assert np.array_equal(s, want_s, equal_nan=True), (step, j, t)
                assert np.array_equal(c, want_c), (step, j, t)


@pytest.mark.parametrize("rule_name", KERNEL_RULES)
def test_kernel_against_the_float64_reference(rule_name, record_property):
    """The float64 reference from the same decoded state, encoded: codes
    within one, scales to float32 rounding (a block's largest element can
    round differently in float32); the counts are reported."""
    rule = RULES[rule_name]
    rng = np.random.default_rng(5)
    params = [rng.standard_normal(n).astype(np.float32) for n in SIZES]
    state = initial_state(rng, rule)
    codes = [[R.q8_encode(a, sg) for a in sl] for sl, sg in zip(state, q8.signed_slots(rule))]
    differ = scales_differ = total = blocks = 0
    for step in range(3):
        scalars, _, extras = step_inputs(rng, rule, 1, np.float32, step)
        extras = {k: v for k, v in extras.items() if k != "clipvalue"}
        grads = [gradient(rng, (n,), np.float32, step) for n in SIZES]
        decoded = [[R.q8_decode(c, s) for c, s in sl] for sl in codes]
        pt = np.ones((3, len(SIZES)))
        pt[0], pt[1], pt[2] = extras.get("gscale", 1.0), extras.get("keep", 1.0), \
            extras.get("l2", 0.0)
        want = [R.apply_rule(rule_name, params[t], grads[t], [sl[t] for sl in decoded],
                             dict(zip([s for s in rule.scalars], scalars)), **extras)
                for t in range(len(SIZES))]
        q8.Plan(rule, params, codes).step(grads, pt, scalars)
        for t in range(len(SIZES)):
            np.testing.assert_allclose(params[t], want[t][0], rtol=1e-5, atol=1e-6)
            for j, signed in enumerate(q8.signed_slots(rule)):
                c, s = codes[j][t]
                rc, rs = R.q8_encode(want[t][1 + j].astype(np.float32), signed)
                np.testing.assert_allclose(s, rs, rtol=2e-6)
                scales_differ += int(np.sum(s != rs))
                blocks += s.size
                dc = np.abs(c.astype(int) - rc.astype(int))
                assert dc.max(initial=0) <= 1, (step, t, j)
                differ += int(np.sum(dc != 0))
                total += c.size
    record_property("codes_differing", f"{differ} of {total}")
    record_property("scales_differing", f"{scales_differ} of {blocks}")
    assert differ <= 0.01 * total


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_do_not_depend_on_threads_or_the_parallel_threshold(backend):
    rule = RULES["adam"]
    int8_plan = plans(backend)[0]
    rng = np.random.default_rng(6)
    sizes = [70_000, 33_000]
    params0 = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    grads = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    results = []
    saved_threads = fastopt.get_num_threads()
    try:
        for threads, threshold in ((1, 1 << 30), (2, 1), (1, 1)):
            fastopt.set_num_threads(threads)
            fastopt.set_parallel_threshold(threshold, "float32")
            params = [p.copy() for p in params0]
            codes = [[(np.zeros(n, np.int8), np.zeros(q8.n_blocks(n), np.float32))
                      for n in sizes],
                     [(np.zeros(n, np.uint8), np.zeros(q8.n_blocks(n), np.float32))
                      for n in sizes]]
            plan = int8_plan(rule, params, codes)
            pt = np.ones((3, 2))
            pt[2] = 0
            for _ in range(3):
                plan.step(grads, pt, (1e-3, 0.9, 0.999, 1e-7))
            results.append((params, codes))
    finally:
        fastopt.set_parallel_threshold(None, "float32")  # the tuned values again
        fastopt.set_num_threads(saved_threads)
    for params, codes in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(params, results[0][0]))
        for sl, sl0 in zip(codes, results[0][1]):
            for (c, s), (c0, s0) in zip(sl, sl0):
                assert np.array_equal(c, c0) and np.array_equal(s, s0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_plan_rejects_what_it_cannot_do(backend):
    plan = plans(backend)[0]
    p = [np.zeros(300, np.float32)]
    good = [[(np.zeros(300, np.int8), np.zeros(2, np.float32))],
            [(np.zeros(300, np.uint8), np.zeros(2, np.float32))]]
    with pytest.raises(ValueError, match="cannot keep its state in 8 bits"):
        plan(RULES["adamax"], p, good)
    with pytest.raises(TypeError, match="needs float32 parameters"):
        plan(RULES["adam"], [np.zeros(300)], good)
    with pytest.raises(TypeError, match="codes must be uint8"):
        plan(RULES["adam"], p, [good[0], good[0]])
    with pytest.raises(TypeError, match="scales must be float32 arrays of 2"):
        plan(RULES["adam"], p, [good[0], [(good[1][0][0], np.zeros(1, np.float32))]])
    with pytest.raises(ValueError, match="rounding must be one of"):
        plan(RULES["adam"], p, good, rounding="stochastic")


#: sizes of the Cython tests: a block and one element either side, a chunk
#: and a part, a single element, an empty tensor
CY_SIZES = [1, 255, 256, 257, 16384 + 300, 0]


def special_state(rng, rule, sizes):
    """Float32 slot values per slot and tensor: random, with an all-zero
    block, a NaN and an inf block in the largest tensor."""
    state = initial_state(rng, rule, sizes)
    for sl in state:
        big = sl[4]
        big[256:512] = 0.0
        big[1000] = np.nan
        big[1300] = np.inf
    return state


@needs_cython
@pytest.mark.parametrize("rule_name", INT8_RULES)
def test_cython_kernel_is_the_float32_step_then_the_reference_encoder(rule_name):
    """Every rule that takes 8-bit state, on the Cython backend: its float32
    step from the decoded state, then the reference encoder, bit for bit --
    sizes around a block and a chunk, zero, NaN and inf blocks, gradients
    with a zero block and an inf, a skipped tensor."""
    rule = RULES[rule_name]
    rng = np.random.default_rng(12)
    params = [rng.standard_normal(n).astype(np.float32) for n in CY_SIZES]
    signed = q8.signed_slots(rule)
    codes = [[R.q8_encode(a, sg) for a in sl]
             for sl, sg in zip(special_state(rng, rule, CY_SIZES), signed)]
    for step in range(3):
        scalars, _, extras = step_inputs(rng, rule, 1, np.float32, step)
        grads = [gradient(rng, (n,), np.float32, step) for n in CY_SIZES]
        grads[4][512:768] = 0.0
        grads[4][2000] = np.inf
        grads[2] = None
        pt = np.ones((3, len(CY_SIZES)))
        pt[0], pt[1], pt[2] = extras.get("gscale", 1.0), extras.get("keep", 1.0), \
            extras.get("l2", 0.0)
        clip = extras.get("clipvalue", np.inf)
        decoded = [[R.q8_decode(c, s) for c, s in sl] for sl in codes]
        twin_params = [p.copy() for p in params]
        cy.Plan(rule, twin_params, decoded).step(grads, pt, scalars, clip)
        before = [[(c.copy(), s.copy()) for c, s in sl] for sl in codes]
        cy.Int8Plan(rule, params, codes).step(grads, pt, scalars, clip)
        for p, q in zip(params, twin_params):
            assert np.array_equal(p, q, equal_nan=True), f"step {step}: parameters differ"
        for j, sg in enumerate(signed):
            for t in range(len(CY_SIZES)):
                c, s = codes[j][t]
                want_c, want_s = (R.q8_encode(decoded[j][t], sg) if grads[t] is not None
                                  else before[j][t])
                assert np.array_equal(s, want_s, equal_nan=True), (step, j, t)
                assert np.array_equal(c, want_c), (step, j, t)


@needs_cython
@pytest.mark.parametrize("rule_name", KERNEL_RULES)
def test_cython_kernel_is_the_numba_kernel(rule_name):
    """The two backends' 8-bit steps give the same bits, serially and in
    parallel (several tensors, special blocks, a skipped tensor)."""
    rule = RULES[rule_name]
    rng = np.random.default_rng(13)
    params = [rng.standard_normal(n).astype(np.float32) for n in CY_SIZES]
    signed = q8.signed_slots(rule)
    state = special_state(rng, rule, CY_SIZES)
    saved_threads = fastopt.get_num_threads()
    try:
        for threads, threshold in ((1, 1 << 30), (2, 0)):
            fastopt.set_num_threads(threads)
            fastopt.set_parallel_threshold(threshold, "float32")
            ps = {b: [p.copy() for p in params] for b in ("numba", "cython")}
            cs = {b: [[R.q8_encode(a, sg) for a in sl] for sl, sg in zip(state, signed)]
                  for b in ("numba", "cython")}
            for step in range(3):
                scalars, _, extras = step_inputs(rng, rule, 1, np.float32, step)
                grads = [gradient(rng, (n,), np.float32, step) for n in CY_SIZES]
                grads[3] = None
                pt = np.ones((3, len(CY_SIZES)))
                pt[0], pt[1], pt[2] = extras.get("gscale", 1.0), extras.get("keep", 1.0), \
                    extras.get("l2", 0.0)
                clip = extras.get("clipvalue", np.inf)
                for b in ("numba", "cython"):
                    plans(b)[0](rule, ps[b], cs[b]).step(grads, pt, scalars, clip)
                for p, q in zip(ps["numba"], ps["cython"]):
                    assert np.array_equal(p, q, equal_nan=True), (threads, step)
                for sl, sl2 in zip(cs["numba"], cs["cython"]):
                    for (c, s), (c2, s2) in zip(sl, sl2):
                        assert np.array_equal(c, c2) and np.array_equal(s, s2, equal_nan=True)
    finally:
        fastopt.set_parallel_threshold(None, "float32")
        fastopt.set_num_threads(saved_threads)


@needs_cython
def test_cython_plan_rejects_bad_gradients_and_changes_nothing():
    rule = RULES["adam"]
    params = [np.ones(300, np.float32), np.ones(5, np.float32)]
    codes = [[R.q8_encode(np.full(n, 0.5, np.float32), sg) for n in (300, 5)]
             for sg in q8.signed_slots(rule)]
    plan = cy.Int8Plan(rule, params, codes)
    good = [np.ones(300, np.float32), np.ones(5, np.float32)]
    before = [p.copy() for p in params], [[(c.copy(), s.copy()) for c, s in sl] for sl in codes]
    pt = np.ones((3, 2))
    pt[2] = 0
    scalars = (1e-3, 0.9, 0.999, 1e-7)
    for grads, error in (([good[0], np.ones(5)], ValueError),
                         ([good[0], np.ones(6, np.float32)], ValueError),
                         ([good[0], np.ones(10, np.float32)[::2]], ValueError),
                         ([good[0], [1.0] * 5], TypeError),
                         ([good[0]], ValueError)):
        with pytest.raises(error, match="gradient"):
            plan.step(grads, pt, scalars)
    with pytest.raises(ValueError, match="expected 4 scalars"):
        plan.step(good, pt, scalars[:3])
    with pytest.raises(ValueError, match="pt must have shape"):
        plan.step(good, np.ones((3, 3)), scalars)
    assert all(np.array_equal(a, b) for a, b in zip(params, before[0]))
    for sl, sl0 in zip(codes, before[1]):
        for (c, s), (c0, s0) in zip(sl, sl0):
            assert np.array_equal(c, c0) and np.array_equal(s, s0)
    with pytest.raises(ValueError, match="C-contiguous writeable"):
        cy.Int8Plan(rule, [np.ones(600, np.float32)[::2]], [[sl[0]] for sl in codes])
    plan.step(good, pt, scalars)  # and a good step still runs
    assert not np.array_equal(params[0], before[0][0])


@needs_cython
def test_auto_takes_cython_for_small_groups_numba_for_large_and_falls_back(monkeypatch):
    from fastopt import backends
    up_to = backends.INT8_CYTHON_UP_TO
    assert backends.state_backends("int8")[:2] == ("numba", "cython")
    assert backends.resolve_state_backend("auto", "int8")[0].NAME == "numba"
    assert backends.resolve_state_backend("auto", "int8", size=up_to)[0].NAME == "cython"
    assert backends.resolve_state_backend("auto", "int8", size=up_to + 1)[0].NAME == "numba"
    for n, want in ((1000, "cython"), (up_to + 1, "numba")):
        opt = fastopt.Adam([np.zeros(n, np.float32)], state_dtype="int8")
        assert opt.backends == {"float32": want}
    assert fastopt.Adam([np.zeros(1000, np.float32)], state_dtype="int8",
                        backend="numba").backends == {"float32": "numba"}
    monkeypatch.delitem(backends._loaded, "numba")
    monkeypatch.setitem(backends._errors, "numba", ImportError("no numba here"))
    module, plan = backends.resolve_state_backend("auto", "int8", size=up_to + 1)
    assert module.NAME == "cython" and plan is cy.Int8Plan
    with pytest.raises(ImportError, match="no numba here"):
        backends.resolve_state_backend("numba", "int8")


@needs_cython
def test_multi_tensor_step_on_cython_is_numba_s():
    """MultiTensorStep(state_dtype="int8", backend="cython"): the numba
    backend's bits, with per-tensor step counts and a skipped tensor."""
    rule = RULES["adam_torch"]
    sizes = [300, 5, 20_000]
    rng = np.random.default_rng(14)
    params0 = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    out = {}
    for backend in ("numba", "cython"):
        fused = fastopt.MultiTensorStep("adam_torch", "float32", sizes, state_dtype="int8",
                                        backend=backend)
        assert fused.backend == backend and fused.nrows == 6
        params = [p.copy() for p in params0]
        slots = [[R.q8_encode(np.zeros(n, np.float32), sg) for n in sizes]
                 for sg in q8.signed_slots(rule)]
        r = np.random.default_rng(15)
        for step in range(3):
            grads = [r.standard_normal(n).astype(np.float32) for n in sizes]
            ptrs = fused.empty_pointers()
            ptrs[0] = [p.ctypes.data for p in params]
            ptrs[1] = [g.ctypes.data for g in grads]
            ptrs[1, 1] = 0 if step == 1 else ptrs[1, 1]
            for j in range(2):
                ptrs[2 + j] = [c.ctypes.data for c, _ in slots[j]]
                ptrs[4 + j] = [s.ctypes.data for _, s in slots[j]]
            fused.step(ptrs, (0.01, 0.9, 0.999, 1e-8), steps=[step + 1.0, 1.0, step + 1.0])
        out[backend] = params, slots
    assert all(np.array_equal(a, b) for a, b in zip(out["numba"][0], out["cython"][0]))
    for sl, sl2 in zip(out["numba"][1], out["cython"][1]):
        for (c, s), (c2, s2) in zip(sl, sl2):
            assert np.array_equal(c, c2) and np.array_equal(s, s2)
    auto = fastopt.MultiTensorStep("adam_torch", "float32", sizes, state_dtype="int8")
    assert auto.backend == "cython"   # auto: a group this small runs on cython


# ---------------------------------------------------------------------------
# 3. Optimizers: exactly the float32-state step from the decoded state, encoded

SHAPES = [(3, 4), (5,), (), (20_000,)]
VARIANTS = {
    "plain": {},
    "clipnorm+decay": {"clipnorm": 0.5, "weight_decay": 0.01},
    "groups+none": {"groups": True},
    "accumulation+ema": {"gradient_accumulation_steps": 2, "use_ema": True,
                         "clipvalue": 0.7},
}
ROWS = {"adam": "keras", "adamw": "torch", "adam_amsgrad": "torch",
        "rmsprop_momentum": "keras", "sgd_nesterov": "torch", "adagrad": "keras"}
TAKES_INT8 = [row for row in DB if row.int8_state]


def test_the_rows_that_take_int8_state_are_those_the_optimizers_accept():
    for row in DB:
        for convention in row.conventions:
            params = [np.ones(3, np.float32)]
            if row.int8_state:
                row.make(params, convention=convention, state_dtype="int8")
            else:
                with pytest.raises(ValueError, match="state_dtype='int8' is not offered"):
                    row.make(params, convention=convention, state_dtype="int8")
    assert {row.id for row in TAKES_INT8} >= set(ROWS)


def decoded_twin_state(state):
    """The state with its 8-bit slots decoded, for a float32-state optimizer."""
    config = {**state["config"], "state_dtype": None, "state_rounding": None}
    return {"config": config, "iterations": state["iterations"], "calls": state["calls"],
            "slots": R.decoded_slots(state["slots"])}


def build(row, variant, params, **options):
    v = dict(VARIANTS[variant])
    if v.pop("groups", False):
        params = [{"params": params[:2]}, {"params": params[2:], "learning_rate": 0.003}]
    return row.cls(params, learning_rate=0.05 if row.cls is fastopt.SGD else 0.01,
                   **{**row.kwargs, **v}, **options)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("row_id", list(ROWS))
def test_optimizer_is_the_float32_step_then_the_encoding(row_id, variant, backend):
    row = next(r for r in DB if r.id == row_id)
    convention = ROWS[row_id]
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    opt = build(row, variant, params, convention=convention, state_dtype="int8",
                backend=backend)
    assert opt.backends == {"float32": backend}
    steps = opt.gradient_accumulation_steps or 1
    for step in range(6):
        grads = [gradient(rng, s, np.float32, step) for s in SHAPES]
        if variant.startswith("groups") and step == 2:
            grads[1] = None
        state = opt.state_dict()
        twin_params = [p.copy() for p in params]
        twin = build(row, variant, twin_params, convention=convention, backend=backend)
        twin.load_state_dict(decoded_twin_state(state))
        arg = [[grads[0], grads[1]], grads[2:]] if variant.startswith("groups") else grads
        opt.step(arg)
        twin.step(arg)
        for p, q in zip(params, twin_params):
            assert np.array_equal(p, q), f"step {step}: parameters differ"
        new, twin_new = opt.state_dict()["slots"], twin.state_dict()["slots"]
        for key, a in new.items():
            name, i = key.split("/")
            if name.endswith("_scales"):
                continue
            if f"{name}_scales/{i}" not in new:  # EMA, accumulators: float32 as before
                assert np.array_equal(a, twin_new[key]), key
                continue
            if grads[int(i)] is None or (steps > 1 and step % steps == 0):
                want = (state["slots"][key], state["slots"][f"{name}_scales/{i}"])
            else:
                want = R.q8_encode(twin_new[key], a.dtype == np.int8)
            assert np.array_equal(a, want[0]), f"step {step}: {key}"
            assert np.array_equal(new[f"{name}_scales/{i}"], want[1], equal_nan=True), key
    assert opt.calls == 6 and opt.iterations == 6 // steps


# ---------------------------------------------------------------------------
# 4. State and errors

def test_state_dict_holds_codes_and_scales():
    x = np.ones((100, 30), np.float32)
    opt = fastopt.Adam(x, amsgrad=True, state_dtype="int8")
    slots = opt.state_dict()["slots"]
    blocks = -(-3000 // 256)
    assert {k: (a.dtype, a.shape) for k, a in slots.items()} == {
        "momentum/0": (np.dtype(np.int8), (100, 30)),
        "velocity/0": (np.dtype(np.uint8), (100, 30)),
        "velocity_hat/0": (np.dtype(np.uint8), (100, 30)),
        **{f"{s}_scales/0": (np.dtype(np.float32), (blocks,))
           for s in ("momentum", "velocity", "velocity_hat")}}
    assert "state_dtype='int8'" in repr(opt)
    assert opt.rule == "adam_amsgrad"
    assert RULES["adam"].bytes_per_param("float32", "int8") == 12 + 4 * (1 + 4 / 256)


def test_adagrad_initial_accumulator_is_exact():
    opt = fastopt.Adagrad(np.ones(600, np.float32), initial_accumulator_value=0.1,
                          state_dtype="int8")
    s = opt.state_dict()["slots"]
    assert np.array_equal(R.q8_decode(s["accumulator/0"], s["accumulator_scales/0"]),
                          np.full(600, np.float32(0.1)))


@pytest.mark.parametrize("backends", [("numba", "numba"),
                                      pytest.param(("cython", "cython"), marks=needs_cython),
                                      pytest.param(("numba", "cython"), marks=needs_cython),
                                      pytest.param(("cython", "numba"), marks=needs_cython)])
@pytest.mark.parametrize("row_id", ["adam", "rmsprop"])
def test_save_load_resume_is_bit_identical(tmp_path, row_id, backends):
    """Saved on one backend, resumed on the same or the other: the same bits
    as going on without a break."""
    row = next(r for r in DB if r.id == row_id)
    rng = np.random.default_rng(4)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    opt = row.make(params, state_dtype="int8", backend=backends[0])
    for step in range(5):
        opt.step([gradient(rng, s, np.float32, step) for s in SHAPES])
    fastopt.save_state(opt, tmp_path / "s.npz")
    resumed_params = [p.copy() for p in params]
    resumed = row.cls(resumed_params, **row.kwargs, state_dtype="int8", backend=backends[1])
    fastopt.load_state(resumed, tmp_path / "s.npz")
    for step in range(5, 9):
        g = [gradient(rng, s, np.float32, step) for s in SHAPES]
        opt.step(g)
        resumed.step(g)
    assert all(np.array_equal(a, b) for a, b in zip(params, resumed_params))
    a, b = opt.state_dict()["slots"], resumed.state_dict()["slots"]
    assert all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


@pytest.mark.parametrize("other", [None, "bfloat16"])
def test_loading_a_state_of_another_state_dtype_raises_and_changes_nothing(other):
    x, y = np.ones(5, np.float32), np.ones(5, np.float32)
    q = fastopt.Adam(x, state_dtype="int8")
    o = fastopt.Adam(y, state_dtype=other)
    for opt in (q, o):
        opt.step(np.full(5, 0.5, np.float32))
    for src, dst in ((q, o), (o, q)):
        before = dst.state_dict()
        with pytest.raises(ValueError, match="state_dtype="):
            dst.load_state_dict(src.state_dict())
        after = dst.state_dict()
        assert all(np.array_equal(after["slots"][k], before["slots"][k])
                   for k in before["slots"])


def test_a_state_with_wrong_arrays_is_rejected_and_changes_nothing():
    opt = fastopt.Adam(np.ones(300, np.float32), state_dtype="int8")
    opt.step(np.ones(300, np.float32))
    before = opt.state_dict()
    for key, bad in (("velocity/0", np.zeros(300, np.int8)),
                     ("velocity_scales/0", np.zeros(3, np.float32)),
                     ("momentum/0", np.zeros(300, np.float32))):
        state = opt.state_dict()
        state["slots"][key] = bad
        with pytest.raises(ValueError, match=f"slot '{key}'"):
            opt.load_state_dict(state)
    after = opt.state_dict()
    assert all(np.array_equal(after["slots"][k], before["slots"][k]) for k in before["slots"])


def test_int8_state_trains():
    """Adam with 8-bit state on a quadratic whose curvatures span three orders
    of magnitude gets as close to the optimum as float32 state does, measured
    against the starting loss (near the optimum the two end at different tiny
    losses: 2e-5 and 2.5e-4 of a start at 300; the accuracy study with noise
    and longer runs is benchmarks/int8_codes.py)."""
    rng = np.random.default_rng(7)
    h = (10.0 ** rng.uniform(-3, 0, 4096)).astype(np.float32)
    start = 0.5 * float(h.sum())
    losses = {}
    for state_dtype in (None, "int8"):
        w = np.ones(4096, np.float32)
        opt = fastopt.Adam(w, learning_rate=1e-2, state_dtype=state_dtype)
        for _ in range(300):
            opt.step(h * w)
        losses[state_dtype] = 0.5 * float(np.sum(h * w.astype(np.float64) ** 2))
    assert losses[None] < 1e-5 * start and losses["int8"] < 1e-5 * start, losses
