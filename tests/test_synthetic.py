import hashlib

import pandas as pd
import pytest

from recsys.events import read_events
from recsys.prepare import prepare
from recsys.synthetic import generate


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "s.csv"
    generate(path, rows=60_000, seed=7, progress=False)
    events, report = read_events(path, progress=False)
    return path, events, report


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a, b, c = (generate(tmp_path / n, rows=5000, seed=s, progress=False) for n, s in (("a.csv", 1), ("b.csv", 1), ("c.csv", 2)))
    assert _sha(a) == _sha(b) != _sha(c)
    g1 = generate(tmp_path / "a.csv.gz", rows=5000, seed=1, progress=False)
    g2 = generate(tmp_path / "b.csv.gz", rows=5000, seed=1, progress=False)
    assert _sha(g1) == _sha(g2)
    e1, _ = read_events(g1, progress=False)
    e2, _ = read_events(a, progress=False)
    pd.testing.assert_frame_equal(e1, e2)


def test_exact_row_count_schema_and_no_malformed_rows(synth):
    path, events, report = synth
    assert path.read_text().splitlines()[0] == "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
    assert report.rows_read == 60_000 and report.rows_malformed == 0 and len(events) == 60_000
    assert events["category_id"].min() >= 10**18  # 19 digits


def test_time_ordered(synth):
    _, events, _ = synth
    assert events["event_time"].is_monotonic_increasing


def test_funnel_has_all_event_types_in_plausible_shares(synth):
    _, events, _ = synth
    share = events["event_type"].value_counts(normalize=True)
    assert share["view"] > 0.8
    assert share["cart"] > share["purchase"] > share["remove_from_cart"] > 0


def test_products_have_consistent_category_brand_price(synth):
    _, events, _ = synth
    per = events.groupby("product_id", observed=True).agg(
        cats=("category_id", "nunique"), brands=("brand", "nunique"), prices=("price", "nunique"))
    assert (per["cats"] == 1).all() and (per["brands"] <= 1).all() and (per["prices"] == 1).all()
    assert events["brand"].isna().any() and events["category_code"].isna().any()


def test_popularity_is_skewed(synth):
    _, events, _ = synth
    counts = events["product_id"].value_counts().to_numpy()
    top = counts[: max(1, len(counts) // 100)].sum() / counts.sum()
    assert top > 0.08  # top 1% of products: far more than 1% of events


def test_users_have_preferences(synth):
    """A user's events concentrate on few categories (planted favourites), unlike random draws."""
    _, events, _ = synth
    active = events.groupby("user_id").filter(lambda g: len(g) >= 20)
    top_share = active.groupby("user_id")["category_id"].agg(lambda s: s.value_counts(normalize=True).iloc[0])
    overall = events["category_id"].value_counts(normalize=True).iloc[0]
    assert top_share.median() > overall + 0.15


def test_sessions_group_events_of_one_user(synth):
    path, _, _ = synth
    raw = pd.read_csv(path, usecols=["user_session", "user_id"])
    assert (raw.groupby("user_session")["user_id"].nunique() == 1).all()
    assert raw.groupby("user_session").size().mean() > 2


def test_synthetic_data_prepares(synth):
    _, events, _ = synth
    p = prepare(events)
    assert p.summary["users_kept"] > 500 and p.summary["train_rows"] > 10_000


def test_sizes(tmp_path):
    path = generate(tmp_path / "small.csv", rows=300, users=10, products=5, seed=1, progress=False)
    events, _ = read_events(path, progress=False)
    assert len(events) == 300 and events["user_id"].nunique() <= 10 and events["product_id"].nunique() <= 5
    empty = generate(tmp_path / "zero.csv", rows=0, progress=False)
    assert len(empty.read_text().splitlines()) == 1
    with pytest.raises(ValueError):
        generate(tmp_path / "neg.csv", rows=-1, progress=False)
