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
           "adam", "adam_amsgrad", "adamax", "adamw", "ftrl_sqrt", "ftrl", "lion", "lamb",
           "adadelta", "radam", "rprop", "adafactor", "schedulefree_adamw", "NAIVE", "SLOTS",
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


def nadam(w, g, m, v, prod, t=1, lr=0.001, beta_1=0.9, beta_2=0.999, eps=1e-7):
    """Keras Nadam: ``prod`` (one element) the running product of the
    momentum schedule ``u_t = beta_1 * (1 - 0.5 * 0.96^t)``."""
    u = beta_1 * (1 - 0.5 * 0.96 ** t)
    u_next = beta_1 * (1 - 0.5 * 0.96 ** (t + 1))
    prod *= u
    m[:] = beta_1 * m + (1 - beta_1) * g
    v[:] = beta_2 * v + (1 - beta_2) * g * g
    mhat = u_next * m / (1 - prod * u_next) + (1 - u) * g / (1 - prod)
    w -= lr * mhat / (np.sqrt(v / (1 - beta_2 ** t)) + eps)


def nadam_torch(w, g, m, v, prod, t=1, lr=0.002, beta_1=0.9, beta_2=0.999, eps=1e-8,
                momentum_decay=4e-3):
    """PyTorch NAdam: ``prod`` (one element) the running product of
    ``mu_t = beta_1 * (1 - 0.5 * 0.96^(t * momentum_decay))``, kept in
    float32 as torch keeps it."""
    mu = beta_1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))
    mu_next = beta_1 * (1 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
    prod[0] = np.float32(prod[0]) * np.float32(mu)
    prod = float(np.float32(prod[0]))
    m[:] = m + (1 - beta_1) * (g - m)
    v[:] = beta_2 * v + (1 - beta_2) * g * g
    d = np.sqrt(v / (1 - beta_2 ** t)) + eps
    w -= lr * (1 - mu) / (1 - prod) * g / d + lr * mu_next / (1 - prod * mu_next) * m / d


def asgd_torch(w, g, ax, em, t=1, lr=0.01, lambd=1e-4, alpha=0.75, t0=1e6):
    """PyTorch ASGD: ``em`` holds ``eta`` and ``mu`` from the step before,
    float32 values as torch keeps them (``eta = lr``, ``mu = 1`` at first)."""
    if t == 1:
        em[:] = (np.float32(lr), 1.0)
    eta, mu = float(em[0]), float(em[1])
    w *= 1 - lambd * eta
    w -= eta * g
    if mu == 1:
        ax[:] = w
    else:
        ax += mu * (w - ax)
    em[:] = (np.float32(lr / (1 + lambd * lr * t) ** alpha), np.float32(1 / max(1, t - t0)))


def adamw(w, g, m, v, t=1, lr=0.001, beta_1=0.9, beta_2=0.999, eps=1e-7, weight_decay=0.004):
    """AdamW: decoupled weight decay ``w <- w - lr * wd * w``, then Adam."""
    w -= lr * weight_decay * w
    adam(w, g, m, v, t, lr, beta_1, beta_2, eps)


def _ftrl_weights(w, z, n_power, lr, l1, l2, beta):
    w[:] = np.where(np.abs(z) <= l1, 0.0, np.sign(z) * l1 - z) / (n_power / lr + 2 * l2
                                                                    + beta / lr)


def ftrl_sqrt(w, g, n, z, t=1, lr=0.001, l1=0.0, l2=0.0, beta=0.0):
    """Ftrl with learning_rate_power -0.5 (Keras's default): ``n`` the sum of
    squared gradients, ``z`` the linear term the weights are solved from."""
    n_new = n + g * g
    z += g - (np.sqrt(n_new) - np.sqrt(n)) / lr * w
    n[:] = n_new
    _ftrl_weights(w, z, np.sqrt(n), lr, l1, l2, beta)


def ftrl(w, g, n, z, t=1, lr=0.001, lr_power=-0.3, l1=0.0, l2=0.0, beta=0.0):
    """Ftrl with a general learning_rate_power (the benchmark's -0.3)."""
    n_new = n + g * g
    z += g - (n_new ** -lr_power - n ** -lr_power) / lr * w
    n[:] = n_new
    _ftrl_weights(w, z, n ** -lr_power, lr, l1, l2, beta)


def lion(w, g, m, t=1, lr=0.001, beta_1=0.9, beta_2=0.99):
    """Lion: the sign of ``beta_1 m + (1 - beta_1) g``, then ``m`` decays by ``beta_2``."""
    w -= lr * np.sign(beta_1 * m + (1 - beta_1) * g)
    m[:] = beta_2 * m + (1 - beta_2) * g


def adafactor(w, g, r, c, v, t=1, lr=0.001, beta_2_decay=-0.8, eps_1=1e-30, eps_2=1e-3,
              d=1.0):
    """Adafactor (Keras): row and column means of ``g*g + eps_1`` for a
    matrix (``v`` their outer product over the mean row), a full ``v`` for a
    vector; ``u = g/sqrt(v)`` clipped by its RMS, the step ``max(eps_2,
    RMS(w)) * min(lr, 1/sqrt(t))``."""
    b = 1 - t ** beta_2_decay
    sq = g * g + eps_1
    if w.ndim >= 2:
        r[:] = b * r + (1 - b) * sq.mean(axis=-1)
        c[:] = b * c + (1 - b) * sq.mean(axis=-2)
        v = (r / r.mean(axis=-1, keepdims=True))[..., None] * c[..., None, :]
    else:
        v[:] = b * v + (1 - b) * sq
    u = g / np.sqrt(v)
    alpha = max(eps_2, np.sqrt(np.mean(w * w))) * min(lr, 1 / np.sqrt(t))
    w -= alpha * u / max(1.0, np.sqrt(np.mean(u * u)) / d)


def lamb(w, g, m, v, t=1, lr=0.001, beta_1=0.9, beta_2=0.999, eps=1e-7):
    """Lamb (Keras's): Adam's bias-corrected direction ``u``, scaled per
    tensor by the trust ratio ``||w|| / ||u||`` (1 where a norm is 0)."""
    m[:] = m + (g - m) * (1 - beta_1)
    v[:] = v + (g * g - v) * (1 - beta_2)
    u = (m / (1 - beta_1 ** t)) / (np.sqrt(v / (1 - beta_2 ** t)) + eps)
    w_norm = np.linalg.norm(w)
    u_norm = np.linalg.norm(u)
    ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
    w -= (lr * ratio) * u


def adadelta(w, g, acc_g, acc_d, t=1, lr=0.001, rho=0.95, eps=1e-7):
    """Adadelta: the step is ``sqrt(acc_d + eps)/sqrt(acc_g + eps) * g``."""
    acc_g[:] = rho * acc_g + (1 - rho) * g * g
    delta = np.sqrt(acc_d + eps) * g / np.sqrt(acc_g + eps)
    acc_d[:] = rho * acc_d + (1 - rho) * delta * delta
    w -= lr * delta


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


def schedulefree_adamw(w, g, z, v, host, t=1, lr=0.0025, beta_1=0.9, beta_2=0.999, eps=1e-8):
    """Schedule-free AdamW (the schedulefree package, no warmup, ``r = 0``,
    ``weight_lr_power = 2``): ``w`` is ``y``, ``z`` the base sequence (a copy
    of ``w`` at the first step), ``host`` (two elements) ``lr_max`` and the
    sum of the average's weights."""
    if t == 1:
        z[:] = w
        host[0] = -1.0
        host[1] = 0.0
    host[0] = max(lr, host[0])
    weight = host[0] ** 2
    host[1] += weight
    c = weight / host[1] if host[1] else 0.0
    v[:] = beta_2 * v + (1 - beta_2) * g * g
    u = g / (np.sqrt(v / (1 - beta_2 ** t)) + eps)
    w += c * (z - w) + lr * (beta_1 * (1 - c) - 1) * u
    z -= lr * u


#: name -> naive step function (fastopt's Keras rule names, adamw, and the
#: rules of optimizers PyTorch alone has)
NAIVE = {f.__name__: f for f in (sgd, sgd_momentum, sgd_nesterov, adagrad, rmsprop,
                                 rmsprop_momentum, rmsprop_centered,
                                 rmsprop_centered_momentum, adam, adam_amsgrad, adamax,
                                 adamw, ftrl_sqrt, ftrl, lion, lamb, adadelta, nadam,
                                 nadam_torch, asgd_torch, radam, rprop, adafactor,
                                 schedulefree_adamw)}

#: name -> number of state arrays (slots) the step takes after ``g``
SLOTS = {"sgd": 0, "sgd_momentum": 1, "sgd_nesterov": 1, "adagrad": 1, "rmsprop": 1,
         "rmsprop_momentum": 2, "rmsprop_centered": 2, "rmsprop_centered_momentum": 3,
         "adam": 2, "adam_amsgrad": 3, "adamax": 2, "adamw": 2, "ftrl_sqrt": 2, "ftrl": 2,
         "lion": 1, "lamb": 2, "adadelta": 2, "nadam": 2, "nadam_torch": 2, "asgd_torch": 1,
         "radam": 2, "rprop": 2, "adafactor": 3, "schedulefree_adamw": 2}
#: steps that also keep scalars across steps (running products, ASGD's eta and
#: mu): their number, in one array per tensor after the slots
SCALARS = {"nadam": 1, "nadam_torch": 1, "asgd_torch": 2, "schedulefree_adamw": 2}


def init_state(rule, w):
    """Fresh slots for ``rule`` shaped like ``w`` (Adagrad's and Ftrl's
    accumulators at 0.1, as Keras), then the scalars kept across steps."""
    if rule == "adafactor":  # factored: a row and a column vector, or a full v
        if w.ndim >= 2:
            return [np.zeros(w.shape[:-1], w.dtype),
                    np.zeros(w.shape[:-2] + w.shape[-1:], w.dtype), None]
        return [None, None, np.zeros_like(w)]
    fills = {"adagrad": (0.1,), "ftrl_sqrt": (0.1, 0.0), "ftrl": (0.1, 0.0)}
    state = [np.full_like(w, fill) for fill in fills.get(rule, (0.0,) * SLOTS[rule])]
    return state + [np.ones(SCALARS[rule])] if rule in SCALARS else state


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
