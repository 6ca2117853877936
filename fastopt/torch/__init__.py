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

8-bit state: ``state_dtype="int8"`` (or ``torch.int8``) keeps each state
tensor as 8-bit codes plus one float32 scale per 256 elements of the
flattened (row-major) parameter (:mod:`fastopt.backends.numba_int8`;
:func:`fastopt.reference.q8_encode` is the code's specification), for
``Adam``/``AdamW`` (AMSGrad too), ``SGD`` with momentum, ``RMSprop`` (not
centred) and ``Adagrad``; other classes and centred RMSprop raise a
``ValueError``.  ``state[p]`` holds torch's keys with the codes -- a
``torch.int8`` tensor of ``p``'s shape for a slot that can be negative
(``exp_avg``, ``momentum_buffer``), ``torch.uint8`` for one that cannot
(``exp_avg_sq``, ``max_exp_avg_sq``, ``square_avg``, ``sum``) -- and each
key plus ``"_scales"`` (``exp_avg_scales``...: 1-D float32, ``ceil(numel /
256)``).  float32 parameters are updated in place; bfloat16 and float16 ones
(and float32 ones that are not contiguous) through a contiguous float32 copy,
rounded to nearest as it is written back; float64 ones are a ``TypeError``.
``torch.optim`` cannot load such a ``state_dict`` (it would cast the codes to
floats and step with them as if they were the moments), and
``load_state_dict`` refuses state of the other kind -- float state into an
``int8`` optimizer or 8-bit state into one without -- with a ``ValueError``,
changing nothing.

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
