"""Where the tests find the shared banknotes data set (never copied into the repo).

``FASTOPT_BANKNOTES`` if set, else ``<repo>/../shared/data/banknotes.csv``, else
``/work/shared/data/banknotes.csv``; tests that need it skip when it is absent.
"""
import os
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]


def banknotes_path():
    """Path of banknotes.csv, or skip the calling test."""
    candidates = [os.environ.get("FASTOPT_BANKNOTES"),
                  _REPO.parent / "shared" / "data" / "banknotes.csv",
                  "/work/shared/data/banknotes.csv"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    pytest.skip("banknotes.csv not found (set FASTOPT_BANKNOTES or see shared/data)")
