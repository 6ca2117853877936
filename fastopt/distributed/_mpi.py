"""mpi4py, imported only when used, and the collective error handling that
keeps every rank in step.

``import fastopt`` never imports mpi4py (importing it starts MPI).  Local
work that could fail on some ranks and not on others (checking arguments,
reading a file, evaluating a learning-rate schedule, a forward pass) runs
before the collective that follows it and ends in :func:`agree`: one small
collective after which either every rank goes on or every rank raises,
naming the rank that failed and why (:func:`agreed` wraps both).  Work that
runs after a collective has begun, where the other ranks can no longer be
told, runs under :func:`or_abort`: an exception there aborts every rank with
a message on stderr.  A rank never waits in a collective that another rank
has abandoned.
"""
from __future__ import annotations

import sys
import time
import traceback
from contextlib import contextmanager

import numpy as np

# seconds an aborting rank waits after writing its reason to stderr (see or_abort)
_ABORT_GRACE_S = 0.5

INSTALL_HINT = ("pip install 'fastopt[mpi]' (mpi4py and the mpich wheel, which brings "
                "mpiexec), or install mpi4py built against your cluster's MPI")


def mpi():
    """The ``mpi4py.MPI`` module, or an ImportError that says how to get it."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"fastopt.distributed needs mpi4py and an MPI library: "
                          f"{INSTALL_HINT}") from e
    return MPI


def communicator(owner, comm):
    """``comm``, defaulting to ``MPI.COMM_WORLD``, checked to be an intracommunicator."""
    MPI = mpi()
    if comm is None:
        return MPI.COMM_WORLD
    if not isinstance(comm, MPI.Intracomm):
        raise TypeError(f"{owner}: comm must be an mpi4py intracommunicator such as "
                        f"MPI.COMM_WORLD, got {type(comm).__name__}")
    return comm


def mpi_type(dtype):
    """The MPI datatype of a float32 or float64 NumPy dtype."""
    MPI = mpi()
    return MPI.FLOAT if np.dtype(dtype) == np.float32 else MPI.DOUBLE


def agree(comm, error, where, undo=None, failed=None):
    """Raise on every rank if ``error`` (an exception or None) is set on any.

    ``failed``, when given, says whether any rank failed (the caller already
    reduced it); otherwise one allreduce finds out.  If some rank failed, the
    messages are gathered and every rank calls ``undo`` (to roll back what it
    did); a rank that failed then raises its own exception, the others an
    error naming the failed rank and its exception: a TypeError or ValueError
    when that is what it raised, else a RuntimeError.
    """
    if failed is None:
        flag = np.array([error is not None], np.int8)
        if comm.size > 1:
            comm.Allreduce(mpi().IN_PLACE, flag, op=mpi().MAX)
        failed = bool(flag[0])
    if not failed:
        return
    messages = comm.allgather(None if error is None else
                              (type(error).__name__, str(error)))
    if undo is not None:
        undo()
    if error is not None:
        raise error
    rank = next(r for r, m in enumerate(messages) if m is not None)
    kind, message = messages[rank]
    cls = {"TypeError": TypeError, "ValueError": ValueError}.get(kind, RuntimeError)
    raise cls(f"{where}: rank {rank} of {comm.size} failed, so every rank stops here "
              f"({kind}: {message})")


def agreed(comm, where, work, undo=None):
    """``work()``, local work before a collective, run on every rank: its
    result, or, if it raised any ``Exception`` on any rank, that error on
    every rank (:func:`agree`)."""
    error = result = None
    try:
        result = work()
    except Exception as e:  # noqa: BLE001 - every kind must reach the other ranks
        error = e
    agree(comm, error, where, undo=undo)
    return result


@contextmanager
def or_abort(comm, where):
    """Local work between collectives that the other ranks cannot be told
    about (they may already wait in the next one): an exception here prints
    what happened on stderr and aborts every rank of ``comm`` (on one rank it
    is simply raised).  NumPy's floating-point errors are ignored inside: NaN
    and inf propagate, as in the compiled kernels."""
    try:
        with np.errstate(all="ignore"):
            yield
    except Exception as e:  # noqa: BLE001 - any of them would leave the others waiting
        if comm.size == 1:
            raise
        sys.stderr.write(f"{where}: rank {comm.rank} of {comm.size} failed after the ranks "
                         f"had begun exchanging data, so every rank is aborted "
                         f"({type(e).__name__}: {e})\n"
                         + "".join(traceback.format_exception(type(e), e, e.__traceback__)))
        sys.stderr.flush()
        # MPI_Abort tears the job down at once, and the launcher may not yet
        # have forwarded what is still in this rank's stderr pipe (seen on
        # MPICH's hydra: about one run in fifteen lost the message): give it
        # a moment; an abort is the rare path.
        time.sleep(_ABORT_GRACE_S)
        comm.Abort(1)
