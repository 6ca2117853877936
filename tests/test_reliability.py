"""Reliability: what a demanding user tries to break (issue "no hangs, thread
safety, no silent wrong results").  Each test here failed on the code before
its fix.

* floating-point exceptions: whatever ``np.seterr`` says, a step never raises
  halfway; NaN and inf propagate as on the compiled backends;
"""
import numpy as np
import pytest

import fastopt

from cases import HOST_BACKENDS


def _special(dtype=np.float64):
    return np.array([np.nan, np.inf, -np.inf, 1e200, -1e-300, 0.0, 1.0], dtype)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("options", [{}, {"clipnorm": 1.0}, {"global_clipnorm": 1.0},
                                     {"use_ema": True}, {"loss_scale_factor": 1e-300},
                                     {"gradient_accumulation_steps": 2,
                                      "loss_scale_factor": 1e-300}],
                         ids=["plain", "clipnorm", "global", "ema", "loss_scale", "accum"])
def test_no_floating_point_exception_whatever_seterr_says(backend, options):
    # the same step under np.seterr(all="raise") as under the default: no
    # FloatingPointError halfway, every tensor updated, the same NaN and inf
    def run(errors):
        params = [np.full(7, 1e300), np.ones(7), np.ones(3)]
        opt = fastopt.Adam(params, backend=backend, **options)
        grads = [_special(), _special()[::-1].copy(), np.array([1e308, 1e308, 1.0])]
        with np.errstate(all=errors):
            for _ in range(2):
                opt.step(grads)
        return params, opt.state_dict()["slots"]
    params, slots = run("raise")
    ref_params, ref_slots = run("ignore")
    for a, b in zip(params, ref_params):
        np.testing.assert_array_equal(a, b)
    for k in ref_slots:
        np.testing.assert_array_equal(slots[k], ref_slots[k])


def test_accumulation_updates_every_accumulator_or_none():
    # the gradient of the second tensor overflows when unscaled: both
    # accumulators take their share (the second one inf), none is skipped
    params = [np.ones(3), np.ones(3)]
    opt = fastopt.SGD(params, gradient_accumulation_steps=3, loss_scale_factor=1e-300)
    with np.errstate(all="raise"):
        opt.step([np.full(3, 1e-300), np.full(3, 1e10)])
    acc = [v for k, v in opt.state_dict()["slots"].items() if "accumulator" in k]
    assert len(acc) == 2
    np.testing.assert_allclose(acc[0], 1.0)
    assert np.isinf(acc[1]).all()


# ---------------------------------------------------------------------------
# Gradients that overlap a parameter's memory

@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_gradients_overlapping_another_parameter_are_refused(backend):
    buf = np.arange(1.0, 11.0)
    a, b = buf[:5], buf[5:]
    opt = fastopt.SGD([a, b], learning_rate=0.1, momentum=0.9, backend=backend)
    before = buf.copy(), opt.state_dict()
    for grads, what in (([b, a], "params\\[1\\]"),          # swapped neighbours
                        ([buf[1:6], np.ones(5)], "its own parameter, shifted"),
                        ([np.ones(5), buf[3:8]], "params\\[0\\]"),
                        ([buf[4:9], np.ones(5)], "")):  # across both
        with pytest.raises(ValueError, match=f"overlaps the memory of {what}"):
            opt.step(grads)
        np.testing.assert_array_equal(buf, before[0])
        assert opt.iterations == 0


def test_overlap_is_checked_for_dict_params_and_groups():
    buf = np.zeros(8)
    params = {"w": buf[:4], "b": buf[4:]}
    opt = fastopt.Adam(params)
    with pytest.raises(ValueError, match="grads\\['w'\\] overlaps the memory of params\\['b'\\]"):
        opt.step({"w": buf[4:], "b": np.ones(4)})
    groups = fastopt.SGD([{"params": [buf[:4]]}, {"params": [buf[4:]]}])
    with pytest.raises(ValueError, match="overlaps"):
        groups.step([[buf[4:]], [np.ones(4)]])


def test_a_gradient_that_is_its_own_parameter_or_in_other_memory_is_fine():
    buf = np.ones(10)
    a, b = buf[:5], buf[5:]
    opt = fastopt.SGD([a, b], learning_rate=0.5)
    opt.step([a, b])                      # exactly its own memory: elementwise, safe
    np.testing.assert_array_equal(buf, 0.5)
    other = np.full(10, 2.0)
    opt.step([other[:5], other[5:]])      # views of a buffer no parameter uses
    np.testing.assert_array_equal(buf, -0.5)
