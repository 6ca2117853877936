"""The reference (the spec) against steps computed by hand.

Each expected value is written out from the Keras 3 formula with plain
``math`` arithmetic on small numbers, independently of fastopt's code.
"""
import math

import numpy as np
import pytest

from fastopt import reference as R

W, G, LR = 1.0, 0.5, 0.1


def one(x):
    return np.array([x], dtype=np.float64)


def approx(x):
    return pytest.approx(x, rel=1e-15, abs=1e-300)


def test_sgd():
    (w,) = R.sgd(one(W), one(G), learning_rate=LR)
    assert w[0] == approx(0.95)


def test_sgd_momentum_and_nesterov():
    # m = 0.3*0.2 - 0.1*0.5 = 0.01
    w, m = R.sgd_momentum(one(W), one(G), one(0.2), learning_rate=LR, momentum=0.3)
    assert m[0] == approx(0.3 * 0.2 - 0.05)
    assert w[0] == approx(1.0 + (0.3 * 0.2 - 0.05))
    w, m = R.sgd_nesterov(one(W), one(G), one(0.2), learning_rate=LR, momentum=0.3)
    assert m[0] == approx(0.3 * 0.2 - 0.05)
    assert w[0] == approx(1.0 + 0.3 * (0.3 * 0.2 - 0.05) - 0.05)


def test_adagrad_epsilon_inside_sqrt():
    w, acc = R.adagrad(one(W), one(G), one(0.1), learning_rate=LR, epsilon=1e-7)
    assert acc[0] == approx(0.35)
    assert w[0] == approx(1.0 - 0.05 / math.sqrt(0.35 + 1e-7))


def test_rmsprop_variants():
    kw = dict(learning_rate=LR, rho=0.9, epsilon=1e-7)
    w, v = R.rmsprop(one(W), one(G), one(0.0), **kw)
    assert v[0] == approx(0.1 * 0.25)
    assert w[0] == approx(1.0 - 0.05 / math.sqrt(0.025 + 1e-7))

    w, v, mom = R.rmsprop_momentum(one(W), one(G), one(0.0), one(0.02), momentum=0.5, **kw)
    inc = 0.05 / math.sqrt(0.025 + 1e-7)
    assert mom[0] == approx(0.5 * 0.02 + inc)
    assert w[0] == approx(1.0 - (0.01 + inc))

    w, v, a = R.rmsprop_centered(one(W), one(G), one(0.0), one(0.0), **kw)
    assert a[0] == approx(0.05)
    assert w[0] == approx(1.0 - 0.05 / math.sqrt(0.025 - 0.05 ** 2 + 1e-7))

    w, v, a, mom = R.rmsprop_centered_momentum(one(W), one(G), one(0.0), one(0.0), one(0.02),
                                               momentum=0.5, **kw)
    inc = 0.05 / math.sqrt(0.025 - 0.05 ** 2 + 1e-7)
    assert mom[0] == approx(0.01 + inc)
    assert w[0] == approx(1.0 - (0.01 + inc))


def test_rmsprop_centered_clamps_rounding_below_zero():
    # v - a^2 is negative here only because the state is inconsistent (as
    # rounding can make it); the denominator is then exactly eps.
    w, v, a = R.rmsprop_centered(one(W), one(0.0), one(1.0), one(1.5),
                                 learning_rate=LR, rho=0.9, epsilon=1e-7)
    assert np.isfinite(w).all() and w[0] == W  # g = 0: no move, but no NaN either


def test_adam_two_steps_bias_correction():
    b1, b2, eps = 0.9, 0.999, 1e-7
    w, m, v = one(W), one(0.0), one(0.0)
    # step 1 (iteration 0, t = 1)
    alpha1 = LR * math.sqrt(1 - b2) / (1 - b1)
    assert R.adam_alpha(LR, b1, b2, 0) == approx(alpha1)
    w, m, v = R.adam(w, one(G), m, v, alpha=alpha1, beta_1=b1, beta_2=b2, epsilon=eps)
    m1, v1 = 0.1 * 0.5, 0.001 * 0.25
    assert m[0] == approx(m1) and v[0] == approx(v1)
    w1 = 1.0 - m1 * alpha1 / (math.sqrt(v1) + eps)
    assert w[0] == approx(w1)
    # step 2 (iteration 1, t = 2) with g = -0.25
    alpha2 = LR * math.sqrt(1 - b2 ** 2) / (1 - b1 ** 2)
    assert R.adam_alpha(LR, b1, b2, 1) == approx(alpha2)
    w, m, v = R.adam(w, one(-0.25), m, v, alpha=alpha2, beta_1=b1, beta_2=b2, epsilon=eps)
    m2 = m1 + (-0.25 - m1) * 0.1
    v2 = v1 + (0.0625 - v1) * 0.001
    assert m[0] == approx(m2) and v[0] == approx(v2)
    assert w[0] == approx(w1 - m2 * alpha2 / (math.sqrt(v2) + eps))


def test_adam_amsgrad_uses_running_max():
    kw = dict(alpha=0.01, beta_1=0.9, beta_2=0.5, epsilon=1e-7)
    w, m, v, vh = R.adam_amsgrad(one(W), one(2.0), one(0.0), one(0.0), one(0.0), **kw)
    assert v[0] == approx(2.0) and vh[0] == approx(2.0)
    # a small gradient: v falls to 1.00005, vhat stays at 2.0
    w2, m2, v2, vh2 = R.adam_amsgrad(w, one(0.01), m, v, vh, **kw)
    assert v2[0] == approx(2.0 + (1e-4 - 2.0) * 0.5)
    assert vh2[0] == approx(2.0)
    m_expected = 0.2 + (0.01 - 0.2) * 0.1
    assert w2[0] == approx(w[0] - m_expected * 0.01 / (math.sqrt(2.0) + 1e-7))


def test_clip_by_norm_keras_semantics():
    assert R.clip_by_norm(np.array([3.0, 4.0]), 1.0).tolist() == approx([0.6, 0.8])
    small = np.array([0.3, 0.4])
    assert R.clip_by_norm(small, 1.0).tolist() == approx([0.3, 0.4])
    assert R.clip_by_norm(np.zeros(3), 1.0).tolist() == [0.0, 0.0, 0.0]
    assert np.isnan(R.clip_by_norm(np.array([np.nan, 1.0]), 1.0)).all()


def test_clip_by_global_norm_keras_semantics():
    out = R.clip_by_global_norm([np.array([3.0]), None, np.array([4.0])], 1.0)
    assert out[1] is None
    assert out[0][0] == approx(0.6) and out[2][0] == approx(0.8)
    # below the threshold (and all zeros) the gradients pass unchanged
    out = R.clip_by_global_norm([np.array([0.3]), np.array([0.4])], 1.0)
    assert out[0][0] == approx(0.3) and out[1][0] == approx(0.4)
    assert R.clip_by_global_norm([np.zeros(2)], 1.0)[0].tolist() == [0.0, 0.0]
    assert R.global_clip_scale(0.0, 2.0) == approx(1.0)
    assert math.isnan(R.global_clip_scale(math.inf, 2.0))


def test_clip_by_value_keeps_nan():
    out = R.clip_by_value(np.array([-3.0, 0.5, 3.0, np.nan]), 1.0)
    assert out[:3].tolist() == [-1.0, 0.5, 1.0] and np.isnan(out[3])


def test_apply_rule_order_clip_then_decay_then_update():
    # keep = 1 - wd*lr applies to w before the update; gscale and clipvalue to g
    w, = R.apply_rule("sgd", one(2.0), one(10.0), [], {"learning_rate": 0.1},
                      keep=0.5, gscale=0.5, clipvalue=3.0)
    assert w[0] == approx(2.0 * 0.5 - 0.1 * 3.0)


def test_adamax_keras_two_steps_epsilon_outside_the_max():
    b1, b2, eps = 0.9, 0.999, 1e-7
    kw = dict(learning_rate=LR, beta_1=b1, beta_2=b2, epsilon=eps)
    w, m, u = R.adamax(one(W), one(G), one(0.0), one(0.0), step=1, **kw)
    assert m[0] == approx(0.05) and u[0] == approx(0.5)
    w1 = 1.0 - 0.1 * 0.05 / ((1 - 0.9) * (0.5 + eps))
    assert w[0] == approx(w1)
    # step 2, g = -0.25: |g| is below the decayed norm, which wins the max
    w, m, u = R.adamax(w, one(-0.25), m, u, step=2, **kw)
    assert m[0] == approx(0.05 + (-0.25 - 0.05) * 0.1)
    assert u[0] == approx(0.999 * 0.5)
    assert w[0] == approx(w1 - 0.1 * 0.02 / ((1 - 0.81) * (0.4995 + eps)))


def test_adamax_torch_two_steps_epsilon_inside_the_max():
    b1, b2, eps = 0.9, 0.999, 1e-8
    kw = dict(learning_rate=LR, beta_1=b1, beta_2=b2, epsilon=eps)
    w, m, u = R.adamax_torch(one(W), one(G), one(0.0), one(0.0), step=1, **kw)
    assert m[0] == approx(0.05) and u[0] == approx(0.5 + eps)
    w1 = 1.0 - 0.1 / (1 - 0.9) * (0.05 / (0.5 + eps))
    assert w[0] == approx(w1)
    w, m, u = R.adamax_torch(w, one(-0.25), m, u, step=2, **kw)
    assert m[0] == approx(0.02)
    assert u[0] == approx(0.999 * (0.5 + eps))
    assert w[0] == approx(w1 - 0.1 / (1 - 0.81) * (0.02 / (0.999 * (0.5 + eps))))


@pytest.mark.parametrize("rule", ["adamax", "adamax_torch"])
def test_adamax_max_lets_a_nan_win(rule):
    kw = dict(learning_rate=LR, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=1)
    _, _, u = getattr(R, rule)(one(W), one(np.nan), one(0.0), one(3.0), **kw)
    assert np.isnan(u[0])
    _, _, u = getattr(R, rule)(one(W), one(0.5), one(0.0), one(np.nan), **kw)
    assert np.isnan(u[0])
