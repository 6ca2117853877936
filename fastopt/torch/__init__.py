"""``torch.optim`` optimizers that run fastopt's fused kernels.

Drop-in replacements: each class is a subclass of the ``torch.optim`` class of
the same name, constructed with exactly its arguments (names, order, defaults,
validation and errors are torch's own), with the same ``param_groups``,
``state`` and ``state_dict`` format, so schedulers, ``GradScaler``,
checkpoints, ``ZeroRedundancyOptimizer`` and DDP see a ``torch.optim``
optimizer.  Only ``step`` differs: one fused multi-tensor kernel call per
parameter group and dtype, with torch's formulas.

>>> import torch, fastopt.torch
>>> model = torch.nn.Linear(4, 1)
>>> opt = fastopt.torch.AdamW(model.parameters(), lr=1e-3)
>>> model(torch.randn(8, 4)).square().mean().backward()
>>> opt.step(); opt.zero_grad()

Keyword-only extras: ``state_dtype="bfloat16"`` keeps the optimizer state
(``exp_avg``, ``square_avg``...) as bfloat16 tensors for float32 parameters,
with float32 arithmetic (:mod:`fastopt.backends.numba_bf16`), and
``state_rounding`` ("nearest" or "stochastic") says how it is rounded.

``foreach`` and ``fused`` are accepted for compatibility and change nothing
(fastopt always runs its fused kernels); ``capturable=True`` and
``differentiable=True`` are refused.  CPU tensors only for now.  The thread
count follows ``torch.get_num_threads()`` unless :func:`fastopt.set_num_threads`
was called.  See the documentation's "Performance" page
(``docs/performance.md``) for what is measured.

:class:`AdamWScheduleFree` is the authors' schedule-free AdamW
(``schedulefree.AdamWScheduleFree``, a package of its own rather than a
``torch.optim`` class): the package's constructor, state, ``train()`` and
``eval()``, on a ``torch.optim.Optimizer`` base.
"""
from __future__ import annotations

from ._optim import FusedOptimizer
from .adafactor import Adafactor
from .offload import CPUOffload
from .optimizers import (ASGD, SGD, Adadelta, Adagrad, Adam, Adamax, AdamW, Muon, NAdam, RAdam,
                         RMSprop, Rprop)
from .schedulefree import AdamWScheduleFree

__all__ = ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Adamax", "Adadelta", "NAdam", "ASGD",
           "RAdam", "Rprop", "Adafactor", "Muon", "AdamWScheduleFree", "FusedOptimizer",
           "CPUOffload"]
