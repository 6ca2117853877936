"""``fastopt.torch.Adafactor``: ``torch.optim.Adafactor`` on fastopt's
per-tensor Adafactor (:mod:`fastopt.algorithms.adafactor`, torch convention)."""
from __future__ import annotations

import math

import numpy as np
import torch as _torch

from ..backends import resolve_backend
from ..hyperparams import BACKEND_NAMES
from ..rule import get_rule

__all__ = ["Adafactor"]

_EMPTY = {dt: np.zeros(0, dt) for dt in (np.float32, np.float64)}


class Adafactor(_torch.optim.Adafactor):
    """``torch.optim.Adafactor`` (factored row and column variances, update
    clipping by ``d``, relative steps ``min(lr, 1/sqrt(t))``, decoupled
    weight decay, ``maximize``) on fastopt; see :mod:`fastopt.torch`.

    The constructor, its validation, ``param_groups``, ``state`` (``step``,
    ``row_var`` of shape ``(..., m, 1)``, ``col_var`` ``(..., 1, n)``, or
    ``variance`` for a vector) and ``state_dict`` are torch's own, so
    checkpoints move between this class and ``torch.optim.Adafactor`` both
    ways.  ``step`` runs fastopt's ``adafactor_torch`` rule on each parameter
    through NumPy views of the tensors (no copies): the reductions and the
    update in NumPy, the final ``p -= s*u`` in the backend's generated loop.

    Parameters
    ----------
    params, lr, beta2_decay, eps, d, weight_decay, foreach, maximize
        As ``torch.optim.Adafactor`` (``foreach`` changes nothing).
    backend : str, default "auto"
        The fastopt backend of the elementwise part (``"numpy"``,
        ``"numba"``, ``"cython"``).

    CPU float32 and float64 parameters, contiguous, only: others are refused
    before anything changes.
    """

    def __init__(self, params, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0,
                 weight_decay=0.0, *, foreach=None, maximize=False, backend="auto"):
        super().__init__(params, lr, beta2_decay, eps, d, weight_decay, foreach=foreach,
                         maximize=maximize)
        if not isinstance(backend, str) or backend not in ("auto", *BACKEND_NAMES) \
                or backend == "cuda":
            raise ValueError("fastopt.torch.Adafactor: backend must be 'auto', 'numpy', "
                             f"'numba' or 'cython', got {backend!r}")
        self._fastopt_backend = backend

    def _check_params(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.device.type != "cpu" or p.dtype not in (_torch.float32, _torch.float64) \
                        or not p.is_contiguous():
                    raise TypeError("fastopt.torch.Adafactor: parameters must be contiguous "
                                    f"CPU float32 or float64 tensors, got {p.dtype} on "
                                    f"{p.device} (contiguous={p.is_contiguous()}); use "
                                    "torch.optim.Adafactor for others")
                if p.grad.is_sparse:
                    raise RuntimeError("Adafactor does not support sparse gradients")
                if p.grad.device != p.device or p.grad.dtype != p.dtype:
                    raise TypeError("fastopt.torch.Adafactor: a gradient must have its "
                                    "parameter's dtype and device")

    @_torch.no_grad()
    def step(self, closure=None):
        """Perform a single optimization step (torch's Adafactor, per tensor)."""
        loss = None
        if closure is not None:
            with _torch.enable_grad():
                loss = closure()
        self._check_params()  # before any state changes
        rule = get_rule("adafactor_torch")
        for group in self.param_groups:
            params, grads, rows, cols, variances, steps = [], [], [], [], [], []
            self._init_group(group, params, grads, rows, cols, variances, steps)
            lr = float(group["lr"])
            eps1, eps2 = group["eps"]
            public = (lr, float(group["beta2_decay"]), math.nan if eps1 is None else float(eps1),
                      float(eps2), float(group["d"]))
            keep = 1.0 - lr * float(group["weight_decay"])
            for p, g, row, col, var, step_t in zip(params, grads, rows, cols, variances, steps):
                step_t += 1
                w = p.detach().numpy()
                g = g.detach().numpy()
                g = np.negative(g, out=np.empty_like(g)) if group["maximize"] else g.view()
                g.flags.writeable = False
                empty = _EMPTY[w.dtype.type]
                state = {"row_var": empty if row is None else row.numpy(),
                         "col_var": empty if col is None else col.numpy(),
                         "variance": empty if var is None else var.numpy()}
                backend = resolve_backend(self._fastopt_backend, w.dtype, w.size)
                with np.errstate(all="ignore"):
                    rule.host_step(w, g, state, rule.host_scalars((*public, step_t.item())),
                                   backend, keep=keep)
        return loss
