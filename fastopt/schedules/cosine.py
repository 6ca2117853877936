"""Cosine decay, with warm-up, and cosine decay with warm restarts."""

import math

from .base import LearningRateSchedule, _alpha, _count, _learning_rate, _non_negative, _positive

__all__ = ["CosineDecay", "CosineDecayRestarts"]


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
