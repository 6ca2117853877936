"""A thin NumPy trainer for fastopt's optimizers.

Models with analytic backward passes whose parameters live in one contiguous
buffer (:class:`LogisticRegression`, :class:`MLP`), Keras's losses and figures,
a ``fit`` loop with callbacks (early stopping, atomic checkpoints with
bit-identical resume, a progress bar), data helpers, and the optimizer
comparison behind ``fastopt compare``::

    from fastopt import Adam, train
    X, y, _ = train.load_builtin()
    model = train.LogisticRegression(4, seed=0)
    history = train.fit(model, X, y, Adam(model.params, learning_rate=0.01),
                        epochs=5, batch_size=16, seed=0)
    history.history["loss"]
"""
from . import losses
from .callbacks import Callback, Checkpoint, EarlyStopping, ProgressBar
from .checkpoint import load_checkpoint, save_checkpoint
from .comparison import (
    DEFAULT_OPTIMIZERS,
    OPTIMIZERS,
    compare,
    make_optimizer,
    summarize,
)
from .data import DataError, Standardizer, load_builtin, load_csv, train_test_split
from .fit import History, epoch_order, evaluate, fit
from .models import MLP, Dense, LogisticRegression

__all__ = [
    "MLP", "LogisticRegression", "Dense", "losses",
    "fit", "evaluate", "epoch_order", "History",
    "Callback", "EarlyStopping", "Checkpoint", "ProgressBar",
    "save_checkpoint", "load_checkpoint",
    "load_builtin", "load_csv", "train_test_split", "Standardizer", "DataError",
    "compare", "summarize", "make_optimizer", "OPTIMIZERS", "DEFAULT_OPTIMIZERS",
]
