"""PNG plots of a run: the confusion matrix and the train/validation loss curves (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.scoring import Confusion
from training.train import LossHistory


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: render to files only
    import matplotlib.pyplot as plt

    return plt


def confusion_png(confusion: Confusion, path: Path, title: str = "") -> Path:
    """Rows: expected labels; columns: answered labels, then answers outside the label set."""
    plt = _pyplot()
    n_rows, n_cols = len(confusion.labels), len(confusion.columns)
    size = max(4.0, 0.55 * n_cols + 2.5)
    fig, ax = plt.subplots(figsize=(size, max(3.5, 0.5 * n_rows + 2.5)))
    try:
        ax.imshow(confusion.matrix, cmap="Blues", aspect="auto")
        ax.set_xticks(range(n_cols), confusion.columns, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n_rows), confusion.labels, fontsize=8)
        peak = max((max(row) for row in confusion.matrix if row), default=0)
        for i, row in enumerate(confusion.matrix):
            for j, value in enumerate(row):
                if value:
                    color = "white" if value > peak / 2 else "black"
                    ax.text(j, i, str(value), ha="center", va="center", fontsize=8, color=color)
        ax.set_xlabel("answered")
        ax.set_ylabel("expected")
        ax.set_title(f"confusion matrix {title}".strip())
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def loss_png(history: LossHistory, path: Path) -> Path:
    """Train loss per step and validation loss per epoch, against epochs."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        if history.train:
            ax.plot(
                [p.epoch for p in history.train],
                [p.loss for p in history.train],
                label="train (per step)",
                alpha=0.7,
            )
        if history.val:
            ax.plot([p.epoch for p in history.val], [p.loss for p in history.val], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel("answer-token loss (nats)")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path
