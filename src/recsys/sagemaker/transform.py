"""SageMaker Batch Transform, offline: a transform job over local files, on AWS's real MXNet serving
stack (or the kit's local endpoint when the toolkits or Java are missing).

:func:`run_transform` does what the platform does around the serving container, with the rules of
the SDK's own local mode (``sagemaker/local/entities.py`` ``_LocalTransformJob`` and
``sagemaker/local/data.py``):

* the container starts as for an endpoint (``serve``), with the model's environment and what Batch
  Transform adds: ``SAGEMAKER_BATCH=True``, ``SAGEMAKER_MAX_PAYLOAD_IN_MB``,
  ``SAGEMAKER_BATCH_STRATEGY`` (``MULTI_RECORD`` / ``SINGLE_RECORD``) and
  ``SAGEMAKER_MAX_CONCURRENT_TRANSFORMS``; the platform asks ``GET /execution-parameters`` first
  (the MXNet stack answers 404, so the job's own settings stand);
* ``SplitType=Line``: every input file is cut into records at each newline (the newline stays with
  its record; a last line without one is a record too);
* ``BatchStrategy=MultiRecord`` packs whole records, in order, into one request while it stays within
  ``MaxPayloadInMB`` (MiB: 6 -> 6,291,456 bytes); ``SingleRecord`` sends one record per request. A
  record alone over the limit fails the job, naming the file and the line (the SDK's local mode
  checks only the last mini-batch; the platform fails the job);
* each request is ``POST /invocations`` with ``Content-Type: text/csv`` and the job's ``Accept``
  (``text/csv``); up to ``MaxConcurrentTransforms`` requests are in flight at once, their answers
  written in input order; a 5xx or a dropped connection is retried ``InvocationsMaxRetries`` times
  (default 3), a 4xx fails the job at once;
* ``AssembleWith=Line``: the answers go to ``<output dir>/<input file name>.out`` in input order, each
  followed by a newline unless it already ends with one. (The SDK's local mode adds one after every
  answer; the kit's CSV answers end with one already, one line per row, so that rule would leave an
  empty line, an unknown pair, after every mini-batch. The API documentation says only "a newline
  character at the end of every transformed record".) The kit also checks that every answer has one
  line per record sent, so the ``.out`` file has exactly one line per input line;
* an ``.out`` file appears only when its whole input succeeded (written aside, then renamed), as the
  platform uploads only fully processed objects; a failure raises :class:`TransformJobError`.

The MXNet serving stack (Multi Model Server) refuses answers over :data:`MMS_MAX_RESPONSE_BYTES`
whatever ``MaxPayloadInMB`` says (the worker dies, the request gets a 500): the kit's CSV answers
are about as long as the requests (a score per line), so a full 6 MB mini-batch of short lines can
fail there. The job says so, and applies the same limit on the local endpoint, so both engines fail
alike (lower ``max_payload_mb`` then).

Only one Multi Model Server runs on a machine (pid file, properties file, process scan): with
``engine="auto"`` a transform falls back to the local endpoint when another one is running;
``engine="container"`` fails instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import importlib.util
import tarfile
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import serving

#: Multi Model Server's own limit on an answer (``max_response_size``; the inference toolkit sets only
#: the request limit from ``SAGEMAKER_MAX_PAYLOAD_IN_MB``).
MMS_MAX_RESPONSE_BYTES = 6_553_500
DEFAULT_MAX_PAYLOAD_MB = 6  # the platform's and the SDK's default
#: The kit's handlers refuse bodies over 6 MiB (:data:`recsys.serving.MAX_BODY_BYTES`), so a larger
#: MaxPayloadInMB would only move the failure into the container.
MAX_PAYLOAD_MB = serving.MAX_BODY_BYTES // (1 << 20)
STRATEGIES = {"MultiRecord": "MULTI_RECORD", "SingleRecord": "SINGLE_RECORD"}
ENGINES = ("auto", "container", "local")
CONTAINER = "mxnet-serving-stack"
LOCAL = "local-endpoint"
DEFAULT_MAX_RETRIES = 3  # ModelClientConfig.InvocationsMaxRetries
DEFAULT_INVOCATION_TIMEOUT = 600  # ModelClientConfig.InvocationsTimeoutInSeconds
CONTENT_TYPE = serving.CSV
ACCEPT = serving.CSV


class TransformJobError(RuntimeError):
    """The transform job failed; the message says where (file, mini-batch or line) and why."""


@dataclasses.dataclass
class TransformJob:
    """A finished local transform job."""

    name: str
    engine: str  # CONTAINER or LOCAL
    inputs: list
    outputs: list
    records: int
    requests: int
    seconds: float
    strategy: str
    max_payload_mb: int
    max_concurrent_transforms: int
    note: str = ""

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else float("nan")

    def as_dict(self) -> dict:
        return {"job_name": self.name, "engine": self.engine, "inputs": [str(p) for p in self.inputs],
                "outputs": [str(p) for p in self.outputs], "records": self.records, "requests": self.requests,
                "seconds": self.seconds, "records_per_second": self.records_per_second, "strategy": self.strategy,
                "max_payload_mb": self.max_payload_mb, "max_concurrent_transforms": self.max_concurrent_transforms,
                **({"note": self.note} if self.note else {})}


def batch_environment(strategy: str = "MultiRecord", max_payload_mb: int = DEFAULT_MAX_PAYLOAD_MB,
                      max_concurrent_transforms: int = 1) -> dict:
    """What Batch Transform adds to the container's environment (as the SDK's local mode sets it)."""
    return {"SAGEMAKER_BATCH": "True", "SAGEMAKER_MAX_PAYLOAD_IN_MB": str(max_payload_mb),
            "SAGEMAKER_BATCH_STRATEGY": STRATEGIES[strategy],
            "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": str(max_concurrent_transforms)}


def check_settings(strategy: str, max_payload_mb, max_concurrent_transforms=1) -> None:
    """One-line errors for settings the platform (or the kit's container) refuses."""
    if strategy not in STRATEGIES:
        raise ValueError(f"batch strategy {strategy!r}: use MultiRecord or SingleRecord")
    if isinstance(max_payload_mb, bool) or not isinstance(max_payload_mb, int) \
            or not 1 <= max_payload_mb <= MAX_PAYLOAD_MB:
        raise ValueError(f"max payload {max_payload_mb!r} MB: use a whole number from 1 to {MAX_PAYLOAD_MB} (the kit's "
                         f"handlers refuse bodies over {serving.MAX_BODY_BYTES:,} bytes)")
    if isinstance(max_concurrent_transforms, bool) or not isinstance(max_concurrent_transforms, int) \
            or max_concurrent_transforms < 1:
        raise ValueError(f"max concurrent transforms {max_concurrent_transforms!r}: use a whole number >= 1")


def toolkits_available() -> bool:
    """AWS's serving toolkits are importable and a Java runtime is there for MMS's frontend."""
    from .container import java_available

    names = ("sagemaker_mxnet_serving_container", "sagemaker_inference", "mms")
    return all(importlib.util.find_spec(n) is not None for n in names) and java_available()


# ---- records and mini-batches ----------------------------------------------------------------------

def records(path: Path, block: int = 1 << 20):
    """``SplitType=Line``: ``(line number, record bytes)`` for every line of ``path``, the newline kept;
    read in blocks, so memory does not grow with the file."""
    n, rest = 0, b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(block)
            if not chunk:
                break
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                n += 1
                yield n, line + b"\n"
    if rest:
        yield n + 1, rest


def mini_batches(path: Path, strategy: str, max_payload_mb: int):
    """``(first line, number of records, payload)`` in order: MultiRecord packs whole records while the
    payload stays within MaxPayloadInMB; SingleRecord sends each alone. A record over the limit raises."""
    limit = max_payload_mb << 20
    parts, size, first = [], 0, 1
    for n, rec in records(path):
        if len(rec) > limit:
            raise TransformJobError(f"{path.name}: line {n} is a record of {len(rec):,} bytes, over MaxPayloadInMB="
                                    f"{max_payload_mb} ({limit:,} bytes); the job fails, as on SageMaker")
        if strategy == "SingleRecord":
            yield n, 1, rec
            continue
        if parts and size + len(rec) > limit:
            yield first, len(parts), b"".join(parts)
            parts, size = [], 0
        if not parts:
            first = n
        parts.append(rec)
        size += len(rec)
    if parts:
        yield first, len(parts), b"".join(parts)


# ---- the client side of the container --------------------------------------------------------------

class _Invoker:
    """``POST /invocations`` with one keep-alive connection per thread; retries 5xx and dropped connections."""

    def __init__(self, port: int, max_retries: int, timeout: float) -> None:
        self.port, self.max_retries, self.timeout = port, max_retries, timeout
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def __call__(self, payload: bytes) -> tuple:
        """``(status, reason, body)`` of the last attempt."""
        for attempt in range(self.max_retries + 1):
            try:
                conn = self._conn()
                conn.request("POST", "/invocations", body=payload,
                             headers={"Content-Type": CONTENT_TYPE, "Accept": ACCEPT})
                r = conn.getresponse()
                status, reason, body = r.status, r.reason, r.read()
                if r.will_close:
                    self._drop()
            except (OSError, http.client.HTTPException) as e:
                self._drop()
                status, reason, body = None, f"{type(e).__name__}: {e}", b""
            if status is not None and status < 500:
                break
            if attempt < self.max_retries:
                time.sleep(min(0.5 * 2 ** attempt, 5.0))
        return status, reason, body

    def get(self, path: str) -> int | None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            conn.request("GET", path)
            status = conn.getresponse().status
            conn.close()
            return status
        except (OSError, http.client.HTTPException):
            return None


def _failure(path: Path, first: int, count: int, payload: bytes, status, reason, body: bytes) -> str:
    text = body.decode("utf-8", "replace")
    message = (reason or "").strip() or (text.strip().splitlines() or [""])[0]
    line = (f"{path.name}: the mini-batch of {count:,} record(s) from line {first} ({len(payload):,} bytes) failed: "
            f"{status if status is not None else 'no answer'} {message}").rstrip()
    if status == 500 and "Worker died" in text and count > 1:
        line += (f" (the serving stack refuses answers over {MMS_MAX_RESPONSE_BYTES:,} bytes, and a CSV answer is "
                 "about as long as its request: lower max_payload_mb)")
    return line


def _check_answer(path: Path, first: int, count: int, payload: bytes, body: bytes) -> None:
    if len(body) > MMS_MAX_RESPONSE_BYTES:
        raise TransformJobError(
            f"{path.name}: the answer to the mini-batch of {count:,} record(s) from line {first} is {len(body):,} "
            f"bytes, over the MXNet serving stack's {MMS_MAX_RESPONSE_BYTES:,}-byte limit (there the worker dies and "
            "the job fails): lower max_payload_mb")
    lines = body.count(b"\n") + (0 if body.endswith(b"\n") else 1)
    if lines != count:
        raise TransformJobError(f"{path.name}: the model answered {lines:,} line(s) for the {count:,} record(s) from "
                                f"line {first}: not one line per record")


def _transform_file(call: _Invoker, path: Path, dest: Path, strategy: str, max_payload_mb: int, workers: int,
                    bar) -> tuple:
    """One input file into ``dest`` (written aside, renamed when complete); ``(records, requests)``."""
    part = dest.with_name(f".{dest.name}.part")
    n_records = n_requests = 0
    try:
        with open(part, "wb") as out, ThreadPoolExecutor(workers, thread_name_prefix="transform") as pool:
            window = deque()  # at most `workers` requests in flight, answers written in input order

            def drain_one():
                nonlocal n_records, n_requests
                first, count, payload, future = window.popleft()
                status, reason, body = future.result()
                if status != 200:
                    raise TransformJobError(_failure(path, first, count, payload, status, reason, body))
                _check_answer(path, first, count, payload, body)
                out.write(body if body.endswith(b"\n") else body + b"\n")  # AssembleWith=Line
                n_records += count
                n_requests += 1
                bar.update(len(payload))

            for first, count, payload in mini_batches(path, strategy, max_payload_mb):
                window.append((first, count, payload, pool.submit(call, payload)))
                if len(window) >= workers:
                    drain_one()
            while window:
                drain_one()
        part.replace(dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return n_records, n_requests


# ---- the job ---------------------------------------------------------------------------------------

def deployable(model, work: Path) -> Path:
    """A ``model.tar.gz`` with the serving code under ``code/``, as the SDK's model repacks it: a model
    directory or a ``model.tar.gz`` without ``code/`` (a training job's) gets the kit's serving bundle."""
    from .endpoint import package_model

    model = Path(model)
    if model.is_dir():
        if (model / "code").is_dir():
            return package_model(model, work / "model.tar.gz", model / "code")
        return package_model(model, work / "model.tar.gz")
    if not model.is_file():
        raise FileNotFoundError(f"no model at {model}")
    with tarfile.open(model) as tar:
        names = tar.getnames()
        if any(n.lstrip("./").startswith("code/") for n in names):
            return model
        unpacked = work / "unpacked"
        tar.extractall(unpacked)
    return package_model(unpacked, work / "model.tar.gz")


@contextlib.contextmanager
def serving_container(model_tar: Path, engine: str, env: dict):
    """``(port, engine used, note)`` of a running container for ``model_tar``: the real serving stack with
    the batch environment, or the local endpoint. ``engine="auto"``: the real stack when the toolkits and
    Java are installed and no other Multi Model Server runs, else the local endpoint (``note`` says why)."""
    from .container import ServingStack, ServingStackBusy
    from .endpoint import LocalEndpoint

    if isinstance(engine, (ServingStack, LocalEndpoint)):  # already running: used as it is
        yield engine.port, CONTAINER if isinstance(engine, ServingStack) else LOCAL, ""
        return
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: use auto, container or local")
    note = ""
    if engine == "container" and not toolkits_available():
        raise TransformJobError("engine container: AWS's serving toolkits or a Java runtime are missing "
                                "(`pip install -e '.[toolkits]'`); use engine local or auto")
    if engine in ("auto", "container") and toolkits_available():
        try:
            stack = ServingStack(model_tar, env=env).start()
        except ServingStackBusy as e:
            if engine == "container":
                raise TransformJobError(str(e)) from None
            note = "another Multi Model Server runs on this machine, so the local endpoint served the job"
        else:
            try:
                yield stack.port, CONTAINER, note
            finally:
                stack.stop()
            return
    elif engine == "auto":
        note = "AWS's serving toolkits or Java are not installed, so the local endpoint served the job"
    with LocalEndpoint(model_tar, name="transform") as ep:
        yield ep.port, LOCAL, note


def run_transform(model, inputs, out_dir, strategy: str = "MultiRecord", max_payload_mb: int = DEFAULT_MAX_PAYLOAD_MB,
                  max_concurrent_transforms: int = 1, engine: str = "auto", job_name: str | None = None,
                  max_retries: int = DEFAULT_MAX_RETRIES, invocation_timeout: float = DEFAULT_INVOCATION_TIMEOUT,
                  progress: bool = True) -> TransformJob:
    """Run a Batch Transform job over local files (see the module doc): ``<out_dir>/<input name>.out``
    for each input, one line per input line (an empty line where the pair is unknown).

    ``engine``: ``"container"`` (AWS's MXNet serving stack, started for the job with the batch
    environment), ``"local"`` (the kit's endpoint), ``"auto"``, or a started
    :class:`~recsys.sagemaker.container.ServingStack` / :class:`~recsys.sagemaker.endpoint.LocalEndpoint`
    to run several jobs on (its environment is the caller's; ``model`` is then only a label)."""
    from ..progress import progress_bar

    check_settings(strategy, max_payload_mb, max_concurrent_transforms)
    paths = [Path(p) for p in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
    if not paths:
        raise ValueError("no input files")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"no input file {p}")
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise ValueError(f"two inputs named {next(n for n in names if names.count(n) > 1)!r} would write the same "
                         ".out file")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = job_name or time.strftime("recsys-transform-%Y%m%d-%H%M%S")
    env = batch_environment(strategy, max_payload_mb, max_concurrent_transforms)
    total = sum(p.stat().st_size for p in paths)
    running = not isinstance(engine, str)
    with tempfile.TemporaryDirectory(prefix="recsys-transform-") as tmp:
        model_tar = None if running else deployable(model, Path(tmp))
        with serving_container(model_tar, engine, env) as (port, used, note):
            call = _Invoker(port, max_retries, invocation_timeout)
            call.get("/execution-parameters")  # the platform asks first; the MXNet stack has no such route
            t0 = time.perf_counter()
            n_records = n_requests = 0
            outputs = []
            with progress_bar(total=total, unit="B", unit_scale=True, desc=f"transform ({used})",
                              enabled=progress) as bar:
                for p in paths:
                    dest = out_dir / f"{p.name}.out"
                    r, q = _transform_file(call, p, dest, strategy, max_payload_mb, max_concurrent_transforms, bar)
                    n_records += r
                    n_requests += q
                    outputs.append(dest)
            seconds = time.perf_counter() - t0
    return TransformJob(name=name, engine=used, inputs=paths, outputs=outputs, records=n_records, requests=n_requests,
                        seconds=seconds, strategy=strategy, max_payload_mb=max_payload_mb,
                        max_concurrent_transforms=max_concurrent_transforms, note=note)


def read_scores(path) -> list:
    """An ``.out`` file of the kit's model: a float per line, None for an empty line (an unknown pair)."""
    with open(path) as f:
        return [float(line) if line.strip() else None for line in f]
