"""The `fastopt` command."""
import shutil
import subprocess
import sys

import pytest

from fastopt.cli import main


def test_info_prints_versions_backends_and_threading(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "fastopt  0.1.0" in out
    assert "backends numpy, numba" in out
    assert "threading layer" in out
    import fastopt
    if "cython" in fastopt.available_backends():
        assert "cython   " in out and "built with" in out
    else:
        assert "cython: unavailable" in out and "pip install -e ." in out


def test_console_script_is_installed():
    exe = shutil.which("fastopt")
    if exe is None:  # running from a source tree without `pip install`
        cmd = [sys.executable, "-m", "fastopt.cli", "info"]
    else:
        cmd = [exe, "info"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "backends" in out.stdout


def test_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2
