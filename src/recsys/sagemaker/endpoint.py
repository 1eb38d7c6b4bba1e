"""SageMaker offline: a local endpoint.

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

import importlib.util
import json
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .. import serving
from .bundle import ENTRY_POINT, build_bundle
from .training_job import REGION, TrainingJob, _pack

ACCOUNT = "000000000000"
VARIANT = "AllTraffic"
#: The Accept a missing or ``*/*`` Accept becomes on the kit's endpoints (``deploy()`` sets the same
#: ``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT`` on AWS): Aurora's CSV calls get CSV.
DEFAULT_ACCEPT = serving.CSV


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


#: A refused request's body up to this size is read and dropped (64 KiB at a time, never held) before
#: the answer, so that a client that sends its whole body before it reads (urllib, http.client, curl
#: without ``Expect: 100-continue``) gets the 413/404/405/503 instead of a broken pipe or a reset. Past it
#: the endpoint answers first and then closes, after a short lingering read (:data:`LINGER_SECONDS`).
DRAIN_LIMIT_BYTES = 2 * serving.MAX_BODY_BYTES
#: After answering a body it will not read, how long the endpoint keeps reading and dropping what the
#: client still sends (so that the kernel does not reset the connection under the answer) before closing.
LINGER_SECONDS = 2.0
#: A connection that sends nothing for this long is closed (a stalled body must not hold a thread or
#: its bytes of the in-flight budget forever).
SOCKET_TIMEOUT_SECONDS = 60


def _drain(stream, length: int, block: int = 1 << 16) -> None:
    while length > 0:
        chunk = stream.read(min(block, length))
        if not chunk:
            break
        length -= len(chunk)


def _declared_length(headers):
    """The request's ``Content-Length`` as an int, or None when it is missing or invalid."""
    try:
        length = int(headers.get("Content-Length", ""))
    except ValueError:
        return None
    return length if length >= 0 else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "recsys-local-endpoint"
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stalls
    timeout = SOCKET_TIMEOUT_SECONDS

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

    def handle_expect_100(self):
        """``Expect: 100-continue``: a body over the limit is refused before the client sends it."""
        length = _declared_length(self.headers)
        if length is not None and length > serving.MAX_BODY_BYTES:
            self._body_unsent = True  # nothing to drain: the client waits for this answer before it sends
            self._refuse(413, serving.too_large(length).message)
            return False
        return super().handle_expect_100()

    def _drop_body(self) -> bool:
        """Read and drop the unread body of a refused request when it is within :data:`DRAIN_LIMIT_BYTES`;
        False when it is not (or its length is unknown): then the answer goes first."""
        if getattr(self, "_body_unsent", False):
            return True
        length = _declared_length(self.headers)
        if self.headers.get("Transfer-Encoding") or length is None or length > DRAIN_LIMIT_BYTES:
            return False
        _drain(self.rfile, length)
        return True

    def _linger(self) -> None:
        """Close after an answer to a body that was not read: stop writing, then read and drop what the
        client still sends for up to :data:`LINGER_SECONDS`, so that the answer is not lost to a reset."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_SECONDS
            while (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                if not self.connection.recv(1 << 16):
                    break
        except OSError:
            pass

    def _refuse(self, status: int, message: str, headers: dict | None = None) -> None:
        """An error before the body is read, in the inference toolkit's shape (the message as reason
        phrase and body, no Content-Type), after the body is dropped (up to :data:`DRAIN_LIMIT_BYTES`;
        past it the answer goes first); then close."""
        self._refuse_with(lambda: self._send(status, (message + "\n").encode(), None, headers, reason=message))

    def _refuse_with(self, answer) -> None:
        self.close_connection = True
        dropped = self._drop_body()
        answer()
        if not dropped:
            self._linger()

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
            self._refuse_with(lambda: self._runtime_error(
                400, "ValidationError", {"Message": f"Endpoint {route[1]} of account {ACCOUNT} not found."}))
            return
        length = self._content_length()
        if length is None:
            return
        # bounded memory: the body's bytes are reserved before a byte of it is read; past the in-flight
        # budget the client is asked to retry (its body read and dropped, so it sees the answer, not a reset)
        if not ep._reserve(length):
            _drain(self.rfile, length)
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

    def handle_error(self, request, client_address):
        """A client that hung up before its answer was written (a timeout, a cancelled call) is not the
        endpoint's fault: no traceback on stderr for it; anything else is printed as usual."""
        import sys

        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


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
