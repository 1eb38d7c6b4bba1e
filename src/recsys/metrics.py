"""Honest evaluation: full-catalogue ranking on the leave-last-out test set, plus MSE.

For every evaluated user, every product is scored, the user's training products are excluded, and
the rank of the held-out product decides HR@K (1 if it is in the top K) and NDCG@K
(``1 / log2(rank + 2)`` when in the top K, else 0; one relevant item, so IDCG = 1).

**Ties count against the test item**: its rank is the number of other candidate items whose score
is greater than *or equal to* its own. A scorer that gives many items the same score (an untrained
user, a popularity count) gains nothing from the order in which ties happen to be stored (item
indices follow raw product ids, which correlate with popularity).

Reported for all evaluated test users and for the "warm" ones (at least one training row), each
with its standard error (``std / sqrt(n)``). When there are more than ``max_users`` test users
(default :data:`MAX_EVAL_USERS`), a seeded uniform sample of that many is scored (the cost is
``sample x items``, not ``users x items``) and the result says so (``"sampled": true``); pass
``max_users=None`` for every user. A progress bar shows the chunks.

The two towers of :class:`~recsys.model.MFBlock` are independent until the dot product, so the user
and item vectors are computed once and users are ranked in chunks of a matrix product.
"""

from __future__ import annotations

import numpy as np

from .constants import ITEM, USER
from .progress import progress_bar

CHUNK_CELLS = 1 << 24  # scores held at once (128 MiB of float64)
#: Test users scored when there are more: HR@10's standard error is then below 0.004.
MAX_EVAL_USERS = 20_000


def train_items_csr(train, n_users: int, n_items: int):
    """(indptr, indices): each user's distinct training items, CSR-style."""
    keys = np.unique(train[USER].to_numpy().astype(np.int64) * n_items + train[ITEM].to_numpy())
    users, items = keys // n_items, keys % n_items
    indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    return indptr, items.astype(np.int64)


def ranks(score_chunk, test_users, test_items, indptr, indices, n_items: int, k: int | None = None,
          progress: bool = False) -> np.ndarray:
    """Rank (0 = best) of each user's test item among all items not in its training set, ties
    counted against it. ``score_chunk(users) -> (len(users), n_items)`` scores, called on chunks."""
    test_users = np.asarray(test_users)
    test_items = np.asarray(test_items)
    out = np.empty(len(test_users), np.int64)
    chunk = max(1, CHUNK_CELLS // max(n_items, 1))
    with progress_bar(total=len(test_users), unit="user", desc="rank", enabled=progress) as bar:
        for s in range(0, len(test_users), chunk):
            u = test_users[s:s + chunk]
            t = test_items[s:s + chunk]
            scores = np.array(score_chunk(u), dtype=np.float64, copy=True)
            rows = np.repeat(np.arange(len(u)), indptr[u + 1] - indptr[u])
            cols = np.concatenate([indices[indptr[x]:indptr[x + 1]] for x in u]) if len(u) else np.empty(0, np.int64)
            scores[rows, cols] = -np.inf  # exclude training items (never the test item: no leakage)
            target = scores[np.arange(len(u)), t][:, None]
            out[s:s + chunk] = (scores >= target).sum(axis=1) - 1  # every tie ahead; minus the item itself
            bar.update(len(u))
    return out


def hit_rate_ndcg(rank: np.ndarray, k: int = 10) -> dict:
    """HR@K and NDCG@K (means) with their standard errors."""
    rank = np.asarray(rank)
    n = len(rank)
    if n == 0:
        return {f"hr_at_{k}": float("nan"), f"ndcg_at_{k}": float("nan"), f"hr_at_{k}_se": float("nan"),
                f"ndcg_at_{k}_se": float("nan"), "users": 0}
    hit = (rank < k).astype(np.float64)
    ndcg = np.where(hit > 0, 1.0 / np.log2(rank + 2.0), 0.0)
    se = (lambda x: float(x.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"))
    return {f"hr_at_{k}": float(hit.mean()), f"ndcg_at_{k}": float(ndcg.mean()), f"hr_at_{k}_se": se(hit),
            f"ndcg_at_{k}_se": se(ndcg), "users": int(n)}


def eval_users(test, max_users: int | None = MAX_EVAL_USERS, seed: int = 0):
    """``(users, items, sampled)``: every test row, or a seeded uniform sample of ``max_users``."""
    users, items = test[USER].to_numpy(), test[ITEM].to_numpy()
    if max_users is not None and len(users) > max_users:
        pick = np.sort(np.random.default_rng(seed).choice(len(users), max_users, replace=False))
        return users[pick], items[pick], True
    return users, items, False


def evaluate_scores(score_chunk, prepared, k: int = 10, max_users: int | None = MAX_EVAL_USERS, seed: int = 0,
                    progress: bool = False, test=None, train=None) -> dict:
    """HR@K / NDCG@K of ``score_chunk(users) -> scores`` for all evaluated test users (top-level keys)
    and for the warm ones (``"warm": {...}``). ``test``/``train`` default to the prepared split
    (the validation protocol passes its own)."""
    test = prepared.test if test is None else test
    train = prepared.train if train is None else train
    indptr, indices = train_items_csr(train, prepared.n_users, prepared.n_items)
    users, items, sampled = eval_users(test, max_users, seed)
    r = ranks(score_chunk, users, items, indptr, indices, prepared.n_items, k, progress=progress)
    warm = (indptr[users + 1] - indptr[users]) > 0
    out = hit_rate_ndcg(r, k)
    out["warm"] = hit_rate_ndcg(r[warm], k)
    out["sampled"] = bool(sampled)
    return out


def evaluate_vectors(user_vecs: np.ndarray, item_vecs: np.ndarray, prepared, k: int = 10, **kwargs) -> dict:
    """HR@K / NDCG@K of dot-product scores ``user_vecs @ item_vecs.T``."""
    item_t = np.ascontiguousarray(item_vecs.T)
    return evaluate_scores(lambda u: user_vecs[u] @ item_t, prepared, k, **kwargs)


def popularity_scores(prepared, train=None) -> np.ndarray:
    """Training events per item: the popularity baseline's score (the same for every user)."""
    train = prepared.train if train is None else train
    return np.bincount(train[ITEM].to_numpy(), minlength=prepared.n_items).astype(np.float64)


def evaluate_popularity(prepared, k: int = 10, **kwargs) -> dict:
    pop = popularity_scores(prepared, kwargs.get("train"))
    return evaluate_scores(lambda u: np.broadcast_to(pop, (len(u), len(pop))), prepared, k, **kwargs)


def heuristic_scorer(prepared, train=None, recent: int = 5):
    """The practitioner's first try: products in the categories and brands of the user's most recent
    training rows first (the last row's category weighs most), popularity within them and for users
    without training rows. Returns ``score_chunk(users) -> scores``."""
    from .prepare import side_information

    train = prepared.train if train is None else train
    side = side_information(prepared, train, recent)  # the same features SideMFBlock gets
    cat, brand = side["item_category"], side["item_brand"]  # brand 0: none
    recent_cat, recent_brand, mask = side["recent_category"], side["recent_brand"], side["recent_mask"] > 0
    pop = popularity_scores(prepared, train)
    prior = pop / (pop.max() + 1.0)  # below 1: only orders items within the same category/brand score

    def score_chunk(chunk_users):
        out = np.broadcast_to(prior, (len(chunk_users), len(prior))).copy()
        for row, u in enumerate(chunk_users):
            if not mask[u, -1]:  # no training row (the last slot fills first)
                continue
            out[row] += 4.0 * (cat == recent_cat[u, -1])
            out[row] += 2.0 * np.isin(cat, recent_cat[u][mask[u]])
            known_brands = recent_brand[u][mask[u] & (recent_brand[u] > 0)]
            if len(known_brands):
                out[row] += 1.0 * np.isin(brand, known_brands)
        return out

    return score_chunk


def evaluate_heuristic(prepared, k: int = 10, **kwargs) -> dict:
    return evaluate_scores(heuristic_scorer(prepared, kwargs.get("train")), prepared, k, **kwargs)


def tower_vectors(net, n_users: int, n_items: int, batch: int = 65536):
    """All user and item vectors of an MFBlock (inference mode), as float32 NumPy arrays."""
    from .mx import mx

    ctx = net.user_embeddings.weight.list_ctx()[0]

    def run(fn, n):
        out = None
        for s in range(0, n, batch):
            block = fn(mx.nd.arange(s, min(n, s + batch), ctx=ctx)).asnumpy()
            if out is None:
                out = np.empty((n, block.shape[1]), np.float32)
            out[s:s + batch] = block
        return out if out is not None else np.empty((0, net.num_emb), np.float32)

    return run(net.user_vectors, n_users), run(net.item_vectors, n_items)


def evaluate_model(net, prepared, k: int = 10, **kwargs) -> dict:
    users, items = tower_vectors(net, prepared.n_users, prepared.n_items)
    return evaluate_vectors(users, items, prepared, k, **kwargs)
