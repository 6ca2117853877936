"""The MPI side of tests/test_distributed.py: run with ``mpiexec -n N python
tests/mpi_worker.py``.

Every rank runs every scenario below.  A stepping scenario builds a
:class:`~fastopt.distributed.ShardedOptimizer` and, next to it on every rank,
the plain (unsharded) optimizer on a copy of the parameters, which it steps
with the mean of all ranks' gradients: each rank draws every rank's gradients
from seeds, so the reference needs no communication.  The reference mean is
``sum over ranks in rank order / N``, computed by NumPy in the dtype.

Two kinds of gradients:

* ``exact``: N times multiples of 2**-8 (N ranks), at most N in magnitude,
  so every sum over ranks, its mean, and every sum of squares of the means
  are exact whatever their order.  The sharded result must equal the
  reference bit for bit, in float32 and float64 alike, for every option
  (clipping by norm included).
* ``general``: normal draws with exact zeros, entries scaled by 1e3 and
  1e-4, and a coordinate of 1e-30.  Sums of two numbers do not depend on
  their order, so with 2 ranks the result must be bit for bit too, except
  where clipping by norm uses a sum of squares (added shard by shard, not in
  the reference's order).  Otherwise MPI's summation order is its own, and
  the tolerances of :data:`TOL` apply.

A case with ``tensor_sums`` (Lamb: its trust ratio reads each tensor's sums
of squares of the weights and of the update, summed shard by shard and then
all-reduced) is compared within :data:`TOL` for both kinds.

Rank 0 prints one line ``MPI_WORKER_RESULTS <json>``:
``{scenario: {"ok": bool, "detail": str, "max_diff": float}}``, a scenario
being ok when it passed on every rank (``max_diff``: the largest
|sharded - reference| of the parameters over the ranks; 0 is bit for bit).
Checks run after a scenario's collectives, so a failed check never leaves a
rank waiting.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import traceback

import numpy as np

import fastopt
from fastopt import schedules

#: float64: rtol, atol; float32: the same (see the module docstring)
TOL = {np.float64: (1e-12, 1e-14), np.float32: (2e-5, 1e-6)}
STEPS = 6

SHAPES = [(7,), (3, 5), (1,), (4, 4, 3), (40000,)]   # one tensor spans several chunks


def draw(kind, shapes, dtypes, step, rank, size):
    """Rank ``rank``'s gradients at ``step``, of ``size`` ranks."""
    rng = np.random.default_rng([step, rank, kind == "exact"])
    out = []
    for shape, dt in zip(shapes, dtypes):
        if kind == "exact":
            g = rng.integers(-256, 257, size=shape) * (size / 256.0)
        else:
            g = rng.standard_normal(shape)
            flat = g.reshape(-1)
            flat[rng.random(flat.size) < 0.15] = 0.0
            flat[rng.random(flat.size) < 0.05] *= 1e3
            flat[rng.random(flat.size) < 0.05] *= 1e-4
            if flat.size > 3:
                flat[3] = 1e-30 * (1 + step)
        out.append(np.ascontiguousarray(g, dtype=dt))
    return out


def mean_of(all_grads, i, size):
    total = all_grads[0][i].copy()
    for k in range(1, size):
        total += all_grads[k][i]
    return total / size


def initial(shapes, dtypes, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dt) for s, dt in zip(shapes, dtypes)]


class Case:
    """One stepping scenario: the optimizer, its options, the parameters'
    structure (``list``, ``dict`` or ``groups``) and which gradients are None."""

    def __init__(self, cls, shapes, dtypes, structure="list", none_at=None, clip=False,
                 groups=None, tensor_sums=False, **kw):
        self.cls, self.shapes, self.dtypes, self.kw = cls, shapes, dtypes, kw
        # the update reads per-tensor sums of squares of non-exact values
        # (Lamb's ||w||, ||u||): added shard by shard, never bit for bit
        self.tensor_sums = tensor_sums
        self.structure, self.none_at, self.clip, self.groups = structure, none_at, clip, groups

    def wrap(self, arrays, grads=False):
        """Parameters (or, with ``grads``, gradients) in the case's structure;
        with groups, the first is a dict and the others lists."""
        names = [f"layer_{i}/w" for i in range(len(arrays))]
        if self.structure == "dict":
            return dict(zip(names, arrays))
        if self.structure == "groups":
            out = []
            for g, (idx, extra) in enumerate(self.groups):
                part = [arrays[i] for i in idx]
                part = dict(zip([names[i] for i in idx], part)) if g == 0 else part
                out.append(part if grads else {"params": part, **extra})
            return out
        return list(arrays)

    def grads_at(self, grads, step):
        grads = list(grads)
        if self.none_at is not None and step % 2 == 1:
            grads[self.none_at] = None
        return self.wrap(grads, grads=True)


def run_case(comm, case, kind):
    """Step sharded and reference side by side; return the check's result."""
    from fastopt.distributed import ShardedOptimizer
    size, rank = comm.size, comm.rank
    p = initial(case.shapes, case.dtypes)
    q = [a.copy() for a in p]
    opt = ShardedOptimizer(case.cls, case.wrap(p), comm=comm, **case.kw)
    ref = case.cls(case.wrap(q), **case.kw)
    for t in range(STEPS):
        every = [draw(kind, case.shapes, case.dtypes, t, k, size) for k in range(size)]
        opt.step(case.grads_at(every[rank], t))
        ref.step(case.grads_at([mean_of(every, i, size) for i in range(len(p))], t))
    if case.kw.get("use_ema"):
        compare_arrays(_flat([opt.ema_params]), _flat([ref.ema_params]), exact(case, kind, size),
                       "ema_params")
        opt.finalize_variable_values()
        ref.finalize_variable_values()
    diff = compare_arrays(p, q, exact(case, kind, size), "params")
    if (opt.iterations, opt.calls) != (ref.iterations, ref.calls):
        raise AssertionError(f"(iterations, calls) {(opt.iterations, opt.calls)} != "
                             f"{(ref.iterations, ref.calls)}")
    return opt, ref, p, q, diff


def _flat(x):
    """The arrays of a params-like structure, in order."""
    if isinstance(x, np.ndarray):
        return [x]
    if isinstance(x, dict):
        return _flat(x["params"]) if "params" in x else _flat(list(x.values()))
    return [a for e in x for a in _flat(e)]


def exact(case, kind, size):
    """Whether this case must match bit for bit (see the module docstring)."""
    if case.tensor_sums:
        return False
    return kind == "exact" or (size <= 2 and not case.clip)


def compare_arrays(got, want, bitwise, what):
    """Check; return the largest |difference| (0.0: bit for bit)."""
    largest = 0.0
    for i, (a, b) in enumerate(zip(got, want)):
        if a.dtype != b.dtype or a.shape != b.shape:
            raise AssertionError(f"{what}[{i}]: {a.dtype}{a.shape} vs {b.dtype}{b.shape}")
        if bitwise:
            if not np.array_equal(a, b, equal_nan=True):
                d = np.max(np.abs(a.astype(float) - b))
                raise AssertionError(f"{what}[{i}] ({a.dtype}) differs bitwise, "
                                     f"max |diff| {d:.3g}")
        else:
            rtol, atol = TOL[a.dtype.type]
            if not np.allclose(a, b, rtol=rtol, atol=atol):
                d = np.max(np.abs(a.astype(float) - b))
                raise AssertionError(f"{what}[{i}] ({a.dtype}) beyond rtol {rtol}, atol {atol}: "
                                     f"max |diff| {d:.3g}")
        if a.size:
            largest = max(largest, float(np.max(np.abs(a.astype(float) - b))))
    return largest


F32, F64 = np.float32, np.float64
MIXED = [F64, F32, F64, F32, F32]
CASES = {
    "adam_float64": Case(fastopt.Adam, SHAPES, [F64] * 5, learning_rate=0.01, backend="numba"),
    "adam_float32": Case(fastopt.Adam, SHAPES, [F32] * 5, learning_rate=0.01, backend="numba"),
    "adam_amsgrad_mixed_clipvalue": Case(fastopt.Adam, SHAPES, MIXED, amsgrad=True,
                                         clipvalue=0.5, backend="numba"),
    "sgd_nesterov_torch_l2_exclude_maximize": Case(
        fastopt.SGD, SHAPES, MIXED, convention="torch", learning_rate=0.05, momentum=0.9,
        nesterov=True, weight_decay=0.01, exclude_from_weight_decay=[1, 3], maximize=True,
        backend="numba"),
    "adamw_dict_schedule_exclude_by_name": Case(
        fastopt.AdamW, SHAPES, [F64] * 5, structure="dict", weight_decay=0.1,
        exclude_from_weight_decay=["layer_0/w", "layer_4/w"],
        learning_rate=schedules.ExponentialDecay(0.01, decay_steps=2, decay_rate=0.5),
        backend="numba"),
    "rmsprop_clipnorm": Case(fastopt.RMSprop, SHAPES, MIXED, clip=True, clipnorm=0.5,
                             momentum=0.5, backend="numba"),
    "adagrad_global_clipnorm": Case(fastopt.Adagrad, SHAPES, [F64] * 5, clip=True,
                                    global_clipnorm=1.0, learning_rate=0.1, backend="numba"),
    "adam_torch_global_clipnorm": Case(fastopt.Adam, SHAPES, [F32] * 5, clip=True,
                                       global_clipnorm=1.0, convention="torch",
                                       weight_decay=0.01, backend="numba"),
    "adam_ema_overwrite": Case(fastopt.Adam, SHAPES, MIXED, use_ema=True, ema_momentum=0.9,
                               ema_overwrite_frequency=4, learning_rate=0.01, backend="numba"),
    "sgd_accumulation_loss_scale": Case(fastopt.SGD, SHAPES, [F64] * 5, momentum=0.9,
                                        gradient_accumulation_steps=2, loss_scale_factor=4.0,
                                        backend="numba"),
    "rmsprop_centered_param_groups": Case(
        fastopt.RMSprop, SHAPES, MIXED, structure="groups", centered=True, momentum=0.3,
        groups=[([0, 2, 4], {"learning_rate": 0.01}), ([1, 3], {"momentum": 0.0})],
        backend="numba"),
    "none_gradients": Case(fastopt.Adam, SHAPES, [F64] * 5, none_at=1, backend="numba"),
    "tiny_fewer_elements_than_ranks": Case(fastopt.Adam, [(1,), (2,)], [F64, F32],
                                           clip=True, global_clipnorm=0.1, backend="numba"),
    "many_tensors_auto_backend_cosine": Case(
        fastopt.Adam, [(k % 13,) if k % 3 else (k % 5, 4) for k in range(60)], [F32] * 60,
        learning_rate=schedules.CosineDecay(0.01, decay_steps=5)),
    "numpy_backend": Case(fastopt.SGD, SHAPES[:4], [F64] * 4, momentum=0.5, backend="numpy"),
    # host-side state (running products), the same on every rank
    "nadam_param_groups": Case(
        fastopt.Nadam, SHAPES, MIXED, structure="groups", learning_rate=0.01,
        groups=[([0, 2, 4], {"beta_1": 0.8}), ([1, 3], {})], backend="numba"),
    # two_phase: Lamb's per-tensor norms all-reduced over the shards (a rank
    # that used its shard's norms alone would be off by O(1), not by rounding)
    "lamb_mixed_weight_decay": Case(fastopt.Lamb, SHAPES, MIXED, tensor_sums=True,
                                    learning_rate=0.01, weight_decay=0.1, backend="numba"),
    "lamb_groups_clipnorm_none": Case(
        fastopt.Lamb, SHAPES, [F64] * 5, structure="groups", tensor_sums=True, clip=True,
        clipnorm=0.5, none_at=1, groups=[([0, 2, 4], {"learning_rate": 0.02}), ([1, 3], {})],
        backend="numba"),
    "lamb_tiny_fewer_elements_than_ranks": Case(fastopt.Lamb, [(1,), (2,)], [F64, F32],
                                                tensor_sums=True, learning_rate=0.1,
                                                backend="numba"),
    "lamb_numpy_backend": Case(fastopt.Lamb, SHAPES[:4], [F64] * 4, tensor_sums=True,
                               learning_rate=0.01, backend="numpy"),
    "nadam_torch_decoupled": Case(fastopt.NAdam, SHAPES, MIXED, learning_rate=0.01,
                                  weight_decay=0.1, decoupled_weight_decay=True,
                                  backend="numba"),
    # schedule-free AdamW: the average's weights and the mode per group
    "schedulefree_param_groups": Case(
        fastopt.ScheduleFreeAdamW, SHAPES, MIXED, structure="groups", learning_rate=0.01,
        groups=[([0, 2, 4], {"warmup_steps": 2, "weight_decay": 0.1}), ([1, 3], {})],
        backend="numba"),
}


def scenario_state(comm, case=CASES["adam_ema_overwrite"]):
    """state_dict per rank, consolidated state, files, other rank counts."""
    from mpi4py import MPI

    from fastopt.distributed import ShardedOptimizer
    opt, ref, p, q, _ = run_case(comm, case, "exact")
    size, rank = comm.size, comm.rank

    def more_steps(o, r, pp, qq, start, sub=None):
        """Step a loaded optimizer on; compare with the reference."""
        c = comm if sub is None else sub
        for t in range(start, start + 3):
            every = [draw("exact", case.shapes, case.dtypes, t, k, c.size)
                     for k in range(c.size)]
            if o is not None:
                o.step(every[c.rank])
            r.step([mean_of(every, i, c.size) for i in range(len(pp))])
        compare_arrays(pp, qq, True, "params after loading")

    # consolidated == the reference's state_dict, bit for bit
    full = opt.consolidated_state_dict(root=size - 1)
    if rank == size - 1:
        want = ref.state_dict()
        if list(full["slots"]) != list(want["slots"]) or full["config"] != want["config"] \
                or full["iterations"] != want["iterations"] or full["calls"] != want["calls"] \
                or full.get("host_state", {}).keys() != want.get("host_state", {}).keys() \
                or any(full["host_state"][k] != v for k, v in want.get("host_state", {}).items()):
            raise AssertionError("consolidated state differs from the unsharded state_dict")
        compare_arrays(list(full["slots"].values()), list(want["slots"].values()), True,
                       "consolidated slots")
    elif full is not None:
        raise AssertionError("consolidated_state_dict returned a state off the root")

    # per-rank round trip: a fresh optimizer over fresh copies continues identically
    own = opt.state_dict()
    p2 = [a.copy() for a in p]
    opt2 = ShardedOptimizer(case.cls, p2, comm=comm, **case.kw)
    opt2.load_state_dict(own)
    q2 = [a.copy() for a in q]
    ref2 = case.cls(q2, **case.kw)
    ref2.load_state_dict(ref.state_dict())
    more_steps(opt2, ref2, p2, q2, 100)

    # a file written on rank 0 ...
    folder = comm.bcast(tempfile.mkdtemp(prefix="fastopt-mpi-") if rank == 0 else None)
    path = os.path.join(folder, "state.npz")
    fastopt.save_state(opt, path)  # the same as opt.save_state(path)
    # ... loads into a plain optimizer (here on every rank, each alone)
    q3 = [a.copy() for a in q]
    plain = case.cls(q3, **case.kw)
    fastopt.load_state(plain, path)
    # ... into one rank alone (COMM_SELF) ...
    p4 = [a.copy() for a in p]
    alone = ShardedOptimizer(case.cls, p4, comm=MPI.COMM_SELF, **case.kw)
    alone.load_state(path)
    q4 = [a.copy() for a in q]
    ref4 = case.cls(q4, **case.kw)
    ref4.load_state_dict(ref.state_dict())
    more_steps(alone, ref4, p4, q4, 200, sub=MPI.COMM_SELF)
    more_steps(None, plain, q3, q4, 200, sub=MPI.COMM_SELF)  # plain == reference
    # ... and into the first size - 1 ranks (any other number of ranks)
    sub = comm.Split(0 if rank < max(size - 1, 1) else MPI.UNDEFINED, rank)
    if sub != MPI.COMM_NULL:
        p5 = [a.copy() for a in p]
        fewer = ShardedOptimizer(case.cls, p5, comm=sub, **case.kw)
        fewer.load_state(path)
        q5 = [a.copy() for a in q]
        ref5 = case.cls(q5, **case.kw)
        ref5.load_state_dict(ref.state_dict())
        more_steps(fewer, ref5, p5, q5, 300, sub=sub)
        sub.Free()
    comm.Barrier()
    if rank == 0:
        os.unlink(path)
        os.rmdir(folder)


def scenario_state_mid_accumulation(comm):
    """The same round trips stopped in the middle of an accumulation cycle
    (STEPS calls, 4 per update), each resumed across the next update."""
    case = Case(fastopt.Adam, SHAPES, MIXED, use_ema=True, gradient_accumulation_steps=4,
                learning_rate=schedules.ExponentialDecay(0.01, decay_steps=2, decay_rate=0.5),
                backend="numba")
    assert STEPS % 4 and STEPS > 4
    scenario_state(comm, case)


def scenario_state_nadam_mid_accumulation(comm):
    """The round trips of an optimizer with host state (Nadam's running
    product), stopped in the middle of an accumulation cycle."""
    case = Case(fastopt.Nadam, SHAPES, MIXED, gradient_accumulation_steps=4,
                learning_rate=0.01, backend="numba")
    scenario_state(comm, case)


def scenario_schedulefree_modes(comm):
    """eval() and train() on the shards, then the all-gather: every rank's
    parameters are the unsharded optimizer's x, then y again; the mode is in
    the consolidated state; a step in eval mode fails on every rank with
    nothing changed."""
    case = CASES["schedulefree_param_groups"]
    opt, ref, p, q, _ = run_case(comm, case, "exact")
    opt.eval()
    ref.eval()
    compare_arrays(p, q, True, "params at x")
    full = opt.consolidated_state_dict()
    if comm.rank == 0 and full["host_state"] != ref.state_dict()["host_state"]:
        raise AssertionError(f"host state {full['host_state']} != {ref.host_state()}")
    before = [a.copy() for a in p]
    every = [draw("exact", case.shapes, case.dtypes, STEPS, k, comm.size)
             for k in range(comm.size)]
    expect_error(comm, lambda: opt.step(case.grads_at(every[comm.rank], STEPS)),
                 RuntimeError, "eval mode: call train() first")
    compare_arrays(p, before, True, "params after the refused step")
    opt.train()
    ref.train()
    opt.step(case.grads_at(every[comm.rank], STEPS))
    ref.step(case.grads_at([mean_of(every, i, comm.size) for i in range(len(p))], STEPS))
    compare_arrays(p, q, True, "params after train() and a step")


def scenario_state_bytes(comm):
    """Each rank holds its shard's state: the shares add up to the whole."""
    from fastopt.distributed import ShardedOptimizer
    shapes, dtypes = SHAPES, MIXED
    p = initial(shapes, dtypes)
    opt = ShardedOptimizer(fastopt.Adam, p, comm=comm)
    plain = fastopt.Adam(initial(shapes, dtypes))
    whole = sum(a.nbytes for a in plain.state_dict()["slots"].values())
    parts = comm.allgather(opt.state_nbytes)
    if sum(parts) != whole:
        raise AssertionError(f"per-rank state bytes {parts} do not add up to {whole}")
    # at most one element of each dtype more than an even share, per slot
    bound = 2 * sum(-(-L.total // comm.size) * L.dtype.itemsize for L in opt._layouts)
    if max(parts) > bound:
        raise AssertionError(f"per-rank state bytes {parts} above the even share {bound}")


def scenario_fit_checkpoint_resume(comm):
    """fit with DataParallelModel: a checkpointed, resumed run equals an
    uninterrupted one bit for bit, and the file resumes in one process too."""
    from fastopt import train
    from fastopt.distributed import DataParallelModel, ShardedOptimizer
    X, y, _ = train.load_builtin()
    X, y = X[:300], y[:300]
    folder = comm.bcast(tempfile.mkdtemp(prefix="fastopt-mpi-") if comm.rank == 0 else None)
    path = os.path.join(folder, "run.npz")

    def run(epochs, parallel=True, **kw):
        model = train.MLP(4, hidden=(6,), seed=0, dtype="float64")
        if parallel:
            opt = ShardedOptimizer(fastopt.Adam, model.params, comm=comm, learning_rate=0.01)
            model = DataParallelModel(model, comm)
        else:
            opt = fastopt.Adam(model.params, learning_rate=0.01)
        h = train.fit(model, X, y, opt, epochs=epochs, batch_size=16, verbose=0, **kw)
        return h.history, model.flat_params

    whole, w_whole = run(3)
    run(2, callbacks=[train.Checkpoint(path)])
    resumed, w_resumed = run(3, resume=path)
    alone, w_alone = run(3, parallel=False, resume=path)
    comm.Barrier()
    if comm.rank == 0:
        os.unlink(path)
        os.rmdir(folder)
    if resumed != whole:
        raise AssertionError(f"resumed history {resumed} != uninterrupted {whole}")
    compare_arrays([w_resumed], [w_whole], True, "weights after resuming")
    for k in whole:  # another order of sums only
        compare_arrays([np.array(alone[k])], [np.array(whole[k])], False, f"history {k}")
    compare_arrays([w_alone], [w_whole], False, "weights resumed in one process")


def scenario_fit_rank_local_callbacks(comm):
    """Callbacks on some ranks only -- a progress bar on rank 0 (verbose=2
    there, 0 elsewhere) and a callback that asks to stop after the second
    epoch on the last rank only: every rank runs the same epochs and ends
    with the same weights (it used to leave the ranks in different
    collectives)."""
    from fastopt import train
    from fastopt.distributed import DataParallelModel, ShardedOptimizer
    X, y, _ = train.load_builtin()
    X, y = X[:96], y[:96]

    class StopAfterTwo(train.Callback):
        def on_epoch_end(self, epoch, logs):
            return epoch >= 1

    model = train.MLP(4, hidden=(5,), seed=0, dtype="float64")
    opt = ShardedOptimizer(fastopt.Adam, model.params, comm=comm, learning_rate=0.01)
    model = DataParallelModel(model, comm)
    last = comm.rank == comm.size - 1
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        h = train.fit(model, X, y, opt, epochs=5, batch_size=16,
                      verbose=2 if comm.rank == 0 else 0,
                      callbacks=[StopAfterTwo()] if last else [])
    epochs = comm.allgather(len(h.history["loss"]))
    if epochs != [2] * comm.size:
        raise AssertionError(f"epochs run per rank: {epochs} (every rank should stop after 2)")
    weights = comm.allgather(model.flat_params.copy())
    compare_arrays(weights[1:], weights[:-1], True, "weights across ranks")


def expect_error(comm, fn, cls, *fragments):
    """``fn`` must raise ``cls`` on every rank, its message holding the
    fragments (checked on the ranks listed with each fragment)."""
    try:
        fn()
    except cls as e:
        message = str(e)
    except Exception as e:  # noqa: BLE001 - reported as the failure
        raise AssertionError(f"expected {cls.__name__}, got {type(e).__name__}: {e}") from e
    else:
        raise AssertionError(f"expected {cls.__name__} on rank {comm.rank}, nothing raised")
    for fragment in fragments:
        ranks, text = fragment if isinstance(fragment, tuple) else (None, fragment)
        if (ranks is None or comm.rank in ranks) and text not in message:
            raise AssertionError(f"rank {comm.rank}: {text!r} not in the message {message!r}")
    return message


def scenario_errors(comm):
    """Bad input on some ranks: every rank raises, nobody waits, nothing changes."""
    from fastopt.distributed import ShardedOptimizer
    size, rank = comm.size, comm.rank
    last = size - 1
    shapes, dtypes = SHAPES[:4], [F64] * 4
    others = [r for r in range(size) if r != last]

    def build(shapes=shapes, dtypes=dtypes, seed=1, **kw):
        return ShardedOptimizer(fastopt.Adam, initial(shapes, dtypes, seed), comm=comm,
                                **{"learning_rate": 0.01, **kw})

    odd = rank == last and size > 1
    if size > 1:
        bad_shapes = [(7,), (5, 3), (1,), (4, 4, 3)] if odd else shapes
        expect_error(comm, lambda: build(shapes=bad_shapes), ValueError,
                     f"rank {last} has shape (5, 3)", "rank 0 has shape (3, 5)", "params[1]")
        expect_error(comm, lambda: build(dtypes=[F64, F32 if odd else F64, F64, F64]),
                     ValueError, "dtype float32", "params[1]")
        expect_error(comm, lambda: build(shapes=shapes[:3] if odd else shapes,
                                         dtypes=dtypes[:3] if odd else dtypes),
                     ValueError, f"rank {last} has 3")
        expect_error(comm, lambda: build(learning_rate=0.02 if odd else 0.01), ValueError,
                     "learning_rate=0.02")
        expect_error(comm, lambda: build(seed=2 if odd else 1), ValueError,
                     "the values of params[0] differ", f"rank {last}")
        expect_error(comm, lambda: build(learning_rate=-1.0 if odd else 0.01), ValueError,
                     ([last], "learning_rate must be >= 0"),
                     (others, f"rank {last} of {size} failed"))
    expect_error(comm, lambda: ShardedOptimizer(fastopt.Adam([np.zeros(3)]), [np.zeros(3)],
                                                comm=comm),
                 TypeError, "optimizer_cls must be a fastopt optimizer class")

    # a step with a bad gradient on one rank changes nothing anywhere
    opt = build()
    p = opt.params
    ref = fastopt.Adam(initial(shapes, dtypes), learning_rate=0.01)
    before = [a.copy() for a in p]
    state_before = opt.state_dict()
    grads = draw("general", shapes, dtypes, 0, rank, size)
    bad = list(grads)
    if rank == last:
        bad[2] = np.zeros((2,))
    expect_error(comm, lambda: opt.step(bad), ValueError, ([last], "grads[2] has shape (2,)"),
                 (others, f"rank {last} of {size} failed"))
    if size > 1:
        bad = list(grads)
        if odd:
            bad[1] = None
        expect_error(comm, lambda: opt.step(bad), ValueError,
                     "grads[1] is None on some ranks but not on others")
        expect_error(comm, lambda: opt.step(grads[:3] if odd else grads), ValueError,
                     ([last], "expected 4 gradient(s)"))
    compare_arrays(p, before, True, "params after rejected steps")
    if opt.iterations != 0:
        raise AssertionError("iterations moved on a rejected step")
    compare_arrays(list(opt.state_dict()["slots"].values()),
                   list(state_before["slots"].values()), True, "slots after rejected steps")
    # a state that one rank rejects: every rank raises, none changes
    opt.step(grads)
    every = [draw("general", shapes, dtypes, 0, k, size) for k in range(size)]
    ref.step([mean_of(every, i, size) for i in range(4)])
    kept = opt.state_dict()
    good = ref.state_dict()
    state = {**good, "slots": dict(good["slots"])}
    if rank == last:
        state["slots"]["velocity/2"] = np.zeros((3,))
    expect_error(comm, lambda: opt.load_state_dict(state), ValueError,
                 ([last], "slot 'velocity/2' has shape (3,)"),
                 (others, f"rank {last} of {size} failed"))
    compare_arrays(list(opt.state_dict()["slots"].values()), list(kept["slots"].values()), True,
                   "slots after a rejected load")
    if opt.iterations != 1:
        raise AssertionError("iterations changed by a rejected load")
    # still in step with the others: one more good step matches the reference
    opt.step(grads)
    ref.step([mean_of(every, i, size) for i in range(4)])
    compare_arrays(p, ref.params, size <= 2, "params after the errors")


SCENARIOS = [f"{name}/{kind}" for name in CASES for kind in ("exact", "general")] + [
    "state", "state_mid_accumulation", "state_nadam_mid_accumulation", "state_bytes",
    "schedulefree_modes",
    "fit_checkpoint_resume", "fit_rank_local_callbacks", "errors"]


def main():
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    results = {}
    for name in SCENARIOS:
        diff = 0.0
        try:
            if "/" in name:
                case, kind = name.split("/")
                diff = run_case(comm, CASES[case], kind)[-1]
            else:
                globals()["scenario_" + name](comm)
            outcome = None
        except Exception as e:  # noqa: BLE001 - every failure is reported
            outcome = f"rank {comm.rank}: {type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"
        outcomes = comm.gather((outcome, diff), root=0)
        if comm.rank == 0:
            failed = [o for o, _ in outcomes if o is not None]
            results[name] = {"ok": not failed, "detail": "\n".join(failed),
                             "max_diff": max(d for _, d in outcomes)}
    if comm.rank == 0:
        print("MPI_WORKER_RESULTS " + json.dumps(results))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
