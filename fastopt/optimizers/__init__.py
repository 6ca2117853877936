"""Optimizer classes: one module per family, on one base class."""
from .adagrad import Adagrad
from .adam import Adam, AdamW
from ..optimizer import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adam", "AdamW"]
