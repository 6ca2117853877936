"""fastopt's two counters against Keras 3 itself, under gradient accumulation.

Keras keeps the call counter ``_iterations``; its public ``iterations`` is
``_iterations // gradient_accumulation_steps``, schedules are called with
``_iterations``, and the bias correction and the EMA see ``iterations``.
fastopt's ``calls`` and ``iterations`` must be those two, call by call, with
the same learning rate and parameters.  Skipped without keras (the golden
recordings in ``tests/golden/`` check the trajectories without it).
"""
import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is first imported

import numpy as np
import pytest

import fastopt
from fastopt import schedules

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

STEPS = 3
SHAPES = [(4,), (2, 3)]


@pytest.fixture
def float64_keras():
    """Keras computing in float64 (its learning rate included), restored after."""
    floatx = keras.config.floatx()
    keras.config.set_floatx("float64")
    yield
    keras.config.set_floatx(floatx)


def _numpy(x):
    """A Keras Variable, or a torch tensor, as a NumPy array (through torch:
    Keras's own ``Variable.numpy()`` warns under NumPy 2)."""
    return getattr(x, "value", x).detach().cpu().numpy()


@pytest.mark.skipif(keras.config.backend() != "torch",
                    reason="KERAS_BACKEND was set to another backend before this module")
def test_counters_learning_rate_and_parameters_follow_keras(float64_keras):
    rng = np.random.default_rng(0)
    init = [rng.standard_normal(s) for s in SHAPES]
    variables = [keras.Variable(a, dtype="float64", name=f"w{k}") for k, a in enumerate(init)]
    kw = dict(gradient_accumulation_steps=STEPS, use_ema=True, ema_momentum=0.8,
              ema_overwrite_frequency=2)
    ref = keras.optimizers.Adam(learning_rate=keras.optimizers.schedules.ExponentialDecay(
        0.05, decay_steps=1, decay_rate=0.8), **kw)
    params = [a.copy() for a in init]
    opt = fastopt.Adam(params, learning_rate=schedules.ExponentialDecay(
        0.05, decay_steps=1, decay_rate=0.8), **kw)
    ref.build(variables)
    for call in range(11):  # ends mid-cycle
        assert opt.current_learning_rate() == pytest.approx(
            float(_numpy(ref.learning_rate)), rel=1e-15)
        grads = [rng.standard_normal(s) for s in SHAPES]
        ref.apply([torch.tensor(g) for g in grads], variables)
        opt.step(grads)
        assert (opt.calls, opt.iterations) == (int(_numpy(ref._iterations)),
                                                int(_numpy(ref.iterations)))
        for p, v in zip(params, variables):
            np.testing.assert_allclose(p, _numpy(v), rtol=1e-12, atol=1e-15)
    assert (opt.calls, opt.iterations) == (11, 3)
