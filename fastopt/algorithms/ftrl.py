"""Ftrl: "Follow The Regularized Leader" (McMahan et al., 2013), as Keras 3.

The :class:`Ftrl` class, its two rules (the general power of the
accumulator, and ``learning_rate_power = -0.5``, Keras's default, with a
square root in place of the power), their ``prepare`` and ``element``
functions and the float64 references.  Keras only: ``torch.optim`` has no
Ftrl.
"""
from __future__ import annotations

import numpy as np

from .._validation import real
from ..optimizer import Optimizer
from ..rule import Rule


class Ftrl(Optimizer):
    """Ftrl (McMahan et al., 2013), as ``keras.optimizers.Ftrl``.

    Keras 3 formulas (the only convention; see :func:`ftrl`), with
    ``p = -learning_rate_power``, ``n`` the ``accumulator`` (starting at
    ``initial_accumulator_value``) and ``z`` the ``linear`` slot (starting
    at 0)::

        n_new <- n + g^2
        z     <- z + (g + 2 * l2_shrinkage * w) - (n_new^p - n^p) / lr * w
        q     <- n_new^p / lr + 2 * l2 + beta / lr
        w     <- (clip(z, -l1, l1) - z) / q
        n     <- n_new

    that is ``w = 0`` where ``|z| <= l1`` and
    ``w = (sign(z) * l1 - z) / q`` elsewhere.  The parameter is recomputed
    from ``z`` on every step (its old value enters through ``z`` only), so
    the first steps pull it far from its initial value, as in Keras.  With
    ``learning_rate_power = -0.5`` (the default) ``n^p`` is ``sqrt(n)``, and
    a kernel with square roots runs (``ftrl_sqrt``, memory-bound); other
    powers run ``ftrl``, whose two ``pow`` per element make it compute-bound.

    Keras computes ``0 / 0`` where ``q`` is 0 -- an element whose
    accumulator is still 0 (``initial_accumulator_value=0`` and only zero
    gradients so far) with ``l2_regularization_strength = beta = 0`` -- and
    the parameter becomes NaN; so does fastopt's.

    Parameters
    ----------
    params : array, list/tuple of arrays, dict of arrays, or parameter groups
    learning_rate : float > 0 or schedule, default 0.001
        The update divides by it, so 0 is refused, and so is a value below
        5.6e-309, whose reciprocal overflows (also when a schedule returns
        one: that step raises and changes nothing).
    learning_rate_power : float <= 0, default -0.5
        ``n^(-learning_rate_power)`` scales the step; 0 gives a fixed
        learning rate.
    initial_accumulator_value : float >= 0, default 0.1
    l1_regularization_strength, l2_regularization_strength : float >= 0, default 0
    l2_shrinkage_regularization_strength : float >= 0, default 0
        The L2 penalty added to the gradient (``g + 2 * l2_shrinkage * w``;
        the accumulator sees the plain ``g``), unlike
        ``l2_regularization_strength``, the stabilising term of ``q``.
    beta : float >= 0, default 0
        The paper's beta (Keras accepts any value; a negative one can make
        ``q`` zero or negative, so fastopt refuses it).
    **kwargs
        See :class:`fastopt.Optimizer`.  ``weight_decay`` is decoupled, as in
        Keras: it scales ``w`` before the update, which reaches the new
        parameter only through the ``(n_new^p - n^p) / lr * w`` and
        shrinkage terms.  ``convention`` can only be ``"keras"``.
    """

    _DEFAULTS = {"learning_rate": 0.001, "learning_rate_power": -0.5,
                 "initial_accumulator_value": 0.1, "l1_regularization_strength": 0.0,
                 "l2_regularization_strength": 0.0,
                 "l2_shrinkage_regularization_strength": 0.0, "beta": 0.0}
    _CONVENTIONS = ("keras",)

    def __init__(self, params, learning_rate=None, learning_rate_power=None,
                 initial_accumulator_value=None, l1_regularization_strength=None,
                 l2_regularization_strength=None, l2_shrinkage_regularization_strength=None,
                 beta=None, **kwargs):
        super().__init__(params, learning_rate=learning_rate, hyper={
            "learning_rate_power": learning_rate_power,
            "initial_accumulator_value": initial_accumulator_value,
            "l1_regularization_strength": l1_regularization_strength,
            "l2_regularization_strength": l2_regularization_strength,
            "l2_shrinkage_regularization_strength": l2_shrinkage_regularization_strength,
            "beta": beta}, **kwargs)

    def _check(self, h, owner):
        out = {"learning_rate_power": real(owner, "learning_rate_power",
                                           h["learning_rate_power"], high=0.0)}
        for name in ("initial_accumulator_value", "l1_regularization_strength",
                     "l2_regularization_strength", "l2_shrinkage_regularization_strength",
                     "beta"):
            out[name] = real(owner, name, h[name], low=0.0)
        return out

    def _check_group(self, values, where):
        out = super()._check_group(values, where)
        if not callable(out["learning_rate"]):
            _positive_lr(type(self).__name__ + where, out["learning_rate"], "")
        return out

    def _rule_name(self, h):
        return "ftrl_sqrt" if h["learning_rate_power"] == -0.5 else "ftrl"

    def _slot_init(self, h):
        return {"accumulator": h["initial_accumulator_value"]}

    def _scalars(self, h, lr, updates):
        _positive_lr(type(self).__name__, lr, f" at call {self.calls}")
        tail = (h["l1_regularization_strength"], h["l2_regularization_strength"],
                h["l2_shrinkage_regularization_strength"], h["beta"])
        if h["learning_rate_power"] == -0.5:
            return (lr, *tail)
        return (lr, h["learning_rate_power"], *tail)


def _positive_lr(owner, lr, when):
    # the kernels multiply by 1/lr, which must be finite (lr > 5.6e-309)
    if not (lr > 0.0 and 1.0 / lr < float("inf")):
        raise ValueError(f"{owner}: learning_rate must be > 0 (Ftrl divides by it), got "
                         f"{lr!r}{when}")


# ---------------------------------------------------------------------------
# Per-step scalars and the element functions.  The two rules differ only in
# n^p: pow() in general, sqrt() for p = 0.5, which vectorises.  Keras divides
# by lr twice per element; here 1/lr is computed once per step and multiplied
# (one division per element is left; the results differ from Keras's order by
# an ulp or so, 1e-16 of the displacement in the float64 recordings).

def prepare_ftrl(learning_rate, learning_rate_power, l1_regularization_strength,
                 l2_regularization_strength, l2_shrinkage_regularization_strength, beta):
    return {"inv_lr": 1.0 / learning_rate, "power": -learning_rate_power,
            "two_shrinkage": 2.0 * l2_shrinkage_regularization_strength,
            "l1": l1_regularization_strength,
            "two_l2": 2.0 * (l2_regularization_strength + beta / (2.0 * learning_rate))}


def element_ftrl(g, w, accumulator, linear, inv_lr, power, two_shrinkage, l1, two_l2):
    old_power = pow(accumulator, power)
    accumulator = accumulator + g * g
    new_power = pow(accumulator, power)
    linear = linear + ((g + two_shrinkage * w) - (new_power - old_power) * inv_lr * w)
    w = (min(max(linear, -l1), l1) - linear) / (new_power * inv_lr + two_l2)
    return w, accumulator, linear


def prepare_ftrl_sqrt(learning_rate, l1_regularization_strength, l2_regularization_strength,
                      l2_shrinkage_regularization_strength, beta):
    return {"inv_lr": 1.0 / learning_rate,
            "two_shrinkage": 2.0 * l2_shrinkage_regularization_strength,
            "l1": l1_regularization_strength,
            "two_l2": 2.0 * (l2_regularization_strength + beta / (2.0 * learning_rate))}


def element_ftrl_sqrt(g, w, accumulator, linear, inv_lr, two_shrinkage, l1, two_l2):
    old_root = sqrt(accumulator)
    accumulator = accumulator + g * g
    new_root = sqrt(accumulator)
    linear = linear + ((g + two_shrinkage * w) - (new_root - old_root) * inv_lr * w)
    w = (min(max(linear, -l1), l1) - linear) / (new_root * inv_lr + two_l2)
    return w, accumulator, linear


# ---------------------------------------------------------------------------
# The float64 references: the specification, written as whole-array NumPy in
# the paper's form (a threshold on |z|) rather than Keras's clip.

def _ftrl(param, grad, accumulator, linear, power, learning_rate, l1, l2, shrinkage, beta):
    g = np.asarray(grad, dtype=np.float64)
    w = np.asarray(param, dtype=np.float64)
    n = np.asarray(accumulator, dtype=np.float64)
    n_new = n + np.square(g)
    sigma = (power(n_new) - power(n)) / learning_rate
    z = np.asarray(linear, dtype=np.float64) + ((g + 2.0 * shrinkage * w) - sigma * w)
    q = power(n_new) / learning_rate + 2.0 * l2 + beta / learning_rate
    # |z| <= l1 gives 0, and 0 / 0 (q = 0) NaN, as Keras's clip form does
    numerator = np.where(np.abs(z) <= l1, 0.0, np.sign(z) * l1 - z)
    return numerator / q, n_new, z


def ftrl(param, grad, accumulator, linear, *, learning_rate, learning_rate_power,
         l1_regularization_strength, l2_regularization_strength,
         l2_shrinkage_regularization_strength, beta):
    """Keras Ftrl (``accumulator`` n, ``linear`` z; ``p = -learning_rate_power``)::

        n_new <- n + g^2
        z     <- z + (g + 2 * l2_shrinkage * w) - (n_new^p - n^p) / lr * w
        q     <- n_new^p / lr + 2 * l2 + beta / lr
        w     <- 0                           where |z| <= l1
                 (sign(z) * l1 - z) / q      elsewhere
    """
    p = -learning_rate_power
    return _ftrl(param, grad, accumulator, linear, lambda x: np.power(x, p), learning_rate,
                 l1_regularization_strength, l2_regularization_strength,
                 l2_shrinkage_regularization_strength, beta)


def ftrl_sqrt(param, grad, accumulator, linear, *, learning_rate, l1_regularization_strength,
              l2_regularization_strength, l2_shrinkage_regularization_strength, beta):
    """Keras Ftrl with ``learning_rate_power = -0.5`` (n^0.5 = sqrt(n))::

        n_new <- n + g^2
        z     <- z + (g + 2 * l2_shrinkage * w) - (sqrt(n_new) - sqrt(n)) / lr * w
        q     <- sqrt(n_new) / lr + 2 * l2 + beta / lr
        w     <- 0                           where |z| <= l1
                 (sign(z) * l1 - z) / q      elsewhere
    """
    return _ftrl(param, grad, accumulator, linear, np.sqrt, learning_rate,
                 l1_regularization_strength, l2_regularization_strength,
                 l2_shrinkage_regularization_strength, beta)


_BF16 = ("Ftrl recomputes the parameters from the linear slot on every step "
         "(w = (clip(z, -l1, l1) - z) / q), so a bfloat16 slot leaves float32 parameters "
         "only bfloat16's 8 significant bits (measured on the 50-d quadratic of the "
         "convergence tests: the loss stops at 4e-4 of its start with round-to-nearest and "
         "2e-6 with stochastic rounding, against 1e-13 with float32 state)")

RULES = (
    Rule("ftrl_sqrt", slots=("accumulator", "linear"),
         scalars=("learning_rate", "l1_regularization_strength", "l2_regularization_strength",
                  "l2_shrinkage_regularization_strength", "beta"),
         prepare=prepare_ftrl_sqrt, element=element_ftrl_sqrt, reference=ftrl_sqrt,
         bf16_refusal=_BF16),
    Rule("ftrl", slots=("accumulator", "linear"),
         scalars=("learning_rate", "learning_rate_power", "l1_regularization_strength",
                  "l2_regularization_strength", "l2_shrinkage_regularization_strength",
                  "beta"),
         prepare=prepare_ftrl, element=element_ftrl, reference=ftrl, bf16_refusal=_BF16),
)
