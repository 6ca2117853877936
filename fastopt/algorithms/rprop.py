"""Rprop: resilient backpropagation, a step size per element that grows while
the gradient keeps its sign and shrinks when it flips (Riedmiller & Braun, 1993).

PyTorch only (``torch.optim.Rprop``; Keras 3 has no Rprop): the :class:`Rprop`
class, its rule, the rule's ``prepare`` and ``element`` functions (the element
language, see :mod:`fastopt._codegen`) and the float64 reference.
"""
from __future__ import annotations

import numpy as np

from .._validation import real
from ..optimizer import Optimizer
from ..rule import Rule


class Rprop(Optimizer):
    """Rprop, as PyTorch 2.13's ``torch.optim.Rprop`` (``convention="torch"``,
    the only convention: Keras has no Rprop).

    Per element, with ``prev`` the gradient kept from the previous step (0 at
    first) and ``s`` the step size (see :func:`rprop_torch`)::

        s <- learning_rate                          (first update only)
        f = eta_plus   where g * prev > 0
            eta_minus  where g * prev < 0, and there g <- 0
            1          elsewhere (a zero or NaN product)
        s <- min(max(s * f, step_size_min), step_size_max)
        w <- w - sign(g) * s
        prev <- g

    The learning rate is read once, at the first update: it is only the
    initial step size (a schedule or a later change has no effect after
    that, as in PyTorch).  ``sign`` is PyTorch's: 0 for 0 and for NaN, so an
    element whose gradient is NaN keeps its value and step size.

    Parameters
    ----------
    params : array, list/tuple of arrays, dict of arrays, or parameter groups
    learning_rate : float or schedule, default 0.01
        PyTorch's ``lr``: the initial step size.
    eta_minus, eta_plus : float, defaults 0.5 and 1.2
        PyTorch's ``etas``: the step size's factors after a sign change and
        after the same sign; ``0 < eta_minus < 1 < eta_plus``.
    step_size_min, step_size_max : float, defaults 1e-6 and 50
        PyTorch's ``step_sizes``: the bounds of the step size,
        ``0 <= step_size_min <= step_size_max``.
    **kwargs
        See :class:`fastopt.Optimizer` (``maximize``, clipping, ...).
        ``convention`` may only be ``"torch"``.  PyTorch's Rprop has no
        weight decay; fastopt's ``weight_decay`` is the torch convention's
        L2 term, ``g <- g + weight_decay * w``, as for every class.

    Notes
    -----
    PyTorch's names and fastopt's:

    ==========================  ==========================================
    ``torch.optim.Rprop``       ``fastopt.Rprop``
    ==========================  ==========================================
    ``lr``                      ``learning_rate``
    ``etas=(a, b)``             ``eta_minus=a, eta_plus=b``
    ``step_sizes=(a, b)``       ``step_size_min=a, step_size_max=b``
    ``maximize``                ``maximize``
    ==========================  ==========================================

    The state is PyTorch's: the slots ``prev`` and ``step_size``.
    """

    _CONVENTIONS = ("torch",)
    _DEFAULTS = {}
    _TORCH_DEFAULTS = {"learning_rate": 0.01, "eta_minus": 0.5, "eta_plus": 1.2,
                       "step_size_min": 1e-6, "step_size_max": 50.0}
    _TORCH_NAMES = {**Optimizer._TORCH_NAMES, "etas": "eta_minus and eta_plus",
                    "step_sizes": "step_size_min and step_size_max"}

    def __init__(self, params, learning_rate=None, eta_minus=None, eta_plus=None,
                 step_size_min=None, step_size_max=None, **kwargs):
        super().__init__(params, learning_rate=learning_rate,
                         hyper={"eta_minus": eta_minus, "eta_plus": eta_plus,
                                "step_size_min": step_size_min,
                                "step_size_max": step_size_max},
                         **kwargs)

    def _check(self, h, owner):
        out = {"eta_minus": real(owner, "eta_minus", h["eta_minus"], low=0.0, high=1.0,
                                 low_open=True, high_open=True),
               "eta_plus": real(owner, "eta_plus", h["eta_plus"], low=1.0, low_open=True),
               "step_size_min": real(owner, "step_size_min", h["step_size_min"], low=0.0)}
        out["step_size_max"] = real(owner, "step_size_max", h["step_size_max"],
                                    low=out["step_size_min"])
        return out

    def _rule_name(self, h):
        return "rprop_torch"

    def _scalars(self, h, lr, updates):
        return (lr, h["eta_minus"], h["eta_plus"], h["step_size_min"], h["step_size_max"],
                updates + 1)

    def _slot_init(self, h):
        # as torch's state at creation: the step size is the learning rate (the
        # first update sets it again, to the learning rate of that update)
        return {"step_size": self._lr_at(h["learning_rate"])}


# ---------------------------------------------------------------------------
# Per-step scalars and the element function.  The first update starts the
# step size from the learning rate (carry = 0, initial = lr), as torch
# creates its state; later updates carry it (carry = 1, initial = 0).

def prepare_rprop_torch(learning_rate, eta_minus, eta_plus, step_size_min, step_size_max,
                        step):
    if step <= 1:
        return {"carry": 0.0, "initial": learning_rate, "eta_minus": eta_minus,
                "eta_plus": eta_plus, "step_size_min": step_size_min,
                "step_size_max": step_size_max}
    return {"carry": 1.0, "initial": 0.0, "eta_minus": eta_minus, "eta_plus": eta_plus,
            "step_size_min": step_size_min, "step_size_max": step_size_max}


def element_rprop_torch(g, w, prev, step_size, carry, initial, eta_minus, eta_plus,
                        step_size_min, step_size_max):
    step_size = carry * step_size + initial
    product = g * prev
    if product > 0.0:
        step_size = step_size * eta_plus
    elif product < 0.0:
        step_size = step_size * eta_minus
        g = 0.0
    step_size = min(max(step_size, step_size_min), step_size_max)
    if g > 0.0:  # torch's sign: 0 for 0 and for NaN
        sign_g = 1.0
    elif g < 0.0:
        sign_g = -1.0
    else:
        sign_g = 0.0
    w = w - sign_g * step_size
    prev = g
    return w, prev, step_size


# ---------------------------------------------------------------------------
# The float64 reference: the specification, written as whole-array NumPy.

def _torch_sign(x):
    """``torch.sign``: -1, 0 or 1, and 0 for NaN (``np.sign`` gives NaN)."""
    return (x > 0).astype(np.float64) - (x < 0)


def rprop_torch(param, grad, prev, step_size, *, learning_rate, eta_minus, eta_plus,
                step_size_min, step_size_max, step):
    """PyTorch Rprop (``prev``, ``step_size``; ``step`` counts from 1)::

        step_size <- lr                                   (step 1)
        f = eta_plus, eta_minus or 1 where sign(g * prev) is 1, -1 or 0
        step_size <- clamp(step_size * f, step_size_min, step_size_max)
        g <- 0 where sign(g * prev) == -1
        w <- w - sign(g) * step_size
        prev <- g

    with torch's ``sign`` (0 for NaN) and ``clamp`` (NaN stays NaN; all
    ``step_size_max`` when the bounds cross).
    """
    g = np.array(grad, dtype=np.float64)
    if step <= 1:
        s = np.full(g.shape, float(learning_rate))
    else:
        s = np.asarray(step_size, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        d = _torch_sign(g * np.asarray(prev, dtype=np.float64))
    s = np.minimum(np.maximum(s * np.where(d > 0, eta_plus, np.where(d < 0, eta_minus, 1.0)),
                              step_size_min), step_size_max)
    g[d < 0] = 0.0
    return np.asarray(param, dtype=np.float64) - _torch_sign(g) * s, g, s


RULES = (
    Rule("rprop_torch", slots=("prev", "step_size"),
         scalars=("learning_rate", "eta_minus", "eta_plus", "step_size_min", "step_size_max",
                  "step"),
         convention="torch", prepare=prepare_rprop_torch, element=element_rprop_torch,
         reference=rprop_torch, torch_state=("prev", "step_size")),
)
