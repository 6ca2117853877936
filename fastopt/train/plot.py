"""Loss curves of a comparison as a PNG (matplotlib, a core dependency).

matplotlib is imported only here, inside the functions, so ``import fastopt``
never pays for it and a broken matplotlib install fails only the plot; and
through ``matplotlib.figure.Figure`` rather than pyplot, so no GUI backend is
involved: it works headless.
"""
from __future__ import annotations

import numpy as np

__all__ = ["INSTALL_HINT", "matplotlib_missing", "plot_runs"]

INSTALL_HINT = "install it with: pip install -e '.[plot]' (or: pip install matplotlib)"


def matplotlib_missing():
    """None if matplotlib can be imported (it is a dependency of fastopt, so
    only a broken or partial install lacks it), else a one-line reason with
    the install hint."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return f"plotting needs matplotlib, which is not installed; {INSTALL_HINT}"
    return None


def plot_runs(runs, path, title=""):
    """Write the loss curves of ``runs`` (as returned by
    :func:`fastopt.train.compare`) to ``path`` as a PNG.

    One panel for the training loss and, if the runs have it, one for the
    validation loss.  Each optimizer is drawn as its mean over seeds, with a
    shaded band from the minimum to the maximum over seeds when there are
    several.
    """
    from matplotlib.figure import Figure

    keys = [k for k in ("loss", "val_loss") if k in runs[0]["history"]]
    fig = Figure(figsize=(5.2 * len(keys), 4.0), layout="constrained")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    names = list(dict.fromkeys(r["optimizer"] for r in runs))
    for ax, key in zip(axes, keys):
        for name in names:
            curves = np.array([r["history"][key] for r in runs if r["optimizer"] == name])
            epochs = np.arange(1, curves.shape[1] + 1)
            (line,) = ax.plot(epochs, curves.mean(axis=0), marker="o", markersize=3,
                              label=name)
            if len(curves) > 1:
                ax.fill_between(epochs, curves.min(axis=0), curves.max(axis=0),
                                color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.set_title("training loss" if key == "loss" else "validation loss")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0].legend()
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.savefig(path, dpi=110)
