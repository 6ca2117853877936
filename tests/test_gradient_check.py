"""The compiled check of many gradients (issue 19, the per-tensor cost).

From more than ``fastopt.params._FEW`` tensors, a list of gradients is checked
in one compiled pass that reads the list and array structs
(:class:`fastopt.backends.numba_backend.GradientCheck`).  It only decides
whether the list can go as it is; anything it does not accept takes the
general path, which raises the same errors as for a few tensors.  These tests
hold it to that: each bad gradient, at a position past the first few, is
refused with the general path's message and changes nothing; each acceptable
but unusual one (strided, a parameter's own memory) steps as it always did.
"""
import numpy as np
import pytest

import fastopt
from fastopt.backends import numba_backend as nb
from fastopt.params import _FEW

N = _FEW + 24          # tensors: the compiled check's side of _FEW
SHAPES = [(3, 4) if i % 2 == 0 else (5,) for i in range(N)]


def _params():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def _grads():
    rng = np.random.default_rng(1)
    return [(rng.standard_normal(s) * 1e-2).astype(np.float32) for s in SHAPES]


def _with(i, value):
    grads = _grads()
    grads[i] = value
    return grads


def test_the_compiled_check_is_there():
    # on this NumPy and CPython the struct layout is confirmed: without it
    # every list would take the general path and nothing here would test it
    assert nb.GradientCheck.available


BAD = {
    "dtype": (lambda: _with(N - 3, np.ones(5)), TypeError,
              rf"grads\[{N - 3}\] has dtype float64 but params\[{N - 3}\] has dtype float32"),
    "shape": (lambda: _with(N - 2, np.ones((4, 3), np.float32)), ValueError,
              rf"grads\[{N - 2}\] has shape \(4, 3\) but params\[{N - 2}\] has shape \(3, 4\)"),
    "type": (lambda: _with(N - 1, [1.0] * 5), TypeError,
             rf"grads\[{N - 1}\] must be a numpy.ndarray or None, got list"),
    "too_few": (lambda: _grads()[:-1], ValueError,
                rf"expected {N} gradient\(s\), one per parameter, got {N - 1}"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_gradients_among_many_are_refused_and_change_nothing(case):
    params = _params()
    opt = fastopt.Adam(params, backend="numba")
    opt.step(_grads())
    before = [p.copy() for p in params], opt.state_dict()
    make, exc, match = BAD[case]
    with pytest.raises(exc, match=f"Adam.step: {match}"):
        opt.step(make())
    for p, q in zip(params, before[0]):
        np.testing.assert_array_equal(p, q)
    after = opt.state_dict()
    assert after["iterations"] == before[1]["iterations"] == 1
    for k, v in before[1]["slots"].items():
        np.testing.assert_array_equal(after["slots"][k], v)


@pytest.mark.parametrize("case", ["strided", "none", "own_parameter", "tuple"])
def test_unusual_but_valid_gradients_among_many_step_as_before(case):
    # what the compiled check does not accept as it is, the general path
    # does: the result is that of plain contiguous gradients
    grads = _grads()
    ref_params = _params()
    ref = fastopt.Adam(ref_params, backend="numba")
    params = _params()
    opt = fastopt.Adam(params, backend="numba")
    given = list(grads)
    i = N - 4   # a (3, 4) tensor
    if case == "strided":
        given[i] = np.repeat(grads[i], 2, axis=1)[:, ::2]
        assert not given[i].flags.c_contiguous
    elif case == "none":
        given[i] = grads[i] = None
    elif case == "own_parameter":
        params[i][...] = grads[i]   # its gradient is its own memory: allowed
        ref_params[i][...] = grads[i]
        given[i] = params[i]
    elif case == "tuple":
        given = tuple(given)
    assert opt._tree._compiled_check(given) == (case == "own_parameter")
    opt.step(given)
    ref.step(grads)
    for a, b in zip(params, ref_params):
        np.testing.assert_array_equal(a, b)


def test_gradient_check_finds_each_failure():
    params = _params()
    rows = []
    for i, p in enumerate(params):
        rows.append((p.ctypes.data, p.ctypes.data + p.nbytes, i))
    check = nb.GradientCheck(params, rows)
    good = _grads()
    assert check(good) == -1
    assert check(list(params)) == -1                        # each exactly its own
    swapped = list(good)
    swapped[5] = params[7] if SHAPES[5] == SHAPES[7] else params[5][1:]
    assert check(swapped) == 5                              # another's memory
    for i, bad in [(3, good[3].astype(np.float64)),         # dtype
                   (4, good[4].astype(">f4")),              # an equal dtype, not the same object
                   (6, good[6].reshape(12)),                # shape
                   (8, np.asfortranarray(good[8])),         # not C-contiguous
                   (9, None),
                   (10, good[10].view(np.matrix) if good[10].ndim == 2 else [1.0])]:
        grads = list(good)
        grads[i] = bad
        assert check(grads) == i, i
    assert check(good[:-1]) == 0                            # not one per parameter
    assert check(tuple(good)) == 0                          # only lists


@pytest.mark.parametrize("objects", [[], [None], list(range(1000, 1100)), ("a", None, 3.5)])
def test_object_ids_are_the_ids(objects):
    out = nb.object_ids(objects)
    assert out.dtype == np.intp
    assert out.tolist() == [id(x) for x in objects]
    buf = np.zeros(len(objects), np.intp)
    again = nb.object_ids(objects, buf)
    assert again.tolist() == [id(x) for x in objects]
