"""Figures carry their numbers and readable scales (the PNGs themselves are checked in the notebook runs)."""

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402

from recsys import plots  # noqa: E402


def _texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [ax.get_title() for ax in fig.axes]


def test_funnel_bars_carry_their_counts_and_shares():
    fig = plots.funnel({"users": 4504, "rows": 17434}, {"users": 882, "rows": 5119})
    texts = _texts(fig)
    assert "4,504" in texts and "882\n(20%)" in texts and "5,119\n(29%)" in texts


def test_training_curves_are_readable_and_show_the_baseline():
    history = [{"epoch": 1, "train_mse": 20.0, "test_mse": 25.0}, {"epoch": 2, "train_mse": 0.9, "test_mse": 1.01}]
    fig = plots.training_curves({"kit": history}, baseline=0.28)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"  # epoch 1's 20 does not flatten the last epochs
    labels = ax.get_legend_handles_labels()[1]
    assert "kit: test, last 1.01" in labels and "kit: train, last 0.90" in labels
    assert any("0.28" in label for label in labels)


def test_ranking_bars_are_labelled():
    table = pd.DataFrame({"hr_at_10": [0.087, 0.122], "ndcg_at_10": [0.045, 0.06]}, index=["popularity", "bpr"])
    fig = plots.ranking_bars(table)
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert "0.087" in labels and "0.122" in labels and "0.060" in labels
