"""A failure on one rank: run with ``mpiexec -n 2 python tests/mpi_failures.py CASE``.

Each case (:data:`CASES`) makes one collective call fail on rank 1 only (or,
for ``inf_gradient``, gives rank 1 a gradient that would make NumPy raise
there), the other ranks calling it normally.  Every rank then prints one line
``MPI_FAILURE <json>``: its rank, the error it got (``"kind"``, ``"message"``;
None for none), whether its parameters and optimizer state are what they
were before the call (``"unchanged"``), and whether a good step afterwards
still keeps the ranks in step (``"in_step"``).  tests/test_distributed.py
checks the lines, under a timeout: before these failures were agreed on, each
case left the other rank waiting in a collective for ever.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

import numpy as np

import fastopt

SHAPES = [(7,), (3, 5), (4,)]
BAD = 1  # the rank that fails


def initial():
    rng = np.random.default_rng(1)
    return [rng.standard_normal(s) for s in SHAPES]


def grads(step, rank):
    rng = np.random.default_rng([step, rank])
    return [rng.standard_normal(s) for s in SHAPES]


def arrays(params):
    """The arrays of a list or dict of parameters, in order."""
    return list(params.values()) if isinstance(params, dict) else list(params)


def snapshot(opt, params):
    """Copies of what a failed call must leave alone."""
    state = opt.state_dict()
    return ([np.array(a) for a in arrays(params)], state["iterations"],
            {k: np.array(v) for k, v in state["slots"].items()})


def same(a, b):
    (p, it, slots), (q, it2, slots2) = a, b
    return (it == it2 and all(np.array_equal(x, y, equal_nan=True) for x, y in zip(p, q))
            and slots.keys() == slots2.keys()
            and all(np.array_equal(slots[k], slots2[k], equal_nan=True) for k in slots))


def in_step(comm, opt, params):
    """One good step more: the same parameters and iteration on every rank."""
    g = [np.full_like(a, 0.5 + comm.rank) for a in arrays(params)]
    opt.step(dict(zip(params, g)) if isinstance(params, dict) else g)
    mine = (opt.iterations, b"".join(np.ascontiguousarray(a).tobytes() for a in arrays(params)))
    return all(x == mine for x in comm.allgather(mine))


def build(comm, **kw):
    """A sharded Adam, one good step taken (so that it has state)."""
    from fastopt.distributed import ShardedOptimizer
    params = initial()
    opt = ShardedOptimizer(fastopt.Adam, params, comm=comm, **{"learning_rate": 0.01, **kw})
    opt.step(grads(0, comm.rank))
    return opt, params


def schedule(fail):
    """0.01, except at iteration 1 on rank BAD, where ``fail(calls)`` decides
    (``calls``: how many times the schedule was evaluated there, this one
    included)."""
    from mpi4py import MPI
    rank, calls = MPI.COMM_WORLD.rank, []

    def lr(t):
        if rank == BAD and t == 1:
            calls.append(t)
            return fail(len(calls))
        return 0.01
    return lr


def case_schedule_nan(comm):
    """A schedule that returns NaN once, on rank BAD."""
    opt, params = build(comm, learning_rate=schedule(lambda k: float("nan") if k == 1 else 0.01))
    return opt, params, lambda: opt.step(grads(1, comm.rank))


def case_schedule_raises(comm):
    """A schedule that raises ZeroDivisionError once, on rank BAD."""
    opt, params = build(comm, learning_rate=schedule(lambda k: 1 / (k - 1) and 0.01))
    return opt, params, lambda: opt.step(grads(1, comm.rank))


def case_schedule_fails_when_evaluated_again(comm):
    """A schedule that is fine when the step checks it and raises when the
    wrapped optimizer evaluates it again, after the exchange has begun:
    nothing can be agreed any more, so every rank is aborted."""
    def fail(k):
        if k == 2:
            raise RuntimeError("this schedule fails on its second call")
        return 0.01
    opt, params = build(comm, learning_rate=schedule(fail))
    return opt, params, lambda: opt.step(grads(1, comm.rank))


def _truncated_copy(comm, path):
    """``path`` on the good ranks; on rank BAD a copy cut to half its size."""
    if comm.rank != BAD:
        return path
    with open(path, "rb") as f:
        data = f.read()
    cut = path + ".truncated"
    with open(cut, "wb") as f:
        f.write(data[:len(data) // 2])
    return cut


def case_load_state_truncated(comm, folder):
    opt, params = build(comm)
    path = os.path.join(folder, "state.npz")
    opt.save_state(path)
    opt.step(grads(1, comm.rank))  # so that loading the file would change the state
    mine = _truncated_copy(comm, path)
    return opt, params, lambda: opt.load_state(mine)


def case_resume_truncated(comm, folder):
    """fit(resume=...) with a DataParallelModel, rank BAD's copy of the
    checkpoint truncated."""
    from fastopt import train
    from fastopt.distributed import DataParallelModel, ShardedOptimizer
    X, y, _ = train.load_builtin()
    X, y = X[:64], y[:64]
    path = os.path.join(folder, "run.npz")

    def model_and_optimizer():
        model = train.LogisticRegression(4, seed=0, dtype="float64")
        opt = ShardedOptimizer(fastopt.Adam, model.params, comm=comm, learning_rate=0.01)
        return DataParallelModel(model, comm), opt
    model, opt = model_and_optimizer()
    train.fit(model, X, y, opt, epochs=1, batch_size=16, verbose=0,
              callbacks=[train.Checkpoint(path)])
    mine = _truncated_copy(comm, path)
    model, opt = model_and_optimizer()
    return opt, model.params, lambda: train.fit(model, X, y, opt, epochs=2, batch_size=16,
                                                verbose=0, resume=mine)


def case_fit_bad_data(comm):
    """fit with a DataParallelModel where rank BAD's shard of the data holds
    a NaN: fit's data check fails on that rank only."""
    from fastopt import train
    from fastopt.distributed import DataParallelModel, ShardedOptimizer
    X, y, _ = train.load_builtin()
    X, y = X[:32].copy(), y[:32]
    if comm.rank == BAD:
        X[3, 1] = np.nan
    model = train.LogisticRegression(4, seed=0, dtype="float64")
    opt = ShardedOptimizer(fastopt.Adam, model.params, comm=comm, learning_rate=0.01)
    dp = DataParallelModel(model, comm)
    return opt, model.params, lambda: train.fit(dp, X, y, opt, epochs=1, batch_size=16,
                                                verbose=0)


def case_callback_fails(comm):
    """fit with a DataParallelModel and a callback that raises on rank BAD
    only (a progress bar writing to a closed stream, say), when training
    begins: before any step, so nothing may have changed."""
    from fastopt import train
    from fastopt.distributed import DataParallelModel, ShardedOptimizer
    X, y, _ = train.load_builtin()
    X, y = X[:32], y[:32]

    class Fails(train.Callback):
        def on_train_begin(self, logs=None):
            if comm.rank == BAD:
                raise OSError("the log stream is closed")

    model = train.LogisticRegression(4, seed=0, dtype="float64")
    opt = ShardedOptimizer(fastopt.Adam, model.params, comm=comm, learning_rate=0.01)
    dp = DataParallelModel(model, comm)
    train.fit(dp, X, y, opt, epochs=1, batch_size=16, verbose=0)  # a good epoch first
    return opt, model.params, lambda: train.fit(dp, X, y, opt, epochs=3, batch_size=16,
                                                verbose=0, callbacks=[Fails()])


def case_backend_missing(comm):
    """backend="cython" where rank BAD cannot load the extension."""
    from fastopt import backends
    from fastopt.distributed import ShardedOptimizer
    if comm.rank == BAD:
        real = backends.get_backend

        def get_backend(name):
            if name == "cython":
                raise ImportError("backend 'cython' is not available here (simulated)")
            return real(name)
        backends.get_backend = get_backend
    opt, params = build(comm, backend="numpy")
    # the parameters of the optimizer that fails to build: opt's own
    return opt, params, lambda: ShardedOptimizer(fastopt.Adam, params, comm=comm,
                                                 learning_rate=0.01, backend="cython")


def case_forward_fails(comm):
    """DataParallelModel's forward pass raises on rank BAD."""
    from fastopt import train
    from fastopt.distributed import DataParallelModel, ShardedOptimizer
    model = train.MLP(4, hidden=(3,), seed=0, dtype="float64")
    opt = ShardedOptimizer(fastopt.Adam, model.params, comm=comm)
    dp = DataParallelModel(model, comm)
    X = np.ones((8, 4 if comm.rank != BAD else 5))
    return opt, model.params, lambda: dp.forward(X)


def case_backward_fails(comm):
    """DataParallelModel's backward pass raises on rank BAD (a dz of the wrong
    width), so that rank would never reach the step that follows."""
    from fastopt import train
    from fastopt.distributed import DataParallelModel, ShardedOptimizer
    model = train.MLP(4, hidden=(3,), seed=0, dtype="float64")
    opt = ShardedOptimizer(fastopt.Adam, model.params, comm=comm)
    dp = DataParallelModel(model, comm)
    z, cache = dp.forward(np.ones((8, 4)))
    dz = np.ones((8, z.shape[1] + (comm.rank == BAD)))
    return opt, model.params, lambda: dp.backward(cache, dz)


def case_inf_gradient(comm):
    """An inf gradient element in rank BAD's shard, under np.seterr(all="raise"),
    with the NumPy backend (which would raise FloatingPointError on the shard's
    owner alone): the step completes on every rank, NaN where the plain
    optimizer puts NaN, and raises nothing."""
    opt, params = build(comm, backend="numpy")
    g = grads(1, comm.rank)
    if comm.rank == BAD:
        g[-1][-1] = np.inf  # the last element: in the last rank's shard (BAD's, on 2 ranks)
    np.seterr(all="raise")
    return opt, params, lambda: opt.step(g)


def check_inf_gradient(comm, params):
    """The plain optimizer on the mean gradients, floating-point errors ignored."""
    ref_params = initial()
    ref = fastopt.Adam(ref_params, learning_rate=0.01, backend="numpy")
    with np.errstate(all="ignore"):
        for t in range(2):
            every = [grads(t, r) for r in range(comm.size)]
            if t == 1:
                every[BAD][-1][-1] = np.inf
            ref.step([sum(e[i] for e in every) / comm.size for i in range(len(SHAPES))])
    return bool(all(np.array_equal(a, b, equal_nan=True) for a, b in zip(params, ref_params))
                and np.isnan(params[-1][-1]))


CASES = ["schedule_nan", "schedule_raises", "schedule_fails_when_evaluated_again",
         "load_state_truncated", "resume_truncated", "fit_bad_data", "callback_fails",
         "backend_missing",
         "forward_fails",
         "backward_fails", "inf_gradient"]


def main(case):
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    folder = None  # only the cases with files (an aborted case cleans up nothing)
    if "truncated" in case:
        folder = comm.bcast(tempfile.mkdtemp(prefix="fastopt-mpi-") if comm.rank == 0 else None)
    make = globals()["case_" + case]
    opt, params, call = make(comm) if folder is None else make(comm, folder)
    before = snapshot(opt, params)
    error = None
    try:
        call()
    except Exception as e:  # noqa: BLE001 - reported
        error = {"kind": type(e).__name__, "message": str(e)}
    np.seterr(all="warn")
    result = {"rank": comm.rank, "error": error}
    if case == "inf_gradient":
        result["matches_plain"] = check_inf_gradient(comm, params)
    else:
        result["unchanged"] = same(snapshot(opt, params), before)
    result["in_step"] = in_step(comm, opt, params)
    print("MPI_FAILURE " + json.dumps(result), flush=True)
    comm.Barrier()
    if comm.rank == 0 and folder is not None:
        for name in os.listdir(folder):
            os.unlink(os.path.join(folder, name))
        os.rmdir(folder)


if __name__ == "__main__":
    main(sys.argv[1])
