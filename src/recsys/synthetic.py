"""Seeded generator of REES46-schema event CSVs at any size, with planted structure.

What is planted, so that a recommender has something real to find:

* a catalogue: categories with 19-digit ``category_id`` and a ``category_code`` (some empty,
  as in the real data), brands that belong to categories (some empty), per-product prices
  around a category price level;
* skewed popularity: Zipf-like product weights inside each category, Zipf-like category sizes;
* users with latent preferences: two favourite categories and a favourite brand each, and a
  heavy-tailed activity level;
* sessions (one ``user_session`` uuid each) of several events, mostly in one category, with
  re-views of the same product;
* a funnel: some views lead to ``cart``, some carts to ``purchase``, some to
  ``remove_from_cart``;
* time order: the file is sorted by ``event_time`` from ``start`` on.

The same ``seed`` and sizes give a byte-identical file (also for ``.csv.gz``: the gzip header
carries no name and no time). Generation runs in fixed-size chunks of sessions, so memory does
not grow with ``rows``.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from .constants import RAW_COLUMNS
from .progress import progress_bar

_CODES = (
    "electronics.smartphone", "electronics.audio.headphone", "electronics.video.tv",
    "electronics.clocks", "electronics.tablet", "computers.notebook", "computers.desktop",
    "computers.peripherals.printer", "appliances.kitchen.washer", "appliances.kitchen.refrigerators",
    "appliances.environment.vacuum", "appliances.kitchen.mixer", "appliances.iron",
    "apparel.shoes", "apparel.shoes.keds", "apparel.costume", "furniture.living_room.sofa",
    "furniture.bedroom.bed", "kids.toys", "kids.carriage", "auto.accessories.player",
    "construction.tools.drill", "sport.bicycle", "accessories.bag", "country_yard.cultivator",
    "medicine.tools.tonometer", "stationery.cartrige", "electronics.camera.photo",
)
_EMPTY_CODE_SHARE = 0.3
_EMPTY_BRAND_SHARE = 0.12
_SESSIONS_PER_CHUNK = 100_000
_MEAN_SESSION_EVENTS = 4.2  # ~ views per session + funnel events, measured on the generator
_P_CART, _P_PURCHASE, _P_REMOVE = 0.06, 0.45, 0.12


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    rows: int
    users: int | None = None
    products: int | None = None
    seed: int = 42
    start: str = "2019-10-01"
    days: int = 30

    def resolved(self) -> "SynthConfig":
        if self.rows < 0:
            raise ValueError("rows must be >= 0")
        users = self.users if self.users is not None else max(50, self.rows // 15)
        products = self.products if self.products is not None else max(20, self.rows // 40)
        if users < 1 or products < 1:
            raise ValueError("users and products must be >= 1")
        return dataclasses.replace(self, users=users, products=products)


class _World:
    """The static part: catalogue, brands, users and their preferences."""

    def __init__(self, cfg: SynthConfig) -> None:
        rng = np.random.default_rng([cfg.seed, 0])
        P, U = cfg.products, cfg.users
        n_cat = int(np.clip(P // 150, 3, 400))
        n_brand = int(np.clip(P // 25, 3, 6000))
        self.cat_ids = 2053013552000000000 + np.sort(rng.choice(10**15, n_cat, replace=False)).astype(np.int64)
        codes = np.array([_CODES[i % len(_CODES)] + ("" if i < len(_CODES) else f".x{i // len(_CODES)}")
                          for i in range(n_cat)], dtype=object)
        codes[rng.random(n_cat) < _EMPTY_CODE_SHARE] = ""
        self.cat_codes = codes
        self.brand_names = np.array([f"brand{i:04d}" for i in range(n_brand)], dtype=object)
        cat_w = 1.0 / np.arange(1, n_cat + 1) ** 0.9
        self.cat_w = cat_w / cat_w.sum()
        # products: category (Zipf sizes), brand from the category's brand pool, price level
        prod_cat = np.sort(rng.choice(n_cat, P, p=self.cat_w))
        prod_brand = (prod_cat * 7 + rng.integers(0, 6, P)) % n_brand
        prod_brand = np.where(rng.random(P) < _EMPTY_BRAND_SHARE, -1, prod_brand)
        cat_price = np.exp(rng.normal(4.0, 1.2, n_cat))
        price = np.round(cat_price[prod_cat] * np.exp(rng.normal(0, 0.35, P)), 2)
        self.prod_ids = 1000000 + np.cumsum(rng.integers(1, 400, P)).astype(np.int64)
        self.prod_cat, self.prod_brand, self.price = prod_cat, prod_brand, np.maximum(price, 0.5)
        # popularity inside each category: Zipf over a random ranking
        pop = 1.0 / (rng.permutation(P) + 1.0) ** 0.8
        self.cum_pop = np.cumsum(pop)
        starts = np.searchsorted(prod_cat, np.arange(n_cat))
        ends = np.searchsorted(prod_cat, np.arange(n_cat), side="right")
        before = np.r_[0.0, self.cum_pop][starts]
        self.cat_lo, self.cat_span = before, np.r_[0.0, self.cum_pop][ends] - before
        self.cat_has = ends > starts
        # users: activity, two favourite categories, a favourite brand's products
        self.user_ids = 500000000 + np.cumsum(rng.integers(1, 60, U)).astype(np.int64)
        act = np.exp(rng.normal(0, 1.1, U))
        self.cum_act = np.cumsum(act) / act.sum()
        self.fav = rng.choice(n_cat, (U, 2), p=self.cat_w)
        self.fav_item = rng.integers(0, P, U)  # an anchor product the user keeps coming back to
        self.n_cat = n_cat

    def pick_items(self, rng, cats: np.ndarray) -> np.ndarray:
        cats = np.where(self.cat_has[cats], cats, self.prod_cat[rng.integers(0, len(self.prod_cat), len(cats))])
        target = self.cat_lo[cats] + rng.random(len(cats)) * self.cat_span[cats]
        return np.minimum(np.searchsorted(self.cum_pop, target, side="right"), len(self.cum_pop) - 1)


def _uuids(rng, n: int) -> pa.Array:
    """n random uuid4-shaped strings, vectorised."""
    raw = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    hexd = np.frombuffer(b"0123456789abcdef", np.uint8)
    nib = np.empty((n, 32), np.uint8)
    nib[:, 0::2] = hexd[raw >> 4]
    nib[:, 1::2] = hexd[raw & 0x0F]
    out = np.full((n, 36), ord("-"), np.uint8)
    for dst, src in ((slice(0, 8), slice(0, 8)), (slice(9, 13), slice(8, 12)), (slice(14, 18), slice(12, 16)),
                     (slice(19, 23), slice(16, 20)), (slice(24, 36), slice(20, 32))):
        out[:, dst] = nib[:, src]
    return pc.cast(pa.array(out.view("S36").ravel(), pa.binary(36)), pa.string())


def _chunk(world: _World, cfg: SynthConfig, k: int, t0: float, window: float) -> pa.Table:
    rng = np.random.default_rng([cfg.seed, 1, k])
    S = _SESSIONS_PER_CHUNK
    s_user = np.minimum(np.searchsorted(world.cum_act, rng.random(S)), cfg.users - 1)
    s_len = np.minimum(rng.geometric(0.28, S), 40)
    s_cat = np.where(rng.random(S) < 0.8, world.fav[s_user, rng.integers(0, 2, S)],
                     rng.choice(world.n_cat, S, p=world.cat_w))
    s_start = t0 + np.sort(rng.random(S)) * window
    s_uuid = _uuids(rng, S)
    # views
    sess = np.repeat(np.arange(S), s_len)
    n = len(sess)
    cats = np.where(rng.random(n) < 0.85, s_cat[sess], rng.choice(world.n_cat, n, p=world.cat_w))
    items = world.pick_items(rng, cats)
    anchor = rng.random(n) < 0.12
    items = np.where(anchor, world.fav_item[s_user[sess]], items)
    first = np.r_[True, sess[1:] != sess[:-1]]
    again = (rng.random(n) < 0.25) & ~first  # re-view the previous product
    idx = np.arange(n)
    src = np.where(again, idx - 1, idx)
    for _ in range(3):  # follow short chains of re-views
        src = src[src]
    items = items[src]
    gaps = rng.exponential(35.0, n)
    gaps[first] = 0.0
    t = s_start[sess] + (np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[first], s_len))
    etype = np.zeros(n, np.int8)  # 0 view, 1 cart, 2 purchase, 3 remove_from_cart
    # funnel: a view may be followed by cart, then purchase or remove_from_cart
    carted = np.flatnonzero(rng.random(n) < _P_CART)
    u = rng.random(len(carted))
    bought = carted[u < _P_PURCHASE]
    removed = carted[(u >= _P_PURCHASE) & (u < _P_PURCHASE + _P_REMOVE)]
    ev_sess = np.concatenate([sess, sess[carted], sess[bought], sess[removed]])
    ev_item = np.concatenate([items, items[carted], items[bought], items[removed]])
    ev_type = np.concatenate([etype, np.full(len(carted), 1, np.int8), np.full(len(bought), 2, np.int8),
                              np.full(len(removed), 3, np.int8)])
    ev_t = np.concatenate([t, t[carted] + rng.uniform(5, 60, len(carted)), t[bought] + rng.uniform(60, 600, len(bought)),
                           t[removed] + rng.uniform(60, 600, len(removed))])
    ev_t = np.minimum(np.floor(ev_t), np.floor(t0 + window) - 1)  # whole seconds, inside this chunk
    order = np.lexsort((np.arange(len(ev_t)), ev_t))
    ev_sess, ev_item, ev_type, ev_t = ev_sess[order], ev_item[order], ev_type[order], ev_t[order]
    names = pa.array(["view", "cart", "purchase", "remove_from_cart"])
    codes = pa.array(world.cat_codes.tolist())
    brands = pa.array(world.brand_names.tolist())
    cat = world.prod_cat[ev_item]
    brand = world.prod_brand[ev_item]
    brand_col = pc.take(brands, pa.array(np.where(brand >= 0, brand, 0)))
    brand_col = pc.if_else(pa.array(brand >= 0), brand_col, pa.scalar(None, pa.string()))
    code_col = pc.take(codes, pa.array(cat))
    code_col = pc.if_else(pc.equal(code_col, ""), pa.scalar(None, pa.string()), code_col)
    return pa.table({
        "event_time": pc.strftime(pa.array(ev_t.astype("datetime64[s]")), format="%Y-%m-%d %H:%M:%S UTC"),
        "event_type": pc.take(names, pa.array(ev_type)),
        "product_id": pa.array(world.prod_ids[ev_item]),
        "category_id": pa.array(world.cat_ids[cat]),
        "category_code": code_col,
        "brand": brand_col,
        "price": pa.array(world.price[ev_item]),
        "user_id": pa.array(world.user_ids[s_user[ev_sess]]),
        "user_session": pc.take(s_uuid, pa.array(ev_sess)),
    })


def generate(path: str | os.PathLike, rows: int, users: int | None = None, products: int | None = None,
             seed: int = 42, start: str = "2019-10-01", days: int = 30, progress: bool = True) -> Path:
    """Write ``rows`` REES46-schema events to ``path`` (``.csv`` or ``.csv.gz``)."""
    cfg = SynthConfig(rows=rows, users=users, products=products, seed=seed, start=start, days=days).resolved()
    world = _World(cfg)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t_start = float(np.datetime64(cfg.start, "s").astype(np.int64))
    n_chunks_planned = max(1, int(np.ceil(rows / (_SESSIONS_PER_CHUNK * _MEAN_SESSION_EVENTS))))
    window = cfg.days * 86400.0 / n_chunks_planned
    opts = pacsv.WriteOptions(include_header=False, quoting_style="none")
    header = (",".join(RAW_COLUMNS) + "\n").encode()
    raw = open(path, "wb")
    sink = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) if path.suffix == ".gz" else raw
    try:
        sink.write(header)
        written, k = 0, 0
        with progress_bar(total=rows, unit="row", unit_scale=True, desc="synth", enabled=progress) as bar:
            while written < rows:
                table = _chunk(world, cfg, k, t_start + k * window, window)
                table = table.slice(0, min(table.num_rows, rows - written))
                buf = pa.BufferOutputStream()
                pacsv.write_csv(table, buf, write_options=opts)
                sink.write(buf.getvalue().to_pybytes())
                written += table.num_rows
                bar.update(table.num_rows)
                k += 1
    finally:
        if sink is not raw:
            sink.close()
        raw.close()
    return path
