"""The optimizers under test: one row per optimizer variant.

In the spirit of PyTorch's ``optim_db`` (``OptimizerInfo`` in
``torch/testing/_internal/common_optimizers.py``) and Optax's
``_OPTIMIZERS_UNDER_TEST``: every generic test -- kernels against the
reference, trajectories against the Keras and PyTorch specs, conventions,
golden recordings, errors, property tests, bfloat16 state, two-byte
parameters, the CUDA simulator, the ``cimport`` test and the ``fastopt.torch``
adapter -- iterates :data:`DB`.  Adding an optimizer is one row here (plus its
formulas in the independent specs ``tests/spec.py`` and ``tests/torch_spec.py``).

What the registry (:data:`fastopt.rule.RULES`) already knows -- slots,
scalar names, bfloat16 refusals, torch ``state_dict`` keys -- is read from it,
never copied here; a row says only what a test must choose: the variant, its
kernel rule under each convention (checked against what the class picks), the
values the kernel tests feed, learning rates, the torch twins, the golden
recordings, error inputs and the hypothesis search space.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import strategies as st

import fastopt
from fastopt.rule import RULES

from cases import gradient

# hypothesis ranges (see tests/test_hypothesis.py for why they are what they are)
_EPSILON = st.floats(1e-8, 1e-3)
_BETA_1 = st.floats(0.0, 0.99)
_BETA_2 = st.floats(0.5, 0.9999)
_MOMENTUM = st.sampled_from([0.0, 0.9]) | st.floats(0.0, 1.0)
_RMS_MOMENTUM = st.sampled_from([0.0]) | st.floats(0.0, 0.99)
# Ftrl's hyperparameters; its learning rate and first accumulator stay away
# from 0 (it divides by both)
_FTRL_SPACE = {"learning_rate": st.floats(1e-3, 0.3),
               "initial_accumulator_value": st.floats(0.01, 1.0),
               "l1_regularization_strength": st.floats(0.0, 0.1),
               "l2_regularization_strength": st.floats(0.0, 0.1),
               "l2_shrinkage_regularization_strength": st.floats(0.0, 0.1),
               "beta": st.floats(0.0, 1.0)}


@dataclass(frozen=True)
class Tensor:
    """A hyperparameter that torch is given as a 0-d tensor (torch accepts
    tensors for ``lr`` and ``betas``); tests/test_torch.py makes it one."""

    value: float

    def __float__(self):
        return float(self.value)

    def __repr__(self):
        return f"tensor({self.value})"


@dataclass(frozen=True)
class OptimizerInfo:
    """One optimizer variant under test.

    Parameters
    ----------
    id : str
        The test id (``"adam_amsgrad"``).
    cls : type
        The fastopt optimizer class.
    kwargs : dict
        Constructor keywords that make the variant (no learning rate).
    learning_rate : float
        The learning rate of trajectory tests (larger than the defaults, so
        that a few steps move far).
    rules : dict
        Convention -> the kernel rule the class picks for this variant (its
        keys are the conventions the variant supports).
    scalars : dict
        Rule -> the kernel-level scalar values the kernel tests feed it
        (without the step count, which the tests append).  Each rule of the
        registry gets its values from exactly one row; a row that reuses
        another row's rules (AdamW) leaves this empty.
    quadratic_lr, rosenbrock_lr : float
        Learning rates for the convergence problems (tests/test_convergence.py).
    sign_only : bool
        The update reads only the gradient's sign, torch's ``sign`` (0 for
        NaN): a NaN gradient leaves its element unchanged, and +-inf moves it
        as any gradient of that sign does (Rprop).  Otherwise non-finite
        gradients propagate into the parameters (tests/test_errors.py).
    bf16_nearest_stalls : bool
        A slot decays by ``beta_2 = 0.999`` per step, less than half a
        bfloat16 spacing, so with ``state_rounding="nearest"`` it cannot
        decay and acts as a running maximum (tests/test_convergence.py
        allows those variants a larger factor on Rosenbrock).
    bounded_update : bool
        The parameter's step is bounded whatever the gradient (Lion's
        ``lr * sign(c)``): an infinite gradient lands in the slots, not in
        the parameter (tests/test_errors.py).
    tensor_wise : bool
        The update of an element depends on its whole tensor (Lamb's trust
        ratio ``||w|| / ||u||``, a ``two_phase`` rule): a non-finite
        gradient element makes the ratio fall back to 1 (Keras's
        ``where``), so its tensor's other elements move differently than
        with a clean gradient, while the other tensors do not notice
        (tests/test_errors.py).
    torch_samples : tuple of (id, kwargs)
        Configurations (fastopt keywords, learning rate included) run under
        ``convention="torch"`` against the PyTorch-order spec
        (tests/torch_spec.py), like ``optim_inputs_func`` in PyTorch's db.
    torch_class : str or None
        The ``torch.optim`` class, which is also the ``fastopt.torch`` class.
    torch_configs : tuple of dict
        ``torch.optim`` keywords for the adapter tests (tests/test_torch.py);
        the first is the plain one, translated by :func:`fastopt_kwargs` for
        the bit-equality tests.
    torch_lr : float
        The ``lr`` of the adapter tests that set their own (bfloat16/float16
        parameters): one that moves the parameters well beyond those dtypes'
        spacing in a few steps.  Adadelta's ``lr`` multiplies an RMS ratio
        that starts near ``sqrt(eps)``, so it needs a few units where the
        others take 0.01.
    golden : tuple of str
        Recordings in tests/golden of this variant (checked to exist and to
        build this class and rule).
    error_inputs : tuple of (kwargs, exception, message)
        Bad hyperparameters of this class and the error they must raise.
    search_space : dict
        Keyword -> hypothesis strategy: the variant with random valid
        hyperparameters (tests/test_hypothesis.py); a ``learning_rate``
        entry replaces the test's own range (Ftrl divides by it).
    """

    id: str
    cls: type
    kwargs: dict
    learning_rate: float
    rules: dict
    scalars: dict
    quadratic_lr: float
    rosenbrock_lr: float
    bf16_nearest_stalls: bool = False
    bounded_update: bool = False
    sign_only: bool = False
    tensor_wise: bool = False
    torch_samples: tuple = ()
    torch_class: str | None = None
    torch_configs: tuple = ()
    torch_lr: float = 0.01
    golden: tuple = ()
    error_inputs: tuple = ()
    search_space: dict = field(default_factory=dict)

    def __str__(self):
        return self.id

    @property
    def conventions(self):
        """The conventions the variant offers (its class's, default first)."""
        return tuple(self.rules)

    @property
    def bf16_state(self):
        """Whether ``state_dtype="bfloat16"`` is accepted: every rule of the
        variant either can keep bfloat16 state or has no state at all."""
        return all(not RULES[r].slots or not RULES[r].bf16_refusal for r in self.rules.values())

    @property
    def int8_state(self):
        """Whether ``state_dtype="int8"`` is accepted: every rule of the
        variant either can keep 8-bit state or has no state at all."""
        return all(not RULES[r].slots or not RULES[r].int8_refusal for r in self.rules.values())

    def make(self, params, **kwargs):
        """The optimizer over ``params`` at the row's learning rate."""
        return self.cls(params, **{"learning_rate": self.learning_rate, **self.kwargs, **kwargs})


def _adam_space(amsgrad):
    return {"beta_1": _BETA_1, "beta_2": _BETA_2, "epsilon": _EPSILON,
            "amsgrad": st.just(amsgrad)}


def _rmsprop_space(centered, momentum):
    return {"rho": st.floats(0.0, 0.999), "momentum": _RMS_MOMENTUM if momentum else st.just(0.0),
            "centered": st.just(centered), "epsilon": _EPSILON}


DB = [
    OptimizerInfo(
        "sgd", fastopt.SGD, {}, 0.05,
        rules={"keras": "sgd", "torch": "sgd"},
        scalars={"sgd": (0.05,)},
        quadratic_lr=0.05, rosenbrock_lr=1e-3,
        torch_samples=(("sgd", {"learning_rate": 0.05}),),
        torch_class="SGD",
        torch_configs=(dict(lr=0.1), dict(lr=0.1, weight_decay=0.1, maximize=True)),
        golden=("keras_sgd", "torch_sgd"),
        error_inputs=(
            ({"dampening": 0.1}, ValueError, "dampening is a PyTorch option.*convention='torch'"),
            ({"nesterov": True, "convention": "torch"}, ValueError,
             "Nesterov momentum needs momentum > 0 and zero dampening"),
            ({"nesterov": True, "momentum": 0.9, "dampening": 0.1, "convention": "torch"},
             ValueError, "Nesterov momentum needs"),
            ({"dampening": 1.5, "convention": "torch"}, ValueError, "dampening must be <= 1"),
            ({"momentum": 1.5}, ValueError, "momentum must be <= 1"),
            ({"momentum": -0.1}, ValueError, "momentum must be >= 0"),
            ({"learning_rate": None, "momentum": "0.9"}, TypeError,
             "momentum must be a real number"),
            ({"momentum": 0.9, "nesterov": 1}, TypeError, "nesterov must be True or False, got 1"),
        ),
        search_space={"momentum": st.just(0.0), "nesterov": st.booleans()}),
    OptimizerInfo(
        "sgd_momentum", fastopt.SGD, {"momentum": 0.3}, 0.05,
        rules={"keras": "sgd_momentum", "torch": "sgd_momentum_torch"},
        scalars={"sgd_momentum": (0.05, 0.3), "sgd_momentum_torch": (0.05, 0.3, 0.1)},
        quadratic_lr=0.05, rosenbrock_lr=1e-3,
        torch_samples=(
            ("sgd_momentum", {"learning_rate": 0.02, "momentum": 0.9}),
            ("sgd_dampening", {"learning_rate": 0.02, "momentum": 0.9, "dampening": 0.3}),
            ("sgd_l2_maximize", {"learning_rate": 0.02, "momentum": 0.5, "weight_decay": 0.1,
                                 "maximize": True}),
            ("sgd_clipvalue", {"learning_rate": 0.02, "momentum": 0.9, "clipvalue": 0.1}),
        ),
        torch_class="SGD",
        torch_configs=(dict(lr=0.1, momentum=0.9),
                       dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.05)),
        golden=("keras_sgd_momentum", "torch_sgd_momentum", "torch_sgd_dampening",
                "keras_sgd_momentum_weight_decay", "torch_sgd_maximize_weight_decay"),
        search_space={"momentum": _MOMENTUM, "nesterov": st.just(False)}),
    OptimizerInfo(
        "sgd_nesterov", fastopt.SGD, {"momentum": 0.3, "nesterov": True}, 0.05,
        rules={"keras": "sgd_nesterov", "torch": "sgd_nesterov_torch"},
        scalars={"sgd_nesterov": (0.05, 0.3), "sgd_nesterov_torch": (0.05, 0.3, 0.0)},
        quadratic_lr=0.05, rosenbrock_lr=1e-3,
        torch_samples=(("sgd_nesterov", {"learning_rate": 0.02, "momentum": 0.9,
                                         "nesterov": True}),),
        torch_class="SGD",
        torch_configs=(dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True),),
        golden=("keras_sgd_nesterov", "torch_sgd_nesterov"),
        search_space={"momentum": _MOMENTUM, "nesterov": st.just(True)}),
    OptimizerInfo(
        "adagrad", fastopt.Adagrad, {}, 0.05,
        rules={"keras": "adagrad", "torch": "adagrad_torch"},
        scalars={"adagrad": (0.05, 1e-7), "adagrad_torch": (0.05, 1e-10, 0.01)},
        quadratic_lr=0.5, rosenbrock_lr=0.3,
        torch_samples=(
            ("adagrad", {"learning_rate": 0.05}),
            ("adagrad_decay_l2", {"learning_rate": 0.05, "lr_decay": 0.05, "weight_decay": 0.01,
                                  "initial_accumulator_value": 0.1}),
        ),
        torch_class="Adagrad",
        torch_configs=(dict(lr=0.1),
                       dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1,
                            weight_decay=0.1, maximize=True)),
        golden=("keras_adagrad", "torch_adagrad", "torch_adagrad_lr_decay_weight_decay_init"),
        error_inputs=(
            ({"lr_decay": 0.1}, ValueError, "lr_decay is a PyTorch option"),
            ({"epsilon": -1e-7}, ValueError, "epsilon must be >= 0"),
            ({"initial_accumulator_value": -0.1}, ValueError,
             "initial_accumulator_value must be >= 0"),
        ),
        search_space={"initial_accumulator_value": st.floats(0.0, 1.0), "epsilon": _EPSILON}),
    OptimizerInfo(
        "rmsprop", fastopt.RMSprop, {}, 0.01,
        rules={"keras": "rmsprop", "torch": "rmsprop_torch"},
        scalars={"rmsprop": (0.01, 0.9, 1e-7), "rmsprop_torch": (0.01, 0.99, 1e-8)},
        quadratic_lr=0.02, rosenbrock_lr=3e-3,
        torch_samples=(("rmsprop", {"learning_rate": 0.01}),
                       ("rmsprop_l2", {"learning_rate": 0.01, "weight_decay": 0.05})),
        torch_class="RMSprop",
        torch_configs=(dict(lr=0.01),),
        golden=("keras_rmsprop", "torch_rmsprop", "keras_rmsprop_weight_decay",
                "torch_rmsprop_weight_decay_maximize"),
        error_inputs=(
            ({"alpha": 0.9}, ValueError, r"'alpha' \(did you mean rho\?\)"),
            ({"momentum": 1.0}, ValueError, "momentum must be < 1"),
            ({"rho": 1.0}, ValueError, "rho must be < 1"),
            ({"rho": float("nan")}, ValueError, "rho must be finite"),
            ({"centered": 0}, TypeError, "centered must be True or False"),
        ),
        search_space=_rmsprop_space(False, False)),
    OptimizerInfo(
        "rmsprop_momentum", fastopt.RMSprop, {"momentum": 0.5}, 0.01,
        rules={"keras": "rmsprop_momentum", "torch": "rmsprop_momentum_torch"},
        scalars={"rmsprop_momentum": (0.01, 0.9, 0.5, 1e-7),
                 "rmsprop_momentum_torch": (0.01, 0.99, 0.5, 1e-8)},
        quadratic_lr=0.02, rosenbrock_lr=3e-3,
        torch_samples=(("rmsprop_momentum", {"learning_rate": 0.01, "momentum": 0.5}),),
        torch_class="RMSprop",
        torch_configs=(dict(lr=0.01, momentum=0.5, weight_decay=0.1),),
        golden=("keras_rmsprop_momentum", "torch_rmsprop_momentum"),
        search_space=_rmsprop_space(False, True)),
    OptimizerInfo(
        "rmsprop_centered", fastopt.RMSprop, {"centered": True}, 0.01,
        rules={"keras": "rmsprop_centered", "torch": "rmsprop_centered_torch"},
        scalars={"rmsprop_centered": (0.01, 0.9, 1e-7),
                 "rmsprop_centered_torch": (0.01, 0.99, 1e-8)},
        quadratic_lr=0.02, rosenbrock_lr=3e-3,
        torch_samples=(("rmsprop_centered", {"learning_rate": 0.01, "centered": True}),),
        torch_class="RMSprop",
        torch_configs=(dict(lr=0.01, centered=True, maximize=True),),
        golden=("keras_rmsprop_centered", "torch_rmsprop_centered"),
        search_space=_rmsprop_space(True, False)),
    OptimizerInfo(
        "rmsprop_centered_momentum", fastopt.RMSprop, {"centered": True, "momentum": 0.5}, 0.01,
        rules={"keras": "rmsprop_centered_momentum", "torch": "rmsprop_centered_momentum_torch"},
        scalars={"rmsprop_centered_momentum": (0.01, 0.9, 0.5, 1e-7),
                 "rmsprop_centered_momentum_torch": (0.01, 0.99, 0.5, 1e-8)},
        quadratic_lr=0.02, rosenbrock_lr=3e-3,
        torch_samples=(("rmsprop_centered_momentum", {"learning_rate": 0.01, "centered": True,
                                                      "momentum": 0.5}),),
        torch_class="RMSprop",
        torch_configs=(dict(lr=0.01, centered=True, momentum=0.9, alpha=0.9, eps=1e-6),),
        golden=("keras_rmsprop_centered_momentum", "torch_rmsprop_centered_momentum"),
        search_space=_rmsprop_space(True, True)),
    OptimizerInfo(
        "adam", fastopt.Adam, {}, 0.01,
        rules={"keras": "adam", "torch": "adam_torch"},
        scalars={"adam": (0.01, 0.9, 0.999, 1e-7), "adam_torch": (0.01, 0.9, 0.999, 1e-8)},
        quadratic_lr=0.05, rosenbrock_lr=0.02, bf16_nearest_stalls=True,
        torch_samples=(("adam", {"learning_rate": 0.01}),
                       ("adam_l2", {"learning_rate": 0.01, "weight_decay": 0.05}),
                       ("adam_global_clipnorm", {"learning_rate": 0.01, "global_clipnorm": 0.5})),
        torch_class="Adam",
        torch_configs=(dict(lr=0.01),
                       dict(lr=0.01, decoupled_weight_decay=True, weight_decay=0.1,
                            maximize=True),
                       dict(lr=Tensor(0.01), betas=(0.8, 0.99))),
        golden=("keras_adam", "torch_adam", "torch_adam_maximize"),
        error_inputs=(
            ({"betas": (0.9, 0.99)}, ValueError, r"'betas' \(did you mean beta_1 and beta_2"),
            ({"eps": 1e-8}, ValueError, r"'eps' \(did you mean epsilon\?\)"),
            ({"beta_1": 1.0}, ValueError, "beta_1 must be < 1"),
            ({"beta_2": -0.1}, ValueError, "beta_2 must be >= 0"),
            ({"beta_2": 1.0}, ValueError, "beta_2 must be < 1"),
            ({"epsilon": -1e-7}, ValueError, "epsilon must be >= 0"),
            ({"beta_1": float("nan")}, ValueError, "beta_1 must be finite"),
            ({"epsilon": float("nan")}, ValueError, "epsilon must be finite"),
            ({"amsgrad": "yes"}, TypeError, "amsgrad must be True or False"),
            ({"beta_1": True}, TypeError, "beta_1 must be a real number"),
        ),
        search_space=_adam_space(False)),
    OptimizerInfo(
        "adam_amsgrad", fastopt.Adam, {"amsgrad": True}, 0.01,
        rules={"keras": "adam_amsgrad", "torch": "adam_amsgrad_torch"},
        scalars={"adam_amsgrad": (0.01, 0.9, 0.999, 1e-7),
                 "adam_amsgrad_torch": (0.01, 0.9, 0.999, 1e-8)},
        quadratic_lr=0.05, rosenbrock_lr=0.02,
        torch_samples=(("adam_amsgrad", {"learning_rate": 0.01, "amsgrad": True}),),
        torch_class="Adam",
        torch_configs=(dict(lr=0.01, amsgrad=True, weight_decay=0.1),),
        golden=("keras_adam_amsgrad", "torch_adam_amsgrad_weight_decay"),
        search_space=_adam_space(True)),
    OptimizerInfo(
        "adamw", fastopt.AdamW, {}, 0.01,
        rules={"keras": "adam", "torch": "adam_torch"},
        scalars={},  # the adam row's kernels
        quadratic_lr=0.05, rosenbrock_lr=0.02, bf16_nearest_stalls=True,
        torch_samples=(("adamw", {"learning_rate": 0.01}),),
        torch_class="AdamW",
        torch_configs=(dict(lr=0.01, weight_decay=0.1), dict(lr=0.01),
                       dict(lr=0.01, betas=(Tensor(0.9), Tensor(0.95)))),
        golden=("keras_adamw", "torch_adamw"),
        error_inputs=(
            ({"beta_1": -0.5}, ValueError, "beta_1 must be >= 0"),
            ({"weight_decay": -0.01}, ValueError, "weight_decay must be >= 0"),
            ({"weight_decay": float("inf")}, ValueError, "weight_decay must be finite"),
        ),
        search_space=_adam_space(False)),
    OptimizerInfo(
        "adamw_amsgrad", fastopt.AdamW, {"amsgrad": True, "weight_decay": 0.1}, 0.01,
        rules={"keras": "adam_amsgrad", "torch": "adam_amsgrad_torch"},
        scalars={},  # the adam_amsgrad row's kernels
        quadratic_lr=0.05, rosenbrock_lr=0.02,
        torch_samples=(("adamw_amsgrad", {"learning_rate": 0.01, "amsgrad": True,
                                          "weight_decay": 0.1}),),
        torch_class="AdamW",
        torch_configs=(dict(lr=0.01, weight_decay=0.05, amsgrad=True),
                       dict(lr=0.01, amsgrad=True, maximize=True, eps=1e-6)),
        golden=("torch_adamw_amsgrad",),
        search_space=_adam_space(True)),
    OptimizerInfo(
        "adamax", fastopt.Adamax, {}, 0.01,
        rules={"keras": "adamax", "torch": "adamax_torch"},
        scalars={"adamax": (0.01, 0.9, 0.999, 1e-7), "adamax_torch": (0.01, 0.9, 0.999, 1e-8)},
        quadratic_lr=0.05, rosenbrock_lr=0.05, bf16_nearest_stalls=True,
        torch_samples=(("adamax", {"learning_rate": 0.01}),
                       ("adamax_l2_maximize", {"learning_rate": 0.01, "beta_1": 0.8,
                                               "weight_decay": 0.05, "maximize": True})),
        torch_class="Adamax",
        torch_configs=(dict(lr=0.01),
                       dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1,
                            maximize=True)),
        golden=("keras_adamax", "keras_adamax_weight_decay", "torch_adamax",
                "torch_adamax_weight_decay"),
        error_inputs=(
            ({"betas": (0.9, 0.99)}, ValueError, r"'betas' \(did you mean beta_1 and beta_2"),
            ({"amsgrad": True}, ValueError, r"unknown hyperparameter\(s\) 'amsgrad'"),
            ({"beta_1": 1.0}, ValueError, "beta_1 must be < 1"),
            ({"beta_2": -0.1}, ValueError, "beta_2 must be >= 0"),
            ({"epsilon": -1e-7}, ValueError, "epsilon must be >= 0"),
            ({"beta_2": float("nan")}, ValueError, "beta_2 must be finite"),
            ({"beta_1": True}, TypeError, "beta_1 must be a real number"),
        ),
        search_space={"beta_1": _BETA_1, "beta_2": _BETA_2, "epsilon": _EPSILON}),
    OptimizerInfo(  # Keras only; learning_rate_power = -0.5 runs the square-root kernel
        "ftrl", fastopt.Ftrl, {}, 0.3,
        rules={"keras": "ftrl_sqrt"},
        scalars={"ftrl_sqrt": (0.3, 0.01, 0.02, 0.03, 0.5)},
        quadratic_lr=0.3, rosenbrock_lr=0.3,
        golden=("keras_ftrl", "keras_ftrl_l1_weight_decay", "keras_ftrl_zero_accumulator_beta",
                "keras_ftrl_floatx32"),
        error_inputs=(
            ({"convention": "torch"}, ValueError,
             r"convention='torch' is not offered: Ftrl exists in Keras 3.15 only"),
            ({"learning_rate": 0.0}, ValueError,
             r"learning_rate must be > 0 \(Ftrl divides by it\), got 0.0"),
            ({"learning_rate_power": 0.5}, ValueError, "learning_rate_power must be <= 0"),
            ({"learning_rate_power": float("nan")}, ValueError,
             "learning_rate_power must be finite"),
            ({"initial_accumulator_value": -0.1}, ValueError,
             "initial_accumulator_value must be >= 0"),
            ({"l1_regularization_strength": -1.0}, ValueError,
             "l1_regularization_strength must be >= 0"),
            ({"l2_regularization_strength": -1.0}, ValueError,
             "l2_regularization_strength must be >= 0"),
            ({"l2_shrinkage_regularization_strength": -1.0}, ValueError,
             "l2_shrinkage_regularization_strength must be >= 0"),
            ({"beta": -0.5}, ValueError, "beta must be >= 0"),
            ({"beta": True}, TypeError, "beta must be a real number"),
            ({"lr_power": -0.5}, ValueError, r"unknown hyperparameter\(s\) 'lr_power'"),
        ),
        search_space=_FTRL_SPACE),
    OptimizerInfo(
        "ftrl_power", fastopt.Ftrl,
        {"learning_rate_power": -0.3, "l1_regularization_strength": 1e-3,
         "l2_regularization_strength": 1e-3, "l2_shrinkage_regularization_strength": 1e-4,
         "beta": 0.1}, 0.1,
        rules={"keras": "ftrl"},
        scalars={"ftrl": (0.1, -0.3, 0.01, 0.02, 0.03, 0.5)},
        quadratic_lr=0.1, rosenbrock_lr=0.1,
        golden=("keras_ftrl_power_l1_l2_shrinkage_beta",
                "keras_ftrl_power_zero_zero_accumulator"),
        search_space={**_FTRL_SPACE, "learning_rate_power":
                      st.floats(-1.0, 0.0).filter(lambda p: p != -0.5)}),
    OptimizerInfo(
        "adadelta", fastopt.Adadelta, {}, 1.0,
        rules={"keras": "adadelta", "torch": "adadelta_torch"},
        scalars={"adadelta": (0.5, 0.95, 1e-7), "adadelta_torch": (1.0, 0.9, 1e-6)},
        quadratic_lr=10.0, rosenbrock_lr=1.0,
        torch_samples=(("adadelta", {"learning_rate": 1.0}),
                       ("adadelta_l2_maximize", {"learning_rate": 0.5, "rho": 0.95,
                                                 "epsilon": 1e-5, "weight_decay": 0.1,
                                                 "maximize": True})),
        torch_class="Adadelta", torch_lr=3.0,
        torch_configs=(dict(lr=1.0),
                       dict(lr=0.5, rho=0.95, eps=1e-5, weight_decay=0.1, maximize=True)),
        golden=("keras_adadelta", "keras_adadelta_weight_decay", "torch_adadelta",
                "torch_adadelta_weight_decay_maximize"),
        error_inputs=(
            ({"eps": 1e-6}, ValueError, r"'eps' \(did you mean epsilon\?\)"),
            ({"alpha": 0.9}, ValueError, r"unknown hyperparameter\(s\) 'alpha'"),
            ({"rho": 1.5}, ValueError, "rho must be <= 1"),
            ({"rho": -0.1}, ValueError, "rho must be >= 0"),
            ({"rho": float("nan")}, ValueError, "rho must be finite"),
            ({"epsilon": -1e-7}, ValueError, "epsilon must be >= 0"),
            ({"epsilon": "1e-7"}, TypeError, "epsilon must be a real number"),
        ),
        search_space={"rho": st.floats(0.0, 0.99), "epsilon": _EPSILON}),
    OptimizerInfo(
        "lion", fastopt.Lion, {}, 0.01,
        rules={"keras": "lion"},
        scalars={"lion": (0.01, 0.9, 0.99)},
        quadratic_lr=0.01, rosenbrock_lr=1e-3, bounded_update=True,
        golden=("keras_lion", "keras_lion_weight_decay"),
        error_inputs=(
            ({"convention": "torch"}, ValueError,
             r"convention='torch' is not offered: Lion exists in Keras 3.15 only"),
            ({"beta_1": 0.0}, ValueError, "beta_1 must be > 0"),
            ({"beta_1": 1.5}, ValueError, "beta_1 must be <= 1"),
            ({"beta_2": -0.1}, ValueError, "beta_2 must be >= 0"),
            ({"beta_2": float("inf")}, ValueError, "beta_2 must be finite"),
            ({"epsilon": 1e-7}, ValueError, r"unknown hyperparameter\(s\) 'epsilon'"),
            ({"beta_1": True}, TypeError, "beta_1 must be a real number"),
        ),
        search_space={"beta_1": st.floats(0.01, 1.0), "beta_2": st.floats(0.0, 1.0)}),
    OptimizerInfo(
        "lamb", fastopt.Lamb, {}, 0.01,
        rules={"keras": "lamb"},
        scalars={"lamb": (0.01, 0.9, 0.999, 1e-7)},
        quadratic_lr=0.05, rosenbrock_lr=1e-3, tensor_wise=True,
        golden=("keras_lamb", "keras_lamb_weight_decay"),
        error_inputs=(
            ({"convention": "torch"}, ValueError,
             r"convention='torch' is not offered: Lamb exists in Keras 3.15 only"),
            ({"beta_1": 1.5}, ValueError, "beta_1 must be <= 1"),
            ({"beta_2": -0.1}, ValueError, "beta_2 must be >= 0"),
            ({"epsilon": -1e-7}, ValueError, "epsilon must be >= 0"),
            ({"epsilon": float("nan")}, ValueError, "epsilon must be finite"),
            ({"amsgrad": True}, ValueError, r"unknown hyperparameter\(s\) 'amsgrad'"),
            ({"beta_1": True}, TypeError, "beta_1 must be a real number"),
        ),
        search_space={"beta_1": _BETA_1, "beta_2": _BETA_2, "epsilon": _EPSILON}),
    OptimizerInfo(
        "nadam", fastopt.Nadam, {}, 0.01,
        rules={"keras": "nadam"},
        # the running product u_product (host state) last, after the step count
        scalars={"nadam": (0.01, 0.9, 0.999, 1e-7, 0.3)},
        quadratic_lr=0.05, rosenbrock_lr=0.02, bf16_nearest_stalls=True,
        golden=("keras_nadam", "keras_nadam_weight_decay", "keras_nadam_accumulation"),
        error_inputs=(
            ({"convention": "torch"}, ValueError, "convention='torch' is not offered: Nadam exists in Keras 3.15 only"),
            ({"momentum_decay": 0.004}, ValueError,
             r"unknown hyperparameter\(s\) 'momentum_decay'"),
            ({"beta_1": 1.0}, ValueError, "beta_1 must be < 1"),
            ({"beta_2": -0.1}, ValueError, "beta_2 must be >= 0"),
            ({"epsilon": -1e-7}, ValueError, "epsilon must be >= 0"),
            ({"beta_1": True}, TypeError, "beta_1 must be a real number"),
        ),
        search_space={"beta_1": _BETA_1, "beta_2": _BETA_2, "epsilon": _EPSILON}),
    OptimizerInfo(
        "nadam_torch", fastopt.NAdam, {}, 0.01,
        rules={"torch": "nadam_torch"},
        # the running product mu_product (host state) last, after the step count
        scalars={"nadam_torch": (0.01, 0.9, 0.999, 1e-8, 4e-3, 0.3)},
        quadratic_lr=0.05, rosenbrock_lr=0.02, bf16_nearest_stalls=True,
        torch_samples=(("nadam", {"learning_rate": 0.01}),
                       ("nadam_l2_maximize", {"learning_rate": 0.01, "beta_1": 0.8,
                                              "momentum_decay": 0.01, "weight_decay": 0.05,
                                              "maximize": True}),
                       ("nadamw", {"learning_rate": 0.01, "weight_decay": 0.1,
                                   "decoupled_weight_decay": True})),
        torch_class="NAdam",
        torch_configs=(dict(lr=0.01),
                       dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1,
                            momentum_decay=0.01, maximize=True),
                       dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
        golden=("torch_nadam", "torch_nadam_l2_maximize", "torch_nadamw"),
        error_inputs=(
            ({"convention": "keras"}, ValueError, "convention='keras' is not offered: NAdam exists in PyTorch 2.13 only"),
            ({"betas": (0.9, 0.99)}, ValueError, r"'betas' \(did you mean beta_1 and beta_2"),
            ({"momentum_decay": -1.0}, ValueError, "momentum_decay must be >= 0"),
            ({"decoupled_weight_decay": 1}, TypeError,
             "decoupled_weight_decay must be True or False"),
            ({"beta_1": 1.0}, ValueError, "beta_1 must be < 1"),
            ({"epsilon": float("nan")}, ValueError, "epsilon must be finite"),
        ),
        search_space={"beta_1": _BETA_1, "beta_2": _BETA_2, "epsilon": _EPSILON,
                      "momentum_decay": st.floats(0.0, 0.1),
                      "decoupled_weight_decay": st.booleans()}),
    OptimizerInfo(
        "asgd_torch", fastopt.ASGD, {"t0": 3}, 0.05,
        rules={"torch": "asgd_torch"},
        # the host state (eta_now, mu_now, eta, mu) last, after the step count
        scalars={"asgd_torch": (0.05, 0.01, 0.75, 3.0, 0.04, 0.5, 0.039, 0.25)},
        quadratic_lr=0.05, rosenbrock_lr=1e-3,
        torch_samples=(("asgd", {"learning_rate": 0.05}),
                       ("asgd_averaging", {"learning_rate": 0.05, "lambd": 0.01, "alpha": 0.5,
                                           "t0": 5}),
                       ("asgd_l2_maximize", {"learning_rate": 0.05, "t0": 2,
                                             "weight_decay": 0.05, "maximize": True})),
        torch_class="ASGD",
        torch_configs=(dict(lr=0.05, t0=3),
                       dict(lr=0.05, lambd=0.01, alpha=0.5, t0=2, weight_decay=0.1,
                            maximize=True)),
        golden=("torch_asgd", "torch_asgd_averaging", "torch_asgd_l2_maximize"),
        error_inputs=(
            ({"convention": "keras"}, ValueError, "convention='keras' is not offered: ASGD exists in PyTorch 2.13 only"),
            ({"lambda": 0.1}, ValueError, r"'lambda' \(did you mean lambd"),
            ({"lambd": -1.0}, ValueError, "lambd must be >= 0"),
            ({"alpha": float("inf")}, ValueError, "alpha must be finite"),
            ({"t0": "5"}, TypeError, "t0 must be a real number"),
        ),
        search_space={"lambd": st.floats(0.0, 0.1), "alpha": st.floats(0.0, 1.0),
                      "t0": st.floats(0.0, 20.0)}),
    OptimizerInfo(
        "radam", fastopt.RAdam, {}, 0.01,
        rules={"torch": "radam_torch"},
        scalars={"radam_torch": (0.01, 0.9, 0.999, 1e-8)},
        # its first five steps are unrectified (SGD with momentum, step lr/bc1), and
        # Rosenbrock's gradients of ~200 throw them far away at lr=0.01
        quadratic_lr=0.05, rosenbrock_lr=0.005, bf16_nearest_stalls=True,
        torch_samples=(
            ("radam", {"learning_rate": 0.01}),
            ("radam_l2", {"learning_rate": 0.01, "weight_decay": 0.05}),
            ("radam_decoupled_maximize", {"learning_rate": 0.01, "weight_decay": 0.1,
                                          "decoupled_weight_decay": True, "maximize": True}),
            ("radam_betas_clipvalue", {"learning_rate": 0.01, "beta_1": 0.8, "beta_2": 0.9,
                                       "clipvalue": 0.5}),
        ),
        torch_class="RAdam",
        torch_configs=(dict(lr=0.01),
                       dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True,
                            maximize=True),
                       dict(lr=Tensor(0.01), betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
        golden=("torch_radam", "torch_radam_weight_decay",
                "torch_radam_decoupled_weight_decay_maximize"),
        error_inputs=(
            ({"convention": "keras"}, ValueError,
             "convention='keras' is not offered: RAdam exists in PyTorch 2.13 only"),
            ({"betas": (0.9, 0.99)}, ValueError, r"'betas' \(did you mean beta_1 and beta_2"),
            ({"eps": 1e-8}, ValueError, r"'eps' \(did you mean epsilon\?\)"),
            ({"beta_1": 1.0}, ValueError, "beta_1 must be < 1"),
            ({"beta_2": -0.1}, ValueError, "beta_2 must be >= 0"),
            ({"epsilon": -1e-8}, ValueError, "epsilon must be >= 0"),
            ({"decoupled_weight_decay": 1}, TypeError,
             "decoupled_weight_decay must be True or False"),
            ({"amsgrad": True}, ValueError, r"unknown hyperparameter\(s\) 'amsgrad'"),
        ),
        search_space={"beta_1": _BETA_1, "beta_2": _BETA_2, "epsilon": _EPSILON,
                      "decoupled_weight_decay": st.booleans()}),
    OptimizerInfo(
        "rprop", fastopt.Rprop, {}, 0.02,
        rules={"torch": "rprop_torch"},
        scalars={"rprop_torch": (0.01, 0.5, 1.2, 1e-6, 50.0)},
        quadratic_lr=0.01, rosenbrock_lr=1e-3, sign_only=True,
        torch_samples=(
            ("rprop", {"learning_rate": 0.01}),
            ("rprop_etas_step_sizes", {"learning_rate": 0.05, "eta_minus": 0.3, "eta_plus": 1.5,
                                       "step_size_min": 1e-3, "step_size_max": 0.2}),
            ("rprop_maximize_clipvalue", {"learning_rate": 0.01, "maximize": True,
                                          "clipvalue": 0.5}),
            ("rprop_l2", {"learning_rate": 0.01, "weight_decay": 0.1}),
        ),
        torch_class="Rprop",
        torch_configs=(dict(lr=0.01),
                       dict(lr=0.02, etas=(0.3, 1.5), step_sizes=(1e-3, 0.2), maximize=True),
                       dict(lr=Tensor(0.01), step_sizes=(0.02, 0.01))),
        golden=("torch_rprop", "torch_rprop_etas_step_sizes", "torch_rprop_maximize"),
        error_inputs=(
            ({"convention": "keras"}, ValueError,
             "convention='keras' is not offered: Rprop exists in PyTorch 2.13 only"),
            ({"etas": (0.5, 1.2)}, ValueError, r"'etas' \(did you mean eta_minus and eta_plus"),
            ({"step_sizes": (1e-6, 50)}, ValueError,
             r"'step_sizes' \(did you mean step_size_min and step_size_max"),
            ({"eta_minus": 1.0}, ValueError, "eta_minus must be < 1"),
            ({"eta_minus": 0.0}, ValueError, "eta_minus must be > 0"),
            ({"eta_plus": 1.0}, ValueError, "eta_plus must be > 1"),
            ({"step_size_min": -1.0}, ValueError, "step_size_min must be >= 0"),
            ({"step_size_min": 0.1, "step_size_max": 0.01}, ValueError,
             "step_size_max must be >= 0.1"),
            ({"step_size_max": float("inf")}, ValueError, "step_size_max must be finite"),
            ({"eta_plus": "1.2"}, TypeError, "eta_plus must be a real number"),
        ),
        # the update is the gradient's sign: an L2 term below float32's range
        # (weight_decay ~1e-280) makes an exact-zero gradient nonzero in the float64
        # reference and leaves it zero in float32, a whole step apart, so the
        # drawn weight decay is 0 or a float32-sized one
        search_space={"eta_minus": st.floats(0.1, 0.9), "eta_plus": st.floats(1.05, 2.0),
                      "step_size_min": st.sampled_from([0.0, 1e-6, 1e-3]),
                      "step_size_max": st.sampled_from([0.1, 1.0, 50.0]),
                      "weight_decay": st.sampled_from([0.0]) | st.floats(1e-3, 0.5)}),
    OptimizerInfo(
        # the authors' package (schedulefree.AdamWScheduleFree), fastopt's torch convention
        "schedulefree_adamw", fastopt.ScheduleFreeAdamW, {"warmup_steps": 3}, 0.02,
        rules={"torch": "schedulefree_adamw"},
        # the host state (lr_max, weight_sum, train_mode) last, after the step count
        scalars={"schedulefree_adamw": (0.01, 0.9, 0.999, 1e-8, 0.1, 3.0, 0.5, 2.0, 0.01,
                                        1e-3, 1.0)},
        quadratic_lr=0.05, rosenbrock_lr=0.005,
        torch_samples=(
            ("schedulefree_adamw", {"learning_rate": 0.02}),
            ("schedulefree_adamw_warmup_decay_maximize",
             {"learning_rate": 0.02, "warmup_steps": 3, "weight_decay": 0.1, "maximize": True,
              "r": 1.0, "weight_lr_power": 1.0}),
            ("schedulefree_adamw_beta_clipvalue", {"learning_rate": 0.02, "beta_1": 0.5,
                                                   "beta_2": 0.9, "clipvalue": 0.5}),
        ),
        golden=("schedulefree_adamw", "schedulefree_adamw_warmup_weight_decay",
                "schedulefree_adamw_groups"),
        error_inputs=(
            ({"convention": "keras"}, ValueError,
             "convention='keras' is not offered: ScheduleFreeAdamW exists in the schedulefree "
             "package only, as its authors published it .* Keras 3.15.1's ScheduleFreeAdamW is "
             "not the published method"),
            ({"betas": (0.9, 0.99)}, ValueError, r"'betas' \(did you mean beta_1 and beta_2"),
            ({"beta_1": 0.0}, ValueError, "beta_1 must be > 0"),
            ({"beta_1": 1.0}, ValueError, "beta_1 must be < 1"),
            ({"beta_2": 1.0}, ValueError, "beta_2 must be < 1"),
            ({"epsilon": -1e-8}, ValueError, "epsilon must be >= 0"),
            ({"warmup_steps": -1}, ValueError, "warmup_steps must be >= 0"),
            ({"warmup_steps": 2.5}, TypeError, "warmup_steps must be an integer"),
            ({"r": float("nan")}, ValueError, "r must be finite"),
            ({"weight_lr_power": "2"}, TypeError, "weight_lr_power must be a real number"),
            ({"exclude_from_weight_decay": [0]}, ValueError,
             "exclude_from_weight_decay is not offered"),
        ),
        search_space={"beta_1": st.floats(0.1, 0.99), "beta_2": _BETA_2, "epsilon": _EPSILON,
                      "warmup_steps": st.integers(0, 10), "r": st.floats(0.0, 2.0),
                      "weight_lr_power": st.floats(0.0, 3.0)}),
]

BY_ID = {row.id: row for row in DB}
assert len(BY_ID) == len(DB), "two rows share an id"

#: every class under test, in table order
CLASSES = list(dict.fromkeys(row.cls for row in DB))

for _row in DB:  # a row offers exactly its class's conventions, the default first
    assert _row.conventions == _row.cls._CONVENTIONS, (_row.id, _row.conventions)


def with_conventions(rows=None):
    """``(row, convention)`` pytest parameters: every convention each row
    (default: every row of :data:`DB`) offers."""
    return [pytest.param(row, c, id=f"{row.id}-{c}") for row in (DB if rows is None else rows)
            for c in row.conventions]


#: rows with the Keras convention (a class that exists in torch.optim only,
#: such as RAdam, has none), and their classes in table order
KERAS_ROWS = [row for row in DB if "keras" in row.conventions]
KERAS_CLASSES = list(dict.fromkeys(row.cls for row in KERAS_ROWS))


#: rows with a torch.optim twin, and those classes in table order
TORCH_ROWS = [row for row in DB if row.torch_class]
TORCH_CLASSES = list(dict.fromkeys(row.torch_class for row in TORCH_ROWS))


@dataclass(frozen=True)
class TensorOptimizerInfo:
    """An optimizer whose rule is of kind ``per_tensor`` (Adafactor, Muon): the generic
    rows' tests (trajectories against the elementwise specs, the torch
    adapter...) do not apply; its own test file checks it, and these rows
    give what the shared tests read: the rule under each convention, the
    golden recordings and the kernel scalars of the compiled rules it calls.
    """

    id: str
    cls: type
    rules: dict
    golden: tuple = ()
    part_scalars: dict = field(default_factory=dict)

    def __str__(self):
        return self.id

    @property
    def conventions(self):
        return tuple(self.rules)


TENSOR_DB = [
    # factored moments: the state is not parameter-shaped (tests/test_adafactor.py)
    TensorOptimizerInfo(
        "adafactor", fastopt.Adafactor, rules={"keras": "adafactor", "torch": "adafactor_torch"},
        golden=("keras_adafactor", "keras_adafactor_options", "torch_adafactor",
                "torch_adafactor_options")),
    TensorOptimizerInfo(
        "muon", fastopt.Muon, rules={"keras": "muon", "torch": "muon_torch"},
        golden=("keras_muon", "keras_muon_exact", "keras_muon_options",
                "keras_muon_options_exact", "torch_muon", "torch_muon_exact",
                "torch_muon_options", "torch_muon_options_exact"),
        # the momentum parts (torch's lerp takes both branches: 0.9 and 0.3)
        part_scalars={"muon_nesterov": (0.9,), "muon_plain": (0.95,),
                      "muon_nesterov_torch": (0.9,), "muon_plain_torch": (0.3,)}),
]


def _kernel_scalars():
    out = {}
    for row in TENSOR_DB:
        for rule, values in row.part_scalars.items():
            if rule in out:
                raise AssertionError(f"rule {rule!r} gets kernel scalars from two rows")
            out[rule] = values
    for row in DB:
        for rule, values in row.scalars.items():
            if rule in out:
                raise AssertionError(f"rule {rule!r} gets kernel scalars from two rows")
            if rule not in row.rules.values():
                raise AssertionError(f"{row.id}: scalars for {rule!r}, not one of its rules")
            # the public scalars without the step count, which the tests append
            if len(values) != len([s for s in RULES[rule].scalars if s != "step"]):
                raise AssertionError(f"{row.id}: {rule!r} takes {RULES[rule].scalars}")
            out[rule] = values
    return out


#: rule -> the scalar values (without the step count) that the kernel tests use
KERNEL_SCALARS = _kernel_scalars()


def scalar(rule, name):
    """The value of kernel scalar ``name`` that the tests give ``rule``."""
    names = [s for s in RULES[rule].scalars if s != "step"]
    return KERNEL_SCALARS[rule][names.index(name)]


def with_step(rule, values, step):
    """``values`` (a rule's scalars without the step count) with the step
    count ``step`` in its place: last, or before a rule's host state
    (:attr:`fastopt.rule.Rule.host_state`, Nadam's running product)."""
    if "step" not in rule.scalars:
        return tuple(values)
    k = rule.scalars.index("step")
    return (*values[:k], step, *values[k:])


def scalars_at(rule, step):
    """The rule's scalars for the step after ``step`` steps (step counts from 1)."""
    return with_step(rule, KERNEL_SCALARS[rule.name], step + 1)


def step_inputs(rng, rule, size, dtype, step):
    """Scalars, gradient and keyword extras of one kernel-test step: odd steps
    add decoupled decay, a gradient scale and a clip value, every third step L2."""
    extras = dict(keep=0.999, gscale=0.7, clipvalue=2.0) if step % 2 else {}
    if step % 3 == 2:
        extras["l2"] = 0.01
    return scalars_at(rule, step), gradient(rng, (size,), dtype, step), extras


_TORCH_TO_FASTOPT = {"lr": "learning_rate", "eps": "epsilon", "alpha": "rho"}
#: torch's pairs, and the two fastopt hyperparameters each one is
_TORCH_PAIRS = {"betas": ("beta_1", "beta_2"), "etas": ("eta_minus", "eta_plus"),
                "step_sizes": ("step_size_min", "step_size_max")}


def fastopt_kwargs(torch_kwargs):
    """``torch.optim`` keywords as fastopt keywords (``convention="torch"``)."""
    out = {}
    for key, value in torch_kwargs.items():
        if key in _TORCH_PAIRS:
            first, second = _TORCH_PAIRS[key]
            out[first], out[second] = (float(b) for b in value)
        else:
            value = float(value) if isinstance(value, Tensor) else value
            out[_TORCH_TO_FASTOPT.get(key, key)] = value
    return out
