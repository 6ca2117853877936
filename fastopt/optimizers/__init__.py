"""The optimizer classes (each defined in its family module of
:mod:`fastopt.algorithms`), on one base class."""
from ..algorithms.adagrad import Adagrad
from ..algorithms.adam import Adam, AdamW
from ..algorithms.adamax import Adamax
from ..algorithms.radam import RAdam
from ..algorithms.rprop import Rprop
from ..algorithms.rmsprop import RMSprop
from ..algorithms.sgd import SGD
from ..optimizer import Optimizer

__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Adamax", "RAdam",
           "Rprop"]
