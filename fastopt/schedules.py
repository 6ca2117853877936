"""Learning-rate schedules with Keras 3 names, arguments and formulas.

A schedule is a callable object mapping the optimizer's iteration count
``step`` (the number of updates already applied) to a learning rate. All
arithmetic is done in float64 on the host and the result is a Python
``float``.

Every schedule can be turned into a JSON-able dict and back::

    >>> s = ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    >>> s(20)
    0.025
    >>> deserialize(serialize(s))(20)
    0.025
"""

import bisect
import math
import numbers

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
# Argument validation
# ---------------------------------------------------------------------------


def _number(name, value):
    """Return ``value`` as a Python int or float; TypeError if not a real number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number, got {value!r} "
            f"of type {type(value).__name__}"
        )
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _is_finite(value):
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _finite(name, value):
    value = _number(name, value)
    if not _is_finite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _positive(name, value):
    value = _finite(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def _non_negative(name, value):
    value = _finite(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return float(value)


_learning_rate = _non_negative


def _alpha(value):
    value = float(_finite("alpha", value))
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {value!r}")
    return value


def _count(name, value):
    value = _finite(name, value)
    if value != int(value):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return int(value)


def _flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def _step(step):
    """Validate the ``step`` passed to a schedule and return it as a float."""
    if getattr(step, "ndim", None) == 0 and hasattr(step, "item"):
        step = step.item()  # 0-d array
    step = _number("step", step)
    try:
        s = float(step)
    except OverflowError:
        s = math.inf
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"step must be a finite number >= 0, got {step!r}")
    return s


# ---------------------------------------------------------------------------
# Base class
# ---------------------------------------------------------------------------


class LearningRateSchedule:
    """Base class of the learning-rate schedules.

    Subclasses implement ``_value(s)``, the learning rate at the validated
    float step ``s``, and ``get_config()``. Calling the schedule checks that
    ``step`` is a finite number >= 0 and returns ``float(self._value(s))``.
    """

    def __call__(self, step):
        """Return the learning rate after ``step`` optimizer updates.

        Parameters
        ----------
        step : int or float
            Number of updates already applied (Python or numpy scalar, >= 0).

        Returns
        -------
        float
            The learning rate, computed in float64.

        Raises
        ------
        ValueError
            If ``step`` is negative or not finite.
        TypeError
            If ``step`` is not a real number.
        """
        return float(self._value(_step(step)))

    def _value(self, s):
        raise NotImplementedError

    def get_config(self):
        """Return the constructor arguments as a JSON-able dict."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        """Build a schedule from a dict returned by :meth:`get_config`."""
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


# ---------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------


class ExponentialDecay(LearningRateSchedule):
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

    def __init__(self, initial_learning_rate, decay_steps, decay_rate,
                 staircase=False):
        self.initial_learning_rate = _learning_rate(
            "initial_learning_rate", initial_learning_rate)
        self.decay_steps = _positive("decay_steps", decay_steps)
        self.decay_rate = _non_negative("decay_rate", decay_rate)
        self.staircase = _flag("staircase", staircase)

    def _value(self, s):
        p = s / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return self.initial_learning_rate * self.decay_rate ** p

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
        }


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


class InverseTimeDecay(LearningRateSchedule):
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

    def __init__(self, initial_learning_rate, decay_steps, decay_rate,
                 staircase=False):
        self.initial_learning_rate = _learning_rate(
            "initial_learning_rate", initial_learning_rate)
        self.decay_steps = _positive("decay_steps", decay_steps)
        self.decay_rate = _non_negative("decay_rate", decay_rate)
        self.staircase = _flag("staircase", staircase)

    def _value(self, s):
        p = s / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return self.initial_learning_rate / (1.0 + self.decay_rate * p)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
        }


def _cosine(fraction, alpha):
    """Cosine factor going from 1 (fraction 0) to ``alpha`` (fraction 1)."""
    return (1.0 - alpha) * 0.5 * (1.0 + math.cos(math.pi * fraction)) + alpha


class CosineDecay(LearningRateSchedule):
    """Cosine decay, optionally after a linear warmup.

    Without warmup (``warmup_target=None``), with ``S = min(step, decay_steps)``::

        lr = initial_learning_rate * ((1 - alpha) * 0.5 * (1 + cos(pi * S / decay_steps)) + alpha)

    With warmup, ``S = min(step, warmup_steps + decay_steps)``; for
    ``S < warmup_steps`` the rate rises linearly,
    ``lr = initial_learning_rate + (warmup_target - initial_learning_rate) * S / warmup_steps``,
    and afterwards it is the cosine decay above started from ``warmup_target``
    at ``S - warmup_steps``.

    Parameters
    ----------
    initial_learning_rate : float
        Learning rate at step 0 (finite, >= 0).
    decay_steps : int or float
        Length of the cosine decay (> 0).
    alpha : float, default 0.0
        Final rate as a fraction of the starting rate, in [0, 1].
    warmup_target : float or None, default None
        Rate reached at the end of the warmup (finite, >= 0); None disables
        the warmup.
    warmup_steps : int, default 0
        Length of the warmup (>= 0). With ``warmup_target`` set and
        ``warmup_steps=0`` the decay starts from ``warmup_target`` at step 0.
    """

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0,
                 warmup_target=None, warmup_steps=0):
        self.initial_learning_rate = _learning_rate(
            "initial_learning_rate", initial_learning_rate)
        self.decay_steps = _positive("decay_steps", decay_steps)
        self.alpha = _alpha(alpha)
        self.warmup_target = (None if warmup_target is None else
                              _learning_rate("warmup_target", warmup_target))
        self.warmup_steps = _count("warmup_steps", warmup_steps)

    def _value(self, s):
        if self.warmup_target is None:
            s = min(s, self.decay_steps)
            return self.initial_learning_rate * _cosine(s / self.decay_steps, self.alpha)
        s = min(s, self.decay_steps + self.warmup_steps)
        if s < self.warmup_steps:
            rise = self.warmup_target - self.initial_learning_rate
            return rise * (s / self.warmup_steps) + self.initial_learning_rate
        fraction = (s - self.warmup_steps) / self.decay_steps
        return self.warmup_target * _cosine(fraction, self.alpha)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "alpha": self.alpha,
            "warmup_target": self.warmup_target,
            "warmup_steps": self.warmup_steps,
        }


class CosineDecayRestarts(LearningRateSchedule):
    """Cosine decay with warm restarts (SGDR).

    Period ``i`` (from 0) lasts ``first_decay_steps * t_mul**i`` steps and has
    amplitude ``m_mul**i``. With ``f`` the fraction of period ``i`` elapsed::

        lr = initial_learning_rate * ((1 - alpha) * 0.5 * m_mul**i * (1 + cos(pi * f)) + alpha)

    where, for ``t_mul == 1``, ``i = floor(step / first_decay_steps)``, and
    otherwise ``i = floor(log(1 - (step / first_decay_steps) * (1 - t_mul)) / log(t_mul))``
    and ``f = (step / first_decay_steps - (1 - t_mul**i) / (1 - t_mul)) / t_mul**i``.

    Parameters
    ----------
    initial_learning_rate : float
        Learning rate at step 0 (finite, >= 0).
    first_decay_steps : int or float
        Length of the first period (> 0).
    t_mul : float, default 2.0
        Factor by which each period is longer than the previous one (> 0).
    m_mul : float, default 1.0
        Factor by which each restart's rate is scaled (finite, >= 0). With
        ``m_mul > 1`` the rate grows without bound and eventually overflows.
    alpha : float, default 0.0
        Floor of the rate as a fraction of ``initial_learning_rate``, in
        [0, 1].

    Notes
    -----
    ``i`` is the exact floor: the logarithm ratio is corrected when rounding
    puts it just below an integer (e.g. ``log(1000) / log(10)``), so every
    restart starts at exactly ``initial_learning_rate * m_mul**i``.
    With ``t_mul < 1`` the periods shrink geometrically and all fit in
    ``first_decay_steps / (1 - t_mul)`` steps; at and past that step the rate
    stays at ``initial_learning_rate * alpha``.
    """

    def __init__(self, initial_learning_rate, first_decay_steps, t_mul=2.0,
                 m_mul=1.0, alpha=0.0):
        self.initial_learning_rate = _learning_rate(
            "initial_learning_rate", initial_learning_rate)
        self.first_decay_steps = _positive("first_decay_steps", first_decay_steps)
        self.t_mul = float(_positive("t_mul", t_mul))
        self.m_mul = _non_negative("m_mul", m_mul)
        self.alpha = _alpha(alpha)

    def _period_start(self, i):
        """Start of period ``i`` in units of ``first_decay_steps``."""
        return (1.0 - self.t_mul ** i) / (1.0 - self.t_mul)

    def _value(self, s):
        f = s / self.first_decay_steps
        t = self.t_mul
        if t == 1.0:
            i = math.floor(f)
            f -= i
        else:
            arg = 1.0 - f * (1.0 - t)
            if arg <= 0.0:  # t_mul < 1: past the point where the periods accumulate
                return self.initial_learning_rate * self.alpha
            i = max(0, math.floor(math.log(arg) / math.log(t)))
            # Correct a floor that rounding put one period off.
            if self._period_start(i + 1) <= f:
                i += 1
            elif i > 0 and self._period_start(i) > f:
                i -= 1
            f = (f - self._period_start(i)) / t ** i
        amplitude = self.m_mul ** i
        return self.initial_learning_rate * (
            (1.0 - self.alpha) * 0.5 * amplitude * (1.0 + math.cos(math.pi * f))
            + self.alpha)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "first_decay_steps": self.first_decay_steps,
            "t_mul": self.t_mul,
            "m_mul": self.m_mul,
            "alpha": self.alpha,
        }


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
