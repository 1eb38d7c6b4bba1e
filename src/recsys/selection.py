"""The validation protocol and the ranking table of notebook 02, at any size of data.

* :func:`validation_split`: from the **training rows only**, each warm user's last training row
  becomes a validation row, and every training row on that (user, product) pair leaves the
  validation-training set (as the test split does), so choices never see the test rows.
* Choices are made on a **bounded validation sample** (:func:`validation_sample`): the users of at most
  :data:`VALIDATION_ROWS` training rows (every user below that, so the October and cosmetics samples
  are used whole). Each model's free settings (the number of epochs, from checkpoints of one run, up
  to a bounded :data:`SEARCH` maximum; for the side-information model also the weight decay) are
  chosen by validation HR@10 of the warm validation users. At size the epochs are searched only where
  they can matter (:func:`search_at_size`): once ``max_epochs x REFERENCE_EXAMPLES`` is at most the
  data's training examples, every candidate trains one epoch on all rows, so each grid setting is
  trained once with the preset's epochs. Each search shows a progress bar (``choose NAME``, in epochs).
* Each model is then trained again on **all** training rows with that choice, the epochs scaled to the
  data by :mod:`recsys.presets`' rule (the same number of examples processed as the choice, at least
  one epoch), and scored **once** on the test split.
* Presets (:data:`PRESETS`, in :mod:`recsys.presets`) are the settings the protocol chose on the
  October sample; ``recsys train --preset NAME`` and the SageMaker hyperparameter ``preset`` train them
  on any prepared data without choosing again.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from .constants import DEFAULT_SEED, ITEM, USER
from .memory import release
from .metrics import MAX_EVAL_USERS
from .pairs import count_distinct_pairs
from .presets import (DESCRIPTIONS, PRESETS, REFERENCE_EXAMPLES, kind, preset_settings, scaled_epochs,  # noqa: F401
                      user_settings)
from .progress import progress_bar

#: The validation sample's bound, in training rows (the presets' epochs rule uses the same number).
VALIDATION_ROWS = REFERENCE_EXAMPLES


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


def subsample_users(prepared, max_rows: int, seed: int = 0):
    """``prepared`` restricted to a seeded random set of users whose training rows add up to at most
    ``max_rows`` (``prepared`` itself when it has no more rows than that). Users are re-indexed densely
    in their original order; the products (and their ids) are kept whole, so item indices do not change."""
    from .prepare import Prepared

    train = prepared.train
    if len(train) <= max_rows:
        return prepared
    counts = np.bincount(train[USER].to_numpy(), minlength=prepared.n_users)
    order = np.random.default_rng([seed, 11]).permutation(prepared.n_users)
    chosen = np.sort(order[np.cumsum(counts[order]) <= max_rows])
    new_id = np.full(prepared.n_users, -1, np.int64)
    new_id[chosen] = np.arange(len(chosen))

    def restrict(frame):
        rows = frame.loc[new_id[frame[USER].to_numpy()] >= 0].reset_index(drop=True)
        return rows.assign(**{USER: new_id[rows[USER].to_numpy()].astype(frame[USER].dtype)})

    users = prepared.users.iloc[chosen].reset_index(drop=True)
    users.index.name = USER
    summary = {**prepared.summary, "subsample_of_users": int(prepared.n_users), "users_kept": int(len(chosen))}
    return Prepared(train=restrict(train), test=restrict(prepared.test), users=users, products=prepared.products,
                    quantiles=prepared.quantiles, summary=summary)


def validation_sample(prepared, max_rows: int = VALIDATION_ROWS, seed: int = 0):
    """``(sample, split)``: the bounded sample the protocol chooses on, and its validation split."""
    sample = subsample_users(prepared, max_rows, seed)
    return sample, validation_split(sample)


def validation_scores(prepared, split: ValidationSplit, net, **kwargs) -> dict:
    from .metrics import evaluate_model

    return evaluate_model(net, prepared, test=split.test, train=split.train, **kwargs)


def choose_epochs(prepared, split: ValidationSplit, fit_checkpoints, every: int, max_users=MAX_EVAL_USERS) -> dict:
    """Run ``fit_checkpoints(on_epoch)`` once on the validation-training rows and score the warm
    validation users every ``every`` epochs (``max_users``: the seeded sample of
    :func:`recsys.metrics.evaluate_scores`, the same users for every model); returns ``{"epochs",
    "validation": {epoch: hr}, "hr_at_10", "hr_at_10_se"}`` (the chosen epoch's)."""
    curve, se = {}, {}

    def on_epoch(epoch, net):
        if epoch % every == 0:
            warm = validation_scores(prepared, split, net, max_users=max_users)["warm"]
            curve[epoch], se[epoch] = warm["hr_at_10"], warm["hr_at_10_se"]

    fit_checkpoints(on_epoch)
    best = max(curve, key=lambda e: (curve[e], -e))  # the highest score; the fewer epochs on a tie
    return {"epochs": int(best), "hr_at_10": curve[best], "hr_at_10_se": se[best],
            "validation": {str(e): v for e, v in curve.items()}}


KIT_MODELS = ("seed", "implicit", "side", "sequence")
LABELS = {"seed": "seed model (event_score)", "implicit": "MFBlock, BPR (implicit)", "side": "SideMF (history + attributes)",
          "sequence": "SequenceMF (last events, transitions)", "popularity": "popularity",
          "heuristic": "heuristic: recent categories and brands"}
#: Where notebook 02 saves each kit model (and the best one by validation, as ``model_best``).
MODEL_DIRS = {"seed": "model", "implicit": "model_implicit", "side": "model_side", "sequence": "model_sequence"}
BEST_DIR = "model_best"


def mse_history(history, keys=("epoch", "train_mse", "test_mse")) -> list:
    """The per-epoch MSE records of a :class:`~recsys.training.FitResult`'s history, as metrics keep them."""
    return [{k: h[k] for k in keys} for h in history]


def _train(prepared, name: str, train=None, progress: bool = False, on_epoch=None, log=None, cluster=None,
           checkpoint_dir=None, **overrides):
    """``(net, info)`` of the preset ``name`` trained on ``train``: ``info`` holds the epochs and batch size
    used, the training rate and (for the MFBlock kinds) the last epoch's MSEs. ``cluster`` and
    ``checkpoint_dir`` reach the training function (a multi-instance job; checkpoints every epoch)."""
    from .training import fit, fit_side

    settings = preset_settings(name, **overrides)
    common = {"cluster": cluster, "checkpoint_dir": checkpoint_dir}
    if kind(name) == "sequence":
        from .sequence import fit_sequence

        net, cfg, rate = fit_sequence(prepared, train=train, progress=progress, on_epoch=on_epoch, log=log, **common,
                                      **settings)
        return net, {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "train_rows_per_second": rate}
    if kind(name) == "side":
        net, cfg, rate = fit_side(prepared, train=train, progress=progress, on_epoch=on_epoch, log=log, **common,
                                  **settings)
        return net, {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "train_rows_per_second": rate}
    result = fit(prepared, train=train, progress=progress, on_epoch=on_epoch, log=log or (lambda _: None), **common,
                 **settings)
    return result.net, {"epochs": result.config.epochs, "batch_size": result.config.batch_size,
                        "train_rows_per_second": result.train_rows_per_second,
                        "train_mse": result.last.get("train_mse"), "test_mse": result.last.get("test_mse"),
                        "history": mse_history(result.history)}


def train_preset(prepared, name: str, train=None, progress: bool = False, on_epoch=None, **overrides):
    """Train the preset ``name`` (with ``overrides``) on ``train`` (default: all training rows); returns the net."""
    return _train(prepared, name, train=train, progress=progress, on_epoch=on_epoch, **overrides)[0]


#: What the protocol may choose per model on the validation sample: epochs from checkpoints (every N, up
#: to max: a bound on the search's cost, max x VALIDATION_ROWS examples), and a grid of other settings.
SEARCH = {
    "implicit": {"every": 50, "max_epochs": 400, "grid": [{}]},
    "side": {"every": 10, "max_epochs": 60, "grid": [{"wd": 1e-4}, {"wd": 1e-3}]},
    # the loss: sampled softmax against BPR on the same negatives
    "sequence": {"every": 2, "max_epochs": 20, "grid": [{"loss": "softmax"}, {"loss": "bpr"}]},
}


def example_unit(name: str) -> str:
    """What one epoch of preset ``name`` trains on: ``"pairs"``, the distinct (user, product) pairs (the BPR
    models; the sequence model's targets, each pair's last row), or ``"rows"``, every training row (the
    seed's event score)."""
    if kind(name) == "mf" and PRESETS[name].get("objective", "event_score") != "implicit":
        return "rows"
    return "pairs"


def examples(prepared, unit: str) -> int:
    """How many training examples of that :func:`example_unit` ``prepared`` has."""
    train = prepared.train
    if unit == "rows":
        return len(train)
    return count_distinct_pairs(train[USER].to_numpy(), train[ITEM].to_numpy(), prepared.n_items)


def search_at_size(name: str, search: dict, n_examples: int) -> dict:
    """The epoch search's rule at size: each candidate (``every``, ``2 x every``, ... ``max_epochs`` on the
    validation sample) trains ``scaled_epochs(candidate, n_examples)`` epochs on all rows. Once
    ``max_epochs x REFERENCE_EXAMPLES <= n_examples`` every candidate gives one epoch there, so the epochs
    are not searched: each grid setting is trained once with the preset's epochs and scored once (its
    other settings, such as the weight decay, are still compared). Otherwise ``search`` as it is."""
    if scaled_epochs(search["max_epochs"], n_examples) > 1:
        return search
    epochs = int(PRESETS[name]["epochs"])
    return {**search, "every": epochs, "max_epochs": epochs}


def _row(val: dict, test: dict) -> dict:
    return {"val_hr_at_10": val["warm"]["hr_at_10"], "val_hr_at_10_se": val["warm"]["hr_at_10_se"],
            "hr_at_10": test["hr_at_10"], "hr_at_10_se": test["hr_at_10_se"],
            "ndcg_at_10": test["ndcg_at_10"], "warm_hr_at_10": test["warm"]["hr_at_10"],
            "warm_ndcg_at_10": test["warm"]["ndcg_at_10"], "cold_hr_at_10": test["cold"]["hr_at_10"],
            "test_users": test["users"], "sampled": test["sampled"]}


def ceiling(prepared, k: int = 10) -> dict:
    """What the protocol leaves reachable on the test split: the share of test items already among the
    user's training items (excluded from the candidates, so never a hit; none, by the split's
    construction), the share of test events that re-visit a product whose earlier rows the split left out
    of training (``earlier_events``), the share of test items without any training row (only side
    information can rank them), and the upper bound on HR@k for a model that ranks only products with a
    training row: one minus the first and third shares."""
    test, train = prepared.test, prepared.train
    pairs = set(zip(train[USER].to_numpy().tolist(), train[ITEM].to_numpy().tolist())) if len(train) < 5_000_000 \
        else None
    n = max(len(test), 1)
    if pairs is None:  # large data: the split guarantees it (a test pair never appears in train)
        in_train = 0.0
    else:
        in_train = sum((u, i) in pairs for u, i in zip(test[USER].tolist(), test[ITEM].tolist())) / n
    seen = np.bincount(train[ITEM].to_numpy(), minlength=prepared.n_items) > 0
    no_row = float((~seen[test[ITEM].to_numpy()]).sum()) / n
    revisits = float((test["earlier_events"].to_numpy() > 0).sum()) / n if "earlier_events" in test else float("nan")
    return {"test_items_in_training_items": float(in_train), "test_revisits": revisits,
            "test_items_without_training_row": no_row, f"hr_at_{k}_ceiling": 1.0 - float(in_train) - no_row}


def ranking_table(prepared, choose: bool = True, models=KIT_MODELS, progress: bool = False, max_users=MAX_EVAL_USERS,
                  ctx: str = "auto", seed: int = DEFAULT_SEED, trained: dict | None = None, on_model=None,
                  validation_rows: int = VALIDATION_ROWS):
    """The validation protocol over the kit's models and the two baselines.

    Returns ``(table, nets, choices)``: ``table`` (DataFrame by model) has the warm validation users'
    HR@10 (``val_hr_at_10``, standard error ``val_hr_at_10_se``) and the test split's HR@10 / NDCG@10 for
    all test users and for the warm ones, with standard errors (:data:`SHOWN`: the columns people read);
    ``nets`` the kit's models trained on all training rows with the chosen settings; ``choices`` what was
    chosen, its validation curve, the epochs and batch size used on all rows.

    * ``choose=False`` uses the presets as they are (``recsys train --preset``).
    * ``max_users``: test users ranked per model, as in :func:`recsys.metrics.evaluate_scores`: a seeded
      sample of that many when there are more (default :data:`~recsys.metrics.MAX_EVAL_USERS`); ``None``
      ranks every test user.
    * ``ctx`` and ``seed`` reach every model trained here.
    * ``trained``: ``{name: net}`` for kit models already trained on all training rows with their preset
      (notebook 02's seed model), scored as they are instead of trained again.
    * ``on_model(name, net, record)``: called as soon as a kit model is trained and scored (``record``:
      its table row, settings and training figures); then the net is not kept (``nets`` is empty), so
      that at most one full-size model is in memory at a time.
    """
    from .metrics import evaluate_heuristic, evaluate_model, evaluate_popularity

    if not 0 < validation_rows <= REFERENCE_EXAMPLES:
        raise ValueError(f"validation_rows must be between 1 and {REFERENCE_EXAMPLES:,} (got {validation_rows:,}): the "
                         "epochs rule of recsys.presets scales choices made on at most that many training examples")
    trained = dict(trained or {})
    release()  # what the caller's earlier steps left in reference cycles (the seed's optimizer state)
    sample, split = validation_sample(prepared, validation_rows, seed)
    common = {"ctx": ctx, "seed": seed}
    rows, nets, choices, n_examples = {}, {}, {}, {}
    for name in models:
        search = SEARCH.get(name) if choose else None
        if search is None:
            chosen = {}
            val_net = train_preset(sample, name, train=split.train, **common)
            val = validation_scores(sample, split, val_net, max_users=max_users)
            del val_net
            val_curve, grid = None, None
        else:
            best, grid = None, []
            unit = example_unit(name)
            if unit not in n_examples:  # counted once per unit
                n_examples[unit] = examples(prepared, unit)
            search = search_at_size(name, search, n_examples[unit])
            with progress_bar(total=len(search["grid"]) * search["max_epochs"], unit="epoch", desc=f"choose {name}",
                              enabled=progress) as bar:
                for extra in search["grid"]:
                    def fit_checkpoints(on_epoch, extra=extra):
                        def each_epoch(epoch, net):
                            bar.update(1)
                            on_epoch(epoch, net)
                        return train_preset(sample, name, train=split.train, on_epoch=each_epoch,
                                            epochs=search["max_epochs"], **extra, **common)

                    result = choose_epochs(sample, split, fit_checkpoints, search["every"], max_users)
                    grid.append({"settings": extra, "epochs": result["epochs"],
                                 "validation_hr_at_10": result["hr_at_10"]})
                    if best is None or result["hr_at_10"] > best[1]["hr_at_10"]:
                        best = (extra, result)
            chosen = {**best[0], "epochs": best[1]["epochs"]}
            val = {"warm": {k: best[1][k] for k in ("hr_at_10", "hr_at_10_se")}}
            val_curve = best[1]["validation"]
        if name in trained:
            net, info = trained.pop(name), {}
        else:
            net, info = _train(prepared, name, progress=progress, **chosen, **common)
        rows[name] = _row(val, evaluate_model(net, prepared, max_users=max_users, progress=progress))
        choices[name] = {"settings": preset_settings(name, **chosen), "validation_hr_at_10": val["warm"]["hr_at_10"],
                         "validation_curve": val_curve, "grid": grid, "validation_sample_users": int(sample.n_users),
                         **{k: info[k] for k in ("epochs", "batch_size") if k in info}}
        if on_model is not None:
            on_model(name, net, {**rows[name], **choices[name], **info})
        else:
            nets[name] = net
        del net
        release()  # without it each model stayed resident while the next one trained (recsys.memory)
    for name, fn in (("popularity", evaluate_popularity), ("heuristic", evaluate_heuristic)):
        val = fn(sample, test=split.test, train=split.train, max_users=max_users)
        rows[name] = _row(val, fn(prepared, max_users=max_users, progress=progress))
    table = pd.DataFrame(rows).T
    table.index.name = "model"
    return table, nets, choices


def best_kit_model(table) -> str:
    """The kit model with the highest validation HR@10 (never chosen by its test score)."""
    kit = [m for m in KIT_MODELS if m in table.index]
    return max(kit, key=lambda m: table.loc[m, "val_hr_at_10"])


FIGURES = ("val_hr_at_10", "val_hr_at_10_se", "hr_at_10", "hr_at_10_se", "ndcg_at_10", "warm_hr_at_10",
           "warm_ndcg_at_10", "cold_hr_at_10")
#: The ranking table's columns as notebook 02 and ``benchmarks/ranking_table.py`` show them.
SHOWN = ["val_hr_at_10", "val_hr_at_10_se", "hr_at_10", "hr_at_10_se", "ndcg_at_10", "warm_hr_at_10", "cold_hr_at_10"]


def ranking_metrics(table, name: str) -> dict:
    """One model's row of the ranking table as plain floats (what its metrics entry and model directory hold)."""
    r = table.loc[name]
    return {k: float(r[k]) for k in FIGURES}


def save_best(out_dir, table) -> tuple:
    """Copy the best kit model's directory (by validation) to ``out_dir/model_best``; ``(name, path)``."""
    out = Path(out_dir)
    best = best_kit_model(table)
    target = out / BEST_DIR
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(out / MODEL_DIRS[best], target)
    return best, target


def train_and_save_preset(prepared, model_dir, name: str, progress: bool = True, log=None, cluster=None,
                          checkpoint_dir=None, **overrides) -> dict:
    """``recsys train --preset NAME`` and the SageMaker job: train the preset on all training rows, rank
    the test users (honest ties, sampled above ``MAX_EVAL_USERS``), save the model directory; returns the
    metrics (the settings asked for, and the epochs and batch size used). On a host of a multi-instance
    job other than the first, nothing is evaluated or saved (returns None)."""
    import time

    from .artifacts import save_model
    from .metrics import evaluate_model

    settings = preset_settings(name, **overrides)
    t0 = time.perf_counter()
    net, info = _train(prepared, name, progress=progress, log=log, cluster=cluster, checkpoint_dir=checkpoint_dir,
                       **overrides)
    seconds = time.perf_counter() - t0
    if cluster is not None and not cluster.is_first:
        return None
    ranking = evaluate_model(net, prepared, progress=progress)
    metrics = {"preset": name, **settings, **info, "hr_at_10": ranking["hr_at_10"], "ndcg_at_10": ranking["ndcg_at_10"],
               "hr_at_10_se": ranking["hr_at_10_se"], "warm_hr_at_10": ranking["warm"]["hr_at_10"],
               "evaluated_users": ranking["users"], "evaluation_sampled": ranking["sampled"], "train_seconds": seconds}
    hp = {"preset": name, **settings, **{k: v for k, v in info.items() if k != "history"}}
    save_model(model_dir, net, prepared, hp, metrics)
    return metrics


# ---- notebook 02's bookkeeping: which network and which figures go where --------------------------

def mean_predictor(prepared) -> dict:
    """Always predicting the training rows' mean event score: the MSE baseline of the seed's model."""
    mean = float(prepared.train["event_type_digit"].mean())
    return {"train_mean": mean, "test_mse": float(((prepared.test["event_type_digit"] - mean) ** 2).mean())}


def _mse_figures(run) -> dict:
    return {"train_mse": run.last["train_mse"], "test_mse": run.last["test_mse"],
            "history": mse_history(run.history, ("epoch", "loss", "train_mse", "test_mse"))}


def rank_and_save(prepared, out_dir, seed_run, progress: bool = False, ctx: str = "auto", seed: int = DEFAULT_SEED,
                  max_users=MAX_EVAL_USERS, validation_rows: int = VALIDATION_ROWS):
    """Notebook 02's ranking table, each kit model saved as soon as it is trained and scored.

    ``seed_run`` (:class:`~recsys.training.FitResult` of the seed's model on all training rows) is the
    table's ``seed`` model: the same network gets the MSEs and the ranking figures, in ``out_dir/model``.
    Its network is handed over (``seed_run.net`` is None afterwards), so that at most one full-size
    model is in memory at a time. Each other kit model goes to its :data:`MODEL_DIRS` entry with its own
    figures, settings, and the epochs and batch size it was trained with; the best by validation is
    copied to ``out_dir/model_best``. Returns ``(table, choices, best, records)``: ``records`` holds
    each kit model's metrics entry (the figures of exactly that model)."""
    import dataclasses as _dc

    from .artifacts import save_model

    out = Path(out_dir)
    records = {}
    hyper = {f.name: getattr(seed_run.config, f.name) for f in _dc.fields(seed_run.config)}

    def save(name, net, record):
        figures = {k: record[k] for k in FIGURES}
        if name == "seed":
            entry = {**_mse_figures(seed_run), **figures}
            hp = {"preset": "seed", **hyper}
        else:
            entry = {**figures, "settings": record["settings"], "epochs": record["epochs"],
                     "batch_size": record["batch_size"]}
            hp = {"preset": name, **record["settings"], "epochs": record["epochs"], "batch_size": record["batch_size"]}
        records[name] = entry
        save_model(out / MODEL_DIRS[name], net, prepared, hp, entry)

    net, seed_run.net = seed_run.net, None
    table, _, choices = ranking_table(prepared, progress=progress, ctx=ctx, seed=seed, trained={"seed": net},
                                      on_model=save, max_users=max_users, validation_rows=validation_rows)
    del net
    best, _ = save_best(out, table)
    return table, choices, best, records


def train_local_metrics(prepared, seed_run, dense_run, table, choices, best: str, records: dict,
                        dense_rows: int) -> dict:
    """Notebook 02's metrics record (``outputs/metrics/02_train_local.json``): each entry describes one model."""
    return {
        "mean_predictor": mean_predictor(prepared),
        "event_score": records["seed"],
        "event_score_dense_gradients": {"train_mse": dense_run.last["train_mse"], "test_mse": dense_run.last["test_mse"],
                                        "train_rows": int(dense_rows)},
        **{name: records[name] for name in records if name != "seed"},
        "popularity": ranking_metrics(table, "popularity"),
        "heuristic": ranking_metrics(table, "heuristic"),
        "best": {"name": best, **{k: float(table.loc[best, k]) for k in ("hr_at_10", "ndcg_at_10", "val_hr_at_10")}},
        "selection": choices,
        "test_users": int(table.loc["popularity", "test_users"]),
        "ceiling": ceiling(prepared),
    }
