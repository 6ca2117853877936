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
import numbers
import re

import numpy as np

from .. import blas, two_phase
from .._validation import boolean, real
from ..backends import get_num_threads, num_threads_set
from ..buffers import TensorGroup
from ..optimizer import Optimizer
from ..pipeline import decay_factors
from ..rule import RULES as REGISTRY
from ..rule import Rule
from .adam import adam_alpha

#: Keller Jordan's quintic coefficients, the default of both frameworks
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
#: the constant Keras adds to the Frobenius norm, and torch's default ``eps``
NS_EPS = 1e-7
#: torch refuses this many Newton–Schulz steps or more ("for computational efficiency")
TORCH_MAX_NS_STEPS = 100
#: torch's ``adjust_lr_fn`` values (None is "original")
ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


#: the Keras-only hyperparameters (the AdamW part, the name matching and the
#: update's RMS scaling): refused under convention="torch"
_KERAS_ONLY = ("adam_beta_1", "adam_beta_2", "adam_weight_decay", "exclude_layers",
               "exclude_embeddings", "adam_lr_ratio", "rms_rate")
#: ``rms_rate=None`` (Keras: no RMS scaling) as stored among the
#: hyperparameters, where None means "the default"
_NO_RMS = "none"
_UNSET = object()


class Muon(Optimizer):
    """Muon: SGD momentum orthogonalised by Newton–Schulz iterations, as
    Keras 3's ``keras.optimizers.Muon`` (default) and PyTorch's
    ``torch.optim.Muon`` (``convention="torch"``).

    Keras convention (:func:`muon`, :func:`muon_adamw`).  A parameter is
    given to AdamW if it is not 2-D, if (``exclude_embeddings``) its name
    contains ``"embedding"`` (any case), or if a pattern of
    ``exclude_layers`` is found in its name (``re.search``); names are the
    keys of dict params (list params have none).  The others, with
    ``NS(u)`` the Newton–Schulz orthogonalisation (:func:`newton_schulz`)::

        w <- w * (1 - weight_decay * lr)
        m <- momentum * m + g
        u = g + momentum * m                (nesterov; else u = m)
        w <- w - lr * rms_rate * sqrt(max(rows, cols)) * NS(u)

    and AdamW's::

        w <- w * (1 - adam_weight_decay * lr)
        m <- m + (1 - adam_beta_1) * (g - m)
        v <- v + (1 - adam_beta_2) * (g^2 - v)
        w <- w - lr * adam_lr_ratio * sqrt(1 - adam_beta_2^t) / (1 - adam_beta_1^t)
                 * m / (sqrt(v) + epsilon)

    Torch convention (:func:`muon_torch`; 2-D parameters only)::

        w <- w * (1 - weight_decay * lr)
        b <- b + (1 - momentum) * (g - b)
        u = g + momentum * (b - g)          (nesterov; else u = b)
        w <- w - lr * ratio * NS(u)

    with ``ratio = sqrt(max(1, rows/cols))`` (``adjust_lr_fn`` None or
    ``"original"``) or ``0.2 * sqrt(max(rows, cols))``
    (``"match_rms_adamw"``).

    ``NS(u)``: ``X = u`` (transposed if it has more rows than columns),
    normalised by ``||X||_F + 1e-7`` (Keras) or ``max(||X||_F, epsilon)``
    (torch), then ``ns_steps`` times ``X <- a X + (b X X^T + c (X X^T)^2) X``
    with ``(a, b, c) = (muon_a, muon_b, muon_c)`` (torch's
    ``ns_coefficients``).

    The bfloat16 question.  torch casts ``u`` to bfloat16 and iterates in
    bfloat16.  fastopt does not copy that: it iterates in the parameters'
    dtype (float64 or float32), so both conventions compute the same
    polynomial in full precision.  Measured against torch 2.13 on the golden
    recordings (60 steps, float64 parameters), torch's bfloat16 iteration
    moves the parameters by up to 2.1e-2 of their displacement (the default
    configuration) and 7.5e-3 (3 iterations, ``match_rms_adamw``), and
    fastopt matches torch's own code run in float64 to ~1e-14.

    The matrix products run on NumPy's BLAS (:mod:`fastopt.blas`: its thread
    count follows :func:`fastopt.set_num_threads` when that was called); the
    momentum, the AdamW part and the other elementwise work run as generated
    element loops on the chosen backend.  CUDA device arrays run by host
    staging (:class:`fastopt.per_tensor.StagedPlan`): the momentum lives on
    the device, and each step copies every matrix, its gradient and momentum
    to the host, runs the same host code (numpy backend) and copies the
    matrix and momentum back -- the numpy backend's results at host and PCIe
    speed, not a GPU kernel; the AdamW tensors run the compiled kernel on the
    GPU.  :class:`fastopt.ShardedOptimizer` refuses Muon: the iteration needs
    each whole matrix, which ZeRO-1 cuts by element.

    Parameters
    ----------
    params : array, list/tuple of arrays, dict of arrays, or parameter groups
    learning_rate : float or schedule, default 0.001
        torch's ``lr``.
    adam_beta_1, adam_beta_2 : float in [0, 1), defaults 0.9 and 0.999
        Keras only.
    adam_weight_decay : float >= 0 or None, default 0.004
        Keras only: the decoupled weight decay of AdamW's parameters.
    epsilon : float >= 0, default 1e-7
        Keras: AdamW's epsilon.  torch (``eps``): the floor of the norm
        that Newton–Schulz divides by.
    weight_decay : float >= 0 or None, defaults 0.004 (Keras), 0.1 (torch)
        The decoupled weight decay of Muon's parameters.
    exclude_layers : list of str, optional
        Keras only: regular expressions; a parameter whose name matches one
        goes to AdamW.
    exclude_embeddings : bool, default True
        Keras only: a parameter whose name contains "embedding" goes to AdamW.
    muon_a, muon_b, muon_c : float, defaults 3.4445, -4.7750, 2.0315
        The Newton–Schulz coefficients (torch's ``ns_coefficients``).
    adam_lr_ratio : float >= 0, default 1
        Keras only: AdamW's learning rate is ``learning_rate * adam_lr_ratio``
        (its weight decay still uses ``learning_rate``).
    momentum : float >= 0, default 0.95
    ns_steps : int >= 0, default 5
        Newton–Schulz iterations (torch: fewer than 100).
    nesterov : bool, default True
    rms_rate : float >= 0 or None, default 0.2
        Keras only: the update of a matrix is scaled by
        ``rms_rate * sqrt(max(rows, cols))``; None: not scaled.
    adjust_lr_fn : None, "original" or "match_rms_adamw", default None
        torch only.
    **kwargs
        See :class:`fastopt.Optimizer` (``weight_decay`` is decoupled under
        both conventions).  ``state_dtype`` is not offered; CUDA device
        arrays run by host staging (above).
    """

    _DEFAULTS = {"learning_rate": 0.001, "adam_beta_1": 0.9, "adam_beta_2": 0.999,
                 "adam_weight_decay": 0.004, "epsilon": 1e-7, "weight_decay": 0.004,
                 "exclude_layers": (), "exclude_embeddings": True,
                 "muon_a": NS_COEFFICIENTS[0], "muon_b": NS_COEFFICIENTS[1],
                 "muon_c": NS_COEFFICIENTS[2], "adam_lr_ratio": 1.0, "momentum": 0.95,
                 "ns_steps": 5, "nesterov": True, "rms_rate": 0.2, "adjust_lr_fn": None}
    _TORCH_DEFAULTS = {"learning_rate": 1e-3, "weight_decay": 0.1, "momentum": 0.95,
                       "nesterov": True, "muon_a": NS_COEFFICIENTS[0],
                       "muon_b": NS_COEFFICIENTS[1], "muon_c": NS_COEFFICIENTS[2],
                       "epsilon": NS_EPS, "ns_steps": 5, "adjust_lr_fn": None}
    _TORCH_ONLY = ("adjust_lr_fn",)
    _TORCH_DECOUPLED = True
    _TORCH_NAMES = {**Optimizer._TORCH_NAMES, "eps": "epsilon",
                    "ns_coefficients": "muon_a, muon_b and muon_c"}

    def __init__(self, params, learning_rate=None, adam_beta_1=None, adam_beta_2=None,
                 adam_weight_decay=None, epsilon=None, exclude_layers=None,
                 exclude_embeddings=None, muon_a=None, muon_b=None, muon_c=None,
                 adam_lr_ratio=None, momentum=None, ns_steps=None, nesterov=None,
                 rms_rate=_UNSET, adjust_lr_fn=None, **kwargs):
        if rms_rate is _UNSET:
            rms_rate = None
        elif rms_rate is None:
            rms_rate = _NO_RMS
        super().__init__(params, learning_rate=learning_rate,
                         hyper={"adam_beta_1": adam_beta_1, "adam_beta_2": adam_beta_2,
                                "adam_weight_decay": adam_weight_decay, "epsilon": epsilon,
                                "exclude_layers": exclude_layers,
                                "exclude_embeddings": exclude_embeddings,
                                "muon_a": muon_a, "muon_b": muon_b, "muon_c": muon_c,
                                "adam_lr_ratio": adam_lr_ratio, "momentum": momentum,
                                "ns_steps": ns_steps, "nesterov": nesterov,
                                "rms_rate": rms_rate, "adjust_lr_fn": adjust_lr_fn},
                         **kwargs)

    def _check(self, h, owner):
        torch = self.convention == "torch"
        out = {"epsilon": real(owner, "epsilon", h["epsilon"], low=0.0),
               "muon_a": real(owner, "muon_a", h["muon_a"]),
               "muon_b": real(owner, "muon_b", h["muon_b"]),
               "muon_c": real(owner, "muon_c", h["muon_c"]),
               "momentum": real(owner, "momentum", h["momentum"], low=0.0),
               "nesterov": boolean(owner, "nesterov", h["nesterov"])}
        steps = h["ns_steps"]
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
            raise TypeError(f"{owner}: ns_steps must be an int, got {steps!r}")
        if steps < 0 or (torch and steps >= TORCH_MAX_NS_STEPS):
            raise ValueError(f"{owner}: ns_steps must be >= 0"
                             + (f" and < {TORCH_MAX_NS_STEPS} (torch.optim.Muon's limit)"
                                if torch else "") + f", got {steps!r}")
        out["ns_steps"] = int(steps)
        if torch:
            given = [k for k in _KERAS_ONLY if h.get(k) not in (None, _NO_RMS)]
            if given:
                raise ValueError(f"{owner}: {', '.join(given)} is a Keras option (torch.optim."
                                 "Muon has no AdamW part and no rms_rate); use "
                                 "convention='keras' or leave it out")
            fn = h["adjust_lr_fn"]
            if fn not in ADJUST_LR_FNS:
                raise ValueError(f"{owner}: adjust_lr_fn must be None, 'original' or "
                                 f"'match_rms_adamw', got {fn!r}")
            out["adjust_lr_fn"] = fn
            out.update(dict.fromkeys(_KERAS_ONLY))
            return out
        layers = h["exclude_layers"]
        if layers is None:
            layers = ()
        if isinstance(layers, str) or not all(isinstance(p, str) for p in layers):
            raise TypeError(f"{owner}: exclude_layers must be a list of strings (regular "
                            f"expressions), got {layers!r}")
        for pattern in layers:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{owner}: exclude_layers pattern {pattern!r} is not a "
                                 f"regular expression ({exc})") from None
        rms = h["rms_rate"]
        out.update({
            "adam_beta_1": real(owner, "adam_beta_1", h["adam_beta_1"], low=0.0, high=1.0,
                                high_open=True),
            "adam_beta_2": real(owner, "adam_beta_2", h["adam_beta_2"], low=0.0, high=1.0,
                                high_open=True),
            "adam_weight_decay": real(owner, "adam_weight_decay", h["adam_weight_decay"],
                                      low=0.0, allow_none=True),
            "exclude_layers": tuple(layers),
            "exclude_embeddings": boolean(owner, "exclude_embeddings", h["exclude_embeddings"]),
            "adam_lr_ratio": real(owner, "adam_lr_ratio", h["adam_lr_ratio"], low=0.0),
            "rms_rate": _NO_RMS if rms == _NO_RMS else real(owner, "rms_rate", rms, low=0.0),
            "adjust_lr_fn": None})
        return out

    def _rule_name(self, h):
        return "muon_torch" if self.convention == "torch" else "muon"

    def _scalars(self, h, lr, updates):
        self._updates = updates  # for the AdamW part's bias correction (_apply)
        common = (lr, h["momentum"], h["muon_a"], h["muon_b"], h["muon_c"], h["ns_steps"],
                  h["nesterov"])
        if self.convention == "torch":
            return (*common, h["epsilon"], h["adjust_lr_fn"])
        return (*common, None if h["rms_rate"] == _NO_RMS else h["rms_rate"])

    def get_config(self):
        config = super().get_config()
        if config.get("rms_rate") == _NO_RMS:
            config["rms_rate"] = None
        if config.get("exclude_layers") is not None:
            config["exclude_layers"] = list(config["exclude_layers"])
        return config

    # -- the per-tensor parts ---------------------------------------------------
    def uses_adamw(self):
        """Per parameter (flat order): whether it goes to AdamW (Keras
        convention; always False under the torch one)."""
        return [self._adamw_of(i) for i in range(len(self._params))]

    def _adamw_of(self, i):
        if self.convention == "torch":
            return False
        h = self._group_of(i).hyperparams
        names = getattr(self, "_given_names", None) or self._tree.names
        return uses_adamw(self._params[i].shape, names[i], h["exclude_layers"],
                          h["exclude_embeddings"])

    @classmethod
    def _over_state(cls, params, state, names=None, **kwargs):
        """:meth:`fastopt.Optimizer._over_state`, and ``names``: one per
        parameter (list params), what Keras's routing matches (the Keras
        variables' paths, from :mod:`fastopt.keras`).  ``state["velocity"]``
        holds None for the parameters that do not go to AdamW."""
        self = cls.__new__(cls)
        self._given_state = state
        self._given_names = None if names is None else list(names)
        cls.__init__(self, params, **kwargs)
        return self

    def _group_of(self, i):
        for pg in self._param_groups:
            if i in pg.indices:
                return pg
        raise IndexError(i)  # pragma: no cover

    # -- the step -------------------------------------------------------------------
    # The matrices run the per_tensor rule ("muon" or "muon_torch", host_step
    # :func:`muon_step`) through :mod:`fastopt.per_tensor`; under the Keras
    # convention the parameters AdamW takes run the compiled "adam" rule in
    # tensor groups of their own, with their own decay and learning rate.

    def _build(self):
        owner = type(self).__name__
        given = getattr(self, "_given_state", None)
        if given is not None and (self._device or len(self._param_groups) > 1):
            raise ValueError(f"{owner}: state in the caller's arrays needs host parameters "
                             "and one parameter group")
        if self.convention == "torch":
            for label, shape in zip(self._tree.labels, self._tree.shapes):
                if len(shape) != 2:
                    raise ValueError(f"{owner}: convention='torch' (torch.optim.Muon) takes 2-D "
                                     f"parameters only; params{label} has shape {tuple(shape)} "
                                     "(give biases and embeddings to another optimizer, or "
                                     "use convention='keras', which gives them to AdamW)")
        adam = REGISTRY["adam"]
        slots = None
        if given is not None:  # Keras's variables (fastopt.keras.Muon): momentum for
            # every parameter, velocity for AdamW's (None for the others)
            adamw_of = [self._adamw_of(i) for i in range(len(self._params))]
            slots = {"momentum": self._state_arrays("momentum", True)}
            velocity = list(given.get("velocity") or [None] * len(self._params))
            if len(velocity) != len(self._params):
                raise ValueError(f"{owner}: {len(velocity)} velocity arrays for "
                                 f"{len(self._params)} parameters")
            for i, (a, p) in enumerate(zip(velocity, self._params)):
                if adamw_of[i] and not (isinstance(a, np.ndarray) and a.shape == p.shape
                                        and a.dtype == p.dtype and a.flags.c_contiguous
                                        and a.flags.writeable):
                    raise ValueError(f"{owner}: the velocity array of parameter {i} (AdamW) "
                                     f"must be a writeable C-contiguous {p.dtype} array of "
                                     f"shape {p.shape}")
            slots["velocity"] = velocity
        for pg in self._param_groups:
            muon, adamw = {}, {}
            for i in pg.indices:
                (adamw if self._adamw_of(i) else muon).setdefault(
                    self._params[i].dtype, []).append(i)
            pg.tensor_groups = []
            for rule, by_dtype in ((pg.rule, muon), (adam, adamw)):
                for idx in by_dtype.values():
                    group = TensorGroup(idx, [self._params[i] for i in idx], rule, {},
                                        self._backend_name,
                                        [i not in self._excluded for i in idx],
                                        self._device,
                                        slot_arrays=None if slots is None else
                                        {name: [slots[name][i] for i in idx]
                                         for name in rule.slots})
                    group.adamw = rule is adam
                    pg.tensor_groups.append(group)
        self._tensor_groups = [g for pg in self._param_groups for g in pg.tensor_groups]
        self._build_averages(given)
        self._counted = []
        self._one_tensor_group = False
        self._no_clip_scales = [1.0] * len(self._tensor_groups)
        self._updates = 0

    def _apply(self, grads, inv, runs):
        if self._clipnorm is None and self._global_clipnorm is None:
            scales = [inv] * len(self._tensor_groups)
        else:
            clip = two_phase.clipping(self._clipnorm, self._global_clipnorm,
                                      self.convention == "torch")
            scales = two_phase.decide(clip, self._tensor_groups, grads, inv,
                                      self.reduce_tensor_sums)
        clipvalue = math.inf if self._clipvalue is None else self._clipvalue
        k = 0
        # the matrix products on fastopt's thread count, when one was set
        with blas.limit(get_num_threads() if num_threads_set() else None):
            for pg, lr, scalars in runs:
                h = pg.hyperparams
                for group in pg.tensor_groups:
                    scale = -scales[k] if h["maximize"] else scales[k]
                    k += 1
                    group_grads = [grads[i] for i in group.indices]
                    if all(g is None for g in group_grads):
                        continue
                    if group.adamw:
                        keep, _ = decay_factors(h["adam_weight_decay"], lr, False)
                        scalars_now = (adam_alpha(lr * h["adam_lr_ratio"], h["adam_beta_1"],
                                                  h["adam_beta_2"], self._updates),
                                       h["adam_beta_1"], h["adam_beta_2"], h["epsilon"])
                    else:
                        keep, _ = decay_factors(h["weight_decay"], lr, False)
                        scalars_now = scalars
                    group.set_factors(scale, keep, 0.0)
                    # (the AdamW groups' average in their kernel's pass, with use_ema)
                    self._plan_step(group, group_grads, scalars_now, clipvalue)


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
    # torch's lerp: start + weight * (end - start) for |weight| < 0.5, else
    # end - (end - start) * (1 - weight)
    if abs(one_minus_mu) < 0.5:
        momentum = momentum + one_minus_mu * (g - momentum)
    else:
        momentum = g - (g - momentum) * mu
    if abs(mu) < 0.5:
        w = g + mu * (momentum - g)
    else:
        w = momentum - (momentum - g) * one_minus_mu
    return w, momentum


def element_muon_plain_torch(g, w, momentum, mu, one_minus_mu):
    if abs(one_minus_mu) < 0.5:
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


def _torch_lerp(start, end, weight):
    """``torch.lerp`` as torch computes it (CPU): ``start + weight * (end -
    start)`` for ``|weight| < 0.5``, else ``end - (end - start) * (1 -
    weight)`` (the two differ for infinite inputs: ``inf - inf``)."""
    if abs(weight) < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1.0 - weight)


def muon_momentum_nesterov(param, grad, m, *, momentum):
    """The momentum part of Keras Muon with Nesterov momentum (what it
    writes in place of the parameter is the Newton–Schulz input ``u``;
    Keras's ``m += g + m * (momentum - 1)``)::

        m <- momentum * m + g
        u = g + momentum * m
    """
    g = _f64(grad)
    m = _f64(m)
    m = m + (g + m * (momentum - 1.0))
    return g + momentum * m, m


def muon_momentum_plain(param, grad, m, *, momentum):
    """The momentum part of Keras Muon without Nesterov momentum::

        m <- momentum * m + g
        u = m
    """
    m = _f64(m)
    m = m + (_f64(grad) + m * (momentum - 1.0))
    return m.copy(), m


def muon_momentum_nesterov_torch(param, grad, b, *, momentum):
    """The momentum part of PyTorch Muon with Nesterov momentum
    (``b.lerp_(g, 1 - momentum)``, ``u = g.lerp(b, momentum)``)::

        b <- b + (1 - momentum) * (g - b)
        u = g + momentum * (b - g)
    """
    g = _f64(grad)
    b = _torch_lerp(_f64(b), g, 1.0 - momentum)
    return _torch_lerp(g, b, momentum), b


def muon_momentum_plain_torch(param, grad, b, *, momentum):
    """The momentum part of PyTorch Muon without Nesterov momentum::

        b <- b + (1 - momentum) * (g - b)
        u = b
    """
    b = _torch_lerp(_f64(b), _f64(grad), 1.0 - momentum)
    return b.copy(), b


# ---------------------------------------------------------------------------
# The per_tensor rules: slot shapes, per-step scalars and the host step

def muon_slot_shapes(shape):
    return {"momentum": tuple(shape)}


def prepare_muon(learning_rate, momentum, muon_a, muon_b, muon_c, ns_steps, nesterov,
                 rms_rate):
    return {"kernel": "muon_nesterov" if nesterov else "muon_plain", "momentum": momentum,
            "a": muon_a, "b": muon_b, "c": muon_c, "steps": ns_steps, "eps": NS_EPS,
            "clamp": False, "lr": learning_rate, "rms_rate": rms_rate, "adjust_lr_fn": None}


def prepare_muon_torch(learning_rate, momentum, muon_a, muon_b, muon_c, ns_steps, nesterov,
                       epsilon, adjust_lr_fn):
    return {"kernel": "muon_nesterov_torch" if nesterov else "muon_plain_torch",
            "momentum": momentum, "a": muon_a, "b": muon_b, "c": muon_c, "steps": ns_steps,
            "eps": epsilon, "clamp": True, "lr": learning_rate, "rms_rate": None,
            "adjust_lr_fn": adjust_lr_fn}


def muon_step(w, g, state, scalars, backend):
    """One matrix's Muon step (``w`` already decayed, ``g`` already scaled):
    the momentum through the backend's generated loop (it writes the
    Newton–Schulz input ``u``), Newton–Schulz through BLAS, the update."""
    m = state["momentum"]
    u = np.empty_like(w)
    getattr(backend, scalars["kernel"])(u.reshape(-1), g.reshape(-1), m.reshape(-1),
                                        scalars["momentum"])
    o = newton_schulz(u, scalars["steps"], scalars["a"], scalars["b"], scalars["c"],
                      eps=scalars["eps"], clamp=scalars["clamp"])
    if scalars["clamp"]:  # torch
        coef = scalars["lr"] * torch_lr_ratio(w.shape, scalars["adjust_lr_fn"])
    else:
        coef = scalars["lr"] * keras_update_scale(w.shape, scalars["rms_rate"])
    o *= coef
    w -= o


_MOMENTUM = ("momentum",)
_MUON_K = ("learning_rate", "momentum", "muon_a", "muon_b", "muon_c", "ns_steps", "nesterov",
           "rms_rate")
_MUON_T = ("learning_rate", "momentum", "muon_a", "muon_b", "muon_c", "ns_steps", "nesterov",
           "epsilon", "adjust_lr_fn")
_SHARD_REFUSAL = ("Newton–Schulz needs each whole momentum matrix on one rank, and ZeRO-1 "
                  "cuts tensors by flat index; gathering every matrix on every rank each "
                  "step would cost more than sharding saves")

RULES = (
    # the momentum parts, compiled (the per_tensor rules call them)
    Rule("muon_nesterov", slots=("momentum",), scalars=_MOMENTUM,
         prepare=prepare_muon_momentum, element=element_muon_nesterov,
         reference=muon_momentum_nesterov),
    Rule("muon_plain", slots=("momentum",), scalars=_MOMENTUM,
         prepare=prepare_muon_momentum, element=element_muon_plain,
         reference=muon_momentum_plain),
    Rule("muon_nesterov_torch", slots=("momentum",), scalars=_MOMENTUM, convention="torch",
         prepare=prepare_muon_momentum_torch, element=element_muon_nesterov_torch,
         reference=muon_momentum_nesterov_torch, torch_state=("momentum_buffer",)),
    Rule("muon_plain_torch", slots=("momentum",), scalars=_MOMENTUM, convention="torch",
         prepare=prepare_muon_momentum_torch, element=element_muon_plain_torch,
         reference=muon_momentum_plain_torch, torch_state=("momentum_buffer",)),
    # the matrices' rules, run on the host per tensor
    Rule("muon", kind="per_tensor", slots=("momentum",), scalars=_MUON_K,
         prepare=prepare_muon, slot_shapes=muon_slot_shapes, host_step=muon_step,
         reference=muon, shardable=False, shard_refusal=_SHARD_REFUSAL),
    Rule("muon_torch", kind="per_tensor", slots=("momentum",), scalars=_MUON_T,
         convention="torch", prepare=prepare_muon_torch, slot_shapes=muon_slot_shapes,
         host_step=muon_step, reference=muon_torch, torch_state=("momentum_buffer",),
         shardable=False, shard_refusal=_SHARD_REFUSAL),
)
