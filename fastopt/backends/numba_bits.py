"""Bit-level intrinsics of the 2-byte float types, for Numba (LLVM IR).

bfloat16 and IEEE half encode and decode, rounding to nearest or
stochastically, and the hash that draws stochastic rounding's random bits
(:func:`fastopt.reference.hash32`, :func:`fastopt.reference.bf16_random_bits`
are their specifications).  Used by :mod:`fastopt.backends.numba_bf16`.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["bf16_nearest", "bf16_stochastic", "bf16_decode", "f16_decode", "f16_nearest",
           "hash32", "random_bits"]

# ---------------------------------------------------------------------------
# bfloat16 bit patterns.  Written as LLVM IR so that the arithmetic stays in
# 32-bit integer lanes (Numba widens uint32 arithmetic to 64 bits, which
# would halve the vector width); each is a few shifts, adds, ands, selects or
# multiplies, which LLVM vectorises with the float arithmetic around them.

_I32 = ir.IntType(32)


def _i32(builder, value):
    """The low 32 bits of an integer value (zero-extended if narrower)."""
    if value.type.width > 32:
        return builder.trunc(value, _I32)
    if value.type.width < 32:
        return builder.zext(value, _I32)
    return value


def _c32(k):
    return ir.Constant(_I32, k)


def _to_bf16(builder, x, add):
    # (bits + add) >> 16; a NaN keeps its sign and is made quiet instead (the
    # add could carry its payload into the exponent, or past the sign bit)
    b = builder.bitcast(x, _I32)
    rounded = builder.lshr(builder.add(b, add), _c32(16))
    quiet = builder.or_(builder.lshr(b, _c32(16)), _c32(0x40))
    nan = builder.fcmp_unordered("uno", x, x)
    return builder.trunc(builder.select(nan, quiet, rounded), ir.IntType(16))


@intrinsic
def bf16_nearest(typingctx, x):
    """``bf16_nearest(float32)`` -> uint16: ``x`` rounded to the nearest
    bfloat16, ties to even (overflow gives inf; NaN stays NaN)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        odd = builder.and_(builder.lshr(builder.bitcast(args[0], _I32), _c32(16)), _c32(1))
        return _to_bf16(builder, args[0], builder.add(_c32(0x7FFF), odd))

    return types.uint16(x), codegen


@intrinsic
def bf16_stochastic(typingctx, x, bits):
    """``bf16_stochastic(float32, bits)`` -> uint16: ``x`` rounded away from
    zero iff (its low 16 bits) + (the low 16 bits of ``bits``) >= 2**16."""
    if x != types.float32 or not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return _to_bf16(builder, args[0], builder.and_(_i32(builder, args[1]), _c32(0xFFFF)))

    return types.uint16(x, bits), codegen


@intrinsic
def bf16_decode(typingctx, u):
    """``bf16_decode(uint16)`` -> float32: the bfloat16 value, exactly."""
    if not isinstance(u, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.shl(_i32(builder, args[0]), _c32(16)), ir.FloatType())

    return types.float32(u), codegen


@intrinsic
def f16_decode(typingctx, u):
    """``f16_decode(uint16)`` -> float32: the IEEE half-precision value, exactly."""
    if not isinstance(u, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        bits = builder.trunc(args[0], ir.IntType(16)) if args[0].type.width > 16 \
            else args[0]
        return builder.fpext(builder.bitcast(bits, ir.HalfType()), ir.FloatType())

    return types.float32(u), codegen


@intrinsic
def f16_nearest(typingctx, x):
    """``f16_nearest(float32)`` -> uint16: ``x`` rounded to the nearest IEEE
    half, ties to even (overflow gives inf; NaN stays NaN)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(x), codegen


def _hash32(builder, v):
    for shift, factor in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        v = builder.mul(builder.xor(v, builder.lshr(v, _c32(shift))), _c32(factor))
    return builder.xor(v, builder.lshr(v, _c32(16)))


@intrinsic
def hash32(typingctx, x):
    """``hash32(integer)`` -> uint32, :func:`fastopt.reference.hash32`: xor-shift
    and multiply rounds (C. Wellons' ``lowbias32`` constants) on the low 32 bits."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return _hash32(builder, _i32(builder, args[0]))

    return types.uint32(x), codegen


@intrinsic
def random_bits(typingctx, base, i, shift):
    """``random_bits(base, i, shift)`` -> uint32: ``hash32(base + i) >> shift``,
    all in 32-bit arithmetic (so that a loop over ``i`` keeps 32-bit lanes)."""
    if not all(isinstance(a, types.Integer) for a in (base, i, shift)):
        return None

    def codegen(context, builder, signature, args):
        h = _hash32(builder, builder.add(_i32(builder, args[0]), _i32(builder, args[1])))
        return builder.lshr(h, _i32(builder, args[2]))

    return types.uint32(base, i, shift), codegen
