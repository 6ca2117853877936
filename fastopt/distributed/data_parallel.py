"""A fastopt.train model whose forward and backward passes are split by rows
over MPI ranks, so that :func:`fastopt.train.fit` trains data-parallel."""
from __future__ import annotations

import numpy as np

from ..train.models import MLP
from ._mpi import agree, agreed, communicator, mpi, mpi_type, or_abort

__all__ = ["DataParallelModel"]


class DataParallelModel(MLP):
    """``model`` with each batch's rows split over the ranks of ``comm``.

    The same model, not a copy: it shares ``model``'s layers and its
    parameter and gradient buffers (``params``, ``grads``, ``flat_params``).
    For a batch of ``n`` rows, rank ``r`` runs the forward pass on its
    contiguous slice (``n // size`` rows, one more on the first
    ``n % size`` ranks), and the output logits of all rows are all-gathered,
    so the loss and accuracy of the whole batch are known on every rank.  The
    backward pass runs on the rank's slice only, and ``grads`` receive
    ``size`` times its part of the batch gradient: their mean over the ranks,
    which :class:`~fastopt.distributed.ShardedOptimizer` computes, is the
    gradient of the whole batch's mean loss.

    Train it with :func:`fastopt.train.fit` and a
    :class:`~fastopt.distributed.ShardedOptimizer` over ``model.params`` on
    every rank, with the same data, seed and batch size: every batch is the
    single-process batch, only computed in parts.  Every call of
    :meth:`forward` (and so ``fit``, ``evaluate`` and ``predict``) and of
    :meth:`backward` is collective: if the pass fails on one rank (or, for
    the forward pass, the ranks were given batches of different sizes),
    every rank raises, naming that rank, before the next exchange of data.

    Parameters
    ----------
    model : fastopt.train.MLP or LogisticRegression
    comm : mpi4py.MPI.Intracomm, optional
        Default ``MPI.COMM_WORLD``.
    """

    def __init__(self, model, comm=None):  # pylint: disable=super-init-not-called
        if not isinstance(model, MLP):
            raise TypeError(f"DataParallelModel: model must be a fastopt.train model (MLP or "
                            f"LogisticRegression), got {type(model).__name__}")
        self.comm = communicator("DataParallelModel", comm)
        # the same layers and buffers as ``model`` (MLP.__init__ would make new ones)
        vars(self).update(vars(model))
        self.model = model

    def get_config(self):
        return self.model.get_config()

    def __repr__(self):
        return f"DataParallelModel({self.model!r}, ranks={self.comm.size})"

    def rows(self, n):
        """``(start, stop)`` of this rank's rows in a batch of ``n`` rows."""
        size, rank = self.comm.size, self.comm.rank
        base, extra = divmod(n, size)
        start = rank * base + min(rank, extra)
        return start, start + base + (rank < extra)

    def forward(self, X):
        """Logits of all rows (this rank computes its slice; collective) and
        the cache that :meth:`backward` needs."""
        MPI, comm, where = mpi(), self.comm, "DataParallelModel.forward"
        error = n = None
        try:
            X = self.inputs(X)
            n = len(X)
            start, stop = self.rows(n)
            z_own, cache = MLP.forward(self, X[start:stop])
            z_own = np.ascontiguousarray(z_own)
        except Exception as e:  # noqa: BLE001 - every kind must reach the other ranks
            error = e
        # one small Allreduce: did any rank fail, and do all have n rows?
        flags = np.array([error is not None, n or 0, -(n or 0)], np.int64)
        if comm.size > 1:
            comm.Allreduce(MPI.IN_PLACE, flags, op=MPI.MAX)
        agree(comm, error, where, failed=bool(flags[0]))
        if flags[1] != -flags[2]:
            raise ValueError(f"{where}: the ranks were given batches of different sizes "
                             f"({-flags[2]} to {flags[1]} rows); every rank must pass the "
                             "same batch")
        size, width = comm.size, self.n_outputs
        with or_abort(comm, where):
            counts = [(n // size + (r < n % size)) * width for r in range(size)]
            displs = [sum(counts[:r]) for r in range(size)]
            z = np.empty((n, width), self.dtype)
            comm.Allgatherv(z_own, [z, counts, displs, mpi_type(self.dtype)])
        return z, (cache, start, stop)

    def backward(self, cache, dz):
        """This rank's share of the batch gradient, times the number of
        ranks, into ``grads`` (``dz``: the whole batch's, from the loss);
        collective only to agree that it worked on every rank (one small
        Allreduce), since the optimizer's step exchanges the gradients next."""
        cache, start, stop = cache
        agreed(self.comm, "DataParallelModel.backward",
               lambda: MLP.backward(self, cache, dz[start:stop] * self.comm.size))
