"""The table of optimizers under test, and the gradient streams they see.

Every numerical test crosses ``OPTIMIZERS`` with backends, dtypes and sizes.
Gradient streams are fresh random numbers with exact zeros, whole zero steps,
steps scaled by 1e3 and by 1e-4, and a coordinate that stays tiny -- never
zeros only.
"""
import numpy as np

import fastopt

# Backends that take host NumPy arrays (the cuda backend takes device arrays
# and has its own tests, tests/test_cuda.py).
HOST_BACKENDS = [b for b in fastopt.available_backends() if b != "cuda"]

# (id, class, keyword arguments): every optimizer and every variant.
OPTIMIZERS = [
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
    ("adamw", fastopt.AdamW, {}),
    ("adamw_amsgrad", fastopt.AdamW, {"amsgrad": True, "weight_decay": 0.1}),
]
OPTIMIZER_IDS = [o[0] for o in OPTIMIZERS]

# Larger learning rates than the defaults, so that many steps move far.
LEARNING_RATES = {"sgd": 0.05, "adagrad": 0.05, "rmsprop": 0.01, "adam": 0.01, "adamw": 0.01}


def lr_for(opt_id):
    return LEARNING_RATES[opt_id.split("_")[0]]


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
