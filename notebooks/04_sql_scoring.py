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
# # 04 · Score from SQL, the Aurora machine-learning way
#
# The workshop's last step: Aurora MySQL gets `users` and `products`, a function
# `recommend_score(user_id, product_id)` aliased to the SageMaker endpoint, an `inputs` table
# from a `CROSS JOIN ... LIMIT 100000`, and
# `CREATE TABLE predict SELECT *, recommend_score(user_id, product_id) FROM inputs`, which Aurora
# runs by sending the function's arguments to the endpoint as CSV batches.
#
# Here the same flow runs on the database you have: SQLite (embedded, the default), or
# MariaDB / MySQL / Aurora by URL (`db_url`). The scoring bridge reads the rows in order, sends
# them as CSV batches of at most `max_batch_size` rows to the endpoint through the real boto3
# `sagemaker-runtime` client, and replaces `predict` only once every row has its score. With
# `mode="aws"` and an Aurora URL, the notebook also creates the real `recommend_score` function.
# Section 6 scores a table the offline way, with a SageMaker Batch Transform job, and loads the
# result into SQL.

# %% tags=["parameters"]
db_url = None  # default: sqlite:///outputs/recsys.sqlite; e.g. "mysql+pymysql://user:pass@host:3306/ecommerce"
prepared_dir = None  # None: notebook 01's output, output_dir/prepared
model = None  # None: notebook 02's best ranking model, output_dir/model_best; or any model directory or model.tar.gz
endpoint_name = "recsys-lab"
mode = "local"  # "aws": call the real endpoint `endpoint_name` and create the Aurora function
region = None
delete_endpoint = None  # aws mode: None or True deletes the endpoint, its configuration and model at the end
cross_join_limit = 100_000
max_batch_size = 10_000
transform_rows = 20_000  # Batch Transform (section 6): the first pairs of `inputs` scored offline; 0 skips it
transform_engine = "auto"  # local mode: "container" (AWS's MXNet serving stack), "local" (the kit's endpoint), "auto"
bucket = None  # aws mode: S3 bucket for the transform's input and output (None: the session's default bucket)
prefix = "sagemaker/DEMO-gluon-recsys"
transform_instance_type = "ml.m5.large"
top_n = 5
show_users = 3
output_dir = "outputs"
progress = True

# %%
import sys

import matplotlib.pyplot as plt
import pandas as pd
import sqlalchemy as sa

from recsys import paths, plots, sql
from recsys.prepare import Prepared
from recsys.report import write_metrics

root = paths.project_root()
out = paths.resolve(output_dir, root)
prepared_path = paths.resolve(prepared_dir, root) if prepared_dir else out / "prepared"
prepared = Prepared.load(prepared_path)
model_path = paths.resolve(model, root) if model else out / "model_best"
eng = sql.engine(db_url, out)
print("database:", eng.dialect.name, "(default SQLite file under outputs/)" if db_url is None else "")

# %% [markdown]
# ## 1. Tables: `products`, `users` and the one-row `input` sample

# %%
counts = sql.create_tables(eng, prepared)
with eng.connect() as conn:
    display_products = pd.read_sql(sa.text("SELECT * FROM products ORDER BY product_id LIMIT 5"), conn)
print(counts)
display_products

# %% [markdown]
# ## 2. The endpoint and the function
#
# Locally: the model behind a local SageMaker-style endpoint, called through boto3's
# `sagemaker-runtime` client exactly as Aurora calls SageMaker. On AWS: the real endpoint of
# notebook 03 and, on Aurora, the real `CREATE FUNCTION`.

# %%
print(sql.aurora_function_sql(endpoint_name))
if mode == "local":
    from recsys.sagemaker.endpoint import LocalEndpoint

    endpoint = LocalEndpoint(model_path, name=endpoint_name).start()
    try:  # a model trained on other data: one line that says so, rather than NULL scores and empty tables
        note = sql.check_model_data(endpoint.model.recommender, prepared, paths.display(model_path, root),
                                    paths.display(prepared_path, root))
    except sql.ModelDataMismatch:
        endpoint.stop()
        raise
    if note:
        print(note)
    hp = endpoint.model.recommender.config["hyperparameters"]
    print(f"serving {paths.display(model_path, root)}: {hp.get('preset') or hp.get('objective')} "
          "(set the model parameter to another model directory or model.tar.gz to serve it instead)")
    call = sql.RuntimeInvoker(endpoint.runtime_client(), endpoint_name)
else:
    endpoint = None
    call = sql.invoker(endpoint_name, region)
    if eng.dialect.name in ("mysql", "mariadb"):
        sql.aurora_create_function(eng, endpoint_name)  # Aurora MySQL only

# %%
# SELECT *, recommend_score(user_id, product_id) FROM input  (the workshop's sample row)
pd.DataFrame(sql.score_query(eng, call, "input"))

# %% [markdown]
# The workshop's sample pair is not in the October sample's data: the endpoint answers NULL for
# it, which is the defined answer for ids the model does not know.
#
# ## 3. `inputs`: users x products

# %%
inputs_rows = sql.create_inputs(eng, cross_join_limit)
print(f"inputs: {inputs_rows:,} rows")

# %% [markdown]
# ## 4. `CREATE TABLE predict SELECT *, recommend_score(user_id, product_id) FROM inputs`

# %%
report = sql.score_table(eng, call, "inputs", "predict", max_batch_size=max_batch_size, progress=progress)
r = report.as_dict()
sql.check_scored(report, endpoint_name, paths.display(prepared_path, root))
print(f"{r['predict_rows']:,} rows scored in {r['requests_sent']} requests of at most {max_batch_size:,} rows, "
      f"{r['unknown_pairs']} unknown pairs (NULL)")
print(f"{r['pairs_per_second']:,.0f} pairs/s", file=sys.stderr)  # a timing: the terminal's, not the notebook's

# %% [markdown]
# ## 5. Top-N products per user, with product metadata

# %%
top = pd.DataFrame(sql.top_n(eng, top_n))
first_users = top["user_id"].drop_duplicates().head(show_users)
top[top["user_id"].isin(first_users)]

# %% [markdown]
# How to read `recommend_score`: it is the model's raw score, the dot product of the user's and
# the product's tower outputs. `model_best` is notebook 02's best ranking model (by validation:
# `SideMFBlock`, trained with BPR): only the order of a user's scores matters (higher: more likely
# to interact), not the value; scores are not probabilities and not event types 1-4. (The seed's `event_score` model in `outputs/model` does
# regress on event types 1-4; its ReLU towers put many scores at exactly 0.) The histogram shows
# the spread over all scored pairs, with the share at exactly 0 printed below.

# %%
with eng.connect() as conn:
    scores = pd.read_sql(sa.text("SELECT recommend_score FROM predict WHERE recommend_score IS NOT NULL"), conn)
values = scores["recommend_score"]
print(f"{len(values):,} known pairs: median {values.median():.3f}, 5%-95% {values.quantile(0.05):.3f} to "
      f"{values.quantile(0.95):.3f}, exactly 0: {(values == 0).mean():.1%}")
fig, ax = plt.subplots(figsize=(6.5, 3.2))
ax.hist(values, bins=60, color="#4C72B0")
ax.axvline(values.median(), color="#C44E52", ls="--", lw=1, label=f"median {values.median():.2f}")
ax.set_xlabel("recommend_score (the model's raw score; higher ranks first)")
ax.set_ylabel("pairs")
ax.set_title(f"scores of the {len(values):,} known pairs in predict")
ax.legend(fontsize=8)
fig.tight_layout()
plots.save(fig, out / "figures" / "04_score_distribution.png")
plt.show()

# %% [markdown]
# ## 6. Batch Transform: score a table offline, then load the scores into SQL
#
# A table too large to score row by row through an endpoint goes through a **Batch Transform** job
# instead: the pairs as a CSV file (one `user_id,product_id` per line) on S3, the same model in the same
# serving container, no endpoint. The job cuts the file into lines (`SplitType=Line`), packs whole lines
# into requests of at most `MaxPayloadInMB` (`BatchStrategy=MultiRecord`), and writes `pairs.csv.out`
# next to it: one line per input line, in order, the score or an empty line for an unknown pair
# (`AssembleWith=Line`). Locally, `recsys.sagemaker.transform` runs that job on AWS's real MXNet serving
# stack when the toolkits are installed (else on the kit's local endpoint; `recsys transform` is the
# same job from the command line); with `mode="aws"`, `aws.batch_transform` runs it on SageMaker with
# the endpoint's model. Then the output is loaded next to its input into `predict_batch`, and checked
# against `predict`, which the endpoint scored in section 4. (Aurora reads the two files from S3 itself
# with `LOAD DATA FROM S3`: the statements are printed below.)

# %%
transform = {}
if transform_rows:
    from recsys.sagemaker import transform as bt

    batch_dir = out / "transform"
    pairs_file = batch_dir / "input" / "pairs.csv"
    exported = sql.export_pairs(eng, pairs_file, "inputs", limit=transform_rows)
    if mode == "local":
        job = bt.run_transform(model_path, [pairs_file], batch_dir / "output", engine=transform_engine,
                               job_name="recsys-lab-transform", progress=progress)
        scored_file = job.outputs[0]
        where = f"s3://your-bucket/{prefix}/transform"
        print(f"{job.records:,} lines through the {job.engine} in {job.requests} request(s) ({job.strategy}, "
              f"MaxPayloadInMB={job.max_payload_mb}) -> {paths.display(scored_file, root)}")
        if job.note:
            print("note:", job.note)
        transform = {"engine": job.engine, "requests": job.requests, "records_per_second": job.records_per_second}
    else:
        from recsys.sagemaker import aws

        sm_session = aws.session(region)
        bucket_name = bucket or sm_session.default_bucket()
        where = f"s3://{bucket_name}/{prefix}/transform"
        sm_session.upload_data(str(pairs_file), bucket=bucket_name, key_prefix=f"{prefix}/transform/input")
        transformer = aws.batch_transform(aws.endpoint_model_name(endpoint_name, sm_session), f"{where}/input/",
                                          f"{where}/output", sagemaker_session=sm_session,
                                          instance_type=transform_instance_type)
        scored_file = batch_dir / "output" / "pairs.csv.out"
        sm_session.download_data(str(scored_file.parent), bucket_name,
                                 key_prefix=f"{prefix}/transform/output/pairs.csv.out")
        print(f"transform job {transformer.latest_transform_job.name}: {exported:,} lines -> "
              f"{where}/output/pairs.csv.out")
        transform = {"engine": "sagemaker", "job_name": transformer.latest_transform_job.name}
    batch_rows = sql.load_transform_output(eng, pairs_file, scored_file, "predict_batch")
    agreement = sql.score_agreement(eng, "predict", "predict_batch")
    print(f"predict_batch: {batch_rows:,} rows; the same pairs in predict: {agreement['pairs']:,}, largest score "
          f"difference {agreement['max_abs_diff'] or 0:.1e}, known in one and unknown in the other: "
          f"{agreement['null_mismatch']}")
    transform.update({"rows": batch_rows, "agreement": agreement})
    print("\nOn Aurora MySQL, the same load from S3 (the cluster needs an S3 role in aws_default_s3_role):")
    print(";\n".join(sql.aurora_load_from_s3_sql(f"{where}/input/pairs.csv", f"{where}/output/pairs.csv.out",
                                                 "predict_batch")) + ";")

# %% [markdown]
# ## 7. Record, then stop the local endpoint (or delete the real one)

# %%
metrics = {
    "database": eng.dialect.name,
    "tables": counts,
    "inputs_rows": inputs_rows,
    "predict_rows": r["predict_rows"],
    "requests_sent": r["requests_sent"],
    "max_batch_size": max_batch_size,
    "pairs_per_second": r["pairs_per_second"],
    "unknown_pairs": r["unknown_pairs"],
    "top_n": top_n,
    "model": paths.display(model_path, root) if mode == "local" else endpoint_name,
    "score_zero_share": float((values == 0).mean()),
    "top_n_first_user": top[top["user_id"] == first_users.iloc[0]][["product_id", "recommend_score"]].to_dict("records"),
    "transform": transform,
}
path = write_metrics("04_sql_scoring", metrics, out)
if endpoint is not None:
    endpoint.stop()
elif delete_endpoint is not False:  # the workshop's clean-up: a real endpoint costs money while it exists
    from recsys.sagemaker import aws

    print("deleted:", ", ".join(aws.delete_endpoint(endpoint_name, aws.session(region))) or "nothing (no such endpoint)")
print("saved", paths.display(path, root))
