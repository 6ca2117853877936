"""fastopt.MultiTensorStep: fused steps over caller-owned memory, by address.

Every rule x compiled backend x dtype against the NumPy backend's public
kernels (the float64 reference's arithmetic), on a group of tensors of sizes
1, 7, 1025 and 40_000 (serial and chunked paths), with per-tensor step counts,
per-tensor factors, skipped tensors, found_inf and bad input.
"""
import numpy as np
import pytest

import fastopt
from fastopt.rule import RULES
from fastopt.backends import numpy_backend as ref
from fastopt.reference import bf16_round, bf16_to_float

from cases import HOST_BACKENDS
from optim_db import KERNEL_SCALARS, with_step

BACKENDS = [b for b in HOST_BACKENDS if b in ("numba", "cython")]
SIZES = [1, 7, 1025, 40_000]


def _group(rule, dtype, rng):
    nslots = len(RULES[rule].slots)
    params = [rng.standard_normal(n).astype(dtype) for n in SIZES]
    grads = [rng.standard_normal(n).astype(dtype) for n in SIZES]
    # slot 0 (a second moment) well above the square of the others (first
    # moments), so centred RMSprop's v - a^2 is well conditioned
    slots = [[(np.abs(rng.standard_normal(n)) * (0.1 if k else 1.0) + (0.0 if k else 1.0))
              .astype(dtype) for n in SIZES] for k in range(nslots)]
    return params, grads, slots


def _pointers(fused, params, grads, slots, skip=()):
    ptrs = fused.empty_pointers()
    for t in range(len(params)):
        ptrs[0, t] = params[t].ctypes.data
        ptrs[1, t] = 0 if t in skip else grads[t].ctypes.data
        for k, s in enumerate(slots):
            ptrs[2 + k, t] = s[t].ctypes.data
    return ptrs


# MultiTensorStep takes the elementwise rules (a two_phase rule needs its
# reductions first: refused, test_two_phase_rules_are_refused)
ELEMENTWISE = sorted(name for name, r in RULES.items() if not r.two_phase)


def test_two_phase_rules_are_refused():
    for name, rule in RULES.items():
        if rule.two_phase:
            with pytest.raises(ValueError, match="two_phase rule"):
                fastopt.MultiTensorStep(name, np.float32, SIZES)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule", ELEMENTWISE)
def test_matches_the_single_tensor_kernels(rule, dtype, backend):
    rng = np.random.default_rng(0)
    params, grads, slots = _group(rule, dtype, rng)
    expect = ([p.copy() for p in params], [[a.copy() for a in s] for s in slots])
    fused = fastopt.MultiTensorStep(rule, dtype, SIZES, backend=backend)
    assert fused.backend == backend
    per_tensor = fused.per_tensor_step
    # a step count that is not per tensor (a rule with host state) is a scalar
    scalars = KERNEL_SCALARS[rule] if per_tensor else with_step(RULES[rule],
                                                                KERNEL_SCALARS[rule], 4.0)
    steps = np.array([1.0, 3.0, 1.0, 7.0]) if per_tensor else None
    pt = np.array([[1.0, -0.5, 2.0, 1.0], [1.0, 0.99, 1.0, 0.9], [0.0, 0.0, 0.1, 0.0]])
    skip = {1}
    ran = fused.step(_pointers(fused, params, grads, slots, skip), scalars, steps=steps,
                     pt=pt, clipvalue=2.0)
    assert ran is True
    kernel = getattr(ref, rule)
    for t in range(len(SIZES)):
        if t in skip:
            continue
        extra = (steps[t],) if per_tensor else ()
        kernel(expect[0][t], grads[t], *[s[t] for s in expect[1]], *scalars, *extra,
               gscale=pt[0, t], keep=pt[1, t], l2=pt[2, t], clipvalue=2.0)
    # the skipped tensor was not touched
    fresh = _group(rule, dtype, np.random.default_rng(0))
    np.testing.assert_array_equal(params[1], fresh[0][1])
    # float32: the absolute part scales with how far the array moved (an
    # update that is a difference of large terms, like Ftrl's linear slot
    # z + g - (n_new^p - n^p) / lr * w, cancels in float32 arithmetic)
    for t in range(len(SIZES)):
        pairs = [(params[t], expect[0][t], fresh[0][t])]
        pairs += [(s[t], e[t], f[t]) for s, e, f in zip(slots, expect[1], fresh[2])]
        for got, want, old in pairs:
            if dtype == np.float32:
                moved = float(np.max(np.abs(want.astype(np.float64) - old), initial=0.0))
                tol = dict(rtol=2e-5, atol=1e-6 * max(1.0, moved))
            else:
                tol = dict(rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(got, want, **tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_equal_counts_run_one_call_and_agree_with_unbucketed(backend):
    rng = np.random.default_rng(1)
    a = _group("adam_torch", np.float64, rng)
    b = tuple([[x.copy() for x in part] if part and isinstance(part[0], np.ndarray)
               else [[x.copy() for x in s] for s in part] for part in a])
    fused = fastopt.MultiTensorStep("adam_torch", np.float64, SIZES, backend=backend)
    scalars = (1e-3, 0.9, 0.999, 1e-8)
    fused.step(_pointers(fused, *a), scalars, steps=np.full(len(SIZES), 4.0))
    fused.step(_pointers(fused, *b), scalars + (4.0,))
    for x, y in zip(a[0], b[0]):
        np.testing.assert_array_equal(x, y)


def test_found_inf_skips_everything():
    rng = np.random.default_rng(2)
    params, grads, slots = _group("adam_torch", np.float32, rng)
    before = [p.copy() for p in params]
    fused = fastopt.MultiTensorStep("adam_torch", np.float32, SIZES)
    ran = fused.step(_pointers(fused, params, grads, slots), (1e-3, 0.9, 0.999, 1e-8),
                     steps=np.ones(len(SIZES)), found_inf=np.array([1.0]))
    assert ran is False
    for p, q in zip(params, before):
        np.testing.assert_array_equal(p, q)


def test_bad_input_is_refused_before_anything_changes():
    rng = np.random.default_rng(3)
    params, grads, slots = _group("adam_torch", np.float64, rng)
    before = [p.copy() for p in params]
    fused = fastopt.MultiTensorStep("adam_torch", np.float64, SIZES)
    ptrs = _pointers(fused, params, grads, slots)
    scalars = (1e-3, 0.9, 0.999, 1e-8)
    with pytest.raises(ValueError, match="shape"):
        fused.step(ptrs[:, :2].copy(), scalars, steps=np.ones(4))
    with pytest.raises(ValueError, match="scalars"):
        fused.step(ptrs, scalars)  # no step count, none given
    with pytest.raises(ValueError, match=">= 1"):
        fused.step(ptrs, scalars, steps=np.zeros(4))
    bad = ptrs.copy()
    bad[2, 0] = 0
    with pytest.raises(ValueError, match="zero parameter or slot address"):
        fused.step(bad, scalars, steps=np.ones(4))
    with pytest.raises(ValueError, match="pt"):
        fused.step(ptrs, scalars, steps=np.ones(4), pt=np.ones((2, 4)))
    for p, q in zip(params, before):
        np.testing.assert_array_equal(p, q)
    plain = fastopt.MultiTensorStep("rmsprop_torch", np.float64, [3])
    with pytest.raises(ValueError, match="no step count"):
        plain.step(plain.empty_pointers(), (0.1, 0.9, 1e-8), steps=np.ones(1))


@pytest.mark.parametrize("kwargs, error", [
    (dict(rule="nope", dtype=np.float32, sizes=[1]), ValueError),
    (dict(rule="adam", dtype=np.int32, sizes=[1]), TypeError),
    (dict(rule="adam", dtype=np.float32, sizes=[]), ValueError),
    (dict(rule="adam", dtype=np.float32, sizes=[-1]), ValueError),
    (dict(rule="adam", dtype=np.float32, sizes=[1], backend="numpy"), ValueError),
])
def test_bad_construction(kwargs, error):
    rule, dtype, sizes = kwargs.pop("rule"), kwargs.pop("dtype"), kwargs.pop("sizes")
    with pytest.raises(error):
        fastopt.MultiTensorStep(rule, dtype, sizes, **kwargs)


def test_all_gradients_skipped_changes_nothing():
    rng = np.random.default_rng(4)
    params, grads, slots = _group("sgd", np.float32, rng)
    before = [p.copy() for p in params]
    fused = fastopt.MultiTensorStep("sgd", np.float32, SIZES)
    assert fused.step(_pointers(fused, params, grads, slots, skip={0, 1, 2, 3}), (0.1,))
    for p, q in zip(params, before):
        np.testing.assert_array_equal(p, q)


# centred RMSprop: refused; two_phase rules: MultiTensorStep refuses them
BF16_RULES = [r for r in sorted(RULES) if not RULES[r].bf16_refusal and not RULES[r].two_phase]


def _bits(x, fmt="bfloat16"):
    """float32 values -> bfloat16 or IEEE half bit patterns (uint16), rounded to
    nearest even (fastopt's reference, and NumPy's float16 cast)."""
    if fmt == "float16":
        return np.asarray(x, np.float32).astype(np.float16).view(np.uint16)
    return bf16_round(np.asarray(x, np.float32))


def _value(bits, fmt="bfloat16"):
    """bfloat16 or IEEE half bit patterns -> their float32 values, exactly."""
    if fmt == "float16":
        return np.asarray(bits, np.uint16).view(np.float16).astype(np.float32)
    return np.ascontiguousarray(bf16_to_float(bits), dtype=np.float32)


@pytest.mark.parametrize("fmt", ["bfloat16", "float16"])
@pytest.mark.parametrize("rule", BF16_RULES)
def test_two_byte_parameters_equal_float32_arithmetic_then_rounding(rule, fmt):
    """dtype="bfloat16" or "float16": parameters, gradients and slots all of
    that type, one pass.  The same bits as the float32 kernel run on the
    decoded values and rounded to nearest at the end (what a fused step on
    2-byte parameters means)."""
    rng = np.random.default_rng(5)
    params, grads, slots = _group(rule, np.float32, rng)
    bits = ([_bits(p, fmt) for p in params], [_bits(g, fmt) for g in grads],
            [[_bits(a, fmt) for a in s] for s in slots])
    params = [_value(b, fmt) for b in bits[0]]  # the same numbers, as float32
    grads = [_value(b, fmt) for b in bits[1]]
    slots = [[_value(b, fmt) for b in s] for s in bits[2]]
    fused = fastopt.MultiTensorStep(rule, fmt, SIZES)
    ref = fastopt.MultiTensorStep(rule, np.float32, SIZES)
    steps = np.array([1.0, 3.0, 1.0, 7.0]) if fused.per_tensor_step else None
    pt = np.array([[1.0, -0.5, 2.0, 1.0], [1.0, 0.99, 1.0, 0.9], [0.0, 0.0, 0.1, 0.0]])
    scalars = KERNEL_SCALARS[rule] if steps is not None else with_step(RULES[rule],
                                                                       KERNEL_SCALARS[rule], 4.0)
    fused.step(_pointers(fused, *bits), scalars, steps=steps, pt=pt)
    ref.step(_pointers(ref, params, grads, slots), scalars, steps=steps, pt=pt)
    for t in range(len(SIZES)):
        np.testing.assert_array_equal(bits[0][t], _bits(params[t], fmt))
        for s, r in zip(bits[2], slots):
            np.testing.assert_array_equal(s[t], _bits(r[t], fmt))
    assert fused.dtype == fmt and fused.backend == "numba"


def test_two_byte_parameters_refusals():
    with pytest.raises(ValueError, match="cannot run on bfloat16"):
        fastopt.MultiTensorStep("rmsprop_centered_torch", "bfloat16", [3])
    with pytest.raises(ValueError, match="cannot run on float16"):
        fastopt.MultiTensorStep("rmsprop_centered", "float16", [3])
    with pytest.raises(ValueError, match="numba"):
        fastopt.MultiTensorStep("adam_torch", "bfloat16", [3], backend="cython")
    with pytest.raises(ValueError, match="state_dtype"):
        fastopt.MultiTensorStep("adam_torch", "bfloat16", [3], state_dtype="bfloat16")
