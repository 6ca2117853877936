"""The step pipeline around the kernel: what an optimizer does to the
gradients and parameters before and after its fused kernel call.

Order of operations in one :meth:`fastopt.Optimizer.step` (Keras 3's, under
both conventions)::

    g <- g / loss_scale_factor
    with gradient accumulation: acc <- acc + g and stop, except on every
        gradient_accumulation_steps-th call, where g <- (g + acc) / steps
        (one in-place pass over acc either way; acc <- 0 after the update)
    g <- clip(g)                         (clipnorm, global_clipnorm: a two-phase
                                          step, fastopt.two_phase; clipvalue)
    g <- -g                              (maximize)
    g <- g + wd * w                      (torch convention, except AdamW)
    w <- (1 - wd * lr) * w               (keras convention, and torch AdamW)
    the optimizer's update
    ema <- m * ema + (1 - m) * w         (use_ema, every call; m = 0 until the
                                          first update has been counted)
    calls <- calls + 1                   (iterations, the update count, is
                                          calls // gradient_accumulation_steps)

The gradient scale (loss scale, clip factor, sign), the decoupled decay
factor and the coupled decay coefficient reach the kernel as the per-tensor
rows of :attr:`fastopt.buffers.TensorGroup.factors`; ``clipvalue`` as a
scalar.  ``arrays`` below is :class:`fastopt.buffers.HostArrays` or the CUDA
backend: the same array operations on host or device arrays, each one
in-place pass with no temporary array.

The moving average runs inside the kernel's pass where the tensor group's
plan can (``plan.fuses_ema``: the numba backend's plans, bfloat16 state
included, and the cuda backend's), each average moved as its parameter is
stored; elsewhere (the cython and numpy backends, 8-bit state,
``per_tensor`` rules, calls that only accumulate, tensor groups the kernel
did not run on) as a pass of its own after the update.  Both compute the
same expression in the same order: the same bits (on a GPU, up to the
device's fused multiply-adds).  A parameter whose gradient is None is
averaged too (the average follows the parameter at every call, as in
Keras).
"""
from __future__ import annotations

__all__ = ["update_counts", "accumulate", "decay_factors", "ema_weight", "update_ema",
           "copy_averages"]


def update_counts(calls, accumulation_steps):
    """``(applying, updates)``: whether the call after ``calls`` calls updates
    the parameters, and how many updates came before it (the count bias
    corrections see)."""
    if accumulation_steps is None:
        return True, calls
    return (calls + 1) % accumulation_steps == 0, calls // accumulation_steps


def accumulate(arrays, accumulators, grads, inv, applying, steps):
    """Add ``grads * inv`` to the accumulators in place; when ``applying``,
    in the same pass turn them into the mean gradient (``(acc + g*inv) /
    steps``).  Returns the gradients and scale to apply."""
    if applying:
        for acc, g in zip(accumulators, grads):
            arrays.add_mean(acc, g, inv, steps)
    else:
        for acc, g in zip(accumulators, grads):
            arrays.add_scaled(acc, g, inv)
    return accumulators, 1.0


def decay_factors(weight_decay, lr, coupled):
    """``(keep, l2)``: the decoupled decay factor and the coupled (L2)
    coefficient of weight decay; ``coupled`` under the torch convention
    (except AdamW, and RAdam with ``decoupled_weight_decay``: see
    ``Optimizer._decoupled``)."""
    if not weight_decay:
        return 1.0, 0.0
    if coupled:
        return 1.0, weight_decay
    return 1.0 - weight_decay * lr, 0.0


def ema_weight(updates, momentum):
    """The momentum of this call's average: as in Keras, the average starts as
    a copy (momentum 0 until the first update has been counted)."""
    return momentum if updates else 0.0


def update_ema(arrays, averages, params, updates, momentum, overwrite_frequency,
               indices=None):
    """Move the averages towards the parameters (those of ``indices``; None:
    all, the others having been averaged inside the kernel); every
    ``overwrite_frequency`` updates, copy all of them into the parameters.
    As in Keras, the average starts as a copy (momentum 0 until the first
    update has been counted), then follows every call."""
    m = ema_weight(updates, momentum)
    if indices is None:
        for avg, p in zip(averages, params):
            arrays.lerp(avg, p, m, 1.0 - m)
    else:
        for i in indices:
            arrays.lerp(averages[i], params[i], m, 1.0 - m)
    if overwrite_frequency and (updates + 1) % overwrite_frequency == 0:
        copy_averages(arrays, averages, params)


def copy_averages(arrays, averages, params):
    """Copy the moving averages into the parameters."""
    for avg, p in zip(averages, params):
        arrays.assign(p, avg)
