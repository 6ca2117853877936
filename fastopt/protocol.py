"""What an optimizer-like object offers: the protocol that :mod:`fastopt.train`,
:mod:`fastopt.state` and :mod:`fastopt.distributed` use, so that none of them
special-cases a class.

:class:`fastopt.Optimizer` and :class:`fastopt.distributed.ShardedOptimizer`
both follow it.  An optimizer-like object offers:

**Its parameter tree**

``params``
    The parameters, in the structure they were given (an array, a list or a
    dict of arrays, or a list of parameter-group dicts of those); updated in
    place.
``step(grads)``
    One update, with gradients in the structure of ``params``.
``iterations``
    The number of updates applied so far: the number of ``step`` calls, or
    under gradient accumulation the number of calls that applied an update
    (Keras's ``optimizer.iterations``).  :class:`fastopt.Optimizer` and
    :class:`~fastopt.distributed.ShardedOptimizer` also offer ``calls``, the
    number of ``step`` calls, which learning-rate schedules see.

**State in and out**

``get_config()``
    Its JSON-able configuration.
``state_dict()`` / ``load_state_dict(state)``
    ``{"config", "iterations", "calls", "slots"}``: the two counters, and
    the slots as host NumPy copies, by key ``"<slot>/<parameter index or
    name>"``.  Loading checks the whole state first and changes nothing when
    it does not fit; a state without ``"calls"`` (written before ``calls``
    existed) counted the calls in ``"iterations"``.
``save_state(path, extra=None)``
    Write the state, plus the named arrays of ``extra``, to one ``.npz`` file
    in :func:`fastopt.save_state`'s format.  Collective for a sharded
    optimizer: every rank calls it, one writes.

**Per-tensor reductions** (an optimizer that runs the kernels itself)

``state_arrays()``
    Its live per-parameter state arrays (not copies), by state-dict key.
``reduce_tensor_sums(partial_sums)``
    The hook through which every per-tensor reduction passes before it is
    used.  ``partial_sums`` is a list of float64 arrays, one per tensor
    group, of any shape whose last axis runs over the group's tensors (today
    the sums of squares of the gradients that clipping by norm needs, shape
    ``(n_tensors,)``; a two-phase optimizer such as Lamb would pass the sums
    of squares of weights and updates together, shape ``(2, n_tensors)``).
    It returns the sums of the same quantities over every shard of the
    tensors, in the same shapes.  An optimizer that holds whole tensors keeps
    the default, :func:`local_tensor_sums`; a wrapper that hands each process
    a shard of every tensor replaces it on the optimizer it wraps (one
    all-reduce per call, so one per phase).

**Optional, for an optimizer shared by several processes**

``agree(work, where)``
    Run ``work()``, local work such as reading this process's copy of a
    file, in every process: its result, or an error in every process if it
    failed in any (named ``where``).  :mod:`fastopt.train` reads checkpoints
    through it when the optimizer has it, so that no process is left waiting.

``any_rank(flag)``
    Whether ``flag`` is true in any process (collective).  :func:`fastopt.train.fit`
    calls the callbacks through ``agree`` in every process (with callbacks or
    without) and stops every process when one's callbacks ask to stop.
"""
from __future__ import annotations

__all__ = ["OPTIMIZER_MEMBERS", "missing_members", "local_tensor_sums"]

#: the attributes :mod:`fastopt.train` and :mod:`fastopt.state` rely on
OPTIMIZER_MEMBERS = ("params", "step", "iterations", "get_config", "state_dict",
                     "load_state_dict", "save_state")


def missing_members(obj, members=OPTIMIZER_MEMBERS):
    """The names of ``members`` (default: :data:`OPTIMIZER_MEMBERS`) that
    ``obj`` lacks; empty when it is optimizer-like."""
    return [name for name in members if not hasattr(obj, name)]


def local_tensor_sums(partial_sums):
    """The default ``reduce_tensor_sums``: the tensors are whole here, so the
    partial sums are the totals."""
    return partial_sums
