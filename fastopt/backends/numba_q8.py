"""Bit-level intrinsics of the 8-bit optimizer-state codes, for Numba (LLVM IR).

:func:`fastopt.reference.q8_encode` and :func:`fastopt.reference.q8_decode`
are their specifications (the code's layout is described there).  Written as
LLVM IR so that the arithmetic stays in 32-bit integer lanes, as
:mod:`fastopt.backends.numba_bits` does for bfloat16: LLVM vectorises them with
the float arithmetic around them.

Each intrinsic's typing and code generation is a plain function
(``*_intrinsic``) that emits target-neutral llvmlite IR: this module wraps
them with ``numba.extending.intrinsic`` for the CPU, and
:mod:`fastopt.backends._cuda_kernels` with ``numba.cuda.extending.intrinsic``
for the GPU (as :func:`fastopt.backends._numba_util.pointer_intrinsic`), so
both compile the same instructions.
"""
from __future__ import annotations

import struct

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ..reference import Q8_BIAS, Q8_TOP

__all__ = ["q8_decode", "q8_encode", "abs_bits", "scale_of", "decode_intrinsic",
           "encode_intrinsic", "abs_bits_intrinsic", "scale_of_intrinsic"]

_I32 = ir.IntType(32)
_I8 = ir.IntType(8)
_F32 = ir.FloatType()


def _c32(k):
    return ir.Constant(_I32, k)


def decode_intrinsic(typingctx, code, scale):
    """``q8_decode(int8 or uint8 code, float32 scale)`` -> float32."""
    if code not in (types.int8, types.uint8) or scale != types.float32:
        return None
    signed = code == types.int8

    def codegen(context, builder, signature, args):
        c, s = args
        c32 = builder.sext(c, _I32) if signed else builder.zext(c, _I32)
        if signed:  # |code|; the sign goes into the float's sign bit
            mag = builder.select(builder.icmp_signed("<", c32, _c32(0)),
                                 builder.sub(_c32(0), c32), c32)
        else:
            mag = c32
        bits = builder.shl(builder.add(mag, _c32(Q8_BIAS[signed])), _c32(20))
        bits = builder.select(builder.icmp_signed("==", mag, _c32(0)), _c32(0), bits)
        if signed:
            bits = builder.or_(bits, builder.and_(c32, _c32(-0x80000000)))
        return builder.fmul(builder.bitcast(bits, _F32), s)

    return types.float32(code, scale), codegen


def _fconst(bits):
    return ir.Constant(_F32, struct.unpack("<f", struct.pack("<I", bits))[0])


def _fmax(builder, a, b):
    # maxnum: b when a is NaN (LLVM folds this into one vmaxps)
    return builder.select(builder.fcmp_unordered("uge", a, b), a, b)


def _encode(builder, x, inv, signed):
    # q = |x| * inv in float32, clamped in float32 (so that the integer part
    # needs no clamp), its bits rounded to 3 significand bits, less the bias
    ax = builder.bitcast(builder.and_(builder.bitcast(x, _I32), _c32(0x7FFFFFFF)), _F32)
    q = builder.fmul(ax, inv)
    bias = Q8_BIAS[signed]
    low = _fconst(bias << 20)                   # code 0
    if signed:
        q = _fmax(builder, q, low)
    else:  # a positive value keeps a positive code: at least code 1's value
        pos = builder.fcmp_unordered("!=", q, ir.Constant(_F32, 0.0))  # NaN too
        q = builder.select(pos, _fmax(builder, q, _fconst((bias + 1) << 20)), low)
    one = ir.Constant(_F32, 1.0)
    q = builder.select(builder.fcmp_ordered("<", q, one), q, one)   # NaN, inf, > 1: 1
    r = builder.lshr(builder.add(builder.bitcast(q, _I32), _c32(1 << 19)), _c32(20))
    code = builder.sub(r, _c32(bias))
    if signed:  # negated where x's sign bit is set: (code ^ s) - s, s = 0 or -1
        sign = builder.ashr(builder.bitcast(x, _I32), _c32(31))
        code = builder.sub(builder.xor(code, sign), sign)
    return builder.trunc(code, _I8)


def encode_intrinsic(typingctx, x, inv, codes):
    """``q8_encode(float32 x, float32 1/scale, codes)`` -> the code of ``x``,
    signed (int8) or unsigned (uint8) as the array ``codes`` it goes into."""
    if x != types.float32 or inv != types.float32 or not (
            isinstance(codes, types.Array) and codes.dtype in (types.int8, types.uint8)):
        return None
    signed = codes.dtype == types.int8

    def codegen(context, builder, signature, args):
        return _encode(builder, args[0], args[1], signed)

    return codes.dtype(x, inv, codes), codegen


def abs_bits_intrinsic(typingctx, x):
    """``abs_bits(float32)`` -> int32: the bits of ``|x|``, which order as the
    magnitudes do (NaN and inf above every finite value)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.and_(builder.bitcast(args[0], _I32), _c32(0x7FFFFFFF))

    return types.int32(x), codegen


def scale_of_intrinsic(typingctx, bits):
    """``scale_of(int32 bits)`` -> float32: the magnitude with these bits, or
    NaN when they are inf's or a NaN's (a block's scale)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        b = args[0]
        if b.type.width > 32:
            b = builder.trunc(b, _I32)
        bad = builder.icmp_signed(">=", b, _c32(0x7F800000))
        return builder.bitcast(builder.select(bad, _c32(0x7FC00000), b), _F32)

    return types.float32(bits), codegen


q8_decode = intrinsic(decode_intrinsic)
q8_encode = intrinsic(encode_intrinsic)
abs_bits = intrinsic(abs_bits_intrinsic)
scale_of = intrinsic(scale_of_intrinsic)
