"""Data-parallel training with fastopt over MPI.

Trains the logistic regression (or an MLP) of ``fastopt compare`` on the
built-in data with ``fastopt.train.fit``, data-parallel: every rank holds the
model, computes the forward and backward passes on its own slice of each
batch (:class:`fastopt.distributed.DataParallelModel`), the gradients are
averaged and the optimizer state is sharded over the ranks
(:class:`fastopt.distributed.ShardedOptimizer`).  Every batch is the one the
single-process run sees, so the history is the same, up to the rounding of
sums taken in another order::

    mpiexec -n 2 python examples/mpi_train.py                 # data-parallel
    mpiexec -n 2 python examples/mpi_train.py --compare       # and the single-process run
    python examples/mpi_train.py --single                     # single process, no MPI

Rank 0 prints the history (and, with ``--json PATH``, writes it as JSON).
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from fastopt import train


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=train.comparison.MODELS, default="logistic")
    p.add_argument("--hidden", default="16", help="MLP layer sizes, e.g. 32,16")
    p.add_argument("--optimizer", choices=list(train.OPTIMIZERS), default="adam")
    p.add_argument("--learning-rate", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.3)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--backend", default="auto")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--single", action="store_true", help="one process, without MPI")
    mode.add_argument("--compare", action="store_true",
                      help="rank 0 also runs the single-process training and compares")
    p.add_argument("--json", metavar="PATH", help="rank 0 writes the histories here")
    return p.parse_args(argv)


def data(dtype):
    """The built-in data, split and standardised as ``fastopt compare`` does."""
    X, y, _ = train.load_builtin()
    X_train, X_test, y_train, y_test = train.train_test_split(X, y, test_size=0.3, seed=0)
    scaler = train.Standardizer().fit(X_train)
    return (scaler.transform(X_train).astype(dtype), y_train,
            scaler.transform(X_test).astype(dtype), y_test)


def run(args, comm=None):
    """Train once; data-parallel over ``comm``, or in this process alone if None."""
    X_train, y_train, X_test, y_test = data(args.dtype)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    model = train.comparison.make_model(args.model, X_train.shape[1], args.seed, hidden=hidden,
                             dtype=args.dtype)
    recipe = train.OPTIMIZERS[args.optimizer]
    options = {**recipe.options, "learning_rate": args.learning_rate, "backend": args.backend}
    if recipe.takes_momentum:
        options["momentum"] = args.momentum
    if comm is None:
        optimizer = recipe.cls(model.params, **options)
    else:
        from fastopt.distributed import DataParallelModel, ShardedOptimizer
        optimizer = ShardedOptimizer(recipe.cls, model.params, comm=comm, **options)
        model = DataParallelModel(model, comm)
    history = train.fit(model, X_train, y_train, optimizer, epochs=args.epochs,
                        batch_size=args.batch_size, seed=args.seed,
                        validation_data=(X_test, y_test), verbose=0)
    return history.history, model.flat_params.copy()


def show(title, history):
    print(title)
    print("epoch  loss        accuracy  val_loss    val_accuracy")
    for e, row in enumerate(zip(*(history[k] for k in
                                  ("loss", "accuracy", "val_loss", "val_accuracy")))):
        print(f"{e + 1:5d}  {row[0]:.8f}  {row[1]:.4f}    {row[2]:.8f}  {row[3]:.4f}")


def main(argv=None):
    args = parse(argv)
    if args.single:
        history, weights = run(args)
        report = {"ranks": 1, "history": history, "weights": weights.tolist()}
        show("single process", history)
    else:
        from fastopt.distributed._mpi import mpi
        comm = mpi().COMM_WORLD
        history, weights = run(args, comm)
        if comm.rank != 0:
            return 0
        report = {"ranks": comm.size, "history": history, "weights": weights.tolist()}
        show(f"data-parallel, {comm.size} ranks ({args.model}, {args.optimizer}, "
             f"{args.dtype})", history)
        if args.compare:
            single, single_weights = run(args)
            show("single process", single)
            worst = max(abs(a - b) for k in history for a, b in zip(history[k], single[k]))
            print(f"largest difference between the histories: {worst:.3g}; between the "
                  f"final weights: {np.max(np.abs(weights - single_weights)):.3g}")
            report["single"] = {"history": single, "weights": single_weights.tolist()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
