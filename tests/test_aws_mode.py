"""``mode="aws"`` end to end, offline: notebooks 03 and 04 run unchanged under papermill with the real
SageMaker SDK v2 and boto3 against a moto server on 127.0.0.1 (see ``aws_local.py`` for what stands in
for the platform: AWS's training toolkit for the job, the kit's transform job for Batch Transform, the
local endpoint for the data plane). Jobs are ``InProgress`` until the platform has done their work, so
the SDK's waiters return only then, and a failed job reaches the SDK with its FailureReason."""

import json
import shutil
import tarfile
import threading
import time

import numpy as np
import pytest

import aws_local
from aws_local import BUCKET, FakePlatform, client
from conftest import OCT
from recsys.artifacts import Recommender

pytestmark = [pytest.mark.container, pytest.mark.notebook]

#: Notebook 03's seed hyperparameters, none at its default: a value the entry point dropped would show.
SEED_HPS = {"epochs": 2, "num_embeddings": 16, "opt": "nag", "lr": 0.03, "momentum": 0.8, "wd": 1e-05}


@pytest.fixture
def local_aws(tmp_path, monkeypatch):
    with aws_local.local_aws(tmp_path, monkeypatch.setenv) as env:
        yield env


@pytest.fixture
def prepared_out(lab, tmp_path):
    """Notebook 01's output (notebook 03 in aws mode reads its prepared ids), from the session's make run-all."""
    out = tmp_path / "nb01"
    shutil.copytree(lab.out / "prepared", out / "prepared")
    shutil.copytree(lab.out / "metrics", out / "metrics")
    return out


def _trained_config(s3, artifact: str) -> dict:
    """``config.json`` of the model.tar.gz the job put on S3: what the job really trained with."""
    import io

    bucket, _, key = artifact[len("s3://"):].partition("/")
    data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return json.loads(tar.extractfile("config.json").read())


@pytest.mark.extended  # both notebooks, a training job and a transform job: ~1 min
def test_notebooks_03_and_04_in_aws_mode_against_a_local_aws(tmp_path, local_aws, prepared_out):
    from test_notebooks import run_notebook

    moto_url, runtime_port, role = local_aws
    out = tmp_path / "out"
    shutil.copytree(prepared_out, out)
    # the transform job runs on the local endpoint here; tests/test_transform.py runs it on the real stack
    with FakePlatform(moto_url, runtime_port, tmp_path / "platform", transform_engine="local") as platform:
        run_notebook("03_sagemaker_train_deploy", out, mode="aws", role=role, preset="seed", latency_requests=20,
                     **SEED_HPS)
        m3 = json.loads((out / "metrics" / "03_sagemaker_train_deploy.json").read_text())
        sm = client("sagemaker", moto_url)
        assert [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]] == ["recsys-lab"]  # kept for 04
        run_notebook("04_sql_scoring", out, mode="aws", prepared_dir=str(out / "prepared"), progress=False)
        m4 = json.loads((out / "metrics" / "04_sql_scoring.json").read_text())
        assert platform.errors == []

    # the training job: the job's own bundle and data, under the real training toolkit
    (name, job), = platform.jobs.items()
    assert sm.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] == "Completed"
    assert job["files"] == ["rees46_2019-Oct_head_0000-0250UTC.csv.gz"]
    assert job["artifact"].startswith(f"s3://{BUCKET}/")
    # what the job trained with, from its own model (not what moto recorded): every hyperparameter sent
    trained = _trained_config(client("s3", moto_url), job["artifact"])
    assert job["hyperparameters"] == {"preset": "seed", **SEED_HPS}  # what the SDK sent
    assert {k: trained["hyperparameters"].get(k) for k in SEED_HPS} == SEED_HPS
    assert trained["architecture"]["num_emb"] == SEED_HPS["num_embeddings"]
    # the model the SDK created: the kit's environment, and the repacked artifact the container would get
    (model,) = platform.models.values()
    env_ = model["environment"]
    assert env_["SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"] == "text/csv"
    assert env_["SAGEMAKER_PROGRAM"] == "recommender.py" and env_["SAGEMAKER_SUBMIT_DIRECTORY"] == "/opt/ml/model/code"
    assert "mxnet-inference:1.9.0-cpu-py38" in model["image"]
    unpacked = tmp_path / "deployed"
    with tarfile.open(model["model_data"]) as tar:
        names = tar.getnames()
        tar.extractall(unpacked)
    assert {"model.params", "model_info.json", "code/recommender.py", "code/recsys/serving.py"} <= set(names)
    assert "code/requirements.txt" not in names and not [n for n in names if n.lower().endswith("manifest.json")]
    # predictions through the SDK predictor and the runtime client equal in-process scores
    rec = Recommender.load(unpacked)
    pred = m3["predictions"]
    expected = rec.score([pred["user_id"]] * len(pred["product_id"]), pred["product_id"])
    np.testing.assert_allclose(pred["json"], expected, rtol=1e-6)
    np.testing.assert_allclose(pred["csv"], expected, rtol=1e-6)
    assert m3["mode"] == "aws" and m4["predict_rows"] == m4["inputs_rows"] == 100_000 and m4["unknown_pairs"] == 0
    # notebook 04's Batch Transform: a SageMaker transform job on the endpoint's model, run by the platform
    (tname, tjob), = platform.transforms.items()
    assert m4["transform"]["job_name"] == tname and tjob["model"] == model["name"]
    assert tjob["settings"] == {"BatchStrategy": "MultiRecord", "MaxPayloadInMB": 6, "MaxConcurrentTransforms": None}
    assert tjob["records"] == m4["transform"]["rows"] == 20_000 and tjob["outputs"][0].endswith("/pairs.csv.out")
    assert m4["transform"]["agreement"] == {"pairs": 20_000, "null_mismatch": 0, "max_abs_diff": 0.0}
    # the clean-up cell of notebook 04 left nothing behind
    assert sm.list_endpoints()["Endpoints"] == []
    assert sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert sm.list_models()["Models"] == []


def _estimator(tmp_path, role, hyperparameters, **settings):
    from recsys.sagemaker import aws

    session = aws.session("us-east-1")
    bucket = session.default_bucket()
    train = aws.upload_training_data(session, [OCT], bucket, "lab")
    est = aws.make_estimator(role, tmp_path / "bundle", sagemaker_session=session, hyperparameters=hyperparameters,
                             output_path=f"s3://{bucket}/lab/output", **settings)
    return est, train


def _fit_with_deadline(est, train, seconds: float):
    """``est.fit(...)`` (no log tailing: the SDK's job waiter, which polls every 5 s) in a thread: its
    exception or None, and whether it returned within ``seconds``."""
    result = {}

    def fit():
        try:
            est.fit({"train": train}, logs=False)
        except Exception as e:  # noqa: BLE001 - handed to the test
            result["error"] = e

    t = threading.Thread(target=fit, daemon=True)
    t.start()
    t.join(seconds)
    return result.get("error"), not t.is_alive()


def test_fit_returns_only_after_the_platform_has_trained_and_uploaded(tmp_path, local_aws):
    """The job waits 8 s for its "instances" first (longer than the SDK's 5 s poll), so a job that
    looked Completed before its work was done would let fit() return without an artifact."""
    moto_url, runtime_port, role = local_aws
    s3 = client("s3", moto_url)
    with FakePlatform(moto_url, runtime_port, tmp_path / "platform", provisioning_seconds=8) as platform:
        est, train = _estimator(tmp_path, role, {"preset": "seed", "epochs": 1, "num_embeddings": 8})
        error, returned = _fit_with_deadline(est, train, 300)
        assert returned and error is None, error
        bucket, _, key = est.model_data[len("s3://"):].partition("/")
        s3.head_object(Bucket=bucket, Key=key)  # the artifact is there when fit returns, not later
        assert platform.errors == []
    assert _trained_config(s3, est.model_data)["hyperparameters"].get("num_embeddings") == 8


@pytest.mark.extended  # two hosts under the training toolkit
def test_a_two_instance_job_trains_on_two_hosts_with_the_parameter_server(tmp_path, local_aws):
    """``make_estimator(instance_count=2)``: the job SageMaker gets has two instances and the parameter
    server's flag, and it trains as two hosts (worker and server on each) into one model."""
    moto_url, runtime_port, role = local_aws
    s3 = client("s3", moto_url)
    with FakePlatform(moto_url, runtime_port, tmp_path / "platform") as platform:
        est, train = _estimator(tmp_path, role, {"preset": "side", "epochs": 1}, instance_count=2)
        error, returned = _fit_with_deadline(est, train, 300)
        assert returned and error is None, error
        assert platform.errors == []
    desc = client("sagemaker", moto_url).describe_training_job(TrainingJobName=est.latest_training_job.name)
    assert desc["ResourceConfig"]["InstanceCount"] == 2
    assert json.loads(desc["HyperParameters"]["sagemaker_parameter_server_enabled"]) is True
    (job,) = platform.jobs.values()
    assert job["instances"] == 2 and job["metrics"]["hosts"] == 2 and job["metrics"]["traffic"]["steps"] > 0
    assert _trained_config(s3, est.model_data)["hyperparameters"].get("preset") == "side"


def test_a_failing_training_job_fails_fit_at_once_with_its_reason(tmp_path, local_aws):
    from sagemaker.exceptions import UnexpectedStatusException

    moto_url, runtime_port, role = local_aws
    with FakePlatform(moto_url, runtime_port, tmp_path / "platform") as platform:
        est, train = _estimator(tmp_path, role, {"preset": "seed", "epochs": "ten"})
        t0 = time.monotonic()
        error, returned = _fit_with_deadline(est, train, 120)
        assert returned, "fit still waiting 120 s after the job failed"
        assert isinstance(error, UnexpectedStatusException) and time.monotonic() - t0 < 60
        assert "HyperparameterError: argument --epochs" in str(error) and "'ten'" in str(error)
        assert platform.errors == []
    desc = client("sagemaker", moto_url).describe_training_job(TrainingJobName=est.latest_training_job.name)
    assert desc["TrainingJobStatus"] == "Failed" and desc["FailureReason"].startswith("HyperparameterError: ")


def test_aws_cleanup_deletes_the_endpoint_its_configuration_and_its_model(local_aws):
    from sagemaker.predictor import Predictor

    from recsys.sagemaker import aws

    moto_url, _, role = local_aws
    sm = client("sagemaker", moto_url)
    sm.create_model(ModelName="m1", ExecutionRoleArn=role, PrimaryContainer={"Image": "img", "ModelDataUrl": "s3://b/k"})
    sm.create_endpoint_config(EndpointConfigName="c1", ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": "m1", "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}])
    sm.create_endpoint(EndpointName="e1", EndpointConfigName="c1")
    sm.create_model(ModelName="other", ExecutionRoleArn=role, PrimaryContainer={"Image": "img"})
    aws.cleanup(Predictor("e1", sagemaker_session=aws.session("us-east-1")))
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert [m["ModelName"] for m in sm.list_models()["Models"]] == ["other"]  # only the endpoint's own


@pytest.mark.slow  # 50 s: a second training job and the SDK's 30 s endpoint waiter (aws.cleanup itself: above)
def test_notebook_03_deletes_its_endpoint_when_asked(tmp_path, local_aws, prepared_out):
    from test_notebooks import run_notebook

    moto_url, runtime_port, role = local_aws
    out = tmp_path / "out"
    shutil.copytree(prepared_out, out)
    with FakePlatform(moto_url, runtime_port, tmp_path / "platform") as platform:
        nb = run_notebook("03_sagemaker_train_deploy", out, mode="aws", role=role, preset="seed", epochs=1,
                          num_embeddings=8, latency_requests=5, delete_endpoint=True)
        assert platform.errors == [] and len(platform.endpoints) == 0  # the platform saw the endpoint go
    sm = client("sagemaker", moto_url)
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert sm.list_models()["Models"] == []
    assert "recsys-lab, its configuration and its model deleted" in nb.read_text()
