# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python (recsys lab)
#     language: python
#     name: recsys-lab
# ---

# %% [markdown]
# # 03 · Train and deploy the SageMaker way
#
# The seed lab's "Train with SageMaker" and "Endpoint" steps: the training code as a script for
# the built-in MXNet container, a training job on the raw CSVs, `deploy(...)`, then
# `predictor.predict(...)` with raw ids, and the CSV calls that Aurora MySQL will make in the
# next notebook.
#
# The same cells run two ways:
#
# * `mode="local"` (default, offline, no AWS account): the entry point runs as a training job in
#   a subprocess under the SageMaker training contract, and the model is served by a local
#   endpoint that speaks the hosting protocol and the SageMaker Runtime API; the **real** `boto3`
#   client and SageMaker SDK `Predictor` call it.
# * `mode="aws"`: the real `sagemaker.mxnet.MXNet` estimator (framework 1.9.0, Python 3.8), a real
#   training job and endpoint. It costs money: run the clean-up cell at the end.
#
# The job trains the model notebook 02 chose (`preset="best"`), so that Aurora gets the same quality
# on AWS as locally; `preset="seed"` runs the workshop's own job (the seed's `MFBlock` on the event
# score, 10 epochs).
#
# What changed from the seed: script mode instead of the framework-1.1 `train(...)` interface;
# the container gets the kit's code and a `requirements.txt` instead of `pip install` at run time;
# unknown ids get `null` instead of a score computed from NaN; CSV in and out for Aurora; SDK v2
# serializers instead of `predictor.serializer = None`.

# %% tags=["parameters"]
mode = "local"  # "local" or "aws"
input_files = ["data/sample/rees46_2019-Oct_head_0000-0250UTC.csv.gz"]
preset = "best"  # the model notebook 02 chose by validation; "seed": the workshop's own job (MFBlock, L2 loss)
epochs = None  # None: the preset's (scaled to the data, see recsys.presets); "seed": the workshop's 10
# preset="seed" only: the workshop's SageMaker hyperparameters
num_embeddings = 64
opt = "sgd"
lr = 0.02
momentum = 0.9
wd = 0.0
instance_count = 1  # > 1: that many instances on MXNet's parameter server (presets seed, implicit, side); locally hosts on 127.0.0.x
use_spot_instances = False  # managed spot training: per-epoch checkpoints, resumed when interrupted (locally: outputs/sagemaker/checkpoints)
max_wait = None  # aws mode, spot only: seconds to wait for capacity and run (None: max_run, 24 h)
endpoint_name = "recsys-lab"
delete_endpoint = None  # None: a local endpoint stops here, a real one (aws mode) stays for notebook 04
latency_requests = 200
output_dir = "outputs"
progress = True
# mode="aws" only
role = None  # default: sagemaker.get_execution_role() on a notebook instance
bucket = None  # default: the session's default bucket
prefix = "sagemaker/DEMO-gluon-recsys"
region = None
train_instance_type = "ml.g4dn.xlarge"  # T4 GPU; a g5 (A10G) or g6 (L4) works too
deploy_instance_type = "ml.m5.large"  # scoring needs no GPU

# %%
import sys
import time

import numpy as np
import pandas as pd
from IPython.display import display

from recsys import costs, paths
from recsys.report import write_metrics
from recsys.sagemaker.aws import estimator_settings
from recsys.sagemaker.bundle import build_bundle, bundle_files
from recsys.sagemaker.entry import job_hyperparameters

if mode not in ("local", "aws"):
    raise ValueError(f"mode must be 'local' or 'aws', not {mode!r}")
root = paths.project_root()
out = paths.resolve(output_dir, root)
files = paths.input_paths(input_files, root)
seed_hps = dict(num_embeddings=num_embeddings, opt=opt, lr=lr, momentum=momentum, wd=wd) if preset == "seed" else {}
hyperparameters = job_hyperparameters(preset, epochs, **seed_hps)
# the instance count and spot settings checked here, before any job starts (the same rules in both modes)
estimator_settings(instance_count, hyperparameters, use_spot_instances, max_wait=max_wait,
                   checkpoint_s3_uri="s3://bucket/checkpoints" if use_spot_instances else None)
bundle = build_bundle(out / "sagemaker" / "bundle")
print("the container receives:", bundle_files(bundle))
print("hyperparameters:", hyperparameters)

# %% [markdown]
# ## 1. Train
#
# What the job will cost, before it starts (an estimate from the input's size and the reference
# machine's rates; locally the job runs on this machine's CPU). To shorten it: fewer `epochs`, fewer
# `input_files`, or `mode="aws"` on a GPU instance. The job's log, with its progress and ETA, streams
# to stderr as it runs.

# %%
estimate = costs.training_job(files, preset, epochs)
print("training job:", costs.describe(estimate))

# %%
if mode == "local":
    from recsys.sagemaker.local import run_training_job

    job = run_training_job(hyperparameters, {"train": files}, out / "sagemaker" / "jobs", source_dir=bundle,
                           job_name="recsys-lab-training", log=lambda line: print(line, file=sys.stderr, flush=True),
                           instance_count=instance_count,
                           checkpoint_dir=out / "sagemaker" / "checkpoints" if use_spot_instances else None)
    model_data = job.model_data
    training_metrics = job.metrics
else:
    from recsys.sagemaker import aws

    sm_session = aws.session(region)
    if role is None:
        import sagemaker

        role = sagemaker.get_execution_role()
    bucket = bucket or sm_session.default_bucket()
    train_uri = aws.upload_training_data(sm_session, files, bucket, prefix)
    estimator = aws.make_estimator(role, bundle, sagemaker_session=sm_session, instance_type=train_instance_type,
                                   hyperparameters=hyperparameters, output_path=f"s3://{bucket}/{prefix}/output",
                                   instance_count=instance_count, use_spot_instances=use_spot_instances,
                                   max_wait=max_wait,
                                   checkpoint_s3_uri=f"s3://{bucket}/{prefix}/checkpoints" if use_spot_instances else None)
    estimator.fit({"train": train_uri})
    model_data = estimator.model_data
    training_metrics = {}
print("model artifact:", paths.display(model_data, root) if mode == "local" else model_data)
shown = ("preset", "epochs", "batch_size", "hr_at_10", "hr_at_10_se", "popularity_hr_at_10", "train_mse", "test_mse",
         "mean_predictor_test_mse", "rows_read", "rows_malformed", "users_kept", "products_kept", "train_rows", "test_rows")
pd.Series({k: training_metrics[k] for k in shown if k in training_metrics}, dtype=object)

# %% [markdown]
# What the job's model is worth, under notebook 02's honest ranking metric (ties count against the
# test item; a seeded sample of 20,000 test users above that): its HR@10 against popularity's on the
# same split. With `preset="seed"` the job is the workshop's (10 epochs of the L2 loss on the event
# score) and the table below is its test MSE per epoch, against always predicting the training mean.

# %%
if training_metrics.get("history"):
    per_epoch = pd.DataFrame(training_metrics["history"]).set_index("epoch").round(3)
    best_epoch = int(per_epoch["test_mse"].idxmin())
    print(f"always the training mean: test MSE {training_metrics['mean_predictor_test_mse']:.3f}; "
          f"lowest test MSE at epoch {best_epoch} of {len(per_epoch)}")
    display(per_epoch)
elif training_metrics:
    print(f"HR@10 {training_metrics['hr_at_10']:.3f} (s.e. {training_metrics['hr_at_10_se']:.3f}) against "
          f"popularity's {training_metrics['popularity_hr_at_10']:.3f}")
else:  # mode="aws": the job's metrics are in its log in CloudWatch and in its output.tar.gz
    print("the job's metrics: see its log in CloudWatch (the 'metrics:' line) and output/output.tar.gz")

# %% [markdown]
# The job saves the model of its **last** epoch and that is what gets deployed. With `preset="seed"`
# and 10 epochs the test MSE usually bottoms out earlier and stays above the mean predictor's: that
# model is the workshop's plumbing exercise, not a good recommender (notebook 02 measures that).
# Deploying "the best epoch" by its test MSE would tune on the test set; the presets' epochs were
# chosen on a validation split (notebook 02).

# %% [markdown]
# ## 2. Deploy
#
# Note the endpoint name: notebook 04 calls it from SQL.

# %%
if mode == "local":
    from recsys.sagemaker.local import deploy_local

    endpoint = deploy_local(job, name=endpoint_name)
    predictor = endpoint.predictor()
    runtime = endpoint.runtime_client()
else:
    import boto3

    predictor = aws.deploy(estimator, instance_type=deploy_instance_type, endpoint_name=endpoint_name)
    runtime = boto3.client("sagemaker-runtime", region_name=sm_session.boto_region_name)
print("endpoint:", predictor.endpoint_name)

# %% [markdown]
# ## 3. Predict with raw ids, the seed's way
#
# The seed asks for the user at dense index 6 and the products 44600062 and 1307067; where those
# did not survive the filter on this data, two products of the model's catalogue are used.

# %%
if mode == "local":  # the ids the model knows: its id maps
    user_ids, product_ids = np.load(job.root / "model" / "user_ids.npy"), np.load(job.root / "model" / "product_ids.npy")
else:  # the ids the model knows: from the prepared data of notebook 01
    from recsys.prepare import Prepared

    prep = Prepared.load(out / "prepared")
    user_ids, product_ids = prep.users["user_id"].to_numpy(), prep.products["product_id"].to_numpy()
seed_products = [44600062, 1307067]
user = int(user_ids[6 if len(user_ids) > 6 else 0])
products = seed_products if np.isin(seed_products, product_ids).all() else [int(p) for p in product_ids[:2]]
json_scores = predictor.predict({"user_id": [user], "product_id": products})
print(f"user {user}, products {products}: {json_scores}")

# %% [markdown]
# Aurora machine learning sends `text/csv` rows `user_id,product_id` and reads one value per row:

# %%
csv_body = "\n".join(f"{user},{p}" for p in products) + "\n"
response = runtime.invoke_endpoint(EndpointName=predictor.endpoint_name, ContentType="text/csv", Accept="text/csv",
                                   Body=csv_body)
csv_scores = response["Body"].read().decode()
print(csv_scores)
assert np.allclose([float(x) for x in csv_scores.split()], json_scores, rtol=1e-6)

# %% [markdown]
# Unknown ids get a defined answer, never a made-up score: `null` in JSON, an empty field in CSV.

# %%
unknown = predictor.predict({"user_id": [user, 1], "product_id": [products[0], products[0]]})
unknown_csv = runtime.invoke_endpoint(EndpointName=predictor.endpoint_name, ContentType="text/csv",
                                      Accept="text/csv", Body=f"1,{products[0]}\n{user},2\n")["Body"].read().decode()
print("JSON:", unknown)
print("CSV, one line per row (an empty line is an unknown pair):", unknown_csv.splitlines())
try:
    runtime.invoke_endpoint(EndpointName=predictor.endpoint_name, ContentType="text/csv", Body="not,an,id\n")
except runtime.exceptions.ModelError as e:
    print("bad request ->", e.response["OriginalStatusCode"], e.response["OriginalMessage"])

# %% [markdown]
# ## 4. Latency, through the real boto3 client

# %%
rng = np.random.default_rng(0)
single = []
for u, p in zip(rng.choice(user_ids, latency_requests), rng.choice(product_ids, latency_requests)):
    t0 = time.perf_counter()
    runtime.invoke_endpoint(EndpointName=predictor.endpoint_name, ContentType="text/csv", Accept="text/csv",
                            Body=f"{u},{p}")["Body"].read()
    single.append((time.perf_counter() - t0) * 1000)
batch_body = "\n".join(f"{u},{p}" for u, p in zip(rng.choice(user_ids, 1000), rng.choice(product_ids, 1000)))
batch = []
for _ in range(20):
    t0 = time.perf_counter()
    runtime.invoke_endpoint(EndpointName=predictor.endpoint_name, ContentType="text/csv", Accept="text/csv",
                            Body=batch_body)["Body"].read()
    batch.append((time.perf_counter() - t0) * 1000)
latency = {"single_pair_p50_ms": float(np.percentile(single, 50)), "single_pair_p95_ms": float(np.percentile(single, 95)),
           "batch_1000_p50_ms": float(np.percentile(batch, 50)), "batch_1000_p95_ms": float(np.percentile(batch, 95))}
print(f"{latency_requests} single-pair and 20 1,000-row requests answered (latencies: stderr and the metrics file)")
print("latency (ms):", {k: round(v, 2) for k, v in latency.items()}, file=sys.stderr)

# %% [markdown]
# ## 5. Record, then clean up
#
# A local endpoint stops here. A real one (`mode="aws"`) stays up for notebook 04, which calls it
# from SQL and deletes it (endpoint, configuration, model) at its end, the workshop's clean-up step;
# set `delete_endpoint=True` to delete it here instead.

# %%
metrics = {
    "mode": mode,
    "endpoint_name": predictor.endpoint_name,
    "hyperparameters": hyperparameters,
    "estimate": estimate,
    "training": training_metrics,
    "predictions": {"user_id": user, "product_id": products, "json": json_scores,
                    "csv": [float(x) for x in csv_scores.split()], "unknown_json": unknown,
                    "unknown_csv": unknown_csv.splitlines()},
    "latency_ms": latency,
}
path = write_metrics("03_sagemaker_train_deploy", metrics, out)
print("saved", paths.display(path, root))

# %%
keep = (mode == "aws") if delete_endpoint is None else not delete_endpoint
if mode == "local":
    endpoint.stop()
    print("local endpoint stopped")
elif keep:
    print(f"endpoint {predictor.endpoint_name} keeps running (and costing money): notebook 04 calls it and deletes "
          f"it at its end; to delete it now, run aws.cleanup(predictor)")
else:
    aws.cleanup(predictor)  # deletes the endpoint, its configuration and the model
    print(f"endpoint {predictor.endpoint_name}, its configuration and its model deleted")
