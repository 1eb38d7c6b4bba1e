"""A local AWS for ``mode="aws"``: a moto server (the control plane: S3, IAM, SageMaker) on 127.0.0.1,
and what moto does not do done by the kit's real parts:

* moto runs no container: when a training job appears, :class:`FakePlatform` runs the job's own
  ``sourcedir.tar.gz`` (downloaded from moto's S3) on the job's own training data under AWS's
  training toolkit (:func:`recsys.sagemaker.local.run_training_job`) and puts the resulting
  ``model.tar.gz`` at the job's ``ModelArtifacts`` path;
* moto serves no endpoint: when an endpoint appears, it downloads the model's (repacked)
  ``ModelDataUrl`` and serves it with a :class:`~recsys.sagemaker.local.LocalEndpoint` on the port
  ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`` names, with the model's ``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT``.

Every URL is on 127.0.0.1, and a dead proxy catches anything else: no test reaches AWS.
"""

from __future__ import annotations

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


class FakePlatform:
    """Watches moto for training jobs and endpoints and does what SageMaker would (see the module doc)."""

    def __init__(self, moto_url: str, runtime_port: int, work: Path) -> None:
        self.moto_url, self.runtime_port, self.work = moto_url, runtime_port, work
        self.sm, self.s3 = client("sagemaker", moto_url), client("s3", moto_url)
        self.jobs, self.endpoints, self.models = {}, {}, {}
        self.errors = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)
        for ep in self.endpoints.values():
            ep.stop()

    def _run(self):
        while not self._stop.is_set():
            try:
                self._poll()
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.errors.append(repr(e))
            time.sleep(0.1)

    def _poll(self):
        for job in self.sm.list_training_jobs()["TrainingJobSummaries"]:
            name = job["TrainingJobName"]
            if name not in self.jobs:
                self.jobs[name] = self._train(name)
        live = set()
        for ep in self.sm.list_endpoints()["Endpoints"]:
            name = ep["EndpointName"]
            live.add(name)
            if name not in self.endpoints:
                self.endpoints[name] = self._serve(name)
        for name in list(self.endpoints):
            if name not in live:  # deleted in moto: the data plane goes too
                self.endpoints.pop(name).stop()

    def _train(self, name: str) -> dict:
        from recsys.sagemaker.local import run_training_job

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
            bucket, prefix = _s3_split(channel["DataSource"]["S3DataSource"]["S3Uri"])
            for obj in self.s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
                dest = job_dir / "data" / Path(obj["Key"]).name
                self.s3.download_file(bucket, obj["Key"], str(dest))
                files.append(dest)
        user_hps = {k: v for k, v in hps.items() if not k.startswith("sagemaker_")}
        job = run_training_job(user_hps, {"train": files}, job_dir / "opt", source_dir=job_dir / "source",
                               job_name=name, log=lambda _: None)
        bucket, key = _s3_split(d["ModelArtifacts"]["S3ModelArtifacts"])
        self.s3.upload_file(str(job.model_data), bucket, key)
        return {"hyperparameters": user_hps, "model_data": job.model_data, "artifact": f"s3://{bucket}/{key}",
                "files": [f.name for f in files]}

    def _serve(self, name: str):
        from recsys.sagemaker.local import LocalEndpoint

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
