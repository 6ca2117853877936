"""The optimizer comparison behind ``fastopt compare``.

Every optimizer trains the same model from the same initial weights on the
same batches (model seed and batch-order seed are both the run's seed), so
the loss curves differ only by the optimizer.  (``fastopt compare --framework
keras`` trains in Keras instead: :mod:`fastopt.train.keras_compare`, whose runs
also carry an ``"implementation"``; :func:`summarize`, :func:`format_table`,
:func:`json_report` and :func:`diverged` take both kinds of run.)

>>> runs = compare(X_train, y_train, (X_test, y_test), seeds=3)
>>> print(format_table(summarize(runs)))
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ..hyperparams import convention_for
from ..optimizers import (ASGD, SGD, Adadelta, Adafactor, Adagrad, Adam, AdamW, Ftrl, Lamb, Lion,
                          NAdam, Nadam, RAdam, RMSprop, Rprop, ScheduleFreeAdamW)
from . import _checks
from .fit import fit
from .models import MLP, LogisticRegression

__all__ = ["Recipe", "OPTIMIZERS", "DEFAULT_OPTIMIZERS", "MODELS", "recipe_options",
           "make_optimizer", "check_optimizers", "make_model", "compare", "summarize", "format_table",
           "json_report", "diverged", "run_label"]


class Recipe(NamedTuple):
    """How a name in ``--optimizers`` builds its optimizer."""

    cls: type
    takes_momentum: bool  # gets the comparison's momentum
    options: dict


#: Optimizer names of the comparison, in a sensible display order.
OPTIMIZERS = {
    "sgd": Recipe(SGD, False, {}),
    "momentum": Recipe(SGD, True, {}),
    "nesterov": Recipe(SGD, True, {"nesterov": True}),
    "adam": Recipe(Adam, False, {}),
    "adagrad": Recipe(Adagrad, False, {}),
    "rmsprop": Recipe(RMSprop, False, {}),
    "adamw": Recipe(AdamW, False, {}),
    "amsgrad": Recipe(Adam, False, {"amsgrad": True}),
    "rmsprop_centered": Recipe(RMSprop, False, {"centered": True}),
    "ftrl": Recipe(Ftrl, False, {}),  # Keras only: refused with --convention torch
    "lion": Recipe(Lion, False, {}),
    "lamb": Recipe(Lamb, False, {}),          # Keras's Lamb (Keras convention only)
    "adadelta": Recipe(Adadelta, False, {}),
    "nadam": Recipe(Nadam, False, {}),        # Keras's Nadam (Keras convention only)
    "nadam_torch": Recipe(NAdam, False, {}),  # torch's NAdam (torch convention only)
    "asgd": Recipe(ASGD, False, {}),          # torch's ASGD (torch convention only)
    "radam": Recipe(RAdam, False, {}),
    "rprop": Recipe(Rprop, False, {}),
    "adafactor": Recipe(Adafactor, False, {}),  # factored moments (per_tensor rule)
    # the schedulefree package's method (torch convention only); validation at x
    "schedulefree_adamw": Recipe(ScheduleFreeAdamW, False, {}),
}
#: The six optimizers of the classic experiment.
DEFAULT_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adagrad", "rmsprop")
MODELS = ("logistic", "mlp")


def recipe_options(name, momentum=0.3):
    """``(recipe, options)`` of the name ``name`` (a key of :data:`OPTIMIZERS`):
    the recipe's own options, and ``momentum`` for the names that take it."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(OPTIMIZERS)}")
    recipe = OPTIMIZERS[name]
    options = dict(recipe.options)
    if recipe.takes_momentum:
        options["momentum"] = momentum
    return recipe, options


def make_optimizer(name, params, learning_rate=0.01, momentum=0.3, backend="auto",
                   convention=None, state_dtype=None, state_rounding=None):
    """The optimizer ``name`` (a key of :data:`OPTIMIZERS`) over ``params``.

    ``learning_rate`` is always passed; ``momentum`` only to the names that
    take it (``momentum``, ``nesterov``); everything else keeps the
    optimizer's defaults under ``convention`` (an optimizer that exists in
    one framework only, such as RAdam, under its own).  ``state_dtype`` and
    ``state_rounding`` (reduced-precision optimizer state) go to every
    optimizer.
    """
    recipe, options = recipe_options(name, momentum)
    return recipe.cls(params, learning_rate=learning_rate, backend=backend,
                      convention=convention_for(recipe.cls, convention), state_dtype=state_dtype,
                      state_rounding=state_rounding, **options)


def check_optimizers(names, learning_rate=0.01, momentum=0.3, backend="auto",
                     convention=None, dtype="float32", state_dtype=None, state_rounding=None):
    """Build each named optimizer on a scratch array, so that a bad name or
    setting fails before any training.  Errors name the optimizer."""
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise ValueError(f"optimizers must be a non-empty list of names, got {names!r}")
    probe = np.zeros(1, dtype)
    for name in names:
        try:
            make_optimizer(name, probe, learning_rate, momentum, backend, convention,
                           state_dtype, state_rounding)
        except (TypeError, ValueError, ImportError) as exc:
            raise ValueError(str(exc) if name not in OPTIMIZERS else f"{name}: {exc}") from None


def make_model(kind, n_features, seed, hidden=(16,), activation="relu", dtype="float32"):
    """A binary classifier: ``"logistic"`` regression or an ``"mlp"`` with
    ``hidden`` layers of ``activation`` and a sigmoid output."""
    kind = _checks.choice("make_model", "kind", kind, MODELS)
    if kind == "logistic":
        return LogisticRegression(n_features, seed=seed, dtype=dtype)
    return MLP(n_features, hidden=hidden, activation=activation, seed=seed, dtype=dtype)


def compare(X, y, validation_data=None, optimizers=DEFAULT_OPTIMIZERS, learning_rate=0.01,
            momentum=0.3, epochs=5, batch_size=16, seeds=1, model="logistic", hidden=(16,),
            activation="relu", backend="auto", convention=None, dtype="float32",
            on_run=None, state_dtype=None, state_rounding=None):
    """Train one model per optimizer and seed; return the runs.

    Seeds are ``0 .. seeds - 1``; the seed fixes both the initial weights and
    the batch order, so within a seed every optimizer starts from the same
    weights and sees the same batches.

    Parameters
    ----------
    X, y : arrays
        Training rows and binary (0/1) targets.
    validation_data : tuple (X_val, y_val), optional
    optimizers : sequence of str
        Keys of :data:`OPTIMIZERS`.
    learning_rate, momentum, backend, convention, state_dtype, state_rounding
        Passed to :func:`make_optimizer`.
    epochs, batch_size
        Passed to :func:`fastopt.train.fit`.
    seeds : int >= 1
    model, hidden, activation, dtype
        Passed to :func:`make_model`.
    on_run : callable, optional
        Called after each run as ``on_run(name, seed, history, seconds)``.

    Returns
    -------
    list of dict
        ``{"optimizer": name, "seed": seed, "history": {key: [per epoch]}}``,
        by optimizer, then seed.
    """
    seeds = _checks.integer("compare", "seeds", seeds, low=1)
    check_optimizers(optimizers, learning_rate, momentum, backend, convention, dtype,
                     state_dtype, state_rounding)
    n_features = np.shape(X)[1]
    runs = []
    for name in optimizers:
        for seed in range(seeds):
            net = make_model(model, n_features, seed, hidden, activation, dtype)
            opt = make_optimizer(name, net.params, learning_rate, momentum, backend,
                                 convention, state_dtype, state_rounding)
            start = time.perf_counter()
            history = fit(net, X, y, opt, epochs=epochs, batch_size=batch_size, seed=seed,
                          validation_data=validation_data, verbose=0)
            if on_run is not None:
                on_run(name, seed, history.history, time.perf_counter() - start)
            runs.append({"optimizer": name, "seed": seed, "history": history.history})
    return runs


def run_label(run):
    """How a run is named to the user: its optimizer, followed by its
    implementation in parentheses if it has one (``"adam (fastopt.keras)"``)."""
    implementation = run.get("implementation")
    return run["optimizer"] if implementation is None else \
        f"{run['optimizer']} ({implementation})"


def diverged(runs):
    """``[(label, seed, epoch)]``: the runs whose loss stopped being a finite
    number (training diverged), each with the first epoch where it did;
    ``label`` is :func:`run_label`'s (the optimizer's name)."""
    out = []
    for run in runs:
        for epoch, value in enumerate(run["history"]["loss"]):
            if not math.isfinite(value):
                out.append((run_label(run), run["seed"], epoch))
                break
    return out


def _mean_std(values):
    return float(np.mean(values)), float(np.std(values))


def summarize(runs):
    """Per optimizer (and implementation, for runs that have one), mean and
    standard deviation over seeds of the last epoch's ``loss``, ``accuracy`` and
    ``val_accuracy`` (if present), ranked by mean loss.

    Returns a list of dicts ``{"rank", "optimizer", "implementation": str or
    None, "seeds", "loss": (mean, std), "accuracy": ..., "val_accuracy": ... or
    None}``, best first; a loss that is NaN ranks last.  The standard deviation
    is the population one (0 for one seed).
    """
    by_name = {}
    for run in runs:
        by_name.setdefault((run["optimizer"], run.get("implementation")), []).append(
            run["history"])
    rows = []
    for (name, implementation), histories in by_name.items():
        last = {k: [h[k][-1] for h in histories] for k in histories[0]}
        rows.append({"optimizer": name, "implementation": implementation,
                     "seeds": len(histories),
                     "loss": _mean_std(last["loss"]),
                     "accuracy": _mean_std(last["accuracy"]),
                     "val_accuracy": _mean_std(last["val_accuracy"])
                     if "val_accuracy" in last else None})
    rows.sort(key=lambda r: (math.isnan(r["loss"][0]), r["loss"][0]))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def format_table(rows):
    """The rows of :func:`summarize` as an aligned text table (with an
    ``implementation`` column when the rows have implementations)."""
    columns = [("loss", "final loss"), ("accuracy", "accuracy"),
               ("val_accuracy", "val accuracy")]
    columns = [(k, title) for k, title in columns if rows and rows[0][k] is not None]
    names = [("optimizer", "optimizer")]
    if any(r.get("implementation") for r in rows):
        names.append(("implementation", "implementation"))
    widths = [max(len(title), *(len(r[k] or "") for r in rows)) for k, title in names]
    cell = "{:.4f} ± {:.4f}"
    width = len(cell.format(0, 0))
    lines = [("rank" + "".join(f"  {title:<{w}}" for (_, title), w in zip(names, widths))
              + "".join(f"  {title:<{width}}" for _, title in columns)).rstrip()]
    for r in rows:
        lines.append(f"{r['rank']:>4}"
                     + "".join(f"  {r[k] or '':<{w}}" for (k, _), w in zip(names, widths))
                     + "".join(f"  {cell.format(*r[k]):>{width}}" for k, _ in columns))
    return "\n".join(lines)


def _finite_or_none(x):
    return x if math.isfinite(x) else None


def json_report(config, runs):
    """``{"config": config, "runs": runs}``, with non-finite numbers as ``None``
    so that the result is strict JSON.  A run is ``{"optimizer", "seed",
    "history"}``, with its ``"implementation"`` after the optimizer if it has one."""
    def one(r):
        out = {"optimizer": r["optimizer"]}
        if r.get("implementation") is not None:
            out["implementation"] = r["implementation"]
        out["seed"] = r["seed"]
        out["history"] = {k: [_finite_or_none(v) for v in values]
                          for k, values in r["history"].items()}
        return out
    return {"config": config, "runs": [one(r) for r in runs]}
