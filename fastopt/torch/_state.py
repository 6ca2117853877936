"""How ``fastopt.torch`` keeps torch's optimizer state cheap to step: the
state dict that counts its writes, and step counts as views of NumPy blocks."""
from __future__ import annotations

from collections import defaultdict

import torch

__all__ = ["_TrackedState", "_track", "_Counters", "_scalar_dtype", "_step_tensor"]


def _scalar_dtype():
    # torch.optim keeps ``step`` in float32, float64 under a float64 default dtype
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _step_tensor():
    return torch.tensor(0.0, dtype=_scalar_dtype())


class _TrackedState(defaultdict):
    """``optimizer.state`` that counts its writes (``state[p] = {...}``, as
    ``ZeroRedundancyOptimizer.load_state_dict`` does), so that a prepared
    plan can tell it is stale with one comparison instead of one hash per
    parameter (torch's ``Tensor.__hash__`` is a Python function)."""

    version = 0

    def __setitem__(self, key, value):
        self.version += 1
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self.version += 1
        super().__delitem__(key)

    def pop(self, *args):
        self.version += 1
        return super().pop(*args)

    def popitem(self):
        self.version += 1
        return super().popitem()

    def clear(self):
        self.version += 1
        super().clear()

    def update(self, *args, **kwargs):
        self.version += 1
        super().update(*args, **kwargs)

    def setdefault(self, key, default=None):
        self.version += 1
        return super().setdefault(key, default)

    def __reduce__(self):  # pickles as torch's plain defaultdict(dict)
        return defaultdict, (dict,), None, None, iter(self.items())


def _track(opt):
    if type(opt.state) is not _TrackedState:
        tracked = _TrackedState(dict)
        dict.update(tracked, opt.state)
        opt.state = tracked


class _Counters:
    """Per-parameter step counts in NumPy blocks, seen by torch as 0-d views.

    ``state["step"]`` of a parameter is ``torch.from_numpy(block)[i]``: torch
    code reads and writes it as usual (``state_dict``, ``torch.save``, a
    ``torch.optim`` optimizer that loads the checkpoint), and fastopt
    advances it with a NumPy store instead of a torch operator call.
    """

    BLOCK = 1024

    def __init__(self):
        self.where = {}   # id(view) -> (block, index, view)
        self.block = None
        self.used = 0

    def adopt(self, value):
        dtype = value.dtype if isinstance(value, torch.Tensor) and value.is_floating_point() \
            else _scalar_dtype()
        if self.block is None or self.used == self.BLOCK or self.block.dtype != dtype:
            self.block = torch.zeros(self.BLOCK, dtype=dtype)
            self.array = self.block.numpy()
            self.used = 0
        i = self.used
        self.used += 1
        self.array[i] = float(value)
        view = self.block[i]
        self.where[id(view)] = (self.array, i, view)
        return view

    def adopt_all(self, values):
        """A block of its own for ``values``: ``(array, views)``."""
        dtype = values[0].dtype if isinstance(values[0], torch.Tensor) \
            and values[0].is_floating_point() else _scalar_dtype()
        block = torch.tensor([float(v) for v in values], dtype=dtype)
        array = block.numpy()
        views = [block[i] for i in range(len(values))]
        for i, v in enumerate(views):
            self.where[id(v)] = (array, i, v)
        return array, views

    def location(self, st, key):
        """``(block array, index)`` of the 0-d tensor ``st[key]``, adopting it
        first when it is not a view of a block (the host-side state of a rule,
        :attr:`fastopt.rule.Rule.host_state`, is kept like the step counts:
        read and written with NumPy, no torch operator call per parameter)."""
        t = st[key]
        loc = self.where.get(id(t))
        if loc is None or loc[2] is not t:
            t = st[key] = self.adopt(t)
            loc = self.where[id(t)]
        return loc[0], loc[1]

    def advance(self, state, items):
        where = self.where
        out = []
        for it in items:
            t = it.step
            loc = where.get(id(t))
            if loc is None or loc[2] is not t:
                t = state[it.param]["step"] = self.adopt(t)
                loc = where[id(t)]
            array, i, _ = loc
            n = array[i] + 1
            array[i] = n
            out.append(float(n))
        return out
