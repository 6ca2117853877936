"""The machinery behind ``fastopt.torch``'s optimizers.

Each public class subclasses the ``torch.optim`` class of the same name, so
construction (argument names, order, defaults, validation and its errors),
``param_groups``, ``add_param_group``, ``zero_grad``, ``state_dict`` and
``load_state_dict`` are torch's own; only ``step`` is replaced.  A step:

1. reads every group's hyperparameters from ``param_groups`` (a scheduler's
   change takes effect now) and every parameter's ``.grad`` (gradients and
   parameters may have moved since the last step: addresses are read every
   step, ``data_ptr()``, never cached);
2. checks everything -- sparse or mismatched gradients, devices, dtypes --
   and raises before anything changes;
3. creates state for parameters that have their first gradient, in torch's
   format and key names, in the parameter's dtype and memory layout;
4. runs one :class:`fastopt.MultiTensorStep` call per group, dtype and
   distinct step count (the common case: one call per group), with torch's
   formulas (``convention="torch"``, checked against torch's recordings);
   dense tensors (contiguous, channels_last, transposed...) are updated in
   place by address, bfloat16 and float16 ones in float32 arithmetic rounded
   to nearest on every store, as torch's fused optimizers do; parameters with
   gaps in memory, and 2-byte ones under centred RMSprop, are computed on
   float32 (float64 stays float64) staging copies and written back;
5. bumps the parameters' autograd version counters, as torch's in-place
   updates do.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict

import numpy as np
import torch
from torch.autograd import profiler as _profiler
from torch.optim import optimizer as _torch_optimizer

from .. import backends as _backends
from .. import reference as _reference
from ..multi_tensor import MultiTensorStep
from ..rule import RULES
from ._plan import _DIRECT, _NARROW, _GroupPlan, _narrow_direct
from ._state import _Counters, _track

#: 2-byte parameter dtypes computed in float32 on staging copies when the rule
#: is one that numba_bf16 refuses (centred RMSprop) or the layout has gaps
_STAGED = _NARROW
_STRIDED = torch.strided
#: MultiTensorStep objects kept per optimizer (their chunk tables)
_CACHE_SIZE = 64


def _dense(t):
    """Whether ``t`` covers its memory without gaps or overlaps (any stride order)."""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


class _Item:
    """One parameter in this step: its tensors as the kernel sees them."""

    __slots__ = ("param", "grad", "slots", "step", "work", "staged", "fresh")

    def __init__(self, param, grad, slots, step, work, staged, fresh):
        self.param, self.grad, self.slots, self.step = param, grad, slots, step
        self.work, self.staged, self.fresh = work, staged, fresh


class FusedOptimizer:
    """Mixin that replaces ``torch.optim.Optimizer.step`` by fastopt's fused
    kernels.  Subclasses define :meth:`_rule` (the kernel, its scalars and the
    per-tensor weight-decay factors of a group) and :meth:`_new_state`."""

    #: torch's GradScaler hands this optimizer ``grad_scale``/``found_inf``
    #: instead of unscaling the gradients in a pass of its own
    _step_supports_amp_scaling = True
    #: state keys, in kernel slot order, per rule (set by subclasses)
    _SLOT_KEYS: dict = {}
    #: whether the rule counts ``state["step"]`` (SGD does not)
    _COUNTS_STEPS = True
    #: per rule with host-side state: the per-parameter state keys of its
    #: ``host_state`` values, in order (NAdam: ``("mu_product",)``); None for
    #: a value torch does not keep (ASGD's ``eta_now``, ``mu_now``: the rule's
    #: ``advance`` derives them from the others), which starts at its
    #: ``host_init`` value and is not stored
    _HOST_KEYS: dict = {}

    def _fastopt_init(self, capturable=False, differentiable=False, state_dtype=None,
                      state_rounding=None):
        name = type(self).__name__
        if differentiable:
            raise ValueError(f"fastopt.torch.{name}: differentiable=True is not supported (the "
                             "fused kernels do not record the update in the autograd graph); "
                             f"use torch.optim.{name} for that")
        if capturable:
            raise ValueError(f"fastopt.torch.{name}: capturable=True is not supported (CUDA "
                             f"graph capture); use torch.optim.{name} for that")
        if state_dtype is None:
            if state_rounding is not None:
                raise ValueError(f"fastopt.torch.{name}: state_rounding applies only with "
                                 "state_dtype='bfloat16' or 'int8'")
        elif state_dtype == "int8" or state_dtype is torch.int8:
            state_dtype = "int8"
            state_rounding = "nearest" if state_rounding is None else state_rounding
            if state_rounding != "nearest":
                raise ValueError(f"fastopt.torch.{name}: state_rounding must be 'nearest' "
                                 f"with state_dtype='int8' (the 8-bit code rounds to "
                                 f"nearest), got {state_rounding!r}")
        elif state_dtype != "bfloat16" and state_dtype is not torch.bfloat16:
            raise ValueError(f"fastopt.torch.{name}: state_dtype must be None (the "
                             f"parameters' dtype), 'bfloat16' or 'int8', got {state_dtype!r}")
        else:
            from ..backends import numba_bf16
            state_dtype = "bfloat16"
            state_rounding = "nearest" if state_rounding is None else state_rounding
            if state_rounding not in numba_bf16.ROUNDINGS:
                raise ValueError(f"fastopt.torch.{name}: state_rounding must be one of "
                                 f"{numba_bf16.ROUNDINGS}, got {state_rounding!r}")
        self.state_dtype, self.state_rounding = state_dtype, state_rounding
        # one step, state_dict() or load_state_dict() at a time (thread safety)
        self._fastopt_lock = threading.RLock()
        # the dtype new slots are made in (with 8-bit state: float32, encoded
        # into codes and scales before the first step, see _int8_item)
        self._fastopt_slot_dtype = {None: None, "bfloat16": torch.bfloat16,
                                    "int8": torch.float32}[state_dtype]
        self._fastopt_updates = 0
        self._fastopt_steps = OrderedDict()
        self._fastopt_counters = _Counters()
        _track(self)
        for group in self.param_groups:
            self._check_state_dtype(group, self._rule(group)[0])
        self._fastopt_plans = {}
        if not _backends.num_threads_set():
            limit = _backends.get_backend("numba").max_threads()
            _backends.set_num_threads(max(1, min(torch.get_num_threads(), limit)))

    def _state_keys(self, rule):
        """The state keys of ``rule``'s slots, in pointer-table row order: with
        8-bit state the codes' keys (torch's names), then their scales'
        (``"<key>_scales"``)."""
        keys = self._SLOT_KEYS[rule]
        if keys and self.state_dtype == "int8":
            return keys + tuple(k + "_scales" for k in keys)
        return keys

    def _check_state_dtype(self, group, rule):
        """With bfloat16 state: float32 parameters and a rule that can keep it;
        with 8-bit state: float32, bfloat16 or float16 parameters, ditto."""
        if self.state_dtype is None:
            return
        name = type(self).__name__
        if self.state_dtype == "int8":
            for p in group["params"]:
                if p.dtype not in (torch.float32, torch.bfloat16, torch.float16):
                    raise TypeError(f"fastopt.torch.{name}: state_dtype='int8' needs float32, "
                                    f"bfloat16 or float16 parameters (the kernels compute in "
                                    f"float32), got {p.dtype}")
            if not RULES[rule].slots:
                return
            from ..backends import _q8
            why = _q8.refusal(RULES[rule])
            if why:
                raise ValueError(f"fastopt.torch.{name}: state_dtype='int8' is not offered "
                                 f"for this configuration ({rule}): {why}")
            return
        for p in group["params"]:
            if p.dtype != torch.float32:
                raise TypeError(f"fastopt.torch.{name}: state_dtype='bfloat16' needs float32 "
                                f"parameters (the kernels compute in float32), got {p.dtype}")
        from ..backends import numba_bf16
        why = numba_bf16.refusal(RULES[rule])
        if why and RULES[rule].slots:
            raise ValueError(f"fastopt.torch.{name}: state_dtype='bfloat16' is not offered "
                             f"for this configuration ({rule}): {why}")

    def _slot_zeros(self, p):
        """A new state tensor for ``p``: its shape and layout, the state dtype
        (with 8-bit state: a contiguous float32 tensor, encoded before the step)."""
        if self.state_dtype == "int8":
            return torch.zeros(p.shape, dtype=torch.float32)
        return torch.zeros_like(p, dtype=self._fastopt_slot_dtype,
                                memory_format=torch.preserve_format)

    def _int8_item(self, rule, p, g, st, fresh):
        """The :class:`_Item` of ``p`` with 8-bit state: the codes and scales
        of each slot in place (encoding slots that :meth:`_new_state` just
        made in float32); a contiguous float32 parameter is updated in place,
        any other (bfloat16, float16, gaps or another order in memory)
        through a contiguous float32 copy, written back after the step.

        The blocks are those of the parameter's elements in row-major
        (``p.contiguous()``) order, whatever its memory layout."""
        reference = _reference
        name = type(self).__name__
        r = RULES[rule]
        slots, scales = [], []
        for key, slot in zip(self._SLOT_KEYS[rule], r.slots):
            signed = slot not in r.nonnegative
            want = torch.int8 if signed else torch.uint8
            skey = key + "_scales"
            c = st[key]
            if skey not in st:
                if not (isinstance(c, torch.Tensor) and c.is_floating_point()):
                    raise RuntimeError(f"fastopt.torch.{name}: state[{key!r}] holds codes but "
                                       f"there is no {skey!r}")
                codes, sc = reference.q8_encode(c.detach().float().contiguous().numpy(),
                                                signed)
                c = st[key] = torch.from_numpy(codes).reshape(p.shape)
                st[skey] = torch.from_numpy(sc)
            sc = st[skey]
            nblocks = -(-p.numel() // reference.Q8_BLOCK)
            if not (isinstance(c, torch.Tensor) and c.dtype is want and c.shape == p.shape
                    and c.is_cpu and isinstance(sc, torch.Tensor)
                    and sc.dtype is torch.float32 and sc.numel() == nblocks and sc.is_cpu):
                raise TypeError(f"fastopt.torch.{name}: 8-bit state {key!r} must be {want} "
                                f"codes of the parameter's shape {tuple(p.shape)} and "
                                f"{skey!r} {nblocks} float32 scales (one per "
                                f"{reference.Q8_BLOCK} elements); got "
                                f"{getattr(c, 'dtype', type(c))} of shape "
                                f"{tuple(getattr(c, 'shape', ()))} and "
                                f"{getattr(sc, 'dtype', type(sc))} of "
                                f"{getattr(sc, 'numel', lambda: '?')()}")
            if not c.is_contiguous():
                c = st[key] = c.contiguous()
            if not sc.is_contiguous():
                sc = st[skey] = sc.contiguous()
            slots.append(c)
            scales.append(sc)
        step = st.get("step") if st else None
        if p.dtype is torch.float32 and p.is_contiguous():
            return _Item(p, g if g.is_contiguous() else g.contiguous(), slots + scales, step,
                         p, False, fresh)
        return _Item(p, g.to(torch.float32).contiguous(), slots + scales, step,
                     p.detach().to(torch.float32).contiguous(), True, fresh)

    # -- step ---------------------------------------------------------------------------
    def step(self, closure=None):
        """Perform a single optimization step (torch's semantics, fastopt's kernels).

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss (run with gradients
            enabled, before the update).
        """
        with self._fastopt_lock:  # a whole step, or none (see fastopt.torch)
            if (_profiler._is_profiler_enabled or _torch_optimizer._global_optimizer_pre_hooks
                    or _torch_optimizer._global_optimizer_post_hooks
                    or self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks):
                # hooks see (optimizer, args, kwargs) with args = (optimizer, ...) as
                # under torch's wrapper
                return self._hooked_step((self,) if closure is None else (self, closure), {})
            return self._fused_step(closure)

    # torch.optim.Optimizer wraps ``step`` in a profiler-and-hooks wrapper
    # (15-35 us a call) unless it is marked as hooked: this step runs the
    # hooks itself, and enters record_function only while a profiler runs.
    step.hooked = True

    def _hooked_step(self, args, kwargs):
        with torch.autograd.profiler.record_function(
                f"Optimizer.step#{type(self).__name__}.step"):
            for pre_hook in (*_torch_optimizer._global_optimizer_pre_hooks.values(),
                             *self._optimizer_step_pre_hooks.values()):
                result = pre_hook(self, args, kwargs)
                if result is not None:
                    if isinstance(result, tuple) and len(result) == 2:
                        args, kwargs = result
                    else:
                        raise RuntimeError(f"{self.step} must return None or a tuple of "
                                           f"(new_args, new_kwargs), but got {result}.")
            out = self._fused_step(*args[1:], **kwargs)
            self._optimizer_step_code()
            for post_hook in (*self._optimizer_step_post_hooks.values(),
                              *_torch_optimizer._global_optimizer_post_hooks.values()):
                post_hook(self, args, kwargs)
            return out

    def _fused_step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None and bool(found_inf):
            return loss  # as torch's fused optimizers: no update, no step counted
        grad_scale = getattr(self, "grad_scale", None)
        inv_scale = 1.0 if grad_scale is None else 1.0 / float(grad_scale)
        # 1. gather and check everything; nothing changes until all is checked
        work = []
        for group in self.param_groups:
            rule = self._rule(group)
            plan = self._fastopt_plans.get(id(group))
            gptrs = plan.grads(self.state, rule[0]) if plan is not None and \
                plan.group is group else None
            if gptrs is not None:
                work.append((group, rule, plan, gptrs))
            else:
                pairs = self._gather(group)
                if pairs:
                    self._check_state_dtype(group, rule[0])
                    work.append((group, rule, None, pairs))
        # 2. state, step counts, kernels
        for group, rule, plan, arg in work:
            if plan is not None:
                plan.run(self, rule, arg, inv_scale, group["maximize"])
            else:
                self._update_group(group, rule, arg, inv_scale)
                plan = _GroupPlan.build(self, group, rule[0])
                if plan is not None:
                    self._fastopt_plans[id(group)] = plan
        self._fastopt_updates += 1  # draws of stochastic rounding: 0 at the first step
        return loss

    def _gather(self, group):
        """``[(param, grad)]`` of the group's parameters that have a gradient, checked."""
        pairs = []
        device = None
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            if not (p.is_cpu and g.is_cpu and g.layout is _STRIDED and p.dtype in _DIRECT
                    and g.dtype is p.dtype):
                self._refuse(p, g)
            if device is None:
                device = p.device
            elif p.device != device:
                raise ValueError(f"fastopt.torch.{type(self).__name__}: a parameter group "
                                 f"mixes devices ({device} and {p.device}); put each "
                                 "device's parameters in a group of its own")
            pairs.append((p, g))
        for p, g in pairs:
            if g.shape != p.shape:
                raise RuntimeError(f"fastopt.torch.{type(self).__name__}: a gradient of "
                                   f"shape {tuple(g.shape)} for a parameter of shape "
                                   f"{tuple(p.shape)}")
        return pairs

    def _refuse(self, p, g):
        """Raise the error for a pair the fast check did not pass, unless it is
        fine (bfloat16 and float16 parameters)."""
        name = type(self).__name__
        if g.layout is not _STRIDED:
            raise RuntimeError(f"fastopt.torch.{name} does not support sparse gradients")
        if not p.is_cpu:
            raise NotImplementedError(
                f"fastopt.torch.{name}: parameters on {p.device} are not supported yet; "
                "fastopt.torch updates CPU tensors (the CUDA route through numba-cuda is "
                "not done)")
        if not g.is_cpu:
            raise ValueError(f"fastopt.torch.{name}: a gradient on {g.device} for a "
                             f"parameter on {p.device}")
        if p.dtype not in _DIRECT and p.dtype not in _STAGED:
            raise TypeError(f"fastopt.torch.{name}: parameters of dtype {p.dtype} are not "
                            "supported (float32, float64, bfloat16, float16)")
        if g.dtype != p.dtype:
            raise TypeError(f"fastopt.torch.{name}: a gradient of dtype {g.dtype} for a "
                            f"parameter of dtype {p.dtype}")

    def _update_group(self, group, rule, pairs, inv_scale):
        """The general step of one group: any dtype, layout and state."""
        rule, scalars, keep, l2 = rule
        keys = self._state_keys(rule)
        int8 = self.state_dtype == "int8" and bool(keys)
        sign = -inv_scale if group["maximize"] else inv_scale
        state = self.state
        counts = self._COUNTS_STEPS
        items = []
        staged = False
        narrow_ok = _narrow_direct(rule)
        for p, g in pairs:
            st = state.get(p)
            fresh = not st or any(k not in st for k in keys)
            if fresh and (keys or counts):
                st = state[p]
                self._new_state(group, p, st)
            if int8:
                it = self._int8_item(rule, p, g, st, fresh)
                staged = staged or it.staged
                items.append(it)
            elif p.dtype in _DIRECT and (p.is_contiguous() or _dense(p)) and (
                    narrow_ok or p.dtype not in _NARROW):
                contiguous = p.is_contiguous()
                stride = None if contiguous else p.stride()
                if not (g.is_contiguous() if contiguous else g.stride() == stride):
                    g = _like(p, g)  # same element, same offset: or a copy
                slots = []
                sdt = self._fastopt_slot_dtype or p.dtype
                for k in keys:
                    s = st[k]
                    if s.dtype is not sdt or not s.is_cpu or not (
                            s.is_contiguous() if contiguous else s.stride() == stride) \
                            or s.shape != p.shape:
                        s = st[k] = _like(p, s, sdt)  # e.g. loaded in another layout or dtype
                    slots.append(s)
                items.append(_Item(p, g, slots, st and st.get("step"), p, False, fresh))
            else:
                staged = True
                work = torch.float64 if p.dtype == torch.float64 else torch.float32
                items.append(_Item(p, g.to(work).contiguous(),
                                   [st[k].to(work).contiguous() for k in keys],
                                   st and st.get("step"), p.to(work).contiguous(), True,
                                   fresh))
        steps = self._count(items) if counts else [1.0 if it.fresh else 2.0 for it in items]
        host_rule = RULES[rule] if RULES[rule].host_state else None
        # one kernel call per working dtype, direct or staged (and per distinct step count)
        first = items[0]
        if host_rule is not None:  # and per distinct step count and host state
            by_kind, host_new = self._host_buckets(host_rule, scalars, items, steps)
        elif all(it.work.dtype is first.work.dtype and it.staged == first.staged
                 for it in items):
            by_kind = {(first.work.dtype, first.staged): (items, steps)}
        else:
            by_kind = {}
            for it, n in zip(items, steps):
                its, ns = by_kind.setdefault((it.work.dtype, it.staged), ([], []))
                its.append(it)
                ns.append(n)
        for kind, (its, counts_) in by_kind.items():
            dtype, is_staged = kind[:2]
            if host_rule is not None:
                scalars = kind[2]
            sizes = tuple([it.work.numel() for it in its])
            fused = self._stepper(rule, _DIRECT[dtype], sizes, is_staged)
            ptrs = np.array([[it.work.data_ptr() for it in its],
                             [it.grad.data_ptr() for it in its],
                             *([it.slots[k].data_ptr() for it in its]
                               for k in range(len(keys)))], dtype=np.intp)
            # (8-bit state: codes' rows, then the scales' rows, as numba_int8 reads them)
            fused.updates = self._fastopt_updates
            fused.launch(ptrs, scalars, counts_ if fused.per_tensor_step else None,
                         fused.rows(sign, keep, l2), math.inf)
        if host_rule is not None:
            for locs, values in host_new:
                for loc, value in zip(locs, values):
                    if loc is not None:
                        loc[0][loc[1]] = value
        direct = [it.param for it in items if not it.staged]
        if direct:
            torch._C._increment_version(direct)
        if staged:
            with torch.no_grad():
                for it in items:
                    if it.staged:
                        it.param.copy_(it.work)
                        if int8:  # the codes and scales were updated in place
                            continue
                        st = state.get(it.param, {})
                        for k, s in zip(keys, it.slots):
                            st[k].copy_(s)

    def _host_buckets(self, rule, scalars, items, steps):
        """For a rule with host-side state (:attr:`fastopt.rule.Rule.host_state`;
        torch keeps it per parameter, ``state[p]["mu_product"]``): the kernel
        calls, one per working dtype, direct or staged, and distinct step
        count and host state, as ``{(dtype, staged, full scalars): (items,
        None)}``, and each item's advanced host values (stored after the step)."""
        keys = self._HOST_KEYS[rule.name]
        state = self.state
        where = self._fastopt_counters.location
        buckets, new, done = {}, [], {}
        for it, n in zip(items, steps):
            st = state[it.param]
            locs = tuple(None if k is None else where(st, k) for k in keys)
            host = tuple(init if loc is None else float(loc[0][loc[1]])
                         for loc, init in zip(locs, rule.host_init))
            key = (n, host)  # parameters that share their count and state share the result
            advanced = done.get(key)
            if advanced is None:
                advanced = done[key] = rule.advanced((*scalars, n), host)
            full, values = advanced
            new.append((locs, values))
            buckets.setdefault((it.work.dtype, it.staged, full), ([], None))[0].append(it)
        return buckets, new

    def _count(self, items):
        """Advance each parameter's ``state["step"]`` by one; the new counts.

        The counts live in NumPy blocks (:class:`_Counters`) and
        ``state["step"]`` is a 0-d tensor view of one element, so counting
        costs no torch operator call (each ~6 us here); a step tensor that
        is not such a view (loaded from a checkpoint, set by hand) is adopted
        first: its value is copied into a block and the state gets the view.
        """
        return self._fastopt_counters.advance(self.state, items)

    def _stepper(self, rule, dtype, sizes, staged=None):
        """The cached MultiTensorStep of a rule over tensors of these sizes
        (``staged``: float32 working copies, so float32 state -- except 8-bit
        state, whose codes and scales are stepped in place; a rule without
        state, such as plain SGD, has no state to keep in bfloat16)."""
        state = None if not RULES[rule].slots or (staged and self.state_dtype != "int8") \
            else self.state_dtype
        key = (rule, dtype, sizes, state)
        cache = self._fastopt_steps
        fused = cache.get(key)
        if fused is None:
            fused = cache[key] = MultiTensorStep(rule, dtype, sizes, state_dtype=state,
                                                 state_rounding=self.state_rounding or
                                                 "nearest")
            if len(cache) > _CACHE_SIZE:
                cache.popitem(last=False)
        return fused

    # -- what subclasses provide ------------------------------------------------------------
    def _rule(self, group):  # pragma: no cover - every subclass overrides
        """``(rule name, scalars, keep, l2)`` of a group for this step."""
        raise NotImplementedError

    def _new_state(self, group, p, st):  # pragma: no cover
        raise NotImplementedError

    # -- state ------------------------------------------------------------------------------
    def state_dict(self):
        """torch's ``state_dict()``, taken between steps, with the state
        tensors *copied*: a snapshot that a step in another thread cannot
        change while it is being saved (``torch.optim`` returns the live
        tensors)."""
        with self._fastopt_lock:
            out = super().state_dict()
            out["state"] = {k: {n: v.clone() if isinstance(v, torch.Tensor) else v
                                for n, v in st.items()} for k, st in out["state"].items()}
            return out

    def load_state_dict(self, state_dict):
        """torch's ``load_state_dict``, refusing state of another
        ``state_dtype``'s kind: 8-bit codes and scales into an optimizer with
        float state, or float state into one with ``state_dtype="int8"``
        (a ``ValueError``; nothing changes).  8-bit codes and scales are
        loaded as they are (torch's own loader would cast them to the
        parameters' dtype)."""
        with self._fastopt_lock:
            keep = self._check_loaded_state(state_dict)
            super().load_state_dict(state_dict)
            if keep:
                saved = [i for g in state_dict["param_groups"] for i in g["params"]]
                ours = [p for g in self.param_groups for p in g["params"]]
                where = dict(zip(saved, ours))
                for i, values in keep.items():
                    st = self.state[where[i]]
                    for key, v in values.items():
                        st[key] = v.detach().to("cpu", copy=True).contiguous()
            self._fastopt_steps.clear()
            self._fastopt_counters = _Counters()
            self._fastopt_plans = {}
            _track(self)

    def _check_loaded_state(self, state_dict):
        """Raise if ``state_dict`` holds state of the other kind (8-bit or
        float); with 8-bit state, ``{param id: {key: tensor}}`` of its codes
        and scales, checked."""
        name = type(self).__name__
        int8 = self.state_dtype == "int8"
        signed = {}
        for rule, keys in self._SLOT_KEYS.items():
            r = RULES[rule]
            for key, slot in zip(keys, r.slots):
                signed[key] = slot not in r.nonnegative
        keep = {}
        for i, st in state_dict.get("state", {}).items():
            if not isinstance(st, dict):
                continue
            for key in signed.keys() & st.keys():
                c, sc = st[key], st.get(key + "_scales")
                if not isinstance(c, torch.Tensor):
                    continue  # (SGD's momentum_buffer None)
                codes = c.dtype in (torch.int8, torch.uint8)
                if not int8:
                    if codes or sc is not None:
                        raise ValueError(
                            f"fastopt.torch.{name}.load_state_dict: the state of parameter "
                            f"{i} holds 8-bit codes ({key!r}, {key + '_scales'!r}), saved "
                            f"with state_dtype='int8'; load it into an optimizer made with "
                            f"state_dtype='int8' (no conversion is made)")
                    continue
                want = torch.int8 if signed[key] else torch.uint8
                if not (c.dtype is want and isinstance(sc, torch.Tensor)
                        and sc.dtype is torch.float32
                        and sc.numel() == -(-c.numel() // _reference.Q8_BLOCK)):
                    raise ValueError(
                        f"fastopt.torch.{name}.load_state_dict: this optimizer keeps 8-bit "
                        f"state (state_dtype='int8'), but state {key!r} of parameter {i} is "
                        f"{c.dtype}" + (" without" if sc is None else " with") +
                        f" {key + '_scales'!r}: a state_dict saved with another state_dtype "
                        f"cannot be loaded (no conversion is made); it needs {want} codes "
                        f"and float32 scales, one per {_reference.Q8_BLOCK} elements")
                keep.setdefault(i, {})[key] = c
                keep[i][key + "_scales"] = sc
        return keep

    def __getstate__(self):
        out = {k: v for k, v in super().__getstate__().items() if k != "_fastopt_lock"}
        out.update(state_dtype=self.state_dtype, state_rounding=self.state_rounding,
                   _fastopt_slot_dtype=self._fastopt_slot_dtype,
                   _fastopt_updates=self._fastopt_updates)
        return out

    def __setstate__(self, state):
        super().__setstate__(state)
        for key, value in (("state_dtype", None), ("state_rounding", None),
                           ("_fastopt_slot_dtype", None), ("_fastopt_updates", 0)):
            self.__dict__.setdefault(key, value)
        self.__dict__.setdefault("_fastopt_steps", OrderedDict())
        self.__dict__.setdefault("_fastopt_counters", _Counters())
        self.__dict__.setdefault("_fastopt_plans", {})
        self.__dict__.setdefault("_fastopt_lock", threading.RLock())
        _track(self)


def _like(p, t, dtype=None):
    """A copy of ``t`` in ``p``'s memory layout and device, and ``dtype`` (default: ``p``'s)."""
    out = torch.empty_like(p, dtype=dtype)
    out.copy_(t)
    return out


def _f(x):
    """A hyperparameter as a Python float (torch allows 0-d tensors for lr, betas...)."""
    return float(x)


def _decay(group, decoupled):
    """``(keep, l2)`` for the group's weight decay."""
    wd = _f(group["weight_decay"])
    if not wd:
        return 1.0, 0.0
    if decoupled:
        return 1.0 - _f(group["lr"]) * wd, 0.0
    return 1.0, wd


__all__ = ["FusedOptimizer"]
