"""Figures the notebooks show and save (matplotlib, Agg-safe, deterministic PNG files)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def save(fig, path: str | os.PathLike) -> Path:
    """Save without metadata that changes between runs or machines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight", metadata={"Software": None})
    return path


def count_distributions(user_counts: np.ndarray, product_counts: np.ndarray, min_user: int, min_product: int):
    """Events per user and per product: histograms on log-log axes, with the min-count cut."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, counts, cut, what in (
        (axes[0], user_counts, min_user, "user"),
        (axes[1], product_counts, min_product, "product"),
    ):
        counts = np.asarray(counts)
        top = max(2, int(counts.max()) if len(counts) else 2)
        bins = np.unique(np.logspace(0, np.log10(top + 1), 40).astype(int))
        ax.hist(counts, bins=bins, color="#4C72B0")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axvline(cut, color="#C44E52", ls="--", label=f"min {cut} events")
        kept = int((counts >= cut).sum())
        ax.set_title(f"events per {what}: {kept:,} of {len(counts):,} have >= {cut}")
        ax.set_xlabel(f"events per {what} (log)")
        ax.set_ylabel(f"{what}s (log)")
        ax.legend()
    fig.tight_layout()
    return fig


def funnel(before: dict, after: dict):
    """Users / products / rows before and after the min-count filter."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    labels = list(before)
    x = np.arange(len(labels))
    ax.bar(x - 0.2, [before[k] for k in labels], 0.4, label="before filter", color="#8C8C8C")
    ax.bar(x + 0.2, [after[k] for k in labels], 0.4, label="after filter", color="#4C72B0")
    ax.set_xticks(x, labels)
    ax.set_yscale("log")
    ax.set_title("min-count filter")
    ax.legend()
    fig.tight_layout()
    return fig


def training_curves(histories: dict):
    """Train and test MSE per epoch, one line pair per run (``{"label": history}``)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for (label, history), color in zip(histories.items(), ("#4C72B0", "#DD8452", "#55A868", "#C44E52")):
        epochs = [h["epoch"] for h in history]
        ax.plot(epochs, [h["train_mse"] for h in history], "-o", color=color, label=f"{label}: train")
        ax.plot(epochs, [h["test_mse"] for h in history], "--s", color=color, label=f"{label}: test")
    ax.set_xticks(sorted({h["epoch"] for history in histories.values() for h in history}))
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE (event_type_digit)")
    ax.set_title("train vs test MSE per epoch")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def prediction_scatter(x, y, xlabel: str, ylabel: str):
    """The seed's check: two users' predictions for every product, against each other."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.scatter(x, y, s=6, alpha=0.5, color="#4C72B0")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("predictions for every product")
    fig.tight_layout()
    return fig


def ranking_bars(table):
    """HR@10 and NDCG@10 per model (``table``: DataFrame indexed by model)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    table[["hr_at_10", "ndcg_at_10"]].plot.bar(ax=ax, color=["#4C72B0", "#DD8452"], rot=0)
    ax.set_title("full-catalogue ranking on the leave-last-out test set")
    ax.set_ylabel("score")
    fig.tight_layout()
    return fig
