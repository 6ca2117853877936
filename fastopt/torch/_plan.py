"""The short way of a ``fastopt.torch`` step: a group prepared once."""
from __future__ import annotations

import math
from itertools import repeat
from operator import attrgetter, is_

import numpy as np
import torch

from ..reference import Q8_BLOCK as _Q8_BLOCK
from ..rule import RULES
from ._state import _track

#: parameter dtypes updated in place by one fused pass, and what MultiTensorStep
#: calls them (bfloat16, float16: float32 arithmetic on 2-byte storage, numba_bf16)
_DIRECT = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64),
           torch.bfloat16: "bfloat16", torch.float16: "float16"}
_NARROW = (torch.bfloat16, torch.float16)
_grad_of, _dtype_of = attrgetter("grad"), attrgetter("dtype")
_data_ptr, _is_contiguous = torch.Tensor.data_ptr, torch.Tensor.is_contiguous


def _narrow_direct(rule):
    """Whether bfloat16 or float16 parameters (and state) can run ``rule`` in one pass."""
    from ..backends import numba_bf16
    r = RULES[rule]
    return not (r.slots and numba_bf16.refusal(r))


class _GroupPlan:
    """The short way for a group whose every parameter is a contiguous tensor
    of one float dtype (float32 with 8-bit state) with complete state (or
    none yet, and no gradient):
    addresses of parameters and slots, the pointer table and the step counts
    prepared once.

    Every step still reads each parameter's ``.grad`` and its address and
    checks that the parameter has not moved, that its state dict and slot
    tensors are the same objects and that the gradient is a contiguous tensor
    of the parameter's dtype; anything else (a new parameter, a moved one, a
    loaded checkpoint, a sparse or strided gradient, another kernel) takes the
    general way, which rebuilds the plan.
    """

    @classmethod
    def build(cls, opt, group, rule):
        params = list(group["params"])
        if not params:
            return None
        dtype = params[0].dtype
        if dtype not in _DIRECT or (dtype in _NARROW and not _narrow_direct(rule)):
            return None
        host_rule = RULES[rule] if RULES[rule].host_state else None
        if host_rule is not None and not opt._COUNTS_STEPS:
            return None
        keys = opt._state_keys(rule)
        counts = opt._COUNTS_STEPS
        stateful = bool(keys) or counts
        sdt = opt._fastopt_slot_dtype or dtype
        int8 = opt.state_dtype == "int8" and bool(keys)
        if int8:  # codes (int8/uint8, the parameter's shape), then float32 scales
            if dtype is not torch.float32:
                return None
            r = RULES[rule]
            want = [(torch.uint8 if s in r.nonnegative else torch.int8) for s in r.slots]
            want += [torch.float32] * len(r.slots)
            half = len(r.slots)
        states, slots = [], []
        for p in params:
            if not (p.dtype is dtype and p.is_cpu and p.is_contiguous()):
                return None
            st = opt.state.get(p)
            if stateful and not st and p.grad is None:
                # no gradient yet, so no state (frozen, or not reached): skipped
                # until its first gradient, which takes the general way
                states.append(None)
                slots.append(())
                continue
            if stateful and not (st and all(k in st for k in keys)
                                 and (not counts or "step" in st)):
                return None
            sl = tuple(st[k] for k in keys)
            if int8:
                blocks = -(-p.numel() // _Q8_BLOCK)
                for j, (s, d) in enumerate(zip(sl, want)):
                    if not (s.dtype is d and s.is_cpu and s.is_contiguous()
                            and (s.shape == p.shape if j < half else s.numel() == blocks)):
                        return None
            else:
                for s in sl:
                    if not (s.dtype is sdt and s.is_cpu and s.is_contiguous()
                            and s.shape == p.shape):
                        return None
            states.append(st)
            slots.append(sl)
        # plans of groups that are gone (replaced or removed) are dropped
        live = {id(g) for g in opt.param_groups}
        for key in [k for k in opt._fastopt_plans if k not in live]:
            del opt._fastopt_plans[key]
        self = cls()
        _track(opt)
        self.state_obj = opt.state
        self.group, self.rule, self.keys, self.dtype = group, rule, keys, dtype
        self.params, self.states, self.slots = params, states, slots
        self.stateful = stateful
        self.pptrs = [p.data_ptr() for p in params]
        self.fused = opt._stepper(rule, _DIRECT[dtype], tuple(p.numel() for p in params))
        self.ptrs = self.fused.empty_pointers()
        self.ptrs[0] = self.pptrs
        for k in range(len(keys)):
            self.ptrs[2 + k] = [sl[k].data_ptr() if sl else 0 for sl in slots]
        self.n = len(params)
        self.twos = [2.0] * self.n
        self.nones = [None] * self.n
        self.counts = None
        if counts:  # one block for the group's counts: advanced in one NumPy store
            self.counts, views = opt._fastopt_counters.adopt_all(
                [st["step"] if st else 0.0 for st in states])
            for st, v in zip(states, views):
                if st:
                    st["step"] = v
            self.views = [v if st else None for st, v in zip(states, views)]
        # per-parameter host state (torch's mu_product, eta, mu): one block per
        # key, like the counts; the short way runs when every parameter has a
        # gradient and all share their count and host values (one advance)
        self.host_rule, self.host = host_rule, None
        if host_rule is not None:
            if not all(states):
                return None
            self.host = []
            for key, init in zip(opt._HOST_KEYS[rule], host_rule.host_init):
                if key is None:
                    self.host.append((None, init, None))
                    continue
                array, views = opt._fastopt_counters.adopt_all([st[key] for st in states])
                for st, v in zip(states, views):
                    st[key] = v
                self.host.append((array, key, views))
        self.version = opt.state.version
        # per state key, the tensors each parameter's state must still hold
        # (all parameters have state: the checks of _grads_of_all)
        self.columns = None
        if stateful and all(st is not None for st in states):
            self.columns = [(k, [sl[j] for sl in slots]) for j, k in enumerate(keys)]
            if self.counts is not None:
                self.columns.append(("step", self.views))
        return self

    def grads(self, state, rule):
        """The gradients' addresses (0: no gradient), or None: take the general way."""
        if rule != self.rule or state is not self.state_obj or \
                state.version != self.version or \
                len(self.group["params"]) != len(self.params):
            return None
        if self.columns is not None or not self.stateful:
            try:
                out = self._grads_of_all()
            except TypeError:   # a None gradient: the loop below sorts it out
                out = False
            except (RuntimeError, KeyError):  # e.g. a sparse gradient: the general way
                return None
            if out is None:
                return None
            if out is not False:
                if self.host is not None and not self._uniform_host(out):
                    return None
                return out if any(out) else None
        dtype = self.dtype
        keys = self.keys
        stateful = self.stateful
        views = self.views if self.counts is not None else self.nones
        out = []
        try:
            for p, q, pp, st, sl, v in zip(self.group["params"], self.params, self.pptrs,
                                           self.states, self.slots, views):
                if p is not q:
                    return None
                g = p.grad
                if stateful and st is None:  # no state yet: a first gradient goes the
                    if g is not None:        # general way, which creates it
                        return None
                    out.append(0)
                    continue
                if (v is not None and st["step"] is not v):
                    return None
                for k, s in zip(keys, sl):
                    if st[k] is not s:
                        return None
                if g is None:
                    out.append(0)
                    continue
                # (torch's .grad setter keeps the gradient on the parameter's device)
                if p.data_ptr() != pp or g.dtype is not dtype or not g.is_contiguous():
                    return None
                out.append(g.data_ptr())
        except (RuntimeError, KeyError):  # e.g. a sparse gradient: the general way says
            return None
        if self.host is not None and not self._uniform_host(out):
            return None
        return out if any(out) else None

    def _grads_of_all(self):
        """:meth:`grads` when every parameter has a gradient (and, for a
        stateful rule, state): the same checks, each one pass of C-level
        ``map`` over the group instead of a Python loop (about half the
        time per tensor).  None: take the general way; TypeError: a
        gradient is None (look closer)."""
        params = self.group["params"]
        if not all(map(is_, params, self.params)):
            return None
        grads = list(map(_grad_of, params))
        out = list(map(_data_ptr, grads))  # TypeError on a None gradient
        if list(map(_data_ptr, params)) != self.pptrs \
                or not all(map(is_, map(_dtype_of, grads), repeat(self.dtype))) \
                or not all(map(_is_contiguous, grads)):
            return None
        if self.columns:
            for key, column in self.columns:
                if not all(map(is_, map(dict.__getitem__, self.states, repeat(key)),
                               column)):
                    return None
        return out

    def _uniform_host(self, gptrs):
        """Whether every parameter has a gradient and the same count and host
        values, and the host tensors are still the plan's views."""
        if not all(gptrs):
            return False
        single = self.n == 1
        counts = self.counts
        if not (single or counts.min() == counts.max()):
            return False
        for array, key, views in self.host:
            if array is None:
                continue
            if not (single or array.min() == array.max()):  # (NaN: the general way)
                return False
            for st, v in zip(self.states, views):
                if st[key] is not v:
                    return False
        return True

    def run(self, opt, rule, gptrs, inv_scale, maximize):
        _, scalars, keep, l2 = rule
        ptrs = self.ptrs
        every = all(gptrs)
        if self.n == 1:  # element stores: cheaper than NumPy calls on tiny arrays
            ptrs[1, 0] = gptrs[0]
        else:
            ptrs[1] = gptrs
        steps = None
        if self.host is not None:  # uniform (checked by grads): advanced once
            counts = self.counts
            counts += 1
            host = tuple(init if array is None else float(array[0])
                         for array, init, _ in self.host)
            scalars, values = self.host_rule.advanced((*scalars, float(counts[0])), host)
            self._launch(opt, ptrs, scalars, keep, l2, None, inv_scale, maximize, True, gptrs)
            for (array, _, _), value in zip(self.host, values):
                if array is not None:
                    array[:] = value
            return
        if self.counts is not None:
            counts = self.counts
            if self.n <= 8:
                steps = []
                for i, gp in enumerate(gptrs):
                    n = counts.item(i) + (1 if gp else 0)
                    counts[i] = n
                    steps.append(n)
            else:
                if every:
                    counts += 1
                else:
                    counts[ptrs[1] != 0] += 1
                steps = counts.tolist()
        elif self.fused.per_tensor_step:  # SGD's momentum: every buffer exists
            steps = self.twos
        self._launch(opt, ptrs, scalars, keep, l2, steps, inv_scale, maximize, every, gptrs)

    def _launch(self, opt, ptrs, scalars, keep, l2, steps, inv_scale, maximize, every, gptrs):
        fused = self.fused
        fused.updates = opt._fastopt_updates
        sign = -inv_scale if maximize else inv_scale
        fused.launch(ptrs, scalars, steps if fused.per_tensor_step else None,
                     fused.rows(sign, keep, l2), math.inf)
        torch._C._increment_version(self.params if every else
                                    [p for p, g in zip(self.params, gptrs) if g])
