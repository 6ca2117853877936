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


def plot_runs(runs, path, title="", styles=None):
    """Write the loss curves of ``runs`` (as returned by
    :func:`fastopt.train.compare`) to ``path`` as a PNG.

    One panel for the training loss and, if the runs have it, one for the
    validation loss.  Each optimizer is drawn as its mean over seeds, with a
    shaded band from the minimum to the maximum over seeds when there are
    several.

    Runs that carry an ``"implementation"`` (those of
    :func:`fastopt.train.keras_compare.compare`) are drawn per optimizer and
    implementation: one colour per optimizer, one line style per
    implementation, ``styles[implementation]`` (matplotlib line options; by
    default solid, then dashed, dotted, dash-dotted), and one legend that names
    the optimizers by colour and the implementations by style.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    keys = [k for k in ("loss", "val_loss") if k in runs[0]["history"]]
    fig = Figure(figsize=(5.2 * len(keys), 4.0), layout="constrained")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    names = list(dict.fromkeys(r["optimizer"] for r in runs))
    implementations = list(dict.fromkeys(r.get("implementation") for r in runs))
    linestyles = ("-", "--", ":", "-.")
    styles = {impl: {"linestyle": linestyles[i % len(linestyles)], **(styles or {}).get(impl, {})}
              for i, impl in enumerate(implementations)}
    for ax, key in zip(axes, keys):
        for i, name in enumerate(names):
            for impl in implementations:
                curves = np.array([r["history"][key] for r in runs
                                   if r["optimizer"] == name and r.get("implementation") == impl])
                if not len(curves):
                    continue
                epochs = np.arange(1, curves.shape[1] + 1)
                (line,) = ax.plot(epochs, curves.mean(axis=0), marker="o", markersize=3,
                                  label=name, color=f"C{i}", **styles[impl])
                if len(curves) > 1:
                    ax.fill_between(epochs, curves.min(axis=0), curves.max(axis=0),
                                    color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.set_title("training loss" if key == "loss" else "validation loss")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    if len(implementations) == 1:
        axes[0].legend()
    else:  # colours name the optimizers, line styles the implementations
        handles = [Line2D([], [], color=f"C{i}", label=name) for i, name in enumerate(names)]
        handles += [Line2D([], [], color="0.3", label=impl, **styles[impl])
                    for impl in implementations]
        axes[0].legend(handles=handles)
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.savefig(path, dpi=110)
