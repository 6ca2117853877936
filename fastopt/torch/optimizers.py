"""The ``torch.optim`` drop-in classes of :mod:`fastopt.torch`, one per
fastopt optimizer, on the :class:`~fastopt.torch._optim.FusedOptimizer` mixin."""
from __future__ import annotations

import torch as _torch

from ..rule import RULES
from ._optim import FusedOptimizer, _decay, _f
from ._state import _scalar_dtype, _step_tensor

__all__ = ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Adamax", "Adadelta", "NAdam", "ASGD",
           "RAdam", "Rprop", "Muon"]


def _slot_keys(*rules):
    """``_SLOT_KEYS`` of a class: each rule's torch ``state`` keys, in kernel
    slot order, as its family module declares them (``Rule.torch_state``)."""
    keys = {name: RULES[name].torch_state for name in rules}
    for name, k in keys.items():
        if len(k) != len(RULES[name].slots):  # pragma: no cover - a registry error
            raise RuntimeError(f"rule {name!r} declares no torch state key for every slot")
    return keys


class SGD(FusedOptimizer, _torch.optim.SGD):
    """``torch.optim.SGD`` (momentum, dampening, Nesterov, weight decay,
    maximize) on fastopt's fused kernels; see :mod:`fastopt.torch`.

    With ``state_dtype="int8"`` and momentum: ``state[p]["momentum_buffer"]``
    holds int8 codes and ``state[p]["momentum_buffer_scales"]`` their float32
    scales (see :mod:`fastopt.torch`, "8-bit state")."""

    _COUNTS_STEPS = False
    _SLOT_KEYS = _slot_keys("sgd", "sgd_momentum_torch", "sgd_nesterov_torch")

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, *, maximize=False, foreach=None, differentiable=False,
                 fused=None, state_dtype=None, state_rounding=None):
        super().__init__(params, lr, momentum, dampening, weight_decay, nesterov,
                         maximize=maximize, foreach=foreach, differentiable=differentiable,
                         fused=fused)
        self._fastopt_init(False, differentiable, state_dtype, state_rounding)

    def _rule(self, group):
        lr, mu = _f(group["lr"]), _f(group["momentum"])
        keep, l2 = _decay(group, False)
        if mu == 0:
            return "sgd", (lr,), keep, l2
        rule = "sgd_nesterov_torch" if group["nesterov"] else "sgd_momentum_torch"
        return rule, (lr, mu, _f(group["dampening"])), keep, l2

    def _new_state(self, group, p, st):
        if "momentum_buffer" not in st or st["momentum_buffer"] is None:
            st["momentum_buffer"] = self._slot_zeros(p)


class Adagrad(FusedOptimizer, _torch.optim.Adagrad):
    """``torch.optim.Adagrad`` (lr_decay, initial_accumulator_value, weight
    decay, maximize) on fastopt's fused kernels; see :mod:`fastopt.torch`.

    With ``state_dtype="int8"``: ``state[p]["sum"]`` holds uint8 codes and
    ``state[p]["sum_scales"]`` their float32 scales (see
    :mod:`fastopt.torch`, "8-bit state")."""

    _SLOT_KEYS = _slot_keys("adagrad_torch")

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0,
                 initial_accumulator_value=0, eps=1e-10, foreach=None, *, maximize=False,
                 differentiable=False, fused=None, state_dtype=None, state_rounding=None):
        super().__init__(params, lr, lr_decay, weight_decay, initial_accumulator_value, eps,
                         foreach, maximize=maximize, differentiable=differentiable,
                         fused=fused)
        self._fastopt_init(False, differentiable, state_dtype, state_rounding)

    def _rule(self, group):
        keep, l2 = _decay(group, False)
        return ("adagrad_torch", (_f(group["lr"]), _f(group["eps"]), _f(group["lr_decay"])),
                keep, l2)

    def _new_state(self, group, p, st):
        if "step" not in st:
            st["step"] = _step_tensor()
        if "sum" not in st:
            st["sum"] = self._slot_zeros(p).fill_(group["initial_accumulator_value"])


class RMSprop(FusedOptimizer, _torch.optim.RMSprop):
    """``torch.optim.RMSprop`` (``alpha``, centred, momentum, weight decay,
    maximize) on fastopt's fused kernels; see :mod:`fastopt.torch`.

    With ``state_dtype="int8"`` (not centred): ``state[p]["square_avg"]``
    holds uint8 codes, ``"momentum_buffer"`` int8 codes, each with its
    float32 ``"<key>_scales"`` (see :mod:`fastopt.torch`, "8-bit state")."""

    _SLOT_KEYS = _slot_keys("rmsprop_torch", "rmsprop_momentum_torch", "rmsprop_centered_torch",
                            "rmsprop_centered_momentum_torch")

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, capturable=False, foreach=None, maximize=False,
                 differentiable=False, *, state_dtype=None, state_rounding=None):
        super().__init__(params, lr, alpha, eps, weight_decay, momentum, centered, capturable,
                         foreach, maximize, differentiable)
        self._fastopt_init(capturable, differentiable, state_dtype, state_rounding)

    def _rule(self, group):
        keep, l2 = _decay(group, False)
        lr, rho, mu, eps = (_f(group[k]) for k in ("lr", "alpha", "momentum", "eps"))
        rule = "rmsprop" + ("_centered" if group["centered"] else "") + \
            ("_momentum" if mu > 0 else "") + "_torch"
        scalars = (lr, rho, mu, eps) if mu > 0 else (lr, rho, eps)
        return rule, scalars, keep, l2

    def _new_state(self, group, p, st):
        if "step" not in st:
            st["step"] = _step_tensor()
        for key in ("square_avg", "momentum_buffer", "grad_avg"):
            if key not in st and (key == "square_avg"
                                  or (key == "momentum_buffer" and group["momentum"] > 0)
                                  or (key == "grad_avg" and group["centered"])):
                st[key] = self._slot_zeros(p)


class _AdamRule:
    _SLOT_KEYS = _slot_keys("adam_torch", "adam_amsgrad_torch")

    def _rule(self, group):
        b1, b2 = group["betas"]
        keep, l2 = _decay(group, group.get("decoupled_weight_decay", False))
        rule = "adam_amsgrad_torch" if group["amsgrad"] else "adam_torch"
        return rule, (_f(group["lr"]), _f(b1), _f(b2), _f(group["eps"])), keep, l2

    def _new_state(self, group, p, st):
        if "step" not in st:
            st["step"] = _step_tensor()
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            if key not in st and (key != "max_exp_avg_sq" or group["amsgrad"]):
                st[key] = self._slot_zeros(p)


class Adam(_AdamRule, FusedOptimizer, _torch.optim.Adam):
    """``torch.optim.Adam`` (AMSGrad, L2 or decoupled weight decay, maximize)
    on fastopt's fused kernels; see :mod:`fastopt.torch`.

    With ``state_dtype="int8"``: ``state[p]["exp_avg"]`` holds int8 codes,
    ``"exp_avg_sq"`` (and ``"max_exp_avg_sq"``) uint8 codes, each with its
    float32 ``"<key>_scales"`` (see :mod:`fastopt.torch`, "8-bit state")."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False,
                 state_dtype=None, state_rounding=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=decoupled_weight_decay)
        self._fastopt_init(capturable, differentiable, state_dtype, state_rounding)


class AdamW(_AdamRule, FusedOptimizer, _torch.optim.AdamW):
    """``torch.optim.AdamW`` (decoupled weight decay, AMSGrad, maximize) on
    fastopt's fused kernels; see :mod:`fastopt.torch`.

    With ``state_dtype="int8"``: the state keys of :class:`Adam`."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None, state_dtype=None, state_rounding=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         foreach=foreach, capturable=capturable,
                         differentiable=differentiable, fused=fused)
        self._fastopt_init(capturable, differentiable, state_dtype, state_rounding)


class Adamax(FusedOptimizer, _torch.optim.Adamax):
    """``torch.optim.Adamax`` (L2 weight decay, maximize) on fastopt's fused
    kernels; see :mod:`fastopt.torch`."""

    _SLOT_KEYS = _slot_keys("adamax_torch")

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 foreach=None, *, maximize=False, differentiable=False, capturable=False,
                 state_dtype=None, state_rounding=None):
        super().__init__(params, lr, betas, eps, weight_decay, foreach, maximize=maximize,
                         differentiable=differentiable, capturable=capturable)
        self._fastopt_init(capturable, differentiable, state_dtype, state_rounding)

    def _rule(self, group):
        b1, b2 = group["betas"]
        keep, l2 = _decay(group, False)
        return "adamax_torch", (_f(group["lr"]), _f(b1), _f(b2), _f(group["eps"])), keep, l2

    def _new_state(self, group, p, st):
        if "step" not in st:
            st["step"] = _step_tensor()
        for key in self._SLOT_KEYS["adamax_torch"]:
            if key not in st:
                st[key] = self._slot_zeros(p)


class Adadelta(FusedOptimizer, _torch.optim.Adadelta):
    """``torch.optim.Adadelta`` (L2 weight decay, maximize) on fastopt's fused
    kernels; see :mod:`fastopt.torch`."""

    _SLOT_KEYS = _slot_keys("adadelta_torch")

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, foreach=None, *,
                 capturable=False, maximize=False, differentiable=False, state_dtype=None,
                 state_rounding=None):
        super().__init__(params, lr, rho, eps, weight_decay, foreach, capturable=capturable,
                         maximize=maximize, differentiable=differentiable)
        self._fastopt_init(capturable, differentiable, state_dtype, state_rounding)

    def _rule(self, group):
        keep, l2 = _decay(group, False)
        return ("adadelta_torch", (_f(group["lr"]), _f(group["rho"]), _f(group["eps"])),
                keep, l2)

    def _new_state(self, group, p, st):
        if "step" not in st:
            st["step"] = _step_tensor()
        for key in self._SLOT_KEYS["adadelta_torch"]:
            if key not in st:
                st[key] = self._slot_zeros(p)


class NAdam(FusedOptimizer, _torch.optim.NAdam):
    """``torch.optim.NAdam`` (``momentum_decay``, L2 or decoupled weight
    decay, maximize) on fastopt's fused kernels; see :mod:`fastopt.torch`.

    Each parameter's ``state["mu_product"]`` is torch's running product, a
    0-d tensor of torch's scalar dtype, advanced by fastopt as torch does (in
    float32; see :func:`fastopt.algorithms.nadam.advance_nadam_torch`), so
    checkpoints move between this class and ``torch.optim.NAdam``."""

    _SLOT_KEYS = _slot_keys("nadam_torch")
    _HOST_KEYS = {"nadam_torch": RULES["nadam_torch"].host_state}

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, *, foreach=None,
                 maximize=False, capturable=False, differentiable=False, state_dtype=None,
                 state_rounding=None):
        super().__init__(params, lr, betas, eps, weight_decay, momentum_decay,
                         decoupled_weight_decay, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable)
        self._fastopt_init(capturable, differentiable, state_dtype, state_rounding)

    def _rule(self, group):
        b1, b2 = group["betas"]
        keep, l2 = _decay(group, group["decoupled_weight_decay"])
        return ("nadam_torch", (_f(group["lr"]), _f(b1), _f(b2), _f(group["eps"]),
                                _f(group["momentum_decay"])), keep, l2)

    def _new_state(self, group, p, st):
        if "step" not in st:
            st["step"] = _step_tensor()
        if "mu_product" not in st:
            st["mu_product"] = _torch.ones((), dtype=_scalar_dtype())
        for key in self._SLOT_KEYS["nadam_torch"]:
            if key not in st:
                st[key] = self._slot_zeros(p)


class ASGD(FusedOptimizer, _torch.optim.ASGD):
    """``torch.optim.ASGD`` (``lambd``, ``alpha``, ``t0``, L2 weight decay,
    maximize) on fastopt's fused kernels; see :mod:`fastopt.torch`.

    Each parameter's ``state["eta"]``, ``state["mu"]`` (0-d tensors of torch's
    scalar dtype) and ``state["ax"]`` (the averaged parameter) are torch's,
    advanced as torch does, so checkpoints move between this class and
    ``torch.optim.ASGD``."""

    _SLOT_KEYS = _slot_keys("asgd_torch")
    #: eta_now, mu_now (the values of the step itself) are not torch state
    _HOST_KEYS = {"asgd_torch": (None, None, "eta", "mu")}

    def __init__(self, params, lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0,
                 foreach=None, maximize=False, differentiable=False, capturable=False, *,
                 state_dtype=None, state_rounding=None):
        super().__init__(params, lr, lambd, alpha, t0, weight_decay, foreach, maximize,
                         differentiable, capturable)
        self._fastopt_init(capturable, differentiable, state_dtype, state_rounding)

    def _rule(self, group):
        keep, l2 = _decay(group, False)
        return ("asgd_torch", (_f(group["lr"]), _f(group["lambd"]), _f(group["alpha"]),
                               _f(group["t0"])), keep, l2)

    def _new_state(self, group, p, st):
        if "step" not in st:
            st["step"] = _step_tensor()
        if "eta" not in st:
            st["eta"] = _torch.as_tensor(_f(group["lr"]), dtype=_scalar_dtype()).clone()
        if "mu" not in st:
            st["mu"] = _torch.ones((), dtype=_scalar_dtype())
        if "ax" not in st:
            st["ax"] = self._slot_zeros(p)


class RAdam(FusedOptimizer, _torch.optim.RAdam):
    """``torch.optim.RAdam`` (L2 or decoupled weight decay, maximize) on
    fastopt's fused kernels; see :mod:`fastopt.torch`."""

    _SLOT_KEYS = _slot_keys("radam_torch")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 decoupled_weight_decay=False, *, foreach=None, maximize=False,
                 capturable=False, differentiable=False, state_dtype=None,
                 state_rounding=None):
        super().__init__(params, lr, betas, eps, weight_decay, decoupled_weight_decay,
                         foreach=foreach, maximize=maximize, capturable=capturable,
                         differentiable=differentiable)
        self._fastopt_init(capturable, differentiable, state_dtype, state_rounding)

    def _rule(self, group):
        b1, b2 = group["betas"]
        keep, l2 = _decay(group, group["decoupled_weight_decay"])
        return "radam_torch", (_f(group["lr"]), _f(b1), _f(b2), _f(group["eps"])), keep, l2

    def _new_state(self, group, p, st):
        if "step" not in st:
            st["step"] = _step_tensor()
        for key in self._SLOT_KEYS["radam_torch"]:
            if key not in st:
                st[key] = self._slot_zeros(p)


class Rprop(FusedOptimizer, _torch.optim.Rprop):
    """``torch.optim.Rprop`` (``etas``, ``step_sizes``, maximize) on fastopt's
    fused kernels; see :mod:`fastopt.torch`."""

    _SLOT_KEYS = _slot_keys("rprop_torch")

    def __init__(self, params, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50), *,
                 capturable=False, foreach=None, maximize=False, differentiable=False,
                 state_dtype=None, state_rounding=None):
        super().__init__(params, lr, etas, step_sizes, capturable=capturable, foreach=foreach,
                         maximize=maximize, differentiable=differentiable)
        self._fastopt_init(capturable, differentiable, state_dtype, state_rounding)

    def _rule(self, group):
        eta_minus, eta_plus = group["etas"]
        low, high = group["step_sizes"]
        return ("rprop_torch", (_f(group["lr"]), _f(eta_minus), _f(eta_plus), _f(low), _f(high)),
                1.0, 0.0)

    def _new_state(self, group, p, st):
        if "step" not in st:
            st["step"] = _step_tensor()
        if "prev" not in st:
            st["prev"] = self._slot_zeros(p)
        if "step_size" not in st:  # as torch: the learning rate when the state is made
            st["step_size"] = self._slot_zeros(p).fill_(_f(group["lr"]))


class Muon(_torch.optim.Muon):
    """``torch.optim.Muon`` (the same constructor, ``param_groups`` and
    ``state_dict``: ``state[p]["momentum_buffer"]``) with fastopt's step: the
    momentum as fastopt's generated loop and Newton–Schulz through NumPy's
    BLAS in the parameters' dtype, where torch iterates in bfloat16 (see
    :class:`fastopt.Muon`, "The bfloat16 question"; 2-D parameters only, as
    torch).  CPU float32 and float64 parameters; ``backend`` picks the
    element loops' backend (``"auto"``, ``"numba"``, ``"cython"``,
    ``"numpy"``).
    """

    def __init__(self, params, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                 ns_coefficients=(3.4445, -4.7750, 2.0315), eps=1e-7, ns_steps=5,
                 adjust_lr_fn=None, *, backend="auto"):
        from ..algorithms import muon as _muon
        from ..backends import BACKEND_NAMES
        if backend not in ("auto", *BACKEND_NAMES) or backend == "cuda":
            raise ValueError(f"Muon: backend must be 'auto', 'numpy', 'numba' or 'cython', "
                             f"got {backend!r}")
        # torch checks these at the first step; here before anything is built
        if not isinstance(ns_steps, int) or isinstance(ns_steps, bool) \
                or not 0 <= ns_steps < _muon.TORCH_MAX_NS_STEPS:
            raise ValueError(f"Muon: ns_steps must be an int in [0, 100), got {ns_steps!r}")
        if len(tuple(ns_coefficients)) != 3:
            raise ValueError("Muon: ns_coefficients must be a tuple of exactly 3 values, got "
                             f"{ns_coefficients!r}")
        super().__init__(params, lr=lr, weight_decay=weight_decay, momentum=momentum,
                         nesterov=nesterov, ns_coefficients=ns_coefficients, eps=eps,
                         ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        self._fastopt_backend = backend

    @_torch.no_grad()
    def step(self, closure=None):
        """One Muon step over every parameter with a gradient (see the class)."""
        import numpy as np

        from .. import blas
        from ..algorithms.muon import muon_step, prepare_muon_torch
        from ..backends import get_num_threads, num_threads_set, resolve_backend

        loss = None
        if closure is not None:
            with _torch.enable_grad():
                loss = closure()
        work = []
        for group in self.param_groups:
            a, b, c = (float(x) for x in group["ns_coefficients"])
            lr = _f(group["lr"])
            scalars = prepare_muon_torch(lr, float(group["momentum"]), a, b, c,
                                         int(group["ns_steps"]), bool(group["nesterov"]),
                                         float(group["eps"]), group["adjust_lr_fn"])
            keep = 1.0 - lr * float(group["weight_decay"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                if _torch.is_complex(p):
                    raise RuntimeError("Muon does not support complex parameters")
                if p.grad.is_sparse:
                    raise RuntimeError("Muon does not support sparse gradients")
                if p.device.type != "cpu" or p.dtype not in (_torch.float32, _torch.float64) \
                        or not p.is_contiguous():
                    raise TypeError("fastopt.torch.Muon: parameters must be contiguous CPU "
                                    f"float32 or float64 tensors, got {p.dtype} on "
                                    f"{p.device}")
                st = self.state[p]
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = _torch.zeros_like(p)
                work.append((p, p.grad.contiguous(), st["momentum_buffer"], scalars, keep))
        # everything checked: from here on only arithmetic
        with np.errstate(all="ignore"), \
                blas.limit(get_num_threads() if num_threads_set() else None):
            for p, g, m, scalars, keep in work:
                w = p.detach().numpy()
                backend = resolve_backend(self._fastopt_backend, w.dtype, w.size)
                if keep != 1.0:
                    w *= w.dtype.type(keep)
                muon_step(w, g.detach().numpy(), {"momentum": m.numpy()}, scalars, backend)
        return loss
