"""fastopt's optimizers as custom methods of ``scipy.optimize.minimize``.

::

    from scipy.optimize import minimize, rosen, rosen_der
    import fastopt.scipy

    res = minimize(rosen, [-1.2, 1.0], jac=rosen_der, method=fastopt.scipy.adam,
                   options={"learning_rate": 0.02, "maxiter": 5000, "gtol": 1e-6})
    res.x, res.fun, res.nit, res.message

Each method runs fastopt's fused steps on a float64 copy of ``x0``, with the
gradient from ``jac``: a callable, or ``jac=True`` with ``fun`` returning
``(f, g)``.  There is no finite-difference fallback: without ``jac`` the
method refuses to start (first-order stochastic methods take thousands of
steps, each of which would cost ``n + 1`` evaluations of ``fun``; pass a
gradient, or ``scipy.optimize.approx_fprime`` as ``jac`` deliberately).

Options (``options={...}``): ``maxiter`` (steps, default 1000), ``gtol``
(stop when the largest absolute gradient entry is at most this; also set by
``minimize``'s ``tol``; default 1e-5), and the optimizer's own
hyperparameters under fastopt's names (``learning_rate``, ``beta_1``,
``momentum``, ``weight_decay``, ``convention``...).  ``bounds`` are kept by
projection after every step.  ``callback`` is called after every step as
scipy defines it: ``callback(intermediate_result)`` (an ``OptimizeResult``
with ``x`` and ``fun``) when its one parameter has that name, else
``callback(xk)``; raising ``StopIteration`` ends the run (status 99).

These are first-order methods for noisy, large or non-smooth problems -- the
setting they were made for -- not a replacement of L-BFGS-B or BFGS on a
smooth problem of a few variables, which converge in far fewer evaluations.
``scipy`` is needed only here (the ``scipy`` extra).
"""
from __future__ import annotations

import inspect
import math

import numpy as np

from .optimizers import SGD, Adagrad, Adam, Adamax, AdamW, RAdam, RMSprop, Rprop

__all__ = ["sgd", "adagrad", "rmsprop", "adam", "adamw", "adamax", "radam", "rprop"]

#: scipy's status codes used here
_SUCCESS, _MAXITER, _NOT_FINITE, _CALLBACK = 0, 1, 3, 99


def _make(cls):
    def method(fun, x0, args=(), jac=None, hess=None, hessp=None, bounds=None,
               constraints=(), callback=None, maxiter=1000, gtol=None, tol=None, **options):
        return _minimize(cls, fun, x0, args, jac, hess, hessp, bounds, constraints, callback,
                         maxiter, gtol, tol, options)
    method.__name__ = method.__qualname__ = cls.__name__.lower()
    method.__module__ = __name__
    method.__doc__ = (
        f"``scipy.optimize.minimize(fun, x0, method=fastopt.scipy.{method.__name__}, "
        "jac=..., options={...})``: fastopt's "
        f":class:`fastopt.{cls.__name__}` steps (see :mod:`fastopt.scipy`); the "
        f"optimizer's hyperparameters go in ``options``.")
    return method


def _minimize(cls, fun, x0, args, jac, hess, hessp, bounds, constraints, callback,
              maxiter, gtol, tol, options):
    from scipy.optimize import Bounds, OptimizeResult

    name = f"fastopt.scipy.{cls.__name__.lower()}"
    if jac is None or not callable(jac):
        raise ValueError(f"{name}: needs the gradient: pass jac=callable, or jac=True with "
                         "fun returning (f, g); finite differences would cost n + 1 "
                         "evaluations of fun per step (use scipy.optimize.approx_fprime "
                         "as jac if that is really what you want)")
    if hess is not None or hessp is not None:
        raise ValueError(f"{name}: a first-order method; it does not use hess or hessp")
    if constraints:
        raise ValueError(f"{name}: constraints are not supported (bounds are, by "
                         "projection); see scipy's SLSQP, COBYLA or trust-constr")
    if isinstance(maxiter, bool) or not isinstance(maxiter, (int, np.integer)) or maxiter < 0:
        raise ValueError(f"{name}: maxiter must be an int >= 0, got {maxiter!r}")
    gtol = tol if gtol is None else gtol
    gtol = 1e-5 if gtol is None else float(gtol)
    if not gtol >= 0:
        raise ValueError(f"{name}: gtol must be >= 0, got {gtol!r}")
    if not isinstance(args, tuple):
        args = (args,)
    x = np.array(x0, dtype=np.float64).reshape(-1)
    lower, upper = _bounds(name, bounds, x.size, Bounds)
    if lower is not None:
        np.clip(x, lower, upper, out=x)
    opt = cls([x], **options)  # unknown or bad options: the class's own clear error
    counts = {"fun": 0, "jac": 0}

    def f(xk):
        counts["fun"] += 1
        return float(fun(xk, *args))

    def g(xk):
        counts["jac"] += 1
        out = np.asarray(jac(xk, *args), dtype=np.float64).reshape(-1)
        if out.shape != xk.shape:
            raise ValueError(f"{name}: jac returned {out.size} values for {xk.size} variables")
        return out

    report = _callback(callback)
    status, message = _MAXITER, "Maximum number of iterations has been exceeded."
    grad = g(x)
    nit = 0
    while True:
        if not np.all(np.isfinite(grad)):
            status, message = _NOT_FINITE, "The gradient is not finite (NaN or inf)."
            break
        if np.max(np.abs(grad), initial=0.0) <= gtol:
            status, message = _SUCCESS, "Optimization terminated successfully (gtol)."
            break
        if nit >= maxiter:
            break
        opt.step([grad])
        if lower is not None:
            np.clip(x, lower, upper, out=x)
        nit += 1
        if report is not None:
            try:
                report(x, f)
            except StopIteration:
                status, message = _CALLBACK, "`callback` raised `StopIteration`."
                grad = g(x)
                break
        grad = g(x)
    value = f(x)
    if status == _SUCCESS and not math.isfinite(value):
        status, message = _NOT_FINITE, "The objective is not finite (NaN or inf)."
    return OptimizeResult(x=x, fun=value, jac=grad, nit=nit, nfev=counts["fun"],
                          njev=counts["jac"], status=status, success=status == _SUCCESS,
                          message=message)


def _bounds(name, bounds, n, Bounds):
    """``(lower, upper)`` arrays, or ``(None, None)`` without bounds."""
    if bounds is None:
        return None, None
    if isinstance(bounds, Bounds):
        lower, upper = bounds.lb, bounds.ub
    else:
        pairs = list(bounds)
        if len(pairs) != n or any(len(p) != 2 for p in pairs):
            raise ValueError(f"{name}: bounds must be a scipy.optimize.Bounds or {n} (min, "
                             "max) pairs")
        lower = [-np.inf if lo is None else lo for lo, _ in pairs]
        upper = [np.inf if hi is None else hi for _, hi in pairs]
    lower = np.broadcast_to(np.asarray(lower, dtype=np.float64), (n,)).copy()
    upper = np.broadcast_to(np.asarray(upper, dtype=np.float64), (n,)).copy()
    if np.any(lower > upper) or np.any(np.isnan(lower)) or np.any(np.isnan(upper)):
        raise ValueError(f"{name}: every lower bound must be <= its upper bound")
    return lower, upper


def _callback(callback):
    """``report(x, f)``: the user's callback, new style (an OptimizeResult
    with ``x`` and ``fun``) or old style (``callback(xk)``), as scipy calls
    them."""
    if callback is None:
        return None
    from scipy.optimize import OptimizeResult
    try:
        new_style = set(inspect.signature(callback).parameters) == {"intermediate_result"}
    except (TypeError, ValueError):  # a builtin without a signature: old style
        new_style = False
    if new_style:
        return lambda x, f: callback(intermediate_result=OptimizeResult(x=x.copy(), fun=f(x)))
    return lambda x, f: callback(x.copy())


sgd = _make(SGD)
adagrad = _make(Adagrad)
rmsprop = _make(RMSprop)
adam = _make(Adam)
adamw = _make(AdamW)
adamax = _make(Adamax)
radam = _make(RAdam)
rprop = _make(Rprop)
