"""Argument checks shared by the optimizers: each names the argument and value."""
from __future__ import annotations

import math
import numbers


def real(owner, name, value, *, low=None, high=None, low_open=False, high_open=False,
         allow_none=False):
    """Return ``value`` as a float after checking its type and range."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {value!r} "
                        f"({type(value).__name__})")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"{owner}: {name} must be finite, got {x!r}")
    if low is not None and (x < low or (low_open and x == low)):
        raise ValueError(f"{owner}: {name} must be {'>' if low_open else '>='} {low}, got {x!r}")
    if high is not None and (x > high or (high_open and x == high)):
        raise ValueError(f"{owner}: {name} must be {'<' if high_open else '<='} {high}, got {x!r}")
    return x


def boolean(owner, name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be True or False, got {value!r}")
    return value


#: PyTorch-style spellings users bring along that no optimizer's own table
#: (``Optimizer._TORCH_NAMES``) lists, mapped to fastopt's Keras names.
TORCH_SPELLINGS = {"initial_accumulator": "initial_accumulator_value"}


def unknown_keywords(owner, unknown, valid, spellings=None):
    """The ValueError for hyperparameters the optimizer does not have;
    ``spellings`` maps PyTorch's names to the optimizer's (hints)."""
    spellings = {**TORCH_SPELLINGS, **(spellings or {})}
    hints = [f"{k!r} (did you mean {spellings[k]}?)" if k in spellings else repr(k)
             for k in sorted(unknown)]
    return ValueError(f"{owner}: unknown hyperparameter(s) {', '.join(hints)}; "
                      f"valid: {', '.join(sorted(valid))}")
