"""The README's quickstart runs as written and trains."""
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: README.new.md while it waits to replace README.md, then README.md
README = ROOT / "README.new.md" if (ROOT / "README.new.md").exists() else ROOT / "README.md"


def test_quickstart_runs_and_learns():
    text = README.read_text()
    code = re.search(r"## Quickstart.*?```python\n(.*?)```", text, re.S).group(1)
    scope = {}
    exec(compile(code, "README quickstart", "exec"), scope)
    X, y, w, b = scope["X"], scope["y"], scope["w"], scope["b"]
    accuracy = np.mean(((X @ w + b) > 0) == (y > 0.5))
    assert accuracy > 0.95


def test_pytorch_quickstart_runs_and_learns():
    torch = __import__("pytest").importorskip("torch")
    text = README.read_text()
    code = re.search(r"## Quickstart: PyTorch.*?```python\n(.*?)```", text, re.S).group(1)
    assert "fastopt.torch.AdamW" in code
    scope = {}
    exec(compile(code, "README PyTorch quickstart", "exec"), scope)
    model, X, y = scope["model"], scope["X"], scope["y"]
    with torch.no_grad():
        accuracy = ((model(X).squeeze(1) > 0).float() == y).float().mean().item()
    assert accuracy > 0.95
