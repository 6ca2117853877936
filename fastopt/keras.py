"""fastopt's fused optimizers as Keras 3 optimizers.

``fastopt.keras.SGD``, ``Adagrad``, ``RMSprop``, ``Adam``, ``AdamW``,
``Adamax``, ``Ftrl``, ``Lion``, ``Adadelta``, ``Nadam``, ``Lamb``,
``Adafactor``, ``Muon`` and ``ScheduleFreeAdamW`` (see below) subclass the
``keras.optimizers`` class of the same name: the constructor (arguments,
defaults, checks and errors), ``get_config``, ``exclude_from_weight_decay``,
the ``learning_rate`` property, the slot variables and their names,
``save_own_variables``/``load_own_variables`` are Keras's own, so
``model.compile``, ``model.fit``, ``model.save`` /
``keras.saving.load_model``, callbacks such as ``ReduceLROnPlateau``,
learning-rate schedules and ``keras.optimizers.LossScaleOptimizer`` work as
with Keras's classes.  Only :meth:`apply` (which ``apply_gradients`` and
``model.fit`` call) is replaced: **the whole of it** -- loss-scale factor,
gradient accumulation, clipping, decoupled weight decay, the update, the
moving average of the weights and the counter, in Keras's order -- runs as one
fastopt step (:class:`fastopt.Optimizer`, Keras convention) directly on the
memory of the Keras variables, slot variables, EMA variables and gradient
accumulators: no copy, one fused pass per dtype over every variable instead of
Keras's passes per operation.

``fastopt.keras.ScheduleFreeAdamW`` subclasses Keras's class of that name
the same way but does **not** compute what Keras 3.15.1's class computes: it
runs schedule-free AdamW as its authors published it (the ``schedulefree``
package's ``AdamWScheduleFree``, :class:`fastopt.ScheduleFreeAdamW`) on the
memory of Keras's ``momentum`` (the method's ``z``) and ``velocity``
variables.  Keras's ``update_step`` keeps ``momentum_old = momentum.value``,
which under the torch backend is the variable's own tensor, updated in place
by the ``assign_sub`` that follows, so it recovers the average ``x`` from the
*new* ``z``; it also weights the average by ``1/t`` and applies Keras's
decoupled weight decay to ``y``.  On the same gradients (float64, 60 steps,
``tests/golden/differences/keras_schedulefree_adamw*.json``), Keras's
parameters are 0.31 of the displacement away from the package's
(learning rate 0.01; 0.0049 in absolute terms for a displacement of 0.084);
``fastopt.keras.ScheduleFreeAdamW`` matches the package, within 1.3e-14 of
the displacement in float64 (``tests/test_keras_schedulefree.py``).  Its
``train()``/``eval()`` move the variables between ``y`` and ``x``;
``model.fit``'s validation sees ``y`` unless :class:`ScheduleFreeEval` is
passed as a callback.  See :class:`ScheduleFreeAdamW`.

What it needs, checked at every step with an error that says so (never a
silent fallback):

* ``KERAS_BACKEND=torch`` -- the torch backend's variables are torch tensors
  whose memory fastopt updates in place.  JAX arrays are immutable (a JAX
  optimizer must return new arrays, which is not what fastopt's in-place
  kernels do) and TensorFlow variables do not expose writeable memory.
* variables in CPU memory, float32 or float64;
* no ``keras.StatelessScope`` (``stateless_apply``): the update is in place.

Numerics: the formulas are Keras 3's (ScheduleFreeAdamW: the package's; checked against Keras's own
optimizers in the tests, in float64 and float32); per-step scalars (bias
corrections, ``1 - weight_decay * lr``, the clipping factors) are computed in
float64 on the host and rounded once to the variables' dtype, where Keras
computes some of them in float32, so float32 results differ from Keras's in
the last bits.
"""
from __future__ import annotations

import types

import numpy as np

try:
    import keras
    from keras.src import backend as _kbackend
    from keras.src.backend.common.stateless_scope import in_stateless_scope
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError("fastopt.keras needs Keras 3 with the torch backend: "
                      "pip install 'fastopt[keras]' and set KERAS_BACKEND=torch") from e

from .algorithms.adadelta import Adadelta as _Adadelta
from .algorithms.adafactor import Adafactor as _Adafactor
from .algorithms.adagrad import Adagrad as _Adagrad
from .algorithms.adam import Adam as _Adam, AdamW as _AdamW
from .algorithms.adamax import Adamax as _Adamax
from .algorithms.ftrl import Ftrl as _Ftrl
from .algorithms.lamb import Lamb as _Lamb
from .algorithms.lion import Lion as _Lion
from .algorithms.muon import Muon as _Muon
from .algorithms.nadam import Nadam as _Nadam
from .algorithms.rmsprop import RMSprop as _RMSprop
from .algorithms.schedulefree import ScheduleFreeAdamW as _ScheduleFreeAdamW
from .algorithms.sgd import SGD as _SGD

__all__ = ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Adamax", "Ftrl", "Lion", "Adadelta",
           "Nadam", "Lamb", "Adafactor", "Muon", "ScheduleFreeAdamW", "ScheduleFreeEval"]

#: float dtypes fastopt's kernels update
_DTYPES = ("float32", "float64")


def _unsupported_backend(name):
    backend = keras.backend.backend()
    if backend == "torch":
        return None
    why = {"jax": "JAX arrays are immutable, while fastopt's kernels update memory in "
                  "place", "tensorflow": "TensorFlow variables do not expose their memory "
                                         "for in-place updates"}.get(backend, "")
    return (f"fastopt.keras.{name} runs only under the torch backend (KERAS_BACKEND=torch), "
            f"with variables in CPU memory; this Keras uses the {backend!r} backend"
            + (f" ({why})" if why else "") + f". Use keras.optimizers.{name} there.")


class _Engine:
    """The fastopt optimizer over the Keras variables' memory, and what it
    was built from (rebuilt when any of it changes)."""

    __slots__ = ("key", "core", "index", "counter", "tensors", "params", "variables")

    def __init__(self, key, core, index, counter, tensors, params, variables):
        self.key, self.core, self.index, self.counter = key, core, index, counter
        self.tensors, self.params, self.variables = tensors, params, variables


def _torch():
    import torch  # the torch backend has imported it already
    return torch


def _tensor(variable):
    """The torch tensor behind a Keras variable (torch backend)."""
    value = getattr(variable, "_value", None)
    return variable.value if value is None else value


def _numpy(tensor):
    """A NumPy array sharing ``tensor``'s memory."""
    return tensor.detach().numpy()


class _Fused:
    """Mixin that runs a Keras optimizer's ``apply`` as one fastopt step."""

    #: the fastopt optimizer class with the same formulas (Keras convention)
    _CORE = None

    def __new__(cls, *args, **kwargs):
        message = _unsupported_backend(cls.__name__)
        if message is not None:
            raise RuntimeError(message)
        return super().__new__(cls, *args, **kwargs)

    # -- the slot variables, as Keras makes them ---------------------------------
    def add_optimizer_variables(self, trainable_variables, name, initializer="zeros"):
        made = super().add_optimizer_variables(trainable_variables, name, initializer)
        names = [name] if isinstance(name, str) else list(name)
        lists = [made] if isinstance(name, str) else list(made)
        slots = self.__dict__.setdefault("_fastopt_slots", {})
        for n, variables in zip(names, lists):
            slots[n] = variables
        return made

    # -- apply ----------------------------------------------------------------------
    def apply(self, grads, trainable_variables=None):
        """Apply the gradients (Keras's ``apply``) as one fused fastopt step."""
        if len(grads) == 0:
            return
        if in_stateless_scope():
            raise RuntimeError(
                f"fastopt.keras.{type(self).__name__} updates the variables' memory in place "
                "and cannot run in a StatelessScope (stateless_apply); use "
                f"keras.optimizers.{type(self).__name__} there")
        if trainable_variables is None:
            if not self.built:
                raise ValueError(
                    "When passing `grads` without `variables`, the optimizer must already be "
                    "built on a list of variables. Call `optimizer.build(trainable_variables)` "
                    "first.")
            if len(grads) != len(self._trainable_variables_indices):
                raise ValueError(
                    f"Received a list of {len(grads)} gradients, but the optimizer is tracking "
                    f"{len(self._trainable_variables)} trainable variables.")
            trainable_variables = self._trainable_variables
        else:
            trainable_variables = list(trainable_variables)
            if not self.built:
                with _kbackend.name_scope(self.name, caller=self):
                    self.build(trainable_variables)
                self.built = True
            self._check_variables_are_known(trainable_variables)
        grads, trainable_variables = self._filter_empty_gradients(grads, trainable_variables)
        engine = self._fastopt_engine()
        # every gradient is checked before anything changes
        full = [None] * len(engine.params)
        overwrite = ([], [])
        for g, v in zip(grads, trainable_variables):
            if self._overwrite_variable_with_gradient(v):
                overwrite[0].append(g)
                overwrite[1].append(v)
                continue
            k = engine.index[self._get_variable_index(v)]
            full[k] = self._fastopt_gradient(g, engine.params[k], v)
        applied = [k for k, g in enumerate(full) if g is not None]
        if applied and len(applied) < len(full) and self.gradient_accumulation_steps:
            missing = [engine.variables[k].path for k, g in enumerate(full) if g is None]
            raise ValueError(
                f"fastopt.keras.{type(self).__name__}: with gradient_accumulation_steps every "
                f"variable needs a gradient at every call; none for {missing}")
        if overwrite[0]:
            self._overwrite_variables_directly_with_gradients(*overwrite)
        counter = engine.counter
        if applied:
            core = engine.core
            core._iterations = int(counter)
            # the rule's host-side scalars (Nadam's running product) live in
            # Keras's optimizer variables: read before the step, written after
            host = self._fastopt_host(core)
            for pg, arrays in host:
                pg.host = tuple(float(a) for a in arrays)
            core.step(full)
            for pg, arrays in host:
                for a, value in zip(arrays, pg.host):
                    a[()] = value
            for variable in trainable_variables:
                if variable.constraint is not None:
                    variable.assign(variable.constraint(variable))
            torch = _torch()
            torch._C._increment_version([engine.tensors[k] for k in applied])
        counter[()] += 1

    def _fastopt_host(self, core):
        """``[(parameter group, [array])]``: the memory of the Keras optimizer
        variable ``_<name>`` of each host-state scalar of the group's rule
        (:attr:`fastopt.rule.Rule.host_state`; Keras's Nadam: ``_u_product``)."""
        out = []
        for pg in core._param_groups:
            arrays = []
            for name in pg.rule.host_state:
                variable = getattr(self, f"_{name}", None)
                if not isinstance(variable, _kbackend.Variable):  # pragma: no cover
                    raise RuntimeError(f"fastopt.keras.{type(self).__name__}: Keras keeps no "
                                       f"optimizer variable _{name} for the rule's "
                                       "host-side state")
                arrays.append(_numpy(_tensor(variable)))
            if arrays:
                out.append((pg, arrays))
        return out

    def _fastopt_gradient(self, g, param, variable):
        """A gradient as a NumPy array of the variable's dtype (its own memory
        when it is a CPU torch tensor of that dtype)."""
        torch = _torch()
        if isinstance(g, torch.Tensor):
            if g.device.type != "cpu":
                raise RuntimeError(f"fastopt.keras.{type(self).__name__}: the gradient of "
                                   f"{variable.path} is on {g.device}; fastopt.keras runs on "
                                   "CPU tensors")
            if g.is_sparse or g.layout is not torch.strided:
                g = g.to_dense()
            a = _numpy(g)
        else:
            a = np.asarray(keras.ops.convert_to_numpy(g))
        if a.dtype != param.dtype:
            a = a.astype(param.dtype)
        if a.shape != param.shape:
            raise ValueError(f"fastopt.keras.{type(self).__name__}: the gradient of "
                             f"{variable.path} has shape {a.shape}, the variable "
                             f"{param.shape}")
        return a

    # -- the fastopt optimizer over the Keras variables ------------------------------
    def _fastopt_config(self):
        """fastopt's arguments from this optimizer's current attributes."""
        def clip(value):
            return value if value and value > 0 else None
        core = self._CORE
        hyper = {k: getattr(self, k) for k in core._DEFAULTS
                 if k not in ("learning_rate", "weight_decay")}
        return dict(hyper, weight_decay=self.weight_decay, clipnorm=clip(self.clipnorm),
                    clipvalue=clip(self.clipvalue),
                    global_clipnorm=clip(self.global_clipnorm), use_ema=bool(self.use_ema),
                    ema_momentum=self.ema_momentum,
                    ema_overwrite_frequency=self.ema_overwrite_frequency or None,
                    loss_scale_factor=self.loss_scale_factor,
                    gradient_accumulation_steps=self.gradient_accumulation_steps or None)

    def _fastopt_engine(self):
        """The engine for the current attributes and memory: the cached one,
        or a new one when anything it was built from changed."""
        config = self._fastopt_config()
        index_of = self._get_variable_index
        variables = [v for v in self._trainable_variables
                     if not self._overwrite_variable_with_gradient(v)]
        use_decay = tuple(self._use_weight_decay(v) for v in variables)
        owned = [_tensor(v) for v in variables]
        # the slot variables by Keras's slot names ("average": the EMA), and
        # the accumulators: every tensor whose memory the step touches
        state_vars = {name: [lst[index_of(v)] for v in variables]
                      for name, lst in self.__dict__.get("_fastopt_slots", {}).items()}
        if config["gradient_accumulation_steps"]:
            state_vars["accumulated"] = [self._accumulated_gradients[index_of(v)]
                                         for v in variables]
        touched = owned + [_tensor(self._iterations)] + [
            _tensor(s) for lst in state_vars.values() for s in lst if s is not None]
        key = (tuple(config.values()), use_decay, tuple(map(id, touched)),
               tuple(t.data_ptr() for t in touched))
        engine = self.__dict__.get("_fastopt_engine_cache")
        if engine is not None and engine.key == key:
            return engine
        return self._fastopt_build_engine(key, config, variables, owned, state_vars,
                                          use_decay)

    def _fastopt_build_engine(self, key, config, variables, owned, state_vars, use_decay):
        name = type(self).__name__
        for v, t in zip(variables, owned):
            if t.device.type != "cpu":
                raise RuntimeError(
                    f"fastopt.keras.{name}: variable {v.path} is on {t.device}; fastopt.keras "
                    f"runs on variables in CPU memory (use keras.optimizers.{name} for GPU "
                    "training)")
            if str(v.dtype) not in _DTYPES:
                raise TypeError(f"fastopt.keras.{name}: variable {v.path} has dtype "
                                f"{v.dtype}; fastopt updates float32 and float64 variables")
        params = [_numpy(t) for t in owned]
        state = {}
        for slot, lst in state_vars.items():
            state["ema" if slot == "average" else slot] = self._fastopt_slot_arrays(
                slot, lst, params)
        excluded = [i for i, d in enumerate(use_decay) if not d]
        core = self._CORE._over_state(params, state, learning_rate=self._fastopt_lr,
                                    exclude_from_weight_decay=excluded or None, **config)
        counter = _numpy(_tensor(self._iterations))
        index = {}
        for k, v in enumerate(variables):
            index[self._get_variable_index(v)] = k
        engine = _Engine(key, core, index, counter, owned, params, variables)
        self.__dict__["_fastopt_engine_cache"] = engine
        return engine

    def _fastopt_slot_arrays(self, slot, variables, params):
        """The memory of the slot variables ``variables`` of ``slot`` (one per
        parameter in ``params``), as the fastopt optimizer takes them."""
        return [_numpy(_tensor(s)) for s in variables]

    def _fastopt_lr(self, _iteration):
        """The learning rate Keras would use now (its schedule sees Keras's
        own call counter)."""
        lr = self._get_current_learning_rate()
        return float(lr.value if isinstance(lr, _kbackend.Variable) else lr)

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        raise RuntimeError(
            f"fastopt.keras.{type(self).__name__} updates the variables' memory in place; "
            f"stateless_apply is not supported (use keras.optimizers.{type(self).__name__})")


def _fused(keras_cls, core_cls, doc, mixin=_Fused):
    # types.new_class, as a class statement does (and unlike type()), resolves
    # the bases' __mro_entries__: the API reference builds with keras mocked
    body = {"_CORE": core_cls, "__module__": __name__, "__qualname__": keras_cls.__name__,
            "__doc__": doc}
    cls = types.new_class(keras_cls.__name__, (mixin, keras_cls),
                          exec_body=lambda ns: ns.update(body))
    # registered as "fastopt>Name"; the decorator returns the class itself, which
    # is what is kept (so the class stays the class where keras is mocked)
    keras.saving.register_keras_serializable(package="fastopt")(cls)
    return cls


def _doc(name):
    return (f"Keras's ``keras.optimizers.{name}`` with its ``apply`` run as one fused "
            f"fastopt step (:class:`fastopt.{name}`, Keras convention).\n\n"
            f"Same constructor, defaults, config and slot variables as "
            f"``keras.optimizers.{name}``; see :mod:`fastopt.keras` for what it needs "
            "(the torch backend, CPU variables).")


SGD = _fused(keras.optimizers.SGD, _SGD, _doc("SGD"))
Adagrad = _fused(keras.optimizers.Adagrad, _Adagrad, _doc("Adagrad"))
RMSprop = _fused(keras.optimizers.RMSprop, _RMSprop, _doc("RMSprop"))
Adam = _fused(keras.optimizers.Adam, _Adam, _doc("Adam"))
AdamW = _fused(keras.optimizers.AdamW, _AdamW, _doc("AdamW"))
Adamax = _fused(keras.optimizers.Adamax, _Adamax, _doc("Adamax"))
Ftrl = _fused(keras.optimizers.Ftrl, _Ftrl, _doc("Ftrl"))
Lion = _fused(keras.optimizers.Lion, _Lion, _doc("Lion"))
Adadelta = _fused(keras.optimizers.Adadelta, _Adadelta, _doc("Adadelta"))
Nadam = _fused(keras.optimizers.Nadam, _Nadam, _doc("Nadam"))
Lamb = _fused(keras.optimizers.Lamb, _Lamb, _doc("Lamb"))


class _FusedFactored(_Fused):
    """Keras's Adafactor keeps ``r``, ``c`` (built with ``add_variable``) and
    ``velocity``; fastopt's rule keeps the factored ``r``, ``c`` of a matrix
    and ``velocity`` of a vector only (``fastopt.algorithms.adafactor``)."""

    def build(self, var_list):
        super().build(var_list)
        slots = self.__dict__.setdefault("_fastopt_slots", {})
        slots.update(r=self._r, c=self._c, velocity=self._v)

    def _fastopt_slot_arrays(self, slot, variables, params):
        from .algorithms.adafactor import slot_shapes_keras
        out = []
        for s, p in zip(variables, params):
            shape = slot_shapes_keras(p.shape)[slot]
            # Keras's dummy r, c of a vector and its v of a matrix (recomputed
            # from r and c before Keras reads it) are not fastopt's state
            out.append(_numpy(_tensor(s)) if tuple(s.shape) == shape
                       else np.zeros(shape, p.dtype))
        return out


Adafactor = _fused(keras.optimizers.Adafactor, _Adafactor,
                   _doc("Adafactor") + "\n\nThe ``velocity`` variable of a matrix "
                   "(Keras's by-product ``r/mean(r) x c``) is not kept up to date: fastopt "
                   "keeps the factored ``r`` and ``c`` only, from which Keras recomputes it "
                   "before reading it.", _FusedFactored)


class _FusedMuon(_Fused):
    """Keras's Muon keeps ``momentums`` (every variable) and
    ``adam_velocities`` (None but for the variables AdamW takes), built with
    ``add_variable_from_reference``; fastopt's Muon routes the variables the
    same way, by shape and by their paths."""

    def build(self, var_list):
        super().build(var_list)
        slots = self.__dict__.setdefault("_fastopt_slots", {})
        slots.update(momentum=self.momentums, velocity=self.adam_velocities)

    def _fastopt_slot_arrays(self, slot, variables, params):
        return [None if s is None else _numpy(_tensor(s)) for s in variables]

    def _fastopt_config(self):
        def clip(value):
            return value if value and value > 0 else None
        variables = [v for v in self._trainable_variables
                     if not self._overwrite_variable_with_gradient(v)]
        return dict(adam_beta_1=self.adam_beta_1, adam_beta_2=self.adam_beta_2,
                    adam_weight_decay=self.adam_weight_decay or 0.0, epsilon=self.epsilon,
                    exclude_layers=list(self.exclude_layers),
                    exclude_embeddings=bool(self.exclude_embeddings), muon_a=self.muon_a,
                    muon_b=self.muon_b, muon_c=self.muon_c, adam_lr_ratio=self.adam_lr_ratio,
                    momentum=self.momentum, ns_steps=self.ns_steps, nesterov=self.nesterov,
                    rms_rate=self.rms_rate, weight_decay=self.weight_decay or 0.0,
                    clipnorm=clip(self.clipnorm), clipvalue=clip(self.clipvalue),
                    global_clipnorm=clip(self.global_clipnorm), use_ema=bool(self.use_ema),
                    ema_momentum=self.ema_momentum,
                    ema_overwrite_frequency=self.ema_overwrite_frequency or None,
                    loss_scale_factor=self.loss_scale_factor,
                    gradient_accumulation_steps=self.gradient_accumulation_steps or None,
                    names=[v.path for v in variables])


Muon = _fused(keras.optimizers.Muon, _Muon,
              _doc("Muon") + "\n\nNewton–Schulz runs in the variables' dtype, its "
              "Frobenius norm included (Keras takes the norm in float32 even for float64 "
              "variables: see :class:`fastopt.Muon`).", _FusedMuon)


class _ScheduleFreeOverKeras(_ScheduleFreeAdamW):
    """:class:`fastopt.ScheduleFreeAdamW` over Keras's variables: ``z`` (Keras's
    ``momentum``) is not copied from the parameters when the engine is (re)built
    mid-training, only at the first update, as the package copies it; and
    ``global_clipnorm`` is Keras's formula (the one place a step reads the
    convention), as a Keras optimizer's users expect."""

    def __init__(self, *args, **kwargs):
        self._fastopt_building = True
        try:
            super().__init__(*args, **kwargs)
        finally:
            self._fastopt_building = False
        self.convention = "keras"

    def _copy_z(self):
        if not self._fastopt_building:
            super()._copy_z()


_ScheduleFreeOverKeras.__name__ = _ScheduleFreeOverKeras.__qualname__ = "ScheduleFreeAdamW"


class _FusedScheduleFree(_Fused):
    """Keras's ScheduleFreeAdamW keeps ``momentum`` (the method's ``z``, set to
    the weights by ``build``) and ``velocity``; the rule's host-side state
    (``lr_max``, ``weight_sum``, ``train_mode``) lives in three more float64
    optimizer variables made here with ``add_variable``, so that
    ``save_own_variables``/``load_own_variables`` and ``model.save`` carry
    it."""

    #: the rule's host state: (name, initial value), as the rule's host_init
    _HOST = (("lr_max", -1.0), ("weight_sum", 0.0), ("train_mode", 1.0))

    def __init__(self, *args, r=0.0, weight_lr_power=2.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.r = r
        self.weight_lr_power = weight_lr_power

    def get_config(self):
        config = super().get_config()
        config.update(r=self.r, weight_lr_power=self.weight_lr_power)
        return config

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        for name, value in self._HOST:
            variable = self.add_variable(
                (), initializer=keras.initializers.Constant(value), dtype="float64",
                name=name)
            setattr(self, f"_{name}", variable)

    def _fastopt_config(self):
        config = super()._fastopt_config()
        config["weight_decay"] = self.weight_decay or 0.0
        return config

    def _fastopt_build_engine(self, key, config, variables, owned, state_vars, use_decay):
        if not all(use_decay):
            if config["weight_decay"]:
                excluded = [v.path for v, d in zip(variables, use_decay) if not d]
                raise ValueError(
                    "fastopt.keras.ScheduleFreeAdamW: exclude_from_weight_decay with a "
                    f"weight_decay ({excluded}) is not offered: the published method's weight "
                    "decay is part of the update (u = g/d + weight_decay * y) of every "
                    "variable the optimizer runs; nothing has changed")
            use_decay = (True,) * len(use_decay)
        return super()._fastopt_build_engine(key, config, variables, owned, state_vars,
                                             use_decay)

    # -- the modes ------------------------------------------------------------------
    @property
    def train_mode(self):
        """True when the variables hold the training point ``y`` (and before
        the optimizer is built), False when they hold the average ``x``
        (after :meth:`eval`)."""
        return not self.built or bool(float(_tensor(self._train_mode)))

    def train(self):
        """Move the variables to the training point ``y`` (the package's
        ``train()``; nothing to do in train mode)."""
        self._fastopt_switch(True)

    def eval(self):
        """Move the variables to the average ``x`` (the package's ``eval()``;
        nothing to do in eval mode): evaluate, predict and save in this mode,
        then :meth:`train` before training on."""
        self._fastopt_switch(False)

    def _fastopt_switch(self, to_train):
        if not self.built or self.train_mode == to_train:
            return  # before the first update x = y = z: only the mode could change
        engine = self._fastopt_engine()
        core = engine.core
        core._iterations = int(engine.counter)
        host = self._fastopt_host(core)
        for pg, arrays in host:
            pg.host = tuple(float(a) for a in arrays)
        core.train() if to_train else core.eval()
        for pg, arrays in host:
            for a, value in zip(arrays, pg.host):
                a[()] = value
        _torch()._C._increment_version(list(engine.tensors))

    def apply(self, grads, trainable_variables=None):
        """Apply the gradients as one fused fastopt step (the published
        method); in train mode only."""
        if not self.train_mode and len(grads):
            raise RuntimeError(
                "fastopt.keras.ScheduleFreeAdamW: apply() in eval mode: call train() first "
                "(the variables hold the average x, not the training point y); nothing has "
                "changed")
        return super().apply(grads, trainable_variables)


ScheduleFreeAdamW = _fused(keras.optimizers.ScheduleFreeAdamW, _ScheduleFreeOverKeras, """\
Keras's ``keras.optimizers.ScheduleFreeAdamW`` with its ``apply`` run as one
fused fastopt step of schedule-free AdamW **as its authors published it**
(the ``schedulefree`` package's ``AdamWScheduleFree``, version 1.4.1;
:class:`fastopt.ScheduleFreeAdamW`), not Keras 3.15.1's formulas.

Keras's constructor, defaults and slot variables, plus two keyword
arguments of the package, kept in ``get_config``: ``r`` (default 0.0) and
``weight_lr_power`` (default 2.0), the weights ``t^r * lr_max^weight_lr_power``
of the average.  ``learning_rate`` (with Keras's schedules), ``beta_1``,
``beta_2``, ``epsilon`` and ``warmup_steps`` are the package's ``lr``,
``betas``, ``eps`` and ``warmup_steps``; ``weight_decay`` (Keras's None is 0)
is the package's: ``weight_decay * y`` enters the Adam-normalised update,
where Keras's class decays ``y`` by ``1 - lr * weight_decay`` before its
update.  ``exclude_from_weight_decay`` is accepted without a weight decay
only (the package has no such option).  Clipping, ``use_ema``, the loss-scale
factor and gradient accumulation are Keras's, as in the other classes.

The variables hold the training point ``y``, Keras's ``momentum`` the
method's ``z``, ``velocity`` Adam's second moment; three float64 optimizer
variables (``lr_max``, ``weight_sum``, ``train_mode``) hold the rule's
host-side state and are saved with the optimizer.

**Modes.**  :meth:`eval` moves the variables to the average ``x``, where
the method evaluates, :meth:`train` back to ``y``; ``apply`` in eval mode
raises.  ``model.fit`` knows nothing of the modes: its validation, and
``model.evaluate``, ``predict`` and ``model.save`` after it, see ``y`` unless
``eval()`` is called first.  Pass :class:`ScheduleFreeEval` to
``model.fit(callbacks=...)`` to validate at ``x``.

**Difference from Keras's class.**  Keras 3.15.1's ``update_step`` keeps
``momentum_old = momentum.value``, under the torch backend the variable's
own tensor, which the ``assign_sub`` that follows updates in place: it
recovers ``x_old = (y - (1 - beta_1) * z) / beta_1`` from the *new* ``z``,
an error of ``(1 - beta_1) / beta_1 * lr_t * g / d`` per step that the
average keeps; it weights the average by ``1/t`` (no ``r``, no
``weight_lr_power``, the warmup ignored) and has no ``train``/``eval``.
Measured on the same gradients (float64, 60 steps; tensors of 3x4, 5 and 2;
``tests/golden/differences/keras_schedulefree_adamw*.json``): Keras's
parameters are 0.31 of the displacement away from the package's at
``learning_rate=0.01`` (max 0.0049 for a displacement of 0.084).  This class
matches the package within 1.3e-14 of the displacement (float64, 40 steps,
with warmup, weight decay, ``r`` and ``weight_lr_power``, Keras's
``global_clipnorm``, gradient accumulation; ``tests/test_keras_schedulefree.py``).
""", _FusedScheduleFree)


class ScheduleFreeEval(keras.callbacks.Callback):
    """A ``model.fit`` callback for :class:`ScheduleFreeAdamW`: the validation
    (``on_test_begin``/``on_test_end``) runs at the average ``x``, training
    at ``y``.  It also moves an ``evaluate`` it is passed to ``x`` and back.
    The model's optimizer must be a :class:`ScheduleFreeAdamW` (or a
    ``keras.optimizers.LossScaleOptimizer`` around one); anything else is a
    ``TypeError``."""

    def _optimizer(self):
        opt = self.model.optimizer
        opt = getattr(opt, "inner_optimizer", opt)
        if not isinstance(opt, ScheduleFreeAdamW):
            raise TypeError("fastopt.keras.ScheduleFreeEval needs a model compiled with "
                            "fastopt.keras.ScheduleFreeAdamW; its optimizer is "
                            f"{type(opt).__module__}.{type(opt).__name__}")
        return opt

    def on_train_begin(self, logs=None):
        self._optimizer()

    def on_test_begin(self, logs=None):
        opt = self._optimizer()
        self._switched = opt.train_mode
        if self._switched:
            opt.eval()

    def on_test_end(self, logs=None):
        if getattr(self, "_switched", False):
            self._optimizer().train()
            self._switched = False
