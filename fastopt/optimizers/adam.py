"""Adam and AdamW, with optional AMSGrad."""
from __future__ import annotations

from .. import reference
from .._validation import boolean, real
from .base import Optimizer


class Adam(Optimizer):
    """Adam, with optional AMSGrad.

    Keras 3 formulas (see :func:`fastopt.reference.adam`), with
    ``t = iterations + 1``::

        alpha <- lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)     (host, float64)
        m     <- m + (g - m) * (1 - beta_1)
        v     <- v + (g^2 - v) * (1 - beta_2)
        vhat  <- max(vhat, v)                                 (amsgrad=True)
        w     <- w - m * alpha / (sqrt(v or vhat) + epsilon)

    PyTorch formula (``convention="torch"``; see
    :func:`fastopt.reference.adam_torch`): the same ``m``, ``v`` and ``vhat``,
    with epsilon added after the bias correction of ``v``::

        w <- w - lr / (1 - beta_1^t) * m / (sqrt(v or vhat) / sqrt(1 - beta_2^t) + epsilon)

    Parameters
    ----------
    params : array, list/tuple of arrays, dict of arrays, or parameter groups
    learning_rate : float or schedule, default 0.001
    beta_1, beta_2 : float in [0, 1), defaults 0.9 and 0.999
    epsilon : float >= 0, default 1e-7 (keras), 1e-8 (torch)
    amsgrad : bool, default False
    **kwargs
        See :class:`fastopt.optimizers.base.Optimizer`.  ``weight_decay`` is
        decoupled under the Keras convention and L2 under the torch one (use
        :class:`AdamW` for PyTorch's decoupled form).
    """

    _DEFAULTS = {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7,
                 "amsgrad": False}
    _TORCH_DEFAULTS = {**_DEFAULTS, "epsilon": 1e-8}

    def __init__(self, params, learning_rate=None, beta_1=None, beta_2=None, epsilon=None,
                 amsgrad=None, **kwargs):
        super().__init__(params, learning_rate=learning_rate,
                         hyper={"beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon,
                                "amsgrad": amsgrad}, **kwargs)

    def _check(self, h, owner):
        return {"beta_1": real(owner, "beta_1", h["beta_1"], low=0.0, high=1.0, high_open=True),
                "beta_2": real(owner, "beta_2", h["beta_2"], low=0.0, high=1.0, high_open=True),
                "epsilon": real(owner, "epsilon", h["epsilon"], low=0.0),
                "amsgrad": boolean(owner, "amsgrad", h["amsgrad"])}

    def _rule_name(self, h):
        name = "adam_amsgrad" if h["amsgrad"] else "adam"
        return name + "_torch" if self.convention == "torch" else name

    def _scalars(self, h, lr, updates):
        if self.convention == "torch":
            return (lr, h["beta_1"], h["beta_2"], h["epsilon"], updates + 1)
        alpha = reference.adam_alpha(lr, h["beta_1"], h["beta_2"], updates)
        return (alpha, h["beta_1"], h["beta_2"], h["epsilon"])


class AdamW(Adam):
    """Adam with decoupled weight decay (Keras 3 ``AdamW``, PyTorch ``AdamW``).

    Exactly :class:`Adam` with ``weight_decay`` on by default (0.004 under
    the Keras convention, 0.01 under the torch one) and decoupled under both:
    ``w <- w * (1 - weight_decay * lr)`` before each Adam update.

    Parameters
    ----------
    params : array, list/tuple of arrays, or dict of arrays
    learning_rate : float or schedule, default 0.001
    weight_decay : float >= 0, default 0.004 (keras), 0.01 (torch)
    beta_1, beta_2 : float in [0, 1), defaults 0.9 and 0.999
    epsilon : float >= 0, default 1e-7 (keras), 1e-8 (torch)
    amsgrad : bool, default False
    **kwargs
        See :class:`fastopt.optimizers.base.Optimizer`.
    """

    _DEFAULTS = {**Adam._DEFAULTS, "weight_decay": 0.004}
    _TORCH_DEFAULTS = {**Adam._TORCH_DEFAULTS, "weight_decay": 0.01}
    _TORCH_DECOUPLED = True

    def __init__(self, params, learning_rate=None, weight_decay=None, beta_1=None,
                 beta_2=None, epsilon=None, amsgrad=None, **kwargs):
        super().__init__(params, learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, amsgrad=amsgrad, weight_decay=weight_decay, **kwargs)
