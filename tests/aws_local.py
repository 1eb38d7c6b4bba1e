"""A local AWS for ``mode="aws"``: a moto server (the control plane: S3, IAM, SageMaker) on 127.0.0.1,
and what moto does not do done by the kit's real parts:

* moto runs no container, and marks every training and transform job ``Completed`` the moment it is
  created. :class:`FakePlatform` makes a new job ``InProgress`` instead (moto's server runs in this
  process, so its backend objects are updated directly) and then does the work:
* a training job: it runs the job's own ``sourcedir.tar.gz`` (downloaded from moto's S3) on the job's
  own training data under AWS's training toolkit, on as many local hosts as its ``InstanceCount``
  (more than one: with the parameter server, which the job's hyperparameters must enable)
  (:func:`recsys.sagemaker.training_job.run_training_job`), puts the resulting ``model.tar.gz`` at the
  job's ``ModelArtifacts`` path, and only then marks the job ``Completed``; when training fails, it
  marks the job ``Failed`` with the job's FailureReason at once;
* a transform job: it downloads the job's model (its repacked ``ModelDataUrl``) and the input objects
  from moto's S3, runs :func:`recsys.sagemaker.transform.run_transform` with the job's settings
  (BatchStrategy, MaxPayloadInMB, MaxConcurrentTransforms), uploads each ``<input>.out`` under the
  job's ``S3OutputPath``, then marks the job ``Completed`` (or ``Failed`` with the reason);
* moto serves no endpoint: when an endpoint appears, it downloads the model's (repacked)
  ``ModelDataUrl`` and serves it with a :class:`~recsys.sagemaker.endpoint.LocalEndpoint` on the port
  ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`` names, with the model's ``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT``.

Every URL is on 127.0.0.1, and a dead proxy catches anything else: no test reaches AWS.
"""

from __future__ import annotations

import contextlib
import json
import socket
import tarfile
import threading
import time
from pathlib import Path

REGION = "us-east-1"
BUCKET = "recsys-lab-test"


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def environment(moto_url: str, runtime_url: str, tmp: Path) -> dict:
    """Environment for the notebooks' kernel: the real SDK and boto3, offline."""
    config = tmp / "sagemaker-config.yaml"
    config.write_text("SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n"
                      f"      Session:\n        DefaultS3Bucket: {BUCKET}\n      TelemetryOptOut: true\n")
    return {
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": runtime_url,
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp / "absent-config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "absent-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "SAGEMAKER_USER_CONFIG_OVERRIDE": str(config), "SAGEMAKER_SUPPRESS_V2_WARNING": "1",
        # anything not on 127.0.0.1 goes to a closed port and fails at once
        "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
    }


def client(service: str, moto_url: str):
    import boto3

    return boto3.client(service, endpoint_url=moto_url, region_name=REGION, aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def _s3_split(uri: str):
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


class _JobStates:
    """moto's training and transform jobs start ``InProgress`` while this is active; :meth:`finish` ends one.

    moto (>= 4.1.10) sets ``Completed`` in each job's constructor; the server runs in this process
    (``ThreadedMotoServer``), so wrapping the two constructors and later updating the stored job objects
    (``moto.sagemaker.models.sagemaker_backends``) gives the SDK's waiters the states SageMaker reports."""

    def __init__(self) -> None:
        from moto.sagemaker import models

        self.models = models
        self._saved = {}

    def __enter__(self):
        m = self.models
        for cls, attrs in ((m.FakeTrainingJob, ("training_job_status", "secondary_status")),
                           (m.FakeTransformJob, ("transform_job_status",))):
            original = cls.__init__
            self._saved[cls] = original

            def init(job, *args, _original=original, _attrs=attrs, **kwargs):
                _original(job, *args, **kwargs)
                for a in _attrs:
                    setattr(job, a, "InProgress")
                for a in ("training_end_time", "transform_end_time"):
                    if hasattr(job, a):
                        setattr(job, a, None)

            cls.__init__ = init
        return self

    def __exit__(self, *exc):
        for cls, original in self._saved.items():
            cls.__init__ = original

    def _job(self, kind: str, name: str):
        for accounts in self.models.sagemaker_backends.values():
            backend = accounts.get(REGION)
            jobs = getattr(backend, f"{kind}_jobs", {}) if backend is not None else {}
            if name in jobs:
                return jobs[name]
        raise KeyError(f"no {kind} job {name} in moto")

    def finish(self, kind: str, name: str, failure: str | None = None) -> None:
        from moto.core.utils import utcnow

        job = self._job(kind, name)
        status = "Failed" if failure else "Completed"
        now = utcnow()
        if kind == "training":
            job.training_job_status = job.secondary_status = status
            job.training_end_time = now
        else:
            job.transform_job_status = status
            job.transform_end_time = now
        job.last_modified_time = now
        if failure:
            job.failure_reason = failure[:1024]


class FakePlatform:
    """Watches moto for training jobs, transform jobs and endpoints and does what SageMaker would (see the
    module doc). ``transform_engine`` is the transform container: ``auto`` (the real MXNet serving stack
    when installed), ``container`` or ``local``. ``provisioning_seconds``: how long a job waits before
    its work starts, as SageMaker's jobs wait for their instances (``InProgress``, ``Starting``)."""

    def __init__(self, moto_url: str, runtime_port: int, work: Path, transform_engine: str = "auto",
                 provisioning_seconds: float = 0.0) -> None:
        self.moto_url, self.runtime_port, self.work = moto_url, runtime_port, work
        self.transform_engine = transform_engine
        self.provisioning_seconds = provisioning_seconds
        self.sm, self.s3 = client("sagemaker", moto_url), client("s3", moto_url)
        self.jobs, self.transforms, self.endpoints, self.models = {}, {}, {}, {}
        self.errors = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._states = _JobStates()

    def __enter__(self):
        self._states.__enter__()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=60)
        for ep in self.endpoints.values():
            ep.stop()
        self._states.__exit__(*exc)

    def _run(self):
        while not self._stop.is_set():
            try:
                self._poll()
            except Exception as e:  # noqa: BLE001 - the platform's own faults, reported by the test
                self.errors.append(repr(e))
            time.sleep(0.1)

    def _poll(self):
        for job in self.sm.list_training_jobs()["TrainingJobSummaries"]:
            name = job["TrainingJobName"]
            if name not in self.jobs:
                self.jobs[name] = self._run_job("training", name, self._train)
        for job in self.sm.list_transform_jobs()["TransformJobSummaries"]:
            name = job["TransformJobName"]
            if name not in self.transforms:
                self.transforms[name] = self._run_job("transform", name, self._transform)
        live = set()
        for ep in self.sm.list_endpoints()["Endpoints"]:
            name = ep["EndpointName"]
            live.add(name)
            if name not in self.endpoints:
                self.endpoints[name] = self._serve(name)
        for name in list(self.endpoints):
            if name not in live:  # deleted in moto: the data plane goes too
                self.endpoints.pop(name).stop()

    def _run_job(self, kind: str, name: str, work) -> dict:
        """Run a job; ``Completed`` when its work is done and uploaded, ``Failed`` with the reason at once:
        a training job's ``output/failure`` (what SageMaker reports), else the error's first line."""
        try:
            time.sleep(self.provisioning_seconds)
            record = work(name)
        except Exception as e:  # noqa: BLE001 - the job's failure, reported as SageMaker reports it
            failure = self.work / "jobs" / name / "opt" / name / "output" / "failure"
            text = str(e).strip()
            reason = (failure.read_text() if kind == "training" and failure.is_file()
                      else f"{type(e).__name__}: {text.splitlines()[0] if text else ''}")
            self._states.finish(kind, name, failure=reason)
            return {"failure": reason}
        self._states.finish(kind, name)
        return record

    def _download_prefix(self, uri: str, dest: Path) -> list:
        bucket, prefix = _s3_split(uri)
        files = []
        for obj in self.s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
            if obj["Key"].endswith("/"):
                continue
            path = dest / Path(obj["Key"]).name
            path.parent.mkdir(parents=True, exist_ok=True)
            self.s3.download_file(bucket, obj["Key"], str(path))
            files.append(path)
        return files

    def _train(self, name: str) -> dict:
        from recsys.sagemaker.training_job import run_training_job

        d = self.sm.describe_training_job(TrainingJobName=name)
        hps = {k: json.loads(v) for k, v in d["HyperParameters"].items()}
        job_dir = self.work / "jobs" / name
        (job_dir / "data").mkdir(parents=True)
        bucket, key = _s3_split(hps.pop("sagemaker_submit_directory"))
        self.s3.download_file(bucket, key, str(job_dir / "sourcedir.tar.gz"))
        with tarfile.open(job_dir / "sourcedir.tar.gz") as tar:
            tar.extractall(job_dir / "source")
        files = []
        for channel in d["InputDataConfig"]:
            files += self._download_prefix(channel["DataSource"]["S3DataSource"]["S3Uri"], job_dir / "data")
        user_hps = {k: v for k, v in hps.items() if not k.startswith("sagemaker_")}
        instances = int(d["ResourceConfig"]["InstanceCount"])
        if instances > 1 and hps.get("sagemaker_parameter_server_enabled") is not True:
            raise ValueError(f"this platform runs a {instances}-instance job with the parameter server only "
                             "(distribution={'parameter_server': {'enabled': True}})")
        job = run_training_job(user_hps, {"train": files}, job_dir / "opt", source_dir=job_dir / "source",
                               job_name=name, log=lambda _: None, instance_count=instances)
        bucket, key = _s3_split(d["ModelArtifacts"]["S3ModelArtifacts"])
        self.s3.upload_file(str(job.model_data), bucket, key)
        return {"hyperparameters": user_hps, "model_data": job.model_data, "artifact": f"s3://{bucket}/{key}",
                "files": [f.name for f in files], "instances": instances, "metrics": job.metrics}

    def _transform(self, name: str) -> dict:
        from recsys.sagemaker.transform import run_transform

        d = self.sm.describe_transform_job(TransformJobName=name)
        container = self.sm.describe_model(ModelName=d["ModelName"])["PrimaryContainer"]
        job_dir = self.work / "transforms" / name
        job_dir.mkdir(parents=True)
        bucket, key = _s3_split(container["ModelDataUrl"])
        self.s3.download_file(bucket, key, str(job_dir / "model.tar.gz"))
        source = d["TransformInput"]["DataSource"]["S3DataSource"]
        inputs = self._download_prefix(source["S3Uri"], job_dir / "input")
        split, assemble = d["TransformInput"].get("SplitType"), d["TransformOutput"].get("AssembleWith")
        if (split, assemble, d["TransformInput"].get("ContentType")) != ("Line", "Line", "text/csv"):
            raise ValueError(f"this platform runs SplitType=Line, AssembleWith=Line, text/csv jobs; got {split}, "
                             f"{assemble}, {d['TransformInput'].get('ContentType')}")
        job = run_transform(job_dir / "model.tar.gz", inputs, job_dir / "output",
                            strategy=d.get("BatchStrategy", "MultiRecord"),
                            max_payload_mb=int(d.get("MaxPayloadInMB", 6)),
                            max_concurrent_transforms=int(d.get("MaxConcurrentTransforms") or 1),
                            engine=self.transform_engine, job_name=name, progress=False)
        out_bucket, out_prefix = _s3_split(d["TransformOutput"]["S3OutputPath"].rstrip("/"))
        uploaded = []
        for path in job.outputs:
            key = f"{out_prefix}/{path.name}" if out_prefix else path.name
            self.s3.upload_file(str(path), out_bucket, key)
            uploaded.append(f"s3://{out_bucket}/{key}")
        return {"settings": {k: d.get(k) for k in ("BatchStrategy", "MaxPayloadInMB", "MaxConcurrentTransforms")},
                "environment": d.get("Environment", {}), "model": d["ModelName"], "engine": job.engine,
                "inputs": [p.name for p in inputs], "outputs": uploaded, "records": job.records}

    def _serve(self, name: str):
        from recsys.sagemaker.endpoint import LocalEndpoint

        config = self.sm.describe_endpoint_config(
            EndpointConfigName=self.sm.describe_endpoint(EndpointName=name)["EndpointConfigName"])
        model_name = config["ProductionVariants"][0]["ModelName"]
        model = self.sm.describe_model(ModelName=model_name)
        container = model["PrimaryContainer"]
        tar = self.work / "endpoints" / name / "model.tar.gz"
        tar.parent.mkdir(parents=True, exist_ok=True)
        bucket, key = _s3_split(container["ModelDataUrl"])
        self.s3.download_file(bucket, key, str(tar))
        self.models[name] = {"name": model_name, "environment": container.get("Environment", {}), "model_data": tar,
                             "image": container.get("Image")}
        accept = container.get("Environment", {}).get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "application/json")
        return LocalEndpoint(tar, name=name, port=self.runtime_port, default_accept=accept).start()


@contextlib.contextmanager
def local_aws(tmp: Path, setenv):
    """A moto server on 127.0.0.1 (its in-process state reset first: every ``ThreadedMotoServer`` shares
    it), the SDK's environment set with ``setenv`` (e.g. ``monkeypatch.setenv``), an IAM role for
    SageMaker. Yields ``(moto url, runtime port, role ARN)``; the data plane goes to the runtime port."""
    import requests
    from moto.server import ThreadedMotoServer

    port, runtime_port = free_port(), free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    try:
        requests.post(url + "/moto-api/reset", timeout=10)
        for key, value in environment(url, f"http://127.0.0.1:{runtime_port}", tmp).items():
            setenv(key, value)
        policy = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
        role = client("iam", url).create_role(RoleName="recsys-lab-sagemaker",
                                              AssumeRolePolicyDocument=json.dumps(policy))["Role"]["Arn"]
        yield url, runtime_port, role
    finally:
        server.stop()
