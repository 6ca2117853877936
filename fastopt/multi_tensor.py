"""Fused steps over memory the caller owns: the layer under framework adapters.

:class:`fastopt.Optimizer` owns its state and takes NumPy arrays.  A framework
adapter (``fastopt.torch``) has tensors of its own whose addresses change
(gradients are new tensors after ``zero_grad(set_to_none=True)``, parameters
move with ``p.data = ...``), state it must keep in its own format, a step count
per parameter, and per-group hyperparameters that schedulers rewrite every
step.  :class:`MultiTensorStep` is what such an adapter needs and nothing
more: one fused call of a rule of :data:`fastopt.rule.RULES` over a group of
same-dtype tensors given **by address**, every step, with

* ``steps``: a step count per tensor (PyTorch keeps one per parameter; a
  parameter that joined late or skipped steps gets the bias correction of its
  own count): tensors are bucketed by count, one compiled call per distinct
  count, so the common case (every count equal) is one call;
* ``pt``: per-tensor gradient scale (clipping, ``maximize``, unscaling a
  scaled loss), decoupled weight-decay factor and coupled weight decay;
* ``found_inf``: a true value skips the whole step (mixed-precision training
  with a gradient scaler), before anything is touched.

The pointer table is read by compiled code as it is: every address must be the
start of ``sizes[t]`` elements of ``dtype`` laid out densely (any order of
strides, the same for the parameter, its gradient and its slots), writeable
except the gradient, alive for the duration of the call.  A zero gradient
address skips its tensor.  The cheap structural checks are made here; the
addresses themselves cannot be checked.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .rule import RULES
from .backends import get_backend, resolve_backend, resolve_state_backend, state_backends
from .backends._contract import FLOAT_DTYPES

__all__ = ["MultiTensorStep"]


class MultiTensorStep:
    """One rule's fused step over a fixed list of tensor sizes.

    Parameters
    ----------
    rule : str
        A kernel name of :data:`fastopt.rule.RULES` (``"adam_torch"``,
        ``"rmsprop_momentum_torch"``, ``"sgd"``...).
    dtype : numpy dtype, "bfloat16" or "float16"
        float32 or float64: the dtype of every parameter, gradient and slot.
        ``"bfloat16"`` or ``"float16"``: parameters, gradients and slots are
        all of that 2-byte type (bit patterns as PyTorch stores them), the
        arithmetic float32, every store rounded to nearest -- what PyTorch's
        fused optimizers do for such parameters (numba backend; not for
        centred RMSprop, see :func:`fastopt.backends.numba_bf16.refusal`).
    sizes : sequence of int
        Elements per tensor, in pointer-table column order.
    backend : str, default "auto"
        ``"cython"`` or ``"numba"`` (``"auto"`` picks by group size, as
        :class:`fastopt.Optimizer` does).
    state_dtype : None, "bfloat16" or "int8", default None
        None: slots in ``dtype``.  ``"bfloat16"``: slots hold bfloat16 bit
        patterns (2 bytes an element) while parameters and gradients are
        float32 and the arithmetic float32 (the numba backend's
        :mod:`~fastopt.backends.numba_bf16` kernels; ``dtype`` must be
        float32).  ``"int8"``: each slot is 8-bit codes (int8, or uint8 for
        the rule's :attr:`~fastopt.rule.Rule.nonnegative` slots) and one
        float32 scale per :data:`~fastopt.reference.Q8_BLOCK` elements of
        the flattened tensor (``dtype`` float32; the numba backend's
        :mod:`~fastopt.backends.numba_int8` or the cython backend's
        :class:`~fastopt.backends.cython_backend.Int8Plan` step, the same
        bits; ``"auto"``: cython up to
        ``fastopt.backends.INT8_CYTHON_UP_TO`` elements, numba above): the pointer table
        has one more row per slot, the scales' addresses, after the codes'
        rows.
    state_rounding : "nearest" or "stochastic", default "nearest"
        With bfloat16 state.  Stochastic rounding draws from a hash of
        :attr:`updates` (set it before each step), the tensor's column and the
        element.

    Attributes
    ----------
    slots : tuple of str
        The rule's state arrays, in pointer-table row order (rows 2, 3...;
        with 8-bit state the codes, then rows ``2 + len(slots)...`` their
        scales).
    nrows : int
        Rows of the pointer table (:meth:`empty_pointers`).
    scalars : tuple of str
        The rule's scalars, in the order :meth:`step` takes them.
    per_tensor_step : bool
        Whether the rule's last scalar is a step count, which :meth:`step`
        may instead take per tensor through ``steps``.
    """

    def __init__(self, rule, dtype, sizes, *, backend="auto", state_dtype=None,
                 state_rounding="nearest"):
        if not isinstance(rule, str) or rule not in RULES:
            raise ValueError(f"MultiTensorStep: unknown rule {rule!r}; one of {sorted(RULES)}")
        narrow = dtype if isinstance(dtype, str) and dtype in ("bfloat16", "float16") \
            else None
        dtype = np.dtype(np.uint16 if narrow else dtype)
        if dtype not in FLOAT_DTYPES and not narrow:
            raise TypeError(f"MultiTensorStep: dtype must be float32 or float64, got {dtype}")
        sizes = list(sizes)
        if not sizes:
            raise ValueError("MultiTensorStep: sizes is empty")
        for n in sizes:
            if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
                raise ValueError(f"MultiTensorStep: sizes must be integers >= 0, got {n!r}")
        if backend not in ("auto", "cython", "numba"):
            raise ValueError("MultiTensorStep: backend must be 'auto', 'cython' or 'numba', "
                             f"got {backend!r}")
        self.rule = RULES[rule]
        if self.rule.two_phase:
            raise ValueError(f"MultiTensorStep: {rule!r} is a two_phase rule (per-tensor "
                             "reductions before the update, fastopt.two_phase): step it "
                             "through its optimizer class (fastopt."
                             f"{self.rule.family.capitalize()}), not by address")
        self.dtype = dtype
        self.sizes = tuple(int(n) for n in sizes)
        self.n = len(sizes)
        self.size = sum(self.sizes)
        self.slots = self.rule.slots
        self.scalars = self.rule.scalars
        self.per_tensor_step = self.scalars[-1] == "step"
        self.nrows = 2 + len(self.slots)
        self.state_dtype = state_dtype
        self.updates = 0
        self._rows = self._rows_key = None
        if narrow:
            self._narrow_setup(narrow, backend, state_dtype)
            return
        if state_dtype == "int8":
            self._int8_setup(dtype, backend, state_rounding)
            return
        if state_dtype is not None:
            self._bf16_setup(dtype, backend, state_dtype, state_rounding)
            return
        if backend == "auto":
            module = resolve_backend("auto", dtype, self.size, rule=self.rule)
            backend = module.NAME if module.NAME in ("cython", "numba") else "numba"
        self.backend = backend
        self._run = _cython_runner(self.rule, dtype, self.sizes, len(self.slots)) \
            if backend == "cython" else _numba_runner(self.rule, dtype, self.sizes)

    def _check_reduced(self, dtype, backend, rounding, module, state_dtype):
        """float32 parameters, a host backend that keeps ``state_dtype``
        (:func:`fastopt.backends.state_backends`; importable, ``"auto"``: the
        first that is), a rule and a rounding that ``module`` (numba_bf16,
        _q8) takes; returns the backend's name."""
        what = "bfloat16" if state_dtype == "bfloat16" else "8-bit"
        if dtype != np.float32:
            raise TypeError(f"MultiTensorStep: {what} state needs float32 parameters, got "
                            f"{dtype}")
        backends = tuple(b for b in state_backends(state_dtype) if b in ("numba", "cython"))
        if backend != "auto" and backend not in backends:
            where = " or ".join(backends)
            raise ValueError(f"MultiTensorStep: {what} state runs on the {where} backend"
                             f"{'s' if len(backends) > 1 else ''} only, not {backend!r}")
        # the backend's name, or an ImportError that says how to get it
        backend = resolve_state_backend(backend, state_dtype, size=self.size)[0].NAME
        why = module.refusal(self.rule)
        if why:
            where = "in bfloat16" if what == "bfloat16" else "in 8 bits"
            raise ValueError(f"MultiTensorStep: rule {self.rule.name!r} cannot keep its state "
                             f"{where}: {why}")
        if rounding not in module.ROUNDINGS:
            raise ValueError(f"MultiTensorStep: state_rounding must be one of "
                             f"{module.ROUNDINGS} with {what} state, got {rounding!r}")
        return backend

    def _bf16_setup(self, dtype, backend, state_dtype, rounding):
        if state_dtype != "bfloat16":
            raise ValueError(f"MultiTensorStep: state_dtype must be None, 'bfloat16' or "
                             f"'int8', got {state_dtype!r}")
        from .backends import numba_bf16 as bf16
        self._check_reduced(dtype, backend, rounding, bf16, "bfloat16")
        self.backend = "numba"
        self.state_rounding = rounding
        like, ulike = np.empty(0, np.float32), np.empty(0, np.uint16)
        stochastic = rounding == "stochastic"
        ids = np.arange(self.n, dtype=np.int64)

        def drive(driver, ptrs, table, pt, hp):
            driver(ptrs, ptrs[1], -1, 0, table, pt, hp, like, ulike, stochastic,
                   int(self.updates), ids)
        c = bf16.compiled(self.rule)
        self._run = _numba_runner(self.rule, dtype, self.sizes,
                                  (c.step_parallel, c.step_serial), drive)

    def _int8_setup(self, dtype, backend, rounding):
        from .backends import _q8
        self.backend = self._check_reduced(dtype, backend, rounding, _q8, "int8")
        self.state_rounding = rounding
        self.nrows = 2 + 2 * len(self.slots)  # the codes' rows, then the scales'
        if self.backend == "cython":
            self._run = get_backend("cython").int8_core(self.rule, self.sizes).step
            return
        from .backends import numba_int8 as q8
        like, i8, u8 = np.empty(0, np.float32), np.empty(0, np.int8), np.empty(0, np.uint8)

        def drive(driver, ptrs, table, pt, hp):
            driver(ptrs, ptrs[1], -1, 0, table, pt, hp, like, i8, u8)
        c = q8.compiled(self.rule)
        self._run = _numba_runner(self.rule, dtype, self.sizes,
                                  (c.step_parallel, c.step_serial), drive)

    def _narrow_setup(self, narrow, backend, state_dtype):
        if state_dtype is not None:
            raise ValueError(f"MultiTensorStep: {narrow} parameters keep their state in "
                             f"{narrow} already; leave state_dtype=None")
        if backend not in ("auto", "numba"):
            raise ValueError(f"MultiTensorStep: {narrow} parameters run on the numba backend "
                             f"only, not {backend!r}")
        get_backend("numba")  # an ImportError that says how to get it
        from .backends import numba_bf16 as bf16
        why = self.rule.slots and bf16.refusal(self.rule)
        if why:
            raise ValueError(f"MultiTensorStep: rule {self.rule.name!r} cannot run on "
                             f"{narrow} parameters and state: {why}")
        self.backend = "numba"
        self.dtype = narrow
        half = None if narrow == "bfloat16" else 1
        self.state_rounding = "nearest"
        ulike = np.empty(0, np.uint16)

        def drive(driver, ptrs, table, pt, hp):
            driver(ptrs, table, pt, hp, ulike, half)
        c = bf16.compiled(self.rule)
        self._run = _numba_runner(self.rule, np.float32, self.sizes,
                                  (c.narrow_parallel, c.narrow_serial), drive)

    def rows(self, scale=1.0, keep=1.0, l2=0.0):
        """The ``(3, n)`` per-tensor rows with the same scale, keep and l2 for
        every tensor, as :meth:`step` takes them; rebuilt only when the
        values change (one array kept per object, so do not write into it)."""
        key = (scale, keep, l2)
        if key != self._rows_key:
            rows = np.empty((3, self.n))
            rows[0], rows[1], rows[2] = scale, keep, l2
            self._rows, self._rows_key = rows, key
        return self._rows

    def empty_pointers(self):
        """A zeroed ``(nrows, n)`` intp pointer table to fill in."""
        return np.zeros((self.nrows, self.n), dtype=np.intp)

    def step(self, ptrs, scalars, *, steps=None, pt=None, clipvalue=math.inf, found_inf=None):
        """Update every tensor whose gradient address is not 0, in place.

        Parameters
        ----------
        ptrs : ndarray of intp, shape (nrows, n)
            Row 0 parameter addresses, row 1 gradient addresses (0 skips the
            tensor), then one row per slot (with 8-bit state: the codes, then
            one row per slot of the scales: ``n_blocks(size)`` float32 each).
        scalars : sequence of float
            The rule's scalars (:attr:`scalars`), without the trailing step
            when ``steps`` is given.
        steps : array of float, shape (n,), optional
            Per-tensor step counts (>= 1) for a rule with
            :attr:`per_tensor_step`.
        pt : ndarray of float64, shape (3, n), optional
            Per tensor: gradient scale, decoupled weight-decay factor
            ``keep``, coupled weight decay ``l2`` (default 1, 1, 0).
        clipvalue : float, default inf
            Clamp of the scaled gradient.
        found_inf : optional
            When true (a bool, a number or a one-element array), nothing is
            done and False is returned.

        Returns
        -------
        bool
            True if the step ran.
        """
        if found_inf is not None and bool(found_inf):
            return False
        if ptrs.__class__ is not np.ndarray or ptrs.dtype != np.intp \
                or ptrs.shape != (self.nrows, self.n) or not ptrs.flags.c_contiguous:
            raise ValueError(f"MultiTensorStep.step: ptrs must be a C-contiguous intp array of "
                             f"shape {(self.nrows, self.n)}")
        if steps is not None and not self.per_tensor_step:
            raise ValueError(f"MultiTensorStep.step: {self.rule.name} has no step count; "
                             "pass steps=None")
        live = ptrs[1] != 0
        if not live.any():
            return True
        if not (ptrs[:, live] != 0).all():
            raise ValueError("MultiTensorStep.step: a tensor with a gradient has a zero "
                             "parameter or slot address")
        if pt is not None and (pt.__class__ is not np.ndarray or pt.dtype != np.float64
                               or pt.shape != (3, self.n)):
            raise ValueError(f"MultiTensorStep.step: pt must be a float64 array of shape "
                             f"{(3, self.n)}")
        scalars = tuple(float(x) for x in scalars)
        want = len(self.scalars) - (steps is not None)
        if len(scalars) != want:
            raise ValueError(f"MultiTensorStep.step: {self.rule.name} takes {want} scalars "
                             f"({', '.join(self.scalars[:want])}), got {len(scalars)}")
        if steps is not None:
            steps = np.asarray(steps, dtype=np.float64)
            if steps.shape != (self.n,):
                raise ValueError(f"MultiTensorStep.step: steps must have shape ({self.n},)")
            if not (steps[live] >= 1).all():
                raise ValueError("MultiTensorStep.step: step counts must be >= 1")
            steps = steps.tolist()
        self.launch(ptrs, scalars, steps, pt, float(clipvalue))
        return True

    def launch(self, ptrs, scalars, steps=None, pt=None, clipvalue=math.inf):
        """:meth:`step` without its checks, for adapters that built ``ptrs``
        from live tensors themselves and checked their arguments once:
        ``scalars`` a tuple of floats, ``steps`` None or a list of floats
        (>= 1, one per tensor; tensors with a zero gradient address are
        ignored), ``pt`` None or a float64 ``(3, n)`` array.  Wrong arguments
        here are undefined behaviour, not an exception."""
        if pt is None:
            pt = self.rows()
        if steps is None:
            self._run(ptrs, pt, scalars, clipvalue)
            return
        first = steps[0]
        if steps.count(first) == self.n:  # the common case: one call
            self._run(ptrs, pt, scalars + (first,), clipvalue)
            return
        grads = ptrs[1]
        counts = sorted({s for s, g in zip(steps, grads.tolist()) if g})
        for s in counts:  # one call per distinct count
            masked = ptrs.copy()
            masked[1] = [g if c == s else 0 for g, c in zip(grads.tolist(), steps)]
            self._run(masked, pt, scalars + (s,), clipvalue)


def _numba_runner(rule, dtype, sizes, drivers=None, drive=None):
    """``run(ptrs, pt, scalars, clipvalue)`` over the numba backend's chunk
    table: packs the scalars, then calls the parallel or the serial driver
    (by the group's size and the rule's threshold) through ``drive(driver,
    ptrs, table, pt, hp)``; by default the rule's numba_backend drivers."""
    nb = get_backend("numba")
    table = nb.chunk_table(sizes)
    hp = np.zeros(1 + len(rule.prepared))
    key = rule.name if drivers is None else None
    if drivers is None:
        like = np.empty(0, dtype=dtype)
        c = nb.compiled(rule)
        drivers = (c.step_parallel, c.step_serial)

        def drive(driver, ptrs, table, pt, hp):
            # offset -1: the gradient row already holds addresses
            driver(ptrs, ptrs[1], -1, 0, table, pt, hp, like)
    size = sum(sizes)
    pack = rule.pack
    # the rule's threshold (key; other drivers, over narrower state: the
    # dtype's, as numba_bf16), looked up once and again only after a change
    looked = [nb.threshold_for(key, dtype), nb._generation]

    def run(ptrs, pt, scalars, clipvalue):
        hp[:] = pack(scalars, clipvalue)
        if looked[1] != nb._generation:
            looked[:] = nb.threshold_for(key, dtype), nb._generation
        parallel = size >= looked[0]
        if parallel:
            nb.sync_threads()  # fastopt's thread count, in whichever thread calls
        drive(drivers[0] if parallel else drivers[1], ptrs, table, pt, hp)
    return run


def _cython_runner(rule, dtype, sizes, nslots):
    core = get_backend("cython").addressed_core(rule, nslots, sizes, dtype)
    return core.step
