"""The backend registry, the auto rule, and import without optional backends."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastopt
from fastopt import backends


def test_available_backends_lists_numpy_and_numba():
    names = fastopt.available_backends()
    assert names[0] == "numpy" and "numba" in names


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="unknown backend 'opencl'.*known backends: auto, numpy"):
        fastopt.get_backend("opencl")
    with pytest.raises(ValueError, match="backend must be one of"):
        fastopt.SGD(np.zeros(2), backend="fortran")


def test_auto_follows_the_committed_tuning_table():
    table = json.loads((backends.Path(backends.__file__).with_name("tuning.json")).read_text())
    for dtype in ("float32", "float64"):
        for size in (1, 1000, 10**7):
            expected = next(b for limit, b in table["auto"][dtype]
                            if (limit is None or size <= limit)
                            and b in fastopt.available_backends())
            assert backends.resolve_backend("auto", dtype, size).NAME == expected
    opt = fastopt.Adam(np.zeros(3, np.float32))
    assert opt.backends == {"float32": backends.resolve_backend("auto", "float32", 3).NAME}


def test_every_backend_exposes_the_same_kernels():
    from fastopt.rule import RULES
    import inspect
    sigs = {}
    for name in fastopt.available_backends():
        module = fastopt.get_backend(name)
        sigs[name] = {r: str(inspect.signature(getattr(module, r))) for r in RULES}
        for r in RULES:
            assert getattr(module, r).__doc__  # documented
    first = next(iter(sigs.values()))
    assert all(s == first for s in sigs.values())


def test_data_pointers_match_ctypes_for_all_kinds_of_arrays():
    nb = fastopt.get_backend("numba")
    base = np.arange(60.0).reshape(6, 10)
    arrays = [base, base[2], base[3:, :], np.zeros(()), np.empty(0, np.float32),
              np.ones(5, np.float32)[1:], None, np.asfortranarray(base)]
    out = np.zeros(len(arrays), np.intp)
    nb.data_pointers(arrays, out)
    expected = [0 if a is None else a.ctypes.data for a in arrays]
    assert out.tolist() == expected


def test_threads_and_threshold_setters_validate():
    with pytest.raises(ValueError, match="positive integer"):
        fastopt.set_num_threads(0)
    with pytest.raises(ValueError, match="exceeds"):
        fastopt.set_num_threads(10**6)
    with pytest.raises(ValueError, match="integer >= 0"):
        fastopt.set_parallel_threshold(-1)
    before = fastopt.get_parallel_threshold("float64")
    try:
        fastopt.set_parallel_threshold(123, "float64")
        assert fastopt.get_parallel_threshold("float64") == 123
    finally:
        fastopt.set_parallel_threshold(None, "float64")
    assert fastopt.get_parallel_threshold("float64") == before


def test_import_without_numba_falls_back_to_numpy():
    """A missing backend never breaks `import fastopt` (numba and the Cython
    extension blocked here)."""
    code = textwrap.dedent("""
        import sys
        sys.modules["numba"] = None          # makes `import numba` fail
        sys.modules["fastopt.backends._cython_kernels"] = None
        import numpy as np, fastopt
        assert fastopt.available_backends() == ["numpy"], fastopt.available_backends()
        w = np.ones(3)
        opt = fastopt.Adam(w, learning_rate=0.1)
        assert opt.backends == {"float64": "numpy"}
        opt.step(np.ones(3))
        assert np.allclose(w, 0.9)
        try:
            fastopt.Adam(w, backend="numba")
        except ImportError as e:
            assert "pip install numba" in str(e), e
        else:
            raise AssertionError("no ImportError")
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_threshold_set_before_numpy_backend_loads():
    """set_parallel_threshold before the numpy backend is first loaded must not
    break it (the numpy backend has no threshold)."""
    code = textwrap.dedent("""
        import numpy as np, fastopt
        from fastopt import backends
        backends.get_backend("numba")
        fastopt.set_parallel_threshold(1000)
        opt = fastopt.SGD(np.ones(3), backend="numpy")
        opt.step(np.ones(3))
        assert fastopt.get_parallel_threshold("float32") == 1000
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_set_num_threads_is_process_wide_like_torch(monkeypatch):
    """Numba's own count is per thread; fastopt's holds in every thread, for every
    backend, in threads started before or after the call."""
    import threading

    import numba

    from fastopt.backends import numba_backend
    if numba_backend.max_threads() < 2:
        pytest.skip("needs Numba started with 2 threads or more")
    old = numba.get_num_threads()
    cython = fastopt.get_backend("cython") if "cython" in fastopt.available_backends() else None
    old_cython = cython.get_num_threads() if cython else None
    monkeypatch.setattr(backends, "_num_threads", backends._num_threads)
    monkeypatch.setattr(numba_backend, "_num_threads", numba_backend._num_threads)
    monkeypatch.setattr(numba_backend, "_applied", threading.local())
    size = 2 * numba_backend.get_parallel_threshold("float32")   # a parallel step
    seen, go = {}, threading.Event()

    def worker(key):
        go.wait()
        seen[key, "fastopt"] = fastopt.get_num_threads()
        for name in ("numba", "cython"):
            if name in fastopt.available_backends():
                seen[key, name] = fastopt.get_backend(name).get_num_threads()
        opt = fastopt.Adam(np.zeros(size, np.float32), backend="numba")
        opt.step(np.ones(size, np.float32))
        seen[key, "numba in the step"] = numba.get_num_threads()  # what the step ran with

    early = threading.Thread(target=worker, args=("started before",))
    early.start()
    try:
        fastopt.set_num_threads(1)
        late = threading.Thread(target=worker, args=("started after",))
        late.start()
        go.set()
        early.join()
        late.join()
    finally:
        go.set()
        numba.set_num_threads(old)
        if cython:
            cython.set_num_threads(old_cython)
    assert seen and set(seen.values()) == {1}, seen
