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
        ax.set_title(f"{kept:,} of {len(counts):,} {what}s have >= {cut} events\n(each count before the other filter)",
                     fontsize=10)
        ax.set_xlabel(f"events per {what} (log)")
        ax.set_ylabel(f"{what}s (log)")
        ax.legend()
    fig.tight_layout()
    return fig


def funnel(before: dict, after: dict):
    """Users / products / rows before and after the min-count filter, each bar labelled with its count."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    labels = list(before)
    x = np.arange(len(labels))
    b1 = ax.bar(x - 0.2, [before[k] for k in labels], 0.4, label="before filter", color="#8C8C8C")
    b2 = ax.bar(x + 0.2, [after[k] for k in labels], 0.4, label="after filter", color="#4C72B0")
    ax.bar_label(b1, labels=[f"{before[k]:,}" for k in labels], fontsize=8)
    ax.bar_label(b2, labels=[f"{after[k]:,}\n({after[k] / max(before[k], 1):.0%})" for k in labels], fontsize=8)
    ax.set_xticks(x, labels)
    ax.set_yscale("log")
    ax.set_ylabel("count (log scale)")
    ax.set_ylim(top=max(before.values()) * 8)
    ax.set_title("min-count filter: what is kept")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def training_curves(histories: dict, baseline: float | None = None):
    """Train and test MSE per epoch, one line pair per run (``{"label": history}``), on a log scale
    so that the last epochs stay readable, with each line's final value in the legend and the
    constant (mean) predictor's test MSE as a reference line."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for (label, history), color in zip(histories.items(), ("#4C72B0", "#DD8452", "#55A868", "#C44E52")):
        epochs = [h["epoch"] for h in history]
        for key, style, what in (("train_mse", "-o", "train"), ("test_mse", "--s", "test")):
            values = [h[key] for h in history]
            ax.plot(epochs, values, style, color=color, label=f"{label}: {what}, last {values[-1]:.2f}")
    if baseline is not None:
        ax.axhline(baseline, color="#333333", lw=1, ls=":", label=f"always the training mean: test {baseline:.2f}")
    ax.set_xticks(sorted({h["epoch"] for history in histories.values() for h in history}))
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE on event_type_digit (log scale)")
    ax.set_title("train vs test MSE per epoch")
    ax.legend(fontsize=7, loc="upper right")
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


def ranking_bars(table, columns=("hr_at_10", "ndcg_at_10")):
    """HR@10 and NDCG@10 per model (``table``: DataFrame indexed by model), each bar labelled."""
    import matplotlib.pyplot as plt

    import textwrap

    names = {"val_hr_at_10": "validation HR@10 (warm users)", "hr_at_10": "test HR@10", "ndcg_at_10": "test NDCG@10"}
    data = table[list(columns)].astype(float).rename(columns=names)
    data.index = [textwrap.fill(str(i), 18) for i in data.index]
    fig, ax = plt.subplots(figsize=(9, 4))
    data.plot.bar(ax=ax, color=["#4C72B0", "#DD8452", "#55A868", "#C44E52"][:len(columns)], rot=0)
    for container in ax.containers:
        ax.bar_label(container, fmt="%.3f", fontsize=7)
    ax.set_title("full-catalogue ranking (ties count against the test item)")
    ax.set_ylabel("score")
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
