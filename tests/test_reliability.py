"""Reliability: what a demanding user tries to break (issue "no hangs, thread
safety, no silent wrong results").  Each test here failed on the code before
its fix.

* floating-point exceptions: whatever ``np.seterr`` says, a step never raises
  halfway; NaN and inf propagate as on the compiled backends;
* gradients sharing memory with another parameter are refused;
* one optimizer used from several threads: steps, ``state_dict`` and
  ``load_state_dict`` are atomic with respect to each other;
* attributes assigned after construction are checked; copies and pickles.
"""
import copy
import pickle
import threading
import time

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


@pytest.mark.parametrize("n", [3, 40])   # the Python check, and the compiled one
def test_overlap_is_found_among_many_tensors(n):
    buf = np.zeros(4 * n, np.float32)
    params = [buf[4 * i:4 * i + 4] for i in range(n)]
    opt = fastopt.Adam(params)
    fresh = [np.ones(4, np.float32) for _ in range(n)]
    opt.step(fresh)                          # separate memory: fine
    grads = list(fresh)
    grads[n - 1] = buf[4:8]                  # the last gradient is params[1]'s memory
    before = buf.copy()
    with pytest.raises(ValueError, match=f"grads\\[{n - 1}\\] overlaps the memory of "
                                         "params\\[1\\]"):
        opt.step(grads)
    np.testing.assert_array_equal(buf, before)
    opt.step(list(params))                   # each gradient exactly its own parameter
    assert opt.iterations == 2


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


# ---------------------------------------------------------------------------
# Threads

def _hammer(fn, n, threads=2):
    errors = []

    def run():
        try:
            for _ in range(n):
                fn()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors


@pytest.mark.parametrize("backend", ["numba", "cython"])
def test_one_optimizer_stepped_from_two_threads_loses_no_update(backend):
    if backend not in fastopt.available_backends():
        pytest.skip(f"{backend} is not available")
    n = 300_000
    w = np.zeros(n, np.float32)
    g = np.ones(n, np.float32)
    opt = fastopt.SGD([w], learning_rate=0.01, momentum=0.9, backend=backend)
    _hammer(lambda: opt.step([g]), 40)
    w_seq = np.zeros(n, np.float32)
    seq = fastopt.SGD([w_seq], learning_rate=0.01, momentum=0.9, backend=backend)
    for _ in range(80):
        seq.step([g])
    assert opt.iterations == 80
    np.testing.assert_array_equal(w, w_seq)
    np.testing.assert_array_equal(opt.state_dict()["slots"]["momentum/0"],
                                  seq.state_dict()["slots"]["momentum/0"])


def test_state_dict_from_another_thread_is_never_torn():
    # every snapshot is the state after exactly ``iterations`` steps: the
    # momentum of a constant gradient is uniform and follows from the count
    n = 1_000_000
    w = np.zeros(n, np.float32)
    g = np.ones(n, np.float32)
    opt = fastopt.SGD([w], learning_rate=0.01, momentum=0.5, backend="numba")
    expected = [np.float32(0.0)]
    for _ in range(60):
        expected.append(np.float32(0.5) * expected[-1] - np.float32(0.01))
    done = threading.Event()

    def stepper():
        for _ in range(60):
            opt.step([g])
            time.sleep(0.0005)  # a lock is not fair: let the reader in now and then
        done.set()
    t = threading.Thread(target=stepper)
    t.start()
    seen = 0
    while not done.is_set() or seen == 0:
        sd = opt.state_dict()
        m = sd["slots"]["momentum/0"]
        k = sd["iterations"]
        assert m.min() == m.max() == expected[k], (k, m.min(), m.max())
        seen += 1
    t.join()
    assert seen > 1


def test_load_state_dict_while_another_thread_steps_gives_a_consistent_optimizer():
    w = np.zeros(200_000, np.float32)
    g = np.ones_like(w)
    opt = fastopt.Adam([w], backend="numba")
    for _ in range(3):
        opt.step([g])
    saved = opt.state_dict()
    _hammer(lambda: (opt.step([g]), opt.load_state_dict(saved)), 10)
    sd = opt.state_dict()
    # after the last load at most one step of the other thread ran after it
    assert sd["iterations"] in (3, 4)


def test_two_optimizers_in_two_threads_still_run_in_parallel_correctly():
    ws = [np.zeros(100_000, np.float32) for _ in range(2)]
    opts = [fastopt.Adam([w], backend="numba") for w in ws]
    g = np.ones(100_000, np.float32)
    ts = [threading.Thread(target=lambda o=o: [o.step([g]) for _ in range(20)]) for o in opts]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    np.testing.assert_array_equal(ws[0], ws[1])
    assert opts[0].iterations == opts[1].iterations == 20


# ---------------------------------------------------------------------------
# Attributes after construction, copies

@pytest.mark.parametrize("value", ["7", 2.5, True, -1, None])
def test_iterations_is_checked_on_assignment(value):
    w = np.zeros(3)
    opt = fastopt.Adam([w])
    opt.step([np.ones(3)])
    before = w.copy()
    with pytest.raises(TypeError, match="iterations must be an int >= 0"):
        opt.iterations = value
    assert opt.iterations == 1
    opt.step([np.ones(3)])
    assert opt.iterations == 2 and not np.array_equal(w, before)
    opt.iterations = np.int64(5)
    assert opt.iterations == 5 and type(opt.iterations) is int


@pytest.mark.parametrize("name", ["iterations", "calls"])
@pytest.mark.parametrize("value", ["7", 2.5, True, -1, None])
def test_counters_under_accumulation_are_checked_on_assignment(name, value):
    opt = fastopt.SGD([np.zeros(3)], gradient_accumulation_steps=3)
    for _ in range(4):
        opt.step([np.ones(3)])
    with pytest.raises(TypeError, match=f"SGD: {name} must be an int >= 0, got"):
        setattr(opt, name, value)
    assert (opt.calls, opt.iterations) == (4, 1)


def test_setting_iterations_under_accumulation_starts_a_cycle():
    w = np.zeros(3)
    opt = fastopt.SGD([w], learning_rate=1.0, gradient_accumulation_steps=3)
    opt.iterations = np.int64(5)
    assert (opt.calls, opt.iterations) == (15, 5) and type(opt.calls) is int
    opt.step([np.ones(3)])
    opt.step([np.ones(3)])
    assert (w == 0).all()  # accumulating: the cycle started at call 15
    opt.step([np.ones(3)])
    assert (w == -1).all() and (opt.calls, opt.iterations) == (18, 6)
    opt.calls = 7  # mid-cycle: the call counter as given, the accumulators as they are
    assert (opt.calls, opt.iterations) == (7, 2) and type(opt.calls) is int
    opt.step([np.ones(3)])
    assert (w == -1).all() and (opt.calls, opt.iterations) == (8, 2)
    opt.step([np.ones(3)])  # the mean of the cycle's two accumulated gradients over 3
    np.testing.assert_array_equal(w, -1.0 - 2.0 / 3.0)
    assert (opt.calls, opt.iterations) == (9, 3)


@pytest.mark.parametrize("name, value", [("clipnorm", -1.0), ("clipvalue", float("nan")),
                                         ("global_clipnorm", 0.0), ("clipnorm", "1")])
def test_clipping_attributes_are_checked_on_assignment(name, value):
    opt = fastopt.SGD([np.zeros(3)], learning_rate=0.1)
    with pytest.raises((TypeError, ValueError)):
        setattr(opt, name, value)
    assert getattr(opt, name) is None
    opt.clipnorm = 1.0
    with pytest.raises(ValueError, match="at most one"):
        opt.clipvalue = 0.5
    assert opt.clipnorm == 1.0 and opt.clipvalue is None


@pytest.mark.parametrize("kwargs", [{}, {"learning_rate": fastopt.schedules.ExponentialDecay(
    0.01, 10, 0.5)}, {"use_ema": True, "gradient_accumulation_steps": 2}])
def test_deepcopy_and_pickle_step_like_the_original(kwargs):
    w = np.linspace(-1, 1, 7)
    opt = fastopt.Adam([w], **kwargs)
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(7) for _ in range(6)]
    for g in grads[:3]:
        opt.step([g])
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        (cw,) = clone.params
        assert cw is not w
        np.testing.assert_array_equal(cw, w)
        assert clone.iterations == opt.iterations
        for g in grads[3:]:
            clone.step([g])
        ref = copy.deepcopy(opt)
        for g in grads[3:]:
            ref.step([g])
        np.testing.assert_array_equal(clone.params[0], ref.params[0])
    np.testing.assert_array_equal(w, opt.params[0])  # the original did not move


def test_fastopt_torch_optimizer_from_two_threads():
    torch = pytest.importorskip("torch")
    import fastopt.torch as ft
    n = 300_000
    p = torch.nn.Parameter(torch.zeros(n))
    p.grad = torch.ones(n)
    opt = ft.SGD([p], lr=0.01, momentum=0.5)
    q = torch.nn.Parameter(torch.zeros(n))
    q.grad = torch.ones(n)
    seq = ft.SGD([q], lr=0.01, momentum=0.5)
    for _ in range(60):
        seq.step()
    done = threading.Event()
    snapshots = []

    def watch():  # every snapshot is one between steps: a uniform buffer
        while not done.is_set():
            st = opt.state_dict()["state"]
            if st:
                b = st[0]["momentum_buffer"]
                snapshots.append(bool(b.min() == b.max()))
    w = threading.Thread(target=watch)
    w.start()
    _hammer(opt.step, 30)
    done.set()
    w.join()
    assert torch.equal(p.detach(), q.detach())
    assert snapshots and all(snapshots)
