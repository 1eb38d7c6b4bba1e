"""Honest evaluation: full-catalogue ranking on the leave-last-out test set, plus MSE.

For every test user, every product is scored, the user's training products are excluded, and
the rank of the held-out product decides HR@K (1 if it is in the top K) and NDCG@K
(``1 / log2(rank + 2)`` when in the top K, else 0; one relevant item, so IDCG = 1). Ties are
broken by item index (a stable descending sort), the same for every scorer.

The two towers of :class:`~recsys.model.MFBlock` are independent until the dot product, so the
user and item vectors are computed once and users are ranked in chunks of a matrix product:
``O(users x items x dims)`` flops, ``chunk x items`` memory.
"""

from __future__ import annotations

import numpy as np

from .constants import ITEM, USER

CHUNK_CELLS = 1 << 24  # scores held at once (64 MiB of float32)


def train_items_csr(train, n_users: int, n_items: int):
    """(indptr, indices): each user's distinct training items, CSR-style."""
    keys = np.unique(train[USER].to_numpy().astype(np.int64) * n_items + train[ITEM].to_numpy())
    users, items = keys // n_items, keys % n_items
    indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    return indptr, items.astype(np.int64)


def ranks(score_chunk, test_users, test_items, indptr, indices, n_items: int, k: int | None = None) -> np.ndarray:
    """Rank (0 = best) of each user's test item among all items not in its training set.

    ``score_chunk(users) -> (len(users), n_items)`` scores; called on chunks of users.
    """
    test_users = np.asarray(test_users)
    test_items = np.asarray(test_items)
    out = np.empty(len(test_users), np.int64)
    chunk = max(1, CHUNK_CELLS // max(n_items, 1))
    item_idx = np.arange(n_items)
    for s in range(0, len(test_users), chunk):
        u = test_users[s:s + chunk]
        t = test_items[s:s + chunk]
        scores = np.array(score_chunk(u), dtype=np.float64, copy=True)
        rows = np.repeat(np.arange(len(u)), indptr[u + 1] - indptr[u])
        cols = np.concatenate([indices[indptr[x]:indptr[x + 1]] for x in u]) if len(u) else np.empty(0, np.int64)
        scores[rows, cols] = -np.inf  # exclude training items (never the test item: no leakage)
        target = scores[np.arange(len(u)), t][:, None]
        ahead = (scores > target) | ((scores == target) & (item_idx[None, :] < t[:, None]))
        out[s:s + chunk] = ahead.sum(axis=1)
    return out


def hit_rate_ndcg(rank: np.ndarray, k: int = 10) -> dict:
    rank = np.asarray(rank)
    if len(rank) == 0:
        return {f"hr_at_{k}": float("nan"), f"ndcg_at_{k}": float("nan"), "users": 0}
    hit = rank < k
    ndcg = np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0)
    return {f"hr_at_{k}": float(hit.mean()), f"ndcg_at_{k}": float(ndcg.mean()), "users": int(len(rank))}


def evaluate_vectors(user_vecs: np.ndarray, item_vecs: np.ndarray, prepared, k: int = 10) -> dict:
    """HR@K / NDCG@K of dot-product scores ``user_vecs @ item_vecs.T``."""
    indptr, indices = train_items_csr(prepared.train, prepared.n_users, prepared.n_items)
    item_t = np.ascontiguousarray(item_vecs.T)
    r = ranks(lambda u: user_vecs[u] @ item_t, prepared.test[USER].to_numpy(), prepared.test[ITEM].to_numpy(),
              indptr, indices, prepared.n_items, k)
    return hit_rate_ndcg(r, k)


def popularity_scores(prepared) -> np.ndarray:
    """Training events per item: the popularity baseline's score (the same for every user)."""
    return np.bincount(prepared.train[ITEM].to_numpy(), minlength=prepared.n_items).astype(np.float64)


def evaluate_popularity(prepared, k: int = 10) -> dict:
    pop = popularity_scores(prepared)
    indptr, indices = train_items_csr(prepared.train, prepared.n_users, prepared.n_items)
    r = ranks(lambda u: np.broadcast_to(pop, (len(u), len(pop))), prepared.test[USER].to_numpy(),
              prepared.test[ITEM].to_numpy(), indptr, indices, prepared.n_items, k)
    return hit_rate_ndcg(r, k)


def tower_vectors(net, n_users: int, n_items: int, batch: int = 65536):
    """All user and item vectors of an MFBlock (inference mode), as float32 NumPy arrays."""
    from .mx import mx

    ctx = net.user_embeddings.weight.list_ctx()[0]

    def run(fn, n):
        out = np.empty((n, net.num_emb), np.float32)
        for s in range(0, n, batch):
            out[s:s + batch] = fn(mx.nd.arange(s, min(n, s + batch), ctx=ctx)).asnumpy()
        return out

    return run(net.user_vectors, n_users), run(net.item_vectors, n_items)


def evaluate_model(net, prepared, k: int = 10) -> dict:
    users, items = tower_vectors(net, prepared.n_users, prepared.n_items)
    return evaluate_vectors(users, items, prepared, k)
