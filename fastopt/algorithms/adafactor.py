"""Adafactor: factored second moments, update clipping, relative step sizes.

The :class:`Adafactor` class, its two ``per_tensor`` rules (Keras 3's
``keras.optimizers.Adafactor`` and PyTorch's ``torch.optim.Adafactor``: the
formulas and the defaults differ), their ``slot_shapes`` and ``host_step``
functions (:mod:`fastopt.per_tensor`) and the independently written float64
references.

A tensor of two or more dimensions keeps a row and a column vector of mean
squared gradients over its last two dimensions instead of a full second
moment: an ``(m, n)`` matrix keeps ``m + n`` numbers, not ``m * n``.  The
reductions, the update and its RMS run per tensor on the host (NumPy); the
final ``w <- w - s * u`` is the backend's generated ``sgd`` loop.
"""
from __future__ import annotations

import math

import numpy as np

from .._validation import boolean, real
from ..optimizer import Optimizer
from ..rule import Rule

#: why ShardedOptimizer refuses Adafactor
_SHARD_REFUSAL = ("a factored second moment (a row and a column vector of a matrix) cannot be "
                  "cut by flat element index, and the update is clipped by the RMS of the "
                  "whole tensor")


class Adafactor(Optimizer):
    """Adafactor (Shazeer & Stern, 2018), as Keras 3's
    ``keras.optimizers.Adafactor`` (default) or PyTorch's
    ``torch.optim.Adafactor`` (``convention="torch"``).

    With ``t`` the update count from 1, ``G = g*g`` and, for a tensor of two
    or more dimensions, means over its last (``mean_-1``) or second-to-last
    (``mean_-2``) dimension.

    Keras 3 formulas (default; see :func:`adafactor`)::

        rho   = min(lr, 1/sqrt(t))
        alpha = max(epsilon_2, RMS(w)) * rho                        # w after weight decay
        b     = 1 - t**beta_2_decay
        r <- b r + (1-b) mean_-1(G + epsilon_1)                     # matrices
        c <- b c + (1-b) mean_-2(G + epsilon_1)
        v  = (r / mean_-1(r))[..., :, None] * c[..., None, :]
        v <- b v + (1-b) (G + epsilon_1)                            # vectors
        u  = g / sqrt(v)
        w <- w - alpha * u / max(1, RMS(u) / clip_threshold)

    fastopt computes this in the parameters' dtype.  Keras's torch backend
    does not, for float64 variables: its ``ops.mean`` (the RMS, the row and
    column means and ``mean_-1(r)``) computes in float32, and its
    ``ops.minimum`` and ``ops.maximum`` (``rho``, ``alpha``, the clipping
    denominator) return float32; the golden recordings measure what that
    moves (~1e-7 of the displacement) and bound it.  ``relative_step`` changes
    nothing (Keras 3.15.1 takes ``min(lr, 1/sqrt(t))`` whatever it is); it is
    kept for configs.  Keras keeps ``v`` for matrices too (a full-size
    variable, overwritten from ``r`` and ``c`` each step); fastopt does not.

    PyTorch formulas (``convention="torch"``; see :func:`adafactor_torch`)::

        rho   = min(lr, 1/t**0.5)
        alpha = max(epsilon_2, ||w|| / sqrt(numel)) * rho            # w before weight decay
        w <- w * (1 - lr * weight_decay)
        k  = t**beta_2_decay
        R <- lerp(R, mean_-1(G), k);  C <- lerp(C, mean_-2(G), k)   # matrices, keepdim
        V  = R @ C / max(mean_-2(R), epsilon_1)
        V <- lerp(V, G, k)                                          # vectors
        u  = g / sqrt(max(V, epsilon_1**2))
        w <- w - alpha * u / max(1, ||u|| / (sqrt(numel) * clip_threshold))

    ``epsilon_1=None`` (torch's default) is the machine epsilon of the
    parameter's dtype.  Weight decay is decoupled under both conventions
    (``w <- w * (1 - weight_decay * lr)``, with ``lr`` the learning rate, not
    ``rho``).

    State per tensor of shape ``(..., m, n)``: ``r`` of ``(..., m)`` and
    ``c`` of ``(..., n)`` (Keras; torch's ``row_var`` ``(..., m, 1)`` and
    ``col_var`` ``(..., 1, n)``); a vector keeps ``velocity`` (torch's
    ``variance``) of its own shape.  The unused slots of a tensor are empty
    arrays.

    Parameters
    ----------
    params : array, list/tuple of arrays, dict of arrays, or parameter groups
    learning_rate : float or schedule, default 0.001 (keras), 0.01 (torch)
        The largest relative step size ``rho``; the weight-decay factor's lr.
    beta_2_decay : float <= 0, default -0.8
        PyTorch's ``beta2_decay``.
    epsilon_1 : float >= 0 or None, default 1e-30 (keras), None (torch)
        Keras: added to the squared gradient.  PyTorch (``eps[0]``): the
        floor of the row mean and of ``sqrt(V)``; None is the dtype's
        machine epsilon.
    epsilon_2 : float >= 0, default 1e-3
        The floor of the parameter RMS in ``alpha`` (PyTorch's ``eps[1]``).
    clip_threshold : float, default 1.0
        The update-clipping threshold ``d`` (PyTorch's ``d``; > 0, and
        >= 1 under the torch convention as torch requires).
    relative_step : bool, default True
        Keras's option; no effect (see above).
    **kwargs
        See :class:`fastopt.Optimizer`.  ``state_dtype="bfloat16"`` and
        :class:`fastopt.distributed.ShardedOptimizer` are refused (a factored
        moment cannot be cut by flat index).  CUDA device parameters run by
        host staging (:class:`fastopt.per_tensor.StagedPlan`: moments on the
        device, each tensor copied to the host and back every step; the
        numpy backend's results, at host and PCIe speed, not a GPU kernel).
    """

    _DEFAULTS = {"learning_rate": 0.001, "beta_2_decay": -0.8, "epsilon_1": 1e-30,
                 "epsilon_2": 1e-3, "clip_threshold": 1.0, "relative_step": True}
    _TORCH_DEFAULTS = {**_DEFAULTS, "learning_rate": 0.01, "epsilon_1": None}
    _TORCH_NAMES = {**Optimizer._TORCH_NAMES, "beta2_decay": "beta_2_decay",
                    "eps": "epsilon_1 and epsilon_2", "d": "clip_threshold"}
    _TORCH_DECOUPLED = True

    def __init__(self, params, learning_rate=None, beta_2_decay=None, epsilon_1=None,
                 epsilon_2=None, clip_threshold=None, relative_step=None, **kwargs):
        super().__init__(params, learning_rate=learning_rate,
                         hyper={"beta_2_decay": beta_2_decay, "epsilon_1": epsilon_1,
                                "epsilon_2": epsilon_2, "clip_threshold": clip_threshold,
                                "relative_step": relative_step}, **kwargs)

    def _check(self, h, owner):
        torch = self.convention == "torch"
        return {"beta_2_decay": real(owner, "beta_2_decay", h["beta_2_decay"], high=0.0),
                "epsilon_1": real(owner, "epsilon_1", h["epsilon_1"], low=0.0,
                                  allow_none=torch),
                "epsilon_2": real(owner, "epsilon_2", h["epsilon_2"], low=0.0),
                "clip_threshold": real(owner, "clip_threshold", h["clip_threshold"],
                                       low=1.0 if torch else 0.0, low_open=not torch),
                "relative_step": boolean(owner, "relative_step", h["relative_step"])}

    def _rule_name(self, h):
        return "adafactor_torch" if self.convention == "torch" else "adafactor"

    def _scalars(self, h, lr, updates):
        eps1 = h["epsilon_1"]
        return (lr, h["beta_2_decay"], math.nan if eps1 is None else eps1, h["epsilon_2"],
                h["clip_threshold"], updates + 1)


_SCALARS = ("learning_rate", "beta_2_decay", "epsilon_1", "epsilon_2", "clip_threshold",
            "step")


# ---------------------------------------------------------------------------
# Slot shapes: the last two dimensions factored, vectors (and scalars) not.

def slot_shapes_keras(shape):
    if len(shape) >= 2:
        return {"r": shape[:-1], "c": shape[:-2] + shape[-1:], "velocity": (0,)}
    return {"r": (0,), "c": (0,), "velocity": shape}


def slot_shapes_torch(shape):
    if len(shape) >= 2:
        return {"row_var": shape[:-1] + (1,), "col_var": shape[:-2] + (1,) + shape[-1:],
                "variance": (0,)}
    return {"row_var": (0,), "col_var": (0,), "variance": shape}


# ---------------------------------------------------------------------------
# Keras: per-step scalars, then the work per tensor.

def prepare_adafactor(learning_rate, beta_2_decay, epsilon_1, epsilon_2, clip_threshold,
                      step):
    beta_2 = 1.0 - step ** beta_2_decay
    return {"rho": min(learning_rate, 1.0 / math.sqrt(step)), "beta_2": beta_2,
            "one_minus_beta_2": 1.0 - beta_2, "epsilon_1": epsilon_1,
            "epsilon_2": epsilon_2, "clip_threshold": clip_threshold}


_BLOCK = 4096


def _sumsq(x):
    """sum(x*x) over the whole tensor, as a Python float: float32 blocks of
    4096 (vectorised, short sums) added in float64, so a large float32
    tensor's sum is as accurate as its elements."""
    flat = x.reshape(-1)
    if flat.dtype == np.float64:
        return float(np.dot(flat, flat))
    head = flat.size - flat.size % _BLOCK
    blocks = flat[:head].reshape(-1, _BLOCK)
    tail = flat[head:]
    return float(np.einsum("ij,ij->i", blocks, blocks).sum(dtype=np.float64)
                 + np.dot(tail, tail))


_ALONG = {-1: "...ij,...ij->...i", -2: "...ij,...ij->...j"}


def _sumsq_along(g, axis):
    """sum(g*g) along ``axis`` (-1: per row, -2: per column).  A float32 sum
    longer than 4096 runs in blocks of 4096 added in float64 (einsum's
    float32 sums accumulate straight, losing ~1e-5 over 1e5 terms)."""
    n = g.shape[axis]
    if g.dtype == np.float64 or n <= _BLOCK:
        return np.einsum(_ALONG[axis], g, g)
    total = 0.0
    for start in range(0, n, _BLOCK):
        part = g[..., start:start + _BLOCK] if axis == -1 else g[..., start:start + _BLOCK, :]
        total = total + np.einsum(_ALONG[axis], part, part).astype(np.float64)
    return total.astype(g.dtype)


def _row_col_sumsq(g):
    """Per row and per column (the last two dimensions) of ``g``: sum(g*g).

    Rows shorter than 64 (a tall, narrow matrix) make einsum's inner loop
    too short: then ``g*g`` is transposed once and both sums run along
    contiguous axes (NumPy's pairwise sums, accurate in float32 too)."""
    if g.shape[-1] < 64:
        t = np.ascontiguousarray(np.swapaxes(np.multiply(g, g), -1, -2))  # (..., n, m)
        return t.sum(axis=-2), t.sum(axis=-1)
    return _sumsq_along(g, -1), _sumsq_along(g, -2)


def _outer(a, b, g=None):
    """``a_i * b_j`` (times ``g_ij`` when given) over the last two dimensions,
    ``a`` of shape ``(..., m)``, ``b`` ``(..., n)``.  Rows of 8 or fewer
    are written column by column: NumPy's broadcast over a 4-wide row runs a
    4-element inner loop per row (1.2e6 float32: 8.0 ms, by columns 3.3 ms);
    from about 10 columns on, the column passes cost more than that."""
    n = b.shape[-1]
    if n > 8:
        out = a[..., :, None] * b[..., None, :]
        if g is not None:
            out *= g
        return out
    out = np.empty(a.shape + (n,), dtype=a.dtype)
    for j in range(n):
        col = np.multiply(a, b[..., j, None], out=out[..., j])
        if g is not None:
            col *= g[..., j]
    return out


def adafactor_step(w, g, state, s, backend):
    if w.size == 0:
        return
    dt = w.dtype.type
    beta, omb, eps1 = dt(s["beta_2"]), dt(s["one_minus_beta_2"]), dt(s["epsilon_1"])
    # ops.maximum: a NaN wins
    alpha = float(np.maximum(s["epsilon_2"], math.sqrt(_sumsq(w) / w.size))) * s["rho"]
    if w.ndim >= 2:
        # r = mean_-1(g*g + eps1), c = mean_-2(...): sums of squares, no g*g array;
        # v = r_i c_j / mean(r), so u = g * sqrt(mean(r)/r_i) * (1/sqrt(c_j)):
        # square roots of the vectors only
        r, c = state["r"], state["c"]
        rows, cols = _row_col_sumsq(g)
        r *= beta
        r += omb * (rows / dt(g.shape[-1]) + eps1)
        c *= beta
        c += omb * (cols / dt(g.shape[-2]) + eps1)
        u = _outer(np.sqrt(r.mean(axis=-1, keepdims=True) / r), 1 / np.sqrt(c), g)
    else:
        v = state["velocity"]
        v *= beta
        v += omb * (np.multiply(g, g, out=np.empty_like(w)) + eps1)
        u = np.divide(g, np.sqrt(v), out=np.empty_like(w))
    ratio = math.sqrt(_sumsq(u) / u.size) / s["clip_threshold"]
    denom = ratio if ratio != ratio else max(1.0, ratio)
    backend.sgd(w.reshape(-1), u.reshape(-1), alpha / denom)


# ---------------------------------------------------------------------------
# PyTorch: per-step scalars, then the work per tensor.

def prepare_adafactor_torch(learning_rate, beta_2_decay, epsilon_1, epsilon_2, clip_threshold,
                            step):
    return {"lr": learning_rate, "rho": min(learning_rate, 1 / (step ** 0.5)),
            "weight": step ** beta_2_decay, "epsilon_1": epsilon_1, "epsilon_2": epsilon_2,
            "clip_threshold": clip_threshold}


def _lerp(x, end, weight):
    """``x.lerp_(end, weight)`` as torch computes it on the CPU."""
    if weight < 0.5:
        x += weight * (end - x)
    else:
        x[...] = end - (end - x) * (1.0 - weight)


def adafactor_torch_step(w, g, state, s, backend, keep=1.0):
    n = w.size
    if n == 0:
        return
    dt = w.dtype.type
    eps1 = s["epsilon_1"]
    if eps1 != eps1:  # None: the dtype's machine epsilon
        eps1 = float(np.finfo(w.dtype).eps)
    alpha = max(s["epsilon_2"], math.sqrt(_sumsq(w)) / n ** 0.5) * s["rho"]
    if keep != 1.0:
        w *= dt(keep)
    weight = s["weight"]
    if w.ndim >= 2:
        row, col = state["row_var"], state["col_var"]
        rows, cols = _row_col_sumsq(g)
        _lerp(row, rows[..., None] / dt(g.shape[-1]), weight)
        _lerp(col, cols[..., None, :] / dt(g.shape[-2]), weight)
        var = _outer(row[..., 0], col[..., 0, :])  # R @ C
        var /= np.maximum(row.mean(axis=-2, keepdims=True), dt(eps1))
    else:
        var = state["variance"]
        _lerp(var, np.multiply(g, g, out=np.empty_like(w)), weight)
        var = var.copy()
    np.maximum(var, dt(eps1 * eps1), out=var)
    update = np.sqrt(var, out=var)
    np.divide(g, update, out=update)
    flat = update.reshape(-1)
    denom = max(1.0, math.sqrt(_sumsq(flat)) / (n ** 0.5 * s["clip_threshold"]))
    backend.sgd(w.reshape(-1), flat, alpha / denom)


# ---------------------------------------------------------------------------
# The float64 references, written independently: one tensor, whole arrays.

def adafactor(param, grad, r, c, velocity, learning_rate, beta_2_decay, epsilon_1, epsilon_2,
              clip_threshold, step):
    """Keras 3 Adafactor, one tensor (``param`` already weight-decayed)::

        rho = min(lr, t**-0.5);  alpha = max(epsilon_2, RMS(w)) * rho
        b = 1 - t**beta_2_decay;  G = g**2 + epsilon_1
        ndim >= 2:  r <- b r + (1-b) mean_-1 G;  c <- b c + (1-b) mean_-2 G
                    v = r[..., :, None] c[..., None, :] / mean_-1(r)[..., None, None]
        else:       v <- b v + (1-b) G
        u = g / sqrt(v)
        w <- w - alpha u / max(1, RMS(u) / clip_threshold)
    """
    w = np.array(param, dtype=np.float64)
    g = np.asarray(grad, dtype=np.float64)
    t = float(step)
    alpha = np.maximum(epsilon_2, np.sqrt(np.mean(w ** 2))) * min(learning_rate, t ** -0.5)
    b = 1.0 - t ** beta_2_decay
    big_g = g ** 2 + epsilon_1
    if w.ndim >= 2:
        r = b * np.asarray(r, np.float64) + (1.0 - b) * big_g.sum(axis=-1) / g.shape[-1]
        c = b * np.asarray(c, np.float64) + (1.0 - b) * big_g.sum(axis=-2) / g.shape[-2]
        v = np.einsum("...i,...j->...ij", r, c) / np.mean(r, axis=-1)[..., None, None]
    else:
        velocity = b * np.asarray(velocity, np.float64) + (1.0 - b) * big_g
        v = velocity
    u = g / np.sqrt(v)
    clip = np.maximum(1.0, np.sqrt(np.mean(u ** 2)) / clip_threshold)
    return w - alpha * (u / clip), r, c, velocity


def adafactor_torch(param, grad, row_var, col_var, variance, learning_rate, beta_2_decay,
                    epsilon_1, epsilon_2, clip_threshold, step, weight_decay=0.0):
    """PyTorch Adafactor, one tensor (``param`` *before* weight decay)::

        rho = min(lr, t**-0.5);  alpha = max(epsilon_2, ||w||/sqrt(N)) * rho
        w <- w (1 - lr weight_decay);  k = t**beta_2_decay
        ndim >= 2:  R <- R + k (mean_-1(g**2) - R);  C <- C + k (mean_-2(g**2) - C)
                    V = R C / max(mean_-2 R, epsilon_1)
        else:       V <- V + k (g**2 - V)
        u = g / sqrt(max(V, epsilon_1**2))
        w <- w - alpha u / max(1, ||u|| / (sqrt(N) clip_threshold))

    (``epsilon_1`` NaN or None: the machine epsilon of ``param``'s dtype.)
    """
    eps1 = np.finfo(np.asarray(param).dtype).eps if epsilon_1 is None or epsilon_1 != epsilon_1 \
        else epsilon_1
    w = np.array(param, dtype=np.float64)
    g = np.asarray(grad, dtype=np.float64)
    t = float(step)
    k = t ** beta_2_decay
    alpha = max(epsilon_2, np.linalg.norm(w.ravel()) / np.sqrt(w.size)) \
        * min(learning_rate, t ** -0.5)
    w = w * (1.0 - learning_rate * weight_decay)
    if w.ndim >= 2:
        row_var = np.asarray(row_var, np.float64)
        col_var = np.asarray(col_var, np.float64)
        row_var = row_var + k * (np.mean(g ** 2, axis=-1, keepdims=True) - row_var)
        col_var = col_var + k * (np.mean(g ** 2, axis=-2, keepdims=True) - col_var)
        big_v = np.matmul(row_var, col_var) / np.maximum(
            np.mean(row_var, axis=-2, keepdims=True), eps1)
    else:
        variance = np.asarray(variance, np.float64)
        variance = variance + k * (g ** 2 - variance)
        big_v = variance
    u = g / np.sqrt(np.maximum(big_v, eps1 ** 2))
    clip = max(1.0, np.linalg.norm(u.ravel()) / (np.sqrt(u.size) * clip_threshold))
    return w - alpha / clip * u, row_var, col_var, variance


RULES = (
    Rule("adafactor", kind="per_tensor", slots=("r", "c", "velocity"), scalars=_SCALARS,
         prepare=prepare_adafactor, slot_shapes=slot_shapes_keras, host_step=adafactor_step,
         reference=adafactor, shardable=False, shard_refusal=_SHARD_REFUSAL,
         bf16_refusal="its factored moments are kept in the parameters' dtype "
                      "(the per-tensor host work reads them as NumPy arrays)"),
    Rule("adafactor_torch", kind="per_tensor", slots=("row_var", "col_var", "variance"),
         scalars=_SCALARS, convention="torch", prepare=prepare_adafactor_torch,
         slot_shapes=slot_shapes_torch, host_step=adafactor_torch_step, host_decay=True,
         reference=adafactor_torch, torch_state=("row_var", "col_var", "variance"),
         shardable=False, shard_refusal=_SHARD_REFUSAL,
         bf16_refusal="its factored moments are kept in the parameters' dtype "
                      "(the per-tensor host work reads them as NumPy arrays)"),
)
