"""fastopt: fused optimizer kernels for NumPy training loops.

>>> import numpy as np, fastopt
>>> w = np.zeros((4, 1), np.float32); b = np.zeros(1, np.float32)
>>> opt = fastopt.Adam([w, b], learning_rate=1e-3)
>>> opt.step([np.ones_like(w), np.ones_like(b)])   # w and b updated in place

The heavier subpackages (``fastopt.train``, ``fastopt.distributed``,
``fastopt.torch``, ``fastopt.bench``) are imported when first used, as
attributes (``fastopt.train.fit``) or by name (``import fastopt.train``).
"""
import importlib

from . import reference, schedules
from .backends import (available_backends, get_backend, get_num_threads,
                       get_parallel_threshold, set_num_threads, set_parallel_threshold)
from .multi_tensor import MultiTensorStep
from .optimizers import (ASGD, SGD, Adadelta, Adafactor, Adagrad, Adam, Adamax, AdamW, Ftrl, Lamb,
                         Lion, Muon, NAdam, Nadam, Optimizer, RAdam, RMSprop, Rprop,
                         ScheduleFreeAdamW)
from .state import StateFileError, load_state, save_state

__version__ = "0.1.0"

__all__ = [
    "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Adamax", "Ftrl", "Lion", "Adadelta",
    "Nadam", "NAdam", "ASGD", "RAdam", "Rprop", "Lamb", "Adafactor", "Muon", "ScheduleFreeAdamW",
    "Optimizer", "MultiTensorStep",
    "available_backends", "get_backend", "set_num_threads", "get_num_threads",
    "set_parallel_threshold", "get_parallel_threshold",
    "save_state", "load_state", "StateFileError", "schedules", "reference", "train",
    "__version__",
]

#: subpackages imported on first access
_LAZY_SUBPACKAGES = ("train", "distributed", "torch", "bench", "scipy")


def __getattr__(name):
    if name in _LAZY_SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_LAZY_SUBPACKAGES})
