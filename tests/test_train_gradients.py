"""Analytic gradients of every model and loss against central finite differences.

All in float64 with step h = 1e-6.  The central difference has truncation
error about h^2 * |f'''| / 6 (~1e-13 here) and rounding error about
eps * |f| / h (~1e-10 for losses of order 1), so agreement to
``rtol=1e-6, atol=1e-8`` has two orders of magnitude of margin while any real
mistake (a missing factor, a transposed term) is off by far more.  ReLU's kink
is hit with probability ~1e-6 per unit on these random inputs; the seeds are
fixed.
"""
import numpy as np
import pytest

from fastopt.train import MLP, LogisticRegression, losses
from fastopt.train.activations import HIDDEN, OUTPUTS, forward

H = 1e-6
RTOL, ATOL = 1e-6, 1e-8


def _targets(rng, output, shape):
    """Targets a loss would see behind ``output``: 0/1 labels, one-hot rows or reals."""
    if output == "sigmoid":
        return (rng.random(shape) < 0.5).astype(np.float64)
    if output == "softmax":
        return np.eye(shape[1])[rng.integers(0, shape[1], shape[0])]
    return rng.standard_normal(shape)


def _numeric_grad(f, x):
    g = np.empty_like(x)
    for i in range(x.size):
        old = x.flat[i]
        x.flat[i] = old + H
        up = f()
        x.flat[i] = old - H
        down = f()
        x.flat[i] = old
        g.flat[i] = (up - down) / (2 * H)
    return g


LOSS_CASES = [(loss, output) for loss in ("binary_crossentropy", "categorical_crossentropy",
                                          "mean_squared_error")
              for output in OUTPUTS if output in losses.get(loss).outputs]


@pytest.mark.parametrize(("loss", "output"), LOSS_CASES)
def test_loss_gradient_wrt_logits(loss, output):
    rng = np.random.default_rng(1)
    z = rng.standard_normal((7, 3)) * 2
    y = _targets(rng, output, z.shape)
    fn = losses.get(loss)
    _, dz = fn(z, y, output)
    numeric = _numeric_grad(lambda: fn(z, y, output)[0], z)
    np.testing.assert_allclose(dz, numeric, rtol=RTOL, atol=ATOL)


def test_loss_values_match_the_textbook_formulas():
    rng = np.random.default_rng(2)
    z = rng.standard_normal((6, 3))
    y01 = _targets(rng, "sigmoid", z.shape)
    p = 1 / (1 + np.exp(-z))
    bce = -np.mean(y01 * np.log(p) + (1 - y01) * np.log(1 - p))
    assert losses.get("bce")(z, y01, "sigmoid")[0] == pytest.approx(bce, rel=1e-12)
    onehot = _targets(rng, "softmax", z.shape)
    s = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    cce = -np.mean(np.sum(onehot * np.log(s), axis=1))
    assert losses.get("cce")(z, onehot, "softmax")[0] == pytest.approx(cce, rel=1e-12)
    yr = rng.standard_normal(z.shape)
    for output in OUTPUTS:
        mse = np.mean((forward(output, z) - yr) ** 2)
        assert losses.get("mse")(z, yr, output)[0] == pytest.approx(mse, rel=1e-12)


def test_cross_entropies_stay_finite_and_exact_for_huge_logits():
    z = np.array([[800.0], [-800.0], [800.0]])
    y = np.array([[1.0], [1.0], [0.0]])
    value, dz = losses.get("bce")(z, y, "sigmoid")
    assert value == pytest.approx((0 + 800 + 800) / 3)  # no clipping at log(1e-7)
    np.testing.assert_allclose(dz, [[0.0], [-1 / 3], [1 / 3]])
    z = np.array([[1000.0, -1000.0, 0.0]])
    value, dz = losses.get("cce")(z, np.array([[0.0, 1.0, 0.0]]), "softmax")
    assert value == pytest.approx(2000.0)
    assert np.all(np.isfinite(dz))


def _models():
    yield "logistic, sigmoid", LogisticRegression(3, seed=1, dtype="float64")
    yield "logistic, softmax", LogisticRegression(3, n_classes=4, seed=2, dtype="float64")
    for act in HIDDEN:
        yield f"mlp {act}, sigmoid", MLP(3, (5, 4), act, seed=3, dtype="float64")
        yield f"mlp {act}, 2 sigmoids", MLP(3, (5,), act, n_outputs=2, seed=4, dtype="float64")
        yield f"mlp {act}, softmax", MLP(3, (5, 4), act, n_outputs=3, output="softmax",
                                         seed=5, dtype="float64")
        yield f"mlp {act}, linear", MLP(3, (4,), act, n_outputs=2, output="linear", seed=6,
                                        dtype="float64")


MODEL_CASES = [(label, model, loss) for label, model in _models()
               for loss in ("binary_crossentropy", "categorical_crossentropy",
                            "mean_squared_error")
               if model.output in losses.get(loss).outputs]


@pytest.mark.parametrize(("label", "model", "loss"), MODEL_CASES,
                         ids=[f"{label}, {loss}" for label, _, loss in MODEL_CASES])
def test_model_gradients_match_finite_differences(label, model, loss):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((9, model.n_features))
    y = _targets(rng, model.output, (9, model.n_outputs))
    fn = model.get_loss(loss)
    # move off the zero biases, so bias and hidden-unit gradients are generic
    model.flat_params[...] += 0.1 * rng.standard_normal(model.n_params)
    value, _ = model.loss_and_grad(X, y, loss)
    assert value == fn(model.forward(X)[0], y, model.output)[0]
    numeric = _numeric_grad(lambda: fn(model.forward(X)[0], y, model.output)[0],
                            model.flat_params)
    np.testing.assert_allclose(model.flat_grads, numeric, rtol=RTOL, atol=ATOL)
    for name, g in model.grads.items():  # the views see the same numbers, layer by layer
        assert np.shares_memory(g, model.flat_grads) and g.shape == model.params[name].shape
