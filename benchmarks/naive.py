"""The plain NumPy optimizer steps a user would write without fastopt.

Each function is the textbook update for one of fastopt's ten rules, written
the way a competent NumPy user writes it: whole-array expressions (each one
allocating its temporaries), state updated in place by slice assignment, the
parameter updated with ``-=`` / ``+=``.  No ``out=`` arguments, no fusion, no
buffer reuse.  Everything runs in the parameter's dtype (Python float
hyperparameters do not upcast float32 arrays under NumPy 2's promotion rules).

These are the "naive" baseline of the benchmarks; they follow the same Keras
formulas as fastopt (up to rounding: e.g. Adam's bias corrections are applied
to ``m`` and ``v`` here, folded into one step size by fastopt).

Use :func:`init_state` for the slots and :data:`NAIVE` to look a rule up::

    state = init_state("adam", w)
    NAIVE["adam"](w, g, *state, t=1)
"""
from __future__ import annotations

import numpy as np

__all__ = ["sgd", "sgd_momentum", "sgd_nesterov", "adagrad", "rmsprop",
           "rmsprop_momentum", "rmsprop_centered", "rmsprop_centered_momentum",
           "adam", "adam_amsgrad", "NAIVE", "SLOTS", "init_state", "run_step", "stepper"]


def sgd(w, g, t=1, lr=0.01):
    """Plain SGD: ``w <- w - lr * g``."""
    w -= lr * g


def sgd_momentum(w, g, m, t=1, lr=0.01, momentum=0.3):
    """SGD with (Keras-style) momentum: ``m <- mu m - lr g; w <- w + m``."""
    m[:] = momentum * m - lr * g
    w += m


def sgd_nesterov(w, g, m, t=1, lr=0.01, momentum=0.3):
    """SGD with Nesterov momentum: ``m <- mu m - lr g; w <- w + mu m - lr g``."""
    m[:] = momentum * m - lr * g
    w += momentum * m - lr * g


def adagrad(w, g, acc, t=1, lr=0.001, eps=1e-7):
    """Adagrad: ``acc <- acc + g^2; w <- w - lr g / sqrt(acc + eps)``."""
    acc[:] = acc + g * g
    w -= lr * g / np.sqrt(acc + eps)


def rmsprop(w, g, v, t=1, lr=0.001, rho=0.9, eps=1e-7):
    """RMSprop: ``v <- rho v + (1 - rho) g^2; w <- w - lr g / sqrt(v + eps)``."""
    v[:] = rho * v + (1 - rho) * g * g
    w -= lr * g / np.sqrt(v + eps)


def rmsprop_momentum(w, g, v, mom, t=1, lr=0.001, rho=0.9, momentum=0.5, eps=1e-7):
    """RMSprop with momentum: the RMSprop increment accumulated in ``mom``."""
    v[:] = rho * v + (1 - rho) * g * g
    mom[:] = momentum * mom + lr * g / np.sqrt(v + eps)
    w -= mom


def rmsprop_centered(w, g, v, a, t=1, lr=0.001, rho=0.9, eps=1e-7):
    """Centred RMSprop: divide by the running variance ``v - a^2`` of ``g``."""
    v[:] = rho * v + (1 - rho) * g * g
    a[:] = rho * a + (1 - rho) * g
    w -= lr * g / np.sqrt(v - a * a + eps)


def rmsprop_centered_momentum(w, g, v, a, mom, t=1, lr=0.001, rho=0.9, momentum=0.5,
                              eps=1e-7):
    """Centred RMSprop with momentum."""
    v[:] = rho * v + (1 - rho) * g * g
    a[:] = rho * a + (1 - rho) * g
    mom[:] = momentum * mom + lr * g / np.sqrt(v - a * a + eps)
    w -= mom


def adam(w, g, m, v, t=1, lr=0.001, beta_1=0.9, beta_2=0.999, eps=1e-7):
    """Adam with bias-corrected moments ``mhat``, ``vhat`` (``t`` starts at 1)."""
    m[:] = beta_1 * m + (1 - beta_1) * g
    v[:] = beta_2 * v + (1 - beta_2) * g * g
    mhat = m / (1 - beta_1 ** t)
    vhat = v / (1 - beta_2 ** t)
    w -= lr * mhat / (np.sqrt(vhat) + eps)


def adam_amsgrad(w, g, m, v, vmax, t=1, lr=0.001, beta_1=0.9, beta_2=0.999, eps=1e-7):
    """AMSGrad: Adam dividing by the running maximum of ``v``."""
    m[:] = beta_1 * m + (1 - beta_1) * g
    v[:] = beta_2 * v + (1 - beta_2) * g * g
    vmax[:] = np.maximum(vmax, v)
    mhat = m / (1 - beta_1 ** t)
    vhat = vmax / (1 - beta_2 ** t)
    w -= lr * mhat / (np.sqrt(vhat) + eps)


#: rule name -> naive step function (same names as fastopt's rules)
NAIVE = {f.__name__: f for f in (sgd, sgd_momentum, sgd_nesterov, adagrad, rmsprop,
                                 rmsprop_momentum, rmsprop_centered,
                                 rmsprop_centered_momentum, adam, adam_amsgrad)}

#: rule name -> number of state arrays (slots) the step takes after ``g``
SLOTS = {"sgd": 0, "sgd_momentum": 1, "sgd_nesterov": 1, "adagrad": 1, "rmsprop": 1,
         "rmsprop_momentum": 2, "rmsprop_centered": 2, "rmsprop_centered_momentum": 3,
         "adam": 2, "adam_amsgrad": 3}


def init_state(rule, w):
    """Fresh slots for ``rule`` shaped like ``w`` (Adagrad's accumulator at 0.1, as Keras)."""
    fill = 0.1 if rule == "adagrad" else 0.0
    return [np.full_like(w, fill) for _ in range(SLOTS[rule])]


def run_step(rule, w, g, state, t):
    """One naive step of ``rule`` with default hyperparameters."""
    NAIVE[rule](w, g, *state, t=t)


# --- the cases the benchmarks run (benchmarks' own copy of the table) -----------

def cases():
    """``[(rule, fastopt class, keyword arguments)]``: every rule once.

    Imported lazily so that the naive functions above need only NumPy.
    Hyperparameters match the naive functions' defaults.
    """
    import fastopt
    return [
        ("sgd", fastopt.SGD, {}),
        ("sgd_momentum", fastopt.SGD, {"momentum": 0.3}),
        ("sgd_nesterov", fastopt.SGD, {"momentum": 0.3, "nesterov": True}),
        ("adagrad", fastopt.Adagrad, {}),
        ("rmsprop", fastopt.RMSprop, {}),
        ("rmsprop_momentum", fastopt.RMSprop, {"momentum": 0.5}),
        ("rmsprop_centered", fastopt.RMSprop, {"centered": True}),
        ("rmsprop_centered_momentum", fastopt.RMSprop, {"centered": True, "momentum": 0.5}),
        ("adam", fastopt.Adam, {}),
        ("adam_amsgrad", fastopt.Adam, {"amsgrad": True}),
    ]


RULE_NAMES = list(NAIVE)


def stepper(rule, w, g):
    """A no-argument callable running one naive step of ``rule`` on ``w`` with
    gradient ``g`` (its own slots, the step count advancing each call)."""
    state = init_state(rule, w)
    fn = NAIVE[rule]
    t = [0]

    def step():
        t[0] += 1
        fn(w, g, *state, t=t[0])
    return step


def mixed_shapes(count=200, total=2_000_000, seed=0):
    """``count`` tensor shapes of a small network, summing to exactly ``total``.

    Alternating weight matrices and bias vectors: matrices of log-uniform size
    (a few hundred to ~100k elements), biases of their column count; the last
    matrix is resized so that the total is exact.
    """
    rng = np.random.default_rng(seed)
    shapes = []
    for _ in range(count // 2):
        rows = int(rng.integers(8, 512))
        cols = int(np.exp(rng.uniform(np.log(16), np.log(256))))
        shapes += [(rows, cols), (cols,)]
    sizes = np.array([int(np.prod(s)) for s in shapes], dtype=float)
    # scale the matrices' row counts to reach the total, then fix the last one
    bias = sizes[1::2].sum()
    factor = (total - bias) / sizes[0::2].sum()
    for k in range(0, len(shapes) - 2, 2):
        rows, cols = shapes[k]
        shapes[k] = (max(1, round(rows * factor)), cols)
    rest = total - sum(int(np.prod(s)) for s in shapes[:-2]) - shapes[-1][0]
    shapes[-2] = (rest,)
    assert len(shapes) == count and sum(int(np.prod(s)) for s in shapes) == total
    return shapes
