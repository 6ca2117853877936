"""The optimizer comparison in real Keras: ``fastopt compare --framework keras``.

The course experiment as Keras users write it -- a ``keras.Sequential`` model,
``model.compile(loss="binary_crossentropy", metrics=["accuracy"])`` and
``model.fit`` -- run twice per optimizer and seed: with Keras's own
``keras.optimizers.X`` and with ``fastopt.keras.X``, the same code but for the
optimizer's import.  Both runs of a seed start from the same weights (set
explicitly) and see the same batches (Keras's shuffle draws from torch's random
generator, seeded again before each ``fit``), so their curves differ only by
the optimizer's implementation; :func:`curve_differences` says by how much.

Keras is imported by :func:`load`, not by this module, so that importing it
costs nothing and ``fastopt compare`` without ``--framework keras`` never
loads Keras or torch.

>>> runs = compare(X_train, y_train, (X_test, y_test), optimizers=["adam"])
>>> print(format_table(summarize(runs)))            # from fastopt.train.comparison
>>> curve_differences(runs)["adam"]
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time

import numpy as np

from . import _checks
from .comparison import DEFAULT_OPTIMIZERS, MODELS, OPTIMIZERS, recipe_options

__all__ = ["KerasUnavailable", "IMPLEMENTATIONS", "STYLES", "load", "versions", "make_optimizer",
           "check_optimizers", "make_model", "compare", "curve_differences"]

#: the two implementations of each optimizer, in the order they run: Keras's
#: own (``keras.optimizers``), then fastopt's (``fastopt.keras``)
IMPLEMENTATIONS = ("keras", "fastopt.keras")

#: how :func:`fastopt.train.plot.plot_runs` draws them: fastopt.keras as a wide
#: translucent solid line, Keras's own dashed on top of it (where the two agree,
#: the dashes run inside the solid line)
STYLES = {"keras": {"linestyle": "--", "linewidth": 1.5, "zorder": 3},
          "fastopt.keras": {"linestyle": "-", "linewidth": 4.5, "alpha": 0.4, "zorder": 2}}

#: the history keys of fastopt's trainer, in its order (Keras sorts them)
_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")

INSTALL_HINT = "pip install 'fastopt[keras]'"


class KerasUnavailable(RuntimeError):
    """Keras 3 with the torch backend cannot be used here; the message says why
    and what to do, in one line."""


def load():
    """``(keras, fastopt.keras)``, imported under Keras's torch backend.

    ``KERAS_BACKEND`` defaults to ``torch`` (it must be set before Keras is
    first imported).  Raises :class:`KerasUnavailable` if Keras 3 or torch is
    missing, or Keras is set to (or was already loaded with) another backend.
    """
    if "keras" not in sys.modules:
        wanted = os.environ.setdefault("KERAS_BACKEND", "torch")
        if wanted != "torch":
            raise KerasUnavailable(
                f"fastopt.keras runs on Keras's torch backend, but KERAS_BACKEND={wanted} "
                "here; unset KERAS_BACKEND or set KERAS_BACKEND=torch")
    try:
        import keras
    except ImportError as exc:
        raise KerasUnavailable(f"Keras 3 with the torch backend is not installed ({exc}); "
                               f"install it with: {INSTALL_HINT}") from None
    version = getattr(keras, "__version__", "0")
    if int(version.split(".")[0]) < 3:
        raise KerasUnavailable(f"fastopt.keras needs Keras 3, and Keras {version} is "
                               f"installed; install it with: {INSTALL_HINT}")
    backend = keras.backend.backend()
    if backend != "torch":
        raise KerasUnavailable(
            f"fastopt.keras runs on Keras's torch backend, but Keras was loaded with the "
            f"{backend!r} backend; set KERAS_BACKEND=torch before Keras is first imported")
    import fastopt.keras as fastopt_keras
    return keras, fastopt_keras


def versions():
    """``{"keras": version, "torch": version}`` (after :func:`load`)."""
    keras, _ = load()
    import torch
    return {"keras": keras.__version__, "torch": torch.__version__}


def make_optimizer(module, name, learning_rate=0.01, momentum=0.3):
    """The optimizer ``name`` (a key of
    :data:`fastopt.train.comparison.OPTIMIZERS`) from ``module``
    (``keras.optimizers`` or ``fastopt.keras``): the class of the same name as
    the recipe's fastopt class, with the recipe's options, ``learning_rate``,
    and ``momentum`` for the names that take it; Keras's defaults otherwise."""
    recipe, options = recipe_options(name, momentum)
    if "keras" not in recipe.cls._CONVENTIONS and recipe.cls.__name__ == "ScheduleFreeAdamW":
        raise ValueError("fastopt offers schedule-free AdamW as its authors' package computes "
                         "it (torch convention), not Keras 3.15.1's ScheduleFreeAdamW, which "
                         "differs (see fastopt.ScheduleFreeAdamW); --framework keras compares "
                         "Keras's optimizers with fastopt.keras's")
    cls = getattr(module, recipe.cls.__name__, None)
    if cls is None:
        raise ValueError(f"{recipe.cls.__name__} is not a Keras optimizer (it exists in "
                         "torch.optim only); --framework keras runs Keras's optimizers")
    return cls(learning_rate=learning_rate, **options)


def check_optimizers(names, learning_rate=0.01, momentum=0.3):
    """Build each named optimizer in both implementations, so that a bad name
    or setting fails before any training.  Errors name the optimizer."""
    if isinstance(names, str) or not names:
        raise ValueError(f"optimizers must be a non-empty list of names, got {names!r}")
    keras, fastopt_keras = load()
    with keras.device("cpu"):
        for name in names:
            for module in (keras.optimizers, fastopt_keras):
                try:
                    make_optimizer(module, name, learning_rate, momentum)
                except (TypeError, ValueError) as exc:
                    raise ValueError(str(exc) if name not in OPTIMIZERS
                                     else f"{name}: {exc}") from None


@contextlib.contextmanager
def _float_type(keras, dtype):
    """Keras's float type set to ``dtype`` -- ``floatx`` (the optimizers' and
    metrics' variables) and the global dtype policy (the layers') -- and put
    back as it was found.

    Both, because Keras fixes the global policy from ``floatx`` the first time
    it is read and keeps it: setting ``floatx`` alone leaves layers in the
    earlier type, and leaving the policy set here would fix it for the rest of
    the program (the policy is restored through Keras's global state, which
    has no public way to unset it)."""
    from keras.src.backend.common import global_state
    floatx = keras.config.floatx()
    policy = global_state.get_global_attribute("dtype_policy", None)
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(floatx)
        global_state.set_global_attribute("dtype_policy", policy)


def make_model(keras, kind, n_features, seed, hidden=(16,), activation="relu",
               dtype="float32"):
    """The Keras twin of :func:`fastopt.train.comparison.make_model`: a
    ``Dense(1, activation="sigmoid")`` (``"logistic"``) or ``hidden`` Dense
    layers of ``activation`` under it (``"mlp"``), in ``dtype``, built after
    ``keras.utils.set_random_seed(seed)`` with Keras's initialisers.  Keras's
    float type settings are left as they were."""
    kind = _checks.choice("make_model", "kind", kind, MODELS)
    with _float_type(keras, dtype):
        keras.utils.set_random_seed(seed)
        layers = [keras.Input((n_features,), dtype=dtype)]
        if kind == "mlp":
            layers += [keras.layers.Dense(units, activation=activation, dtype=dtype)
                       for units in hidden]
        layers.append(keras.layers.Dense(1, activation="sigmoid", dtype=dtype))
        return keras.Sequential(layers)


def compare(X, y, validation_data=None, optimizers=DEFAULT_OPTIMIZERS, learning_rate=0.01,
            momentum=0.3, epochs=5, batch_size=16, seeds=1, model="logistic", hidden=(16,),
            activation="relu", dtype="float32", on_run=None):
    """Train one Keras model per optimizer, seed and implementation with
    ``model.fit``; return the runs.

    For each optimizer and seed ``0 .. seeds - 1`` the model trains twice, with
    ``keras.optimizers.X`` and with ``fastopt.keras.X`` (:data:`IMPLEMENTATIONS`),
    from the seed's initial weights and on the seed's batches (``shuffle=True``,
    torch's generator seeded with the seed before each ``fit``), compiled with
    ``loss="binary_crossentropy", metrics=["accuracy"]``.  Everything runs in
    CPU memory (fastopt.keras updates CPU tensors), in ``dtype`` (Keras's
    ``floatx`` and dtype policy are set to it for the duration and put back as
    they were).  Like any Keras program that calls
    ``keras.utils.set_random_seed``, this reseeds Python's, NumPy's and torch's
    global generators.

    Parameters are those of :func:`fastopt.train.comparison.compare`, less the
    fastopt-only ``backend``, ``convention``, ``state_dtype`` and
    ``state_rounding``; ``on_run(label, seed, history, seconds)`` gets the label
    of :func:`fastopt.train.comparison.run_label` (``"adam (fastopt.keras)"``).

    Returns
    -------
    list of dict
        ``{"optimizer": name, "implementation": "keras" or "fastopt.keras",
        "seed": seed, "history": {key: [per epoch]}}`` with the history keys of
        :func:`fastopt.train.fit` (``loss``, ``accuracy`` and, with validation
        data, ``val_loss``, ``val_accuracy``), by optimizer, seed, implementation.
    """
    seeds = _checks.integer("compare", "seeds", seeds, low=1)
    dtype = _checks.float_dtype("compare", dtype).name
    check_optimizers(optimizers, learning_rate, momentum)
    keras, fastopt_keras = load()
    modules = {"keras": keras.optimizers, "fastopt.keras": fastopt_keras}
    X = np.asarray(X, dtype)
    y = np.asarray(y, dtype).reshape(len(X), -1)
    if validation_data is not None:
        X_val, y_val = validation_data
        X_val = np.asarray(X_val, dtype)
        validation_data = (X_val, np.asarray(y_val, dtype).reshape(len(X_val), -1))
    runs = []
    with _float_type(keras, dtype), keras.device("cpu"):
        initial = [make_model(keras, model, X.shape[1], seed, hidden, activation,
                              dtype).get_weights() for seed in range(seeds)]
        for name in optimizers:
            for seed in range(seeds):
                for implementation in IMPLEMENTATIONS:
                    net = make_model(keras, model, X.shape[1], seed, hidden, activation,
                                     dtype)
                    net.set_weights(initial[seed])
                    net.compile(optimizer=make_optimizer(modules[implementation], name,
                                                         learning_rate, momentum),
                                loss="binary_crossentropy", metrics=["accuracy"])
                    keras.utils.set_random_seed(seed)  # the batch order
                    start = time.perf_counter()
                    history = _fit(keras, net, X, y, batch_size, epochs, validation_data)
                    seconds = time.perf_counter() - start
                    run = {"optimizer": name, "implementation": implementation,
                           "seed": seed, "history": history}
                    if on_run is not None:
                        on_run(f"{name} ({implementation})", seed, history, seconds)
                    runs.append(run)
    return runs


def _fit(keras, net, X, y, batch_size, epochs, validation_data):
    """``net.fit``'s history, with the keys in fastopt's order.

    A run that diverges is reported, not raised: once the model's predictions
    are NaN (weights overflowed, or a forward pass through huge weights gave
    ``inf - inf``), Keras's binary cross-entropy under torch refuses them with
    torch's ``RuntimeError`` "all elements of input should be between 0 and 1";
    the history then holds the epochs that finished and NaN from the one that
    failed on, as fastopt's trainer records a loss that stopped being finite."""
    done = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: done.append(dict(logs)))
    try:
        net.fit(X, y, batch_size=batch_size, epochs=epochs, validation_data=validation_data,
                shuffle=True, verbose=0, callbacks=[record])
    except RuntimeError as exc:
        if "should be between 0 and 1" not in str(exc):
            raise
        keys = [k for k in _KEYS if validation_data is not None or not k.startswith("val_")]
        done += [dict.fromkeys(keys, math.nan)] * (epochs - len(done))
    return {k: [float(logs[k]) for logs in done] for k in _KEYS if k in done[0]}


def curve_differences(runs, keys=("loss", "val_loss")):
    """Per optimizer, how far fastopt.keras's loss curves are from Keras's own.

    Returns ``{optimizer: {"absolute": a, "relative": r}}``: the largest
    ``|fastopt.keras - keras|`` over every epoch, seed and history key in
    ``keys`` (those the runs have), and the largest such difference divided by
    ``|keras|``.  NaN where a curve is not finite (training diverged) in only
    one of the two runs; 0 where both diverged at the same epochs.
    """
    pairs = {}
    for run in runs:
        pairs.setdefault(run["optimizer"], {}).setdefault(run["seed"], {})[
            run["implementation"]] = run["history"]
    out = {}
    for name, seeds in pairs.items():
        absolute = relative = 0.0
        for pair in seeds.values():
            ours, theirs = pair["fastopt.keras"], pair["keras"]
            for key in keys:
                if key not in theirs:
                    continue
                a = np.asarray(ours[key], np.float64)
                b = np.asarray(theirs[key], np.float64)
                both_out = ~np.isfinite(a) & ~np.isfinite(b)
                with np.errstate(all="ignore"):
                    diff = np.where(both_out, 0.0, np.abs(a - b))
                    rel = np.where(both_out, 0.0, diff / np.abs(b))
                absolute = max(absolute, float(np.max(diff, initial=0.0)), key=_nan_first)
                relative = max(relative, float(np.max(rel, initial=0.0)), key=_nan_first)
        out[name] = {"absolute": absolute, "relative": relative}
    return out


def _nan_first(x):
    """A ``max`` key under which NaN beats every number."""
    return math.inf if math.isnan(x) else x
