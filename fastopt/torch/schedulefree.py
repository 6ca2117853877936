"""``fastopt.torch.AdamWScheduleFree``: the authors' schedule-free AdamW
(``schedulefree.AdamWScheduleFree``, package version 1.4.1) on fastopt's fused
kernel.

The class has the package's name, constructor (``lr=0.0025``, ``betas``,
``eps``, ``weight_decay``, ``warmup_steps``, ``r``, ``weight_lr_power``,
``foreach``), ``param_groups`` keys (``k``, ``train_mode``, ``weight_sum``,
``lr_max``, ``scheduled_lr``...), per-parameter state (``z``,
``exp_avg_sq``), ``train()``/``eval()`` and the error of a step in eval mode,
so checkpoints move between the two in both directions.  It subclasses
``torch.optim.Optimizer`` (not the package's class: fastopt does not need the
package installed).  Only ``step`` differs: one fused pass per parameter
group and dtype (:func:`fastopt.algorithms.schedulefree.element_schedulefree_adamw`)
instead of the package's eight tensor operations, and ``p.grad`` is left as
it is (the package overwrites it with the normalised update).
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict

import numpy as np
import torch

from ..multi_tensor import MultiTensorStep
from ..rule import RULES

__all__ = ["AdamWScheduleFree"]

_RULE = RULES["schedulefree_adamw"]
_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
_CACHE_SIZE = 64


class AdamWScheduleFree(torch.optim.Optimizer):
    r"""Schedule-free AdamW, as ``schedulefree.AdamWScheduleFree`` (1.4.1),
    on fastopt's fused kernel; formulas in
    :class:`fastopt.ScheduleFreeAdamW`.

    As with the package, call :meth:`train` before training (the optimizer
    starts in eval mode, and :meth:`step` in eval mode raises) and
    :meth:`eval` before evaluating or saving a checkpoint.

    Parameters
    ----------
    params : iterable
        Parameters or parameter groups (dense CPU float32 or float64 tensors).
    lr : float, default 0.0025
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0
        Evaluated at ``y`` and added to the normalised gradient, as the
        package does.
    warmup_steps : int, default 0
    r : float, default 0.0
    weight_lr_power : float, default 2.0
    foreach : bool, optional
        Accepted and stored, as the package does; it changes nothing here.
    """

    def __init__(self, params, lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 warmup_steps=0, r=0.0, weight_lr_power=2.0,
                 foreach=hasattr(torch, "_foreach_mul_")):
        name = "fastopt.torch.AdamWScheduleFree"
        for key, value, low in (("lr", lr, 0.0), ("eps", eps, 0.0),
                                ("weight_decay", weight_decay, 0.0),
                                ("warmup_steps", warmup_steps, 0)):
            if not (float(value) >= low):
                raise ValueError(f"{name}: {key} must be >= {low}, got {value!r}")
        b1, b2 = (float(b) for b in betas)
        if not (0.0 < b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"{name}: betas must be in (0, 1) and [0, 1), got {betas!r} "
                             "(beta_1 = 0 leaves no way back from y to x)")
        defaults = dict(lr=lr, betas=betas, eps=eps, r=r, k=0, warmup_steps=warmup_steps,
                        train_mode=False, weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0,
                        weight_lr_power=weight_lr_power, weight_decay=weight_decay,
                        foreach=foreach)
        super().__init__(params, defaults)
        self._fastopt_lock = threading.RLock()
        self._fastopt_steps = OrderedDict()

    # -- modes (the package's, tensor for tensor) --------------------------------------
    @torch.no_grad()
    def eval(self):
        """Move the parameters to the average ``x`` (the package's ``eval()``)."""
        with self._fastopt_lock:
            for group in self.param_groups:
                if group["train_mode"]:
                    b1 = group["betas"][0]
                    for p in group["params"]:
                        st = self.state[p]
                        if "z" in st:
                            p.lerp_(end=st["z"].to(p.device), weight=1 - 1 / b1)
                    group["train_mode"] = False

    @torch.no_grad()
    def train(self):
        """Move the parameters to the training point ``y`` (the package's ``train()``)."""
        with self._fastopt_lock:
            for group in self.param_groups:
                if not group["train_mode"]:
                    b1 = group["betas"][0]
                    for p in group["params"]:
                        st = self.state[p]
                        if "z" in st:
                            p.lerp_(end=st["z"].to(p.device), weight=1 - b1)
                    group["train_mode"] = True

    # -- step ------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient (train mode only).

        Raises
        ------
        RuntimeError
            In eval mode (the package raises ``Exception`` with the same
            words), or for a gradient this class cannot take (sparse, on
            another device, of another dtype or shape, not float32/float64,
            non-contiguous parameter); then nothing has changed.
        """
        with self._fastopt_lock:
            if not self.param_groups[0]["train_mode"]:
                raise RuntimeError("Optimizer was not in train mode when step is called. "
                                   "Please insert .train() and .eval() calls on the "
                                   "optimizer. See documentation for details.")
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            work = [(group, self._gather(group)) for group in self.param_groups]
            for group, pairs in work:
                self._step_group(group, pairs)
            return loss

    def _gather(self, group):
        name = "fastopt.torch.AdamWScheduleFree"
        pairs = []
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            if g.is_sparse:
                raise RuntimeError(f"{name} does not support sparse gradients")
            if not (p.is_cpu and g.is_cpu):
                raise NotImplementedError(f"{name}: CPU tensors only (got {p.device})")
            if p.dtype not in _DTYPES or g.dtype != p.dtype:
                raise TypeError(f"{name}: float32 or float64 parameters with gradients of "
                                f"their dtype, got {p.dtype} and {g.dtype}")
            if g.shape != p.shape or not p.is_contiguous():
                raise RuntimeError(f"{name}: a contiguous parameter and a gradient of its "
                                   f"shape are needed, got {tuple(p.shape)} "
                                   f"(contiguous: {p.is_contiguous()}) and {tuple(g.shape)}")
            pairs.append((p, g.contiguous()))
        return pairs

    def _step_group(self, group, pairs):
        b1, b2 = (float(b) for b in group["betas"])
        k = group["k"]
        lr = float(group["lr"])
        public = (lr, b1, b2, float(group["eps"]), float(group["weight_decay"]),
                  float(group["warmup_steps"]), float(group["r"]),
                  float(group["weight_lr_power"]), float(k + 1))
        scalars, (lr_max, weight_sum, _) = _RULE.advanced(
            public, (float(group["lr_max"]), float(group["weight_sum"]), 1.0))
        by_dtype = {}
        for p, g in pairs:
            st = self.state[p]
            if "z" not in st:  # the package: z = a copy of y at a parameter's first step
                st["z"] = torch.clone(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            for key in ("z", "exp_avg_sq"):  # loaded in another dtype or layout
                s = st[key]
                if s.dtype != p.dtype or not s.is_contiguous() or not s.is_cpu \
                        or s.shape != p.shape:
                    st[key] = s.to(device=p.device, dtype=p.dtype).contiguous().reshape(p.shape)
            by_dtype.setdefault(p.dtype, []).append((p, g, st["z"], st["exp_avg_sq"]))
        for dtype, items in by_dtype.items():
            fused = self._stepper(_DTYPES[dtype], tuple(p.numel() for p, *_ in items))
            ptrs = np.array([[t.data_ptr() for t in column] for column in zip(*items)],
                            dtype=np.intp)
            fused.launch(ptrs, scalars, None, fused.rows(), math.inf)
        if pairs:
            torch._C._increment_version([p for p, _ in pairs])
        # the package's per-group bookkeeping, as it does it (also without gradients)
        group["scheduled_lr"] = lr * ((k + 1) / group["warmup_steps"]
                                      if k < group["warmup_steps"] else 1.0)
        group["lr_max"], group["weight_sum"], group["k"] = lr_max, weight_sum, k + 1

    def _stepper(self, dtype, sizes):
        key = (dtype, sizes)
        fused = self._fastopt_steps.get(key)
        if fused is None:
            fused = self._fastopt_steps[key] = MultiTensorStep(_RULE.name, dtype, sizes)
            if len(self._fastopt_steps) > _CACHE_SIZE:
                self._fastopt_steps.popitem(last=False)
        return fused

    def __getstate__(self):
        return {k: v for k, v in super().__getstate__().items()
                if k not in ("_fastopt_lock", "_fastopt_steps")}

    def __setstate__(self, state):
        super().__setstate__(state)
        self._fastopt_lock = threading.RLock()
        self._fastopt_steps = OrderedDict()
