"""CUDA kernels of the cuda backend, written with numba-cuda.

Importing this module imports ``numba.cuda`` (from the numba-cuda package) and
defines the kernels; nothing is compiled until a kernel is first launched.
:mod:`fastopt.backends.cuda_backend` launches them; the PTX check
(``tests/test_cuda_ptx.py``) compiles every one of them with
``numba.cuda.compile_ptx`` from :func:`ptx_signatures`.

Multi-tensor apply, as in the Numba CPU backend: one launch updates a whole
group of tensors.  The launch receives a table of device pointers (one column
per tensor: parameter, then slots; the gradients in a separate vector, 0 for a
skipped tensor) and a table of chunks (tensor, start, stop).  Each block walks
the chunks ``blockIdx.x, blockIdx.x + gridDim.x, ...`` (a grid-stride loop over
chunks) and its threads walk a chunk's elements ``start + threadIdx.x, ... +
blockDim.x`` (coalesced).  A pointer becomes an array view on the device
(:func:`_view`); under the CUDA simulator, where "device" memory is host memory,
the same address becomes a NumPy view instead.

No update rule is written here.  Each rule's step kernel is generated from its
declaration in :mod:`fastopt.algorithms` (:func:`render`, :func:`step_kernel`):
the rule's ``element`` function, rendered by
:func:`fastopt._codegen.python_lines`, is the body of the kernel's element
loop, exactly as in the Numba CPU loops (``numba_backend.LOOP_TEMPLATE``), in
the tensor's dtype, with the per-step scalars packed on the host by
:meth:`fastopt.rule.Rule.pack` and rounded to the dtype once per thread.  The
element language's calls are the helpers below (``_sqrt``, ``_fmax`` ...), with
the Numba CPU backend's semantics (a NaN wins ``_fmax``/``_fmin``).  The
8-bit-state kernels (``step_q8_<rule>``, :func:`render_q8`) add the codes'
helpers ``_q8_decode``, ``_q8_encode``, ``_abs_bits`` and ``_scale_of``: on
the device :mod:`fastopt.backends.numba_q8`'s LLVM IR, the CPU kernels' own.  Under the
simulator they are NumPy functions of NumPy scalars, so the simulated kernels
do the same IEEE operations in the same order as the Numba loops.  (On a GPU,
NVVM may contract a multiply and an add into one fused multiply-add, as nvcc
does by default; that removes a rounding, within the tolerances the tests
state.)
"""
from __future__ import annotations

import ctypes
import math

import numpy as np
from numba import cuda
from numba.cuda import types

from .. import _codegen
from ..reference import Q8_BIAS, Q8_BLOCK, Q8_TOP
from ..rule import RULES

#: True when Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) stands in for a GPU.
SIMULATOR = bool(cuda.config.ENABLE_CUDASIM)


def _sign(x):
    """-1 or 1, and ``x`` itself for a zero or a NaN: ``np.sign`` as Numba
    compiles it in the CPU loops (a zero keeps its sign; NumPy's gives +0)."""
    return x if x == 0 else np.sign(x)


if SIMULATOR:
    def jitable(fn):
        """Device helpers run as plain Python inside simulated kernels."""
        return fn

    def _view(addr, n, like):
        """The ``n`` elements at address ``addr`` (simulated device memory is
        host memory), typed like ``like``."""
        dtype = like.dtype
        buf = (ctypes.c_byte * (int(n) * dtype.itemsize)).from_address(int(addr))
        return np.frombuffer(buf, dtype)

    # The element language's calls on NumPy scalars: the dtype in, the same
    # dtype out, as in the Numba CPU loops (NaN below zero for _sqrt).
    _sqrt = np.sqrt
    _copysign = np.copysign
    _pow = np.power

    # The 8-bit codes' intrinsics (fastopt.backends.numba_q8) as bit
    # manipulation of NumPy scalars, following fastopt.reference.q8_encode
    # and q8_decode operation for operation.
    def _q8_decode(code, scale):
        """The float32 value of one int8 (signed) or uint8 code."""
        c = int(code)
        mag = abs(c)
        if mag == 0:
            q = np.float32(0.0)
        else:
            q = np.uint32((mag + Q8_BIAS[code.dtype == np.int8]) << 20).view(np.float32)
            if c < 0:
                q = -q
        return q * scale

    def _q8_encode(x, inv, codes):
        """The code of the float32 ``x`` given ``1/scale``, signed or not as
        the array ``codes`` it goes into."""
        signed = codes.dtype == np.int8
        q = np.abs(np.float32(x)) * inv
        r = (int(q.view(np.uint32)) + (1 << 19)) >> 20
        code = min(max(r - Q8_BIAS[signed], 0), Q8_TOP[signed])
        if not signed and code == 0 and q > 0:
            code = 1
        if signed and np.signbit(x):
            code = -code
        return code

    def _abs_bits(x):
        """The bits of ``|x|`` (float32) as an integer."""
        return int(np.float32(x).view(np.uint32)) & 0x7FFFFFFF

    def _scale_of(bits):
        """The float32 with these bits, or NaN for inf's and NaNs'."""
        if bits >= 0x7F800000:
            return np.float32(np.nan)
        return np.uint32(bits).view(np.float32)
else:
    from numba.cuda.extending import intrinsic, overload, register_jitable as jitable
    from numba.cuda.np.numpy_support import as_dtype, carray

    from . import numba_q8
    from ._numba_util import pointer_intrinsic

    _as_ptr = intrinsic(pointer_intrinsic)
    # the CPU kernels' LLVM IR, wrapped for the GPU
    _q8_decode = intrinsic(numba_q8.decode_intrinsic)
    _q8_encode = intrinsic(numba_q8.encode_intrinsic)
    _abs_bits = intrinsic(numba_q8.abs_bits_intrinsic)
    _scale_of = intrinsic(numba_q8.scale_of_intrinsic)

    @cuda.jit(device=True, inline="always")
    def _view(addr, n, like):
        return carray(_as_ptr(addr, like), n)

    # numba-cuda types these for float32 (float32 in, float32 out) and float64
    _sqrt = math.sqrt
    _copysign = math.copysign
    _pow = math.pow

    @overload(_sign)
    def _sign_device(x):
        # numba-cuda has no np.sign; the constants take x's type (a float
        # literal would be float64 and promote float32 code)
        real = as_dtype(x).type

        def impl(x):
            if x > 0:
                return real(1.0)
            if x < 0:
                return real(-1.0)
            return x

        return impl


# ---------------------------------------------------------------------------
# The rest of the element language's calls (fastopt._codegen.PY_CALLS), and
# the gradient transform, as device functions (plain Python on the simulator).

_abs = jitable(_codegen.fabs)
_fmax = jitable(_codegen.fmax)  # np.maximum: a NaN wins, a tie returns the first
_fmin = jitable(_codegen.fmin)


@jitable
def _grad(g, pi, gs, clip, l2):
    # scale, then clamp (NaN stays NaN), then coupled weight decay
    x = g * gs
    if x > clip:
        x = clip
    elif x < -clip:
        x = -clip
    if l2 != 0:
        x += l2 * pi
    return x


# ---------------------------------------------------------------------------
# Generated step kernels.  ``kernel(ptrs, gptrs, table, pt, like, hp)``:
# ``ptrs`` (int64, rows: parameter, then each slot; one column per tensor),
# ``gptrs`` (int64, the gradients' pointers, 0 = skip the tensor),
# ``table`` (int64, rows tensor, start, stop; one column per chunk),
# ``pt`` (float64, rows gradient scale, keep, l2; one column per tensor),
# ``like`` (an empty array of the tensors' dtype) and ``hp`` (the float64
# tuple ``rule.pack(scalars, clipvalue)``: clipvalue, then the prepared
# scalars in ``rule.prepared`` order).  Every name of the element function is
# prefixed ``e_``, so it cannot clash with the template's own locals.

STEP_TEMPLATE = """\
def {fname}(ptrs, gptrs, table, pt, like, hp{ema_args}):
    dt = like.dtype.type
    clip = dt(hp[0])
{scalars}
{ema_init}
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for c in range(cuda.blockIdx.x, table.shape[1], cuda.gridDim.x):
        t = table[0, c]
        if gptrs[t] != 0:
            e = table[2, c]
            p = _view(ptrs[0, t], e, like)
            g = _view(gptrs[t], e, like)
{views}
{ema_view}
            gs = dt(pt[0, t])
            kp = dt(pt[1, t])
            l2 = dt(pt[2, t])
{us}
            for i in range(table[1, c] + tid, e, nt):
                pi = p[i]
                e_g = _grad(g[i], pi, gs, clip, l2)
                e_w = pi * kp
{w_in}
{loads}
{body}
{stores}
{store_p}
{no_grad}
"""

# ``step_ema_<rule>`` (use_ema): the same kernel with two more arguments,
# ``eptrs`` (int64, the moving averages' pointers, one per tensor) and the
# weights ``em`` and ``em1 = 1 - em`` (float64, from the host), which moves
# each average towards the new parameter value as it is stored --
# ``ea = dt(em)*ea + dt(em1)*w``, NumPy's ``ea[...] = em*ea + (1-em)*p`` --
# and the averages of tensors without a gradient towards their parameters.
EMA_NO_GRAD = """\
        else:
            e = table[2, c]
            p = _view(ptrs[0, t], e, like)
            ea = _view(eptrs[t], e, like)
            for i in range(table[1, c] + tid, e, nt):
                ea[i] = ema_a * ea[i] + ema_b * p[i]"""

# A two_phase rule's first pass (fastopt.two_phase): the element function
# without stores, each reduction summed per chunk as sumsq_chunks sums (a
# strided share per thread, then a tree over the block in dynamic shared
# memory, ``blockDim.x`` float64 per reduction); ``partial`` has one row per
# reduction, one column per chunk; sumsq_tensors then adds each row's chunks
# per tensor in chunk order.
REDUCE_TEMPLATE = """\
def reduce_{name}(ptrs, gptrs, table, pt, like, hp, partial):
    buf = cuda.shared.array(0, types.float64)
    dt = like.dtype.type
    clip = dt(hp[0])
{scalars}
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for c in range(cuda.blockIdx.x, table.shape[1], cuda.gridDim.x):
        t = table[0, c]
{acc_init}
        if gptrs[t] != 0:
            e = table[2, c]
            p = _view(ptrs[0, t], e, like)
            g = _view(gptrs[t], e, like)
{views}
            gs = dt(pt[0, t])
            kp = dt(pt[1, t])
            l2 = dt(pt[2, t])
            for i in range(table[1, c] + tid, e, nt):
                pi = p[i]
                e_g = _grad(g[i], pi, gs, clip, l2)
                e_w = pi * kp
                w_in = e_w
{loads}
{body}
{accumulate}
{acc_store}
        cuda.syncthreads()
        k = nt // 2
        while k > 0:
            if tid < k:
{tree}
            cuda.syncthreads()
            k //= 2
        if tid == 0:
{partial}
        cuda.syncthreads()
"""


def render(rule, ema=False):
    """The Python source of ``rule``'s step kernel (before ``cuda.jit``);
    ``ema``: its ``step_ema_<rule>`` twin."""
    fn = rule.element_ast
    names = ["g", "w", *rule.slots, *rule.prepared, *_codegen.assigned_names(fn)]
    rename = {n: "e_" + n for n in names}
    store_w = "w_in + us * (e_w - w_in)" if rule.two_phase else "e_w"
    if ema:
        store_p = (f"                ema_w = {store_w}\n                p[i] = ema_w\n"
                   "                ea[i] = ema_a * ea[i] + ema_b * ema_w")
    else:
        store_p = f"                p[i] = {store_w}"
    src = STEP_TEMPLATE.format(
        fname=("step_ema_" if ema else "step_") + rule.name,
        ema_args=", eptrs, em, em1" if ema else "",
        ema_init="    ema_a = dt(em)\n    ema_b = dt(em1)" if ema else "",
        ema_view="            ea = _view(eptrs[t], e, like)" if ema else "",
        store_p=store_p, no_grad=EMA_NO_GRAD if ema else "",
        scalars="\n".join(f"    e_{n} = dt(hp[{j + 1}])" for j, n in enumerate(rule.prepared)),
        views="\n".join(f"            s{j} = _view(ptrs[{1 + j}, t], e, like)"
                        for j in range(len(rule.slots))),
        loads="\n".join(f"                e_{n} = s{j}[i]" for j, n in enumerate(rule.slots)),
        body="\n".join(_codegen.python_lines(fn, rename, 4)),
        stores="\n".join(f"                s{j}[i] = e_{n}" for j, n in enumerate(rule.slots)),
        # two_phase: the displacement times the tensor's update scale (pt row 3)
        us="            us = dt(pt[3, t])" if rule.two_phase else "",
        w_in="                w_in = e_w" if rule.two_phase else "")
    return "".join(line + "\n" for line in src.splitlines() if line.strip())


# ``step_q8_<rule>``: the step of a rule whose slots are kept in 8 bits
# (``state_dtype="int8"``; fastopt.backends._q8), float32 tensors.  The
# table's chunks are the quantization blocks (Q8_BLOCK elements, a tensor's
# last one shorter); one CUDA block updates one quantization block at a time
# (a grid-stride loop over them), its threads (a power of two, at most
# Q8_BLOCK) walking the block's elements.  Arguments as the step kernel's,
# with ``ptrs`` rows parameter, each slot's codes, then each slot's scales,
# and ``i8``/``u8`` empty int8/uint8 arrays that type the codes' views.
#
# One pass over memory: each element's codes are decoded with the block's
# old scale, the rule's element function runs in float32, the parameter is
# stored, and the new slot values are kept in dynamic shared memory (a
# float32 row of Q8_BLOCK per slot; a thread reads back only the values it
# wrote) while each thread keeps the largest bits of |value| it saw.  A tree
# over the block's threads (int32, in the same dynamic shared memory after
# the rows: all dynamic shared arrays start at one address) gives each slot
# the block's largest magnitude, its new scale (NaN if a value is inf or
# NaN), from which every thread encodes its values; thread 0 stores the
# scale.  The same steps as numba_int8's drivers, in the same float32
# operations: the same bits.  ``gptrs[t]`` is the same for all of a block's
# threads, so every thread meets every syncthreads.
Q8_TEMPLATE = """\
def step_q8_{name}(ptrs, gptrs, table, pt, like, i8, u8, hp):
    buf = cuda.shared.array(0, types.float32)
    red = cuda.shared.array(0, types.int32)
    dt = like.dtype.type
    clip = dt(hp[0])
{scalars}
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for c in range(cuda.blockIdx.x, table.shape[1], cuda.gridDim.x):
        t = table[0, c]
        if gptrs[t] != 0:
            s = table[1, c]
            e = table[2, c]
            blk = s // {block}
            p = _view(ptrs[0, t], e, like)
            g = _view(gptrs[t], e, like)
{views}
            gs = dt(pt[0, t])
            kp = dt(pt[1, t])
            l2 = dt(pt[2, t])
{tops}
            for i in range(s + tid, e, nt):
                pi = p[i]
                e_g = _grad(g[i], pi, gs, clip, l2)
                e_w = pi * kp
{loads}
{body}
{stores}
                p[i] = e_w
{reduce_in}
            cuda.syncthreads()
            h = nt // 2
            while h > 0:
                if tid < h:
{tree}
                cuda.syncthreads()
                h //= 2
{encode}
            cuda.syncthreads()
"""


def render_q8(rule):
    """The Python source of ``rule``'s 8-bit-state step kernel
    (``step_q8_<rule>``, before ``cuda.jit``)."""
    fn = rule.element_ast
    names = ["g", "w", *rule.slots, *rule.prepared, *_codegen.assigned_names(fn)]
    rename = {n: "e_" + n for n in names}
    k = len(rule.slots)
    signed = [name not in rule.nonnegative for name in rule.slots]
    base = k * Q8_BLOCK  # the int32 tree's first index, after the float32 rows
    views, tops, loads, stores, reduce_in, tree, encode = [], [], [], [], [], [], []
    for j, name in enumerate(rule.slots):
        like = "i8" if signed[j] else "u8"
        views += [f"            c{j} = _view(ptrs[{1 + j}, t], e, {like})",
                  f"            q{j} = _view(ptrs[{1 + k + j}, t], blk + 1, like)",
                  f"            old{j} = q{j}[blk]"]
        tops.append(f"            top{j} = np.int32(0)")
        loads.append(f"                e_{name} = _q8_decode(c{j}[i], old{j})")
        stores += [f"                buf[{j * Q8_BLOCK} + i - s] = e_{name}",
                   f"                b{j} = _abs_bits(e_{name})",
                   f"                if b{j} > top{j}:",
                   f"                    top{j} = b{j}"]
        reduce_in.append(f"            red[{base} + {j} * nt + tid] = top{j}")
        tree += [f"                    b{j} = red[{base} + {j} * nt + tid + h]",
                 f"                    if b{j} > red[{base} + {j} * nt + tid]:",
                 f"                        red[{base} + {j} * nt + tid] = b{j}"]
        encode += [f"            new{j} = _scale_of(red[{base} + {j} * nt])",
                   f"            inv{j} = dt(0.0)",
                   f"            if new{j} != 0:",
                   f"                inv{j} = dt(1.0) / new{j}",
                   f"            for i in range(s + tid, e, nt):",
                   f"                c{j}[i] = _q8_encode(buf[{j * Q8_BLOCK} + i - s], "
                   f"inv{j}, c{j})",
                   f"            if tid == 0:",
                   f"                q{j}[blk] = new{j}"]
    src = Q8_TEMPLATE.format(
        name=rule.name, block=Q8_BLOCK,
        scalars="\n".join(f"    e_{n} = dt(hp[{j + 1}])" for j, n in enumerate(rule.prepared)),
        views="\n".join(views), tops="\n".join(tops), loads="\n".join(loads),
        body="\n".join(_codegen.python_lines(fn, rename, 4)), stores="\n".join(stores),
        reduce_in="\n".join(reduce_in), tree="\n".join(tree), encode="\n".join(encode))
    return "".join(line + "\n" for line in src.splitlines() if line.strip())


def q8_shared_bytes(rule, threads):
    """Bytes of dynamic shared memory of ``rule``'s ``step_q8_`` kernel at
    ``threads`` threads per block: a float32 row of Q8_BLOCK and an int32
    per thread, per slot."""
    return 4 * len(rule.slots) * (Q8_BLOCK + threads)


_Q8_STEPS = {}


def q8_kernel(rule):
    """The 8-bit-state step kernel of ``rule`` (once per rule per process)."""
    kernel = _Q8_STEPS.get(rule.name)
    if kernel is None:
        kernel = _Q8_STEPS[rule.name] = cuda.jit(
            _as_function(render_q8(rule), "step_q8_" + rule.name))
    return kernel


def render_reduce(rule):
    """The Python source of a two_phase ``rule``'s reduce kernel."""
    fn = rule.element_ast
    names = ["g", "w", *rule.slots, *rule.prepared, *_codegen.assigned_names(fn)]
    rename = {n: "e_" + n for n in names}
    quantity = [_codegen.ELEMENT_REDUCTIONS[r].format(w="e_w", w_in="w_in")
                for r in rule.reductions]
    k = len(quantity)
    src = REDUCE_TEMPLATE.format(
        name=rule.name,
        scalars="\n".join(f"    e_{n} = dt(hp[{j + 1}])" for j, n in enumerate(rule.prepared)),
        acc_init="\n".join(f"        r{j} = 0.0" for j in range(k)),
        views="\n".join(f"            s{j} = _view(ptrs[{1 + j}, t], e, like)"
                        for j in range(len(rule.slots))),
        loads="\n".join(f"                e_{n} = s{j}[i]" for j, n in enumerate(rule.slots)),
        body="\n".join(_codegen.python_lines(fn, rename, 4)),
        accumulate="\n".join(f"                x{j} = np.float64({q})\n"
                             f"                r{j} += x{j} * x{j}"
                             for j, q in enumerate(quantity)),
        acc_store="\n".join(f"        buf[{j} * nt + tid] = r{j}" for j in range(k)),
        tree="\n".join(f"                buf[{j} * nt + tid] += buf[{j} * nt + tid + k]"
                        for j in range(k)),
        partial="\n".join(f"            partial[{j}, c] = buf[{j} * nt]" for j in range(k)))
    return "".join(line + "\n" for line in src.splitlines() if line.strip())


def reduce_function(rule):
    """A two_phase ``rule``'s reduce kernel as a Python function."""
    return _as_function(render_reduce(rule), "reduce_" + rule.name)


_REDUCES = {}


def reduce_kernel(rule):
    """The reduce kernel of a two_phase ``rule`` (once per rule per process)."""
    kernel = _REDUCES.get(rule.name)
    if kernel is None:
        kernel = _REDUCES[rule.name] = cuda.jit(reduce_function(rule))
    return kernel


def step_function(rule, ema=False):
    """``rule``'s step kernel (``ema``: its ``step_ema_`` twin) as a Python
    function (what ``cuda.jit`` compiles), executed as if written in this
    file, with this module's helpers as its globals."""
    return _as_function(render(rule, ema), ("step_ema_" if ema else "step_") + rule.name)


def _as_function(source, name):
    """The function ``name`` defined by ``source``, executed as if written in
    this file (this module's helpers as its globals), its source attached."""
    ns = dict(globals())
    exec(compile(source, __file__, "exec"), ns)  # noqa: S102 - our own rendered rules
    fn = ns[name]
    fn.source = source
    return fn


_STEPS = {}


def step_kernel(rule, ema=False):
    """The step kernel of ``rule`` (``ema``: its ``step_ema_`` twin; generated
    and wrapped on first use, once per rule per process; compiled by
    numba-cuda at its first launch)."""
    key = (rule.name, ema)
    kernel = _STEPS.get(key)
    if kernel is None:
        kernel = _STEPS[key] = cuda.jit(step_function(rule, ema))
    return kernel


# ---------------------------------------------------------------------------
# Sums of squares for clipping by norm, on the device: one float64 partial sum
# per chunk (each thread sums a strided share of the chunk, then a tree over
# the block's threads in shared memory; blockDim.x must be a power of two),
# then one thread per tensor adds its chunks' partials in chunk order.  The
# order is fixed, so the result depends on the chunk size and the threads per
# block, never on the grid size or on timing.
#
# The shared buffer is dynamic shared memory (``blockDim.x`` float64, sized at
# launch): the simulator hands every thread the same dynamic buffer, whereas
# its lookup of a static ``cuda.shared.array`` has no lock, so two threads can
# get separate arrays (seen here as wrong norms, now and then).

@cuda.jit
def sumsq_chunks(gptrs, table, like, partial):
    buf = cuda.shared.array(0, types.float64)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for c in range(cuda.blockIdx.x, table.shape[1], cuda.gridDim.x):
        t = table[0, c]
        acc = 0.0
        if gptrs[t] != 0:
            e = table[2, c]
            g = _view(gptrs[t], e, like)
            for i in range(table[1, c] + tid, e, nt):
                x = np.float64(g[i])
                acc += x * x
        buf[tid] = acc
        cuda.syncthreads()
        k = nt // 2
        while k > 0:
            if tid < k:
                buf[tid] += buf[tid + k]
            cuda.syncthreads()
            k //= 2
        if tid == 0:
            partial[c] = buf[0]
        cuda.syncthreads()


@cuda.jit
def sumsq_tensors(first, partial, out):
    # first[t]: the tensor's first chunk; first[n]: the number of chunks
    for t in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        s = 0.0
        for c in range(first[t], first[t + 1]):
            s += partial[c]
        out[t] = s


# ---------------------------------------------------------------------------
# Element-wise helpers for what the optimizer does outside its kernels with
# device parameters (moving averages, gradient accumulation): the same
# operations as the NumPy expressions in fastopt.buffers.HostArrays, in the
# array's dtype, one in-place pass (no temporary) per tensor per launch.

@cuda.jit
def lerp(y, x, a, b):
    """``y = a*y + b*x`` (``a``, ``b`` rounded to the dtype first)."""
    dt = y.dtype.type
    a_ = dt(a)
    b_ = dt(b)
    for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        y[i] = a_ * y[i] + b_ * x[i]


@cuda.jit
def add_scaled(y, x, s):
    """``y = y + x*s``."""
    s_ = y.dtype.type(s)
    for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        y[i] = y[i] + x[i] * s_


@cuda.jit
def add_mean(y, x, s, k):
    """``y = (y + x*s) / k``: the last call of an accumulation cycle."""
    s_ = y.dtype.type(s)
    k_ = y.dtype.type(k)
    for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        y[i] = (y[i] + x[i] * s_) / k_


@cuda.jit
def fill(y, value):
    """``y = value``."""
    v = y.dtype.type(value)
    for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        y[i] = v


def ptx_signatures():
    """``(name, python function, argument types)`` of every kernel above, for
    float32 and float64 -- the step kernel of every rule of
    :data:`fastopt.rule.RULES` and the helpers -- and the 8-bit-state step
    kernel (float32) of every rule that keeps such state: what the PTX check
    compiles."""
    from numba.cuda import types as nt

    out = []
    for dt in (nt.float32, nt.float64):
        arr, i64, f64 = dt[::1], nt.int64[::1], nt.float64[::1]
        i64_2d, f64_2d = nt.int64[:, ::1], nt.float64[:, ::1]
        for rule in RULES.values():
            hp = nt.UniTuple(nt.float64, 1 + len(rule.prepared))
            out.append((f"step_{rule.name}[{dt}]", step_kernel(rule).py_func,
                        (i64_2d, i64, i64_2d, f64_2d, arr, hp)))
            out.append((f"step_ema_{rule.name}[{dt}]", step_kernel(rule, True).py_func,
                        (i64_2d, i64, i64_2d, f64_2d, arr, hp, i64, nt.float64, nt.float64)))
            if rule.two_phase:
                out.append((f"reduce_{rule.name}[{dt}]", reduce_kernel(rule).py_func,
                            (i64_2d, i64, i64_2d, f64_2d, arr, hp, f64_2d)))
        out += [
            (f"sumsq_chunks[{dt}]", sumsq_chunks.py_func, (i64, i64_2d, arr, f64)),
            (f"lerp[{dt}]", lerp.py_func, (arr, arr, nt.float64, nt.float64)),
            (f"add_scaled[{dt}]", add_scaled.py_func, (arr, arr, nt.float64)),
            (f"add_mean[{dt}]", add_mean.py_func, (arr, arr, nt.float64, nt.float64)),
            (f"fill[{dt}]", fill.py_func, (arr, nt.float64)),
        ]
    out.append(("sumsq_tensors", sumsq_tensors.py_func, (nt.int64[::1], nt.float64[::1],
                                                         nt.float64[::1])))
    # 8-bit state: float32 tensors, the rules that keep it; int8/uint8 fill
    # (fastopt.buffers allocates the codes with it)
    from ._q8 import refusal

    i64_2d, f64_2d = nt.int64[:, ::1], nt.float64[:, ::1]
    for rule in RULES.values():
        if refusal(rule) is None:
            hp = nt.UniTuple(nt.float64, 1 + len(rule.prepared))
            out.append((f"step_q8_{rule.name}[float32]", q8_kernel(rule).py_func,
                        (i64_2d, nt.int64[::1], i64_2d, f64_2d, nt.float32[::1],
                         nt.int8[::1], nt.uint8[::1], hp)))
    out += [(f"fill[{dt}]", fill.py_func, (dt[::1], nt.float64))
            for dt in (nt.int8, nt.uint8)]
    return out
