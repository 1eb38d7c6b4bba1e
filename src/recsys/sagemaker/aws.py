"""``mode="aws"``: the real SageMaker Python SDK v2 (``sagemaker<3``: v3 has no MXNet estimator).

Nothing here calls AWS until a notebook cell asks for it (``fit``, ``deploy``, upload); without
credentials those calls fail with the SDK's own error. Offline, the tests run notebooks 03 and 04
in ``mode="aws"`` against a local AWS API (a moto server) with the data plane routed to a local
endpoint (``tests/test_aws_mode.py``), so every call here runs for real, against 127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path

from .bundle import ENTRY_POINT, build_bundle
from .entry import SEED_HYPERPARAMETERS
from .sdk import import_sdk

FRAMEWORK_VERSION = "1.9.0"
PY_VERSION = "py38"
#: Training: the cheapest GPU that runs the mxnet-cu112 wheel (T4, sm_75). The ml.p2 (K80) and
#: ml.p3 families are retired, and ml.p5's H100 has no kernels in the wheel (see recsys.mx).
TRAIN_INSTANCE_TYPE = "ml.g4dn.xlarge"
#: Hosting: a current general-purpose CPU type. Scoring is a dot product of precomputed vectors, so
#: a GPU buys nothing; 8 GiB (ml.m5.large, vs 4 GiB on ml.c5.large) holds the full-data model's
#: vectors (4.2M users x 64 floats, about 1 GiB) once per serving worker (2 on 2 vCPUs).
DEPLOY_INSTANCE_TYPE = "ml.m5.large"
#: Batch Transform runs the same serving container as the endpoint: the same instance type.
TRANSFORM_INSTANCE_TYPE = DEPLOY_INSTANCE_TYPE


def session(region: str | None = None, boto_session=None):
    """A ``sagemaker.Session`` (the default AWS credential chain unless a boto3 session is given)."""
    import boto3

    sagemaker = import_sdk()
    return sagemaker.Session(boto_session=boto_session or boto3.Session(region_name=region))


#: The longest a training job may run (the SDK's default, 24 h), and with spot instances the longest
#: it may wait for capacity as well (``max_wait`` must be at least ``max_run``).
MAX_RUN = 24 * 60 * 60


def estimator_settings(instance_count: int = 1, hyperparameters: dict | None = None, use_spot_instances: bool = False,
                       max_run: int = MAX_RUN, max_wait: int | None = None, checkpoint_s3_uri: str | None = None) -> dict:
    """The keyword arguments :func:`make_estimator` gives the SDK's ``MXNet`` besides the code and the
    role, checked before anything is sent: ``hyperparameters`` as given (default: the workshop's,
    ``job_hyperparameters("seed")``); with ``instance_count`` above 1 the parameter server on
    (``distribution``), which the seed, implicit and side presets train on; with ``use_spot_instances``
    a ``max_wait`` (default ``max_run``) and a ``checkpoint_s3_uri``, to which the entry point's
    per-epoch checkpoints (``/opt/ml/checkpoints``) are synced, so an interrupted job resumes."""
    from ..presets import check, kind

    hp = dict(hyperparameters) if hyperparameters is not None else {"preset": "seed", **SEED_HYPERPARAMETERS}
    n = int(instance_count)
    if n < 1 or n != instance_count:
        raise ValueError(f"instance_count must be a whole number >= 1, not {instance_count!r}")
    settings = {"instance_count": n, "hyperparameters": hp, "max_run": int(max_run)}
    if n > 1:
        preset = hp.get("preset", "seed")
        check(preset)
        if kind(preset) == "sequence":
            raise ValueError(f"preset {preset!r} (SequenceMF) trains on one instance only: use instance_count=1, or "
                             "preset 'side', 'implicit' or 'seed' on the parameter server (recsys.distributed)")
        settings["distribution"] = {"parameter_server": {"enabled": True}}
    if use_spot_instances:
        if not checkpoint_s3_uri:
            raise ValueError("use_spot_instances needs checkpoint_s3_uri: an interrupted spot job resumes from "
                             "the checkpoints synced there, and would otherwise start again from epoch 1")
        wait = int(max_wait) if max_wait is not None else int(max_run)
        if wait < max_run:
            raise ValueError(f"max_wait ({wait} s) must be at least max_run ({int(max_run)} s)")
        settings.update(use_spot_instances=True, max_wait=wait)
    elif max_wait is not None:
        raise ValueError("max_wait applies to spot instances only (use_spot_instances=True)")
    if checkpoint_s3_uri:
        if not str(checkpoint_s3_uri).startswith("s3://"):
            raise ValueError(f"checkpoint_s3_uri must be an s3:// URI, not {checkpoint_s3_uri!r}")
        settings["checkpoint_s3_uri"] = str(checkpoint_s3_uri)
    return settings


def make_estimator(role: str, bundle_dir, sagemaker_session=None, instance_type: str = TRAIN_INSTANCE_TYPE,
                   instance_count: int = 1, hyperparameters: dict | None = None, output_path: str | None = None,
                   base_job_name: str = "recsys-mf", use_spot_instances: bool = False, max_run: int = MAX_RUN,
                   max_wait: int | None = None, checkpoint_s3_uri: str | None = None):
    """The seed's ``MXNet('recommender.py', ...)`` for today's container: script mode, framework
    1.9.0 on Python 3.8, the bundle as ``source_dir`` (the container gets ``recsys`` and installs
    ``requirements.txt``); the rest from :func:`estimator_settings` (hyperparameters as given,
    several instances on the parameter server, managed spot training with checkpoints)."""
    settings = estimator_settings(instance_count, hyperparameters, use_spot_instances, max_run, max_wait,
                                  checkpoint_s3_uri)
    import_sdk()
    from sagemaker.mxnet import MXNet

    bundle_dir = Path(bundle_dir)
    if not (bundle_dir / ENTRY_POINT).is_file():
        build_bundle(bundle_dir)
    return MXNet(entry_point=ENTRY_POINT, source_dir=str(bundle_dir), framework_version=FRAMEWORK_VERSION,
                 py_version=PY_VERSION, role=role, instance_type=instance_type, output_path=output_path,
                 sagemaker_session=sagemaker_session, base_job_name=base_job_name, **settings)


def upload_training_data(sagemaker_session, files, bucket: str, prefix: str) -> str:
    """Upload the raw CSVs to ``s3://bucket/prefix/train/`` and return that URI (the seed
    concatenated them into one file first; the entry point reads several)."""
    for f in files:
        sagemaker_session.upload_data(str(f), bucket=bucket, key_prefix=f"{prefix}/train")
    return f"s3://{bucket}/{prefix}/train/"


#: The model's environment on the endpoint. The inference toolkit replaces a missing or ``*/*`` Accept
#: with this before ``output_fn`` runs (its own default is JSON); Aurora's Accept is undocumented, so
#: an Aurora call without one gets CSV, one score per row, as Aurora reads it. Callers that want JSON
#: say so (the SDK's JSON deserializer sends ``Accept: application/json``).
ENDPOINT_ENV = {"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv"}


def deploy(estimator, instance_type: str = DEPLOY_INSTANCE_TYPE, endpoint_name: str | None = None):
    """``estimator.deploy(...)`` with the serving bundle as the model's code (no ``requirements.txt``,
    which the inference container would pip-install at every start), :data:`ENDPOINT_ENV`, and
    JSON in and out for the returned predictor (SDK v2; the seed's ``serializer = None`` no longer works)."""
    import tempfile

    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.serializers import JSONSerializer

    with tempfile.TemporaryDirectory() as tmp:
        serving = build_bundle(Path(tmp) / "serving", serving=True)
        return estimator.deploy(initial_instance_count=1, instance_type=instance_type, endpoint_name=endpoint_name,
                                serializer=JSONSerializer(), deserializer=JSONDeserializer(),
                                entry_point=ENTRY_POINT, source_dir=str(serving), env=dict(ENDPOINT_ENV))


def cleanup(predictor) -> None:
    """Delete the endpoint, its configuration and the model (they cost money while they exist)."""
    try:
        predictor.delete_model()
    finally:
        predictor.delete_endpoint(delete_endpoint_config=True)


def delete_endpoint(endpoint_name: str, sagemaker_session=None) -> list:
    """Delete an endpoint by name, with its configuration and models (notebook 04's clean-up, for the
    endpoint notebook 03 left running). Returns what was deleted; nothing when it does not exist."""
    from botocore.exceptions import ClientError

    sm = (sagemaker_session or session()).sagemaker_client
    try:
        config_name = sm.describe_endpoint(EndpointName=endpoint_name)["EndpointConfigName"]
    except ClientError:
        return []
    deleted = [f"endpoint {endpoint_name}"]
    sm.delete_endpoint(EndpointName=endpoint_name)
    try:
        variants = sm.describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"]
        sm.delete_endpoint_config(EndpointConfigName=config_name)
        deleted.append(f"endpoint config {config_name}")
    except ClientError:
        variants = []
    for v in variants:
        try:
            sm.delete_model(ModelName=v["ModelName"])
            deleted.append(f"model {v['ModelName']}")
        except ClientError:
            pass
    return deleted


def endpoint_model_name(endpoint_name: str, sagemaker_session=None) -> str:
    """The SageMaker model behind an endpoint (its first production variant's), e.g. for a transform job."""
    sm = (sagemaker_session or session()).sagemaker_client
    config = sm.describe_endpoint(EndpointName=endpoint_name)["EndpointConfigName"]
    return sm.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"][0]["ModelName"]


def serving_model(model_data: str, role: str, sagemaker_session=None, source_dir=None):
    """An SDK ``MXNetModel`` for a ``model.tar.gz`` on S3 with the kit's serving code (``source_dir``: a
    serving bundle, see :func:`~recsys.sagemaker.bundle.build_bundle`) and :data:`ENDPOINT_ENV`."""
    import_sdk()
    from sagemaker.mxnet import MXNetModel

    return MXNetModel(model_data=model_data, role=role, entry_point=ENTRY_POINT, source_dir=str(source_dir),
                      framework_version=FRAMEWORK_VERSION, py_version=PY_VERSION, env=dict(ENDPOINT_ENV),
                      sagemaker_session=sagemaker_session)


def batch_transform(model, data: str, output_path: str, sagemaker_session=None, role: str | None = None,
                    instance_type: str = TRANSFORM_INSTANCE_TYPE, instance_count: int = 1,
                    strategy: str = "MultiRecord", max_payload_mb: int = 6,
                    max_concurrent_transforms: int | None = None,
                    job_name: str | None = None, wait: bool = True, logs: bool = False):
    """A SageMaker Batch Transform job with the SDK's ``Transformer``, the settings of the kit's local
    transform job (:func:`recsys.sagemaker.transform.run_transform`): ``SplitType=Line``, ``text/csv`` in
    and out, ``strategy`` (MultiRecord or SingleRecord), ``MaxPayloadInMB``, ``AssembleWith=Line``. Every
    object under the ``data`` S3 prefix gets ``<output_path>/<object name>.out``, one line per input line
    (an empty line where the pair is unknown).

    ``model``: a SageMaker model name (e.g. :func:`endpoint_model_name` of notebook 03's endpoint), a
    ``model.tar.gz`` S3 URI (needs ``role``; the kit's serving code is added, as :func:`deploy` does), an
    SDK ``Model``, or a fitted estimator (its model, with the serving code). Returns the ``Transformer``;
    ``wait=True`` raises the SDK's ``UnexpectedStatusException`` with the FailureReason when the job fails."""
    import tempfile

    from .transform import check_settings

    import_sdk()
    from sagemaker.transformer import Transformer

    check_settings(strategy, max_payload_mb, max_concurrent_transforms or 1)
    settings = {"instance_count": instance_count, "instance_type": instance_type, "strategy": strategy,
                "assemble_with": "Line", "output_path": output_path, "accept": "text/csv",
                "max_payload": max_payload_mb, "max_concurrent_transforms": max_concurrent_transforms,
                "env": dict(ENDPOINT_ENV)}
    with tempfile.TemporaryDirectory() as tmp:  # the serving bundle must exist while the SDK repacks the model
        if isinstance(model, str) and model.startswith("s3://"):
            if role is None:
                raise ValueError("a model.tar.gz URI needs the role the model runs with (role=...)")
            model = serving_model(model, role, sagemaker_session, build_bundle(Path(tmp) / "serving", serving=True))
        elif hasattr(model, "create_model"):  # an estimator: its model, with the serving code
            serving = build_bundle(Path(tmp) / "serving", serving=True)
            model = model.create_model(entry_point=ENTRY_POINT, source_dir=str(serving), env=dict(ENDPOINT_ENV))
        if isinstance(model, str):
            transformer = Transformer(model_name=model, sagemaker_session=sagemaker_session or session(), **settings)
        else:
            transformer = model.transformer(**settings)
    transformer.transform(data, data_type="S3Prefix", content_type="text/csv", split_type="Line", job_name=job_name,
                          wait=wait, logs=logs)
    return transformer
