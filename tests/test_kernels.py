"""Every public kernel of every fast backend against the float64 reference.

The table: rule (every rule of the registry, with the scalar values
``tests/optim_db.py`` gives it) x backend x dtype x size (1, 7, 1023, 1025, 100_003).  For
each cell a stream of ten gradient steps (see ``cases.gradient``: zeros, a
zero step, x1e3 and x1e-4 steps, a tiny coordinate) runs through the kernel;
odd steps also use the weight-decay factor, a gradient scale and a clip
value, and every third step coupled (L2) weight decay.  Every step is compared with the reference applied to the same inputs.

Tolerance, per element of every output array (parameter and slots)::

    |fast - ref| <= K * u * (|old| + |ref| + kappa * max|ref - old|)

``u`` is the unit roundoff of the dtype and K = 16: each output is a chain of
at most ~8 rounded operations whose terms are bounded by the old and new
values and by the largest step the array took (the ``max`` term covers
cancellation between terms, e.g. Nesterov's ``momentum*m - lr*g``).  For
centred RMSprop ``kappa = 1 + (v + a^2) / (v - a^2 + eps)`` is the condition
number of the denominator ``v - a^2``, which cancels; elsewhere kappa = 1.
float32 kernels do float32 arithmetic, so their errors are float32 rounding;
float64 kernels must agree to float64 rounding.
"""
import math

import numpy as np
import pytest

import fastopt
from fastopt.rule import RULES
from fastopt.backends import numpy_backend as ref_backend

from cases import HOST_BACKENDS, gradient
from optim_db import KERNEL_SCALARS, scalar, scalars_at, step_inputs

FAST_BACKENDS = [b for b in HOST_BACKENDS if b != "numpy"]
SIZES = [1, 7, 1023, 1025, 100_003]
DTYPES = [np.float32, np.float64]



def test_every_rule_has_kernel_scalars_from_one_row():
    """tests/optim_db.py gives every rule of the registry its values (and
    only rules of the registry)."""
    assert set(KERNEL_SCALARS) == set(RULES)


def initial_state(rng, rule, size, dtype):
    param = rng.standard_normal(size).astype(dtype)
    slots = [np.full(size, 0.1 if s == "accumulator" else 0.0, dtype) for s in rule.slots]
    return param, slots


def kappa(rule_name, ref_new, eps=None):
    if not rule_name.startswith("rmsprop_centered"):
        return 1.0
    if eps is None:  # the epsilon the kernel tests give the rule
        eps = scalar(rule_name, "epsilon")
    v, a = ref_new[1].astype(np.float64), ref_new[2].astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf in the NaN/inf tests
        d = np.maximum(v - a * a, 0.0)
    if rule_name.endswith("_torch"):  # sqrt(d) + eps: worse conditioned near d = 0
        return 1.0 + (v + a * a) / (d + eps * np.sqrt(d) + eps * eps)
    return 1.0 + (v + a * a) / (d + eps)


def assert_close(label, fast, ref, old, dtype, k=1.0):
    u = np.finfo(dtype).eps / 2
    ref = ref.astype(np.float64)
    old = old.astype(np.float64)
    fast = fast.astype(np.float64)
    floor = np.max(np.abs(ref - old)) if ref.size else 0.0
    bound = 16 * u * (np.abs(old) + np.abs(ref) + k * floor)
    err = np.abs(fast - ref)
    bad = ~(err <= bound)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AssertionError(f"{label}: {bad.sum()} elements off, first at [{i}]: fast "
                             f"{fast[i]!r}, reference {ref[i]!r}, old {old[i]!r}, "
                             f"bound {bound.flat[i]:.3g}")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_kernel_matches_reference_every_step(backend, rule_name, dtype, size):
    rule = RULES[rule_name]
    fast_kernel = getattr(fastopt.get_backend(backend), rule_name)
    ref_kernel = getattr(ref_backend, rule_name)
    rng = np.random.default_rng([size, len(rule_name), np.dtype(dtype).itemsize])
    param, slots = initial_state(rng, rule, size, dtype)
    for step in range(10):
        scalars, g, extras = step_inputs(rng, rule, size, dtype, step)
        old = [param.copy()] + [s.copy() for s in slots]
        ref = [a.copy() for a in old]
        ref_kernel(*ref[:1], g, *ref[1:], *scalars, **extras)
        fast_kernel(param, g, *slots, *scalars, **extras)
        k = kappa(rule_name, ref)
        names = ("param",) + rule.slots
        for name, f, r, o in zip(names, [param] + slots, ref, old):
            assert_close(f"{backend}.{rule_name} step {step} {name}", f, r, o, dtype,
                         k if name == "param" else 1.0)
        # keep the two on the same inputs for the next step
        if dtype == np.float32:
            for dst, src in zip([param] + slots, ref):
                dst[...] = src


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_float64_trajectory_matches_reference(backend, rule_name):
    """40 steps with no resynchronisation: float64 agrees to rounding."""
    rule = RULES[rule_name]
    fast_kernel = getattr(fastopt.get_backend(backend), rule_name)
    ref_kernel = getattr(ref_backend, rule_name)
    rng = np.random.default_rng(7)
    param, slots = initial_state(rng, rule, 1025, np.float64)
    p0 = param.copy()
    rp, rs = param.copy(), [s.copy() for s in slots]
    for step in range(40):
        g = gradient(rng, (1025,), np.float64, step % 10)
        fast_kernel(param, g, *slots, *scalars_at(rule, step))
        ref_kernel(rp, g, *rs, *scalars_at(rule, step))
    displacement = np.max(np.abs(rp - p0))
    assert displacement > 1e-3  # the trajectory really moved
    np.testing.assert_allclose(param, rp, rtol=1e-12, atol=1e-12 * displacement)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_kernels_reject_bad_arrays_and_change_nothing(backend):
    adam = fastopt.get_backend(backend).adam
    p = np.ones(8, np.float32)
    g = np.ones(8, np.float32)
    m = np.zeros(8, np.float32)
    v = np.zeros(8, np.float32)
    with pytest.raises(TypeError, match="grad has dtype float64 but param has float32"):
        adam(p, g.astype(np.float64), m, v, 0.1, 0.9, 0.999, 1e-7)
    with pytest.raises(ValueError, match=r"velocity has shape \(7,\) but param has \(8,\)"):
        adam(p, g, m, v[:7], 0.1, 0.9, 0.999, 1e-7)
    with pytest.raises(ValueError, match="contiguous 1-D"):
        adam(p, g, m.reshape(2, 4), v, 0.1, 0.9, 0.999, 1e-7)
    with pytest.raises(TypeError, match="takes 8 positional arguments"):
        adam(p, g, m, v, 0.1, 0.9, 0.999)
    assert (p == 1).all() and (m == 0).all() and (v == 0).all()


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_nan_and_inf_gradients_propagate(backend):
    kernels = fastopt.get_backend(backend)
    p = np.ones(4)
    g = np.array([np.nan, np.inf, -np.inf, 1.0])
    m, v = np.zeros(4), np.zeros(4)
    kernels.adam(p, g, m, v, 0.1, 0.9, 0.999, 1e-7)
    assert np.isnan(p[:3]).all() and np.isfinite(p[3])
    assert np.isnan(m[0]) and math.isinf(m[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_nan_and_inf_propagate_exactly_as_in_the_reference(backend, rule_name, dtype):
    # NaN, +inf and -inf gradients (and the NaN they make later: inf - inf in
    # a moving average, AMSGrad's and Adamax's max of a NaN) land in the same
    # elements of the parameters and slots as in the reference, for every
    # rule; the finite elements agree to rounding
    rule = RULES[rule_name]
    fast_kernel = getattr(fastopt.get_backend(backend), rule_name)
    ref_kernel = getattr(ref_backend, rule_name)
    rng = np.random.default_rng(len(rule_name))
    n = 24
    param, slots = initial_state(rng, rule, n, dtype)
    special = np.array([np.nan, np.inf, -np.inf, 0.0, np.nan, np.inf], dtype)
    for step in range(4):
        g = rng.standard_normal(n).astype(dtype)
        g[:: n // 6][:6] = np.roll(special, step)   # special values move around
        scalars = scalars_at(rule, step)
        extras = dict(keep=0.999, l2=0.01) if step % 2 else {}
        old = [a.copy() for a in [param] + slots]
        ref = [a.copy() for a in old]
        ref_kernel(*ref[:1], g, *ref[1:], *scalars, **extras)
        fast_kernel(param, g, *slots, *scalars, **extras)
        for name, f, r, o in zip(("param",) + rule.slots, [param] + slots, ref, old):
            label = f"{backend}.{rule_name} step {step} {name}"
            np.testing.assert_array_equal(np.isnan(f), np.isnan(r), err_msg=label)
            np.testing.assert_array_equal(np.isposinf(f), np.isposinf(r), err_msg=label)
            np.testing.assert_array_equal(np.isneginf(f), np.isneginf(r), err_msg=label)
            finite = np.isfinite(r) & np.isfinite(o)
            assert_close(label, f[finite], r[finite], o[finite], dtype,
                         kappa(rule_name, ref)[finite] if name == "param"
                         and rule_name.startswith("rmsprop_centered") else 1.0)
            # a finite value that replaced a non-finite one (Rprop's prev takes
            # the new gradient) is not computed from it: it must be the same
            fresh = np.isfinite(r) & ~np.isfinite(o)
            np.testing.assert_array_equal(f[fresh], r[fresh], err_msg=label)
        # the case must reach the state: the parameters, or where the rule reads
        # only the gradient's sign (Rprop: torch's sign(NaN) = 0) its slots
        assert any(np.isnan(a).any() for a in [param] + slots), "the case must reach the state"
        for dst, src in zip([param] + slots, ref):  # the same inputs next step
            dst[...] = src


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_float32_square_overflows_like_keras(backend):
    """Documented: float32 kernels compute g*g in float32, which is inf for
    |g| > ~1.8e19 (as Keras float32 variables do); the float64 reference
    would not overflow.  Adam then takes no step on that coordinate."""
    k = fastopt.get_backend(backend)
    p = np.array([1.0, 1.0], np.float32)
    g = np.array([1e20, 1.0], np.float32)
    m, v = np.zeros(2, np.float32), np.zeros(2, np.float32)
    k.adam(p, g, m, v, 0.01, 0.9, 0.999, 1e-7)
    assert np.isinf(v[0]) and np.isfinite(m[0])
    assert p[0] == 1.0 and p[1] < 1.0


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_centered_rmsprop_clamps_negative_variance(backend, dtype):
    """Documented: if rounding leaves v - a^2 below zero, the denominator is
    clamped to 0 + eps instead of producing NaN (as the reference does)."""
    k = fastopt.get_backend(backend)
    p = np.ones(3, dtype)
    g = np.array([1.0, 1.0, 0.0], dtype)
    v = np.array([1.0, 1.0, 1.0], dtype)
    a = np.array([1.0 + 1e-3, 1.0, 2.0], dtype)  # inconsistent: v < a^2
    ref = [x.copy() for x in (p, v, a)]
    k.rmsprop_centered(p, g, v, a, 0.001, 0.9, 1e-7)
    ref_backend.rmsprop_centered(ref[0], g, ref[1], ref[2], 0.001, 0.9, 1e-7)
    assert np.all(np.isfinite(p))
    new_v, new_a = 0.9 * 1.0 + 0.1 * 1.0, 0.9 * (1.0 + 1e-3) + 0.1
    assert new_v - new_a ** 2 < 0  # the clamp really was needed for element 0
    np.testing.assert_allclose(p, ref[0], rtol=1e-6)
