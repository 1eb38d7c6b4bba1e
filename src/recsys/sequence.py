"""A sequence-aware model of the MFBlock family: the user's last events, tied item parts, softmax.

**Score** of (user, product) = ``dot(user_vector, item_vector)``, as in :class:`~recsys.model.MFBlock`, so
the serving code, the ranking code and the Aurora function are unchanged.

* **Item vector**: the concatenation of the item's parts (:data:`PARTS`), each ``num_emb`` wide, and its
  bias: the item's embedding row; unit vectors of its category, its brand (zero without one) and its
  price (Gaussian bumps of log(1 + price) on a fixed grid, projected; zero without a price); the bias is
  a learned per-item value plus a learned weight times log(1 + the item's training events).
* **User vector**: the user's last ``history`` training events (item, category, brand, event type) are
  read through the *same* parts (tied embeddings); the item part also gets an event-type embedding. An
  attention over the events (weights from the position and the event type) pools them. For each part,
  a learned transition of ``[last event's part, pooled history's part]`` gives the user's part: on the
  item part this is an FPMC-style transition from the last item to the next one. The last coordinate
  multiplies the item bias: a learned weight for a user with a history, 1 for a user without.
* **Cold users** (no training row) have an empty history: every part is exactly zero, and their vector
  is ``(0, ..., 0, 0, 1)`` against the item vector's last coordinate, the item's training events: they are
  ranked by popularity. That was chosen on the October sample's validation split: its 209 users
  without a validation-training row got HR@10 0.077 by the popularity prior against 0.053 by the learned
  per-item bias. Users with a history weigh the learned bias instead (their vector ends in ``(w, 0)``),
  so the last coordinate never touches them.
* The transitions start at ``mix_last * I`` and ``mix_history * I`` (the weights a practitioner gives
  the last row's category, the recent categories, brands and price), the attribute parts at random unit
  vectors (which match exactly only themselves), so the untrained model already ranks products like
  the last one first. Training moves everything; ``prior`` (in examples) pulls the small tables back
  towards that start, so on a small dataset the data must outweigh it and on a large one it fades.
* The per-user history (item ids as int32, event types as uint8: ``5 * history`` bytes a user) and the
  per-item codes (category, brand, price bucket as int32, log popularity as float32: 16 bytes an item)
  are constants stored with the parameters (``grad_req="null"``), so a saved model directory carries
  everything it needs.

**Training** (:func:`fit_sequence`): self-supervised next-item examples from each user's training
sequence, in time order. The evaluation protocol takes a user's last event as the target, removes every
row of that (user, product) pair from the history, and excludes the user's training products from the
candidates. Each example does the same: a target row, the ``history`` rows before it without the
target's product, and the products of that history excluded from its softmax. ``targets`` says which
rows are targets: ``"last"`` (each (user, product) pair's last row, as the protocol does), ``"first"``
(each pair's first row: the next *new* product) or ``"all"``; at most one example per training row.
The target's popularity feature leaves out the user's own rows on it (at evaluation the test rows are
not in the counts either). Loss: softmax cross-entropy of the target against ``negatives`` products
shared by the batch, sampled with probability proportional to (training events + 1)^0.75 and
logQ-corrected (``sampler="popularity"``) or uniformly; when the catalogue has at most ``negatives``
products, against the whole catalogue (exact softmax). ``loss="bpr"`` takes BPR against the same
negatives instead. The item embeddings and item biases are updated row by row (the batch's rows and
their Adam state only, :class:`recsys.training._RowTable`); the small tables by a Gluon ``Trainer``.

Memory: the model holds ``5 * history`` bytes a user and ``4 * (num_emb + 1) + 16`` bytes an item (plus
Adam's two copies of the item tables while training); training keeps the user-sorted training rows
(13 bytes a row) and one example per row (16 bytes), and builds histories chunk by chunk.

This module is imported by the SageMaker containers (Python 3.8): keep it 3.8-compatible.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from . import mx as _mx
from .constants import DEFAULT_SEED, ITEM, LABEL, USER
from .progress import progress_bar

mx = _mx.mx
nd = mx.nd
autograd = mx.autograd
gluon = mx.gluon
nn = gluon.nn

#: Event-type codes: 0 marks an empty history slot, 1..4 are the kit's ``event_type_digit``.
N_EVENTS = 5
#: The parts of an item vector (``price`` only with ``price_bins > 0``).
PARTS = ("item", "category", "brand", "price")
#: Log prices are bucketed on this many steps between their 1st and 99th percentiles (bucket
#: ``PRICE_BUCKETS``: no price, or an empty history slot).
PRICE_BUCKETS = 128
TARGETS = ("last", "first", "all")
LOSSES = ("softmax", "bpr")
SAMPLERS = ("popularity", "uniform")
SAMPLER_POWER = 0.75  # q(item) ~ (training events + 1) ** SAMPLER_POWER
MASK = -1e9  # added to the logits of excluded candidates
BATCHES_PER_CHUNK = 32  # batches whose inputs go to the device in one copy


def _unit(F, x):
    """The rows of ``x`` scaled to unit length (a zero row stays zero)."""
    return F.L2Normalization(x, mode="instance", eps=1e-12)


class _Tables(gluon.HybridBlock):
    """The small tables of a :class:`SequenceMFBlock`, each its start (a constant) plus a learned deviation.

    Training decays the deviations (``prior``): a pull towards the start. ``tables(bumps)`` returns a tuple
    in :attr:`names` order: ``category`` (+ a zero row for an empty slot), ``brand`` (row 0, no brand, is
    zero), ``price`` (a unit vector per price bucket, + a zero row), ``position_logits`` ``(1, history)``,
    ``event_logits`` ``(events,)``, ``popularity_weight`` and ``warm_bias`` ``(1, 1)``, and ``transitions``
    ``(parts, d, 2d)`` (per part: [last event's part, pooled history's part] -> the user's part).
    """

    def __init__(self, num_emb: int, n_categories: int, n_brands: int, history: int, price_bins: int,
                 part_names, **kwargs) -> None:
        super().__init__(**kwargs)
        d = num_emb
        self.n_brands, self.price_bins = n_brands, price_bins
        self.shapes = {"category": (n_categories, d), "brand": (n_brands, d), "position_logits": (1, history),
                       "event_logits": (N_EVENTS,), "popularity_weight": (1, 1), "warm_bias": (1, 1),
                       "transitions": (len(part_names), d, 2 * d)}
        if price_bins:
            self.shapes["price"] = (price_bins, d)
        self.names = tuple(self.shapes)
        with self.name_scope():
            for name, shape in self.shapes.items():
                setattr(self, name, self.params.get(name, shape=shape, init=mx.init.Zero()))
                setattr(self, f"{name}_start", self.params.get(f"{name}_start", shape=shape, grad_req="null",
                                                               init=mx.init.Zero()))

    def deviations(self) -> list:
        return [getattr(self, name) for name in self.names]

    def set_start(self, values: dict) -> None:
        for name, value in values.items():
            param = getattr(self, f"{name}_start")
            param.set_data(nd.array(np.asarray(value, np.float32).reshape(param.shape), ctx=param.list_ctx()[0]))

    def hybrid_forward(self, F, bumps, **params):
        t = {name: params[name] + params[f"{name}_start"] for name in self.names}
        zero = F.zeros_like(F.slice_axis(t["category"], axis=0, begin=0, end=1))
        t["category"] = F.concat(t["category"], zero, dim=0)
        if self.n_brands > 1:
            t["brand"] = F.concat(zero, F.slice_axis(t["brand"], axis=0, begin=1, end=None), dim=0)
        else:
            t["brand"] = zero
        if self.price_bins:
            t["price"] = F.concat(_unit(F, F.dot(bumps, t["price"])), zero, dim=0)
        return tuple(t[name] for name in self.names)


def _as_dict(names, values) -> dict:
    return dict(zip(names, values))


def _item_parts(F, t: dict, part_names, item_rows, cat, brand, bucket):
    """The items' parts side by side, ``(..., parts * d)``, from their embedding rows and codes (floats)."""
    parts = [item_rows, F.take(t["category"], cat), F.take(t["brand"], brand)]
    if "price" in part_names:
        parts.append(F.take(t["price"], bucket))
    return F.concat(*parts, dim=-1)


def _item_bias(F, t: dict, bias_rows, log_popularity):
    """``(n, 1)``: the items' bias rows + the popularity weight times their log popularity."""
    return bias_rows + F.broadcast_mul(F.expand_dims(log_popularity, axis=1), t["popularity_weight"])


def _user_parts(F, t: dict, n_parts: int, hist_parts, events):
    """``(user parts (batch, parts * d), bias weight (batch, 1))`` from the history's item parts ``(batch,
    history, parts * d)`` (zero in empty slots) and event types ``(batch, history)`` (floats, 0: empty)."""
    mask = F.clip(events, 0, 1)  # 1 where a slot holds an event
    logits = F.broadcast_add(F.take(t["event_logits"], events), t["position_logits"])
    attention = F.softmax(logits + (mask - 1) * 1e4, axis=1) * mask  # all zero for an empty history
    last = F.concat(F.zeros_like(F.slice_axis(mask, axis=1, begin=0, end=-1)),
                    F.slice_axis(mask, axis=1, begin=-1, end=None), dim=1)  # the last slot, if it holds an event
    # (batch, 2, history) x (batch, history, parts * d): the last event's parts and the pooled history's
    x = F.batch_dot(F.stack(last, attention, axis=1), hist_parts)
    x = F.reshape(F.transpose(F.reshape(x, (0, 2, n_parts, -1)), axes=(2, 0, 1, 3)), (0, 0, -3))  # (parts, batch, 2d)
    u = F.batch_dot(x, t["transitions"], transpose_b=True)  # (parts, batch, d)
    warm = F.slice_axis(mask, axis=1, begin=-1, end=None)  # (batch, 1): 1 with a history
    return F.reshape(F.transpose(u, axes=(1, 0, 2)), (0, -1)), 1 + F.broadcast_mul(warm, t["warm_bias"] - 1)


class SequenceMFBlock(gluon.HybridBlock):
    """``SequenceMFBlock(max_users, max_items, num_emb, n_categories, n_brands, history, price_bins)``.

    ``net(users, items)`` scores dense-id pairs; ``user_vectors`` / ``item_vectors`` are the two towers
    (inference), each :attr:`width` wide.
    """

    def __init__(self, max_users: int, max_items: int, num_emb: int = 32, n_categories: int = 1, n_brands: int = 1,
                 history: int = 10, price_bins: int = 16, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_users, self.max_items, self.num_emb = int(max_users), int(max_items), int(num_emb)
        self.n_categories, self.n_brands, self.history = int(n_categories), int(n_brands), int(history)
        self.price_bins = int(price_bins)
        self.part_names = PARTS if self.price_bins else PARTS[:-1]
        d, length = self.num_emb, self.history
        with self.name_scope():
            # big tables: fit_sequence updates only a batch's rows
            self.item_embeddings = nn.Embedding(self.max_items, d, prefix="item_embeddings_")
            self.item_bias = nn.Embedding(self.max_items, 1, prefix="item_bias_")
            self.tables = _Tables(d, self.n_categories, self.n_brands, length, self.price_bins, self.part_names,
                                  prefix="tables_")
            const = dict(grad_req="null", init=mx.init.Zero())
            self.item_category = self.params.get("item_category", shape=(self.max_items,), dtype="int32", **const)
            self.item_brand = self.params.get("item_brand", shape=(self.max_items,), dtype="int32", **const)
            self.item_price_bucket = self.params.get("item_price_bucket", shape=(self.max_items,), dtype="int32",
                                                     **const)
            self.price_bucket_bumps = self.params.get("price_bucket_bumps",
                                                      shape=(PRICE_BUCKETS, max(self.price_bins, 1)), **const)
            self.item_log_popularity = self.params.get("item_log_popularity", shape=(self.max_items,), **const)
            # the user's last `history` training rows, left-padded (the most recent in the last slot; event 0: empty)
            self.user_history_items = self.params.get("user_history_items", shape=(self.max_users, length),
                                                      dtype="int32", **const)
            self.user_history_events = self.params.get("user_history_events", shape=(self.max_users, length),
                                                       dtype="uint8", **const)

    #: A user's vector comes from the stored history (no row per user): a Recommender computes it per request.
    user_vectors_from_history = True

    @property
    def width(self) -> int:
        """Width of the user and item vectors: the parts, the bias, the popularity prior of cold users."""
        return len(self.part_names) * self.num_emb + 2

    def config(self) -> dict:
        return {"kind": "sequence", "max_users": self.max_users, "max_items": self.max_items, "num_emb": self.num_emb,
                "n_categories": self.n_categories, "n_brands": self.n_brands, "history": self.history,
                "price_bins": self.price_bins}

    def set_constants(self, item_category, item_brand, item_price_bucket, price_bucket_bumps, item_log_popularity,
                      history_items, history_events) -> None:
        for param, value in ((self.item_category, item_category), (self.item_brand, item_brand),
                             (self.item_price_bucket, item_price_bucket), (self.price_bucket_bumps, price_bucket_bumps),
                             (self.item_log_popularity, item_log_popularity), (self.user_history_items, history_items),
                             (self.user_history_events, history_events)):
            param.set_data(nd.array(np.asarray(value), dtype=param.dtype, ctx=param.list_ctx()[0]))

    def _parts_of(self, F, t, items, item_category, item_brand, item_price_bucket):
        code = lambda table: F.cast(F.take(table, items), "float32")  # noqa: E731
        return _item_parts(F, t, self.part_names, self.item_embeddings(items), code(item_category), code(item_brand),
                           code(item_price_bucket))

    def _user(self, F, t, users, item_category, item_brand, item_price_bucket, user_history_items,
              user_history_events, **_):
        hist = F.take(user_history_items, users)
        events = F.cast(F.take(user_history_events, users), "float32")
        hist_parts = F.broadcast_mul(self._parts_of(F, t, hist, item_category, item_brand, item_price_bucket),
                                     F.expand_dims(F.clip(events, 0, 1), axis=2))  # empty slots are zero
        u, bias_weight = _user_parts(F, t, len(self.part_names), hist_parts, events)
        # a user with a history weighs the learned bias; a user without one (cold) the item's training events
        warm = F.slice_axis(F.clip(events, 0, 1), axis=1, begin=-1, end=None)
        return F.concat(u, bias_weight * warm, 1 - warm, dim=1)

    def _item(self, F, t, items, item_category, item_brand, item_price_bucket, item_log_popularity, **_):
        parts = self._parts_of(F, t, items, item_category, item_brand, item_price_bucket)
        log_pop = F.take(item_log_popularity, items)
        events = F.expand_dims(F.expm1(log_pop), axis=1)  # training events (exact in float32 below 2**24)
        return F.concat(parts, _item_bias(F, t, self.item_bias(items), log_pop), F.round(events), dim=1)

    def hybrid_forward(self, F, users, items, price_bucket_bumps, **constants):
        t = _as_dict(self.tables.names, self.tables(price_bucket_bumps))
        return F.sum(self._user(F, t, users, **constants) * self._item(F, t, items, **constants), axis=1)

    def _constants(self, c) -> dict:
        return {name: getattr(self, name).data(c) for name in (
            "item_category", "item_brand", "item_price_bucket", "item_log_popularity", "user_history_items",
            "user_history_events")}

    def user_vectors(self, users):
        c = users.context
        t = _as_dict(self.tables.names, self.tables(self.price_bucket_bumps.data(c)))
        return self._user(nd, t, users.astype("int64"), **self._constants(c))

    def item_vectors(self, items):
        c = items.context
        t = _as_dict(self.tables.names, self.tables(self.price_bucket_bumps.data(c)))
        return self._item(nd, t, items.astype("int64"), **self._constants(c))


class _TrainGraph(gluon.HybridBlock):
    """The training loss of a batch, as one hybridised graph over the gathered rows of the item tables
    (it shares :class:`SequenceMFBlock`'s small tables)."""

    def __init__(self, net: SequenceMFBlock, loss: str, **kwargs) -> None:
        super().__init__(prefix=net.prefix + "train_", **kwargs)
        self.tables = net.tables
        self.part_names, self.loss, self.width = net.part_names, loss, net.width

    def hybrid_forward(self, F, bumps, i_block, b_block, part_idx, hist_idx, events, pos_idx,
                       pos_bidx, pos_pop, loo, neg_idx, neg_bidx, neg_pop, offset):
        t = _as_dict(self.tables.names, self.tables(bumps))
        # the batch's items' parts with one lookup, not a concatenation of four: ``part_idx`` (rows, parts)
        # indexes the item rows followed by the category, brand and price tables (see _Stepper._batch)
        tables = [i_block, t["category"], t["brand"]] + ([t["price"]] if "price" in self.part_names else [])
        rows = F.reshape(F.take(F.concat(*tables, dim=0), part_idx), (0, -1))  # (rows, parts * d)
        # an empty history slot points at row 0: its weight in the pooling and as the last event is zero
        u, bias_weight = _user_parts(F, t, len(self.part_names), F.take(rows, hist_idx), events)
        pos_bias = _item_bias(F, t, F.take(b_block, pos_bidx), pos_pop)
        neg_bias = _item_bias(F, t, F.take(b_block, neg_bidx), neg_pop)
        # the target's popularity without the user's own rows on it: + w * (the change of its log popularity)
        pos_bias = pos_bias + F.broadcast_mul(F.expand_dims(loo, axis=1), t["popularity_weight"])
        ones = F.ones_like(F.slice_axis(F.slice_axis(rows, axis=0, begin=0, end=1), axis=1, begin=0, end=1))
        pos = F.dot(u * F.take(rows, pos_idx), F.broadcast_to(ones, shape=(self.width - 2, 1)))  # row sums
        pos = pos + bias_weight * pos_bias
        neg = F.dot(u, F.take(rows, neg_idx), transpose_b=True) + F.dot(bias_weight, neg_bias, transpose_b=True)
        return _loss(F, F.concat(pos, neg, dim=1) + offset, self.loss)


def price_buckets(prices: np.ndarray, bins: int) -> tuple:
    """``(bucket per item, bumps per bucket)``: log(1 + price) on :data:`PRICE_BUCKETS` even steps between
    its 1st and 99th percentiles (``PRICE_BUCKETS`` where the price is unknown or negative), and at each
    bucket's centre ``bins`` Gaussian bumps with evenly spaced centres, as wide as their spacing."""
    prices = np.asarray(prices, np.float64)
    known = np.isfinite(prices) & (prices >= 0)
    log_price = np.log1p(np.where(known, prices, 0.0))
    lo, hi = np.percentile(log_price[known], [1, 99]) if known.any() else (0.0, 1.0)
    hi = max(hi, lo + 1e-3)
    step = (hi - lo) / PRICE_BUCKETS
    bucket = np.clip(np.floor((log_price - lo) / step), 0, PRICE_BUCKETS - 1).astype(np.int32)
    bucket[~known] = PRICE_BUCKETS
    bins = max(int(bins), 1)
    centres = np.linspace(lo, hi, bins) if bins > 1 else np.array([(lo + hi) / 2])
    width = (hi - lo) / max(bins - 1, 1)
    middle = lo + (np.arange(PRICE_BUCKETS) + 0.5) * step
    bumps = np.exp(-np.square(middle[:, None] - centres[None, :]) / (2 * width ** 2))
    return bucket, bumps.astype(np.float32)


# ---- sequences, histories and examples ----------------------------------------------------------------

@dataclasses.dataclass
class Sequences:
    """Each user's training rows in time order, users one after the other."""

    items: np.ndarray  # int32, one per row
    events: np.ndarray  # uint8
    users: np.ndarray  # int32
    starts: np.ndarray  # int64: first row of each user, and the end (n_users + 1 entries)

    @classmethod
    def from_train(cls, train, n_users: int) -> "Sequences":
        users = train[USER].to_numpy()
        events = train[LABEL].to_numpy()
        if len(events) and (events.min() < 1 or events.max() >= N_EVENTS):
            raise ValueError(f"{LABEL} must be in 1..{N_EVENTS - 1}, not {int(events.min())}..{int(events.max())}")
        order = np.argsort(users, kind="stable")  # train is in time order: each user's rows stay so
        starts = np.zeros(n_users + 1, np.int64)
        np.cumsum(np.bincount(users, minlength=n_users), out=starts[1:])
        return cls(items=train[ITEM].to_numpy()[order].astype(np.int32), events=events[order].astype(np.uint8),
                   users=users[order].astype(np.int32), starts=starts)

    def histories(self, ends: np.ndarray, starts: np.ndarray, length: int, exclude=None):
        """``(items, events)``, each ``(len(ends), length)``: the last ``length`` rows in ``[start, end)``,
        skipping rows on the product ``exclude`` (one per entry, -1: none); left-padded with item -1, event 0."""
        n = len(ends)
        items = np.full((n, length), -1, np.int32)
        events = np.zeros((n, length), np.uint8)
        exclude = np.full(n, -1, np.int64) if exclude is None else np.asarray(exclude, np.int64)
        ptr = np.asarray(ends, np.int64) - 1
        starts = np.asarray(starts, np.int64)
        active = np.flatnonzero(ptr >= starts)
        for slot in range(length - 1, -1, -1):
            while len(active):  # step over the excluded product's rows
                skip = active[self.items[ptr[active]] == exclude[active]]
                if not len(skip):
                    break
                ptr[skip] -= 1
                active = active[ptr[active] >= starts[active]]
            if not len(active):
                break
            items[active, slot] = self.items[ptr[active]]
            events[active, slot] = self.events[ptr[active]]
            ptr[active] -= 1
            active = active[ptr[active] >= starts[active]]
        return items, events

    def user_histories(self, length: int):
        """Every user's last ``length`` rows (what the model reads at inference)."""
        return self.histories(self.starts[1:], self.starts[:-1], length)

    def _pair_blocks(self):
        """``(s, keys)`` per block of whole users (:func:`recsys.pairs.user_blocks`): the block's first row and
        its rows' (user, product) keys. A pair never spans two blocks, so the temporaries of grouping the
        rows by pair stay bounded by the block, whatever the number of rows."""
        from .pairs import user_blocks

        n_items = int(self.items.max()) + 1 if len(self.items) else 1
        for s, e in user_blocks(self.starts):
            yield s, self.users[s:e].astype(np.int64) * n_items + self.items[s:e]

    def pair_counts(self) -> np.ndarray:
        """For each row, how many rows its (user, product) pair has."""
        out = np.empty(len(self.items), np.int32)
        for s, key in self._pair_blocks():
            _, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
            out[s:s + len(key)] = cnt[inv]
        return out

    def examples(self, targets: str) -> np.ndarray:
        """Row positions (into the sorted rows) that are targets, ascending: at most one per row."""
        if targets == "all":
            return np.arange(len(self.items), dtype=np.int64)
        parts = []
        for s, key in self._pair_blocks():
            if targets == "first":
                _, pos = np.unique(key, return_index=True)
            else:  # the last row of each (user, product) pair
                _, rev = np.unique(key[::-1], return_index=True)
                pos = len(key) - 1 - rev
            parts.append(np.sort(pos) + s)
        return np.concatenate(parts).astype(np.int64, copy=False) if parts else np.empty(0, np.int64)


def item_codes(prepared, price_bins: int) -> dict:
    """Per item: category and brand codes (0: no brand), as the kit's feature builder makes them, and the
    price bucket (:func:`price_buckets`)."""
    from .prepare import side_information

    side = side_information(prepared, prepared.train.iloc[:0], recent=1)
    products = prepared.products
    prices = products["price"].to_numpy(np.float64) if "price" in products else np.full(prepared.n_items, np.nan)
    bucket, bumps = price_buckets(prices, price_bins)
    return {"item_category": side["item_category"].astype(np.int32), "item_brand": side["item_brand"].astype(np.int32),
            "n_categories": side["n_categories"], "n_brands": side["n_brands"], "item_price_bucket": bucket,
            "price_bucket_bumps": bumps}


# ---- training ------------------------------------------------------------------------------------------

@dataclasses.dataclass
class SequenceConfig:
    """Hyperparameters of :func:`fit_sequence` (chosen on the October sample's validation split)."""

    epochs: int = 10
    num_embeddings: int = 32
    history: int = 5
    batch_size: int = 256
    lr: float = 0.01
    #: weight decay of the item embeddings and biases (lazy: a row decays when it is in a batch)
    wd: float = 1e-2
    #: weight, in examples, of the pull of the small tables towards their initial values
    prior: float = 1000.0
    negatives: int = 64
    sampler: str = "popularity"
    loss: str = "softmax"
    targets: str = "last"
    price_bins: int = 16
    popularity_init: float = 0.25
    #: initial transitions: weight of the last event's parts (PARTS order) and of the pooled history's
    mix_last: tuple = (1.0, 4.0, 1.0, 1.0)
    mix_history: tuple = (0.5, 2.0, 1.0, 0.5)
    init_scale: float = 0.01  # std of the initial item embeddings
    ctx: str = "auto"
    seed: int = DEFAULT_SEED
    scale_epochs: bool = False  # the epochs and batch-size rules of recsys.presets
    scale_batch: bool = False

    def validate(self) -> "SequenceConfig":
        for name, allowed in (("loss", LOSSES), ("targets", TARGETS), ("sampler", SAMPLERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {getattr(self, name)!r}")
        for name in ("epochs", "num_embeddings", "history", "batch_size", "negatives", "price_bins"):
            value = getattr(self, name)
            least = 0 if name in ("epochs", "price_bins") else 1
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, not {value!r}")
        for name, positive in (("lr", True), ("wd", False), ("prior", False), ("init_scale", True),
                               ("popularity_init", None)):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or (positive and value <= 0) or (positive is False and value < 0):
                rule = "> 0" if positive else (">= 0" if positive is False else "")
                raise ValueError(f"{name} must be a finite number {rule}, not {value!r}".replace("  ", " "))
        for name in ("mix_last", "mix_history"):
            value = tuple(getattr(self, name))
            if len(value) != len(PARTS) or not all(math.isfinite(float(x)) for x in value):
                raise ValueError(f"{name} must be {len(PARTS)} finite numbers ({', '.join(PARTS)}), not {value!r}")
        return self


def build_sequence_net(prepared, train, cfg: SequenceConfig, ctx):
    """A new, initialised :class:`SequenceMFBlock` with its constants set from ``train``; returns
    ``(net, sequences, codes)``."""
    codes = item_codes(prepared, cfg.price_bins)
    seqs = Sequences.from_train(train, prepared.n_users)
    hist_items, hist_events = seqs.user_histories(cfg.history)
    net = SequenceMFBlock(prepared.n_users, prepared.n_items, cfg.num_embeddings, codes["n_categories"],
                          codes["n_brands"], cfg.history, cfg.price_bins)
    d = cfg.num_embeddings
    net.initialize(mx.init.Normal(cfg.init_scale), ctx=ctx)  # the item embeddings; the rest is set below
    net.item_bias.weight.set_data(nd.zeros((prepared.n_items, 1), ctx=ctx))
    shapes = net.tables.shapes
    start = {name: np.random.default_rng(cfg.seed + k).normal(0, 1 / math.sqrt(d), shapes[name])  # random unit-ish
             for k, name in enumerate(("category", "brand", "price")) if name in shapes}
    start.update(position_logits=0.0, event_logits=0.0, popularity_weight=cfg.popularity_init, warm_bias=1.0)
    start["transitions"] = np.stack([np.concatenate([cfg.mix_last[k] * np.eye(d), cfg.mix_history[k] * np.eye(d)], 1)
                                     for k in range(len(net.part_names))])
    net.tables.set_start({name: np.broadcast_to(value, shapes[name]) for name, value in start.items()})
    codes["item_log_popularity"] = np.log1p(np.bincount(train[ITEM].to_numpy(), minlength=prepared.n_items)
                                            ).astype(np.float32)
    net.set_constants(codes["item_category"], codes["item_brand"], codes["item_price_bucket"],
                      codes["price_bucket_bumps"], codes["item_log_popularity"], np.maximum(hist_items, 0), hist_events)
    return net, seqs, codes


def fit_sequence(prepared, train=None, progress: bool = True, on_epoch=None, log=None, checkpoint_dir=None,
                 cluster=None, **overrides):
    """Train a :class:`SequenceMFBlock` on next-item examples from ``train`` (default: ``prepared.train``).
    ``on_epoch(epoch, net)`` is called after every epoch (the validation protocol's checkpoints); ``log``
    (optional) gets one line per epoch with its loss and rate; ``checkpoint_dir`` (:mod:`recsys.checkpoint`):
    save every epoch there and resume from the newest one it holds. Multi-instance training (a distributed
    ``cluster``) is not supported: its small tables decay towards their start with their own weight, which
    one optimizer on the parameter servers cannot do. Returns ``(net, config, examples_per_second)`` (the
    rate over all epochs); ``config`` holds the epochs and batch size actually used."""
    from .checkpoint import epoch_seed
    from .presets import schedule
    from .training import OneChunkBehind, _checkpoints

    cfg = SequenceConfig(**overrides).validate()
    if cluster is not None and cluster.distributed:
        raise ValueError("the sequence model trains on one instance: for multi-instance training use preset "
                         "seed, implicit or side (recsys.distributed)")
    train = prepared.train if train is None else train
    ctx = _mx.context(cfg.ctx)
    rng = np.random.default_rng(cfg.seed)
    mx.random.seed(cfg.seed)
    with _mx.gpu_errors(ctx):
        net, seqs, codes = build_sequence_net(prepared, train, cfg, ctx)
        net.hybridize(static_alloc=True)
        pos = seqs.examples(cfg.targets)
        epochs, batch = schedule(cfg.epochs, cfg.batch_size, len(pos), cfg.scale_epochs, cfg.scale_batch)
        cfg = dataclasses.replace(cfg, epochs=epochs, batch_size=batch)
        own = seqs.pair_counts()[pos]
        step = _Stepper(net, cfg, codes, prepared.n_items, len(pos), ctx, rng)
        checkpoints = _checkpoints(checkpoint_dir, cfg, log)
        state = checkpoints.latest() if checkpoints is not None else None
        first = checkpoints.restore(state, net, (step.items, step.bias), step.trainer, rng) if state else 0
        chunk = cfg.batch_size * BATCHES_PER_CHUNK
        t_total, n_total = 0.0, 0
        with progress_bar(total=len(pos) * (cfg.epochs - first), unit="example", unit_scale=True, desc="train",
                          enabled=progress) as bar:
            for epoch in range(first, cfg.epochs):
                bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}", refresh=False)
                mx.random.seed(epoch_seed(cfg.seed, epoch))
                order = rng.permutation(len(pos))
                t0 = time.perf_counter()
                chunks = OneChunkBehind(bar)
                for s in range(0, len(order), chunk):
                    idx = order[s:s + chunk]
                    p = pos[idx]
                    targets = seqs.items[p]
                    hist, events = seqs.histories(p, seqs.starts[seqs.users[p]], cfg.history, exclude=targets)
                    chunks.add(step.chunk(targets, hist, events, own[idx]), len(idx))
                loss_sum = chunks.finish()
                seconds = time.perf_counter() - t0
                t_total += seconds
                n_total += len(order)
                if log is not None:
                    log(f"epoch {epoch + 1}/{cfg.epochs}: loss {loss_sum / max(len(order), 1):.4f}  "
                        f"({len(order) / max(seconds, 1e-9):,.0f} examples/s)")
                if checkpoints is not None:
                    checkpoints.save(epoch + 1, net, (step.items, step.bias), step.trainer, [], rng)
                if on_epoch is not None:
                    on_epoch(epoch + 1, net)
    return net, cfg, (n_total / t_total if t_total > 0 else float("nan"))


#: The per-batch inputs of :class:`_TrainGraph`, in its order, after the price bumps and the two row blocks.
BATCH_INPUTS = ("part_idx", "hist_idx", "events", "pos_idx", "pos_bidx", "pos_pop", "loo",
                "neg_idx", "neg_bidx", "neg_pop", "offset")


class _Stepper:
    """Optimisation steps on batches of examples (target, history, event types, own rows on the target)."""

    def __init__(self, net: SequenceMFBlock, cfg: SequenceConfig, codes: dict, n_items: int, n_examples: int, ctx,
                 rng) -> None:
        from .training import _RowTable

        self.net, self.cfg, self.n_items, self.ctx, self.rng = net, cfg, n_items, ctx, rng
        self.cat = codes["item_category"].astype(np.int64)
        self.brand = codes["item_brand"].astype(np.int64)
        self.bucket = codes["item_price_bucket"].astype(np.int64)
        self.log_pop = codes["item_log_popularity"]
        self.n_categories, self.n_brands = codes["n_categories"], codes["n_brands"]
        self.price_parts = "price" in net.part_names
        self.graph = _TrainGraph(net, cfg.loss)
        self.graph.hybridize()  # not static_alloc: its inputs change shape from batch to batch
        # the small tables' deviations from their start decay with weight `prior` examples / all examples
        prior = cfg.prior / max(n_examples, 1)
        self.trainer = gluon.Trainer({p.name: p for p in net.tables.deviations()}, "adam",
                                     {"learning_rate": cfg.lr, "wd": prior}, kvstore=None)
        params = {"learning_rate": cfg.lr, "wd": cfg.wd}
        self.items = _RowTable(net.item_embeddings.weight, "adam", params, 0)
        self.bias = _RowTable(net.item_bias.weight, "adam", params, 1)
        self.full = n_items <= cfg.negatives  # the whole catalogue fits: exact softmax
        if not self.full:
            q = np.power(np.expm1(self.log_pop).astype(np.float64) + 1.0, SAMPLER_POWER) \
                if cfg.sampler == "popularity" else np.ones(n_items)
            q /= q.sum()
            self.cdf = np.cumsum(q)
            # logQ: log of the expected number of times each item is among the sampled negatives
            self.log_q = np.log(cfg.negatives * q).astype(np.float32)
        self.bumps = nd.array(codes["price_bucket_bumps"], ctx=ctx)

    def negatives(self) -> np.ndarray:
        if self.full:
            return np.arange(self.n_items, dtype=np.int64)
        return np.minimum(np.searchsorted(self.cdf, self.rng.random(self.cfg.negatives)), self.n_items - 1)

    def _batch(self, targets, hist, events, own) -> dict:
        """A batch's inputs as NumPy arrays (indices into the batch's own rows of the item tables)."""
        n = len(targets)
        neg = self.negatives()
        filled = hist >= 0
        rows = np.unique(np.concatenate([targets, neg, hist[filled]]))  # item-embedding rows
        brows = np.unique(np.concatenate([targets, neg]))  # item-bias rows (history items have no bias term)
        hist_safe = np.maximum(hist, 0)
        # candidates excluded from an example: the negatives that are its target or in its history
        in_history = np.zeros((n, len(neg)), bool)
        order = np.argsort(neg, kind="stable")
        for slot in range(hist.shape[1]):
            h = hist[:, slot]
            lo, hi = np.searchsorted(neg[order], h, "left"), np.searchsorted(neg[order], h, "right")
            for k in range(int((hi - lo).max()) if n else 0):  # usually at most one copy of an item among the negatives
                hit = np.flatnonzero((hi - lo > k) & (h >= 0))
                in_history[hit, order[lo[hit] + k]] = True
        excluded = in_history | (neg[None, :] == targets[:, None])
        offset = np.zeros((n, 1 + len(neg)), np.float32)
        offset[:, 1:][excluded] = MASK
        if not self.full and self.cfg.loss == "softmax":
            offset[:, 0] -= self.log_q[targets]
            offset[:, 1:] -= self.log_q[neg][None, :]
        count = np.expm1(self.log_pop[targets])
        f32 = np.float32
        return {
            "rows": rows, "brows": brows, "part_idx": self._part_idx(rows),
            "hist_idx": np.where(filled, np.searchsorted(rows, hist_safe), 0),  # an empty slot weighs nothing
            "events": events.astype(f32),
            "pos_idx": np.searchsorted(rows, targets), "pos_bidx": np.searchsorted(brows, targets),
            "pos_pop": self.log_pop[targets],
            # the change of the target's log popularity without the user's own rows on it
            "loo": (np.log1p(np.maximum(count - own, 0)) - self.log_pop[targets]).astype(f32),
            "neg_idx": np.searchsorted(rows, neg), "neg_bidx": np.searchsorted(brows, neg),
            "neg_pop": self.log_pop[neg], "offset": offset,
        }

    def _part_idx(self, rows: np.ndarray) -> np.ndarray:
        """Per item row, where each of its parts is in the training graph's stacked table: the batch's item
        rows (``len(rows)``), then the category table (+ its empty row), the brand table, the price table."""
        r = len(rows)
        cols = [np.arange(r), r + self.cat[rows], r + self.n_categories + 1 + self.brand[rows]]
        if self.price_parts:
            cols.append(r + self.n_categories + 1 + self.n_brands + self.bucket[rows])
        return np.stack(cols, axis=1)

    def chunk(self, targets, hist, events, own) -> float:
        """Train on these examples, ``batch_size`` at a time; the inputs of all batches go to the device in one
        copy per array. Returns the summed loss, an NDArray that the engine fills when the chunk is done."""
        bs = self.cfg.batch_size
        batches = [self._batch(targets[s:s + bs], hist[s:s + bs], events[s:s + bs], own[s:s + bs])
                   for s in range(0, len(targets), bs)]
        on_device = {key: nd.array(np.concatenate([b[key] for b in batches]), ctx=self.ctx,
                                   dtype="int64" if key in ("rows", "brows") or key.endswith("idx") else "float32")
                     for key in batches[0]}
        at = dict.fromkeys(on_device, 0)
        total = nd.zeros((1,), ctx=self.ctx)
        for b in batches:
            view = {}
            for key, value in on_device.items():
                view[key] = value[at[key]:at[key] + len(b[key])]
                at[key] += len(b[key])
            total += self.step(view, len(b["pos_idx"]))
        return total

    def step(self, x: dict, n: int):
        i_block, b_block = self.items.gather(x["rows"]), self.bias.gather(x["brows"])
        with autograd.record():
            loss = self.graph(self.bumps, i_block, b_block, *[x[key] for key in BATCH_INPUTS])
        loss.backward()
        self.trainer.step(n)
        self.items.update(x["rows"], i_block, n)
        self.bias.update(x["brows"], b_block, n)
        return loss.sum()


def _loss(F, logits, kind: str):
    """Per example, from ``(batch, 1 + negatives)`` logits with the target first (excluded candidates at
    ``MASK``): softmax cross-entropy of the target, or the mean BPR loss against the candidates left."""
    if kind == "softmax":
        return -F.reshape(F.slice_axis(F.log_softmax(logits, axis=1), axis=1, begin=0, end=1), (-1,))
    pos = F.slice_axis(logits, axis=1, begin=0, end=1)
    neg = F.slice_axis(logits, axis=1, begin=1, end=None)
    keep = neg > MASK / 2
    per = F.Activation(F.broadcast_sub(neg, pos), act_type="softrelu") * keep
    return F.sum(per, axis=1) / F.maximum(F.sum(keep, axis=1), 1.0)
