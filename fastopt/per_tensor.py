"""Rules of kind ``per_tensor``: state of its own shapes, host work per tensor.

An elementwise rule's state is parameter-shaped and its update one generated
loop.  A ``per_tensor`` rule (Adafactor's factored second moments, Muon's
Newton--Schulz) declares instead, in its family module::

    Rule("adafactor", kind="per_tensor", slots=("r", "c", "v"),
         scalars=(...), prepare=prepare_adafactor,     # optional
         slot_shapes=adafactor_slot_shapes, host_step=adafactor_step,
         reference=adafactor, shardable=False,
         shard_refusal="a factored moment cannot be cut by flat index")

* ``slot_shapes(shape) -> {slot: shape}``: the state of one tensor of shape
  ``shape``, every slot of ``slots`` (a tuple of ints each; ``()`` is a
  scalar).  The optimizer keeps each slot of a tensor group in one flat
  buffer of the parameters' dtype, with a view per tensor in its own shape;
  ``state_arrays``, ``state_dict``, ``load_state_dict`` and state files carry
  these views as they are (so a wrong shape is refused before anything
  changes).
* ``host_step(w, g, state, scalars, backend)``: one tensor's update, in
  place, called once per tensor per applied step (not for a ``None``
  gradient).  ``w`` is the parameter (a writeable NumPy array of its own
  shape and dtype, already multiplied by the decoupled weight-decay factor);
  ``g`` the gradient, read-only, of the same shape and dtype, already scaled
  (loss scale, clipping by norm, ``maximize``), clipped by value and with the
  coupled (L2) weight decay added -- the same gradient an element function
  sees; ``state`` maps each slot to its view (writeable, its own shape);
  ``scalars`` the named per-step scalars, ``rule.prepare(*public scalars)``
  (float64, plain Python allowed), or the public scalars by name when the
  rule has no ``prepare``; ``backend`` the backend module the optimizer
  chose (``numpy``, ``numba`` or ``cython``; ``backend.NAME``; ``numpy``
  for CUDA device parameters, see below), whose
  single-tensor kernels (``backend.<rule>(param, grad, *slots, *scalars,
  keep=, gscale=, l2=, clipvalue=)``, contiguous 1-D arrays) run the
  elementwise parts as generated loops.  It returns nothing and must not
  raise (everything was checked before the step began; NaN and inf
  propagate, floating-point warnings are off).  A rule declared with
  ``host_decay=True`` gets ``w`` *before* the decoupled weight decay and the
  factor as ``keep=`` (a float; 1.0 without decay), and applies it itself
  (torch's Adafactor reads the parameter's RMS first).
* ``shardable=False`` with ``shard_refusal``: a state that cannot be cut by
  flat element index; :class:`fastopt.distributed.ShardedOptimizer` refuses
  the rule with that sentence.

Such rules keep their state in the parameters' dtype (``state_dtype=
"bfloat16"`` is refused unless the rule says otherwise).

CUDA device parameters: **host staging**, not a GPU kernel.  The slots live on
the device like every cuda optimizer's state (one flat device buffer per slot,
a device view per tensor in the slot's own shape, so ``state_arrays``,
``state_dict``, ``load_state_dict`` and state files behave as for any cuda
optimizer).  :class:`StagedPlan` runs each step one tensor at a time: it
copies the tensor's parameter, gradient and slots to host NumPy arrays, runs
the same host code as :class:`Plan` (``host_step`` with the **numpy** backend
module, whatever the device), and copies the parameter and the slots back.
The device is written only by those copies back, after the host work (which
does not raise) is done.  The results are those of the numpy backend on the
host, bit for bit; the speed is bound by the host and the PCIe transfers
(every step moves each tensor's parameter, gradient and state across twice),
not by the GPU.  Clipping by norm copies the gradients to the host once more
for their sums of squares.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["Plan", "StagedPlan", "slot_shapes"]


def slot_shapes(rule, shape):
    """``rule.slot_shapes(shape)``, checked: a dict with exactly the rule's
    slots, in order, each a tuple of non-negative ints."""
    shapes = rule.slot_shapes(tuple(shape))
    if not isinstance(shapes, dict) or tuple(shapes) != tuple(rule.slots):
        raise RuntimeError(f"rule {rule.name!r}: slot_shapes({tuple(shape)}) must return "
                           f"a dict of the slots {rule.slots}, in order, got {shapes!r}")
    out = {}
    for name, s in shapes.items():
        s = tuple(s)
        if not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 0
                   for n in s):
            raise RuntimeError(f"rule {rule.name!r}: slot {name!r} of a {tuple(shape)} "
                               f"tensor has shape {s!r}, not a tuple of ints >= 0")
        out[name] = tuple(int(n) for n in s)
    return out


def make_slots(rule, arrays, slot_init, dtype, full=np.full):
    """Per slot, per tensor: views of one flat buffer per slot (of ``dtype``,
    filled with ``slot_init.get(slot, 0.0)``) in the slot's own shape;
    ``full(n, value, dtype)`` makes the buffer (the cuda backend's ``full``:
    device buffers)."""
    shapes = [slot_shapes(rule, a.shape) for a in arrays]
    views = {}
    for name in rule.slots:
        sizes = [math.prod(s[name]) for s in shapes]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        buf = full(int(offsets[-1]), slot_init.get(name, 0.0), dtype=dtype)
        views[name] = [buf[offsets[k]:offsets[k + 1]].reshape(s[name])
                       for k, s in enumerate(shapes)]
    return views


class Plan:
    """One tensor group of a ``per_tensor`` rule: ``step`` calls the rule's
    ``host_step`` once per tensor (same interface as the backends' plans).

    Parameters
    ----------
    rule : fastopt.rule.Rule
        A ``per_tensor`` rule.
    params : list of ndarray
        The parameters, in their own shapes (one dtype).
    slots : list of list of ndarray
        Per slot (in ``rule.slots`` order), per tensor: the state views.
    backend : module
        The backend module whose kernels ``host_step`` may call.
    """

    def __init__(self, rule, params, slots, backend):
        self.rule = rule
        self.params = list(params)
        self.slots = [list(s) for s in slots]
        self.backend = backend
        self.dtype = self.params[0].dtype
        self.size = int(sum(p.size for p in self.params))
        self._state = [{name: self.slots[j][t] for j, name in enumerate(rule.slots)}
                       for t in range(len(self.params))]

    def step(self, grads, pt, scalars, clipvalue=math.inf):
        """One applied step over the group: per tensor, the gradient
        transform of the kernel contract (scale, clip by value, add L2),
        the decoupled decay, then ``host_step``."""
        named = self.rule.host_scalars(scalars)
        with np.errstate(all="ignore"):
            for t, g in enumerate(grads):
                if g is not None:
                    self._tensor_step(t, g, pt, named, clipvalue)

    def _tensor_step(self, t, g, pt, named, clipvalue):
        """Tensor ``t``'s update, on the host arrays it holds."""
        self._update(self.params[t], g, self._state[t], pt[:, t], named, clipvalue)

    def _update(self, w, g, state, factors, named, clipvalue):
        """One tensor's update on host arrays: ``w`` and ``state`` in place,
        ``g`` (any shape of ``w``'s size) not modified."""
        rule, backend = self.rule, self.backend
        dt = w.dtype.type
        g = g.reshape(w.shape)
        gs, keep, l2 = float(factors[0]), float(factors[1]), float(factors[2])
        if gs != 1.0 or clipvalue != math.inf or l2 != 0.0:
            g = np.multiply(g, dt(gs), out=np.empty_like(w))
            if clipvalue != math.inf:
                np.clip(g, dt(-clipvalue), dt(clipvalue), out=g)
            if l2 != 0.0:
                g += dt(l2) * w
        else:
            g = g.view()
        g.flags.writeable = False
        if rule.host_decay:
            rule.host_step(w, g, state, named, backend, keep=keep)
            return
        if keep != 1.0:
            w *= dt(keep)
        rule.host_step(w, g, state, named, backend)

    def sumsq(self, grads):
        """Per-tensor sums of squares of the gradients (float64; clipping by norm)."""
        with np.errstate(all="ignore"):
            return np.array([0.0 if g is None else
                             float(np.sum(np.square(g, dtype=np.float64))) for g in grads])


class StagedPlan(Plan):
    """A :class:`Plan` over CUDA device tensors, staged through the host.

    Per tensor and step: the parameter, the gradient and the slots are copied
    to host NumPy arrays, :meth:`Plan._update` runs there (``host_step`` with
    the **numpy** backend module), and the parameter and the slots are copied
    back.  One tensor at a time, so the host holds one tensor's arrays at
    once.  The device is written only by the copies back, after the host work
    (which does not raise; every input was checked before the step began) --
    a CUDA error in a copy can still stop a step part-way, as it can stop a
    kernel.  Correct, and as fast as the host and the PCIe transfers allow:
    not a GPU kernel.

    Parameters
    ----------
    rule : fastopt.rule.Rule
        A ``per_tensor`` rule.
    params : list of device arrays
        The parameters, in their own shapes (one dtype; Numba device arrays).
    slots : list of list of device arrays
        Per slot (in ``rule.slots`` order), per tensor: the device views.
    device : module
        The cuda backend module (``to_host``, ``assign``).
    backend : module
        The host backend module ``host_step`` gets (the numpy backend).
    """

    def __init__(self, rule, params, slots, device, backend):
        super().__init__(rule, params, slots, backend)
        self.device = device

    def _tensor_step(self, t, g, pt, named, clipvalue):
        to_host, assign = self.device.to_host, self.device.assign
        w = to_host(self.params[t])
        state = {name: to_host(v) for name, v in self._state[t].items()}
        self._update(w, to_host(g), state, pt[:, t], named, clipvalue)
        assign(self.params[t], w)
        for name, v in self._state[t].items():
            assign(v, state[name])

    def sumsq(self, grads):
        """Per-tensor sums of squares of the gradients, on host copies."""
        return super().sumsq([None if g is None else self.device.to_host(g) for g in grads])
