"""The gradient streams the tests feed, and the backends they run on.

The table of optimizers under test is ``tests/optim_db.py``; every numerical
test crosses it with backends, dtypes and sizes.  Gradient streams are
fresh random numbers with exact zeros, whole zero steps, steps scaled by 1e3
and by 1e-4, and a coordinate that stays tiny -- never zeros only.
"""
import numpy as np

import fastopt

# Backends that take host NumPy arrays (the cuda backend takes device arrays
# and has its own tests, tests/test_cuda.py).
HOST_BACKENDS = [b for b in fastopt.available_backends() if b != "cuda"]


def gradient(rng, shape, dtype, step):
    """The gradient for ``step`` of a test trajectory.

    Step 3 is all zeros; step 5 is scaled by 1e3 and step 7 by 1e-4; other
    steps are standard normal with about 20% exact zeros; coordinate 0 is
    always scaled by 1e-6 (a coordinate that stays tiny).
    """
    size = int(np.prod(shape))
    if step == 3:
        return np.zeros(shape, dtype)
    g = rng.standard_normal(size)
    g[rng.random(size) < 0.2] = 0.0
    if step == 5:
        g *= 1e3
    elif step == 7:
        g *= 1e-4
    g[:1] *= 1e-6
    return g.reshape(shape).astype(dtype)


def params_like(rng, shapes, dtype):
    return [rng.standard_normal(s).astype(dtype) for s in shapes]
