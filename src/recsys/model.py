"""The seed's matrix-factorisation network, as a Gluon ``HybridBlock``.

Architecture (unchanged from the lab): user and item embeddings -> ``Dense(num_emb, relu)``
on each side -> dropout on each side -> element-wise product summed over the embedding axis.

The embeddings are declared with ``sparse_grad=True`` (row-sparse gradients), so that a
standard Gluon ``Trainer`` touches only the rows of a batch. The kit's own training loop
(:mod:`recsys.training`) goes one step further and never materialises a table-sized
gradient at all; see there for how lazy row updates differ from the seed's dense momentum SGD.

This module is imported by the SageMaker containers (Python 3.8): keep it 3.8-compatible.
"""

from __future__ import annotations

from . import mx as _mx

mx = _mx.mx
gluon = mx.gluon
nn = gluon.nn


class Towers(gluon.HybridBlock):
    """The part of :class:`MFBlock` after the embedding lookups: ``(user_emb, item_emb) -> score``.

    It shares (not copies) the dense and dropout layers of an :class:`MFBlock`, so training
    can feed it gathered embedding rows while the block keeps serving ``(users, items)``.
    """

    def __init__(self, net: "MFBlock", **kwargs) -> None:
        super().__init__(prefix=net.prefix + "towers_", **kwargs)
        self.dense_user = net.dense_user
        self.dense_item = net.dense_item
        self.dropout_user = net.dropout_user
        self.dropout_item = net.dropout_item

    def hybrid_forward(self, F, user_emb, item_emb):
        a = self.dropout_user(self.dense_user(user_emb))
        b = self.dropout_item(self.dense_item(item_emb))
        return F.sum(a * b, axis=1)


class MFBlock(gluon.HybridBlock):
    """``MFBlock(max_users, max_items, num_emb, dropout_p)``: the seed's network.

    ``net(users, items)`` takes dense ids (float32 or int arrays) and returns one score each.
    """

    def __init__(self, max_users: int, max_items: int, num_emb: int = 64, dropout_p: float = 0.5,
                 sparse_grad: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_users = int(max_users)
        self.max_items = int(max_items)
        self.num_emb = int(num_emb)
        self.dropout_p = float(dropout_p)
        with self.name_scope():
            self.user_embeddings = nn.Embedding(self.max_users, self.num_emb, sparse_grad=sparse_grad)
            self.item_embeddings = nn.Embedding(self.max_items, self.num_emb, sparse_grad=sparse_grad)
            self.dropout_user = nn.Dropout(self.dropout_p)
            self.dropout_item = nn.Dropout(self.dropout_p)
            self.dense_user = nn.Dense(self.num_emb, activation="relu", flatten=False, in_units=self.num_emb)
            self.dense_item = nn.Dense(self.num_emb, activation="relu", flatten=False, in_units=self.num_emb)

    def hybrid_forward(self, F, users, items):
        a = self.dense_user(self.user_embeddings(users))
        b = self.dense_item(self.item_embeddings(items))
        predictions = self.dropout_user(a) * self.dropout_item(b)
        return F.sum(predictions, axis=1)

    def config(self) -> dict:
        return {"max_users": self.max_users, "max_items": self.max_items, "num_emb": self.num_emb,
                "dropout_p": self.dropout_p}

    def user_vectors(self, users):
        """The user tower's output (inference: no dropout), ``(len(users), num_emb)``."""
        return self.dense_user(self.user_embeddings(users))

    def item_vectors(self, items):
        return self.dense_item(self.item_embeddings(items))


def build(max_users: int, max_items: int, num_emb: int = 64, dropout_p: float = 0.5, ctx="auto",
          init_magnitude: float = 60.0, sparse_grad: bool = True, seed: int | None = None) -> MFBlock:
    """A new, initialised, hybridised :class:`MFBlock` (Xavier(magnitude=60) as the seed)."""
    if seed is not None:
        mx.random.seed(seed)
    net = MFBlock(max_users, max_items, num_emb, dropout_p, sparse_grad=sparse_grad)
    net.initialize(mx.init.Xavier(magnitude=init_magnitude), ctx=_mx.context(ctx))
    net.hybridize(static_alloc=True)
    return net


class SideMFBlock(gluon.HybridBlock):
    """The MFBlock family, with what a user's history and a product's attributes say.

    * Item tower: the product's embedding + its category's + its brand's embedding, and a learned
      item bias (a popularity prior, appended as the last coordinate).
    * User tower: the user's embedding + the category and brand embeddings (context tables) of the
      user's **last** training row + the mean of those of the last ``recent`` rows; a constant 1 as the
      last coordinate multiplies the item bias. A user without training rows is scored by the bias
      alone: cold start is handled by the model, not by ties.
    * Score: the dot product of the two towers, as in :class:`MFBlock`, so the serving code, the
      ranking code and the Aurora function are unchanged.

    The per-item attributes and per-user recent rows are constants stored with the parameters
    (``grad_req="null"``), so a saved model directory carries everything it needs.
    """

    def __init__(self, max_users: int, max_items: int, num_emb: int = 32, n_categories: int = 1, n_brands: int = 1,
                 recent: int = 5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_users, self.max_items, self.num_emb = int(max_users), int(max_items), int(num_emb)
        self.n_categories, self.n_brands, self.recent = int(n_categories), int(n_brands), int(recent)
        d = self.num_emb
        with self.name_scope():
            # the per-user and per-item tables: training updates only a batch's rows (recsys.training.fit_side)
            self.user_embeddings = nn.Embedding(self.max_users, d)
            self.item_embeddings = nn.Embedding(self.max_items, d)
            self.category_embeddings = nn.Embedding(self.n_categories, d)
            self.brand_embeddings = nn.Embedding(self.n_brands, d)
            self.last_category = nn.Embedding(self.n_categories, d)
            self.last_brand = nn.Embedding(self.n_brands, d)
            self.recent_category = nn.Embedding(self.n_categories, d)
            self.recent_brand = nn.Embedding(self.n_brands, d)
            self.item_bias = nn.Embedding(self.max_items, 1)
            const = dict(grad_req="null", init=mx.init.Zero())
            self.item_category = self.params.get("item_category", shape=(self.max_items,), **const)
            self.item_brand = self.params.get("item_brand", shape=(self.max_items,), **const)
            self.user_recent_category = self.params.get("user_recent_category", shape=(self.max_users, self.recent), **const)
            self.user_recent_brand = self.params.get("user_recent_brand", shape=(self.max_users, self.recent), **const)
            # 1 where a recent slot holds a row, the last one in the final slot (left-padded)
            self.user_recent_mask = self.params.get("user_recent_mask", shape=(self.max_users, self.recent), **const)

    def config(self) -> dict:
        return {"kind": "side_mf", "max_users": self.max_users, "max_items": self.max_items, "num_emb": self.num_emb,
                "n_categories": self.n_categories, "n_brands": self.n_brands, "recent": self.recent}

    def set_side_information(self, item_category, item_brand, recent_category, recent_brand, recent_mask) -> None:
        for param, value in ((self.item_category, item_category), (self.item_brand, item_brand),
                             (self.user_recent_category, recent_category), (self.user_recent_brand, recent_brand),
                             (self.user_recent_mask, recent_mask)):
            param.set_data(mx.nd.array(value, dtype="float32"))

    def hybrid_forward(self, F, users, items, item_category, item_brand, user_recent_category, user_recent_brand,
                       user_recent_mask):
        u = self.user_tower(F, self.user_embeddings(users), F.take(user_recent_category, users),
                            F.take(user_recent_brand, users), F.take(user_recent_mask, users))
        v = self.item_tower(F, self.item_embeddings(items), self.item_bias(items), F.take(item_category, items),
                            F.take(item_brand, items))
        return F.sum(u * v, axis=1)

    def item_tower(self, F, item_rows, bias_rows, cat, brand):
        """Item vectors from the item's embedding rows and bias and its attribute codes (training feeds
        gathered rows here; inference the table lookups)."""
        v = item_rows + self.category_embeddings(cat) + self.brand_embeddings(brand)
        return F.concat(v, bias_rows, dim=1)

    def user_tower(self, F, user_rows, rc, rb, mask):
        """User vectors from the user's embedding rows and the codes of its recent rows (batch x recent)."""
        last_mask = F.slice_axis(mask, axis=1, begin=-1, end=None)  # (batch, 1)
        last = (self.last_category(F.slice_axis(rc, axis=1, begin=-1, end=None).reshape((-1,)))
                + self.last_brand(F.slice_axis(rb, axis=1, begin=-1, end=None).reshape((-1,))))
        last = last * F.broadcast_like(last_mask, last)  # (an elementwise product's gradient is cheaper)
        # the mean over the recent rows that exist: (batch, 1, recent) x (batch, recent, d), one batched product
        weights = F.broadcast_div(mask, F.maximum(F.sum(mask, axis=1, keepdims=True), 1.0))
        recent = F.batch_dot(F.expand_dims(weights, axis=1), self.recent_category(rc) + self.recent_brand(rb))
        recent = F.reshape(recent, shape=(0, -1))
        u = user_rows + last + recent
        return F.concat(u, F.ones_like(F.slice_axis(u, axis=1, begin=0, end=1)), dim=1)

    def user_vectors(self, users):
        c = users.context
        return self.user_tower(mx.nd, self.user_embeddings(users), mx.nd.take(self.user_recent_category.data(c), users),
                               mx.nd.take(self.user_recent_brand.data(c), users),
                               mx.nd.take(self.user_recent_mask.data(c), users))

    def item_vectors(self, items):
        c = items.context
        return self.item_tower(mx.nd, self.item_embeddings(items), self.item_bias(items),
                               mx.nd.take(self.item_category.data(c), items), mx.nd.take(self.item_brand.data(c), items))
