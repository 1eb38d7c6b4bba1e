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
