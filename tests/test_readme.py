"""The README's quickstart runs as written and trains."""
import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs_and_learns():
    text = README.read_text()
    code = re.search(r"## Quickstart.*?```python\n(.*?)```", text, re.S).group(1)
    scope = {}
    exec(compile(code, "README quickstart", "exec"), scope)
    X, y, w, b = scope["X"], scope["y"], scope["w"], scope["b"]
    accuracy = np.mean(((X @ w + b) > 0) == (y > 0.5))
    assert accuracy > 0.95
