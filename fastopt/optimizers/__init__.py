"""The optimizer classes (each defined in its family module of
:mod:`fastopt.algorithms`), on one base class."""
from ..algorithms.adadelta import Adadelta
from ..algorithms.adafactor import Adafactor
from ..algorithms.adagrad import Adagrad
from ..algorithms.adam import Adam, AdamW
from ..algorithms.adamax import Adamax
from ..algorithms.ftrl import Ftrl
from ..algorithms.lamb import Lamb
from ..algorithms.lion import Lion
from ..algorithms.muon import Muon
from ..algorithms.asgd import ASGD
from ..algorithms.nadam import NAdam, Nadam
from ..algorithms.radam import RAdam
from ..algorithms.rprop import Rprop
from ..algorithms.rmsprop import RMSprop
from ..algorithms.schedulefree import ScheduleFreeAdamW
from ..algorithms.sgd import SGD
from ..optimizer import Optimizer

__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Adamax", "Ftrl", "Lion",
           "Adadelta", "Nadam", "NAdam", "ASGD", "RAdam", "Rprop", "Lamb", "Adafactor", "Muon",
           "ScheduleFreeAdamW"]
