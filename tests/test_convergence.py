"""Second line of defence: every optimizer actually minimises things.

A badly conditioned quadratic in 50 dimensions and the 2-D Rosenbrock
function, float32 and float64, with learning rates suited to each method.
Thresholds are loose (a fraction of the starting loss) but far below what a
wrong sign, a missing bias correction or a broken slot would reach.
"""
import numpy as np
import pytest

import fastopt

from cases import OPTIMIZERS

BACKEND = "numba" if "numba" in fastopt.available_backends() else "numpy"

# learning rates per family for these problems
QUAD_LR = {"sgd": 0.05, "adagrad": 0.5, "rmsprop": 0.02, "adam": 0.05, "adamw": 0.05}
ROSEN_LR = {"sgd": 1e-3, "adagrad": 0.3, "rmsprop": 3e-3, "adam": 0.02, "adamw": 0.02}


def family(opt_id):
    return opt_id.split("_")[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("opt_id,cls,kwargs", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_quadratic(opt_id, cls, kwargs, dtype):
    rng = np.random.default_rng(0)
    a = np.logspace(-1, 1, 50)          # curvatures 0.1 .. 10
    c = rng.standard_normal(50)

    def loss(x):
        return 0.5 * float(np.sum(a * (x - c) ** 2))

    x = np.zeros(50, dtype)
    start = loss(x)
    if "weight_decay" in kwargs or cls is fastopt.AdamW:
        kwargs = {**kwargs, "weight_decay": 1e-3}  # decay pulls to 0, not to c: keep it small
    opt = cls(x, learning_rate=QUAD_LR[family(opt_id)], backend=BACKEND, **kwargs)
    for _ in range(400):
        opt.step((a * (x - c)).astype(dtype))
    assert loss(x) < 0.02 * start, f"{opt_id}: loss {loss(x):.3g} from {start:.3g}"


@pytest.mark.parametrize("opt_id,cls,kwargs", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_rosenbrock(opt_id, cls, kwargs):
    def f(x, y):
        return (1 - x) ** 2 + 100 * (y - x * x) ** 2

    xy = np.array([-1.2, 1.0])
    start = f(*xy)
    if "weight_decay" in kwargs or cls is fastopt.AdamW:
        kwargs = {**kwargs, "weight_decay": 1e-4}
    opt = cls(xy, learning_rate=ROSEN_LR[family(opt_id)], backend=BACKEND, **kwargs)
    for _ in range(3000):
        x, y = xy
        grad = np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])
        opt.step(grad)
    assert np.all(np.isfinite(xy))
    assert f(*xy) < 0.1 * start, f"{opt_id}: f = {f(*xy):.3g} from {start:.3g}"
