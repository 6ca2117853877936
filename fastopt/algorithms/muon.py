"""Muon: momentum orthogonalised by a Newton–Schulz iteration (Keras 3 and PyTorch).

Muon (Jordan et al., 2024) keeps a momentum per weight matrix and steps along
an approximately orthogonalised version of it, ``O ~ U V^T`` for the momentum
``U S V^T``, computed by a few iterations of a quintic Newton–Schulz
polynomial: three matrix products per iteration (BLAS through NumPy's ``@``).
That is host work per tensor: a ``per_tensor`` rule (see the contributor
guide, "Rule kinds"), whose elementwise parts (the momentum, the final
update) are element loops.

The two frameworks differ:

* Keras 3.15.1 (``keras.optimizers.Muon``) runs Muon on the 2-D variables
  and AdamW on everything else (vectors, embeddings, and the variables whose
  names match ``exclude_layers``); its momentum is ``m <- momentum * m + g``,
  its normalisation ``x / (||x||_F + 1e-7)``, the update is scaled by
  ``rms_rate * sqrt(max(rows, cols))``, and the weight decay is
  ``weight_decay`` for Muon's tensors and ``adam_weight_decay`` for AdamW's.
* PyTorch 2.13.0 (``torch.optim.Muon``) takes 2-D parameters only; its
  momentum is an average ``b <- b + (1 - momentum) * (g - b)``, its
  normalisation ``x / max(||x||_F, eps)``, the learning rate is adjusted by
  ``adjust_lr_fn`` and the iteration runs in bfloat16.  fastopt runs it in the
  parameters' dtype (see :class:`Muon`, "The bfloat16 question").
"""
from __future__ import annotations

import math
import re

import numpy as np

from .._validation import boolean, real
from ..optimizer import Optimizer
from ..rule import Rule

#: Keller Jordan's quintic coefficients, the default of both frameworks
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
#: the constant Keras adds to the Frobenius norm, and torch's default ``eps``
NS_EPS = 1e-7
#: torch refuses this many Newton–Schulz steps or more ("for computational efficiency")
TORCH_MAX_NS_STEPS = 100
#: torch's ``adjust_lr_fn`` values (None is "original")
ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


# ---------------------------------------------------------------------------
# Newton–Schulz (the host work of the rule) and the learning-rate factors

def newton_schulz(x, steps, a, b, c, *, eps=NS_EPS, clamp=False, work=None):
    """Approximate the orthogonal factor of a 2-D array by ``steps`` quintic
    Newton–Schulz iterations, through BLAS matrix products.

    With ``X`` the input (transposed first when it has more rows than
    columns, so that the Gram matrix is the smaller one)::

        X <- X / (||X||_F + eps)        (Keras; clamp=False)
        X <- X / max(||X||_F, eps)      (torch; clamp=True)
        repeat steps times:
            A = X X^T
            X <- a X + (b A + c A A) X

    Parameters
    ----------
    x : ndarray, 2-D, float32 or float64
        Not modified.
    steps : int >= 0
    a, b, c : float
    eps : float
    clamp : bool
        ``max(norm, eps)`` (torch) instead of ``norm + eps`` (Keras).
    work : dict, optional
        Scratch arrays reused between calls (keyed by shape and dtype); pass
        the same dict every step to avoid allocations.

    Returns
    -------
    ndarray
        Of ``x``'s shape and dtype (a scratch array when ``work`` is given:
        valid until the next call with the same ``work``).
    """
    tall = x.shape[0] > x.shape[1]
    xt = x.T if tall else x
    r, n = xt.shape
    dtype = x.dtype
    if work is None:
        work = {}
    key = (r, n, dtype.str)
    bufs = work.get(key)
    if bufs is None:
        bufs = work[key] = (np.empty((r, n), dtype), np.empty((r, n), dtype),
                            np.empty((r, r), dtype), np.empty((r, r), dtype))
    cur, nxt, gram, poly = bufs
    norm = float(np.linalg.norm(xt))
    denom = max(norm, eps) if clamp else norm + eps
    np.copyto(cur, xt)  # C order whatever xt's
    cur /= dtype.type(denom)
    for _ in range(steps):
        np.matmul(cur, cur.T, out=gram)
        np.matmul(gram, gram, out=poly)
        poly *= c
        poly += b * gram
        np.matmul(poly, cur, out=nxt)
        nxt += a * cur
        cur, nxt = nxt, cur
    # keep the result in the first buffer slot for the caller's next call
    work[key] = (cur, nxt, gram, poly)
    return cur.T if tall else cur


def keras_update_scale(shape, rms_rate):
    """Keras's ``lr_adjust`` factor ``sqrt(max(rows, cols)) * rms_rate``
    (1 when ``rms_rate`` is None).  Keras computes ``ops.sqrt`` of the integer
    ``ops.maximum`` in float32 (``sqrt`` casts integers to floatx, float32 by
    default, and torch's ``sqrt`` of an int32 tensor is float32 anyway):
    the square root is rounded to float32, as here."""
    if rms_rate is None:
        return 1.0
    return float(np.sqrt(np.float32(max(shape[0], shape[1])))) * rms_rate


def torch_lr_ratio(shape, adjust_lr_fn):
    """torch's ``_adjust_lr`` ratio for a parameter of ``shape``:
    ``sqrt(max(1, A/B))`` (``"original"`` or None) or
    ``0.2 * sqrt(max(A, B))`` (``"match_rms_adamw"``)."""
    rows, cols = shape[0], shape[1]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / cols))
    return 0.2 * math.sqrt(max(rows, cols))


def uses_adamw(shape, name, exclude_layers, exclude_embeddings):
    """Keras's ``_should_use_adamw``: not 2-D, or (with
    ``exclude_embeddings``) ``"embedding"`` in the lower-cased name, or a
    pattern of ``exclude_layers`` found (``re.search``) in the name.
    Parameters without a name (list params) match no name."""
    if len(shape) != 2:
        return True
    if name is None:
        return False
    if exclude_embeddings and "embedding" in name.lower():
        return True
    return any(re.search(pattern, name) for pattern in exclude_layers)


# ---------------------------------------------------------------------------
# The elementwise parts, in the element language: the momentum (its output
# "w" is the Newton–Schulz input, written into a scratch array) and the
# update (its "g" is the Newton–Schulz output).

def prepare_muon_momentum(momentum):
    return {"mu": momentum, "mu_minus_one": momentum - 1.0}


def element_muon_nesterov(g, w, momentum, mu, mu_minus_one):
    momentum = momentum + (g + momentum * mu_minus_one)
    w = g + mu * momentum
    return w, momentum


def element_muon_plain(g, w, momentum, mu, mu_minus_one):
    momentum = momentum + (g + momentum * mu_minus_one)
    w = momentum
    return w, momentum


def prepare_muon_momentum_torch(momentum):
    return {"mu": momentum, "one_minus_mu": 1.0 - momentum}


def element_muon_nesterov_torch(g, w, momentum, mu, one_minus_mu):
    # torch's lerp: start + weight * (end - start) for weight < 0.5, else
    # end - (end - start) * (1 - weight)
    if one_minus_mu < 0.5:
        momentum = momentum + one_minus_mu * (g - momentum)
    else:
        momentum = g - (g - momentum) * mu
    if mu < 0.5:
        w = g + mu * (momentum - g)
    else:
        w = momentum - (momentum - g) * one_minus_mu
    return w, momentum


def element_muon_plain_torch(g, w, momentum, mu, one_minus_mu):
    if one_minus_mu < 0.5:
        momentum = momentum + one_minus_mu * (g - momentum)
    else:
        momentum = g - (g - momentum) * mu
    w = momentum
    return w, momentum


# ---------------------------------------------------------------------------
# The float64 references: the specification, whole-array NumPy, written
# independently of the functions above.

def _f64(x):
    return np.asarray(x, dtype=np.float64)


def _orthogonalise(u, steps, coefficients, normalise):
    """Newton–Schulz, written plainly: ``normalise(||u||_F)`` is the divisor."""
    a, b, c = coefficients
    x = u.T if u.shape[0] > u.shape[1] else u
    x = x / normalise(np.sqrt(np.sum(x * x)))
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if u.shape[0] > u.shape[1] else x


def muon(param, grad, m, *, learning_rate, momentum, muon_a, muon_b, muon_c, ns_steps,
         nesterov, rms_rate):
    """Keras Muon on a 2-D variable (``m``: its ``momentum`` slot)::

        m <- momentum * m + g
        u = g + momentum * m            (nesterov; else u = m)
        O = NS(u)                       (ns_steps iterations, below)
        w <- w - lr * rms_rate * sqrt(max(rows, cols)) * O
                                        (the factor is 1 if rms_rate is None)

    ``NS``: with ``X = u`` (``u^T`` if ``u`` has more rows than columns),
    ``X <- X / (||X||_F + 1e-7)``, then ``ns_steps`` times
    ``X <- a X + (b X X^T + c (X X^T)^2) X`` with ``(a, b, c) = (muon_a,
    muon_b, muon_c)``, transposed back.  Decoupled weight decay
    ``w <- w * (1 - weight_decay * lr)`` comes first.
    """
    g = _f64(grad)
    m = momentum * _f64(m) + g
    u = g + momentum * m if nesterov else m
    o = _orthogonalise(u, ns_steps, (muon_a, muon_b, muon_c), lambda n: n + 1e-7)
    factor = 1.0 if rms_rate is None else \
        rms_rate * float(np.float32(np.sqrt(max(param.shape))))
    return _f64(param) - learning_rate * factor * o, m


def muon_adamw(param, grad, m, v, *, learning_rate, adam_lr_ratio, adam_beta_1, adam_beta_2,
               epsilon, step):
    """Keras Muon on the variables it gives to AdamW (``m``, ``v``: their
    ``momentum`` and ``velocity`` slots; ``step`` counts updates from 1)::

        lr_a = lr * adam_lr_ratio
        m <- m + (1 - adam_beta_1) * (g - m)
        v <- v + (1 - adam_beta_2) * (g^2 - v)
        w <- w - lr_a * sqrt(1 - adam_beta_2^step) / (1 - adam_beta_1^step)
                 * m / (sqrt(v) + epsilon)

    Decoupled weight decay ``w <- w * (1 - adam_weight_decay * lr)`` comes
    first (with ``lr``, not ``lr_a``).
    """
    g = _f64(grad)
    m = _f64(m) + (1.0 - adam_beta_1) * (g - _f64(m))
    v = _f64(v) + (1.0 - adam_beta_2) * (np.square(g) - _f64(v))
    lr = learning_rate * adam_lr_ratio
    w = _f64(param) - lr * np.sqrt(1.0 - adam_beta_2 ** step) / (1.0 - adam_beta_1 ** step) \
        * m / (np.sqrt(v) + epsilon)
    return w, m, v


def muon_torch(param, grad, b, *, learning_rate, momentum, muon_a, muon_b, muon_c, ns_steps,
               nesterov, epsilon, adjust_lr_fn):
    """PyTorch Muon (``b``: ``momentum_buffer``; 2-D parameters only)::

        b <- b + (1 - momentum) * (g - b)
        u = g + momentum * (b - g)      (nesterov; else u = b)
        O = NS(u)                       (ns_steps iterations, below)
        w <- w - lr * ratio * O

    ``ratio`` is ``sqrt(max(1, rows/cols))`` (``adjust_lr_fn`` None or
    ``"original"``) or ``0.2 * sqrt(max(rows, cols))``
    (``"match_rms_adamw"``).  ``NS`` as in :func:`muon` but normalised by
    ``max(||X||_F, epsilon)``, computed here in float64 (torch: bfloat16).
    Decoupled weight decay ``w <- w * (1 - weight_decay * lr)`` comes first.
    """
    g = _f64(grad)
    b = _f64(b) + (1.0 - momentum) * (g - _f64(b))
    u = g + momentum * (b - g) if nesterov else b
    o = _orthogonalise(u, ns_steps, (muon_a, muon_b, muon_c), lambda n: max(n, epsilon))
    rows, cols = param.shape
    if adjust_lr_fn == "match_rms_adamw":
        ratio = 0.2 * np.sqrt(max(rows, cols))
    else:
        ratio = np.sqrt(max(1.0, rows / cols))
    return _f64(param) - learning_rate * ratio * o, b
