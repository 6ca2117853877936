r"""The NumPy float64 reference: the specification of every update rule.

Each function here is one update rule written as plainly as possible, in
float64, returning new arrays.  The fused backends must agree with these
functions; the ``"numpy"`` backend *is* these functions (it casts its inputs to
float64, calls them, and casts the results back).  The plain names follow
Keras 3 (``keras.optimizers``), the default convention of fastopt; the
``*_torch`` functions follow PyTorch 2.13's ``torch.optim`` (``convention="torch"``).

Notation: :math:`w` parameter, :math:`g` gradient, :math:`\eta` learning rate,
all operations elementwise.

Gradient transformation, applied first by every kernel (``gscale`` comes from
``clipnorm``/``global_clipnorm``, ``clipvalue`` is ``inf`` when unused)::

    g <- clip(gscale * g, -clipvalue, clipvalue)

Then weight decay, in one of two forms: coupled (PyTorch's L2 ``weight_decay``,
``l2`` = 0 when unused) and decoupled (Keras, and PyTorch's AdamW;
``keep = 1 - weight_decay * lr``, 1 when unused)::

    g <- g + l2 * w
    w <- keep * w

NaN and Inf in gradients propagate into parameters and slots, as in Keras;
nothing is checked or masked per element.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = [
    "preprocess", "sgd", "sgd_momentum", "sgd_nesterov", "adagrad", "rmsprop",
    "rmsprop_momentum", "rmsprop_centered", "rmsprop_centered_momentum",
    "adam", "adam_amsgrad", "adam_alpha", "sgd_momentum_torch", "sgd_nesterov_torch",
    "adagrad_torch", "rmsprop_torch", "rmsprop_momentum_torch", "rmsprop_centered_torch",
    "rmsprop_centered_momentum_torch", "adam_torch", "adam_amsgrad_torch", "clip_by_norm", "clip_by_global_norm",
    "clip_by_value", "global_norm", "apply_rule", "bf16_round", "bf16_to_float", "hash32",
    "bf16_random_bits", "apply_rule_bf16",
]


def _f64(x):
    return np.asarray(x, dtype=np.float64)


def preprocess(grad, gscale=1.0, clipvalue=math.inf):
    """``clip(gscale * g, -clipvalue, clipvalue)``, keeping NaN as NaN."""
    g = _f64(grad) * gscale
    # np.clip would also keep NaN; the explicit form documents the intent.
    return np.where(g > clipvalue, clipvalue, np.where(g < -clipvalue, -clipvalue, g))


def sgd(param, grad, *, learning_rate):
    """Plain SGD: ``w <- w - lr * g``."""
    return (_f64(param) - learning_rate * _f64(grad),)


def sgd_momentum(param, grad, momentum_buf, *, learning_rate, momentum):
    """SGD with (Keras) momentum::

        m <- momentum * m - lr * g
        w <- w + m
    """
    m = momentum * _f64(momentum_buf) - learning_rate * _f64(grad)
    return _f64(param) + m, m


def sgd_nesterov(param, grad, momentum_buf, *, learning_rate, momentum):
    """SGD with (Keras) Nesterov momentum::

        m <- momentum * m - lr * g
        w <- w + momentum * m - lr * g        (with the new m)
    """
    g = _f64(grad)
    m = momentum * _f64(momentum_buf) - learning_rate * g
    return _f64(param) + (momentum * m - learning_rate * g), m


def adagrad(param, grad, accumulator, *, learning_rate, epsilon):
    """Adagrad (Keras: epsilon inside the square root)::

        acc <- acc + g^2
        w   <- w - lr * g / sqrt(acc + eps)
    """
    g = _f64(grad)
    acc = _f64(accumulator) + g * g
    return _f64(param) - learning_rate * g / np.sqrt(acc + epsilon), acc


def _rms_denominator(velocity, average_gradient, epsilon):
    if average_gradient is None:
        return velocity + epsilon
    # v - a^2 >= 0 in exact arithmetic; rounding can push it a hair below zero
    # (mostly in float32).  fastopt clamps it at zero there, where Keras would
    # take the square root of a possibly negative number.
    return np.maximum(velocity - average_gradient * average_gradient, 0.0) + epsilon


def _rmsprop(param, grad, velocity, average_gradient, momentum_buf, *,
             learning_rate, rho, momentum, epsilon):
    g = _f64(grad)
    v = rho * _f64(velocity) + (1.0 - rho) * (g * g)
    a = None
    if average_gradient is not None:
        a = rho * _f64(average_gradient) + (1.0 - rho) * g
    inc = learning_rate * g / np.sqrt(_rms_denominator(v, a, epsilon))
    out = [None, v]
    if a is not None:
        out.append(a)
    if momentum_buf is not None:
        mom = momentum * _f64(momentum_buf) + inc
        out[0] = _f64(param) - mom
        out.append(mom)
    else:
        out[0] = _f64(param) - inc
    return tuple(out)


def rmsprop(param, grad, velocity, *, learning_rate, rho, epsilon):
    """RMSprop (Keras: epsilon inside the square root)::

        v <- rho * v + (1 - rho) * g^2
        w <- w - lr * g / sqrt(v + eps)
    """
    return _rmsprop(param, grad, velocity, None, None, learning_rate=learning_rate,
                    rho=rho, momentum=0.0, epsilon=epsilon)


def rmsprop_momentum(param, grad, velocity, momentum_buf, *, learning_rate, rho,
                     momentum, epsilon):
    """RMSprop with momentum::

        v   <- rho * v + (1 - rho) * g^2
        mom <- momentum * mom + lr * g / sqrt(v + eps)
        w   <- w - mom
    """
    return _rmsprop(param, grad, velocity, None, momentum_buf,
                    learning_rate=learning_rate, rho=rho, momentum=momentum,
                    epsilon=epsilon)


def rmsprop_centered(param, grad, velocity, average_gradient, *, learning_rate,
                     rho, epsilon):
    """Centred RMSprop::

        v <- rho * v + (1 - rho) * g^2
        a <- rho * a + (1 - rho) * g
        w <- w - lr * g / sqrt(max(v - a^2, 0) + eps)
    """
    return _rmsprop(param, grad, velocity, average_gradient, None,
                    learning_rate=learning_rate, rho=rho, momentum=0.0,
                    epsilon=epsilon)


def rmsprop_centered_momentum(param, grad, velocity, average_gradient,
                              momentum_buf, *, learning_rate, rho, momentum,
                              epsilon):
    """Centred RMSprop with momentum::

        v   <- rho * v + (1 - rho) * g^2
        a   <- rho * a + (1 - rho) * g
        mom <- momentum * mom + lr * g / sqrt(max(v - a^2, 0) + eps)
        w   <- w - mom
    """
    return _rmsprop(param, grad, velocity, average_gradient, momentum_buf,
                    learning_rate=learning_rate, rho=rho, momentum=momentum,
                    epsilon=epsilon)


def adam_alpha(learning_rate, beta_1, beta_2, iteration):
    """Adam's bias-corrected step size for the step after ``iteration`` steps.

    ``t = iteration + 1``; ``alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)``.
    """
    t = float(iteration) + 1.0
    return learning_rate * math.sqrt(1.0 - beta_2 ** t) / (1.0 - beta_1 ** t)


def adam(param, grad, m, v, *, alpha, beta_1, beta_2, epsilon):
    """Adam (Keras form; ``alpha`` from :func:`adam_alpha`)::

        m <- m + (g - m) * (1 - beta_1)
        v <- v + (g^2 - v) * (1 - beta_2)
        w <- w - m * alpha / (sqrt(v) + eps)
    """
    g = _f64(grad)
    m = _f64(m) + (g - _f64(m)) * (1.0 - beta_1)
    v = _f64(v) + (g * g - _f64(v)) * (1.0 - beta_2)
    return _f64(param) - m * alpha / (np.sqrt(v) + epsilon), m, v


def adam_amsgrad(param, grad, m, v, velocity_hat, *, alpha, beta_1, beta_2,
                 epsilon):
    """Adam with AMSGrad: as :func:`adam`, with ``vhat <- max(vhat, v)`` used
    in the denominator in place of ``v``."""
    g = _f64(grad)
    m = _f64(m) + (g - _f64(m)) * (1.0 - beta_1)
    v = _f64(v) + (g * g - _f64(v)) * (1.0 - beta_2)
    vhat = np.maximum(_f64(velocity_hat), v)
    return _f64(param) - m * alpha / (np.sqrt(vhat) + epsilon), m, v, vhat


# --------------------------------------------------------------------------
# PyTorch 2.13 ``torch.optim`` formulas (single-tensor, for-loop path), used
# under ``convention="torch"``.  ``step`` counts updates from 1, as torch's
# per-parameter ``state["step"]`` does after its increment.

def sgd_momentum_torch(param, grad, momentum_buf, *, learning_rate, momentum,
                       dampening, step):
    """PyTorch SGD with momentum::

        b <- g                                   (step 1)
        b <- momentum * b + (1 - dampening) * g  (later steps)
        w <- w - lr * b
    """
    g = _f64(grad)
    if step <= 1:
        b = g.copy()
    else:
        b = momentum * _f64(momentum_buf) + (1.0 - dampening) * g
    return _f64(param) - learning_rate * b, b


def sgd_nesterov_torch(param, grad, momentum_buf, *, learning_rate, momentum,
                       dampening, step):
    """PyTorch SGD with Nesterov momentum: ``b`` as in
    :func:`sgd_momentum_torch`, then ``w <- w - lr * (g + momentum * b)``."""
    g = _f64(grad)
    _, b = sgd_momentum_torch(param, g, momentum_buf, learning_rate=learning_rate,
                              momentum=momentum, dampening=dampening, step=step)
    return _f64(param) - learning_rate * (g + momentum * b), b


def adagrad_torch(param, grad, accumulator, *, learning_rate, epsilon, lr_decay,
                  step):
    """PyTorch Adagrad (epsilon outside the square root, learning-rate decay)::

        clr <- lr / (1 + (step - 1) * lr_decay)
        acc <- acc + g^2
        w   <- w - clr * g / (sqrt(acc) + eps)
    """
    g = _f64(grad)
    clr = learning_rate / (1.0 + (step - 1) * lr_decay)
    acc = _f64(accumulator) + g * g
    return _f64(param) - clr * g / (np.sqrt(acc) + epsilon), acc


def _rmsprop_torch(param, grad, velocity, average_gradient, momentum_buf, *,
                   learning_rate, rho, momentum, epsilon):
    g = _f64(grad)
    v = rho * _f64(velocity) + (1.0 - rho) * (g * g)
    out = [None, v]
    if average_gradient is None:
        avg = np.sqrt(v) + epsilon
    else:
        a = rho * _f64(average_gradient) + (1.0 - rho) * g
        # clamped at zero as in the Keras form (torch would take sqrt of < 0)
        avg = np.sqrt(np.maximum(v - a * a, 0.0)) + epsilon
        out.append(a)
    if momentum_buf is None:
        out[0] = _f64(param) - learning_rate * g / avg
    else:
        b = momentum * _f64(momentum_buf) + g / avg
        out[0] = _f64(param) - learning_rate * b
        out.append(b)
    return tuple(out)


def rmsprop_torch(param, grad, velocity, *, learning_rate, rho, epsilon):
    """PyTorch RMSprop (``rho`` is torch's ``alpha``; epsilon outside)::

        v <- rho * v + (1 - rho) * g^2
        w <- w - lr * g / (sqrt(v) + eps)
    """
    return _rmsprop_torch(param, grad, velocity, None, None, learning_rate=learning_rate,
                          rho=rho, momentum=0.0, epsilon=epsilon)


def rmsprop_momentum_torch(param, grad, velocity, momentum_buf, *, learning_rate,
                           rho, momentum, epsilon):
    """PyTorch RMSprop with momentum (learning rate outside the buffer)::

        v <- rho * v + (1 - rho) * g^2
        b <- momentum * b + g / (sqrt(v) + eps)
        w <- w - lr * b
    """
    return _rmsprop_torch(param, grad, velocity, None, momentum_buf,
                          learning_rate=learning_rate, rho=rho, momentum=momentum,
                          epsilon=epsilon)


def rmsprop_centered_torch(param, grad, velocity, average_gradient, *,
                           learning_rate, rho, epsilon):
    """PyTorch centred RMSprop::

        v <- rho * v + (1 - rho) * g^2
        a <- rho * a + (1 - rho) * g
        w <- w - lr * g / (sqrt(max(v - a^2, 0)) + eps)
    """
    return _rmsprop_torch(param, grad, velocity, average_gradient, None,
                          learning_rate=learning_rate, rho=rho, momentum=0.0,
                          epsilon=epsilon)


def rmsprop_centered_momentum_torch(param, grad, velocity, average_gradient,
                                    momentum_buf, *, learning_rate, rho, momentum,
                                    epsilon):
    """PyTorch centred RMSprop with momentum::

        v <- rho * v + (1 - rho) * g^2
        a <- rho * a + (1 - rho) * g
        b <- momentum * b + g / (sqrt(max(v - a^2, 0)) + eps)
        w <- w - lr * b
    """
    return _rmsprop_torch(param, grad, velocity, average_gradient, momentum_buf,
                          learning_rate=learning_rate, rho=rho, momentum=momentum,
                          epsilon=epsilon)


def _adam_torch(param, grad, m, v, velocity_hat, *, learning_rate, beta_1, beta_2,
                epsilon, step):
    g = _f64(grad)
    m = _f64(m) + (1.0 - beta_1) * (g - _f64(m))
    v = beta_2 * _f64(v) + (1.0 - beta_2) * (g * g)
    step_size = learning_rate / (1.0 - beta_1 ** step)
    root_bc2 = math.sqrt(1.0 - beta_2 ** step)
    out = [None, m, v]
    d = v
    if velocity_hat is not None:
        d = np.maximum(_f64(velocity_hat), v)
        out.append(d)
    out[0] = _f64(param) - step_size * m / (np.sqrt(d) / root_bc2 + epsilon)
    return tuple(out)


def adam_torch(param, grad, m, v, *, learning_rate, beta_1, beta_2, epsilon, step):
    """PyTorch Adam (epsilon added after the bias correction of ``v``)::

        m <- m + (1 - beta_1) * (g - m)
        v <- beta_2 * v + (1 - beta_2) * g^2
        w <- w - lr / (1 - beta_1^step) * m / (sqrt(v) / sqrt(1 - beta_2^step) + eps)
    """
    return _adam_torch(param, grad, m, v, None, learning_rate=learning_rate,
                       beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, step=step)


def adam_amsgrad_torch(param, grad, m, v, velocity_hat, *, learning_rate, beta_1,
                       beta_2, epsilon, step):
    """PyTorch Adam with AMSGrad: as :func:`adam_torch` with
    ``vhat <- max(vhat, v)`` (of the raw ``v``) in the denominator."""
    return _adam_torch(param, grad, m, v, velocity_hat, learning_rate=learning_rate,
                       beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, step=step)


# --------------------------------------------------------------------------
# Gradient clipping (Keras semantics), on lists of arrays, in float64.

def global_norm(grads):
    """Euclidean norm of all gradients together (``None`` entries skipped)."""
    return math.sqrt(sum(float(np.sum(_f64(g) ** 2)) for g in grads if g is not None))


def clip_by_norm(grad, clipnorm):
    """Per-tensor: ``g * clipnorm / max(||g||, clipnorm)``.

    An all-zero gradient passes unchanged; a NaN norm makes every entry NaN.
    """
    g = _f64(grad)
    norm = math.sqrt(float(np.sum(g * g)))
    return g * clipnorm / np.maximum(norm, clipnorm)


def clip_by_global_norm(grads, clipnorm):
    """All tensors scaled by ``clipnorm * min(1/||G||, 1/clipnorm)``.

    As in Keras: a norm below ``clipnorm`` (including zero) leaves the
    gradients unchanged up to rounding, and a non-finite norm gives NaN.
    """
    return [None if g is None else _f64(g) * global_clip_scale(global_norm(grads), clipnorm)
            for g in grads]


def global_clip_scale(norm, clipnorm):
    """The scale factor of :func:`clip_by_global_norm` for a given norm."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.float64(1.0) / np.float64(norm)
        scale = clipnorm * np.minimum(inv, 1.0 / clipnorm)
        return float(scale + (np.float64(norm) - np.float64(norm)))


def clip_by_value(grad, clipvalue):
    """``clip(g, -clipvalue, clipvalue)``."""
    return preprocess(grad, 1.0, clipvalue)


_RULE_FUNCTIONS = {
    "sgd": sgd, "sgd_momentum": sgd_momentum, "sgd_nesterov": sgd_nesterov,
    "adagrad": adagrad, "rmsprop": rmsprop, "rmsprop_momentum": rmsprop_momentum,
    "rmsprop_centered": rmsprop_centered,
    "rmsprop_centered_momentum": rmsprop_centered_momentum,
    "adam": adam, "adam_amsgrad": adam_amsgrad,
    "sgd_momentum_torch": sgd_momentum_torch, "sgd_nesterov_torch": sgd_nesterov_torch,
    "adagrad_torch": adagrad_torch, "rmsprop_torch": rmsprop_torch,
    "rmsprop_momentum_torch": rmsprop_momentum_torch,
    "rmsprop_centered_torch": rmsprop_centered_torch,
    "rmsprop_centered_momentum_torch": rmsprop_centered_momentum_torch,
    "adam_torch": adam_torch, "adam_amsgrad_torch": adam_amsgrad_torch,
}


def apply_rule(name, param, grad, slots, scalars, *, keep=1.0, gscale=1.0,
               clipvalue=math.inf, l2=0.0):
    """One whole kernel step in float64: preprocess, decay, update.

    ``scalars`` is a dict of the rule's scalar arguments (see
    :data:`fastopt._rules.RULES`).  ``l2`` is coupled weight decay (PyTorch's
    ``weight_decay``: ``g <- g + l2 * w``), ``keep`` decoupled weight decay
    (``w <- keep * w``).  Returns ``(new_param, *new_slots)``.
    """
    g = preprocess(grad, gscale, clipvalue)
    if l2:
        g = g + l2 * _f64(param)
    w = keep * _f64(param)
    return _RULE_FUNCTIONS[name](w, g, *slots, **scalars)


# --------------------------------------------------------------------------
# Optimizer state kept in bfloat16 (``state_dtype="bfloat16"``).  bfloat16 is
# float32 with the low 16 bits dropped: the same 8-bit exponent (same range,
# subnormals included) and an 8-bit significand (7 bits stored).  A value is
# stored as its 16-bit pattern in a uint16 array.

_MASK32 = 0xFFFFFFFF


def bf16_to_float(bits):
    """bfloat16 bit patterns (uint16) -> their values as float32 (exact)."""
    u = np.asarray(bits, dtype=np.uint16).astype(np.uint32)
    u <<= 16  # in place: a 0-d input stays an array
    return u.view(np.float32)


def bf16_round(x, rounding="nearest", random_bits=None):
    """Round values to bfloat16; returns the bit patterns (uint16).

    ``rounding="nearest"``: IEEE round to nearest, ties to even, in one
    rounding from the exact (float64) value: 8 significant bits, spacing
    ``2**-133`` below ``2**-126`` (subnormals), a magnitude of
    ``(2 - 2**-8) * 2**127`` or more becomes infinite, signed zeros and
    infinities are kept and a NaN stays a (quiet) NaN of the same sign.

    ``rounding="stochastic"``: the value is first rounded to float32 (the
    kernels hold it in float32); its low 16 bits ``d`` are what bfloat16
    drops.  With ``r = random_bits & 0xFFFF`` it is rounded away from zero
    to the next bfloat16 if ``d + r >= 2**16`` and towards zero otherwise:
    up with probability ``d / 2**16`` for uniform ``r``, so the rounding is
    unbiased.  A value already in bfloat16 (``d = 0``) is kept.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        x = _f64(x)
        x32 = x.astype(np.float32)
        if rounding == "nearest":
            frac, exp = np.frexp(np.where(np.isfinite(x), x, 0.0))  # |frac| in [0.5, 1)
            quantum = np.maximum(exp, -125) - 8                    # 2**-126 = 0.5 * 2**-125
            near = np.ldexp(np.rint(np.ldexp(x, -quantum)), quantum)  # rint: ties to even
            x32 = np.where(np.isfinite(x), near, x).astype(np.float32)  # exact, or +-inf
            out = x32.view(np.uint32) >> 16
        elif rounding == "stochastic":
            b = x32.view(np.uint32).astype(np.uint64)
            r = np.asarray(random_bits, dtype=np.uint64) & 0xFFFF
            out = (b + r) >> 16
        else:
            raise ValueError(f"bf16_round: rounding must be 'nearest' or 'stochastic', "
                             f"got {rounding!r}")
    quiet_nan = (x32.view(np.uint32) >> 16) | 0x40
    return np.where(np.isnan(x32), quiet_nan, out).astype(np.uint16)


def hash32(x):
    """A 32-bit integer hash of the low 32 bits of ``x`` (xor-shift and
    multiply rounds with the constants of C. Wellons' ``lowbias32``): the
    random numbers of stochastic rounding.  Returns uint64 values below 2**32."""
    x = np.asarray(x).astype(np.uint64) & _MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def bf16_random_bits(updates, slot, tensor, size):
    """The random numbers that stochastic rounding draws for one slot of one
    tensor in one step.

    Element ``i`` of the tensor hashes ``h = hash32(salt + i)`` with
    ``salt = hash32(hash32(updates + 1) + tensor)`` (mod 2**32); slot 0 (the
    first in the rule's slot list) uses the low 16 bits of ``h``, the other
    slots the high 16 bits.  So AMSGrad's ``v`` and ``vhat`` round alike and
    the stored ``vhat >= v`` holds.  ``updates`` is the optimizer's update
    count before the step (the one Adam's bias correction sees) and
    ``tensor`` the parameter's index in the optimizer's flat parameter list:
    the numbers depend on nothing else -- not on threads, chunking or other
    tensors -- and a resumed run draws the same ones.
    """
    salt = hash32(hash32(int(updates) + 1) + int(tensor))
    h = hash32(salt + np.arange(size, dtype=np.uint64))
    return h if slot == 0 else h >> 16


def apply_rule_bf16(name, param, grad, slots, scalars, *, keep=1.0, gscale=1.0,
                    clipvalue=math.inf, l2=0.0, rounding="nearest", random_bits=None):
    """One kernel step with the slots in bfloat16, in float64.

    ``slots`` are bfloat16 bit patterns (uint16).  They are decoded, the
    step runs as :func:`apply_rule`, and the new slot values are rounded
    back with :func:`bf16_round` (``random_bits``: one array per slot, for
    ``rounding="stochastic"``).  The parameter update uses the new slot
    values *before* they are rounded.  Returns ``(new_param, *new_slot_bits)``.
    """
    new = apply_rule(name, param, grad, [bf16_to_float(s) for s in slots], scalars,
                     keep=keep, gscale=gscale, clipvalue=clipvalue, l2=l2)
    bits = random_bits if random_bits is not None else [None] * len(slots)
    return (new[0], *(bf16_round(s, rounding, b) for s, b in zip(new[1:], bits)))
