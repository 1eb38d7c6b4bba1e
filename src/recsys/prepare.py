"""Explore / clean / prepare, as the seed does it, without its bugs.

1. quantile tables of events per user and per product (the seed's quantiles);
2. min-count filter: keep rows whose user has >= ``min_user_events`` and whose product has
   >= ``min_product_events`` events, both counted once on the raw data (the seed's two
   merges; *not* an iterated k-core, so a kept user may end up with fewer kept rows);
3. dense ids ``user`` / ``item`` for the kept users and products, in ascending raw-id order
   (deterministic), with maps both ways;
4. leave-last-out split: test = each user's last event in time order (ties keep file order;
   the seed's ``groupby().last()`` took the last *non-null value per column*, mixing rows);
   train = every kept row whose (user, product) pair is not that user's test pair, so no
   test pair leaks into training.

The result, :class:`Prepared`, saves to and loads from a directory of Parquet files plus a
``summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .constants import (
    DEFAULT_MIN_PRODUCT_EVENTS,
    DEFAULT_MIN_USER_EVENTS,
    ITEM,
    LABEL,
    PRODUCT_ID,
    QUANTILES,
    USER,
    USER_ID,
)

SUMMARY_KEYS = (
    "rows_read",
    "rows_malformed",
    "users_total",
    "products_total",
    "users_kept",
    "products_kept",
    "rows_kept",
    "train_rows",
    "test_rows",
)
_INTERACTION_COLUMNS = [USER, ITEM, USER_ID, PRODUCT_ID, LABEL, "event_time"]


class EmptyDatasetError(ValueError):
    """Nothing is left to train on (no rows, or none pass the min-count filter)."""


@dataclasses.dataclass
class Prepared:
    """A prepared dataset.

    ``train``/``test``: ``user``, ``item`` (dense int32), ``user_id``, ``product_id`` (raw
    int64), ``event_type_digit`` (int8), ``event_time``.
    ``users``: one row per kept user, indexed by ``user``: ``user_id``, ``n_events`` (raw
    count), ``sum_purchase`` (sum of purchase prices, the workshop's ``users`` column).
    ``products``: one row per kept product, indexed by ``item``: ``product_id``,
    ``category_id``, ``category_code``, ``brand``, ``price`` (last seen), ``n_events``.
    ``quantiles``: events per user / per product at the seed's quantiles (before filtering).
    ``summary``: the counts of :data:`SUMMARY_KEYS` and more.
    """

    train: pd.DataFrame
    test: pd.DataFrame
    users: pd.DataFrame
    products: pd.DataFrame
    quantiles: pd.DataFrame
    summary: dict

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.products)

    # raw <-> dense maps -----------------------------------------------------------------
    def user_index(self) -> pd.Series:
        """raw ``user_id`` -> dense ``user``."""
        return pd.Series(self.users.index.to_numpy(), index=self.users[USER_ID].to_numpy(), name=USER)

    def item_index(self) -> pd.Series:
        """raw ``product_id`` -> dense ``item``."""
        return pd.Series(self.products.index.to_numpy(), index=self.products[PRODUCT_ID].to_numpy(), name=ITEM)

    def save(self, out_dir: str | os.PathLike) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.train.to_parquet(out / "train.parquet", index=False)
        self.test.to_parquet(out / "test.parquet", index=False)
        self.users.to_parquet(out / "users.parquet")
        self.products.to_parquet(out / "products.parquet")
        self.quantiles.to_parquet(out / "quantiles.parquet")
        (out / "summary.json").write_text(json.dumps(self.summary, indent=2, sort_keys=True) + "\n")
        return out

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> "Prepared":
        out = Path(out_dir)
        if not (out / "summary.json").is_file():
            raise FileNotFoundError(
                f"{out} holds no prepared dataset (no summary.json): run notebook 01 or `recsys prepare` first"
            )
        def interactions(name):  # Parquet has no second unit: it comes back as ms
            df = pd.read_parquet(out / name)
            return df.astype({"event_time": "datetime64[s]"})

        return cls(
            train=interactions("train.parquet"),
            test=interactions("test.parquet"),
            users=pd.read_parquet(out / "users.parquet"),
            products=pd.read_parquet(out / "products.parquet"),
            quantiles=pd.read_parquet(out / "quantiles.parquet"),
            summary=json.loads((out / "summary.json").read_text()),
        )


def count_quantiles(user_counts: pd.Series, product_counts: pd.Series, quantiles=QUANTILES) -> pd.DataFrame:
    """Events per user and per product at the seed's quantiles (pandas' linear interpolation)."""
    q = list(quantiles)
    return pd.DataFrame(
        {
            "events_per_user": user_counts.quantile(q).to_numpy(dtype=float) if len(user_counts) else np.nan,
            "events_per_product": product_counts.quantile(q).to_numpy(dtype=float) if len(product_counts) else np.nan,
        },
        index=pd.Index(q, name="quantile"),
    )


def _last_index(keys: np.ndarray, n_keys: int) -> np.ndarray:
    """For each key 0..n_keys-1, the position of its last occurrence in ``keys`` (-1 if none)."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    ends = np.flatnonzero(np.r_[sk[1:] != sk[:-1], True]) if len(sk) else np.empty(0, np.int64)
    out = np.full(n_keys, -1, np.int64)
    out[sk[ends]] = order[ends]
    return out


def _counts(ids: np.ndarray):
    """Sorted unique ids, their counts, and each row's position in the unique array."""
    uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    return uniq, inverse, counts


def prepare(
    events: pd.DataFrame,
    min_user_events: int = DEFAULT_MIN_USER_EVENTS,
    min_product_events: int = DEFAULT_MIN_PRODUCT_EVENTS,
    read_report=None,
) -> Prepared:
    """Filter, index and split ``events`` (as returned by :func:`recsys.events.read_events`)."""
    if min_user_events < 1 or min_product_events < 1:
        raise ValueError("min_user_events and min_product_events must be >= 1")
    if len(events) == 0:
        raise EmptyDatasetError("no events to prepare (every input row was malformed, or the files are empty)")
    user_ids = events[USER_ID].to_numpy()
    product_ids = events[PRODUCT_ID].to_numpy()
    u_uniq, u_inv, u_cnt = _counts(user_ids)
    p_uniq, p_inv, p_cnt = _counts(product_ids)
    quantiles = count_quantiles(pd.Series(u_cnt), pd.Series(p_cnt))

    keep = (u_cnt[u_inv] >= min_user_events) & (p_cnt[p_inv] >= min_product_events)
    rows_kept = int(keep.sum())
    if rows_kept == 0:
        raise EmptyDatasetError(
            f"no rows left after the min-count filter (users >= {min_user_events}, "
            f"products >= {min_product_events} events): use smaller minimums or more data"
        )
    # Dense ids over what survives: ascending raw id.
    u_kept = np.zeros(len(u_uniq), bool)
    u_kept[u_inv[keep]] = True
    p_kept = np.zeros(len(p_uniq), bool)
    p_kept[p_inv[keep]] = True
    u_dense = np.cumsum(u_kept, dtype=np.int64) - 1  # unique position -> dense user
    p_dense = np.cumsum(p_kept, dtype=np.int64) - 1
    kept_idx = np.flatnonzero(keep)
    user = u_dense[u_inv[kept_idx]].astype(np.int32)
    item = p_dense[p_inv[kept_idx]].astype(np.int32)

    # Time order, ties in file order (stable sort).
    times = events["event_time"].to_numpy()[kept_idx]
    order = np.argsort(times, kind="stable")
    kept_idx, user, item, times = kept_idx[order], user[order], item[order], times[order]
    n_users, n_items = int(u_kept.sum()), int(p_kept.sum())

    # Leave-last-out: the last kept row of each user (in time order) is the test row.
    last_row = _last_index(user, n_users)
    test_item_of_user = item[last_row]
    is_test = np.zeros(len(user), bool)
    is_test[last_row] = True
    in_train = test_item_of_user[user] != item  # a test pair never appears in train

    def frame(mask: np.ndarray) -> pd.DataFrame:
        rows = kept_idx[mask]
        return pd.DataFrame(
            {
                USER: user[mask],
                ITEM: item[mask],
                USER_ID: user_ids[rows],
                PRODUCT_ID: product_ids[rows],
                LABEL: events[LABEL].to_numpy()[rows],
                "event_time": times[mask],
            }
        )

    train, test = frame(in_train), frame(is_test)
    users = _user_table(events, u_uniq, u_cnt, u_kept, u_inv)
    products = _product_table(events, p_uniq, p_cnt, p_kept, p_inv)

    summary = {
        "rows_read": int(read_report.rows_read) if read_report is not None else int(len(events)),
        "rows_malformed": int(read_report.rows_malformed) if read_report is not None else 0,
        "rows_valid": int(len(events)),
        "users_total": int(len(u_uniq)),
        "products_total": int(len(p_uniq)),
        "users_kept": n_users,
        "products_kept": n_items,
        "rows_kept": rows_kept,
        "train_rows": int(len(train)),
        "test_rows": int(len(test)),
        "test_users_without_train_rows": int(n_users - len(np.unique(train[USER].to_numpy()))),
        "min_user_events": int(min_user_events),
        "min_product_events": int(min_product_events),
    }
    if read_report is not None:
        summary["read"] = read_report.as_dict()
    return Prepared(train=train, test=test, users=users, products=products, quantiles=quantiles, summary=summary)


def _user_table(events, u_uniq, u_cnt, u_kept, u_inv) -> pd.DataFrame:
    purchase = (events["event_type"] == "purchase").to_numpy()
    price = np.nan_to_num(events["price"].to_numpy(np.float64))
    spent = np.bincount(u_inv, weights=np.where(purchase, price, 0.0), minlength=len(u_uniq))
    users = pd.DataFrame(
        {USER_ID: u_uniq[u_kept], "n_events": u_cnt[u_kept].astype(np.int64), "sum_purchase": spent[u_kept]}
    )
    users.index.name = USER
    return users


def _product_table(events, p_uniq, p_cnt, p_kept, p_inv) -> pd.DataFrame:
    # Last seen attributes of each product (file order): reverse, take the first occurrence.
    rows = _last_index(p_inv, len(p_uniq))[p_kept]
    products = pd.DataFrame(
        {
            PRODUCT_ID: p_uniq[p_kept],
            "category_id": events["category_id"].to_numpy()[rows],
            "category_code": events["category_code"].take(rows).to_numpy(),
            "brand": events["brand"].take(rows).to_numpy(),
            "price": np.round(events["price"].to_numpy()[rows].astype(np.float64), 2),
            "n_events": p_cnt[p_kept].astype(np.int64),
        }
    )
    for c in ("category_code", "brand"):
        products[c] = products[c].astype(object).where(products[c].notna(), None)
    products.index.name = ITEM
    return products


def prepare_files(
    paths,
    out_dir: str | os.PathLike | None = None,
    min_user_events: int = DEFAULT_MIN_USER_EVENTS,
    min_product_events: int = DEFAULT_MIN_PRODUCT_EVENTS,
    progress: bool = True,
) -> Prepared:
    """Read, prepare and (when ``out_dir`` is given) save, in one call."""
    from .events import read_events

    events, report = read_events(paths, progress=progress)
    prepared = prepare(events, min_user_events, min_product_events, read_report=report)
    if out_dir is not None:
        prepared.save(out_dir)
    return prepared
