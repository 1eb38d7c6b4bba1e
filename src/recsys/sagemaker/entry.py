"""The script-mode entry point: training under the SageMaker training contract, and the
inference handlers for the hosting container (re-exported from :mod:`recsys.serving`).

Training (``python recommender.py --epochs 10 --lr 0.02 ...`` in the container):

* hyperparameters come as command-line arguments, one ``--name value`` per hyperparameter,
  values as SageMaker passes them (``str()`` of the JSON-decoded value; a JSON-quoted string is
  accepted too). ``preset`` (``seed``, ``implicit``, ``side``, ``best``: :mod:`recsys.presets`) trains a
  model of notebook 02's table with its settings (the given hyperparameters that apply to it on top;
  ``epochs`` used as given, else the preset's scaled to the data); without it, the seed's model with
  the seed's defaults. An unknown hyperparameter, one that does not apply to the preset, or a value of
  the wrong type (``epochs=10.7``) fails the job with a one-line FailureReason; the keys SageMaker
  adds itself (``sagemaker_*``, ``_``-prefixed ones such as ``_ps_port``) are skipped;
* the training channel ``SM_CHANNEL_TRAIN`` holds one or more raw REES46 CSVs (``.csv`` or
  ``.csv.gz``, as the seed uploads them); ``SM_MODEL_DIR`` receives the model directory of
  :mod:`recsys.artifacts`; ``SM_NUM_GPUS`` > 0 trains on the GPU;
* it runs the kit's prepare and training (progress lines with an ETA in the job's log), writes
  ``metrics.json`` to ``SM_OUTPUT_DATA_DIR``, and on
  an error writes the message to ``SM_OUTPUT_DIR/failure`` (SageMaker's FailureReason) and exits 1 (2 for a
  hyperparameter argparse rejects: its message reaches ``failure`` too).

Runs on Python 3.8 (MXNet 1.9 containers): checked by a test with vermin.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
from pathlib import Path

from ..serving import input_fn, model_fn, output_fn, predict_fn  # noqa: F401  (the container imports these)

#: The seed's SageMaker hyperparameters (num_embeddings 64, sgd, lr 0.02, momentum 0.9, wd 0, 10 epochs).
SEED_HYPERPARAMETERS = {"num_embeddings": 64, "opt": "sgd", "lr": 0.02, "momentum": 0.9, "wd": 0.0, "epochs": 10}


def _value(kind):
    """An argparse type that also accepts JSON-encoded values (``"sgd"``, ``0.02``); a whole number
    where one is needed (``epochs=10.7`` is refused, ``10.0`` is 10)."""

    def convert(text: str):
        try:
            decoded = json.loads(text)
        except (ValueError, TypeError):
            decoded = text
        if kind is bool:
            if isinstance(decoded, bool):
                return decoded
            if str(decoded).strip().lower() in ("1", "true", "yes"):
                return True
            if str(decoded).strip().lower() in ("0", "false", "no"):
                return False
            raise ValueError(text)
        if kind is int:
            if isinstance(decoded, bool):
                raise ValueError(text)
            if isinstance(decoded, float) and decoded.is_integer():
                return int(decoded)
            if isinstance(decoded, int):
                return decoded
            raise ValueError(text)  # 10.7, "ten": not a whole number
        if isinstance(decoded, (int, float, str)) and not isinstance(decoded, bool):
            return kind(decoded)
        return kind(text)

    convert.__name__ = "whole number" if kind is int else kind.__name__
    return convert


class HyperparameterError(ValueError):
    """A hyperparameter the entry point cannot use (its message becomes the job's FailureReason)."""


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises instead of exiting: argparse's own ``exit(2)`` would end the script before
    ``main`` writes ``output/failure``, and SageMaker would report ``ExitCode 2 ErrorMessage ""``.
    (``exit_on_error=False`` does not exist on the containers' Python 3.8.)"""

    def error(self, message):
        raise HyperparameterError(message)


def _platform_argument(arg: str) -> bool:
    """Arguments SageMaker adds itself: ``sagemaker_*`` keys and ``_``-prefixed ones such as ``_ps_port``."""
    return arg.startswith("--_") or arg.startswith("--sagemaker_")


def _without_platform_arguments(argv) -> list:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if _platform_argument(arg):
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def hyperparameter_types() -> dict:
    """Every hyperparameter the entry point takes, with its type: the preset, the data step's minimums,
    and every setting of every preset's training function."""
    from ..training import HYPERPARAMETERS, TrainConfig

    types = {"preset": str, "min_user_events": int, "min_product_events": int}
    d = TrainConfig()
    types.update({name: type(getattr(d, name)) for name in HYPERPARAMETERS})
    for config in _preset_configs().values():
        for f in dataclasses.fields(config):
            if f.name not in _INTERNAL and type(f.default) in (int, float, str, bool):  # scalars only
                types.setdefault(f.name, type(f.default))
    return types


#: Settings of the training functions that are not hyperparameters (chosen by the platform or the presets).
_INTERNAL = ("ctx", "update", "scale_epochs", "scale_batch")


def _preset_configs() -> dict:
    """The configuration class of each preset kind (what hyperparameters apply to it)."""
    from ..sequence import SequenceConfig
    from ..training import SideConfig, TrainConfig

    return {"mf": TrainConfig, "side": SideConfig, "sequence": SequenceConfig}


def parse_args(argv=None):
    """``(args, given)``: every hyperparameter (None when not given) and the names given. An unknown
    hyperparameter or a value of the wrong type raises :class:`HyperparameterError` (one line), so a
    misspelt name fails the job at once instead of training with the defaults."""
    argv = _without_platform_arguments(sys.argv[1:] if argv is None else list(argv))
    p = _ArgumentParser(description="recsys SageMaker training entry point", allow_abbrev=False)
    types = hyperparameter_types()
    for name, kind in types.items():  # each value's type is its default's type
        p.add_argument("--" + name, type=_value(kind), default=None)
    args, unknown = p.parse_known_args(argv)
    if unknown:
        names = sorted({u.split("=")[0][2:] for u in unknown if u.startswith("--")}) or unknown
        raise HyperparameterError(f"unknown hyperparameter(s): {', '.join(names)}; this entry point takes "
                                  f"{', '.join(sorted(types))}")
    given = {k for k, v in vars(args).items() if v is not None}
    return args, given


def training_settings(args, given: set) -> tuple:
    """``(preset or None, settings)`` for the training function, from the hyperparameters given: without a
    preset, the seed's ``fit`` with its defaults; with one, the preset's settings with the given ones on top
    (``epochs`` used as given). A hyperparameter that does not apply to the preset's model is refused."""
    from ..presets import check, kind, user_settings

    overrides = {k: getattr(args, k) for k in given if k not in ("preset", "min_user_events", "min_product_events")}
    if args.preset is not None:
        try:
            check(args.preset)
        except ValueError as e:
            raise HyperparameterError(str(e)) from None
    config = _preset_configs()[kind(args.preset) if args.preset is not None else "mf"]
    fields = {f.name for f in dataclasses.fields(config) if type(f.default) in (int, float, str, bool)} - set(_INTERNAL)
    foreign = sorted(set(overrides) - fields)
    if foreign:
        model = f"preset {args.preset!r}" if args.preset is not None else "the seed's model (no preset)"
        raise HyperparameterError(f"hyperparameter(s) {', '.join(foreign)} do not apply to {model} "
                                  f"({config.__name__}); it takes {', '.join(sorted(fields))}")
    if args.preset is None:
        return None, overrides
    epochs = overrides.pop("epochs", None)
    return args.preset, user_settings(args.preset, epochs=epochs, **overrides)


def job_hyperparameters(preset: str = "best", epochs=None, **seed_hyperparameters) -> dict:
    """The training job's hyperparameters: ``{"preset": name}`` (with ``epochs`` when given: used as given,
    else the preset's, scaled to the data); for ``preset="seed"`` the workshop's job, the seed's
    SageMaker hyperparameters (:data:`SEED_HYPERPARAMETERS`, 10 epochs) with ``seed_hyperparameters`` on top."""
    from ..presets import check

    check(preset)
    if preset == "seed":
        hp = {"preset": "seed", **SEED_HYPERPARAMETERS, **seed_hyperparameters}
        if epochs is not None:
            hp["epochs"] = epochs
        return hp
    if seed_hyperparameters:
        raise ValueError(f"{', '.join(sorted(seed_hyperparameters))}: the seed's hyperparameters apply to preset "
                         f"'seed' only, not {preset!r}")
    return {"preset": preset, **({"epochs": epochs} if epochs is not None else {})}


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
    from ..constants import DEFAULT_MIN_PRODUCT_EVENTS, DEFAULT_MIN_USER_EVENTS
    from ..distributed import Cluster
    from ..metrics import evaluate_popularity
    from ..prepare import prepare_files
    from ..training import log_stderr, train_and_save

    env = os.environ if env is None else env
    args, given = parse_args(argv)
    preset, settings = training_settings(args, given)  # a bad hyperparameter fails before the data is read
    if preset is not None:
        from ..selection import train_and_save_preset
    else:
        from ..training import TrainConfig

        TrainConfig(**settings).validate()
    model_dir = env.get("SM_MODEL_DIR", "/opt/ml/model")
    channel = env.get("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train")
    gpus = int(env.get("SM_NUM_GPUS", "0") or 0)
    files = training_files(channel)
    print(f"training files: {[f.name for f in files]}; GPUs: {gpus}; preset: {preset or 'none (the seed model)'}",
          flush=True)
    progress = env.get("RECSYS_PROGRESS", "lines") != "0"  # lines with an ETA in the job's log
    min_user = args.min_user_events if args.min_user_events is not None else DEFAULT_MIN_USER_EVENTS
    min_product = args.min_product_events if args.min_product_events is not None else DEFAULT_MIN_PRODUCT_EVENTS
    prepared = prepare_files(files, min_user_events=min_user, min_product_events=min_product, progress=progress)
    summary = {k: prepared.summary[k] for k in ("rows_read", "rows_malformed", "users_kept", "products_kept",
                                                "train_rows", "test_rows")}
    print(f"prepared: {json.dumps(summary)}", flush=True)
    mean_label = float(prepared.train["event_type_digit"].mean())
    extra = {"popularity_hr_at_10": evaluate_popularity(prepared)["hr_at_10"],
             "mean_predictor_test_mse": float(((prepared.test["event_type_digit"] - mean_label) ** 2).mean()), **summary}
    ctx = training_context(env)
    cluster = Cluster.from_env(env)  # several hosts with the parameter server: a dist_sync worker
    checkpoints = checkpoint_dir(env, cluster)
    print(f"hosts: {cluster.hosts} (this one: {cluster.current}, {'a parameter-server worker' if cluster.distributed else 'alone'}); "
          f"checkpoints: {checkpoints or 'none'}", flush=True)
    common = {"progress": progress, "log": log_stderr, "ctx": ctx, "cluster": cluster, "checkpoint_dir": checkpoints}
    if preset is not None:
        metrics = train_and_save_preset(prepared, model_dir, preset, **common, **settings)
        if metrics is None:
            return _not_first(cluster)
        metrics.update(extra)
    else:
        from ..selection import mse_history

        result, metrics = train_and_save(prepared, model_dir, extra_metrics=extra, **common, **settings)
        if metrics is None:
            return _not_first(cluster)
        metrics["history"] = mse_history(result.history)
    if cluster.distributed:
        metrics["hosts"] = len(cluster.hosts)
        metrics["traffic"] = cluster.traffic()
    out = Path(env.get("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=float) + "\n")
    print(f"metrics: {json.dumps(metrics, sort_keys=True, default=float)}", flush=True)
    return metrics


def checkpoint_dir(env, cluster):
    """Where to checkpoint every epoch: ``/opt/ml/checkpoints`` (under ``SAGEMAKER_BASE_DIR``) when it
    exists, which SageMaker provides with ``checkpoint_s3_uri`` (managed spot training) and syncs to S3;
    None on a multi-instance job (the optimizer state is on the parameter servers)."""
    path = Path(env.get("SAGEMAKER_BASE_DIR", "/opt/ml")) / "checkpoints"
    return str(path) if path.is_dir() and not cluster.distributed else None


def _not_first(cluster) -> dict:
    """A host of a multi-instance job other than the first: it trained its shard; the first saves the model."""
    print(f"host {cluster.current}: trained its shard ({cluster.traffic()}); {cluster.hosts[0]} saves the model",
          flush=True)
    return {"hosts": len(cluster.hosts), "host": cluster.current, "traffic": cluster.traffic()}


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
