"""The schedule base class and the argument checks the schedules share."""

import math
import numbers

__all__ = ["LearningRateSchedule"]


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
        """Return the learning rate after ``step`` optimizer steps.

        Parameters
        ----------
        step : int or float
            Number of optimizer ``step`` calls already made (Python or numpy
            scalar, >= 0): :attr:`fastopt.Optimizer.calls`, which under
            gradient accumulation counts the calls that only accumulate too.

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
