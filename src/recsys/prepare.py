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
from .events import Catalogue, read_events

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


class PreparedDataError(ValueError):
    """A prepared dataset directory whose files cannot be read."""


class EmptyDatasetError(ValueError):
    """Nothing is left to train on (no rows, or none pass the min-count filter)."""


@dataclasses.dataclass
class Prepared:
    """A prepared dataset.

    ``train``: ``user``, ``item`` (dense int32) and ``event_type_digit`` (int8), in time order
    (9 bytes a row: map to raw ids with ``users``/``products``).
    ``test``: one row per kept user, by ``user``: ``user``, ``item``, ``user_id``,
    ``product_id``, ``event_type_digit``, ``event_time``, ``earlier_events`` (the user's earlier rows
    on the test product, left out of training: the test event re-visits that product).
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
    #: Events per user and per product before filtering (``{"user": array, "product": array}``), as
    #: :func:`prepare` counted them: for notebook 01's plots; not saved.
    raw_counts: dict | None = dataclasses.field(default=None, repr=False, compare=False)

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

    def raw_ids(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame``'s ``user``/``item`` columns as raw ``user_id``/``product_id``."""
        return pd.DataFrame({
            USER_ID: self.users[USER_ID].to_numpy()[frame[USER].to_numpy()],
            PRODUCT_ID: self.products[PRODUCT_ID].to_numpy()[frame[ITEM].to_numpy()],
        }, index=frame.index)

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
        def table(name):  # Parquet has no second unit: times come back as ms
            try:
                df = pd.read_parquet(out / name)
            except FileNotFoundError:
                raise FileNotFoundError(f"{out / name} is missing: prepare the dataset again") from None
            except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
                raise PreparedDataError(f"{out / name}: not a readable Parquet file ({str(e).splitlines()[0]}): "
                                        "prepare the dataset again") from None
            return df.astype({"event_time": "datetime64[s]"}) if "event_time" in df else df

        try:
            summary = json.loads((out / "summary.json").read_text())
        except ValueError as e:
            raise PreparedDataError(f"{out / 'summary.json'}: not valid JSON ({e}): prepare the dataset again") from None
        return cls(train=table("train.parquet"), test=table("test.parquet"), users=table("users.parquet"),
                   products=table("products.parquet"), quantiles=table("quantiles.parquet"), summary=summary)


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


def prepare(
    events: pd.DataFrame,
    min_user_events: int = DEFAULT_MIN_USER_EVENTS,
    min_product_events: int = DEFAULT_MIN_PRODUCT_EVENTS,
    read_report=None,
    catalogue=None,
) -> Prepared:
    """Filter, index and split ``events`` (as returned by :func:`recsys.events.read_events`).

    ``events`` needs ``user_id``, ``product_id``, ``event_time`` and ``event_type_digit``; the
    product and purchase tables come from ``catalogue`` (a lean read) or from the other columns.
    Hash-based counting (``pd.factorize``) and boolean masks keep it linear in the rows; the
    time sort is skipped when the rows already are in time order (the Kaggle files are).
    """
    if min_user_events < 1 or min_product_events < 1:
        raise ValueError("min_user_events and min_product_events must be >= 1")
    if len(events) == 0:
        raise EmptyDatasetError("no events to prepare (every input row was malformed, or the files are empty)")
    if catalogue is None:
        catalogue = Catalogue.from_events(events)
    u_codes, u_uniq = pd.factorize(events[USER_ID].to_numpy())
    u_codes = u_codes.astype(np.int32)  # half the memory for the rest of the step
    p_codes, p_uniq = pd.factorize(events[PRODUCT_ID].to_numpy())
    p_codes = p_codes.astype(np.int32)
    u_cnt = np.bincount(u_codes)
    p_cnt = np.bincount(p_codes)
    quantiles = count_quantiles(pd.Series(u_cnt), pd.Series(p_cnt))

    keep = (u_cnt >= min_user_events)[u_codes]
    keep &= (p_cnt >= min_product_events)[p_codes]
    u_codes, p_codes = u_codes[keep], p_codes[keep]
    rows_kept = len(u_codes)
    if rows_kept == 0:
        raise EmptyDatasetError(
            f"no rows left after the min-count filter (users >= {min_user_events}, "
            f"products >= {min_product_events} events): use smaller minimums or more data"
        )
    # Dense ids over what survives, in ascending raw-id order.
    user, user_ids = _dense(u_codes, u_uniq)
    del u_codes
    item, product_ids = _dense(p_codes, p_uniq)
    del p_codes
    n_users, n_items = len(user_ids), len(product_ids)
    times = events["event_time"].to_numpy()[keep]
    label = events[LABEL].to_numpy()[keep]
    del keep
    # Time order, ties in file order (stable sort), unless already ordered.
    if len(times) > 1 and not (times[1:] >= times[:-1]).all():
        order = np.argsort(times, kind="stable")
        user, item, times, label = user[order], item[order], times[order], label[order]
        del order

    # Leave-last-out: the last kept row of each user (in time order) is the test row.
    is_test = ~pd.Series(user).duplicated(keep="last").to_numpy()
    test_item_of_user = np.empty(n_users, np.int32)
    test_item_of_user[user[is_test]] = item[is_test]
    in_train = test_item_of_user[user] != item  # a test pair never appears in train
    train = pd.DataFrame({USER: user[in_train], ITEM: item[in_train], LABEL: label[in_train]})
    # earlier rows on each user's test product (left out of training): the test event re-visits it
    earlier = np.bincount(user[~in_train & ~is_test], minlength=n_users)
    del in_train
    t_user, t_item = user[is_test], item[is_test]
    test = pd.DataFrame({USER: t_user, ITEM: t_item, USER_ID: user_ids[t_user], PRODUCT_ID: product_ids[t_item],
                         LABEL: label[is_test], "event_time": times[is_test],
                         "earlier_events": earlier[t_user].astype(np.int32)})
    test = test.sort_values(USER, kind="stable").reset_index(drop=True)
    users = _user_table(user_ids, u_cnt, u_uniq, catalogue.purchases)
    products = _product_table(product_ids, p_cnt, p_uniq, catalogue.products)

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
        "test_users_without_train_rows": int(n_users - np.count_nonzero(np.bincount(train[USER].to_numpy(), minlength=n_users))),
        # users with enough events, before the product filter removes the rows on rare products
        "users_with_min_events": int((u_cnt >= min_user_events).sum()),
        # kept rows that repeat a user's test pair (user, product): left out of training, or they would leak the answer
        "rows_dropped_as_test_pairs": int(rows_kept - len(train) - len(test)),
        "min_user_events": int(min_user_events),
        "min_product_events": int(min_product_events),
    }
    if read_report is not None:
        summary["read"] = read_report.as_dict()
    return Prepared(train=train, test=test, users=users, products=products, quantiles=quantiles, summary=summary,
                    raw_counts={"user": u_cnt, "product": p_cnt})


def _dense(codes: np.ndarray, uniq: np.ndarray):
    """Factorize codes of the kept rows -> (dense int32 id per row, raw id per dense id, ascending)."""
    present = np.bincount(codes, minlength=len(uniq)) > 0
    kept_codes = np.flatnonzero(present)
    raw = uniq[kept_codes]
    order = np.argsort(raw, kind="stable")
    dense_of_code = np.full(len(uniq), -1, np.int32)
    dense_of_code[kept_codes[order]] = np.arange(len(order), dtype=np.int32)
    return dense_of_code[codes], raw[order]


def _user_table(user_ids, u_cnt, u_uniq, purchases: pd.DataFrame) -> pd.DataFrame:
    count = pd.Series(u_cnt, index=u_uniq)
    spent = purchases.groupby(USER_ID)["price"].sum(min_count=1).astype(np.float64)
    users = pd.DataFrame({
        USER_ID: user_ids,
        "n_events": count.loc[user_ids].to_numpy(np.int64),
        "sum_purchase": np.round(spent.reindex(user_ids).fillna(0.0).to_numpy(), 2),
    })
    users.index.name = USER
    return users


def _product_table(product_ids, p_cnt, p_uniq, meta: pd.DataFrame) -> pd.DataFrame:
    meta = meta.set_index(PRODUCT_ID).reindex(product_ids)
    products = pd.DataFrame({
        PRODUCT_ID: product_ids,
        "category_id": meta["category_id"].to_numpy(np.int64),
        "category_code": meta["category_code"].astype(object).to_numpy(),
        "brand": meta["brand"].astype(object).to_numpy(),
        "price": np.round(meta["price"].to_numpy(np.float64), 2),
        "n_events": pd.Series(p_cnt, index=p_uniq).loc[product_ids].to_numpy(np.int64),
    })
    for c in ("category_code", "brand"):
        products[c] = products[c].where(products[c].notna(), None)
    products.index.name = ITEM
    return products


def side_information(prepared, train=None, recent: int = 5) -> dict:
    """Per item: category and brand codes (0: no brand); per user: the categories and brands of the
    last ``recent`` training rows, left-padded, with a mask (``train`` is in time order)."""
    train = prepared.train if train is None else train
    products = prepared.products
    _, cat = np.unique(products["category_id"].to_numpy(np.int64), return_inverse=True)
    brand_raw = products["brand"].astype(object).where(products["brand"].notna(), None).to_numpy(object)
    has_brand = np.array([b is not None for b in brand_raw])
    brand = np.zeros(len(products), np.int64)
    if has_brand.any():
        _, codes = np.unique(brand_raw[has_brand].astype(str), return_inverse=True)
        brand[has_brand] = codes + 1
    users, items = train[USER].to_numpy(), train[ITEM].to_numpy()
    order = np.argsort(users, kind="stable")
    u_sorted, i_sorted = users[order], items[order]
    ends = np.searchsorted(u_sorted, np.arange(prepared.n_users), side="right")
    starts = np.searchsorted(u_sorted, np.arange(prepared.n_users))
    rc = np.zeros((prepared.n_users, recent), np.int64)
    rb = np.zeros((prepared.n_users, recent), np.int64)
    mask = np.zeros((prepared.n_users, recent), np.float32)
    for k in range(recent):  # slot recent-1-k holds the k-th most recent row
        pos = ends - 1 - k
        ok = pos >= starts
        rows = i_sorted[pos[ok]]
        rc[ok, recent - 1 - k] = cat[rows]
        rb[ok, recent - 1 - k] = brand[rows]
        mask[ok, recent - 1 - k] = 1.0
    return {"item_category": cat, "item_brand": brand, "recent_category": rc, "recent_brand": rb, "recent_mask": mask,
            "n_categories": int(cat.max()) + 1 if len(cat) else 1, "n_brands": int(brand.max()) + 1}


def prepare_files(
    paths,
    out_dir: str | os.PathLike | None = None,
    min_user_events: int = DEFAULT_MIN_USER_EVENTS,
    min_product_events: int = DEFAULT_MIN_PRODUCT_EVENTS,
    progress: bool = True,
) -> Prepared:
    """Read (lean: 25 bytes per row), prepare and (when ``out_dir`` is given) save, in one call."""
    events, report, catalogue = read_events(paths, progress=progress, lean=True)
    prepared = prepare(events, min_user_events, min_product_events, read_report=report, catalogue=catalogue)
    if out_dir is not None:
        prepared.save(out_dir)
    return prepared
