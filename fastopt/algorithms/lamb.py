"""Lamb: Adam's direction scaled per tensor by a trust ratio (Keras 3 only).

The :class:`Lamb` class, its Keras rule -- the first ``two_phase`` rule (see
:mod:`fastopt.two_phase` and the contributor guide): the element function
computes Adam's bias-corrected direction ``u``, the fused first pass reduces
each tensor's ``||w||^2`` and ``||u||^2``, :func:`decide_lamb` turns them into
one update scale per tensor on the host (float64), and the second pass
applies ``w <- w - scale * u``.  PyTorch 2.13 has no Lamb, so the class offers
the Keras convention only.
"""
from __future__ import annotations

import math

import numpy as np

from .._validation import real
from ..optimizer import Optimizer
from ..rule import Rule


class Lamb(Optimizer):
    """Lamb, "layer-wise adaptive moments" (You et al., 2019), as Keras 3's
    ``keras.optimizers.Lamb``.

    Keras 3 formulas (the only convention; see :func:`lamb`), per tensor::

        m <- m + (g - m) * (1 - beta_1)
        v <- v + (g^2 - v) * (1 - beta_2)
        u <- (m / (1 - beta_1^t)) / (sqrt(v / (1 - beta_2^t)) + epsilon)
        r <- ||w|| / ||u||   if ||w|| > 0 and ||u|| > 0, else 1
        w <- w - lr * r * u

    ``t`` is the update count plus one and the norms are the Euclidean norms
    of the whole tensor.  Keras applies its decoupled ``weight_decay`` first
    (``w <- w * (1 - weight_decay * lr)``), so ``||w||`` is the norm of the
    decayed weights; the decay is not part of ``u`` (it is in the paper).
    Under :class:`fastopt.distributed.ShardedOptimizer` the two sums of
    squares are added up over the ranks before ``r`` is decided, so every
    rank applies the ratio of the whole tensor.

    Parameters
    ----------
    params : array, list/tuple of arrays, dict of arrays, or parameter groups
    learning_rate : float or schedule, default 0.001
    beta_1 : float in [0, 1], default 0.9
    beta_2 : float in [0, 1], default 0.999
    epsilon : float >= 0, default 1e-7
        Added to ``sqrt(v_hat)`` (outside the square root).
    **kwargs
        See :class:`fastopt.Optimizer`.  ``convention`` can only be
        ``"keras"`` (PyTorch 2.13 has no Lamb).
    """

    _DEFAULTS = {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}
    _CONVENTIONS = ("keras",)

    def __init__(self, params, learning_rate=None, beta_1=None, beta_2=None, epsilon=None,
                 **kwargs):
        super().__init__(params, learning_rate=learning_rate,
                         hyper={"beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon},
                         **kwargs)

    def _check(self, h, owner):
        return {"beta_1": real(owner, "beta_1", h["beta_1"], low=0.0, high=1.0),
                "beta_2": real(owner, "beta_2", h["beta_2"], low=0.0, high=1.0),
                "epsilon": real(owner, "epsilon", h["epsilon"], low=0.0)}

    def _rule_name(self, h):
        return "lamb"

    def _scalars(self, h, lr, updates):
        return (lr, h["beta_1"], h["beta_2"], h["epsilon"], updates + 1)


# ---------------------------------------------------------------------------
# Per-step scalars (float64, once per step), the element function and the
# decision.  The element function moves w by the unscaled direction u
# (w - u): its displacement is what the reductions see and what the
# per-tensor update scale multiplies in the apply.  decide_lamb (the element
# language's prepare subset: per tensor, float64, on the host; rendered to C
# for the .pxd kernel) turns the whole tensor's sums of squares of the
# decayed weights and of u into that scale, lr * r: Keras's
# r = ||w|| / ||u|| where both norms are positive, else 1 (a NaN norm is
# not positive: r = 1, and the NaN reaches the weights through u).

def prepare_lamb(learning_rate, beta_1, beta_2, epsilon, step):
    # Keras divides by the bias corrections; multiplying by their reciprocals
    # (one rounding more, ~1e-16 relative in float64) leaves one division and
    # one square root per element, which bound the first pass's speed
    return {"one_minus_beta_1": 1.0 - beta_1, "one_minus_beta_2": 1.0 - beta_2,
            "inv_bc1": 1.0 / (1.0 - beta_1 ** step), "inv_bc2": 1.0 / (1.0 - beta_2 ** step),
            "eps": epsilon}


def element_lamb(g, w, momentum, velocity, one_minus_beta_1, one_minus_beta_2, inv_bc1,
                 inv_bc2, eps):
    momentum = momentum + (g - momentum) * one_minus_beta_1
    velocity = velocity + (g * g - velocity) * one_minus_beta_2
    w = w - momentum * inv_bc1 / (sqrt(velocity * inv_bc2) + eps)
    return w, momentum, velocity


def decide_lamb(param_sumsq, update_sumsq, learning_rate, beta_1, beta_2, epsilon, step):
    if param_sumsq > 0 and update_sumsq > 0:
        return {"update_scale": learning_rate * (math.sqrt(param_sumsq) / math.sqrt(update_sumsq))}
    return {"update_scale": learning_rate}


# ---------------------------------------------------------------------------
# The float64 reference: the specification, written as whole-array NumPy.

def lamb(param, grad, momentum, velocity, *, learning_rate, beta_1, beta_2, epsilon, step,
         update_scale=None):
    """Keras Lamb (``momentum``, ``velocity``), one whole tensor::

        m <- m + (g - m) * (1 - beta_1)
        v <- v + (g^2 - v) * (1 - beta_2)
        u <- (m / (1 - beta_1^t)) / (sqrt(v / (1 - beta_2^t)) + epsilon)
        r <- ||w|| / ||u||  if ||w|| > 0 and ||u|| > 0 else 1
        w <- w - lr * r * u

    ``update_scale``: ``lr * r`` decided elsewhere (from the norms of the
    whole tensor when this is a shard of it); None decides it from this
    array.
    """
    w = np.asarray(param, dtype=np.float64)
    g = np.asarray(grad, dtype=np.float64)
    m = np.asarray(momentum, dtype=np.float64)
    v = np.asarray(velocity, dtype=np.float64)
    m = m + (1.0 - beta_1) * (g - m)
    v = v + (1.0 - beta_2) * (np.square(g) - v)
    u = (m / (1.0 - beta_1 ** step)) / (np.sqrt(v / (1.0 - beta_2 ** step)) + epsilon)
    if update_scale is None:
        w_norm = np.linalg.norm(w.ravel())
        u_norm = np.linalg.norm(u.ravel())
        ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
        update_scale = learning_rate * ratio
    return w - update_scale * u, m, v


RULES = (
    Rule("lamb", slots=("momentum", "velocity"),
         scalars=("learning_rate", "beta_1", "beta_2", "epsilon", "step"),
         prepare=prepare_lamb, element=element_lamb, reference=lamb, kind="two_phase",
         reductions=("param_sumsq", "update_sumsq"), decide=decide_lamb),
)
