"""``scipy.optimize.minimize(..., method=fastopt.scipy.<name>)``."""
import numpy as np
import pytest

scipy_optimize = pytest.importorskip("scipy.optimize")
from scipy.optimize import Bounds, minimize, rosen, rosen_der  # noqa: E402

import fastopt  # noqa: E402
import fastopt.scipy as fs  # noqa: E402

METHODS = [fs.sgd, fs.adagrad, fs.rmsprop, fs.adam, fs.adamw, fs.adamax, fs.radam]


def test_rosenbrock_with_adam_reaches_the_minimum():
    res = minimize(rosen, [-1.2, 1.0], jac=rosen_der, method=fs.adam,
                   options={"learning_rate": 0.02, "maxiter": 20000, "gtol": 1e-6})
    assert res.success and res.status == 0, res.message
    np.testing.assert_allclose(res.x, [1.0, 1.0], atol=1e-4)
    assert res.fun == pytest.approx(rosen(res.x)) and res.fun < 1e-8
    assert np.max(np.abs(res.jac)) <= 1e-6
    assert res.njev == res.nit + 1 and res.nfev == 1 and 0 < res.nit < 20000


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_least_squares_fit_matches_lstsq(method):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((200, 3))
    b = A @ np.array([1.5, -2.0, 0.5]) + 0.01 * rng.standard_normal(200)

    def fun(x):  # f and g together: jac=True
        r = A @ x - b
        return 0.5 * r @ r / len(b), A.T @ r / len(b)
    lr = {"sgd": 0.5, "adagrad": 0.5,  # RMSprop has no bias correction: it needs to slow down
          "rmsprop": fastopt.schedules.ExponentialDecay(0.01, 1000, 0.5)}
    options = {"learning_rate": lr.get(method.__name__, 0.05), "maxiter": 20000, "gtol": 1e-8}
    if method is fs.adamw:
        options["weight_decay"] = 0.0  # decay would pull the fit towards zero
    res = minimize(fun, np.zeros(3), jac=True, method=method, options=options)
    expected = np.linalg.lstsq(A, b, rcond=None)[0]
    assert res.success, (method.__name__, res.message, res.nit)
    np.testing.assert_allclose(res.x, expected, atol=1e-6)


def test_same_steps_as_the_optimizer_class():
    # the method is fastopt's optimizer: the iterates are its iterates
    seen = []
    minimize(rosen, [-1.2, 1.0], jac=rosen_der, method=fs.rmsprop,
             options={"learning_rate": 0.01, "maxiter": 5, "gtol": 0.0, "momentum": 0.5},
             callback=lambda xk: seen.append(xk))
    x = np.array([-1.2, 1.0])
    opt = fastopt.RMSprop([x], learning_rate=0.01, momentum=0.5)
    for xk in seen:
        opt.step([rosen_der(x)])
        np.testing.assert_array_equal(xk, x)
    assert len(seen) == 5


def test_callback_intermediate_result_and_stop_iteration():
    results = []

    def callback(intermediate_result):
        results.append(intermediate_result)
        if len(results) == 3:
            raise StopIteration
    res = minimize(rosen, [0.0, 0.0], jac=rosen_der, method=fs.adam, callback=callback,
                   options={"maxiter": 100})
    assert res.status == 99 and not res.success and "StopIteration" in res.message
    assert res.nit == 3 and len(results) == 3
    assert results[-1].fun == pytest.approx(rosen(results[-1].x))
    np.testing.assert_array_equal(results[-1].x, res.x)


def test_bounds_are_kept_by_projection():
    xs = []
    res = minimize(rosen, [0.0, 0.0], jac=rosen_der, method=fs.adam,
                   bounds=[(None, 0.5), (-1.0, 0.2)], callback=xs.append,
                   options={"learning_rate": 0.05, "maxiter": 3000})
    steps = np.array(xs)
    assert np.all(steps[:, 0] <= 0.5) and np.all((steps[:, 1] >= -1.0) & (steps[:, 1] <= 0.2))
    # the constrained minimum: x1 at its bound 0.2, x0 where d/dx0 rosen vanishes
    x0 = scipy_optimize.brentq(lambda t: -2 * (1 - t) - 400 * t * (0.2 - t * t), 0.3, 0.5)
    np.testing.assert_allclose(res.x, [x0, 0.2], atol=1e-4)
    res = minimize(rosen, [0.0, 0.0], jac=rosen_der, method=fs.sgd,
                   bounds=Bounds([-np.inf, -1.0], [0.5, 0.2]),
                   options={"learning_rate": 1e-3, "maxiter": 20})
    assert res.x[0] <= 0.5 and -1.0 <= res.x[1] <= 0.2


def test_maxiter_tol_and_a_non_finite_gradient():
    res = minimize(rosen, [-1.2, 1.0], jac=rosen_der, method=fs.sgd,
                   options={"learning_rate": 1e-4, "maxiter": 7})
    assert res.status == 1 and not res.success and res.nit == 7
    res = minimize(lambda x: float(x @ x), [3.0], jac=lambda x: 2 * x, method=fs.sgd,
                   tol=1e-3, options={"learning_rate": 0.1, "maxiter": 1000})
    assert res.success and abs(res.jac[0]) <= 1e-3 and abs(res.jac[0]) > 1e-4
    res = minimize(lambda x: 0.0, [1.0], jac=lambda x: np.array([np.nan]), method=fs.adam)
    assert res.status == 3 and not res.success and "not finite" in res.message


def test_what_cannot_work_is_refused_clearly():
    with pytest.raises(ValueError, match="needs the gradient"):
        minimize(rosen, [0.0, 0.0], method=fs.adam)        # finite differences
    with pytest.raises(ValueError, match="constraints are not supported"):
        minimize(rosen, [0.0, 0.0], jac=rosen_der, method=fs.adam,
                 constraints={"type": "eq", "fun": lambda x: x[0]})
    with pytest.raises(ValueError, match="unknown hyperparameter.*'lr'.*learning_rate"):
        minimize(rosen, [0.0, 0.0], jac=rosen_der, method=fs.adam, options={"lr": 0.1})
    with pytest.raises(ValueError, match="maxiter"):
        minimize(rosen, [0.0, 0.0], jac=rosen_der, method=fs.adam, options={"maxiter": -1})
    with pytest.raises(ValueError, match="jac returned 3 values for 2"):
        minimize(rosen, [0.0, 0.0], jac=lambda x: np.zeros(3), method=fs.adam)


def test_import_fastopt_does_not_import_scipy():
    import subprocess
    import sys
    code = ("import sys, fastopt; assert 'scipy' not in sys.modules, 'import fastopt'; "
            "fastopt.scipy.adam; assert 'scipy' not in sys.modules, 'fastopt.scipy'")
    subprocess.run([sys.executable, "-c", code], check=True)
