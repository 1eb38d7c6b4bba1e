"""``mode="aws"`` end to end, offline: notebooks 03 and 04 run unchanged under papermill with the real
SageMaker SDK v2 and boto3 against a moto server on 127.0.0.1 (see ``aws_local.py`` for what stands in
for the platform: AWS's training toolkit for the job, the local endpoint for the data plane)."""

import json
import tarfile

import numpy as np
import pytest

from aws_local import BUCKET, FakePlatform, client, environment, free_port
from recsys.artifacts import Recommender

pytestmark = [pytest.mark.container, pytest.mark.notebook]


@pytest.fixture
def moto_server():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_notebooks_03_and_04_in_aws_mode_against_a_local_aws(tmp_path, moto_server, monkeypatch):
    from test_notebooks import run_notebook

    runtime_port = free_port()
    env = environment(moto_server, f"http://127.0.0.1:{runtime_port}", tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    urls = [v for k, v in env.items() if k.startswith("AWS_ENDPOINT_URL")]
    assert urls and all(u.startswith("http://127.0.0.1:") for u in urls)  # never real AWS
    role = client("iam", moto_server).create_role(
        RoleName="recsys-lab-sagemaker", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]}),
    )["Role"]["Arn"]

    out = tmp_path / "out"
    run_notebook("01_explore_clean_prepare", out)
    with FakePlatform(moto_server, runtime_port, tmp_path / "platform") as platform:
        run_notebook("03_sagemaker_train_deploy", out, mode="aws", role=role, epochs=2, latency_requests=20)
        m3 = json.loads((out / "metrics" / "03_sagemaker_train_deploy.json").read_text())
        sm = client("sagemaker", moto_server)
        assert [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]] == ["recsys-lab"]  # kept for 04
        run_notebook("04_sql_scoring", out, mode="aws", prepared_dir=str(out / "prepared"), progress=False)
        m4 = json.loads((out / "metrics" / "04_sql_scoring.json").read_text())
        assert platform.errors == []

    # the training job: the job's own bundle and data, under the real training toolkit
    (job,) = platform.jobs.values()
    assert job["hyperparameters"] == {"epochs": 2, "lr": 0.02, "momentum": 0.9, "num_embeddings": 64, "opt": "sgd",
                                      "wd": 0.0}
    assert job["files"] == ["rees46_2019-Oct_head_0000-0250UTC.csv.gz"]
    assert job["artifact"].startswith(f"s3://{BUCKET}/")
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
    # the clean-up cell of notebook 04 left nothing behind
    assert sm.list_endpoints()["Endpoints"] == []
    assert sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert sm.list_models()["Models"] == []
