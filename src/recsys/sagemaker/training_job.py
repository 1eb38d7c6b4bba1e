"""SageMaker offline: a training job run by AWS's own training toolkit.

``run_training_job``: lays out the job's tree under ``SAGEMAKER_BASE_DIR`` (the platform's
``/opt/ml``) in a work directory, the way SageMaker does before the container starts:
``input/config/{hyperparameters,inputdataconfig,resourceconfig}.json`` (hyperparameters JSON-encoded
as the SDK writes them, with ``sagemaker_program`` and ``sagemaker_submit_directory`` naming the
entry point and a ``sourcedir.tar.gz`` of the bundle), ``input/data/<channel>/``, and the
pre-created ``model/`` and ``output/{data,intermediate}/`` (without ``output/`` the toolkit exits 0
on a failed script). Then it starts the MXNet training container's own entry point,
``sagemaker-training``'s ``train`` with ``SAGEMAKER_TRAINING_MODULE=sagemaker_mxnet_container.
training:main`` (``sagemaker-mxnet-training``), in a subprocess. The toolkit unpacks the code,
pip-installs its ``requirements.txt`` (here with ``PIP_NO_INDEX=1``: the kit's environment
already satisfies it, and nothing is downloaded), sets the ``SM_*`` environment and runs the
entry point with the hyperparameters as arguments; it writes ``output/failure`` or
``output/success``. What the platform does around the container stays here: the log streams
line by line, a failure raises :class:`TrainingJobError` with the FailureReason (the first 1,024
characters of ``output/failure``), and ``model/`` is packed into ``output/model.tar.gz``.
(``SM_STUDIO_LOCAL_MODE=true`` skips the toolkit's DNS wait for the host ``algo-1``.)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from ..artifacts import INFO_FILE, LEGACY_INFO_FILE
from .bundle import ENTRY_POINT, build_bundle

REGION = "us-east-1"
#: What the MXNet training image runs: the training toolkit, with the MXNet framework module.
TRAINING_MODULE = "sagemaker_mxnet_container.training:main"


class TrainingJobError(RuntimeError):
    """The training job failed; ``str()`` is its FailureReason."""


@dataclasses.dataclass
class TrainingJob:
    """A finished local training job: its ``/opt/ml``-shaped ``root`` and ``model.tar.gz``."""

    name: str
    root: Path
    model_data: Path
    logs: list
    metrics: dict
    command: list


def _decode(hyperparameters: dict) -> dict:
    """The training toolkit's reading of ``hyperparameters.json``: each JSON string decoded (kept
    raw when it is not JSON), ``sagemaker_*`` keys dropped."""
    out = {}
    for key, raw in hyperparameters.items():
        if key.startswith("sagemaker_"):
            continue
        try:
            out[key] = json.loads(raw)
        except (TypeError, ValueError):
            out[key] = raw
    return out


def _cli_args(hyperparameters: dict) -> list:
    """The training toolkit's mapping: JSON strings -> values -> ``--key str(value)``, sorted (what
    the toolkit passes to the entry point; the log shows the real command)."""
    decoded = _decode(hyperparameters)
    return [part for key in sorted(decoded) for part in ("--" + key, str(decoded[key]))]


def _add_model_dir(tar, model_dir: Path, code_dir: Path | None = None) -> None:
    for p in sorted(model_dir.iterdir()):
        if p.name == "code" and code_dir is not None:
            continue
        # a directory saved before the rename: its info file must not reach MMS as a manifest
        tar.add(p, arcname=INFO_FILE if p.name == LEGACY_INFO_FILE else p.name)
    if code_dir is not None:
        # serving needs no requirements.txt: the inference toolkit would pip-install it at every start
        tar.add(code_dir, arcname="code",
                filter=lambda t: None if "__pycache__" in t.name or t.name == "code/requirements.txt" else t)


def _pack(model_dir: Path, tar_path: Path, code_dir: Path | None = None) -> Path:
    """``model.tar.gz`` with the model files at the root (and ``code/`` when given), as SageMaker."""
    with tarfile.open(tar_path, "w:gz") as tar:
        _add_model_dir(tar, model_dir, code_dir)
    return tar_path


def _sourcedir_tar(source_dir: Path, tar_path: Path) -> Path:
    """The SDK's ``sourcedir.tar.gz``: the bundle's files at the archive's root."""
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path, "w:gz") as tar:
        for p in sorted(source_dir.iterdir()):
            tar.add(p, arcname=p.name, filter=lambda t: None if "__pycache__" in t.name else t)
    return tar_path


def toolkit_env(base_dir: Path, extra: dict | None = None) -> dict:
    """The environment a toolkit subprocess gets: the kit's, without leftover ``SM_*`` variables,
    with the venv's scripts on ``PATH`` and ``SAGEMAKER_BASE_DIR`` set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    # the job's progress as plain lines with an ETA (its log is read line by line), unless the caller has none
    progress = "0" if os.environ.get("RECSYS_PROGRESS") == "0" else "lines"
    env.update({"SAGEMAKER_BASE_DIR": str(base_dir), "PYTHONUNBUFFERED": "1", "RECSYS_PROGRESS": progress})
    env.update(extra or {})
    return env


#: Log lines about this machine's setup, not the job: pip's "already satisfied" and index lines, the
#: toolkit's hardware probes and optional-framework notes, the environment dump.
_NOISE = ("Requirement already satisfied", "Looking in links", "Looking in indexes", "training environment: {",
          "No GPUs detected", "No Neurons detected", "instance_groups entry not present", "Exceptions not imported for")
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


class BriefLog:
    """Shows a training log the way a reader wants it in a notebook: the entry point's lines and the
    toolkit's own messages without their timestamps, and without the environment dumps and pip's
    "already satisfied" lines (:attr:`TrainingJob.logs` keeps every line)."""

    def __init__(self, log=print) -> None:
        self.log = log
        self.skipping = False

    def __call__(self, line: str) -> None:
        prefix, _, text = line.partition("] ")
        if text.startswith("Training Env:"):
            self.skipping = True
        elif text.startswith("Invoking script with the following command:"):
            self.skipping = False
        if self.skipping or any(noise in text for noise in _NOISE):
            return
        text = _TIMESTAMP.sub("", text)
        if text.strip():
            self.log(f"{prefix}] {text}")


def run_training_job(hyperparameters: dict, channels: dict, work_dir, source_dir=None, job_name: str | None = None,
                     log=print, timeout: float | None = None, verbose: bool = False) -> TrainingJob:
    """Run the bundle as a SageMaker training job under AWS's training toolkit; returns the job with
    its ``model.tar.gz``, or raises :class:`TrainingJobError` with the FailureReason. ``log`` gets
    every line when ``verbose``, else a :class:`BriefLog` of them."""
    log = log if verbose else BriefLog(log)
    name = job_name or time.strftime("recsys-local-%Y%m%d-%H%M%S")
    root = Path(work_dir).resolve() / name
    if root.exists():
        shutil.rmtree(root)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(source_dir) if source_dir is not None else build_bundle(Path(tmp) / "bundle")
        submit = _sourcedir_tar(bundle, root / "source" / "sourcedir.tar.gz")
    config = root / "input" / "config"
    config.mkdir(parents=True)
    for d in ("code", "model", "output/data", "output/intermediate"):
        (root / d).mkdir(parents=True, exist_ok=True)
    hps = {k: json.dumps(v) for k, v in hyperparameters.items()}  # the SDK's encoding
    sdk_hps = {**hps, "sagemaker_program": json.dumps(ENTRY_POINT), "sagemaker_submit_directory": json.dumps(str(submit)),
               "sagemaker_container_log_level": "20", "sagemaker_job_name": json.dumps(name),
               "sagemaker_region": json.dumps(REGION)}
    (config / "hyperparameters.json").write_text(json.dumps(sdk_hps, sort_keys=True))
    (config / "inputdataconfig.json").write_text(json.dumps(
        {c: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
         for c in channels}))
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-1", "hosts": ["algo-1"], "current_instance_type": "local",
         "network_interface_name": "eth0"}))
    for channel, files in channels.items():
        d = root / "input" / "data" / channel
        d.mkdir(parents=True)
        for f in files:
            f = Path(f).resolve()
            if not f.is_file():
                raise FileNotFoundError(f"channel {channel!r}: no such file {f}")
            try:
                os.symlink(f, d / f.name)
            except OSError:
                shutil.copyfile(f, d / f.name)
    env = toolkit_env(root, {"SAGEMAKER_TRAINING_MODULE": TRAINING_MODULE, "SM_STUDIO_LOCAL_MODE": "true",
                             "TRAINING_JOB_NAME": name, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    cmd = [sys.executable, "-m", "sagemaker_training.cli.train"]
    log(f"[{name}] sagemaker-training ({TRAINING_MODULE}): {ENTRY_POINT} {' '.join(_cli_args(hps))}")
    logs = []
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            logs.append(line)
            log(f"[{name}] {line}")
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    failure = root / "output" / "failure"
    if rc != 0 or failure.exists() or not (root / "output" / "success").exists():
        if not failure.exists():
            tail = " | ".join(line for line in logs[-5:] if line.strip())
            failure.write_text(f"AlgorithmError: exit code {rc}: {tail}"[:1024])
        raise TrainingJobError(f"training job {name} failed: {failure.read_text()[:1024]}")
    model_data = _pack(root / "model", root / "output" / "model.tar.gz")
    metrics_file = root / "output" / "data" / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return TrainingJob(name=name, root=root, model_data=model_data, logs=logs, metrics=metrics,
                       command=[ENTRY_POINT, *_cli_args(hps)])

