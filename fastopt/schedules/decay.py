"""Exponential, piecewise-constant, polynomial and inverse-time decay."""

import bisect
import math

from .base import LearningRateSchedule, _finite, _flag, _learning_rate, _non_negative, _positive

__all__ = ["ExponentialDecay", "PiecewiseConstantDecay", "PolynomialDecay",
           "InverseTimeDecay"]


# ---------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------


class _RatePerSteps(LearningRateSchedule):
    """What exponential and inverse-time decay share: an initial rate, a
    decay rate per ``decay_steps`` steps, optionally in whole periods."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate,
                 staircase=False):
        self.initial_learning_rate = _learning_rate(
            "initial_learning_rate", initial_learning_rate)
        self.decay_steps = _positive("decay_steps", decay_steps)
        self.decay_rate = _non_negative("decay_rate", decay_rate)
        self.staircase = _flag("staircase", staircase)

    def _periods(self, s):
        p = s / self.decay_steps
        return math.floor(p) if self.staircase else p

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
        }


class ExponentialDecay(_RatePerSteps):
    """Exponential decay.

    ``lr = initial_learning_rate * decay_rate ** (step / decay_steps)``,
    with the exponent floored when ``staircase`` is true.

    Parameters
    ----------
    initial_learning_rate : float
        Learning rate at step 0 (finite, >= 0).
    decay_steps : int or float
        Number of steps over which the rate is multiplied by ``decay_rate``
        (> 0).
    decay_rate : float
        Multiplier per ``decay_steps`` (finite, >= 0; values > 1 grow).
    staircase : bool, default False
        Decay in discrete jumps every ``decay_steps`` steps.
    """

    def _value(self, s):
        return self.initial_learning_rate * self.decay_rate ** self._periods(s)



class PiecewiseConstantDecay(LearningRateSchedule):
    """Piecewise-constant learning rate.

    ``lr = values[i]`` where ``i`` is the number of boundaries strictly below
    ``step``; that is ``values[0]`` for ``step <= boundaries[0]``,
    ``values[i]`` for ``boundaries[i-1] < step <= boundaries[i]`` and
    ``values[-1]`` for ``step > boundaries[-1]``.

    Parameters
    ----------
    boundaries : sequence of int or float
        Strictly increasing, finite step boundaries.
    values : sequence of float
        ``len(boundaries) + 1`` learning rates (finite, >= 0).
    """

    def __init__(self, boundaries, values):
        boundaries = self._sequence("boundaries", boundaries)
        values = self._sequence("values", values)
        self.boundaries = [
            _finite(f"boundaries[{i}]", b) for i, b in enumerate(boundaries)]
        for i in range(1, len(self.boundaries)):
            if not self.boundaries[i - 1] < self.boundaries[i]:
                raise ValueError(
                    f"boundaries must be strictly increasing, got {boundaries!r}")
        self.values = [
            _learning_rate(f"values[{i}]", v) for i, v in enumerate(values)]
        if len(self.values) != len(self.boundaries) + 1:
            raise ValueError(
                f"values must have len(boundaries) + 1 = "
                f"{len(self.boundaries) + 1} entries, got {len(self.values)}: "
                f"{values!r}")

    @staticmethod
    def _sequence(name, value):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
            raise TypeError(f"{name} must be a sequence of numbers, got {value!r}")
        return list(value)

    def _value(self, s):
        return self.values[bisect.bisect_left(self.boundaries, s)]

    def get_config(self):
        return {"boundaries": list(self.boundaries), "values": list(self.values)}


class PolynomialDecay(LearningRateSchedule):
    """Polynomial decay from ``initial_learning_rate`` to ``end_learning_rate``.

    ``lr = (initial_learning_rate - end_learning_rate) * (1 - S / D) ** power
    + end_learning_rate`` with ``S = min(step, decay_steps)`` and
    ``D = decay_steps``; when ``cycle`` is true, ``S = step`` and
    ``D = decay_steps * max(1, ceil(step / decay_steps))``.

    Parameters
    ----------
    initial_learning_rate : float
        Learning rate at step 0 (finite, >= 0).
    decay_steps : int or float
        Length of one decay (> 0).
    end_learning_rate : float, default 0.0001
        Learning rate reached at ``decay_steps`` (finite, >= 0).
    power : float, default 1.0
        Exponent of the polynomial (finite, >= 0).
    cycle : bool, default False
        Restart the decay, over ever longer spans, once ``decay_steps`` is
        passed.
    """

    def __init__(self, initial_learning_rate, decay_steps,
                 end_learning_rate=0.0001, power=1.0, cycle=False):
        self.initial_learning_rate = _learning_rate(
            "initial_learning_rate", initial_learning_rate)
        self.decay_steps = _positive("decay_steps", decay_steps)
        self.end_learning_rate = _learning_rate(
            "end_learning_rate", end_learning_rate)
        self.power = _non_negative("power", power)
        self.cycle = _flag("cycle", cycle)

    def _value(self, s):
        if self.cycle:
            d = self.decay_steps * (1 if s == 0 else math.ceil(s / self.decay_steps))
        else:
            d = self.decay_steps
            s = min(s, d)
        span = self.initial_learning_rate - self.end_learning_rate
        return span * (1.0 - s / d) ** self.power + self.end_learning_rate

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "end_learning_rate": self.end_learning_rate,
            "power": self.power,
            "cycle": self.cycle,
        }


class InverseTimeDecay(_RatePerSteps):
    """Inverse-time decay.

    ``lr = initial_learning_rate / (1 + decay_rate * step / decay_steps)``,
    with ``step / decay_steps`` floored when ``staircase`` is true.

    Parameters
    ----------
    initial_learning_rate : float
        Learning rate at step 0 (finite, >= 0).
    decay_steps : int or float
        Step scale of the decay (> 0).
    decay_rate : float
        Decay strength (finite, >= 0).
    staircase : bool, default False
        Decay in discrete jumps every ``decay_steps`` steps.
    """

    def _value(self, s):
        return self.initial_learning_rate / (1.0 + self.decay_rate * self._periods(s))

