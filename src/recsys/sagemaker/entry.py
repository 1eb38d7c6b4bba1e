"""The script-mode entry point: training under the SageMaker training contract, and the
inference handlers for the hosting container (re-exported from :mod:`recsys.serving`).

Training (``python recommender.py --epochs 10 --lr 0.02 ...`` in the container):

* hyperparameters come as command-line arguments, one ``--name value`` per hyperparameter,
  values as SageMaker passes them (``str()`` of the JSON-decoded value; a JSON-quoted string is
  accepted too); unknown ones are reported and ignored;
* the training channel ``SM_CHANNEL_TRAIN`` holds one or more raw REES46 CSVs (``.csv`` or
  ``.csv.gz``, as the seed uploads them); ``SM_MODEL_DIR`` receives the model directory of
  :mod:`recsys.artifacts`; ``SM_NUM_GPUS`` > 0 trains on the GPU;
* it runs the kit's prepare and fit, writes ``metrics.json`` to ``SM_OUTPUT_DATA_DIR``, and on
  an error writes the message to ``SM_OUTPUT_DIR/failure`` (SageMaker's FailureReason) and exits 1 (2 for a
  hyperparameter argparse rejects: its message reaches ``failure`` too).

Runs on Python 3.8 (MXNet 1.9 containers): checked by a test with vermin.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from ..serving import input_fn, model_fn, output_fn, predict_fn  # noqa: F401  (the container imports these)

#: The seed's SageMaker hyperparameters (num_embeddings 64, sgd, lr 0.02, momentum 0.9, wd 0, 10 epochs).
SEED_HYPERPARAMETERS = {"num_embeddings": 64, "opt": "sgd", "lr": 0.02, "momentum": 0.9, "wd": 0.0, "epochs": 10}


def _value(kind):
    """An argparse type that also accepts JSON-encoded values (``"sgd"``, ``0.02``)."""

    def convert(text: str):
        try:
            decoded = json.loads(text)
            if kind is bool:
                return bool(decoded)
            if isinstance(decoded, (int, float, str)) and not isinstance(decoded, bool):
                return kind(decoded)
        except (ValueError, TypeError):
            pass
        if kind is bool:
            return text.strip().lower() in ("1", "true", "yes")
        return kind(text)

    convert.__name__ = kind.__name__
    return convert


class HyperparameterError(ValueError):
    """A hyperparameter the entry point cannot use (its message becomes the job's FailureReason)."""


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises instead of exiting: argparse's own ``exit(2)`` would end the script before
    ``main`` writes ``output/failure``, and SageMaker would report ``ExitCode 2 ErrorMessage ""``.
    (``exit_on_error=False`` does not exist on the containers' Python 3.8.)"""

    def error(self, message):
        raise HyperparameterError(message)


def parse_args(argv=None):
    from ..constants import DEFAULT_MIN_PRODUCT_EVENTS, DEFAULT_MIN_USER_EVENTS
    from ..training import HYPERPARAMETERS, TrainConfig

    d = TrainConfig()
    defaults = {name: getattr(d, name) for name in HYPERPARAMETERS}
    defaults.update(min_user_events=DEFAULT_MIN_USER_EVENTS, min_product_events=DEFAULT_MIN_PRODUCT_EVENTS)
    p = _ArgumentParser(description="recsys SageMaker training entry point")
    for name, default in defaults.items():  # each value's type is its default's type
        p.add_argument("--" + name, type=_value(type(default)), default=default)
    args, unknown = p.parse_known_args(argv)
    return args, unknown


def training_files(channel_dir) -> list:
    d = Path(channel_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"training channel {d} does not exist")
    files = sorted(p for p in d.rglob("*") if p.is_file() and (p.name.endswith(".csv") or p.name.endswith(".csv.gz")))
    if not files:
        raise FileNotFoundError(f"no .csv or .csv.gz files in the training channel {d}")
    return files


def training_context(env) -> str:
    """``"auto"`` when the platform gives GPUs (``SM_NUM_GPUS`` > 0): the kit's GPU guard then uses the GPU
    if it runs the MXNet wheel, else warns and trains on the CPU (see :mod:`recsys.mx`); ``"cpu"`` otherwise."""
    return "auto" if int(env.get("SM_NUM_GPUS", "0") or 0) > 0 else "cpu"


def train(argv=None, env=None) -> dict:
    """Train under the SageMaker contract; returns the metrics it wrote."""
    from ..metrics import evaluate_popularity
    from ..prepare import prepare_files
    from ..training import HYPERPARAMETERS, train_and_save

    env = os.environ if env is None else env
    args, unknown = parse_args(argv)
    if unknown:
        print(f"ignoring unknown arguments: {unknown}", flush=True)
    model_dir = env.get("SM_MODEL_DIR", "/opt/ml/model")
    channel = env.get("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train")
    gpus = int(env.get("SM_NUM_GPUS", "0") or 0)
    files = training_files(channel)
    print(f"training files: {[f.name for f in files]}; GPUs: {gpus}", flush=True)
    prepared = prepare_files(files, min_user_events=args.min_user_events,
                             min_product_events=args.min_product_events, progress=False)
    summary = {k: prepared.summary[k] for k in ("rows_read", "rows_malformed", "users_kept", "products_kept",
                                                "train_rows", "test_rows")}
    print(f"prepared: {json.dumps(summary)}", flush=True)
    mean_label = float(prepared.train["event_type_digit"].mean())
    extra = {"popularity_hr_at_10": evaluate_popularity(prepared)["hr_at_10"],
             "mean_predictor_test_mse": float(((prepared.test["event_type_digit"] - mean_label) ** 2).mean()), **summary}
    result, metrics = train_and_save(prepared, model_dir, progress=False, extra_metrics=extra,
                                     ctx=training_context(env), **{k: getattr(args, k) for k in HYPERPARAMETERS})
    for h in result.history:
        print(f"epoch {h['epoch']}: train MSE {h['train_mse']:.4f} test MSE {h['test_mse']:.4f} "
              f"({h['rows_per_second']:.0f} rows/s)", flush=True)
    metrics["history"] = [{k: h[k] for k in ("epoch", "train_mse", "test_mse")} for h in result.history]
    out = Path(env.get("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(f"metrics: {json.dumps(metrics, sort_keys=True)}", flush=True)
    return metrics


def main(argv=None) -> int:
    try:
        train(argv)
        return 0
    except Exception as e:  # noqa: BLE001 - every failure must reach SageMaker's FailureReason
        message = f"{type(e).__name__}: {e}"
        if not isinstance(e, HyperparameterError):  # a usage error needs its message, not a traceback
            traceback.print_exc()
        failure = Path(os.environ.get("SM_OUTPUT_DIR", "/opt/ml/output")) / "failure"
        try:
            failure.parent.mkdir(parents=True, exist_ok=True)
            if not failure.exists():
                failure.write_text(message[:1024])
        except OSError:
            pass
        print(f"training failed: {message}", file=sys.stderr, flush=True)
        return 2 if isinstance(e, HyperparameterError) else 1
