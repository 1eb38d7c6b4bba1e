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
# # 02 · Train the matrix-factorisation model locally
#
# The seed lab's "Train Locally" step: the Gluon `MFBlock` (user and item embeddings, a
# `Dense(64, relu)` tower on each side, dropout, dot product) trained with SGD against the
# event score (`event_type_digit`), train and test MSE after every epoch, then the seed's check:
# every product scored for two users, sorted, and the two users' predictions plotted against
# each other.
#
# What the kit fixes: the test MSE is computed on the **test** rows (the seed's test iterator
# was built from the training set); the device is chosen by itself (`ctx="auto"`: GPU when MXNet
# sees one, else CPU); the last partial batch is trained and evaluated instead of breaking
# `eval_net`; embedding updates touch only the rows of a batch (see `recsys.training`). And it
# asks whether the recommendations are any good: HR@10 and NDCG@10 over the full catalogue,
# against a popularity baseline, for the seed's objective and an implicit (BPR) objective.

# %% tags=["parameters"]
prepared_dir = None  # None: notebook 01's output, output_dir/prepared
input_files = ["data/sample/rees46_2019-Oct_head_0000-0250UTC.csv.gz"]  # used only when prepared_dir is empty
epochs = 3
num_embeddings = 64
batch_size = 1024
opt = "sgd"
lr = 0.02
momentum = 0.9
wd = 0.0
dropout = 0.5
objective = "event_score"
ctx = "auto"
seed = 42
dense_rows = 50_000  # the dense-gradient comparison runs on the users of at most this many training rows
validation_rows = 20_000  # the ranking table's choices are made on the users of at most this many training rows
max_eval_users = 20_000  # test (and validation) users ranked per model (a seeded sample when there are more; None: all)
output_dir = "outputs"
progress = True

# %%
import matplotlib.pyplot as plt
import pandas as pd

from recsys import paths, plots, presets, selection
from recsys.model import build
from recsys.mx import context, num_gpus
from recsys.prepare import Prepared, prepare_files
from recsys.report import write_metrics
from recsys.seeding import seed_everything
from recsys.training import fit, predict

seed_everything(seed)
root = paths.project_root()
out = paths.resolve(output_dir, root)
figures = out / "figures"
prep_path = paths.resolve(prepared_dir, root) if prepared_dir else out / "prepared"
if (prep_path / "summary.json").is_file():
    prepared = Prepared.load(prep_path)
else:  # run on its own: prepare from the input files with notebook 01's defaults
    prepared = prepare_files(paths.input_paths(input_files, root), prep_path, progress=progress)
print(f"device: {context(ctx)} (MXNet sees {num_gpus()} GPU(s))")
print(f"{prepared.n_users:,} users, {prepared.n_items:,} items, {len(prepared.train):,} training rows, "
      f"{len(prepared.test):,} test rows")

# %% [markdown]
# ## 1. Train with the seed's objective and hyperparameters
#
# The seed's model and settings, on all training rows: 3 epochs whatever the size of the data. The
# progress bar (with its ETA) and each epoch's rate go to stderr; the table keeps the figures. Above
# 1,000,000 rows the per-epoch train and test MSE are measured on a seeded sample of 1,000,000 rows of
# each (`recsys.training.MSE_EVAL_ROWS`), so that an epoch's evaluation costs the same at any size.

# %%
hyper = dict(epochs=epochs, num_embeddings=num_embeddings, batch_size=batch_size, opt=opt, lr=lr,
             momentum=momentum, wd=wd, dropout=dropout, ctx=ctx, seed=seed)
seed_run = fit(prepared, progress=progress, objective=objective, **hyper)
pd.DataFrame(seed_run.history).set_index("epoch")[["loss", "train_mse", "test_mse"]].round(4)

# %% [markdown]
# **Against a baseline.** An MSE means little alone. The simplest predictor, always the mean
# `event_type_digit` of the training rows, needs no model at all; a model worth training must
# beat it on the test rows.

# %%
baseline = selection.mean_predictor(prepared)
verdict = "better" if seed_run.last["test_mse"] < baseline["test_mse"] else "worse"
print(f"always predicting the training mean ({baseline['train_mean']:.3f}): test MSE {baseline['test_mse']:.3f}")
print(f"the seed's model after {epochs} epochs: test MSE {seed_run.last['test_mse']:.3f}, {verdict} than that")

# %% [markdown]
# Why it does not beat the mean: 95% of the labels are 1 (views), so the mean is already close to
# almost every label, and the model starts far from it (the seed's `Xavier(magnitude=60)`
# initialisation gives scores in the tens) and has three epochs to come back. The seed's objective
# is a regression on event types, not a ranking; section 4 measures what matters for
# recommendations.
#
# ## 2. Row updates against the seed's dense momentum SGD
#
# The kit updates only the embedding rows of each batch ("lazy" updates, as MXNet's
# `lazy_update`); the seed's dense gradients move every row's momentum at every step, so each of
# its steps costs the whole table. Same data, same seed, both ways: the curves and the final MSE are
# comparable. The comparison runs on the users of at most `dense_rows` training rows (all of them on
# the sample; a seeded sample of users on bigger data, where the dense update would take hours).

# %%
sub = selection.subsample_users(prepared, dense_rows, seed)
kit_sub = seed_run if sub is prepared else fit(sub, progress=progress, objective=objective, **hyper)
dense_net = build(sub.n_users, sub.n_items, num_embeddings, dropout, ctx=ctx, sparse_grad=False, seed=seed)
dense_run = fit(sub, progress=progress, objective=objective, net=dense_net, update="trainer", **hyper)
del dense_net
print(("all" if sub is prepared else "a seeded sample of users with") +
      f" {len(sub.train):,} training rows ({sub.n_users:,} users, {sub.n_items:,} items)")
fig = plots.training_curves({"kit (row updates)": kit_sub.history, "seed (dense gradients)": dense_run.history},
                            baseline=selection.mean_predictor(sub)["test_mse"])
plots.save(fig, figures / "02_train_test_mse.png")
plt.show()
pd.DataFrame({"kit (row updates)": kit_sub.last, "seed (dense gradients)": dense_run.last}).T[
    ["train_mse", "test_mse"]].round(4)

# %% [markdown]
# ## 3. The seed's check: every product for two users
#
# Dense users 6 and 7, as on the lab page (or the first two users on a smaller dataset).

# %%
u_a, u_b = (6, 7) if prepared.n_users > 7 else (0, min(1, prepared.n_users - 1))
items = prepared.products.index.to_numpy()
check = prepared.products[["product_id", "category_code", "brand"]].copy()
check[f"u{u_a}_predictions"] = predict(seed_run.net, [u_a] * len(items), items)
check[f"u{u_b}_predictions"] = predict(seed_run.net, [u_b] * len(items), items)
check.sort_values(f"u{u_a}_predictions", ascending=False).head(10)

# %%
check.sort_values(f"u{u_b}_predictions", ascending=False).head(10)

# %%
fig = plots.prediction_scatter(check[f"u{u_a}_predictions"], check[f"u{u_b}_predictions"],
                               f"u{u_a}_predictions", f"u{u_b}_predictions")
plots.save(fig, figures / "02_two_users_scatter.png")
plt.show()

# %% [markdown]
# ## 4. Are the recommendations any good? Ranking over the full catalogue
#
# For each test user, every product is scored, the user's training products are removed, and
# the held-out product's rank gives HR@10 (is it in the top 10?) and NDCG@10 (how high?). **Ties
# count against the test product**: a product with the same score ranks ahead of it, so a model
# that cannot tell products apart gets no credit for the order they happen to be stored in. Above
# `max_eval_users` test users, a seeded sample of that many is ranked per model.
#
# The table compares, under one protocol:
#
# * the seed's model (section 1: a regression on event types, which never sees a negative);
# * the same `MFBlock` trained for ranking (BPR with sampled negatives);
# * `SideMFBlock`, the MFBlock family with what the data also says: a product's category and brand
#   in its tower, the categories and brands of the user's most recent rows in the user's tower, and
#   an item bias, so that a user without any training row (a third of the test users here) is
#   ranked by a learned popularity prior;
# * `SequenceMFBlock`, still one dot product per (user, product): the item vector is the product's
#   parts (its embedding, category, brand and price), the user vector reads the user's last 5 events
#   through the *same* parts (tied embeddings) with an attention over event types and positions, and
#   a learned transition from the last event and the pooled history to the next product (FPMC-style).
#   It is trained on next-product examples from every user's own training sequence with a sampled
#   softmax (log-Q corrected); BPR on the same negatives is the alternative the protocol compares.
#   Users without a history are ranked by popularity;
# * two baselines: popularity, and the practitioner's heuristic (the categories and brands of the
#   user's recent rows first, popularity within them).
#
# **Validation protocol.** Settings are chosen on a validation split carved from the training rows
# only (each warm user's last training row), by HR@10 of the warm validation users: the number of
# epochs from checkpoints of one run, for `SideMFBlock` the weight decay, for `SequenceMFBlock` the loss
# (sampled softmax or BPR). The choices are made on
# the users of at most `validation_rows` training rows (all of them on the sample). Each model is then
# trained again on **all** training rows with its choice and scored **once** on the test split. The
# best kit model is the one with the highest *validation* score; `outputs/model_best/` is it.
#
# **Epochs and batch size at any size** (`recsys.presets`, printed below with its numbers): the epochs
# chosen on the bounded validation sample are used as they are on data of that size; on more data the
# number of examples processed stays what was chosen (at least one epoch), and the batch grows so that
# an epoch keeps a minimum number of steps. On the sample both are exactly the chosen ones; on 100M
# rows they are one epoch of large batches. The seed's model keeps its 3 epochs and batch of 1,024.

# %%
print(presets.describe_rules())
table, choices, best, records = selection.rank_and_save(prepared, out, seed_run, progress=progress, ctx=ctx,
                                                        seed=seed, max_users=max_eval_users,
                                                        validation_rows=validation_rows)
shown = table.rename(index=selection.LABELS)
fig = plots.ranking_bars(shown, columns=("val_hr_at_10", "hr_at_10", "ndcg_at_10"))
plots.save(fig, figures / "02_ranking.png")
plt.show()
print(f"best kit model by validation HR@10: {selection.LABELS[best]}; settings: {choices[best]['settings']}")
for name, c in choices.items():
    if "epochs" in c:
        print(f"{selection.LABELS[name]}: trained on all rows for {c['epochs']} epoch(s) in batches of {c['batch_size']:,}")
shown[selection.SHOWN].astype(float).round(3)

# %% [markdown]
# How to read it: `val_hr_at_10` is what the choices were made on (warm validation users);
# `hr_at_10` and `ndcg_at_10` are the test split, all test users, with the standard error of HR@10;
# `warm_*` are the test users with at least one training row, `cold_*` those without. The heuristic is
# a strong baseline on this data because most users' next product shares a category with their last
# one; the side-information model learns that from the data, and the sequence model also learns what
# follows what (the last product, its price, the recent history's categories and brands), which is
# where it passes the heuristic.
#
# **The ceiling.** Some test events cannot be hits for any model under this protocol; below, their
# shares: test products already among the user's training products (excluded from the candidates; none,
# by the split's construction), test events that re-visit a product whose earlier rows the split left out
# of training (the model never sees that the user had looked at it), test products without any training
# row (only category, brand and price can rank them), and the upper bound on HR@10 that the first and
# the third leave.

# %%
pd.Series(selection.ceiling(prepared)).round(3)

# %% [markdown]
# ## 5. The models and the figures
#
# Each kit model was saved as soon as it was trained and scored, with its own figures in its
# `model_info.json`: `outputs/model/` the seed-objective model of section 1 (the one the workshop
# trains again in notebook 03), `outputs/model_implicit/` the BPR one, `outputs/model_side/` the
# side-information one, `outputs/model_sequence/` the sequence one, and `outputs/model_best/` a copy of
# the best kit model by validation score,
# which notebook 04 serves to SQL by default; each loads in a fresh process with
# `recsys.artifacts.Recommender.load(dir)`.

# %%
metrics = selection.train_local_metrics(prepared, seed_run, dense_run, table, choices, best, records, len(sub.train))
path = write_metrics("02_train_local", metrics, out)
print("saved", ", ".join(paths.display(out / d, root) for d in (*selection.MODEL_DIRS.values(), selection.BEST_DIR)),
      "and", paths.display(path, root))
