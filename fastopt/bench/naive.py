"""The plain NumPy optimizer steps a user would write without fastopt.

Each function is the textbook update for one of fastopt's Keras rules, written
the way a competent NumPy user writes it: whole-array expressions (each one
allocating its temporaries), state updated in place by slice assignment, the
parameter updated with ``-=`` / ``+=``.  No ``out=`` arguments, no fusion, no
buffer reuse.  Everything runs in the parameter's dtype (Python float
hyperparameters do not upcast float32 arrays under NumPy 2's promotion rules).

These are the "naive" baseline of ``fastopt bench`` and of the benchmark
suite.  They follow the same Keras formulas as fastopt, except Adam's, which
is the paper's (and PyTorch's): epsilon is added after the bias correction of
``v`` here, before it in Keras.  Both do the same work.

Use :func:`stepper` for a ready-to-time step, or :func:`init_state` for the
slots and :data:`NAIVE` to look a step up::

    state = init_state("adam", w)
    NAIVE["adam"](w, g, *state, t=1)
"""
from __future__ import annotations

import numpy as np

__all__ = ["sgd", "sgd_momentum", "sgd_nesterov", "adagrad", "rmsprop",
           "rmsprop_momentum", "rmsprop_centered", "rmsprop_centered_momentum",
           "adam", "adam_amsgrad", "adamax", "adamw", "radam", "rprop", "NAIVE", "SLOTS",
           "init_state", "stepper"]


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


def adamax(w, g, m, u, t=1, lr=0.001, beta_1=0.9, beta_2=0.999, eps=1e-7):
    """Adamax: ``u`` the decayed infinity norm of the gradients."""
    m[:] = beta_1 * m + (1 - beta_1) * g
    u[:] = np.maximum(beta_2 * u, np.abs(g))
    w -= lr / (1 - beta_1 ** t) * m / (u + eps)


def adamw(w, g, m, v, t=1, lr=0.001, beta_1=0.9, beta_2=0.999, eps=1e-7, weight_decay=0.004):
    """AdamW: decoupled weight decay ``w <- w - lr * wd * w``, then Adam."""
    w -= lr * weight_decay * w
    adam(w, g, m, v, t, lr, beta_1, beta_2, eps)


def radam(w, g, m, v, t=1, lr=0.001, beta_1=0.9, beta_2=0.999, eps=1e-8):
    """RAdam (PyTorch's): Adam with a rectified step once ``rho_t > 5``,
    bias-corrected momentum SGD before."""
    m[:] = beta_1 * m + (1 - beta_1) * g
    v[:] = beta_2 * v + (1 - beta_2) * g * g
    mhat = m / (1 - beta_1 ** t)
    rho_inf = 2 / (1 - beta_2) - 1
    rho_t = rho_inf - 2 * t * beta_2 ** t / (1 - beta_2 ** t)
    if rho_t > 5:
        r = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        w -= lr * r * mhat * (1 - beta_2 ** t) ** 0.5 / (np.sqrt(v) + eps)
    else:
        w -= lr * mhat


def rprop(w, g, prev, step_size, t=1, lr=0.01, eta_minus=0.5, eta_plus=1.2,
          step_size_min=1e-6, step_size_max=50.0):
    """Rprop (PyTorch's): per-element step sizes, grown while the gradient
    keeps its sign, shrunk (and that gradient dropped) when it flips."""
    if t == 1:
        step_size[:] = lr
    s = np.sign(g * prev)
    factor = np.ones_like(step_size)
    factor[s > 0] = eta_plus
    factor[s < 0] = eta_minus
    step_size[:] = np.clip(step_size * factor, step_size_min, step_size_max)
    g = g.copy()
    g[s < 0] = 0
    w -= np.sign(g) * step_size
    prev[:] = g


#: name -> naive step function (fastopt's Keras rule names, adamw, radam and rprop)
NAIVE = {f.__name__: f for f in (sgd, sgd_momentum, sgd_nesterov, adagrad, rmsprop,
                                 rmsprop_momentum, rmsprop_centered,
                                 rmsprop_centered_momentum, adam, adam_amsgrad, adamax,
                                 adamw, radam, rprop)}

#: name -> number of state arrays (slots) the step takes after ``g``
SLOTS = {"sgd": 0, "sgd_momentum": 1, "sgd_nesterov": 1, "adagrad": 1, "rmsprop": 1,
         "rmsprop_momentum": 2, "rmsprop_centered": 2, "rmsprop_centered_momentum": 3,
         "adam": 2, "adam_amsgrad": 3, "adamax": 2, "adamw": 2, "radam": 2, "rprop": 2}


def init_state(rule, w):
    """Fresh slots for ``rule`` shaped like ``w`` (Adagrad's accumulator at 0.1, as Keras)."""
    fill = 0.1 if rule == "adagrad" else 0.0
    return [np.full_like(w, fill) for _ in range(SLOTS[rule])]


def stepper(name, params, grads):
    """A no-argument callable running one naive step of ``name`` on every
    tensor of ``params`` (a list) with the matching gradient of ``grads``:
    each tensor its own slots and its own NumPy expressions, as a user's loop
    over the layers does.  The step count advances with each call."""
    fn = NAIVE[name]
    pairs = [(w, g, init_state(name, w)) for w, g in zip(params, grads)]
    t = [0]

    def step():
        t[0] += 1
        for w, g, state in pairs:
            fn(w, g, *state, t=t[0])
    return step
