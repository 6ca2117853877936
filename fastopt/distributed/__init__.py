"""Data-parallel training over MPI, with the optimizer state sharded (ZeRO-1).

Needs mpi4py and an MPI library (``pip install 'fastopt[mpi]'``); importing
this package does not import mpi4py, using it does.  Run a script on N
ranks with ``mpiexec -n N python script.py``.

* :class:`ShardedOptimizer` wraps a fastopt optimizer class: every rank
  passes its full parameters and its own gradients; the gradients are
  averaged with a reduce-scatter, each rank updates its contiguous shard with
  the fused kernels, and the shards are all-gathered.
* :class:`DataParallelModel` wraps a :mod:`fastopt.train` model so that each
  rank runs the forward and backward passes on its own slice of every batch,
  and :func:`fastopt.train.fit` trains it unchanged.
"""
from .data_parallel import DataParallelModel
from .sharded import ShardedOptimizer

__all__ = ["ShardedOptimizer", "DataParallelModel"]
