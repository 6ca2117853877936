"""Backward-compatible home of the optimizer base class, which now lives in
:mod:`fastopt.optimizer`."""
from ..optimizer import Optimizer

__all__ = ["Optimizer"]
