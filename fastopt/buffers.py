"""The buffers the kernels run on.

The parameters of an optimizer fall into parameter groups (their own
hyperparameters, one kernel rule each: :class:`ParamGroup`), and each
parameter group into one :class:`TensorGroup` per dtype.  A tensor group keeps
its tensors' optimizer state (the rule's slots) in one flat buffer per slot,
with per-tensor views of it, and holds the backend's plan: the object whose
``step`` runs the one fused kernel call over all of the group's tensors.
"""
from __future__ import annotations

import numpy as np

from . import reference
from .backends import resolve_backend, resolve_state_backend

__all__ = ["ParamGroup", "TensorGroup", "HostArrays"]


class ParamGroup:
    """One parameter group.

    Attributes
    ----------
    indices : list of int
        Its parameters' indices in the optimizer's flat parameter list.
    hyperparams : dict
        The effective (checked) hyperparameters: the optimizer's own, the
        learning rate, weight decay and maximize.
    overrides : dict
        What the group dict set itself (kept for ``get_config``).
    rule : fastopt.rule.Rule
        The kernel rule its hyperparameters select.
    coupled_decay : bool
        Its weight decay is L2 (``g += wd*w``), not decoupled.
    tensor_groups : list of TensorGroup
        One per dtype.
    host : tuple of float
        The rule's host-side scalar state (``rule.host_state``: running
        products), as after the last applied step.
    """

    def __init__(self, indices, hyperparams, overrides, rule, coupled_decay=False):
        self.indices = indices
        self.hyperparams = hyperparams
        self.overrides = overrides
        self.rule = rule
        self.coupled_decay = coupled_decay
        self.tensor_groups = []
        self.host = tuple(float(v) for v in rule.host_init)


class TensorGroup:
    """The tensors of one parameter group and one dtype: their slots in flat
    buffers, their per-tensor factors, and the backend's plan.

    Parameters
    ----------
    indices : list of int
        The tensors' indices in the optimizer's flat parameter list.
    arrays : list of arrays
        The tensors (one dtype).
    rule : fastopt.rule.Rule
    slot_init : dict of str to float
        Initial value of the slots that do not start at zero.
    backend : str
        The backend asked for (``"auto"`` or a name).
    decays : list of bool
        Per tensor: False when it is excluded from weight decay.
    device : bool
        The tensors are CUDA device arrays.
    reduced_state : None or (str, str)
        ``(state_dtype, rounding)`` when the slots hold bfloat16 bit
        patterns (host only) or 8-bit codes.
    slot_arrays : dict of str to list of arrays, optional
        The slots in arrays the caller owns (per slot, per tensor: the
        tensor's shape -- a ``per_tensor`` rule's: the slot's own shape,
        ``rule.slot_shapes`` -- and dtype, C-contiguous, writeable), used as they are
        instead of buffers of the group's own: how a framework adapter keeps
        the state in the framework's variables.  Checked by
        :func:`fastopt.params.check_state_arrays`.
    ema : bool
        The optimizer keeps a moving average of the parameters (``use_ema``):
        ``"auto"`` then prefers a backend that moves it inside the step's pass
        (:func:`fastopt.backends.resolve_backend`).

    Attributes
    ----------
    plan
        The backend's plan; ``plan.step(grads, factors, scalars, clipvalue)``
        runs the kernel.
    factors : ndarray, shape (3, n_tensors), or (4, n_tensors) for a
        ``two_phase`` rule
        The per-tensor rows the kernel reads: gradient scale, decoupled
        decay factor (``keep``), coupled (L2) decay coefficient, and for a
        two-phase rule the update scale (:mod:`fastopt.two_phase`).
    slot_views : dict of str to list of arrays
        Per slot, per tensor: a view of the flat buffer in the tensor's shape.
    counted : bool
        The plan rounds stochastically and reads the update count
        (``plan.updates``), which must be set before each step.
    ema_fused : bool
        The plan holds the moving averages of the group's parameters
        (``plan.attach_ema``) and its ``step_ema`` updates them in the
        kernel's pass (set by the optimizer, with ``use_ema``).
    """

    ema_fused = False

    def __init__(self, indices, arrays, rule, slot_init, backend, decays, device=False,
                 reduced_state=None, slot_arrays=None, ema=False):
        self.indices = indices
        self.dtype = arrays[0].dtype
        if rule.kind == "per_tensor":
            self._per_tensor(rule, arrays, slot_init, backend, decays, device, slot_arrays)
            return
        sizes = [a.size for a in arrays]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        reduced = reduced_state is not None and bool(rule.slots)
        if reduced:
            self.backend, make_plan = resolve_state_backend(backend, reduced_state[0], device,
                                                             offsets[-1])
        else:
            self.backend = resolve_backend(backend, self.dtype, offsets[-1], device, rule=rule,
                                           ema=ema)
        if reduced and reduced_state[0] == "int8":
            self._int8(rule, arrays, slot_init, make_plan, slot_arrays, decays, device)
            return
        if slot_arrays is not None:
            self.slot_views = {name: list(slot_arrays[name]) for name in rule.slots}
        else:
            full = self.backend.full if device else np.full
            flat_slots = {name: full(offsets[-1],
                                     reference.bf16_round(slot_init.get(name, 0.0))
                                     if reduced else slot_init.get(name, 0.0),
                                     dtype=np.uint16 if reduced else self.dtype)
                          for name in rule.slots}
            self.slot_views = {name: [buf[offsets[k]:offsets[k + 1]].reshape(a.shape)
                                      for k, a in enumerate(arrays)]
                               for name, buf in flat_slots.items()}
        flat = [a.reshape(-1) for a in arrays]
        slots_1d = [[v.reshape(-1) for v in self.slot_views[name]] for name in rule.slots]
        if reduced:
            self.plan = make_plan(rule, flat, slots_1d, rounding=reduced_state[1],
                                  tensor_ids=indices)
        else:
            self.plan = self.backend.Plan(rule, flat, slots_1d)
        # stochastic rounding draws from the update count, set before each step
        self.counted = reduced and reduced_state[1] == "stochastic"
        self.factors = np.ones((4 if rule.two_phase else 3, len(arrays)))
        self.factors[2] = 0.0
        self.set_decays(decays)
        self._written = (1.0, 1.0, 0.0)  # what the rows hold, when uniform

    def _int8(self, rule, arrays, slot_init, make_plan, slot_arrays, decays, device):
        """8-bit state (:mod:`fastopt.backends._q8`): per slot, the codes
        in one flat buffer (views in the tensors' shapes, :attr:`slot_views`
        under the slot's name) and the per-block scales in another (views of
        one scale per block, under ``"<slot>_scales"``); on the device for
        device tensors (``cuda_backend.Int8Plan``)."""
        from .backends import _q8 as q8
        full = self.backend.full if device else np.full
        if slot_arrays is not None:
            raise ValueError("state_dtype='int8' keeps its codes and scales in buffers of "
                             "its own; it cannot use state arrays a framework owns")
        offsets = np.concatenate([[0], np.cumsum([a.size for a in arrays])]).astype(int)
        blocks = np.concatenate([[0], np.cumsum([q8.n_blocks(a.size) for a in arrays])])
        self.slot_views = {}
        slots = []
        for name, signed in zip(rule.slots, q8.signed_slots(rule)):
            value = np.float32(slot_init.get(name, 0.0))
            code, scale = reference.q8_encode(np.full(1, value), signed)
            codes = full(offsets[-1], code[0], dtype=code.dtype)
            scales = full(blocks[-1], scale[0], dtype=np.float32)
            views = [codes[offsets[k]:offsets[k + 1]].reshape(a.shape)
                     for k, a in enumerate(arrays)]
            scale_views = [scales[blocks[k]:blocks[k + 1]] for k in range(len(arrays))]
            self.slot_views[name] = views
            self.slot_views[name + "_scales"] = scale_views
            slots.append([(v.reshape(-1), sv) for v, sv in zip(views, scale_views)])
        self.plan = make_plan(rule, [a.reshape(-1) for a in arrays], slots)
        self.counted = False
        self.factors = np.ones((3, len(arrays)))
        self.factors[2] = 0.0
        self.set_decays(decays)
        self._written = (1.0, 1.0, 0.0)

    def _per_tensor(self, rule, arrays, slot_init, backend, decays, device, slot_arrays):
        """A ``per_tensor`` rule's group: slots in their own shapes, the plan
        of :mod:`fastopt.per_tensor`.  Device tensors keep their slots on the
        device and are staged through the host each step
        (:class:`fastopt.per_tensor.StagedPlan`, host_step on the numpy
        backend; ``backend`` reports ``"cuda"``)."""
        from . import per_tensor
        self.backend = resolve_backend(backend, self.dtype, sum(a.size for a in arrays),
                                       device)
        if slot_arrays is not None:
            self.slot_views = {name: list(slot_arrays[name]) for name in rule.slots}
        else:
            self.slot_views = per_tensor.make_slots(
                rule, arrays, slot_init, self.dtype,
                full=self.backend.full if device else np.full)
        slots = [self.slot_views[n] for n in rule.slots]
        if device:
            self.plan = per_tensor.StagedPlan(rule, arrays, slots, self.backend,
                                              resolve_backend("numpy", self.dtype, 0))
        else:
            self.plan = per_tensor.Plan(rule, arrays, slots, self.backend)
        self.counted = False
        self.factors = np.ones((3, len(arrays)))
        self.factors[2] = 0.0
        self.set_decays(decays)
        self._written = (1.0, 1.0, 0.0)

    def set_decays(self, decays):
        """Which tensors take weight decay (per tensor, False: excluded)."""
        self.decays = np.asarray(decays, dtype=bool)
        self.all_decay = bool(self.decays.all())
        self._written = None  # the factor rows are written again at the next step

    def set_factors(self, scale, keep, l2):
        """Write the per-tensor rows (only when they change).  ``scale`` is a
        float, or an array with one entry per tensor."""
        key = (scale, keep, l2) if isinstance(scale, float) else None
        if key is not None and key == self._written:
            return
        factors = self.factors
        factors[0] = scale
        factors[1] = keep
        factors[2] = l2
        if not self.all_decay:
            factors[1, ~self.decays] = 1.0
            factors[2, ~self.decays] = 0.0
        self._written = key


class HostArrays:
    """The array work the optimizer does itself on host parameters (moving
    averages, gradient accumulation, state); ``fastopt.backends.cuda_backend``
    has the same functions for device parameters.

    ``lerp``, ``add_scaled`` and ``add_mean`` are one in-place pass each,
    with no temporary array: the numba backend's compiled passes where Numba
    is installed, else the cython backend's ``nogil`` loops, else NumPy in
    blocks of :data:`BLOCK` elements (a temporary of one block).  All round
    as the NumPy expressions in their docstrings do (the scalars rounded to
    the array's dtype first), to the same bits.
    """

    zeros_like = staticmethod(np.zeros_like)

    @staticmethod
    def copy(a):
        return a.copy()

    to_host = copy

    @staticmethod
    def assign(dst, src):
        dst[...] = src

    @staticmethod
    def zero(a):
        a[...] = 0.0

    @staticmethod
    def lerp(y, x, a, b):
        """``y[...] = a*y + b*x``."""
        compiled = _compiled()
        if compiled is not None:
            compiled.lerp(y, x, a, b)
            return
        for ys, xs in _blocks(y, x):
            ys *= a
            ys += xs * b

    @staticmethod
    def add_scaled(y, x, s):
        """``y += x*s`` (``y += x`` when ``s`` is 1)."""
        compiled = _compiled()
        if compiled is not None:
            compiled.add_scaled(y, x, s)
            return
        for ys, xs in _blocks(y, x):
            ys += xs if s == 1.0 else xs * s

    @staticmethod
    def add_mean(y, x, s, k):
        """``y += x*s; y /= k``: the last call of an accumulation cycle."""
        compiled = _compiled()
        if compiled is not None:
            compiled.add_mean(y, x, s, k)
            return
        for ys, xs in _blocks(y, x):
            ys += xs if s == 1.0 else xs * s
            ys /= k


#: Elements per block of HostArrays' NumPy fallback.
BLOCK = 1 << 16

_numba = []  # [module or None], found on first use


def _compiled():
    """The backend whose in-place passes HostArrays runs: numba, else cython,
    else None (NumPy)."""
    if not _numba:
        from .backends import get_backend
        for name in ("numba", "cython"):
            try:
                _numba.append(get_backend(name))
                break
            except ImportError:
                pass
        else:
            _numba.append(None)
    return _numba[0]


def _blocks(y, x):
    """Matching flat blocks of ``y`` and ``x`` (C-contiguous, one shape)."""
    fy, fx = y.reshape(-1), x.reshape(-1)
    for s in range(0, fy.size, BLOCK):
        yield fy[s:s + BLOCK], fx[s:s + BLOCK]
