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
    from .pairs import distinct_pairs

    users, items = distinct_pairs(train[USER].to_numpy(), train[ITEM].to_numpy(), n_items)
    indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    return indptr, items


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
            scores = np.array(score_chunk(u), copy=True)  # the scorer's own precision (float32 for the models)
            if not np.issubdtype(scores.dtype, np.floating):
                scores = scores.astype(np.float64)
            rows = np.repeat(np.arange(len(u)), indptr[u + 1] - indptr[u])
            cols = np.concatenate([indices[indptr[x]:indptr[x + 1]] for x in u]) if len(u) else np.empty(0, np.int64)
            scores[rows, cols] = -np.inf  # exclude training items (never the test item: no leakage)
            target = scores[np.arange(len(u)), t][:, None]
            out[s:s + chunk] = np.count_nonzero(scores >= target, axis=1) - 1  # every tie ahead; minus the item itself
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
    out["cold"] = hit_rate_ndcg(r[~warm], k)  # users without a training row
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

    n_cat, n_brand = int(cat.max()) + 1 if len(cat) else 1, int(brand.max()) + 1 if len(brand) else 1

    def score_chunk(chunk_users):
        u = np.asarray(chunk_users)
        rows = np.arange(len(u))[:, None]
        m = mask[u]  # (users, recent): which recent slots hold a row (the last slot fills first)
        # per user, a score for every category and every brand code; then one gather per item attribute
        by_cat = np.zeros((len(u), n_cat))
        in_recent = np.zeros((len(u), n_cat + 1), bool)  # the extra last column takes the empty slots
        in_recent[rows, np.where(m, recent_cat[u], n_cat)] = True
        by_cat += 2.0 * in_recent[:, :n_cat]
        by_cat[np.arange(len(u)), recent_cat[u, -1]] += 4.0 * m[:, -1]
        in_brand = np.zeros((len(u), n_brand + 1), bool)
        in_brand[rows, np.where(m & (recent_brand[u] > 0), recent_brand[u], n_brand)] = True
        return prior[None, :] + by_cat[:, cat] + 1.0 * in_brand[:, :n_brand][:, brand]

    return score_chunk


def evaluate_heuristic(prepared, k: int = 10, **kwargs) -> dict:
    return evaluate_scores(heuristic_scorer(prepared, kwargs.get("train")), prepared, k, **kwargs)


def _run_tower(fn, n: int, ctx, batch: int = 65536) -> np.ndarray:
    """``fn`` (a tower, inference mode) on ids ``0..n-1`` in batches, as one float32 array."""
    from .mx import mx

    out = None
    for s in range(0, n, batch):
        block = fn(mx.nd.arange(s, min(n, s + batch), ctx=ctx, dtype="int64")).asnumpy()
        if out is None:
            out = np.empty((n, block.shape[1]), np.float32)
        out[s:s + batch] = block
    return out


def tower_vectors(net, n_users: int, n_items: int, batch: int = 65536):
    """All user and item vectors of a network of the MFBlock family (inference mode), as float32 arrays."""
    ctx = next(iter(net.collect_params().values())).list_ctx()[0]  # any parameter: every block lives on one device
    items = _run_tower(net.item_vectors, n_items, ctx, batch)
    users = _run_tower(net.user_vectors, n_users, ctx, batch)
    if users is None:  # no users: as wide as the items
        users = np.empty((0, items.shape[1] if items is not None else 0), np.float32)
    if items is None:
        items = np.empty((0, users.shape[1]), np.float32)
    return users, items


def evaluate_model(net, prepared, k: int = 10, **kwargs) -> dict:
    """HR@K / NDCG@K of a network of the MFBlock family: every item vector once, and the user vectors of
    the evaluated users only, chunk by chunk (the cost follows the evaluated users, not every user)."""
    from .mx import mx

    ctx = next(iter(net.collect_params().values())).list_ctx()[0]
    item_t = np.ascontiguousarray(_run_tower(net.item_vectors, prepared.n_items, ctx).T)

    def score_chunk(users):
        return net.user_vectors(mx.nd.array(users, ctx=ctx, dtype="int64")).asnumpy() @ item_t

    return evaluate_scores(score_chunk, prepared, k, **kwargs)
