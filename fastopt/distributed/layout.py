"""How a sharded optimizer lays out the parameters of one dtype: end to end
in one flat index space, cut into one contiguous shard per rank (sizes
differ by at most one element), with the buffers of the collectives."""
from __future__ import annotations

import numpy as np

from ._mpi import mpi_type

__all__ = ["ShardLayout", "contiguous_block"]


class ShardLayout:
    """The tensors of one dtype end to end in a flat index space, cut into
    one contiguous shard per rank, with the buffers of the collectives."""

    def __init__(self, dtype, indices, arrays, rank, size):
        self.dtype, self.indices = dtype, indices
        self.starts = [0]
        for a in arrays:
            self.starts.append(self.starts[-1] + a.size)
        self.total = self.starts[-1]
        base, extra = divmod(self.total, size)
        self.counts = [base + (r < extra) for r in range(size)]
        self.displs = [sum(self.counts[:r]) for r in range(size)]
        self.lo = self.displs[rank]
        self.hi = self.lo + self.counts[rank]
        self.mpi_type = mpi_type(dtype)
        self.gshard = np.zeros(self.hi - self.lo, dtype)  # this rank's mean gradient
        block = contiguous_block(arrays)
        self.param_block = block if block is not None and block.flags.writeable else None
        self._scratch = None
        self.grad_key = self.grad_block = None

    @property
    def scratch(self):
        """A full-size buffer, allocated on first use and kept."""
        if self._scratch is None:
            self._scratch = np.zeros(self.total, self.dtype)
        return self._scratch

    def piece(self, k):
        """``(start, stop)`` of tensor ``k``'s part of this rank's shard, in
        the tensor's own flat index (``(0, 0)`` when it has none)."""
        s, e = self.starts[k], self.starts[k + 1]
        a, b = max(s, self.lo), min(e, self.hi)
        return (a - s, b - s) if a < b else (0, 0)

    def shard_of(self, pieces):
        """This rank's shard, assembled from per-tensor pieces (None: zeros)."""
        out = np.zeros(self.hi - self.lo, self.dtype)
        for k, p in enumerate(pieces):
            a, b = self.piece(k)
            if p is not None and b > a:
                out[self.starts[k] + a - self.lo:self.starts[k] + b - self.lo] = p
        return out

    def copy_plan(self, params, bounds):
        """``(own, others)``: pairs of views (scratch part, parameter part) of
        this rank's pieces of ``params`` (this layout's tensors, their pieces
        at ``bounds``) and of everything else, so the all-gather copies
        without allocating; empty when the parameters tile a block."""
        own, others = [], []
        if self.param_block is None:
            buf = self.scratch
            for k, (param, (a, b)) in enumerate(zip(params, bounds)):
                s, e = self.starts[k], self.starts[k + 1]
                flat = param.reshape(-1)
                if b > a:
                    own.append((buf[s + a:s + b], flat[a:b]))
                outside = ((0, a), (b, e - s)) if b > a else ((0, e - s),)
                for x, y in outside:
                    if y > x:
                        others.append((buf[s + x:s + y], flat[x:y]))
        return own, others

    def send_buffer(self, grads):
        """The local gradients of this layout's tensors as one flat array:
        the gradients' own memory when they tile one block, else the scratch."""
        if len(grads) == 1 and grads[0] is not None:
            return grads[0].reshape(-1)
        key = self.grad_key
        if key is not None and all(g is k for g, k in zip(grads, key)):
            return self.grad_block
        if all(g is not None for g in grads):
            block = contiguous_block(grads)
            if block is not None:
                self.grad_key, self.grad_block = grads, block
                return block
        buf = self.scratch
        for k, g in enumerate(grads):
            if g is not None:
                buf[self.starts[k]:self.starts[k + 1]] = g.reshape(-1)
        return buf


def contiguous_block(arrays):
    """The contiguous 1-D array that ``arrays`` (C-contiguous, one dtype) tile
    end to end in their order, as a view of their memory, or None."""
    first = arrays[0]
    if len(arrays) == 1:
        return first.reshape(-1)
    root = first
    while isinstance(root.base, np.ndarray):
        root = root.base
    if root.dtype != first.dtype or not root.flags.c_contiguous:
        return None
    start = end = first.ctypes.data
    for a in arrays:
        if a.size and a.ctypes.data != end:
            return None
        end += a.nbytes
    offset, rem = divmod(start - root.ctypes.data, root.itemsize)
    total = (end - start) // root.itemsize
    if rem or offset < 0 or offset + total > root.size:
        return None
    return root.reshape(-1)[offset:offset + total]

