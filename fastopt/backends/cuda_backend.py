"""CUDA backend: fused multi-tensor kernels on an NVIDIA GPU, with numba-cuda.

Parameters, gradients and optimizer state stay on the device.  A step of one
optimizer over a whole group of same-dtype tensors is **one kernel launch**,
whatever the number of tensors (multi-tensor apply, see
:mod:`fastopt.backends._cuda_kernels`): the launch reads a device table of the
tensors' pointers, so the tensors can be separate allocations (PyTorch
parameters, CuPy arrays, Numba device arrays) and nothing is packed or copied.
The table of parameter and slot pointers is uploaded once, when the plan is
built; the gradients' pointers and the per-tensor factors are uploaded only
when they change (so a training loop that reuses its gradient buffers uploads
nothing per step), and the per-step constants travel as kernel arguments.

Clipping by norm sums the squares of every gradient on the device (two
launches: a float64 partial sum per chunk, then per tensor in chunk order);
only the per-tensor sums, one float64 each, come back to the host, which
computes the clip factors as on the CPU backends.

8-bit optimizer state (``state_dtype="int8"``) has its own plan,
:class:`Int8Plan`: one launch of the rule's ``step_q8_`` kernel per step.

Accepted arrays: Numba device arrays and any object with
``__cuda_array_interface__`` (CuPy arrays, PyTorch CUDA tensors -- detached,
since PyTorch refuses the interface on tensors that require grad), used as
zero-copy views.  Kernels run on the default stream.

This module imports only if numba-cuda is installed and a CUDA GPU is usable
here, or Numba's CUDA simulator is switched on (``NUMBA_ENABLE_CUDASIM=1``,
set before Numba is first imported; slow, for tests).  Otherwise importing it
raises ``ImportError`` and the backend is absent from
:func:`fastopt.available_backends`.

Launch geometry is read from the module attributes :data:`THREADS_PER_BLOCK`,
:data:`CHUNK` and :data:`MAX_BLOCKS` when a plan is built and at each launch;
tests set them small for the simulator.
"""
from __future__ import annotations

import functools
import math
import warnings

import numpy as np

try:
    import numba_cuda  # noqa: F401  (numba's own deprecated numba.cuda is not enough)
except ImportError as exc:
    raise ImportError("numba-cuda is not installed") from exc

from numba import cuda
from numba.cuda.core.errors import NumbaPerformanceWarning

from ..rule import RULES
from . import _contract, _q8
from ._contract import is_device_array
from . import _cuda_kernels as _k
from .numba_backend import chunk_table

NAME = "cuda"
SIMULATOR = _k.SIMULATOR

if not SIMULATOR and not cuda.is_available():
    raise ImportError("numba-cuda found no usable CUDA GPU (numba.cuda.is_available() is "
                      "False: no NVIDIA GPU or driver here)")

#: Threads per block of every launch: a power of two, at most 1024.
THREADS_PER_BLOCK = 256
_MAX_THREADS = 1024  # CUDA's limit
#: Elements per chunk, the unit of work of one block in a step.
CHUNK = 16384
#: Most blocks per launch; more chunks than this are walked by a grid-stride loop.
MAX_BLOCKS = 65535


def _threads():
    n = THREADS_PER_BLOCK
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= _MAX_THREADS \
            or n & (n - 1):
        raise ValueError(f"cuda_backend.THREADS_PER_BLOCK must be a power of two from 1 to "
                         f"{_MAX_THREADS}, got {n!r}")
    return n


def _launch(kernel, blocks, *args, shared=0, threads=None):
    """Every kernel launch of this backend goes through here; ``shared``:
    bytes of dynamic shared memory per thread; ``threads``: threads per
    block, :data:`THREADS_PER_BLOCK` if None."""
    if blocks > 0:
        threads = _threads() if threads is None else threads
        _configured(kernel, min(blocks, MAX_BLOCKS), threads, shared * threads)(*args)


@functools.lru_cache(maxsize=1024)
def _gpu_launcher(kernel, grid, threads, shared):
    # Small steps launch small grids on purpose; numba-cuda warns about any
    # grid under 128 blocks when a launch is configured, so configure each
    # (kernel, grid) once, quietly, and reuse it (which also saves the
    # configuration's cost on every step).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumbaPerformanceWarning)
        return kernel[grid, threads, 0, shared]


def _configured(kernel, grid, threads, shared):
    if SIMULATOR:  # the simulator's kernel[...] sets the grid on the kernel itself
        return kernel[grid, threads, 0, shared]
    return _gpu_launcher(kernel, grid, threads, shared)


def _launch_elementwise(kernel, y, *args):
    n = y.shape[0]
    tpb = _threads()
    _launch(kernel, (n + tpb - 1) // tpb, y, *args)


# ---------------------------------------------------------------------------
# Device arrays: recognising them, viewing foreign ones, reading their pointer.

def as_device(obj):
    """A Numba device array viewing ``obj``'s memory (no copy)."""
    if getattr(obj, "__cuda_ndarray__", False):
        return obj
    if not SIMULATOR:
        return cuda.as_cuda_array(obj, sync=False)
    return _simulated_view(obj.__cuda_array_interface__)


def _simulated_view(cai):
    # Under the simulator, device memory is host memory: a foreign object's
    # interface points at host bytes, which the simulator's arrays wrap.  Only
    # called on arrays already checked to be C-contiguous.
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    dtype = np.dtype(cai["typestr"])
    shape = tuple(cai["shape"])
    size = int(np.prod(shape, dtype=np.int64))
    flat = _k._view(cai["data"][0], size, np.empty(0, dtype)) if size else np.empty(0, dtype)
    return FakeCUDAArray(flat.reshape(shape))


def describe(obj):
    """``(pointer, shape, dtype, c_contiguous, readonly)`` of a device array."""
    if SIMULATOR and getattr(obj, "__cuda_ndarray__", False):
        a = obj._ary
        return (a.__array_interface__["data"][0], a.shape, a.dtype, a.flags.c_contiguous,
                not a.flags.writeable)
    cai = obj.__cuda_array_interface__
    shape = tuple(cai["shape"])
    dtype = np.dtype(cai["typestr"])
    strides = cai.get("strides")
    contiguous = strides is None or _c_strides(shape, dtype.itemsize) == tuple(strides)
    return cai["data"][0], shape, dtype, contiguous, bool(cai["data"][1])


def _c_strides(shape, itemsize):
    out, step = [], itemsize
    for n in reversed(shape):
        out.append(step)
        step *= n
    return tuple(reversed(out))


def pointer(obj):
    """The device address of ``obj``'s first element (0 for ``None``)."""
    if obj is None:
        return 0
    if SIMULATOR and getattr(obj, "__cuda_ndarray__", False):
        return obj._ary.__array_interface__["data"][0]
    return obj.__cuda_array_interface__["data"][0]


# ---------------------------------------------------------------------------
# The plan

class Plan(_contract.Plan):
    """Prepared multi-tensor step for one group of same-dtype device tensors.

    ``params`` and ``slots`` are 1-D device arrays (Numba device arrays, or
    objects with ``__cuda_array_interface__``); ``step`` and ``sumsq`` take
    the gradients as device arrays too (``None`` skips a tensor).
    """

    def __init__(self, rule, params, slots):
        params = [as_device(p) for p in params]
        slots = [[as_device(s) for s in row] for row in slots]
        super().__init__(rule, params, slots)
        n = len(params)
        self._kernel = _k.step_kernel(rule)
        sizes = [p.size for p in params]
        table = chunk_table(sizes, CHUNK)
        counts = np.bincount(table[0], minlength=n) if table.shape[1] else np.zeros(n, int)
        first = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        ptrs = np.array([[pointer(a) for a in row] for row in [params, *slots]],
                        dtype=np.int64).reshape(1 + len(slots), n)
        self._nchunks = table.shape[1]
        self._ntensors = n
        self._ptrs = cuda.to_device(ptrs)
        self._table = cuda.to_device(np.ascontiguousarray(table, dtype=np.int64))
        self._first = cuda.to_device(first)
        self._like = cuda.device_array(0, dtype=self.dtype)
        self._partial = cuda.device_array(max(self._nchunks, 1), dtype=np.float64)
        self._norms = cuda.device_array(max(n, 1), dtype=np.float64)
        # what the device holds now; re-uploaded only when it changes
        self._gptrs_host = np.zeros(n, dtype=np.int64)
        self._gptrs = cuda.to_device(self._gptrs_host)
        rows = 4 if rule.two_phase else 3  # a two_phase rule's update scale
        self._pt_host = np.full((rows, n), np.nan)
        self._pt = cuda.to_device(np.zeros((rows, n)))
        if rule.two_phase:
            self._reduce_kernel = _k.reduce_kernel(rule)
            self._nred = len(rule.reductions)
            self._rpartial = cuda.device_array((self._nred, max(self._nchunks, 1)),
                                               dtype=np.float64)
            self._rsums = cuda.device_array((self._nred, max(n, 1)), dtype=np.float64)

    #: :meth:`attach_ema` and :meth:`step_ema` fold the moving average into
    #: the step kernel (``step_ema_<rule>``)
    fuses_ema = True

    def attach_ema(self, averages):
        """Keep the device addresses of ``averages`` (one C-contiguous device
        array per tensor, of its size and dtype, alive as long as the plan)
        for :meth:`step_ema`."""
        averages = [as_device(a) for a in averages]
        if len(averages) != len(self.params) or any(
                a.size != p.size or np.dtype(a.dtype) != np.dtype(p.dtype)
                for a, p in zip(averages, self.params)):
            raise ValueError("attach_ema: one average per tensor, of its size and dtype")
        self._averages = averages  # kept alive with the plan
        self._eptrs = cuda.to_device(np.array([pointer(a) for a in averages], dtype=np.int64))
        self._ema_kernel = _k.step_kernel(self.rule, ema=True)

    def step_ema(self, grads, pt, scalars, clipvalue, momentum):
        """:meth:`step` and ``ema <- m*ema + (1-m)*param`` on every tensor (a
        None gradient's too) in the same launch: the averages of
        :meth:`attach_ema`."""
        hp = tuple(map(float, self.rule.pack(scalars, clipvalue)))
        self._set_grads(grads)
        self._upload_pt(pt)
        m = float(momentum)
        _launch(self._ema_kernel, self._nchunks, self._ptrs, self._gptrs, self._table,
                self._pt, self._like, hp, self._eptrs, m, 1.0 - m)

    def _set_grads(self, grads):
        if len(grads) != self._ntensors:
            raise ValueError(f"cuda Plan: expected {self._ntensors} gradients, got {len(grads)}")
        ptrs = np.fromiter(map(pointer, grads), np.int64, self._ntensors)
        if not np.array_equal(ptrs, self._gptrs_host):
            self._gptrs.copy_to_device(ptrs)
            self._gptrs_host = ptrs

    def step(self, grads, pt, scalars, clipvalue=math.inf):
        hp = tuple(map(float, self.rule.pack(scalars, clipvalue)))
        self._set_grads(grads)
        self._upload_pt(pt)
        _launch(self._kernel, self._nchunks, self._ptrs, self._gptrs, self._table, self._pt,
                self._like, hp)

    def _upload_pt(self, pt):
        if not np.array_equal(pt, self._pt_host):
            host = np.ascontiguousarray(pt, dtype=np.float64)
            self._pt.copy_to_device(host)
            self._pt_host = host.copy()

    def reduce(self, grads, pt, scalars, clipvalue=math.inf):
        """A two_phase rule's first pass (fastopt.two_phase): the
        ``(n_reductions, n_tensors)`` float64 sums, on the host."""
        hp = tuple(map(float, self.rule.pack(scalars, clipvalue)))
        self._set_grads(grads)
        self._upload_pt(pt)
        _launch(self._reduce_kernel, self._nchunks, self._ptrs, self._gptrs, self._table,
                self._pt, self._like, hp, self._rpartial, shared=8 * self._nred)
        tpb = _threads()
        for k in range(self._nred):
            _launch(_k.sumsq_tensors, (self._ntensors + tpb - 1) // tpb, self._first,
                    self._rpartial[k], self._rsums[k])
        return self._rsums.copy_to_host()[:, :self._ntensors]

    def sumsq(self, grads):
        self._set_grads(grads)
        _launch(_k.sumsq_chunks, self._nchunks, self._gptrs, self._table, self._like,
                self._partial, shared=8)  # one float64 per thread
        tpb = _threads()
        _launch(_k.sumsq_tensors, (self._ntensors + tpb - 1) // tpb, self._first,
                self._partial, self._norms)
        return self._norms.copy_to_host()[:self._ntensors]


class Int8Plan(_q8.PlanTraits, Plan):
    """Prepared multi-tensor step for float32 device tensors whose slots are
    kept in 8 bits (``state_dtype="int8"``): the interface and checks of
    :class:`fastopt.backends.numba_int8.Plan`, on the device.

    One launch of the rule's ``step_q8_`` kernel
    (:func:`fastopt.backends._cuda_kernels.render_q8`) per step: a CUDA block
    per quantization block of :data:`fastopt.backends._q8.BLOCK` elements
    (grid-stride), which decodes the codes, runs the rule's float32 element
    step, stores the parameter and encodes the new values against the
    block's new scale, all in one pass over memory.  Results are bit for bit
    the Numba plan's on the simulator.  ``sumsq`` (clipping by norm) is
    :class:`Plan`'s.

    Parameters
    ----------
    rule : fastopt.rule.Rule
        A rule that :func:`fastopt.backends._q8.refusal` accepts.
    params : list of 1-D float32 device arrays
    slots : list (one per slot of the rule) of lists of ``(codes, scales)``
        Per tensor: its codes (1-D int8 device array for a signed slot, uint8
        for one in ``rule.nonnegative``, the tensor's size) and its scales
        (1-D float32 device array, one per block), updated in place.
    rounding : {"nearest"}
    tensor_ids : ignored
        (The bfloat16 plan's argument: 8-bit codes round to nearest.)
    """

    def __init__(self, rule, params, slots, rounding="nearest", tensor_ids=None):
        params = [as_device(p) for p in params]
        slots = [[(as_device(c), as_device(s)) for c, s in arrays] for arrays in slots]
        _q8.check_plan(rule, params, slots, rounding)
        super().__init__(rule, params, [[c for c, _ in arrays] for arrays in slots])
        self.scales = [[s for _, s in arrays] for arrays in slots]
        self.rounding = rounding
        self.updates = 0
        n = len(params)
        table = chunk_table([p.size for p in params], _q8.BLOCK)
        ptrs = np.array([[pointer(a) for a in row]
                         for row in [params, *self.slots, *self.scales]],
                        dtype=np.int64).reshape(1 + 2 * len(rule.slots), n)
        self._nblocks = table.shape[1]
        self._q8_ptrs = cuda.to_device(ptrs)
        self._q8_table = cuda.to_device(np.ascontiguousarray(table, dtype=np.int64))
        self._i8 = cuda.device_array(0, dtype=np.int8)
        self._u8 = cuda.device_array(0, dtype=np.uint8)
        self._q8_kernel = _k.q8_kernel(rule)

    def step(self, grads, pt, scalars, clipvalue=math.inf):
        hp = tuple(map(float, self.rule.pack(scalars, clipvalue)))
        self._set_grads(grads)
        self._upload_pt(pt)
        threads = min(_threads(), _q8.BLOCK)  # a power of two: it divides BLOCK
        _launch(self._q8_kernel, self._nblocks, self._q8_ptrs, self._gptrs, self._q8_table,
                self._pt, self._like, self._i8, self._u8, hp, threads=threads,
                shared=_k.q8_shared_bytes(self.rule, threads) // threads)


# ---------------------------------------------------------------------------
# What the optimizer does with device arrays outside its kernels (the host
# twins of these are NumPy expressions in fastopt.buffers.HostArrays).

def _flat(a):
    return a.reshape(a.size)


def full(n, value, dtype):
    """A new 1-D device array of ``n`` elements equal to ``value``."""
    out = cuda.device_array(n, dtype=dtype)
    _launch_elementwise(_k.fill, out, float(value))
    return out


def zeros_like(a):
    """A new device array of ``a``'s shape and dtype, all zeros."""
    return full(a.size, 0.0, a.dtype).reshape(a.shape)


def copy(a):
    """A new device array equal to ``a``."""
    out = cuda.device_array(a.shape, dtype=a.dtype)
    out.copy_to_device(a)
    return out


def to_host(a):
    """A host NumPy copy of the device array ``a``."""
    return a.copy_to_host()


def assign(dst, src):
    """``dst[...] = src`` for a device ``dst`` and a host or device ``src``."""
    if dst.size == 0:  # nothing to copy (and empty arrays' strides are arbitrary)
        return
    dst.copy_to_device(src if is_device_array(src) else np.require(src, requirements="C"))


def zero(a):
    """``a[...] = 0``."""
    _launch_elementwise(_k.fill, _flat(a), 0.0)


def lerp(y, x, a, b):
    """``y = a*y + b*x``, as NumPy computes ``a * y + b * x``."""
    _launch_elementwise(_k.lerp, _flat(y), _flat(x), float(a), float(b))


def add_scaled(y, x, s):
    """``y += x*s`` (``y += x`` when ``s == 1``)."""
    _launch_elementwise(_k.add_scaled, _flat(y), _flat(x), float(s))


def add_mean(y, x, s, k):
    """``y += x*s; y /= k`` in one pass: the last call of an accumulation cycle."""
    _launch_elementwise(_k.add_mean, _flat(y), _flat(x), float(s), float(k))


# ---------------------------------------------------------------------------
# Public single-tensor kernels

def _check_kernel_arrays(name, rule, arrays):
    labels = ("param", "grad") + rule.slots
    info = []
    for label, a in zip(labels, arrays):
        if not is_device_array(a):
            raise TypeError(f"{name}: {label} must be a CUDA device array (a Numba device "
                            "array, or an object with __cuda_array_interface__ such as a "
                            f"CuPy array or a PyTorch CUDA tensor), got {type(a).__name__}")
        info.append((label, describe(a)))
    _, shape0, dtype0, _, _ = info[0][1]
    for label, (_, shape, dtype, contiguous, readonly) in info:
        if dtype not in _contract.FLOAT_DTYPES:
            raise TypeError(f"{name}: {label} has dtype {dtype}; kernels take float32 or "
                            "float64")
        if dtype != dtype0:
            raise TypeError(f"{name}: {label} has dtype {dtype} but param has {dtype0}")
        if len(shape) != 1 or not contiguous:
            raise ValueError(f"{name}: {label} must be a contiguous 1-D array, got shape "
                             f"{shape} (contiguous={contiguous})")
        if shape != shape0:
            raise ValueError(f"{name}: {label} has shape {shape} but param has {shape0}")
        if label != "grad" and readonly:
            raise ValueError(f"{name}: {label} is read-only; kernels update it in place")


# Public single-tensor kernels (sgd, adam, ...), same signatures on every backend.
globals().update(_contract.make_kernels(Plan, __name__, check=_check_kernel_arrays))
__all__ = ["Plan", "Int8Plan", "THREADS_PER_BLOCK", "CHUNK", "MAX_BLOCKS", "SIMULATOR",
           "is_device_array", "as_device", *sorted(RULES)]


def device_name():
    """The GPU's name, or ``"CUDA simulator"``."""
    if SIMULATOR:
        return "CUDA simulator"
    name = cuda.get_current_device().name
    return name.decode() if isinstance(name, bytes) else str(name)
