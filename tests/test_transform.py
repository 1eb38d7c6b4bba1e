"""Batch Transform: the kit's local transform job on AWS's real MXNet serving stack and on the local
endpoint (``recsys.sagemaker.transform``, ``recsys transform``), and ``aws.batch_transform`` with the
SDK's Transformer against moto, whose transform job the test's platform runs from moto's S3.

Only one Multi Model Server can run on a machine, so the tests that start one run one at a time."""

import json

import numpy as np
import pytest

from conftest import OCT, run_cli
from recsys.artifacts import Recommender
from recsys.sagemaker import transform as bt

N = 200_000


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A trained model directory and its training-job-style model.tar.gz (no code/: the job adds it)."""
    from recsys.prepare import prepare_files
    from recsys.sagemaker.training_job import _pack
    from recsys.training import train_and_save

    d = tmp_path_factory.mktemp("transform-model")
    train_and_save(prepare_files([OCT], progress=False), d / "model", progress=False, epochs=1, num_embeddings=8)
    return d / "model", _pack(d / "model", d / "model.tar.gz")


@pytest.fixture(scope="module")
def pairs(model, tmp_path_factory):
    """N lines of user_id,product_id: known ids, 2% unknown ids, a few empty fields; the expected scores."""
    rec = Recommender.load(model[0])
    rng = np.random.default_rng(7)
    users = rng.choice(rec.user_ids, N)
    products = rng.choice(rec.product_ids, N)
    users[rng.random(N) < 0.01] = 1
    products[rng.random(N) < 0.01] = 2
    expected = rec.score(users, products)
    lines = [f"{u},{p}\n" for u, p in zip(users, products)]
    for i in (5, 77, N - 3):  # an empty field is an unknown id
        lines[i] = f",{products[i]}\n" if i % 2 else f"{users[i]},\n"
        expected[i] = np.nan
    path = tmp_path_factory.mktemp("transform-input") / "pairs.csv"
    path.write_text("".join(lines))
    return path, expected


def _check(out_file, expected):
    got = bt.read_scores(out_file)
    assert len(got) == len(expected)  # one line per input line
    got = np.array([np.nan if g is None else g for g in got])
    assert np.array_equal(np.isnan(got), np.isnan(expected))  # unknown pairs: empty lines, exactly there
    np.testing.assert_allclose(got[~np.isnan(got)], expected[~np.isnan(expected)], rtol=1e-6)


def _packing(path, limit):
    """Mini-batches MultiRecord must send: whole lines, greedily, each payload <= limit bytes."""
    sizes = [len(line) for line in path.read_bytes().splitlines(keepends=True)]
    batches, size = 0, 0
    for s in sizes:
        if size and size + s > limit:
            batches, size = batches + 1, 0
        size += s
    return batches + (1 if size else 0)


@pytest.mark.extended  # AWS's serving stack at size: ~13 s each
@pytest.mark.container
def test_200k_lines_through_the_mxnet_serving_stack_equal_in_process_scores(model, pairs, tmp_path):
    """One serving stack with what Batch Transform sets for MaxPayloadInMB=1: MultiRecord over 200,000
    lines, then SingleRecord over their first 1,000 (one request per line through MMS runs at about 150
    lines/s on 2 cores, so 200,000 would take over 20 minutes): the same lines, byte for byte."""
    import requests

    from recsys.sagemaker.container import ServingStack

    path, expected = pairs
    with ServingStack(bt.deployable(model[1], tmp_path), env=bt.batch_environment("MultiRecord", 1)) as stack:
        job = bt.run_transform(model[1], [path], tmp_path / "multi", max_payload_mb=1, engine=stack, progress=False)
        assert job.engine == bt.CONTAINER and job.records == N
        assert job.outputs == [tmp_path / "multi" / "pairs.csv.out"] and not list(tmp_path.glob("multi/.*part"))
        assert job.requests == _packing(path, 1 << 20) > 1  # MultiRecord: whole lines up to 1 MiB per request
        _check(job.outputs[0], expected)
        # the toolkit made SAGEMAKER_MAX_PAYLOAD_IN_MB MMS's request limit: a 1.2 MB body is refused
        body = b"1,2\n" * 300_000
        r = requests.post(stack.url + "/invocations", data=body, headers={"Content-Type": "text/csv"}, timeout=60)
        assert r.status_code == 413
        head = tmp_path / "head" / "pairs.csv"
        head.parent.mkdir()
        head.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:1000]))
        single = bt.run_transform(model[1], [head], tmp_path / "single", strategy="SingleRecord", engine=stack,
                                  max_concurrent_transforms=2, progress=False)
    assert single.engine == bt.CONTAINER and single.requests == single.records == 1000
    multi_head = b"".join(job.outputs[0].read_bytes().splitlines(keepends=True)[:1000])
    assert single.outputs[0].read_bytes() == multi_head


def test_200k_lines_through_the_local_endpoint_equal_in_process_scores_in_both_strategies(model, pairs, tmp_path):
    path, expected = pairs
    job = bt.run_transform(model[0], [path], tmp_path / "multi", engine="local", progress=False)
    assert job.engine == bt.LOCAL and job.records == N and job.requests == _packing(path, 6 << 20) == 1
    _check(job.outputs[0], expected)
    head = tmp_path / "pairs.csv"
    head.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:3000]))
    single = bt.run_transform(model[0], [head], tmp_path / "single", strategy="SingleRecord", engine="local",
                              progress=False)
    assert single.requests == 3000
    multi_head = b"".join(job.outputs[0].read_bytes().splitlines(keepends=True)[:3000])
    assert single.outputs[0].read_bytes() == multi_head


def test_a_record_over_the_payload_limit_fails_the_job_clearly(model, tmp_path):
    path = tmp_path / "in" / "big.csv"
    path.parent.mkdir()
    path.write_text("1,2\n" + "3" * 1_100_000 + ",4\n" + "5,6\n")
    out = tmp_path / "out"
    with pytest.raises(bt.TransformJobError) as e:
        bt.run_transform(model[0], [path], out, max_payload_mb=1, engine="local", progress=False)
    assert str(e.value) == ("big.csv: line 2 is a record of 1,100,003 bytes, over MaxPayloadInMB=1 (1,048,576 bytes); "
                            "the job fails, as on SageMaker")
    assert list(out.iterdir()) == []  # no .out and no partial file
    r = run_cli("transform", model[0], path, "--out", tmp_path / "cli", "--max-payload-mb", "1", "--engine", "local", "-q")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"recsys transform: error: {e.value}\n"
    assert not (tmp_path / "cli").exists()  # the command writes its directory whole or not at all


@pytest.mark.extended  # AWS's serving stack at size: ~13 s each
@pytest.mark.container
def test_an_answer_over_the_serving_stacks_limit_fails_alike_on_both_engines(tmp_path):
    """MMS refuses answers over 6,553,500 bytes (max_response_size; the payload setting does not change
    it): 400,000 short lines (3 MB) get a 7.6 MB CSV answer. The real stack's worker dies (500); the
    local endpoint would answer, so the job applies the same limit and fails with the same advice."""
    import types

    import pandas as pd

    from recsys.artifacts import save_model
    from recsys.model import build

    ids = np.arange(1, 1001, dtype=np.int64)  # short ids, short lines
    prepared = types.SimpleNamespace(
        n_users=1000, n_items=1000, users=pd.DataFrame({"user_id": ids}), products=pd.DataFrame({"product_id": ids}),
        train=pd.DataFrame({"user": np.zeros(1, np.int32), "item": np.zeros(1, np.int32),
                            "event_type_digit": np.ones(1, np.int8)}))
    save_model(tmp_path / "model", build(1000, 1000, 8, 0.5, ctx="cpu", init_magnitude=1, seed=0), prepared)
    rng = np.random.default_rng(0)
    path = tmp_path / "short.csv"
    users, products = rng.integers(1, 1001, 400_000), rng.integers(1, 1001, 400_000)
    path.write_text("".join(f"{u},{p}\n" for u, p in zip(users, products)))
    assert path.stat().st_size < 6 << 20  # one mini-batch
    for engine, expected in (("local", "over the MXNet serving stack's 6,553,500-byte limit"),
                             ("container", "500 Internal Server Error (the serving stack refuses answers over "
                                           "6,553,500 bytes")):
        with pytest.raises(bt.TransformJobError, match="lower max_payload_mb") as e:
            bt.run_transform(tmp_path / "model", [path], tmp_path / engine, engine=engine, max_retries=0,
                             progress=False)
        assert expected in str(e.value) and str(e.value).startswith("short.csv: the ")
        assert not (tmp_path / engine / "short.csv.out").exists()


def test_cli_transform_one_json_line_and_the_out_file(model, pairs, tmp_path):
    path, expected = pairs
    head = tmp_path / "in" / "head.csv"
    head.parent.mkdir()
    head.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:500]))
    r = run_cli("transform", model[0], head, "--out", tmp_path / "out", "--engine", "local", "--strategy", "SingleRecord")
    assert r.returncode == 0, r.stderr
    (line,) = r.stdout.splitlines()
    result = json.loads(line)
    assert result["engine"] == "local-endpoint" and result["records"] == result["requests"] == 500
    assert result["outputs"] == [str(tmp_path / "out" / "head.csv.out")] and result["strategy"] == "SingleRecord"
    _check(tmp_path / "out" / "head.csv.out", expected[:500])
    r = run_cli("transform", model[0], head, "--out", tmp_path / "out", "--engine", "local")
    assert r.returncode == 2 and "is not empty: pass --force" in r.stderr and r.stderr.count("\n") == 1


def test_mini_batches_follow_the_line_split_rules(tmp_path):
    """SplitType=Line: a record per line with its newline, the last line without one too; MultiRecord packs
    whole records up to the limit in order; SingleRecord one each."""
    path = tmp_path / "x.csv"
    path.write_bytes(b"a\n" * 5 + b"tail")
    assert list(bt.records(path, block=3)) == [(1, b"a\n"), (2, b"a\n"), (3, b"a\n"), (4, b"a\n"), (5, b"a\n"),
                                              (6, b"tail")]
    assert [(f, n) for f, n, _ in bt.mini_batches(path, "SingleRecord", 1)] == [(i, 1) for i in range(1, 7)]
    assert list(bt.mini_batches(path, "MultiRecord", 1)) == [(1, 6, b"a\n" * 5 + b"tail")]
    assert bt.batch_environment("SingleRecord", 2, 3) == {
        "SAGEMAKER_BATCH": "True", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "2", "SAGEMAKER_BATCH_STRATEGY": "SINGLE_RECORD",
        "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "3"}
    for bad in ({"strategy": "Batch"}, {"max_payload_mb": 7}, {"max_payload_mb": 0}, {"max_concurrent_transforms": 0}):
        with pytest.raises(ValueError):
            bt.check_settings(**{"strategy": "MultiRecord", "max_payload_mb": 6, **bad})


@pytest.fixture
def local_aws(tmp_path, monkeypatch):
    """moto on 127.0.0.1 with the SDK pointed at it (``aws_local.local_aws``): (url, session, role)."""
    import aws_local
    from recsys.sagemaker import aws

    with aws_local.local_aws(tmp_path, monkeypatch.setenv) as (url, _, role):
        yield url, aws.session("us-east-1"), role


@pytest.mark.container
def test_aws_batch_transform_against_moto_run_by_the_platform_from_s3(model, pairs, local_aws, tmp_path):
    from aws_local import FakePlatform, client
    from recsys.sagemaker import aws

    url, session, role = local_aws
    path, expected = pairs
    bucket = session.default_bucket()
    model_uri = session.upload_data(str(model[1]), bucket=bucket, key_prefix="lab/model")
    data = session.upload_data(str(path), bucket=bucket, key_prefix="lab/transform/input")
    with FakePlatform(url, 0, tmp_path / "platform", transform_engine="local") as platform:
        transformer = aws.batch_transform(model_uri, f"s3://{bucket}/lab/transform/input/",
                                          f"s3://{bucket}/lab/transform/output", sagemaker_session=session, role=role,
                                          job_name="recsys-transform-test")
        assert platform.errors == []
    desc = client("sagemaker", url).describe_transform_job(TransformJobName="recsys-transform-test")
    assert desc["TransformJobStatus"] == "Completed" and desc["BatchStrategy"] == "MultiRecord"
    assert desc["MaxPayloadInMB"] == 6 and desc["TransformInput"]["SplitType"] == "Line"
    assert desc["TransformInput"]["ContentType"] == "text/csv" and desc["TransformOutput"]["AssembleWith"] == "Line"
    assert desc["TransformOutput"]["Accept"] == "text/csv" and desc["ModelName"] == transformer.model_name
    ran = platform.transforms["recsys-transform-test"]
    assert ran["inputs"] == ["pairs.csv"] and ran["records"] == N and ran["engine"] == bt.LOCAL
    assert ran["outputs"] == [f"s3://{bucket}/lab/transform/output/pairs.csv.out"] == [data.replace(
        "lab/transform/input", "lab/transform/output") + ".out"]
    # the model the SDK created: the repacked artifact, with the kit's serving code and environment
    container = client("sagemaker", url).describe_model(ModelName=transformer.model_name)["PrimaryContainer"]
    assert container["Environment"]["SAGEMAKER_PROGRAM"] == "recommender.py"
    assert container["Environment"]["SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"] == "text/csv"
    out = tmp_path / "pairs.csv.out"
    client("s3", url).download_file(bucket, "lab/transform/output/pairs.csv.out", str(out))
    _check(out, expected)


@pytest.mark.container
def test_aws_batch_transform_failure_reaches_the_sdk_with_its_reason(model, local_aws, tmp_path):
    from sagemaker.exceptions import UnexpectedStatusException

    from aws_local import FakePlatform
    from recsys.sagemaker import aws

    url, session, role = local_aws
    bucket = session.default_bucket()
    big = tmp_path / "big.csv"
    big.write_text("1,2\n" + "3" * 1_100_000 + ",4\n")
    model_uri = session.upload_data(str(model[1]), bucket=bucket, key_prefix="lab/model")
    session.upload_data(str(big), bucket=bucket, key_prefix="lab/big")
    with FakePlatform(url, 0, tmp_path / "platform", transform_engine="local") as platform:
        with pytest.raises(UnexpectedStatusException,
                           match="line 2 is a record of 1,100,003 bytes, over MaxPayloadInMB=1"):
            aws.batch_transform(model_uri, f"s3://{bucket}/lab/big/", f"s3://{bucket}/lab/big-out",
                                sagemaker_session=session, role=role, max_payload_mb=1, job_name="too-big")
        assert platform.errors == [] and "failure" in platform.transforms["too-big"]
