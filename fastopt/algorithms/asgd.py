"""ASGD: averaged stochastic gradient descent (PyTorch's ``torch.optim.ASGD``).

SGD with a decaying step size ``eta`` and a decay term ``lambd * eta`` on
the weights, keeping the running average ``ax`` of the iterates (the slot
``ax``, read with :attr:`ASGD.averaged_params`).  ``eta`` and the averaging
weight ``mu`` are scalars torch keeps per parameter across steps, in float32:
host-side state (:attr:`fastopt.rule.Rule.host_state`), saved and restored
with the slots.  Keras has no ASGD, so the class takes the torch convention
only.
"""
from __future__ import annotations

import numpy as np

from .._validation import real
from ..optimizer import Optimizer
from ..reference import bf16_to_float
from ..rule import Rule


class ASGD(Optimizer):
    """PyTorch's ASGD (``torch.optim.ASGD``; torch convention only).

    With ``t`` counting updates from 1, ``eta_1 = lr`` and ``mu_1 = 1``, and
    ``eta``, ``mu`` rounded to float32 as torch keeps them::

        w  <- w * (1 - lambd * eta_t) - eta_t * g
        ax <- w                          if mu_t == 1
              ax + mu_t * (w - ax)       otherwise
        eta_{t+1} = lr / (1 + lambd * lr * t)^alpha
        mu_{t+1}  = 1 / max(1, t - t0)

    (see :func:`asgd_torch`).  ``weight_decay`` is L2 (``g <- g + wd * w``).
    :meth:`host_state` holds ``eta``/``mu`` (torch's state, for the next
    step) and ``eta_now``/``mu_now`` (those the last step used).

    Parameters
    ----------
    params : array, list/tuple of arrays, dict of arrays, or parameter groups
    learning_rate : float or schedule, default 0.01
        torch's ``lr``.
    lambd : float >= 0, default 1e-4
        The decay term.
    alpha : float, default 0.75
        The power of the step-size decay.
    t0 : float, default 1e6
        The update at which averaging starts.
    **kwargs
        See :class:`fastopt.Optimizer`.  ``convention`` can only be
        ``"torch"`` (Keras has no ASGD).
    """

    _TORCH_DEFAULTS = {"learning_rate": 0.01, "lambd": 1e-4, "alpha": 0.75, "t0": 1e6}
    _DEFAULTS = _TORCH_DEFAULTS
    _CONVENTIONS = ("torch",)
    _TORCH_NAMES = {**Optimizer._TORCH_NAMES, "lambda": "lambd"}

    def __init__(self, params, learning_rate=None, lambd=None, alpha=None, t0=None,
                 **kwargs):
        super().__init__(params, learning_rate=learning_rate,
                         hyper={"lambd": lambd, "alpha": alpha, "t0": t0}, **kwargs)

    def _check(self, h, owner):
        return {"lambd": real(owner, "lambd", h["lambd"], low=0.0),
                "alpha": real(owner, "alpha", h["alpha"]),
                "t0": real(owner, "t0", h["t0"])}

    def _rule_name(self, h):
        return "asgd_torch"

    def _scalars(self, h, lr, updates):
        return (lr, h["lambd"], h["alpha"], h["t0"], updates + 1)

    @property
    def averaged_params(self):
        """The averaged parameters ``ax`` (copies, in the structure of
        ``params``; device arrays for device parameters): evaluate with
        these, as with :attr:`ema_params`."""
        names = self._tree.names
        with self._lock:
            live = self.state_arrays()
            out = []
            for i, p in enumerate(self._params):
                a = live[f"ax/{i if names[i] is None else names[i]}"]
                if self.state_dtype is not None:  # bfloat16 bit patterns
                    a = bf16_to_float(a).reshape(a.shape).astype(p.dtype)
                out.append(self._arrays.copy(a))
            return self._tree.rebuild(out)


# ---------------------------------------------------------------------------
# Host state: torch's eta and mu (float32 0-d tensors under torch's default
# dtype), and the values this step uses; the per-step scalars; the element.

def advance_asgd_torch(learning_rate, lambd, alpha, t0, step, eta_now, mu_now, eta, mu):
    if step == 1:  # torch's first step: eta = lr, mu = 1 (its state's initial values)
        eta_now = float(np.float32(learning_rate))
        mu_now = 1.0
    else:
        eta_now = eta
        mu_now = mu
    return {"eta_now": eta_now, "mu_now": mu_now,
            "eta": float(np.float32(learning_rate / (1.0 + lambd * learning_rate * step)
                                    ** alpha)),
            "mu": float(np.float32(1.0 / max(1.0, step - t0)))}


def prepare_asgd_torch(learning_rate, lambd, alpha, t0, step, eta_now, mu_now, eta, mu):
    if mu_now == 1.0:  # torch copies the parameters into ax
        return {"keep": 1.0 - lambd * eta_now, "eta": eta_now, "mu": mu_now, "average": 0.0}
    return {"keep": 1.0 - lambd * eta_now, "eta": eta_now, "mu": mu_now, "average": 1.0}


def element_asgd_torch(g, w, ax, keep, eta, mu, average):
    w = w * keep
    w = w - eta * g
    if average > 0.5:
        ax = ax + (w - ax) * mu
    else:
        ax = w
    return w, ax


# ---------------------------------------------------------------------------
# The float64 reference: the specification, written as whole-array NumPy.

def asgd_torch(param, grad, ax, *, learning_rate, lambd, alpha, t0, step, eta_now, mu_now,
               eta, mu):
    """PyTorch ASGD (``ax``; ``eta_now``, ``mu_now`` the step size and
    averaging weight this step uses, torch's ``eta``, ``mu`` from the step
    before; ``eta``, ``mu`` those of the next step)::

        w  <- w * (1 - lambd * eta_now) - eta_now * g
        ax <- w if mu_now == 1 else ax + mu_now * (w - ax)
    """
    w = np.asarray(param, dtype=np.float64) * (1.0 - lambd * eta_now)
    w = w - eta_now * np.asarray(grad, dtype=np.float64)
    a = np.asarray(ax, dtype=np.float64)
    a = w.copy() if mu_now == 1.0 else a + mu_now * (w - a)
    return w, a


RULES = (
    Rule("asgd_torch", slots=("ax",), convention="torch",
         scalars=("learning_rate", "lambd", "alpha", "t0", "step", "eta_now", "mu_now", "eta",
                  "mu"),
         prepare=prepare_asgd_torch, element=element_asgd_torch, reference=asgd_torch,
         torch_state=("ax",), host_state=("eta_now", "mu_now", "eta", "mu"),
         host_init=(0.0, 1.0, 0.0, 1.0), advance=advance_asgd_torch),
)
