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
# # 01 · Explore, clean and prepare the shopping events
#
# The seed lab's "데이터 Explore / Clean / Prepare" step, on the REES46 e-commerce event logs:
# load and concatenate the monthly CSVs, keep the columns the model needs, encode the event
# type (purchase 4, cart 3, remove_from_cart 2, anything else 1), look at how events spread
# over users and products, keep users and products with at least 5 events, give them dense
# ids, split the last event of each user off as the test set, and save the result for
# notebook 02.
#
# Every step is a function of `recsys` (unit-tested there); this notebook calls them and
# shows the results. By default it runs on the October sample shipped in `data/sample/`;
# point `input_files` at the full Kaggle files (see `data/README.md`) for the real lab.

# %% tags=["parameters"]
input_files = ["data/sample/rees46_2019-Oct_head_0000-0250UTC.csv.gz"]
min_user_events = 5
min_product_events = 5
seed = 42
output_dir = "outputs"
progress = True

# %%
import matplotlib.pyplot as plt
import pandas as pd

from recsys import paths, plots
from recsys.constants import EVENT_DIGITS, OTHER_EVENT_DIGIT
from recsys.events import read_events
from recsys.prepare import SUMMARY_KEYS, prepare
from recsys.report import write_metrics
from recsys.seeding import seed_everything

seed_everything(seed)
root = paths.project_root()
files = paths.input_paths(input_files, root)
out = paths.resolve(output_dir, root)
prepared_dir = out / "prepared"
figures = out / "figures"
pd.set_option("display.width", 160)
print("inputs:", [paths.display(f, root) for f in files])

# %% [markdown]
# ## 1. Load and concatenate
#
# The seed reads every column of both files with pandas (`error_bad_lines=False`, which drops
# bad rows silently and no longer exists in pandas 2): about 12 GiB for the two Kaggle months.
# `read_events(..., lean=True)` streams the files and keeps, per row, only what the model needs
# with compact types: `user_id`, `product_id` (exact `int64`), `event_time` and the event score,
# 25 bytes a row. The product attributes (`category_id` has 19 digits, `category_code`, `brand`,
# `price`) and the purchases are folded into side tables as the blocks arrive. Malformed rows are
# **counted** and skipped, with their line numbers.

# %%
events, read_report, catalogue = read_events(files, progress=progress, lean=True)
print(f"{read_report.rows_read:,} data rows read, {read_report.rows_valid:,} valid, "
      f"{read_report.rows_malformed:,} malformed (skipped)")
for line in read_report.summary_lines():
    print("  " + line)
print(f"in memory: {events.memory_usage(deep=True).sum() / 2**20:.1f} MiB for {len(events):,} rows, plus "
      f"{len(catalogue.products):,} products and {len(catalogue.purchases):,} purchases in side tables")
events.sample(5, random_state=seed).merge(catalogue.products, on="product_id", how="left")

# %% [markdown]
# ## 2. Columns and event encoding
#
# `event_type_digit` is the seed's label. View and any unknown event type both become 1; the
# unknown ones are counted so that nothing changes meaning silently.

# %%
encoding = pd.DataFrame(
    [(name, EVENT_DIGITS.get(name, OTHER_EVENT_DIGIT), n) for name, n in read_report.event_type_counts.items()],
    columns=["event_type", "event_type_digit", "events"],
).set_index("event_type").sort_values("event_type_digit", ascending=False)
print("unknown event types (encoded as 1):", read_report.other_event_types or "none")
encoding

# %% [markdown]
# ## 3. Distribution: events per user and per product
#
# The seed's quantiles, then the same counts as histograms on log-log axes. The dashed line is
# the min-count filter of the next step. `prepare` counts the events once (and filters, indexes and
# splits in the same pass); the explore cells use its counts.

# %%
prepared = prepare(events, min_user_events, min_product_events, read_report=read_report, catalogue=catalogue)
del events  # everything below works on the prepared tables
fig = plots.count_distributions(prepared.raw_counts["user"], prepared.raw_counts["product"], min_user_events,
                                min_product_events)
plots.save(fig, figures / "01_events_per_user_product.png")
plt.show()

# %%
prepared.quantiles

# %% [markdown]
# ## 4. Filter: users and products with at least the minimum number of events
#
# Both counts are taken once on the raw data, as the seed's two merges do (not an iterated
# k-core). A row is kept when its user **and** its product pass, so a user with enough events can
# still lose every row, when all of them are on rare products: the user count in the figure above
# (users with enough events) is larger than the number of users kept. Each bar below carries its
# count and the share kept.

# %%
s = prepared.summary
print(f"users with >= {min_user_events} events: {s['users_with_min_events']:,}; of those, "
      f"{s['users_with_min_events'] - s['users_kept']:,} have no event left on a product with >= {min_product_events} "
      f"events, so {s['users_kept']:,} users are kept")
before = {"users": s["users_total"], "products": s["products_total"], "rows": s["rows_valid"]}
after = {"users": s["users_kept"], "products": s["products_kept"], "rows": s["rows_kept"]}
fig = plots.funnel(before, after)
plots.save(fig, figures / "01_filter_before_after.png")
plt.show()
pd.DataFrame({"before": before, "after": after}).assign(kept_share=lambda d: (d["after"] / d["before"]).round(3))

# %% [markdown]
# ## 5. Dense ids
#
# Kept users and products get dense ids `user` and `item` (ascending raw id), which index the
# embedding tables. The maps go both ways and are saved with the data.

# %%
print(f"{prepared.n_users:,} users -> user 0..{prepared.n_users - 1}, "
      f"{prepared.n_items:,} products -> item 0..{prepared.n_items - 1}")
prepared.products.head()

# %% [markdown]
# ## 6. Split: each user's last event is the test set
#
# Test = the last event of each user in time order. Train = every kept row whose
# (user, product) pair is **not** a test pair, so the model never sees a test pair in training.
# Users whose every event is on their test product have no training row; they are counted.
# Train + test is less than the kept rows: the earlier rows on a user's test product (views
# before the final event, say) are dropped, because training on them would give the answer away.

# %%
train, test = prepared.train, prepared.test
leak = train.merge(test[["user", "item"]], on=["user", "item"]).shape[0]
print(f"kept {s['rows_kept']:,} rows = train {len(train):,} + test {len(test):,} "
      f"+ {s['rows_dropped_as_test_pairs']:,} earlier rows on a user's test product (dropped: they would leak the answer)")
print(f"test pairs found in train: {leak}")
print(f"test users without any training row: {s['test_users_without_train_rows']:,}")
test.head()

# %% [markdown]
# ## 7. Save
#
# The prepared dataset (Parquet files and `summary.json`) goes to `outputs/prepared/`, where
# notebook 02 picks it up; the key figures go to `outputs/metrics/01_explore_clean_prepare.json`.

# %%
prepared.save(prepared_dir)
metrics = {k: s[k] for k in SUMMARY_KEYS}
metrics.update(
    rows_valid=s["rows_valid"],
    test_users_without_train_rows=s["test_users_without_train_rows"],
    users_with_min_events=s["users_with_min_events"],
    rows_dropped_as_test_pairs=s["rows_dropped_as_test_pairs"],
    min_user_events=min_user_events,
    min_product_events=min_product_events,
    event_type_counts=read_report.event_type_counts,
    other_event_types=read_report.other_event_types,
    malformed_by_file={paths.display(f.path, root): f.rows_malformed for f in read_report.files},
    input_files=[paths.display(f, root) for f in files],
)
metrics_path = write_metrics("01_explore_clean_prepare", metrics, out)
print("saved", paths.display(prepared_dir, root), "and", paths.display(metrics_path, root))
pd.Series({k: metrics[k] for k in SUMMARY_KEYS})
