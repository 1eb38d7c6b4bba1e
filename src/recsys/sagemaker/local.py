"""SageMaker offline: a training job run by AWS's own training toolkit, and a local endpoint.

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

``LocalEndpoint``: loads a ``model.tar.gz`` (or a model directory) with the entry point's
handlers and serves on 127.0.0.1 only

* ``GET /ping`` and ``POST /invocations``: the hosting container's contract, with the inference
  toolkit's rules (a missing or ``*/*`` Accept becomes the endpoint's default Accept; errors are
  the status, the one-line message as reason phrase and body, no Content-Type);
* ``POST /endpoints/<name>/invocations``: the SageMaker Runtime REST API that boto3 signs and
  sends, so ``boto3.client("sagemaker-runtime", endpoint_url=...)`` and a SageMaker SDK
  ``Predictor`` work unchanged. A model's 4xx reaches boto3 as ``ModelError`` (424) with
  ``OriginalStatusCode``; an unknown endpoint name as ``ValidationError``.

It serves requests concurrently (a thread per connection) and starts and stops cleanly
(a context manager). ``recsys serve MODEL`` runs it from the command line. The conformance tier
(``tests/test_conformance.py``) holds it to the real serving stack (:mod:`.container`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .. import serving
from ..artifacts import INFO_FILE, LEGACY_INFO_FILE
from .bundle import ENTRY_POINT, build_bundle

ACCOUNT = "000000000000"
REGION = "us-east-1"
VARIANT = "AllTraffic"
#: What the MXNet training image runs: the training toolkit, with the MXNet framework module.
TRAINING_MODULE = "sagemaker_mxnet_container.training:main"
#: The Accept a missing or ``*/*`` Accept becomes on the kit's endpoints (``deploy()`` sets the same
#: ``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT`` on AWS): Aurora's CSV calls get CSV.
DEFAULT_ACCEPT = serving.CSV


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
    env.update({"SAGEMAKER_BASE_DIR": str(base_dir), "PYTHONUNBUFFERED": "1", "RECSYS_PROGRESS": "0"})
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


# ---- endpoint ---------------------------------------------------------------------------------

def _load_handlers(code_dir: Path):
    """The entry point module from ``code/`` (as the container imports SAGEMAKER_PROGRAM), else
    :mod:`recsys.serving`."""
    entry = code_dir / ENTRY_POINT
    if not entry.is_file():
        return serving
    spec = importlib.util.spec_from_file_location("recsys_sagemaker_program", entry)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if hasattr(module, "transform_fn") and any(hasattr(module, f) for f in ("input_fn", "predict_fn", "output_fn")):
        raise ValueError(f"{entry}: defines transform_fn and input_fn/predict_fn/output_fn; the container allows one kind")
    return module


def _drain(stream, length: int, block: int = 1 << 16) -> None:
    while length > 0:
        chunk = stream.read(min(block, length))
        if not chunk:
            break
        length -= len(chunk)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "recsys-local-endpoint"
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stalls

    def log_message(self, fmt, *args):  # quiet: the endpoint counts, it does not print
        pass

    def setup(self):
        super().setup()
        with self.server.endpoint._lock:
            self.server.endpoint._connections.add(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            with self.server.endpoint._lock:
                self.server.endpoint._connections.discard(self.connection)

    def _send(self, status: int, body: bytes, content_type: str | None, headers: dict | None = None,
              reason: str | None = None) -> None:
        self.send_response(status, reason)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _refuse(self, status: int, message: str, headers: dict | None = None) -> None:
        """An error before the body is read, in the inference toolkit's shape (the message as reason
        phrase and body, no Content-Type); then close (the unread body cannot be skipped)."""
        self.close_connection = True
        self._send(status, (message + "\n").encode(), None, headers, reason=message)

    def _content_length(self):
        """The declared body length, or None after answering 400 / 413 / 411."""
        raw = self.headers.get("Content-Length")
        if raw is None:
            if self.headers.get("Transfer-Encoding"):
                self._refuse(411, "a Content-Length is required (chunked bodies are not accepted)")
                return None
            return 0
        try:
            length = int(raw)
        except ValueError:
            length = -1
        if length < 0:
            self._refuse(400, f"invalid Content-Length {raw[:40]!r}")
            return None
        if length > serving.MAX_BODY_BYTES:
            self._refuse(413, serving.too_large(length).message)
            return None
        return length

    def _route(self):
        """``("ping" | "invocations" | "runtime", endpoint name or None)``, or None for an unknown path."""
        path = self.path.split("?")[0]
        if path == "/ping":
            return "ping", None
        if path == "/invocations":
            return "invocations", None
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "endpoints" and parts[2] == "invocations":
            return "runtime", parts[1]
        return None

    def _not_allowed(self, allow: str) -> None:
        self._refuse(405, f"method {self.command} not allowed here; use {allow}", {"Allow": allow})

    def do_GET(self):
        route = self._route()
        if route is None:
            self._send(404, b"not found\n", "text/plain")
        elif route[0] == "ping":
            if self.server.endpoint.model is not None:
                self._send(200, b'{\n  "status": "Healthy"\n}\n', "application/json")
            else:
                self._send(503, b'{\n  "status": "Unhealthy"\n}\n', "application/json")
        else:
            self._not_allowed("POST")

    do_HEAD = do_GET

    def do_POST(self):
        route = self._route()
        if route is None:
            self._refuse(404, "not found")
            return
        if route[0] == "ping":
            self._not_allowed("GET, HEAD")
            return
        ep = self.server.endpoint
        if route[0] == "runtime" and route[1] != ep.name:
            self.close_connection = True
            self._runtime_error(400, "ValidationError", {"Message": f"Endpoint {route[1]} of account {ACCOUNT} not found."})
            return
        length = self._content_length()
        if length is None:
            return
        if not ep._reserve(length):  # bounded memory: past the in-flight budget, ask the client to retry
            _drain(self.rfile, length)  # read and drop the body, so the client sees the answer, not a reset
            message = "the endpoint is busy: too many bytes in flight, retry shortly"
            self._send(503, (message + "\n").encode(), None, {"Retry-After": "1"}, reason=message)
            return
        try:
            body = self.rfile.read(length) if length else b""
            status, out, ctype = ep.invoke(body, self.headers.get("Content-Type"), self.headers.get("Accept"))
            del body
        finally:
            ep._release(length)
        if route[0] == "invocations":
            if status == 200:
                self._send(200, out, ctype)
            else:  # the inference toolkit's shape: the message as reason phrase, no Content-Type
                self._send(status, (out + "\n").encode(), None, reason=out)
            return
        if status == 200:
            self._send(200, out, ctype, {"x-Amzn-Invoked-Production-Variant": VARIANT})
        else:
            kind = "client" if status < 500 else "server"
            self._runtime_error(424, "ModelError", {
                "Message": f'Received {kind} error ({status}) from {VARIANT} with message "{out}". '
                           f"See the endpoint's log for more information.",
                "OriginalStatusCode": status, "OriginalMessage": out,
                "LogStreamArn": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/sagemaker/Endpoints/{ep.name}",
            })

    def _other_method(self):
        route = self._route()
        if route is None:
            self._refuse(404, "not found")
        else:
            self._not_allowed("GET, HEAD" if route[0] == "ping" else "POST")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other_method

    def _runtime_error(self, status: int, code: str, payload: dict) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", {"x-amzn-ErrorType": code})


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # a burst of clients must queue, not be reset (the default backlog is 5)


class LocalEndpoint:
    """A SageMaker-compatible endpoint on 127.0.0.1 for a ``model.tar.gz`` or a model directory."""

    #: Request bodies held at once (each up to 6 MiB, parsed into a few times that): past this budget a
    #: request gets 503 with Retry-After instead of memory. A body alone over the budget is still let in
    #: when nothing else is in flight. ``RECSYS_ENDPOINT_MAX_INFLIGHT_BYTES`` overrides it (0: no cap).
    MAX_INFLIGHT_BYTES = int(os.environ.get("RECSYS_ENDPOINT_MAX_INFLIGHT_BYTES", 4 * serving.MAX_BODY_BYTES))

    def __init__(self, model_data, name: str = "recsys-local", port: int = 0,
                 default_accept: str = DEFAULT_ACCEPT) -> None:
        self.model_data = Path(model_data)
        self.name = name
        self.port = port
        self.default_accept = default_accept
        self.inflight_bytes = 0
        self.peak_inflight_bytes = 0
        self.busy_refusals = 0
        self.model = None
        self.handlers = None
        self._server = None
        self._thread = None
        self._tmp = None
        self.requests = 0
        self.errors = 0
        self._lock = threading.Lock()
        self._connections = set()  # open keep-alive connections, closed by stop()

    # lifecycle
    def start(self) -> "LocalEndpoint":
        if self._server is not None:
            return self
        model_dir = self.model_data
        if self.model_data.is_file():
            self._tmp = tempfile.mkdtemp(prefix="recsys-endpoint-")
            with tarfile.open(self.model_data) as tar:
                tar.extractall(self._tmp)
            model_dir = Path(self._tmp)
        elif not self.model_data.is_dir():
            raise FileNotFoundError(f"no model at {self.model_data}")
        self.handlers = _load_handlers(model_dir / "code")
        self.model = self.handlers.model_fn(str(model_dir))
        self._server = _Server(("127.0.0.1", self.port), _Handler)
        self._server.daemon_threads = True
        self._server.endpoint = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"endpoint-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            with self._lock:
                open_connections = list(self._connections)
            for conn in open_connections:  # keep-alive clients must see the endpoint go away
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._thread.join(timeout=10)
            self._server = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> "LocalEndpoint":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _reserve(self, nbytes: int) -> bool:
        with self._lock:
            if self.MAX_INFLIGHT_BYTES and self.inflight_bytes and self.inflight_bytes + nbytes > self.MAX_INFLIGHT_BYTES:
                self.busy_refusals += 1
                return False
            self.inflight_bytes += nbytes
            self.peak_inflight_bytes = max(self.peak_inflight_bytes, self.inflight_bytes)
            return True

    def _release(self, nbytes: int) -> None:
        with self._lock:
            self.inflight_bytes -= nbytes

    # the request path
    def invoke(self, body: bytes, content_type, accept):
        """``(status, body, content type)``; errors as ``(4xx/5xx, one-line message, None)``."""
        with self._lock:
            self.requests += 1
        try:
            out, ctype = serving.handle(self.model, body, content_type, accept, self.handlers, self.default_accept)
            return 200, out.encode() if isinstance(out, str) else out, ctype
        except serving.RequestError as e:
            status, message = e.status_code, e.message
        except Exception as e:  # noqa: BLE001 - a 500 with a message, never a traceback
            status, message = 500, f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        with self._lock:
            self.errors += 1
        return status, message, None

    # clients
    def runtime_client(self):
        """A real boto3 ``sagemaker-runtime`` client pointed at this endpoint (dummy credentials)."""
        import boto3
        from botocore.config import Config

        return boto3.client("sagemaker-runtime", endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id="local", aws_secret_access_key="local",
                            config=Config(retries={"max_attempts": 1}))

    def predictor(self, serializer=None, deserializer=None):
        """A SageMaker SDK v2 ``Predictor`` on this endpoint, JSON in and out by default."""
        import boto3

        from .sdk import import_sdk

        sagemaker = import_sdk()
        from sagemaker.deserializers import JSONDeserializer
        from sagemaker.predictor import Predictor
        from sagemaker.serializers import JSONSerializer

        session = sagemaker.Session(
            boto_session=boto3.Session(region_name=REGION, aws_access_key_id="local", aws_secret_access_key="local"),
            sagemaker_runtime_client=self.runtime_client())
        return Predictor(self.name, sagemaker_session=session, serializer=serializer or JSONSerializer(),
                         deserializer=deserializer or JSONDeserializer())


def deploy_local(model, name: str = "recsys-local", port: int = 0, default_accept: str = DEFAULT_ACCEPT) -> LocalEndpoint:
    """Start a :class:`LocalEndpoint` for a :class:`TrainingJob` (repacked with its code under
    ``code/``, as the SDK's ``deploy()`` does), a ``model.tar.gz`` or a model directory."""
    if isinstance(model, TrainingJob):  # its model/ holds what model.tar.gz packs
        model = package_model(model.root / "model", model.root / "output" / "model-deploy.tar.gz", model.root / "code")
    return LocalEndpoint(model, name=name, port=port, default_accept=default_accept).start()


def package_model(model_dir, tar_path, source_dir=None) -> Path:
    """``model.tar.gz`` of a model directory with the serving code under ``code/`` (the bundle, or
    ``source_dir``, without ``requirements.txt``), as the kit's ``deploy()`` has it repacked."""
    tar_path = Path(tar_path)
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(source_dir) if source_dir else build_bundle(Path(tmp) / "code", serving=True)
        return _pack(Path(model_dir), tar_path, code)
