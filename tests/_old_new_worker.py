"""Transitional (the "one place per optimizer" redesign): runs every kernel
of the rules that existed before the redesign on fixed inputs and saves the
results, so that the old build and the new one can be compared bit for bit
(tests/test_old_new_kernels.py).  Runs under either installation.

usage: python _old_new_worker.py OUT.npz [cuda]
"""
import os
import sys

if len(sys.argv) > 2 and sys.argv[2] == "cuda":
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import numpy as np  # noqa: E402

import fastopt  # noqa: E402
from fastopt.backends import numba_bf16  # noqa: E402

try:
    from fastopt.rule import RULES
except ImportError:  # the old layout
    from fastopt._rules import RULES

OLD_RULES = [
    "sgd", "sgd_momentum", "sgd_nesterov", "adagrad", "rmsprop", "rmsprop_momentum",
    "rmsprop_centered", "rmsprop_centered_momentum", "adam", "adam_amsgrad",
    "sgd_momentum_torch", "sgd_nesterov_torch", "adagrad_torch", "rmsprop_torch",
    "rmsprop_momentum_torch", "rmsprop_centered_torch", "rmsprop_centered_momentum_torch",
    "adam_torch", "adam_amsgrad_torch"]
VALUES = {"learning_rate": 0.01, "momentum": 0.9, "dampening": 0.1, "epsilon": 1e-7,
          "rho": 0.9, "beta_1": 0.9, "beta_2": 0.999, "alpha": 0.003, "lr_decay": 0.01}
VARIANTS = [dict(keep=1.0, gscale=1.0, l2=0.0, clipvalue=np.inf),
            dict(keep=0.99, gscale=0.5, l2=0.01, clipvalue=0.3)]


def inputs(rng, n, dtype, nslots):
    p = rng.standard_normal(n)
    g = rng.standard_normal(n) * np.exp(rng.uniform(-8, 8, n))
    if n > 6:  # exact zeros, huge and tiny values
        g[:6] = [0.0, -0.0, 1e30, -1e-30, 1e-38, 3e4]
        p[:3] = [0.0, 1e20, -1e-20]
    slots = [np.abs(rng.standard_normal(n)) for _ in range(nslots)]
    return [a.astype(dtype) for a in (p, g, *slots)]


def scalars(rule, step):
    return tuple(float(step) if s == "step" else VALUES[s] for s in rule.scalars)


def main(out, cuda=False):
    res = {}
    rng = np.random.default_rng(12345)
    backends = ["cuda"] if cuda else ["numba", "cython"]
    sizes = [7, 33] if cuda else [1, 7, 1025, 40000]
    for bname in backends:
        be = fastopt.get_backend(bname)
        for dtype in (np.float32, np.float64):
            for name in OLD_RULES:
                rule = RULES[name]
                # one tensor through the public kernel, then a group through a Plan
                for v, var in enumerate(VARIANTS):
                    arrays = inputs(rng, sizes[-1], dtype, len(rule.slots))
                    for step in (1, 2, 3):
                        if cuda:
                            from numba import cuda as nc
                            dev = [nc.to_device(a) for a in arrays]
                            getattr(be, name)(*dev, *scalars(rule, step), **var)
                            arrays = [d.copy_to_host() for d in dev]
                        else:
                            getattr(be, name)(*arrays, *scalars(rule, step), **var)
                    for k, a in enumerate(arrays):
                        res[f"{bname}/{np.dtype(dtype).name}/{name}/kernel{v}/{k}"] = a
                if cuda:
                    continue
                for threshold in (0, 1 << 40):  # the parallel driver, then the serial one
                    be.set_parallel_threshold(threshold, dtype)
                    groups = [inputs(rng, n, dtype, len(rule.slots)) for n in sizes]
                    params = [a[0] for a in groups]
                    slots = [[a[2 + j] for a in groups] for j in range(len(rule.slots))]
                    plan = be.Plan(rule, params, slots)
                    pt = np.array([[1.0, 0.5, 2.0, 1.0], [1.0, 0.99, 1.0, 0.9],
                                   [0.0, 0.0, 0.01, 0.1]])
                    for step in (1, 2, 3):
                        plan.step([a[1] for a in groups], pt, scalars(rule, step), 0.7)
                    for t, a in enumerate(groups):
                        for k, x in enumerate(a):
                            res[f"{bname}/{np.dtype(dtype).name}/{name}/plan{threshold}/{t}/{k}"] = x
                be.set_parallel_threshold(1 << 15, dtype)
    if not cuda:  # bfloat16 state (numba), both roundings
        for name in OLD_RULES:
            rule = RULES[name]
            if numba_bf16.refusal(rule):
                continue
            for rounding in ("nearest", "stochastic"):
                groups = [inputs(rng, n, np.float32, 0) for n in sizes]
                params = [a[0] for a in groups]
                slots = [[numba_bf16.Plan.__module__ and np.zeros(n, np.uint16)
                          for n in sizes] for _ in rule.slots]
                plan = numba_bf16.Plan(rule, params, slots, rounding)
                pt = np.array([[1.0, 0.5, 2.0, 1.0], [1.0, 0.99, 1.0, 0.9],
                               [0.0, 0.0, 0.01, 0.1]])
                for step in (1, 2, 3):
                    plan.updates = step - 1
                    plan.step([a[1] for a in groups], pt, scalars(rule, step), np.inf)
                for t, a in enumerate(groups):
                    res[f"bf16/{rounding}/{name}/{t}/p"] = a[0]
                    for j in range(len(rule.slots)):
                        res[f"bf16/{rounding}/{name}/{t}/s{j}"] = slots[j][t]
        # 2-byte parameters, gradients and state through MultiTensorStep
        for narrow, npdt in (("bfloat16", np.uint16), ("float16", np.float16)):
            for name in OLD_RULES:
                rule = RULES[name]
                if rule.slots and numba_bf16.refusal(rule):
                    continue
                arrays = inputs(rng, 3000, np.float32, len(rule.slots))
                if narrow == "float16":
                    arrays = [a.astype(np.float16) for a in arrays]
                else:
                    arrays = [(a.view(np.uint32) >> 16).astype(np.uint16) for a in arrays]
                mts = fastopt.MultiTensorStep(name, narrow, [3000], backend="numba")
                ptrs = np.array([[a.ctypes.data] for a in arrays], dtype=np.intp)
                pt = np.array([[0.5], [0.99], [0.01]])
                for step in (1, 2, 3):
                    mts.step(ptrs, scalars(rule, step), pt=pt)
                for k, a in enumerate(arrays):
                    res[f"{narrow}/{name}/{k}"] = a.view(np.uint16)
    np.savez(out, **res)


if __name__ == "__main__":
    main(sys.argv[1], len(sys.argv) > 2 and sys.argv[2] == "cuda")
