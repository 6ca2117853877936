"""ZeRO-1 data parallelism: the optimizer state sharded over MPI ranks.

Every rank holds all the parameters and computes gradients on its own data.
The parameters of each dtype are laid end to end in one flat index space and
cut into one contiguous shard per rank (sizes differ by at most one element).
One :meth:`ShardedOptimizer.step`:

1. checks the local gradients and evaluates the learning-rate schedules, then
   one small ``Allreduce`` makes every rank agree that all of them are fine
   (no rank failed, same call count, same ``None`` gradients);
2. ``Reduce_scatter`` (sum) of the flat gradients: each rank receives the
   sum over ranks of its own shard only, and divides it by the number of
   ranks (the mean);
3. the wrapped fastopt optimizer, which holds the state of this shard only,
   updates the shard in place: one fused kernel call per group, every option
   of the optimizer included (clipping by norm adds up the per-tensor sums
   of squares across ranks with one small ``Allreduce``);
4. ``Allgatherv`` of the updated shards into every rank's parameters.

Reduce-scatter plus all-gather moves the same bytes as one all-reduce of the
gradients, but each rank keeps and updates only 1/N of the optimizer state.

Failures (:mod:`._mpi`): any exception in the local work before a collective
becomes an error on every rank, with nothing changed; steps 2 to 4 are only
arithmetic and collectives, with NumPy's floating-point errors ignored (NaN
and inf propagate, as in the compiled kernels), and an exception there all
the same (out of memory, a schedule that fails only when evaluated again)
aborts every rank with a message rather than leave the others waiting.
"""
from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np

from ..params import ParamTree
from ..pipeline import update_counts
from ..protocol import missing_members
from ..state import STATE_KEYS, is_state_dict, read_state, state_to_arrays, write_npz_atomic
from ._mpi import agree, agreed, communicator, mpi, or_abort
from .layout import ShardLayout
from .signature import comparable_config, disagreement

__all__ = ["ShardedOptimizer"]


class ShardedOptimizer:
    """A fastopt optimizer for data-parallel training over MPI, its state
    sharded across the ranks (ZeRO stage 1).

    Every rank of ``comm`` builds it with the same parameters (the same
    shapes, dtypes and initial values) and the same hyperparameters, and calls
    :meth:`step` with the gradients of its own data.  Each step averages the
    gradients over the ranks (``Reduce_scatter``), updates this rank's
    contiguous shard of the parameters with ``optimizer_cls`` (one fused
    kernel call per group, as without MPI), and gathers the updated shards
    into every rank's parameters (``Allgatherv``).  Each rank keeps the
    optimizer state of its shard only: about ``1/comm.size`` of it.

    The result is the unsharded optimizer stepping on the mean of the ranks'
    gradients, bit for bit (float32 and float64) when the sums involved do
    not depend on their order (with two ranks the sum over ranks never
    does), otherwise within their rounding: MPI picks the order of the sum
    over ranks, and clipping by norm adds the sums of squares shard by shard.

    Parameters
    ----------
    optimizer_cls : type
        A fastopt optimizer class: ``fastopt.Adam``, ``fastopt.SGD``, ...
    params : ndarray, list or dict of ndarray, or list of parameter groups
        As for ``optimizer_cls``; every rank's full parameters, updated in
        place.  float32 and float64 may be mixed (each dtype is sharded on
        its own).
    comm : mpi4py.MPI.Intracomm, optional
        Default ``MPI.COMM_WORLD``.
    **hyperparameters
        Passed to ``optimizer_cls``: every option works (schedules, both
        conventions, weight decay and its exclusions, the three clip options,
        EMA, gradient accumulation, loss scaling, ``maximize``, backend).

    Raises
    ------
    TypeError, ValueError
        On every rank, when any rank's arguments are bad or the ranks
        disagree on the parameters' number, names, shapes, dtypes or values,
        or on the hyperparameters (checked collectively before any data is
        exchanged).  Any other error on one rank (say an ImportError for a
        backend missing there) is raised there, and the other ranks raise a
        RuntimeError that names that rank and its error.
    ImportError
        When mpi4py is not installed (``pip install 'fastopt[mpi]'``).

    Notes
    -----
    Collective methods, which every rank must call together: the constructor,
    :meth:`step`, :meth:`load_state_dict`, :meth:`consolidated_state_dict`,
    :meth:`save_state`, :meth:`load_state`, :meth:`agree`, :attr:`ema_params`
    and :meth:`finalize_variable_values`.  :meth:`state_dict` is per rank.
    """

    #: what the wrapped class must offer (see :mod:`fastopt.protocol`): the
    #: protocol, less what only exists once built, plus the per-tensor
    #: reductions hook and the live state arrays
    _WRAPPABLE = ("step", "get_config", "state_dict", "load_state_dict", "state_arrays",
                  "reduce_tensor_sums", "finalize_variable_values")

    def __init__(self, optimizer_cls, params, comm=None, **hyperparameters):
        owner = type(self).__name__
        comm = communicator(owner, comm)
        self.comm, self.rank, self.size = comm, comm.rank, comm.size
        error = signature = None
        try:
            signature = self._build(owner, optimizer_cls, params, hyperparameters)
        except Exception as e:  # noqa: BLE001 - every kind must reach the other ranks
            error = e
        signatures = comm.allgather((error is not None, signature))
        agree(comm, error, owner, failed=any(f for f, _ in signatures))
        message = disagreement([s for _, s in signatures])
        if message:
            raise ValueError(f"{owner}: {message}")
        self._flags = np.zeros(3 + 2 * self._n, dtype=np.int64)
        self._tensor_sums = np.zeros(self._n)  # the buffer of reduce_tensor_sums
        # the protocol's per-tensor reductions hook: sums over the ranks' shards
        self._inner.reduce_tensor_sums = self._sum_over_ranks

    def _build(self, owner, optimizer_cls, params, hyperparameters):
        """Everything local: parse, lay out, build the shard's optimizer.
        Returns this rank's signature for the collective comparison."""
        if not isinstance(optimizer_cls, type) or missing_members(optimizer_cls,
                                                                  self._WRAPPABLE):
            raise TypeError(f"{owner}: optimizer_cls must be a fastopt optimizer class such "
                            f"as fastopt.Adam, got {optimizer_cls!r}")
        if hyperparameters.get("state_dtype") is not None:
            raise ValueError(f"{owner}: state_dtype={hyperparameters['state_dtype']!r} is not "
                             "supported under sharding yet (the gathered state assumes slots "
                             "in the parameters' dtype); leave state_dtype=None")
        self._tree = tree = ParamTree(owner, params)
        if tree.device:
            raise TypeError(f"{owner}: the params are CUDA device arrays; the sharded "
                            "optimizer exchanges host NumPy arrays over MPI")
        self._kind, self._names, self._params = tree.kind, tree.names, tree.arrays
        self._groups_of = [(idx, self._names[idx[0]] is not None) for idx, _ in tree.groups]
        self._n = tree.n
        self._labels, self._shapes, self._dtypes = tree.labels, tree.shapes, tree.dtypes
        by_dtype = {}
        for i, a in enumerate(self._params):
            by_dtype.setdefault(a.dtype, []).append(i)
        self._layouts = [ShardLayout(dt, idx, [self._params[i] for i in idx], self.rank, self.size)
                         for dt, idx in by_dtype.items()]
        self._place = {}  # tensor index -> (layout, position in it)
        pieces, piece_grads, self._bounds = [None] * self._n, [None] * self._n, [None] * self._n
        for L in self._layouts:
            for k, i in enumerate(L.indices):
                a, b = L.piece(k)
                self._place[i] = (L, k)
                self._bounds[i] = (a, b)
                pieces[i] = self._params[i].reshape(-1)[a:b]
                g0 = L.starts[k] + a - L.lo if b > a else 0
                piece_grads[i] = L.gshard[g0:g0 + b - a]
        self._piece_grads = piece_grads
        self._inner = optimizer_cls(tree.rebuild(pieces), **hyperparameters)
        for pg in getattr(self._inner, "_param_groups", ()):
            if not pg.rule.shardable:
                raise ValueError(f"{owner}: {optimizer_cls.__name__}'s {pg.rule.name!r} rule "
                                 "cannot be sharded by flat index (ZeRO-1 cuts tensors "
                                 f"anywhere): {pg.rule.shard_refusal}; use the optimizer "
                                 "unsharded")
        self._label_index = {(str(i) if nm is None else nm): i
                             for i, nm in enumerate(self._names)}
        self._copies = [L.copy_plan([self._params[i] for i in L.indices],
                                    [self._bounds[i] for i in L.indices])
                        for L in self._layouts]
        return {"class": optimizer_cls.__qualname__, "kind": self._kind,
                "tensors": [(nm, a.shape, a.dtype.name) for nm, a in
                            zip(self._names, self._params)],
                "config": comparable_config(self._inner.get_config()),
                "values": [zlib.crc32(a) for a in self._params]}

    # -- the step ---------------------------------------------------------------------
    def step(self, local_grads):
        """Average the ranks' gradients and apply one update (collective).

        Parameters
        ----------
        local_grads
            This rank's gradients, in the structure of ``params`` (as for
            the plain optimizer's ``step``).  A ``None`` gradient skips its
            parameter; it must then be None on every rank.

        Raises
        ------
        TypeError, ValueError
            On every rank, when any rank's gradients are bad or its
            learning-rate schedule fails (the schedules are evaluated before
            any data is exchanged), the ranks disagree on which gradients are
            None, or they are at different call counts.  Then nothing
            has changed.  Another error on one rank (a schedule that raises
            ZeroDivisionError, say) is raised there, and the other ranks
            raise a RuntimeError naming it.
        """
        MPI = mpi()
        comm, n, flags = self.comm, self._n, self._flags
        error = grads = None
        try:
            grads = self._tree.match_grads(
                local_grads, self._inner.gradient_accumulation_steps is not None)
            self._check_learning_rates()
            if not getattr(self._inner, "train_mode", True):  # schedule-free AdamW in eval
                raise RuntimeError(f"ShardedOptimizer.step: {type(self._inner).__name__} is "
                                   "in eval mode: call train() first")
        except Exception as e:  # noqa: BLE001 - every kind must reach the other ranks
            error = e
        calls = self._inner.calls  # mid-cycle of gradient accumulation too
        flags[0], flags[1], flags[2] = error is not None, calls, -calls
        if grads is not None:
            present = np.fromiter((g is not None for g in grads), bool, n)
            flags[3:3 + n] = present
            flags[3 + n:] = ~present
        else:
            flags[3:] = 0
        if self.size > 1:
            comm.Allreduce(MPI.IN_PLACE, flags, op=MPI.MAX)
        agree(comm, error, "ShardedOptimizer.step", failed=bool(flags[0]))
        if flags[1] != -flags[2]:
            raise ValueError(f"ShardedOptimizer.step: the ranks are at different call "
                             f"counts ({-flags[2]} to {flags[1]}); was a step or a "
                             "load_state_dict skipped on some rank?")
        both = np.flatnonzero(flags[3:3 + n] & flags[3 + n:])
        if both.size:
            raise ValueError(f"ShardedOptimizer.step: grads{self._labels[both[0]]} is None "
                             "on some ranks but not on others; a gradient must be None on "
                             "every rank or on none")
        # from here on: collectives and arithmetic only (see the module docstring)
        with or_abort(comm, "ShardedOptimizer.step"):
            if self.size == 1:  # the mean is the gradient itself, and the shard everything
                self._inner_step([None if g is None else g.reshape(-1) for g in grads])
                return
            pieces = self._piece_grads
            if flags[3 + n:].any():
                pieces = [None if g is None else p for g, p in zip(grads, pieces)]
            for L in self._layouts:
                send = L.send_buffer([grads[i] for i in L.indices])
                comm.Reduce_scatter([send, L.mpi_type], [L.gshard, L.mpi_type], L.counts,
                                    op=MPI.SUM)
                np.divide(L.gshard, self.size, out=L.gshard)
            self._inner_step(pieces)

    def _applies(self):
        """Whether the wrapped optimizer's next step updates the parameters
        (not a gradient-accumulation call that only accumulates)."""
        return update_counts(self._inner.calls, self._inner.gradient_accumulation_steps)[0]

    def _check_learning_rates(self):
        """Evaluate the learning rates the next step will use, so that a
        schedule that fails (raises, or returns NaN, which the optimizer
        rejects) fails before any data is exchanged."""
        if self._applies():
            for group in range(len(self._groups_of)):
                self._inner.current_learning_rate(group)

    def _inner_step(self, pieces):
        """The wrapped optimizer's step on this rank's mean-gradient pieces,
        then the all-gather, unless the step left the parameters alone (a
        gradient-accumulation call without an update)."""
        changes = self._applies() or self._inner.ema_overwrite_frequency is not None
        self._inner.step(self._nest(pieces))
        if changes:
            self._gather_params()

    def _nest(self, flat):
        """A flat per-tensor list in the structure the wrapped optimizer's
        ``step`` expects."""
        if self._kind == "dict":
            return dict(zip(self._names, flat))
        if self._kind == "groups":
            return [dict((self._names[i], flat[i]) for i in idx) if named
                    else [flat[i] for i in idx] for idx, named in self._groups_of]
        return flat

    def _gather_params(self):
        """Every rank's updated shard into every rank's parameters."""
        if self.size == 1:
            return
        MPI = mpi()
        for L, (own, others) in zip(self._layouts, self._copies):
            buf = L.param_block if L.param_block is not None else L.scratch
            for dst, src in own:
                dst[...] = src
            self.comm.Allgatherv(MPI.IN_PLACE, [buf, L.counts, L.displs, L.mpi_type])
            for src, dst in others:
                dst[...] = src

    def _sum_over_ranks(self, partial_sums):
        """The wrapped optimizer's ``reduce_tensor_sums`` (:mod:`fastopt.protocol`):
        its per-tensor partial sums (float64 arrays of any shape), added up
        over the ranks with one small Allreduce."""
        MPI = mpi()
        total = sum(s.size for s in partial_sums)
        if total > self._tensor_sums.size:
            self._tensor_sums = np.zeros(total)
        buf, k, views = self._tensor_sums, 0, []
        for s in partial_sums:
            view = buf[k:k + s.size]
            view[...] = s.reshape(-1)
            views.append(view.reshape(s.shape))
            k += s.size
        if self.size > 1:
            self.comm.Allreduce(MPI.IN_PLACE, buf[:k], op=MPI.SUM)
        return views

    # -- attributes ------------------------------------------------------------------
    @property
    def params(self):
        """The full parameters, in the structure they were given."""
        return self._tree.rebuild(self._params)

    @property
    def shard_optimizer(self):
        """The wrapped optimizer over this rank's pieces (one 1-D piece per
        parameter, empty where the shard holds none of it).  Read it; step
        and load through the :class:`ShardedOptimizer`."""
        return self._inner

    @property
    def iterations(self):
        """Updates applied (the same on every rank): ``calls``, or under
        gradient accumulation ``calls // gradient_accumulation_steps``."""
        return self._inner.iterations

    @property
    def calls(self):
        """``step`` calls made (the same on every rank; the count schedules see)."""
        return self._inner.calls

    @property
    def learning_rate(self):
        """The wrapped optimizer's learning rate; assign it on every rank alike."""
        return self._inner.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self._inner.learning_rate = value

    def current_learning_rate(self, group=0):
        """The learning rate the next step will use."""
        return self._inner.current_learning_rate(group)

    @property
    def shard(self):
        """Per dtype: ``(start, stop, total)`` of this rank's shard of the flat
        parameters of that dtype."""
        return {L.dtype.name: (L.lo, L.hi, L.total) for L in self._layouts}

    @property
    def state_nbytes(self):
        """Bytes of optimizer state this rank holds (its shard's slots,
        moving averages and gradient accumulators)."""
        return int(sum(a.nbytes for a in self._inner.state_arrays().values()))

    @property
    def buffer_nbytes(self):
        """Bytes of the buffers this rank keeps for the collectives."""
        return int(sum(L.gshard.nbytes + (L._scratch.nbytes if L._scratch is not None else 0)
                       for L in self._layouts) + self._tensor_sums.nbytes + self._flags.nbytes)

    def get_config(self):
        """The wrapped optimizer's configuration (the same as unsharded)."""
        return self._inner.get_config()

    def __repr__(self):
        return f"ShardedOptimizer({self._inner!r}, rank {self.rank} of {self.size})"

    # -- EMA -----------------------------------------------------------------------
    @property
    def ema_params(self):
        """With ``use_ema``: the full moving averages (new arrays, in the
        structure of ``params``) on every rank; None without (collective)."""
        if not self._inner.use_ema:
            return None
        ema, out = [None] * self._n, [None] * self._n
        with or_abort(self.comm, "ShardedOptimizer.ema_params"):
            for key, average in self._inner.state_arrays().items():
                if key.startswith("average/"):
                    ema[self._tensor_of(key)] = average
            for L in self._layouts:
                full = np.empty(L.total, L.dtype)
                self.comm.Allgatherv(L.shard_of([ema[i] for i in L.indices]),
                                     [full, L.counts, L.displs, L.mpi_type])
                for k, i in enumerate(L.indices):
                    out[i] = full[L.starts[k]:L.starts[k + 1]].reshape(self._shapes[i])
        return self._tree.rebuild(out)

    def finalize_variable_values(self):
        """With ``use_ema``: copy the moving averages into the parameters on
        every rank (collective); without, does nothing."""
        if self._inner.use_ema:
            with or_abort(self.comm, "ShardedOptimizer.finalize_variable_values"):
                self._inner.finalize_variable_values()
                self._gather_params()

    # -- modes (schedule-free AdamW) -----------------------------------------------------
    @property
    def train_mode(self):
        """The wrapped optimizer's mode, for optimizers with ``train()`` and
        ``eval()`` (:class:`fastopt.ScheduleFreeAdamW`)."""
        return self._modes("train_mode").train_mode

    def train(self):
        """The wrapped optimizer's ``train()`` on this rank's shard, then the
        all-gather (collective): every rank's parameters at the training
        point."""
        self._switch("train")

    def eval(self):
        """The wrapped optimizer's ``eval()`` on this rank's shard, then the
        all-gather (collective): every rank's parameters at the average."""
        self._switch("eval")

    def _modes(self, name):
        if not hasattr(self._inner, "train_mode"):
            raise AttributeError(f"ShardedOptimizer.{name}: {type(self._inner).__name__} has "
                                 "no train/eval modes (schedule-free AdamW has)")
        return self._inner

    def _switch(self, name):
        inner = self._modes(name)
        with or_abort(self.comm, f"ShardedOptimizer.{name}"):
            getattr(inner, name)()
            self._gather_params()

    # -- state ------------------------------------------------------------------------
    def agree(self, work, where):
        """``work()``, local work such as reading this rank's copy of a file,
        on every rank (collective): its result, or, if it raised on any rank,
        an error on every rank that names that rank (the optional member of
        :mod:`fastopt.protocol` through which :mod:`fastopt.train` reads
        checkpoints)."""
        return agreed(self.comm, where, work)

    def any_rank(self, flag):
        """Whether ``flag`` is true on any rank (collective): how
        :mod:`fastopt.train` makes a stop asked for by one rank's callbacks
        the decision of every rank."""
        value = np.array([bool(flag)], np.int8)
        if self.comm.size > 1:
            self.comm.Allreduce(mpi().IN_PLACE, value, op=mpi().MAX)
        return bool(value[0])

    def state_dict(self):
        """This rank's state: the wrapped optimizer's ``state_dict`` (slots
        are this rank's 1-D pieces, under the unsharded keys) plus
        ``"shard": {"rank", "size", "layout"}``.  Loads back only on the same
        rank of the same number of ranks; see :meth:`consolidated_state_dict`
        for a state that loads anywhere."""
        state = self._inner.state_dict()
        state["shard"] = self._shard_info()
        return state

    def _shard_info(self):
        return {"rank": self.rank, "size": self.size,
                "layout": {L.dtype.name: [L.lo, L.hi, L.total] for L in self._layouts}}

    def consolidated_state_dict(self, root=0):
        """The whole state, gathered to rank ``root`` (collective).

        Returns, on ``root``, exactly what the unsharded optimizer's
        ``state_dict()`` would (config, iterations, calls, full-shape slots under
        the same keys, the host state of rules that keep one, which every rank
        holds whole), and None on the other ranks.  It loads into a plain
        optimizer or into a :class:`ShardedOptimizer` on any number of ranks.
        """
        where = "ShardedOptimizer.consolidated_state_dict"

        def check():
            if isinstance(root, bool) or not isinstance(root, (int, np.integer)) \
                    or not 0 <= root < self.size:
                raise ValueError(f"{where}: root must be a rank in [0, {self.size}), "
                                 f"got {root!r}")
            return self._inner.state_arrays()
        live = agreed(self.comm, where, check)
        # host-side scalars (running products) are the same on every rank
        host = self._inner.host_state() if hasattr(self._inner, "host_state") else {}
        batches = {}  # (slot name, layout) -> keys, in the order they first appear
        full_slots = {}
        with or_abort(self.comm, where):
            for key in live:
                L, _ = self._place[self._tensor_of(key)]
                batches.setdefault((key.split("/", 1)[0], id(L)), (L, []))[1].append(key)
            for L, keys in batches.values():
                by_tensor = {self._tensor_of(key): key for key in keys}
                shard = L.shard_of([live[by_tensor[i]] if i in by_tensor else None
                                    for i in L.indices])
                full = np.empty(L.total, L.dtype) if self.rank == root else None
                self.comm.Gatherv(shard, [full, L.counts, L.displs, L.mpi_type]
                                  if self.rank == root else None, root=root)
                if self.rank == root:
                    for k, i in enumerate(L.indices):
                        if i in by_tensor:
                            full_slots[by_tensor[i]] = \
                                full[L.starts[k]:L.starts[k + 1]].reshape(self._shapes[i])
        if self.rank != root:
            return None
        state = {"config": self._inner.get_config(), "iterations": self._inner.iterations,
                 "calls": self._inner.calls, "slots": {key: full_slots[key] for key in live}}
        if host:
            state["host_state"] = host
        return state

    def _tensor_of(self, key):
        return self._label_index[key.split("/", 1)[1]]

    def load_state_dict(self, state):
        """Load a state (collective): a consolidated or unsharded one (from
        :meth:`consolidated_state_dict`, a plain optimizer's ``state_dict`` or
        :func:`fastopt.load_state`'s file), on any number of ranks, or this
        rank's own :meth:`state_dict`.  Checked on every rank first: if any
        rank rejects it, every rank raises and nothing changes."""
        backup = None

        def load():
            nonlocal backup
            pieces = self._pieces_of(state)
            backup = self._inner.state_dict()
            self._inner.load_state_dict(pieces)

        def undo():
            if backup is not None:
                self._inner.load_state_dict(backup)
        agreed(self.comm, "ShardedOptimizer.load_state_dict", load, undo=undo)

    def _pieces_of(self, state):
        """This rank's piece of a state, in the wrapped optimizer's format."""
        name = "ShardedOptimizer.load_state_dict"
        if not is_state_dict(state):
            raise ValueError(f"{name}: expected a dict with keys {STATE_KEYS}")
        # the counters as given: the wrapped optimizer checks them
        base = {key: state[key] for key in ("config", "iterations", "calls", "host_state")
                if key in state}
        if "shard" in state:
            if state["shard"] != self._shard_info():
                raise ValueError(f"{name}: this state_dict is rank {state['shard'].get('rank')}'s "
                                 f"of {state['shard'].get('size')} ranks, this is rank "
                                 f"{self.rank} of {self.size}; to change ranks, save a "
                                 "consolidated state (consolidated_state_dict, save_state)")
            return {**base, "slots": state["slots"]}
        slots, live = state["slots"], self._inner.state_arrays()
        if not isinstance(slots, Mapping) or set(slots) != set(live):
            given = set(slots) if isinstance(slots, Mapping) else set()
            raise ValueError(f"{name}: slots differ; missing {sorted(set(live) - given)}, "
                             f"unexpected {sorted(given - set(live))}")
        out = {}
        for key in live:
            i, a = self._tensor_of(key), slots[key]
            if not isinstance(a, np.ndarray) or a.shape != self._shapes[i] \
                    or a.dtype != self._dtypes[i]:
                raise ValueError(f"{name}: slot {key!r} has shape {getattr(a, 'shape', None)} "
                                 f"and dtype {getattr(a, 'dtype', None)}, expected "
                                 f"{self._shapes[i]} and {self._dtypes[i]}")
            lo, hi = self._bounds[i]
            out[key] = np.ascontiguousarray(a).reshape(-1)[lo:hi]
        return {**base, "slots": out}

    def save_state(self, path, root=0, extra=None):
        """Write the consolidated state to ``path`` on rank ``root`` (collective),
        in :func:`fastopt.save_state`'s format: a plain optimizer loads it with
        :func:`fastopt.load_state`, a :class:`ShardedOptimizer` on any number of
        ranks with :meth:`load_state`.  ``extra``: more named arrays for the
        same file (root's are written; fastopt.train's checkpoints use it)."""
        state = self.consolidated_state_dict(root)

        def write():
            if self.rank == root:
                try:
                    write_npz_atomic(path, {**(extra or {}), **state_to_arrays(state)})
                except OSError as e:
                    raise ValueError(f"ShardedOptimizer.save_state: cannot write {path!r}: "
                                     f"{e}") from e
        agreed(self.comm, "ShardedOptimizer.save_state", write)

    def load_state(self, path):
        """Read a state file (from :meth:`save_state` or :func:`fastopt.save_state`)
        on every rank and load it (collective); the file must be readable
        from every rank."""
        def read():
            try:  # checked and bounded reading (fastopt.state), StateFileError
                return read_state(path, f"ShardedOptimizer.load_state: {str(path)!r}")
            except ValueError:
                raise
            except Exception as e:  # noqa: BLE001 - a truncated file is a BadZipFile, ...
                raise ValueError(f"ShardedOptimizer.load_state: cannot read {str(path)!r} "
                                 f"({type(e).__name__}: {e})") from e
        self.load_state_dict(agreed(self.comm, "ShardedOptimizer.load_state", read))
