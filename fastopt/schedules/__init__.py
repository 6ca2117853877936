"""Learning-rate schedules with Keras 3 names, arguments and formulas.

A schedule is a callable object mapping ``step``, the number of ``step``
calls the optimizer has made before this one (:attr:`fastopt.Optimizer.calls`;
as in Keras, under gradient accumulation this counts every call, not only the
updates) to a learning rate. All
arithmetic is done in float64 on the host and the result is a Python
``float``.

Every schedule can be turned into a JSON-able dict and back::

    >>> s = ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    >>> s(20)
    0.025
    >>> deserialize(serialize(s))(20)
    0.025
"""

from .base import LearningRateSchedule
from .cosine import CosineDecay, CosineDecayRestarts
from .decay import ExponentialDecay, InverseTimeDecay, PiecewiseConstantDecay, PolynomialDecay

__all__ = [
    "LearningRateSchedule",
    "ExponentialDecay",
    "PiecewiseConstantDecay",
    "PolynomialDecay",
    "InverseTimeDecay",
    "CosineDecay",
    "CosineDecayRestarts",
    "serialize",
    "deserialize",
]


# ---------------------------------------------------------------------------
# Serialization
# ---------------------------------------------------------------------------

_SCHEDULES = {
    cls.__name__: cls
    for cls in (ExponentialDecay, PiecewiseConstantDecay, PolynomialDecay,
                InverseTimeDecay, CosineDecay, CosineDecayRestarts)
}


def serialize(schedule):
    """Return ``{"class_name": ..., "config": ...}`` describing ``schedule``.

    Parameters
    ----------
    schedule : LearningRateSchedule

    Returns
    -------
    dict
        JSON-able description, accepted by :func:`deserialize`.
    """
    if not isinstance(schedule, LearningRateSchedule):
        raise TypeError(
            f"schedule must be a LearningRateSchedule, got {schedule!r}")
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}


def deserialize(config):
    """Rebuild a schedule from the output of :func:`serialize`.

    Parameters
    ----------
    config : dict
        ``{"class_name": name, "config": constructor_arguments}``.

    Returns
    -------
    LearningRateSchedule

    Raises
    ------
    ValueError
        If ``class_name`` is not one of this module's schedules, or a key is
        missing.
    """
    if not isinstance(config, dict) or not {"class_name", "config"} <= config.keys():
        raise ValueError(
            f"expected a dict with 'class_name' and 'config' keys, got {config!r}")
    name = config["class_name"]
    cls = _SCHEDULES.get(name)
    if cls is None:
        raise ValueError(
            f"unknown schedule class_name {name!r}; known: {sorted(_SCHEDULES)}")
    return cls.from_config(dict(config["config"]))
