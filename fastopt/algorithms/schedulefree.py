"""Schedule-free AdamW (Defazio et al., 2024, "The Road Less Scheduled").

No learning-rate schedule: the method keeps two sequences, the *base*
sequence ``z`` (where the Adam-normalised steps land) and the average ``x``
of the ``z`` iterates, and evaluates gradients at their interpolation
``y = (1 - beta_1) z + beta_1 x``.  Like the authors' package
(``schedulefree.AdamWScheduleFree``, version 1.4.1, the reference this module
matches), fastopt stores ``y`` in the parameters and ``z`` in a slot, and
recovers ``x = (y - (1 - beta_1) z) / beta_1`` only when asked:
:meth:`ScheduleFreeAdamW.eval` moves the parameters to ``x`` (evaluate,
checkpoint), :meth:`ScheduleFreeAdamW.train` moves them back to ``y``.

The weights of the average are host-side state (:attr:`fastopt.rule.Rule.host_state`):
the largest learning rate seen, ``lr_max``, and the running sum of the
weights, ``weight_sum``, kept per parameter group as the package keeps them
in its ``param_groups``; so is the mode, ``train_mode`` (1 for ``y``, 0 for
``x``), so that every state path carries it.

Keras 3.15.1's ``keras.optimizers.ScheduleFreeAdamW`` computes something
else, and fastopt does not offer it: see :class:`ScheduleFreeAdamW`, "Keras".
"""
from __future__ import annotations

import numpy as np

from .._validation import real
from ..hyperparams import count
from ..optimizer import Optimizer
from ..pipeline import update_counts
from ..rule import Rule

#: why the Keras convention is refused (the measurements are in
#: tests/golden/keras_schedulefree_adamw.json)
KERAS_DEFECT = (
    "Keras 3.15.1's ScheduleFreeAdamW is not the published method: its update_step keeps "
    "'momentum_old = momentum.value', which under the torch backend is the variable's own "
    "tensor, updated in place by the assign_sub that follows, so it recovers x from the new z "
    "instead of the old one (and it averages with weights 1/t, ignoring warmup, r and "
    "weight_lr_power, and decays the weights the Keras way); fastopt does not copy it")


class ScheduleFreeAdamW(Optimizer):
    """Schedule-free AdamW, as the authors' ``schedulefree.AdamWScheduleFree``
    (package version 1.4.1; torch convention only).

    The parameters hold ``y``, the slot ``momentum`` (the package's ``z``;
    Keras's name for it) the base sequence, ``velocity`` (``exp_avg_sq``)
    Adam's second moment.  With ``t`` counting updates from 1::

        lr_t       = lr * min(t / warmup_steps, 1)       (lr if warmup_steps == 0)
        lr_max     = max(lr_max, lr_t)                   (host state, -1 at first)
        weight_t   = t^r * lr_max^weight_lr_power
        weight_sum = weight_sum + weight_t               (host state, 0 at first)
        c_t        = weight_t / weight_sum               (0 if weight_sum == 0)
        v <- beta_2 * v + (1 - beta_2) * g^2
        u  = g / (sqrt(v / (1 - beta_2^t)) + epsilon) + weight_decay * y
        z <- z - lr_t * u
        x <- (1 - c_t) * x + c_t * z
        y  = (1 - beta_1) * z + beta_1 * x

    computed without ``x``, as the package does:
    ``y <- y + c_t * (z_old - y) + lr_t * (beta_1 * (1 - c_t) - 1) * u``
    (see :func:`schedulefree_adamw`).  Weight decay is evaluated at ``y``
    and enters ``u``, so ``exclude_from_weight_decay`` is not offered: give
    such parameters a group with ``weight_decay=0``.

    ``z`` starts as a copy of the parameters (on the first update, as the
    package copies them at a parameter's first step).  The state is not
    offered in bfloat16: ``z`` is a copy of the weights, whose steps of
    ``lr * u`` are far below a bfloat16 spacing of the weights.

    **Modes.**  :meth:`eval` moves the parameters to ``x`` (for evaluation
    and checkpoints), :meth:`train` back to ``y``; :meth:`step` in eval mode
    raises, as the package's does.  Unlike the package, which starts in eval
    mode and wants ``train()`` before its first step, fastopt starts in
    train mode: before the first update ``x = y = z``, so the two agree on
    everything but the error.  The mode (``train_mode``, 1 or 0), ``lr_max``
    and ``weight_sum`` are :meth:`host_state` and travel through
    ``state_dict``, state files and ``ShardedOptimizer``.

    **Keras.**  Keras 3.15.1's ``ScheduleFreeAdamW`` differs, and fastopt
    does not offer its formulas (``convention="keras"`` is refused): in its
    ``update_step``, ``momentum_old = momentum.value`` is, under the torch
    backend, the variable's tensor itself, which the ``assign_sub`` that
    follows updates in place, so ``x_old`` is recovered from the *new* ``z``:
    ``x_old = (y - (1 - beta_1) * z_new) / beta_1``, an error of
    ``(1 - beta_1) / beta_1 * lr_t * g / d`` per step that the average
    keeps.  It also weights the average by ``1/t`` (no ``r``,
    ``weight_lr_power``, nor the warmup's effect), has no ``train``/``eval``
    (its parameters are always ``y``), and applies Keras's decoupled weight
    decay to ``y`` alone.  The measured difference, on the same gradients,
    is in ``tests/golden/keras_schedulefree_adamw.json``.

    Parameters
    ----------
    params : array, list/tuple of arrays, dict of arrays, or parameter groups
    learning_rate : float or schedule, default 0.0025
        The package's ``lr`` (warmup multiplies it).
    beta_1 : float in (0, 1), default 0.9
        The interpolation between ``z`` and ``x`` (the package's
        ``betas[0]``); 0 is refused (``x`` could not be recovered).
    beta_2 : float in [0, 1), default 0.999
    epsilon : float >= 0, default 1e-8
        The package's ``eps``.
    warmup_steps : int >= 0, default 0
        Linear warmup of the learning rate over this many updates.
    r : float, default 0.0
        Polynomial weighting of the average, ``t^r``.
    weight_lr_power : float, default 2.0
        The average's weights are ``lr_max`` to this power.
    **kwargs
        See :class:`fastopt.Optimizer`.  ``weight_decay`` (default 0) is the
        package's (see above); ``convention`` can only be ``"torch"``.

    Notes
    -----
    The package's names: ``lr`` is ``learning_rate``, ``betas`` is
    ``beta_1`` and ``beta_2``, ``eps`` is ``epsilon``; its state keys ``z``
    and ``exp_avg_sq`` are the slots ``momentum`` and ``velocity``.
    """

    _TORCH_DEFAULTS = {"learning_rate": 0.0025, "beta_1": 0.9, "beta_2": 0.999,
                       "epsilon": 1e-8, "weight_decay": 0.0, "warmup_steps": 0, "r": 0.0,
                       "weight_lr_power": 2.0}
    _DEFAULTS = _TORCH_DEFAULTS
    _CONVENTIONS = ("torch",)
    _TORCH_NAMES = {**Optimizer._TORCH_NAMES, "betas": "beta_1 and beta_2", "eps": "epsilon"}

    def __init__(self, params, learning_rate=None, beta_1=None, beta_2=None, epsilon=None,
                 warmup_steps=None, r=None, weight_lr_power=None, **kwargs):
        owner = type(self).__name__
        if kwargs.get("convention") == "keras":
            raise ValueError(f"{owner}: convention='keras' is not offered: {owner} exists in "
                             f"the schedulefree package only, as its authors published it "
                             f"(convention='torch'). {KERAS_DEFECT}")
        if kwargs.get("exclude_from_weight_decay") is not None:
            raise ValueError(f"{owner}: exclude_from_weight_decay is not offered (the weight "
                             "decay is part of the update, as in the schedulefree package); "
                             "put those parameters in a group with weight_decay=0")
        super().__init__(params, learning_rate=learning_rate,
                         hyper={"beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon,
                                "warmup_steps": warmup_steps, "r": r,
                                "weight_lr_power": weight_lr_power},
                         **kwargs)
        self._copy_z()  # z = the parameters (again at the first update)

    def _check(self, h, owner):
        return {"beta_1": real(owner, "beta_1", h["beta_1"], low=0.0, high=1.0, low_open=True,
                               high_open=True),
                "beta_2": real(owner, "beta_2", h["beta_2"], low=0.0, high=1.0, high_open=True),
                "epsilon": real(owner, "epsilon", h["epsilon"], low=0.0),
                "warmup_steps": count(owner, "warmup_steps", h["warmup_steps"], 0),
                "r": real(owner, "r", h["r"]),
                "weight_lr_power": real(owner, "weight_lr_power", h["weight_lr_power"])}

    def _rule_name(self, h):
        return "schedulefree_adamw"

    def _scalars(self, h, lr, updates):
        return (lr, h["beta_1"], h["beta_2"], h["epsilon"], h["weight_decay"],
                float(h["warmup_steps"]), h["r"], h["weight_lr_power"], updates + 1)

    def _decay_factors(self, hyper, lr, pg):
        return 1.0, 0.0  # the rule applies the package's weight decay itself

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Not offered: the weight decay is part of the update (as in the
        package); give such parameters a group with ``weight_decay=0``."""
        raise ValueError(f"{type(self).__name__}.exclude_from_weight_decay is not offered "
                         "(the weight decay is part of the update, as in the schedulefree "
                         "package); put those parameters in a group with weight_decay=0")

    # -- the modes ----------------------------------------------------------------------
    @property
    def train_mode(self):
        """True when the parameters hold ``y`` (training), False when they
        hold ``x`` (after :meth:`eval`)."""
        return bool(self._param_groups[0].host[-1])

    def train(self):
        """Move the parameters to the training point ``y = (1 - beta_1) z +
        beta_1 x`` (in place; nothing to do in train mode), as the package's
        ``train()``."""
        self._switch(True)

    def eval(self):
        """Move the parameters to the average ``x = (y - (1 - beta_1) z) /
        beta_1`` (in place; nothing to do in eval mode), as the package's
        ``eval()``: evaluate and save checkpoints in this mode."""
        self._switch(False)

    def _switch(self, to_train):
        with self._lock:
            for pg in self._param_groups:
                if bool(pg.host[-1]) == to_train:
                    continue
                b1 = pg.hyperparams["beta_1"]
                # the package's lerp weights: y -> x is 1 - 1/beta_1, x -> y is 1 - beta_1
                c = 1.0 - b1 if to_train else 1.0 - 1.0 / b1
                if self._iterations:  # before the first update x = y = z: nothing moves
                    for group in pg.tensor_groups:
                        for k, i in enumerate(group.indices):
                            _lerp(self._arrays, self._params[i],
                                  group.slot_views["momentum"][k], c)
                pg.host = (*pg.host[:-1], 1.0 if to_train else 0.0)

    def _copy_z(self):
        for group in self._tensor_groups:
            for k, i in enumerate(group.indices):
                self._arrays.assign(group.slot_views["momentum"][k], self._params[i])

    def step(self, grads):
        """One update (see :meth:`fastopt.Optimizer.step`); in train mode
        only.

        Raises
        ------
        RuntimeError
            In eval mode (call :meth:`train` first), as the package does;
            nothing has changed.
        """
        with self._lock:
            if not all(pg.host[-1] for pg in self._param_groups):
                raise RuntimeError(f"{type(self).__name__}: step() in eval mode: call train() "
                                   "first (the parameters hold the average x, not the "
                                   "training point y)")
            steps = self.gradient_accumulation_steps
            applying, updates = (True, self._iterations) if steps is None \
                else update_counts(self._iterations, steps)
            if applying and updates == 0:
                self._tree.match_grads(grads, self._accumulated is not None)  # checked first
                self._copy_z()
            super().step(grads)


def _lerp(arrays, w, z, c):
    """``w <- w + c * (z - w)`` in place (exact where ``z == w``): one fused
    pass on host arrays (the numba backend's ``toward``; NumPy's three passes
    where Numba is missing), the cuda backend's ``lerp`` on device arrays."""
    if not isinstance(w, np.ndarray):
        arrays.lerp(w, z, 1.0 - c, c)
        return
    try:
        from ..backends import get_backend
        get_backend("numba").toward(w, z, c)
    except ImportError:
        d = np.subtract(z, w)
        d *= c
        w += d


# ---------------------------------------------------------------------------
# Host state (the average's weights, as the package's param_groups keep
# them, and the mode), the per-step scalars and the element.

def _warmed(learning_rate, warmup_steps, step):
    # the package: lr * (k + 1) / warmup_steps while k < warmup_steps (k = step - 1)
    if warmup_steps > 0.0 and step < warmup_steps:
        return learning_rate * (step / warmup_steps)
    return learning_rate


def advance_schedulefree_adamw(learning_rate, beta_1, beta_2, epsilon, weight_decay,
                               warmup_steps, r, weight_lr_power, step, lr_max, weight_sum,
                               train_mode):
    lr_max = max(_warmed(learning_rate, warmup_steps, step), lr_max)
    return {"lr_max": lr_max,
            "weight_sum": weight_sum + step ** r * lr_max ** weight_lr_power,
            "train_mode": train_mode}


def prepare_schedulefree_adamw(learning_rate, beta_1, beta_2, epsilon, weight_decay,
                               warmup_steps, r, weight_lr_power, step, lr_max, weight_sum,
                               train_mode):
    lr = learning_rate
    if warmup_steps > step:
        lr = learning_rate * (step / warmup_steps)
    ckp1 = 0.0
    if weight_sum != 0.0:
        ckp1 = pow(step, r) * pow(lr_max, weight_lr_power) / weight_sum
    return {"beta_2": beta_2, "one_minus_beta_2": 1.0 - beta_2,
            "bc2": 1.0 - pow(beta_2, step), "eps": epsilon, "wd": weight_decay,
            "ckp1": ckp1, "y_lr": lr * (beta_1 * (1.0 - ckp1) - 1.0), "z_lr": lr}


def element_schedulefree_adamw(g, w, momentum, velocity, beta_2, one_minus_beta_2, bc2, eps,
                               wd, ckp1, y_lr, z_lr):
    velocity = velocity * beta_2 + one_minus_beta_2 * (g * g)
    u = g / (sqrt(velocity / bc2) + eps) + wd * w
    w = w + (momentum - w) * ckp1
    w = w + y_lr * u
    momentum = momentum - z_lr * u
    return w, momentum, velocity


# ---------------------------------------------------------------------------
# The float64 reference: the specification, written as whole-array NumPy in
# the paper's three sequences (x recovered, updated, y rebuilt).

def schedulefree_adamw(param, grad, momentum, velocity, *, learning_rate, beta_1, beta_2,
                       epsilon, weight_decay, warmup_steps, r, weight_lr_power, step, lr_max,
                       weight_sum, train_mode):
    """Schedule-free AdamW, the authors' package (``param`` is ``y``,
    ``momentum`` is ``z``, ``velocity`` is ``exp_avg_sq``; ``step`` counts
    from 1; ``lr_max`` and ``weight_sum`` are the values after this step;
    ``train_mode`` is not read)::

        lr_t = lr * min(step / warmup_steps, 1)
        c    = step^r * lr_max^weight_lr_power / weight_sum   (0 if weight_sum == 0)
        x    = (y - (1 - beta_1) * z) / beta_1
        v   <- beta_2 * v + (1 - beta_2) * g^2
        u    = g / (sqrt(v / (1 - beta_2^step)) + eps) + weight_decay * y
        z   <- z - lr_t * u
        x   <- (1 - c) * x + c * z
        y   <- (1 - beta_1) * z + beta_1 * x
    """
    y = np.asarray(param, dtype=np.float64)
    z = np.asarray(momentum, dtype=np.float64)
    g = np.asarray(grad, dtype=np.float64)
    lr_t = learning_rate * (min(step / warmup_steps, 1.0) if warmup_steps > 0 else 1.0)
    c = (np.power(float(step), r) * np.power(lr_max, weight_lr_power) / weight_sum
         if weight_sum != 0.0 else 0.0)
    x = (y - (1.0 - beta_1) * z) / beta_1
    v = beta_2 * np.asarray(velocity, dtype=np.float64) + (1.0 - beta_2) * np.square(g)
    u = g / (np.sqrt(v / (1.0 - np.power(beta_2, step))) + epsilon) + weight_decay * y
    z = z - lr_t * u
    x = (1.0 - c) * x + c * z
    y = (1.0 - beta_1) * z + beta_1 * x
    return y, z, v


RULES = (
    Rule("schedulefree_adamw", slots=("momentum", "velocity"), convention="torch",
         scalars=("learning_rate", "beta_1", "beta_2", "epsilon", "weight_decay",
                  "warmup_steps", "r", "weight_lr_power", "step", "lr_max", "weight_sum",
                  "train_mode"),
         prepare=prepare_schedulefree_adamw, element=element_schedulefree_adamw,
         reference=schedulefree_adamw, torch_state=("z", "exp_avg_sq"),
         bf16_refusal="its slot z is a copy of the weights, and steps of lr times the update "
                      "fall below a bfloat16 spacing of the weights (2^-8 relative)",
         host_state=("lr_max", "weight_sum", "train_mode"), host_init=(-1.0, 0.0, 1.0),
         advance=advance_schedulefree_adamw),
)
