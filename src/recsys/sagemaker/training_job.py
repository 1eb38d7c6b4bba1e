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
    # level 1: a full-size model (GBs of float32 weights, which barely compress) packs in seconds, not minutes
    with tarfile.open(tar_path, "w:gz", compresslevel=1) as tar:
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


#: Multi-instance jobs locally: host i is 127.0.0.(i+1). Linux routes all of 127/8 to loopback, and an
#: IP-literal host name resolves at once (the toolkit retries a name's DNS lookup for 15 minutes).
LOOPBACK = "127.0.0.{}"
#: How long a finished multi-instance job's parameter-server processes get to stop by themselves
#: (worker 0 tells the servers to stop when it closes its kvstore) before their group is killed.
PS_STOP_SECONDS = 30.0


def _free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _group_alive(pgid: int) -> list:
    """The live (not zombie) processes of process group ``pgid``, from ``/proc``."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry))
    return alive


def _kill_group(pgid: int) -> None:
    import signal

    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class _StopSignals:
    """Between :meth:`install` and :meth:`restore`, in the main thread, SIGTERM and SIGHUP (a kernel
    shut down, a terminal closed, a ``kill``) raise :class:`TrainingJobError` in it instead of ending the
    process at once, so that the job's ``finally`` kills every host's process group: each runs in its
    own session, and would go on training without a parent otherwise. Elsewhere (a thread) it does
    nothing. (SIGKILL cannot be caught: after one the groups outlive the parent.)"""

    SIGNALS = ("SIGTERM", "SIGHUP")

    def __init__(self, name: str) -> None:
        self.name, self._saved = name, {}
        self.closing, self.got = False, None  # closing: cleaning up, where a signal is noted, not raised

    def error(self) -> TrainingJobError:
        return TrainingJobError(f"training job {self.name} stopped: this process got {self.got}; every host of "
                                "the job was stopped")

    def _raise(self, signum, frame):
        import signal

        first = self.got is None
        self.got = self.got or signal.Signals(signum).name
        if first and not self.closing:
            raise self.error()

    def install(self) -> "_StopSignals":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._saved[sig] = signal.signal(getattr(signal, sig), self._raise)
        return self

    def restore(self) -> None:
        import signal

        for sig, handler in self._saved.items():
            signal.signal(getattr(signal, sig), handler)


def _host_tree(root: Path, sdk_hps: dict, channels: dict, host: str, hosts: list, checkpoint_dir) -> None:
    """One host's ``/opt/ml``: config, channels (symlinks to the inputs), model and output directories,
    and ``checkpoints`` (a link to ``checkpoint_dir``, which outlives the job) when given."""
    config = root / "input" / "config"
    config.mkdir(parents=True)
    for d in ("code", "model", "output/data", "output/intermediate"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(json.dumps(sdk_hps, sort_keys=True))
    (config / "inputdataconfig.json").write_text(json.dumps(
        {c: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
         for c in channels}))
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": host, "hosts": hosts, "current_instance_type": "local", "network_interface_name": "lo"}))
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
    if checkpoint_dir is not None:
        target = Path(checkpoint_dir).resolve()
        target.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / "checkpoints")


def _failure(root: Path, rc, logs: list) -> str | None:
    failure = root / "output" / "failure"
    if rc == 0 and not failure.exists() and (root / "output" / "success").exists():
        return None
    if not failure.exists():
        tail = " | ".join(line for line in logs[-5:] if line.strip())
        failure.write_text(f"AlgorithmError: exit code {rc}: {tail}"[:1024])
    return failure.read_text()[:1024]


def run_training_job(hyperparameters: dict, channels: dict, work_dir, source_dir=None, job_name: str | None = None,
                     log=print, timeout: float | None = None, verbose: bool = False, instance_count: int = 1,
                     checkpoint_dir=None) -> TrainingJob:
    """Run the bundle as a SageMaker training job under AWS's training toolkit; returns the job with
    its ``model.tar.gz``, or raises :class:`TrainingJobError` with the FailureReason. ``log`` gets
    every line when ``verbose``, else a :class:`BriefLog` of them.

    ``instance_count`` above 1: a multi-instance job with the parameter server on, as the SDK's
    ``distribution={"parameter_server": {"enabled": True}}`` launches it: N host trees under
    ``<job>/hosts/`` on 127.0.0.1, 127.0.0.2, ..., each its own toolkit process in its own process
    group (the toolkit starts the scheduler and a server per host in it), the scheduler on a free
    port. When a host fails, or ``timeout`` (seconds, the whole job) passes, every group is killed;
    after success the servers get :data:`PS_STOP_SECONDS` to stop by themselves, then their groups are
    killed too (:attr:`TrainingJob.metrics` ``["ps_stopped_by_themselves"]`` says which happened).
    The job's ``root`` is host 0's tree, which holds the model. SIGTERM or SIGHUP to this process
    while the job runs (in the main thread) stops every host too, then raises :class:`TrainingJobError`.

    ``checkpoint_dir``: the directory SageMaker syncs with ``checkpoint_s3_uri``; the job sees it as
    ``/opt/ml/checkpoints``, where the entry point saves every epoch and resumes from the newest."""
    import threading

    log = log if verbose else BriefLog(log)
    name = job_name or time.strftime("recsys-local-%Y%m%d-%H%M%S")
    n = int(instance_count)
    if n < 1:
        raise ValueError(f"instance_count must be >= 1, not {instance_count!r}")
    if n > 1 and checkpoint_dir is not None:
        raise ValueError("checkpoint_dir applies to single-instance jobs (the optimizer state of a multi-instance "
                         "job is on its parameter servers)")
    job_root = Path(work_dir).resolve() / name
    if job_root.exists():
        shutil.rmtree(job_root)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(source_dir) if source_dir is not None else build_bundle(Path(tmp) / "bundle")
        submit = _sourcedir_tar(bundle, job_root / "source" / "sourcedir.tar.gz")
    hps = {k: json.dumps(v) for k, v in hyperparameters.items()}  # the SDK's encoding
    sdk_hps = {**hps, "sagemaker_program": json.dumps(ENTRY_POINT), "sagemaker_submit_directory": json.dumps(str(submit)),
               "sagemaker_container_log_level": "20", "sagemaker_job_name": json.dumps(name),
               "sagemaker_region": json.dumps(REGION)}
    if n == 1:
        hosts, roots = ["algo-1"], [job_root]
    else:
        hosts = [LOOPBACK.format(i + 1) for i in range(n)]
        roots = [job_root / "hosts" / f"algo-{i + 1}" for i in range(n)]
        # the SDK's parameter-server flag; the port a string, as the toolkit passes it to the environment
        sdk_hps.update({"sagemaker_parameter_server_enabled": json.dumps(True), "_ps_port": json.dumps(str(_free_port()))})
    for host, root in zip(hosts, roots):
        _host_tree(root, sdk_hps, channels, host, hosts, checkpoint_dir)
    cmd = [sys.executable, "-m", "sagemaker_training.cli.train"]
    log(f"[{name}] sagemaker-training ({TRAINING_MODULE}): {ENTRY_POINT} {' '.join(_cli_args(hps))}"
        + (f" on {n} hosts ({', '.join(hosts)}, parameter server on)" if n > 1 else ""))
    logs, lock, procs = [], threading.Lock(), []

    def pump(proc, tag):
        for line in proc.stdout:
            line = line.rstrip("\n")
            with lock:
                logs.append(line if n == 1 else f"{tag} {line}")
                log(f"[{name}{'/' + tag if n > 1 else ''}] {line}")

    deadline = None if timeout is None else time.monotonic() + timeout
    readers, rcs, stopped = [], [None] * n, True
    signals = _StopSignals(name).install()
    try:
        for host, root in zip(hosts, roots):
            env = toolkit_env(root, {"SAGEMAKER_TRAINING_MODULE": TRAINING_MODULE, "SM_STUDIO_LOCAL_MODE": "true",
                                     "TRAINING_JOB_NAME": name, "PIP_NO_INDEX": "1",
                                     "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
            if n > 1:
                env["DMLC_NODE_HOST"] = host  # ps-lite binds this address, not the first non-loopback interface
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, start_new_session=True)  # its own group, with its PS processes
            procs.append(proc)
            t = threading.Thread(target=pump, args=(proc, root.name), daemon=True)
            t.start()
            readers.append(t)
        while any(rc is None for rc in rcs):
            for i, proc in enumerate(procs):
                if rcs[i] is None:
                    rcs[i] = proc.poll()
            if any(rc not in (None, 0) for rc in rcs):
                break  # one host failed: the others would wait for it forever
            if deadline is not None and time.monotonic() > deadline:
                raise TrainingJobError(f"training job {name} failed: timed out after {timeout:.0f} s")
            time.sleep(0.05)
        if n > 1 and all(rc == 0 for rc in rcs):
            until = time.monotonic() + PS_STOP_SECONDS
            while any(_group_alive(p.pid) for p in procs) and time.monotonic() < until:
                time.sleep(0.1)
            stopped = not any(_group_alive(p.pid) for p in procs)
    finally:
        signals.closing = True
        for proc in procs:
            _kill_group(proc.pid)  # a no-op when the group has ended; else nothing is left running
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for t in readers:
            t.join(timeout=5)
        signals.restore()
    if signals.got is not None:
        raise signals.error()  # a signal that came while the hosts were being stopped
    # the host that failed first, not one killed because of it
    for i in sorted(range(n), key=lambda i: rcs[i] in (None, 0)):
        root = roots[i]
        reason = _failure(root, rcs[i], logs)
        if reason is not None:
            where = "" if n == 1 else f" (host {hosts[i]})"
            raise TrainingJobError(f"training job {name} failed{where}: {reason}")
    root = roots[0]
    model_data = _pack(root / "model", root / "output" / "model.tar.gz")
    metrics_file = root / "output" / "data" / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    if n > 1:
        metrics["ps_stopped_by_themselves"] = stopped
    return TrainingJob(name=name, root=root, model_data=model_data, logs=logs, metrics=metrics,
                       command=[ENTRY_POINT, *_cli_args(hps)])
