import numpy as np
import pandas as pd
import pytest

from conftest import OCT, row
from recsys.events import read_events
from recsys.prepare import SUMMARY_KEYS, EmptyDatasetError, Prepared, count_quantiles, prepare, prepare_files
from reference import prepare_summary, read_rows


@pytest.fixture(scope="module")
def october():
    events, report = read_events(OCT, progress=False)
    return events, report, prepare(events, read_report=report)


def test_october_matches_plain_python_reference(october):
    _, _, p = october
    valid, bad, read = read_rows(OCT)
    ref = prepare_summary(valid)
    for k in ("users_total", "products_total", "users_kept", "products_kept", "rows_kept", "train_rows", "test_rows"):
        assert p.summary[k] == ref[k], k
    assert p.summary["rows_read"] == read and p.summary["rows_malformed"] == len(bad)
    assert set(SUMMARY_KEYS) <= set(p.summary)
    got_test = set(zip(p.test["user_id"].astype(str), p.test["product_id"].astype(str)))
    assert got_test == ref["test_pairs"]
    raw = p.raw_ids(p.train)
    got_train = set(zip(raw["user_id"].astype(str), raw["product_id"].astype(str)))
    assert got_train == ref["train_pairs"]
    assert (p.raw_ids(p.test) == p.test[["user_id", "product_id"]]).all().all()


def test_october_matches_the_seed_pandas_way(october):
    """The seed's own code (value_counts, merge, groupby-last on a time-sorted frame)."""
    events, _, p = october
    df = events[["user_id", "product_id", "event_time"]]
    users = df["user_id"].value_counts()
    products = df["product_id"].value_counts()
    users, products = users[users >= 5], products[products >= 5]
    reduced = df.merge(pd.DataFrame({"user_id": users.index})).merge(pd.DataFrame({"product_id": products.index}))
    assert len(reduced) == p.summary["rows_kept"]
    assert reduced["user_id"].nunique() == p.summary["users_kept"]


def test_no_leakage_and_one_test_row_per_user(october):
    _, _, p = october
    assert p.test["user"].is_unique
    assert len(p.test) == p.n_users
    train_pairs = set(zip(p.train["user"], p.train["item"]))
    assert not train_pairs & set(zip(p.test["user"], p.test["item"]))


def test_test_row_is_the_users_last_event(october):
    events, _, p = october
    kept = events[events["user_id"].isin(p.users["user_id"]) & events["product_id"].isin(p.products["product_id"])]
    last_time = kept.groupby("user_id")["event_time"].max()
    assert (p.test["event_time"].to_numpy() == last_time.loc[p.test["user_id"]].to_numpy()).all()


def test_dense_ids_and_maps_both_ways(october):
    _, _, p = october
    assert p.users.index.tolist() == list(range(p.n_users))
    assert p.products.index.tolist() == list(range(p.n_items))
    assert p.users["user_id"].is_monotonic_increasing and p.products["product_id"].is_monotonic_increasing
    ui, ii = p.user_index(), p.item_index()
    both = p.test
    assert (ui.loc[both["user_id"]].to_numpy() == both["user"].to_numpy()).all()
    assert (ii.loc[both["product_id"]].to_numpy() == both["item"].to_numpy()).all()
    assert (p.users.loc[both["user"], "user_id"].to_numpy() == both["user_id"].to_numpy()).all()
    assert p.train["user"].max() < p.n_users and p.train["item"].max() < p.n_items


def test_ties_in_time_keep_file_order(write_csv):
    t = "2019-10-01 00:00:00 UTC"
    lines = [row(t=t, user=1, product=p) for p in (10, 11, 12, 13, 14)] + [row(t=t, user=2, product=p) for p in (10, 11, 12, 13, 14)]
    events, _ = read_events(write_csv("ties.csv", lines), progress=False)
    p = prepare(events, min_user_events=1, min_product_events=1)
    assert p.test.sort_values("user")["product_id"].tolist() == [14, 14]


def test_filter_is_one_pass_not_k_core(write_csv):
    # user 1: 5 events but 3 on a rare product -> kept, with only 2 rows left
    lines = [row(user=1, product=100)] * 2 + [row(user=1, product=999 + i) for i in range(3)]
    lines += [row(user=u, product=100) for u in range(2, 6)]
    lines += [row(user=9, product=100)] * 5
    events, _ = read_events(write_csv("kcore.csv", lines), progress=False)
    p = prepare(events, min_user_events=5, min_product_events=5)
    assert p.summary["users_kept"] == 2 and p.summary["rows_kept"] == 7
    assert p.summary["test_users_without_train_rows"] == 2  # every kept row is on the test product


def test_quantiles_are_the_seeds(october):
    events, _, p = october
    ref_u = events["user_id"].value_counts().quantile([0, 0.01, 0.5, 0.99, 1])
    assert np.allclose(p.quantiles.loc[[0, 0.01, 0.5, 0.99, 1], "events_per_user"], ref_u.to_numpy())
    assert len(p.quantiles) == 17
    q = count_quantiles(pd.Series([1, 2, 3, 4]), pd.Series([10]))
    assert q.loc[0.5, "events_per_user"] == 2.5 and q.loc[1, "events_per_product"] == 10


def test_users_and_products_tables(write_csv):
    lines = [row(user=1, product=7, etype="purchase", price="10.25", brand='"a,b"')] * 5  # a quoted comma
    lines += [row(user=1, product=7, etype="view", price="11.00", code="", brand='"a,b"')]
    events, _ = read_events(write_csv("tables.csv", lines), progress=False)
    assert events["brand"].tolist() == ["a,b"] * 6  # the comma inside quotes stays in the field
    p = prepare(events)
    assert p.users.loc[0, "sum_purchase"] == pytest.approx(51.25)
    prod = p.products.loc[0]
    assert prod["product_id"] == 7 and prod["category_id"] == 2053013555631882655
    assert prod["brand"] == "a,b" and prod["category_code"] is None and prod["price"] == pytest.approx(11.0)  # last seen


def test_lean_read_prepares_the_same(october):
    from recsys.events import read_events

    events, report, catalogue = read_events(OCT, progress=False, lean=True)
    assert list(events.columns) == ["event_time", "product_id", "user_id", "event_type_digit"]
    lean = prepare(events, read_report=report, catalogue=catalogue)
    full = october[2]
    for name in ("train", "test", "users", "products", "quantiles"):
        pd.testing.assert_frame_equal(getattr(full, name), getattr(lean, name))
    assert report.event_type_counts == october[1].event_type_counts


def test_save_load_round_trip(october, tmp_path):
    _, _, p = october
    p.save(tmp_path / "prep")
    q = Prepared.load(tmp_path / "prep")
    for name in ("train", "test", "users", "products", "quantiles"):
        pd.testing.assert_frame_equal(getattr(p, name), getattr(q, name), check_names=False)
    assert q.summary["rows_kept"] == p.summary["rows_kept"]


def test_load_of_a_missing_dataset_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="run notebook 01"):
        Prepared.load(tmp_path)


def test_empty_inputs_are_clear_errors(write_csv):
    events, _ = read_events(write_csv("h.csv", []), progress=False)
    with pytest.raises(EmptyDatasetError, match="no events"):
        prepare(events)
    events, _ = read_events(write_csv("few.csv", [row()]), progress=False)
    with pytest.raises(EmptyDatasetError, match="min-count filter"):
        prepare(events)
    with pytest.raises(ValueError):
        prepare(events, min_user_events=0)


def test_random_data_against_reference(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(3000):
        sec = int(rng.integers(0, 600))
        lines.append(row(t=f"2019-10-01 00:{sec // 60:02d}:{sec % 60:02d} UTC", user=int(rng.integers(1, 120)),
                         product=int(rng.integers(1, 90)), etype=str(rng.choice(["view", "cart", "purchase"]))))
    path = tmp_path / "rand.csv"
    path.write_text("event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n" + "\n".join(lines) + "\n")
    p = prepare_files([path], min_user_events=20, min_product_events=30, progress=False)
    valid, _, _ = read_rows(path)
    ref = prepare_summary(valid, 20, 30)
    for k in ("users_kept", "products_kept", "rows_kept", "train_rows", "test_rows"):
        assert p.summary[k] == ref[k], k
    raw = p.raw_ids(p.train)
    assert set(zip(raw["user_id"].astype(str), raw["product_id"].astype(str))) == ref["train_pairs"]


def test_lean_read_on_the_text_pass_matches_full_read(write_csv):
    """A value that does not convert sends the file to the text pass; lean and full agree."""
    from recsys.events import read_events

    lines = [row(user=u, product=p, brand=f"b{p}", price=f"{p}.5") for u in range(1, 8) for p in range(100, 106)]
    lines.insert(3, row(user="x1"))  # letters: the typed passes cannot convert this
    path = write_csv("text.csv", lines)
    full_events, full_report = read_events(path, progress=False)
    events, report, catalogue = read_events(path, progress=False, lean=True)
    assert report.rows_malformed == full_report.rows_malformed == 1
    assert report.files[0].malformed_examples == [(5, "bad user_id 'x1'")]
    a, b = prepare(full_events), prepare(events, catalogue=catalogue)
    for name in ("train", "test", "users", "products"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))


@pytest.mark.slow
def test_two_million_synthetic_rows_lean_equals_full(tmp_path):
    from recsys.events import read_events
    from recsys.synthetic import generate

    path = generate(tmp_path / "big.csv", rows=2_000_000, seed=5, progress=False)
    full = prepare(*read_events(path, progress=False)[:1])
    events, report, catalogue = read_events(path, progress=False, lean=True)
    lean = prepare(events, read_report=report, catalogue=catalogue)
    for name in ("train", "test", "users", "products"):
        pd.testing.assert_frame_equal(getattr(full, name), getattr(lean, name))
