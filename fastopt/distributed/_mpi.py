"""mpi4py, imported only when used, and the collective error handling that
keeps every rank in step.

``import fastopt`` never imports mpi4py (importing it starts MPI).  Every
check that could fail on some ranks and not on others ends in :func:`agree`:
one small collective after which either every rank goes on or every rank
raises, naming the rank that failed and why.  A rank never waits in a
collective that another rank has abandoned.
"""
from __future__ import annotations

import numpy as np

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
    messages are gathered: a rank that failed raises its own exception, the
    others call ``undo`` (to roll back what they did) and raise the same kind
    of error naming the failed rank and its message.
    """
    if failed is None:
        failed = comm.allreduce(error is not None, op=mpi().LOR)
    if not failed:
        return
    messages = comm.allgather(None if error is None else
                              (type(error).__name__, str(error)))
    if error is not None:
        raise error
    if undo is not None:
        undo()
    rank = next(r for r, m in enumerate(messages) if m is not None)
    kind, message = messages[rank]
    cls = TypeError if kind == "TypeError" else ValueError
    raise cls(f"{where}: rank {rank} of {comm.size} failed, so every rank stops here "
              f"({kind}: {message})")
