"""The validation protocol and the ranking table of notebook 02.

* :func:`validation_split`: from the **training rows only**, each warm user's last training row
  becomes a validation row, and every training row on that (user, product) pair leaves the
  validation-training set (as the test split does), so choices never see the test rows.
* Each model's free settings (the number of epochs, from checkpoints of one run; for the
  side-information model also the weight decay) are chosen by validation HR@10 on the warm
  validation users; the model is then trained again on all training rows with that choice and
  scored **once** on the test split.
* Presets (:data:`PRESETS`) are the settings the protocol chose on the October sample; ``recsys train
  --preset NAME`` trains them on any prepared directory without choosing again.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from .constants import ITEM, USER

#: The models of the ranking table and their settings. ``seed`` is the workshop's model, as the seed
#: trains it; ``implicit`` and ``side`` are what the validation split of the October sample chose.
PRESETS = {
    "seed": {"kind": "mf", "objective": "event_score"},
    "implicit": {"kind": "mf", "objective": "implicit", "epochs": 300, "num_embeddings": 32, "batch_size": 64,
                 "lr": 0.1, "momentum": 0.0, "wd": 0.005, "dropout": 0.0, "init_magnitude": 10.0, "embedding_grad": "sum"},
    "side": {"kind": "side", "epochs": 40, "num_embeddings": 32, "wd": 1e-4, "negatives": 8, "lr": 0.01},
}
PRESETS["best"] = PRESETS["side"]


@dataclasses.dataclass
class ValidationSplit:
    train: pd.DataFrame  # training rows without the validation pairs
    test: pd.DataFrame  # one row per warm user: its last training row


def validation_split(prepared) -> ValidationSplit:
    train = prepared.train
    users = train[USER].to_numpy()
    last = ~pd.Series(users).duplicated(keep="last").to_numpy()  # train is in time order
    val = train.loc[last, [USER, ITEM]].sort_values(USER, kind="stable").reset_index(drop=True)
    val_item = np.full(prepared.n_users, -1, np.int64)
    val_item[val[USER].to_numpy()] = val[ITEM].to_numpy()
    keep = val_item[users] != train[ITEM].to_numpy()
    return ValidationSplit(train=train.loc[keep].reset_index(drop=True), test=val)


def validation_scores(prepared, split: ValidationSplit, net, **kwargs) -> dict:
    from .metrics import evaluate_model

    return evaluate_model(net, prepared, test=split.test, train=split.train, **kwargs)


def choose_epochs(prepared, split: ValidationSplit, fit_checkpoints, every: int) -> dict:
    """Run ``fit_checkpoints(on_epoch)`` once on the validation-training rows and score the warm
    validation users every ``every`` epochs; returns ``{"epochs", "validation": {epoch: hr}, "hr_at_10"}``."""
    curve = {}

    def on_epoch(epoch, net):
        if epoch % every == 0:
            curve[epoch] = validation_scores(prepared, split, net)["warm"]["hr_at_10"]

    fit_checkpoints(on_epoch)
    best = max(curve, key=lambda e: (curve[e], -e))  # the highest score; the fewer epochs on a tie
    return {"epochs": int(best), "hr_at_10": curve[best], "validation": {str(e): v for e, v in curve.items()}}


KIT_MODELS = ("seed", "implicit", "side")
LABELS = {"seed": "seed model (event_score)", "implicit": "MFBlock, BPR (implicit)", "side": "SideMF (history + attributes)",
          "popularity": "popularity", "heuristic": "heuristic: recent categories and brands"}


def preset_settings(name: str, **overrides) -> dict:
    """The preset's training settings (without its ``kind``), with ``overrides``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: use one of {', '.join(sorted(PRESETS))}")
    return {**{k: v for k, v in PRESETS[name].items() if k != "kind"}, **overrides}


def _train(prepared, name: str, train=None, progress: bool = False, on_epoch=None, log=None, **overrides):
    """``(net, train rows per second, extra metrics)`` of the preset ``name`` trained on ``train``."""
    from .training import fit, fit_side

    settings = preset_settings(name, **overrides)
    if PRESETS[name]["kind"] == "side":
        net, _, rate = fit_side(prepared, train=train, progress=progress, on_epoch=on_epoch, **settings)
        return net, rate, {}
    result = fit(prepared, train=train, progress=progress, on_epoch=on_epoch, log=log or (lambda _: None), **settings)
    return result.net, result.train_rows_per_second, {"train_mse": result.last.get("train_mse"),
                                                      "test_mse": result.last.get("test_mse")}


def train_preset(prepared, name: str, train=None, progress: bool = False, on_epoch=None, **overrides):
    """Train the preset ``name`` (with ``overrides``) on ``train`` (default: all training rows); returns the net."""
    return _train(prepared, name, train=train, progress=progress, on_epoch=on_epoch, **overrides)[0]


#: What the protocol may choose per model: epochs from checkpoints (every N, up to max), and a grid.
SEARCH = {
    "implicit": {"every": 100, "max_epochs": 300, "grid": [{}]},
    "side": {"every": 10, "max_epochs": 60, "grid": [{"wd": 1e-4}, {"wd": 1e-3}]},
}


def ranking_table(prepared, choose: bool = True, models=KIT_MODELS, progress: bool = False, max_users=None):
    """The validation protocol over the kit's models and the two baselines.

    Returns ``(table, nets, choices)``: ``table`` (DataFrame by model) has the warm validation users'
    HR@10 (``val_hr_at_10``) and the test split's HR@10 / NDCG@10 for all test users and for the warm
    ones, with standard errors; ``nets`` the kit's models trained on all training rows with the chosen
    settings; ``choices`` what was chosen and its validation curve. ``choose=False`` uses the presets
    as they are (``recsys train --preset``)."""
    from .metrics import MAX_EVAL_USERS, evaluate_heuristic, evaluate_model, evaluate_popularity

    max_users = MAX_EVAL_USERS if max_users is None else max_users
    split = validation_split(prepared)
    rows, nets, choices = {}, {}, {}

    def row(val, test):
        return {"val_hr_at_10": val["warm"]["hr_at_10"], "hr_at_10": test["hr_at_10"], "hr_at_10_se": test["hr_at_10_se"],
                "ndcg_at_10": test["ndcg_at_10"], "warm_hr_at_10": test["warm"]["hr_at_10"],
                "warm_ndcg_at_10": test["warm"]["ndcg_at_10"], "test_users": test["users"], "sampled": test["sampled"]}

    for name in models:
        search = SEARCH.get(name) if choose else None
        if search is None:
            chosen = {}
            val = validation_scores(prepared, split, train_preset(prepared, name, train=split.train), max_users=max_users)
            val_curve = None
        else:
            best = None
            for extra in search["grid"]:
                result = choose_epochs(prepared, split, lambda cb: train_preset(
                    prepared, name, train=split.train, on_epoch=cb, epochs=search["max_epochs"], **extra), search["every"])
                if best is None or result["hr_at_10"] > best[1]["hr_at_10"]:
                    best = (extra, result)
            chosen = {**best[0], "epochs": best[1]["epochs"]}
            val = {"warm": {"hr_at_10": best[1]["hr_at_10"]}}
            val_curve = best[1]["validation"]
        net = train_preset(prepared, name, progress=progress, **chosen)
        nets[name] = net
        rows[name] = row(val, evaluate_model(net, prepared, max_users=max_users, progress=progress))
        choices[name] = {"settings": preset_settings(name, **chosen),
                         "validation_hr_at_10": val["warm"]["hr_at_10"], "validation_curve": val_curve}
    for name, fn in (("popularity", evaluate_popularity), ("heuristic", evaluate_heuristic)):
        val = fn(prepared, test=split.test, train=split.train, max_users=max_users)
        rows[name] = row(val, fn(prepared, max_users=max_users, progress=progress))
    table = pd.DataFrame(rows).T
    table.index.name = "model"
    return table, nets, choices


def best_kit_model(table) -> str:
    """The kit model with the highest validation HR@10 (never chosen by its test score)."""
    kit = [m for m in KIT_MODELS if m in table.index]
    return max(kit, key=lambda m: table.loc[m, "val_hr_at_10"])


def train_and_save_preset(prepared, model_dir, name: str, progress: bool = True, log=print, **overrides) -> dict:
    """``recsys train --preset NAME``: train the preset on all training rows, rank the test users
    (honest ties, sampled above ``MAX_EVAL_USERS``), save the model directory; returns the metrics."""
    import time

    from .artifacts import save_model
    from .metrics import evaluate_model

    settings = preset_settings(name, **overrides)
    t0 = time.perf_counter()
    net, rate, extra = _train(prepared, name, progress=progress, log=log, **overrides)
    seconds = time.perf_counter() - t0
    ranking = evaluate_model(net, prepared, progress=progress)
    metrics = {"preset": name, **settings, **extra, "hr_at_10": ranking["hr_at_10"], "ndcg_at_10": ranking["ndcg_at_10"],
               "hr_at_10_se": ranking["hr_at_10_se"], "warm_hr_at_10": ranking["warm"]["hr_at_10"],
               "evaluated_users": ranking["users"], "evaluation_sampled": ranking["sampled"],
               "train_rows_per_second": rate, "train_seconds": seconds}
    save_model(model_dir, net, prepared, {"preset": name, **settings}, metrics)
    return metrics
