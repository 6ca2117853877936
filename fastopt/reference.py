r"""The NumPy float64 reference: the specification of every update rule.

Each function here is one update rule written as plainly as possible, in
float64, returning new arrays.  The fused backends must agree with these
functions; the ``"numpy"`` backend *is* these functions (it casts its inputs to
float64, calls them, and casts the results back).  The plain names follow
Keras 3 (``keras.optimizers``), the default convention of fastopt; the
``*_torch`` functions follow PyTorch 2.13's ``torch.optim`` (``convention="torch"``).

Notation: :math:`w` parameter, :math:`g` gradient, :math:`\eta` learning rate,
all operations elementwise.

Gradient transformation, applied first by every kernel (``gscale`` comes from
``clipnorm``/``global_clipnorm``, ``clipvalue`` is ``inf`` when unused)::

    g <- clip(gscale * g, -clipvalue, clipvalue)

Then weight decay, in one of two forms: coupled (PyTorch's L2 ``weight_decay``,
``l2`` = 0 when unused) and decoupled (Keras, and PyTorch's AdamW;
``keep = 1 - weight_decay * lr``, 1 when unused)::

    g <- g + l2 * w
    w <- keep * w

NaN and Inf in gradients propagate into parameters and slots, as in Keras;
nothing is checked or masked per element.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = [
    "preprocess", "sgd", "sgd_momentum", "sgd_nesterov", "adagrad", "rmsprop",
    "rmsprop_momentum", "rmsprop_centered", "rmsprop_centered_momentum",
    "adam", "adam_amsgrad", "adam_alpha", "sgd_momentum_torch", "sgd_nesterov_torch",
    "adagrad_torch", "rmsprop_torch", "rmsprop_momentum_torch", "rmsprop_centered_torch",
    "rmsprop_centered_momentum_torch", "adam_torch", "adam_amsgrad_torch", "clip_by_norm", "clip_by_global_norm",
    "clip_by_value", "global_norm", "apply_rule", "bf16_round", "bf16_to_float", "hash32",
    "bf16_random_bits", "apply_rule_bf16",
]


def _f64(x):
    return np.asarray(x, dtype=np.float64)


def preprocess(grad, gscale=1.0, clipvalue=math.inf):
    """``clip(gscale * g, -clipvalue, clipvalue)``, keeping NaN as NaN."""
    g = _f64(grad) * gscale
    # np.clip would also keep NaN; the explicit form documents the intent.
    return np.where(g > clipvalue, clipvalue, np.where(g < -clipvalue, -clipvalue, g))


# The rules' own references live in their family modules
# (fastopt.algorithms.<family>); they are reachable here under their kernel
# names (fastopt.reference.adam_torch ...), looked up in the registry.

def __getattr__(name):
    from .rule import RULES
    if name in RULES:
        return RULES[name].reference
    if name == "adam_alpha":
        from .algorithms.adam import adam_alpha
        return adam_alpha
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------
# Gradient clipping (Keras semantics), on lists of arrays, in float64.

def global_norm(grads):
    """Euclidean norm of all gradients together (``None`` entries skipped)."""
    return math.sqrt(sum(float(np.sum(_f64(g) ** 2)) for g in grads if g is not None))


def clip_by_norm(grad, clipnorm):
    """Per-tensor: ``g * clipnorm / max(||g||, clipnorm)``.

    An all-zero gradient passes unchanged; a NaN norm makes every entry NaN.
    """
    g = _f64(grad)
    norm = math.sqrt(float(np.sum(g * g)))
    return g * clipnorm / np.maximum(norm, clipnorm)


def clip_by_global_norm(grads, clipnorm):
    """All tensors scaled by ``clipnorm * min(1/||G||, 1/clipnorm)``.

    As in Keras: a norm below ``clipnorm`` (including zero) leaves the
    gradients unchanged up to rounding, and a non-finite norm gives NaN.
    """
    return [None if g is None else _f64(g) * global_clip_scale(global_norm(grads), clipnorm)
            for g in grads]


def global_clip_scale(norm, clipnorm):
    """The scale factor of :func:`clip_by_global_norm` for a given norm."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.float64(1.0) / np.float64(norm)
        scale = clipnorm * np.minimum(inv, 1.0 / clipnorm)
        return float(scale + (np.float64(norm) - np.float64(norm)))


def clip_by_value(grad, clipvalue):
    """``clip(g, -clipvalue, clipvalue)``."""
    return preprocess(grad, 1.0, clipvalue)


def apply_rule(name, param, grad, slots, scalars, *, keep=1.0, gscale=1.0,
               clipvalue=math.inf, l2=0.0):
    """One whole kernel step in float64: preprocess, decay, update.

    ``scalars`` is a dict of the rule's scalar arguments (see
    :data:`fastopt.rule.RULES`).  ``l2`` is coupled weight decay (PyTorch's
    ``weight_decay``: ``g <- g + l2 * w``), ``keep`` decoupled weight decay
    (``w <- keep * w``).  Returns ``(new_param, *new_slots)``.
    """
    g = preprocess(grad, gscale, clipvalue)
    if l2:
        g = g + l2 * _f64(param)
    w = keep * _f64(param)
    from .rule import RULES
    return RULES[name].reference(w, g, *slots, **scalars)


# --------------------------------------------------------------------------
# Optimizer state kept in bfloat16 (``state_dtype="bfloat16"``).  bfloat16 is
# float32 with the low 16 bits dropped: the same 8-bit exponent (same range,
# subnormals included) and an 8-bit significand (7 bits stored).  A value is
# stored as its 16-bit pattern in a uint16 array.

_MASK32 = 0xFFFFFFFF


def bf16_to_float(bits):
    """bfloat16 bit patterns (uint16) -> their values as float32 (exact)."""
    u = np.asarray(bits, dtype=np.uint16).astype(np.uint32)
    u <<= 16  # in place: a 0-d input stays an array
    return u.view(np.float32)


def bf16_round(x, rounding="nearest", random_bits=None):
    """Round values to bfloat16; returns the bit patterns (uint16).

    ``rounding="nearest"``: IEEE round to nearest, ties to even, in one
    rounding from the exact (float64) value: 8 significant bits, spacing
    ``2**-133`` below ``2**-126`` (subnormals), a magnitude of
    ``(2 - 2**-8) * 2**127`` or more becomes infinite, signed zeros and
    infinities are kept and a NaN stays a (quiet) NaN of the same sign.

    ``rounding="stochastic"``: the value is first rounded to float32 (the
    kernels hold it in float32); its low 16 bits ``d`` are what bfloat16
    drops.  With ``r = random_bits & 0xFFFF`` it is rounded away from zero
    to the next bfloat16 if ``d + r >= 2**16`` and towards zero otherwise:
    up with probability ``d / 2**16`` for uniform ``r``, so the rounding is
    unbiased.  A value already in bfloat16 (``d = 0``) is kept.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        x = _f64(x)
        x32 = x.astype(np.float32)
        if rounding == "nearest":
            frac, exp = np.frexp(np.where(np.isfinite(x), x, 0.0))  # |frac| in [0.5, 1)
            quantum = np.maximum(exp, -125) - 8                    # 2**-126 = 0.5 * 2**-125
            near = np.ldexp(np.rint(np.ldexp(x, -quantum)), quantum)  # rint: ties to even
            x32 = np.where(np.isfinite(x), near, x).astype(np.float32)  # exact, or +-inf
            out = x32.view(np.uint32) >> 16
        elif rounding == "stochastic":
            b = x32.view(np.uint32).astype(np.uint64)
            r = np.asarray(random_bits, dtype=np.uint64) & 0xFFFF
            out = (b + r) >> 16
        else:
            raise ValueError(f"bf16_round: rounding must be 'nearest' or 'stochastic', "
                             f"got {rounding!r}")
    quiet_nan = (x32.view(np.uint32) >> 16) | 0x40
    return np.where(np.isnan(x32), quiet_nan, out).astype(np.uint16)


def hash32(x):
    """A 32-bit integer hash of the low 32 bits of ``x`` (xor-shift and
    multiply rounds with the constants of C. Wellons' ``lowbias32``): the
    random numbers of stochastic rounding.  Returns uint64 values below 2**32."""
    x = np.asarray(x).astype(np.uint64) & _MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def bf16_random_bits(updates, slot, tensor, size):
    """The random numbers that stochastic rounding draws for one slot of one
    tensor in one step.

    Element ``i`` of the tensor hashes ``h = hash32(salt + i)`` with
    ``salt = hash32(hash32(updates + 1) + tensor)`` (mod 2**32); slot 0 (the
    first in the rule's slot list) uses the low 16 bits of ``h``, the other
    slots the high 16 bits.  So AMSGrad's ``v`` and ``vhat`` round alike and
    the stored ``vhat >= v`` holds.  ``updates`` is the optimizer's update
    count before the step (the one Adam's bias correction sees) and
    ``tensor`` the parameter's index in the optimizer's flat parameter list:
    the numbers depend on nothing else -- not on threads, chunking or other
    tensors -- and a resumed run draws the same ones.
    """
    salt = hash32(hash32(int(updates) + 1) + int(tensor))
    h = hash32(salt + np.arange(size, dtype=np.uint64))
    return h if slot == 0 else h >> 16


def apply_rule_bf16(name, param, grad, slots, scalars, *, keep=1.0, gscale=1.0,
                    clipvalue=math.inf, l2=0.0, rounding="nearest", random_bits=None):
    """One kernel step with the slots in bfloat16, in float64.

    ``slots`` are bfloat16 bit patterns (uint16).  They are decoded, the
    step runs as :func:`apply_rule`, and the new slot values are rounded
    back with :func:`bf16_round` (``random_bits``: one array per slot, for
    ``rounding="stochastic"``).  The parameter update uses the new slot
    values *before* they are rounded.  Returns ``(new_param, *new_slot_bits)``.
    """
    new = apply_rule(name, param, grad, [bf16_to_float(s) for s in slots], scalars,
                     keep=keep, gscale=gscale, clipvalue=clipvalue, l2=l2)
    bits = random_bits if random_bits is not None else [None] * len(slots)
    return (new[0], *(bf16_round(s, rounding, b) for s, b in zip(new[1:], bits)))


# --------------------------------------------------------------------------
# Optimizer state kept in 8 bits (``state_dtype="int8"``).  Each slot of a
# tensor is cut into blocks of :data:`Q8_BLOCK` elements (of the flattened
# tensor, from element 0; the last block may be shorter).  A block stores one
# float32 scale, the largest magnitude in it, and one 8-bit code per element
# for ``q = |x| / scale`` in [0, 1], a small floating-point number:
#
# * slots that may be negative (Adam's ``momentum``): int8, the sign (of the
#   value's sign bit) and a 7-bit magnitude with 4 exponent and 3 significand bits, ``q`` from
#   2**-16 * 1.25 (about 1.9e-5) to 1; smaller values become 0;
# * slots that are never negative (``velocity``, ``accumulator``): uint8,
#   5 exponent and 3 significand bits, ``q`` from 2**-32 * 1.25 (about
#   2.9e-10) to 1, and a value above 0 never becomes 0 (it is stored as the
#   smallest code): a second moment rounded to zero would turn the next
#   update into ``m / epsilon``.
#
# Encoding works on the float32 bits of ``q = |x| * (1 / scale)`` (both
# float32 operations; ``1 / scale`` is taken as 0 for an all-zero block, and
# a NaN ``q`` gets the largest code): ``r = (bits + 2**19) >> 20`` rounds ``q`` to 3
# significand bits (half away from zero), and the code is ``r`` less a bias
# (:data:`Q8_BIAS`), clamped to the code's range.  Decoding shifts ``code +
# bias`` back into a float32 and multiplies by the scale: a few integer
# operations, which vectorise, and no table.  A block whose largest magnitude
# is not finite (inf or NaN) has a NaN scale: all its elements decode to NaN.

#: Elements per block (one float32 scale per block and slot).
Q8_BLOCK = 256
#: ``r - code`` for the signed and the unsigned code (see above).
Q8_BIAS = {True: (127 << 3) - 127, False: (127 << 3) - 255}
#: The largest code magnitude (``q = 1``).
Q8_TOP = {True: 127, False: 255}


def q8_scales(x, block=Q8_BLOCK):
    """Per block of the flattened float32 ``x``: its largest magnitude
    (float32), or NaN where a value in the block is not finite."""
    x = np.asarray(x, np.float32).reshape(-1)
    nblocks = -(-x.size // block)
    pad = np.zeros(nblocks * block, np.float32)
    pad[:x.size] = np.abs(x)
    pad = pad.reshape(nblocks, block)
    with np.errstate(invalid="ignore"):
        scales = pad.max(axis=1) if nblocks else np.zeros(0, np.float32)
        bad = ~np.isfinite(pad).all(axis=1) if nblocks else np.zeros(0, bool)
    return np.where(bad, np.float32(np.nan), scales).astype(np.float32)


def q8_encode(x, signed, block=Q8_BLOCK):
    """Encode float32 values as 8-bit codes and per-block scales.

    Returns ``(codes, scales)``: ``codes`` int8 (``signed``) or uint8, of
    ``x``'s shape; ``scales`` float32, one per block of the flattened ``x``.
    This is the specification the kernels follow bit for bit (all arithmetic
    in float32, as written here).
    """
    x = np.asarray(x, np.float32)
    flat = x.reshape(-1)
    scales = q8_scales(flat, block)
    per = np.repeat(scales, block)[:flat.size]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = np.where(per == 0, np.float32(0), np.float32(1.0) / per)  # float32
        q = np.abs(flat) * inv                               # float32 product
    bits = q.view(np.uint32).astype(np.int64)
    r = (bits + (1 << 19)) >> 20
    code = np.clip(r - Q8_BIAS[signed], 0, Q8_TOP[signed])
    if not signed:  # a positive value keeps a positive code
        code = np.where((code == 0) & (q > 0), 1, code)
    if signed:
        code = np.where(np.signbit(flat), -code, code).astype(np.int8)
    else:
        code = code.astype(np.uint8)
    return code.reshape(x.shape), scales


def q8_decode(codes, scales, block=Q8_BLOCK):
    """The float32 values of 8-bit codes (int8: signed, uint8: unsigned) and
    their per-block scales (exact: a power of two times a 4-bit significand,
    times the scale, rounded once to float32)."""
    codes = np.asarray(codes)
    signed = codes.dtype == np.int8
    flat = codes.reshape(-1).astype(np.int64)
    mag = np.abs(flat)
    bits = ((mag + Q8_BIAS[signed]) << 20).astype(np.uint32)
    q = np.where(mag == 0, np.float32(0), bits.view(np.float32))
    q = np.where(flat < 0, -q, q).astype(np.float32)
    per = np.repeat(np.asarray(scales, np.float32), block)[:flat.size]
    with np.errstate(invalid="ignore"):
        return (q * per).astype(np.float32).reshape(codes.shape)


def decoded_slots(slots):
    """A state dict's ``"slots"`` with reduced-precision state decoded to
    float32: bfloat16 bit patterns (uint16) and 8-bit codes (with their
    ``"<slot>_scales/<i>"`` companions, which are left out); other arrays as
    they are."""
    out = {}
    for key, a in slots.items():
        name, _, i = key.rpartition("/")
        if name.endswith("_scales") and f"{name[:-len('_scales')]}/{i}" in slots:
            continue
        scales = slots.get(f"{name}_scales/{i}")
        if scales is not None and a.dtype in (np.int8, np.uint8):
            out[key] = q8_decode(a, scales)
        elif a.dtype == np.uint16:
            out[key] = bf16_to_float(a).reshape(a.shape)
        else:
            out[key] = a
    return out
