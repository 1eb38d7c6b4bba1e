import types

import numpy as np
import pandas as pd
import pytest

from recsys import metrics
from recsys.model import build


def random_split(rng, n_users=60, n_items=45, rows=600):
    train = pd.DataFrame({"user": rng.integers(0, n_users, rows).astype(np.int32),
                          "item": rng.integers(0, n_items, rows).astype(np.int32),
                          "event_type_digit": np.ones(rows, np.int8)})
    test_items = []
    for u in range(n_users):  # a test item that is not one of the user's training items
        seen = set(train.loc[train.user == u, "item"])
        test_items.append(next(int(i) for i in rng.permutation(n_items) if i not in seen))
    test = pd.DataFrame({"user": np.arange(n_users, dtype=np.int32), "item": np.array(test_items, np.int32)})
    return types.SimpleNamespace(n_users=n_users, n_items=n_items, train=train, test=test)


def brute_force(scores, data, k=10):
    hits, ndcgs = [], []
    for u, t in zip(data.test.user, data.test.item):
        seen = set(data.train.loc[data.train.user == u, "item"])
        candidates = [i for i in range(data.n_items) if i not in seen]
        # descending score, ties by item index
        ordered = sorted(candidates, key=lambda i: (-scores[u, i], i))
        rank = ordered.index(t)
        hits.append(rank < k)
        ndcgs.append(1 / np.log2(rank + 2) if rank < k else 0.0)
    return float(np.mean(hits)), float(np.mean(ndcgs))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_metrics_match_brute_force(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    data = random_split(rng)
    U, V = rng.normal(size=(data.n_users, 5)), rng.normal(size=(data.n_items, 5))
    monkeypatch.setattr(metrics, "CHUNK_CELLS", 7 * data.n_items)  # several chunks
    got = metrics.evaluate_vectors(U, V, data, k=10)
    hr, ndcg = brute_force(U @ V.T, data)
    assert got["hr_at_10"] == pytest.approx(hr) and got["ndcg_at_10"] == pytest.approx(ndcg)
    assert got["users"] == data.n_users


def test_ties_and_popularity_match_brute_force():
    rng = np.random.default_rng(3)
    data = random_split(rng, rows=300)
    pop = metrics.popularity_scores(data)
    got = metrics.evaluate_popularity(data, k=5)
    hr, ndcg = brute_force(np.broadcast_to(pop, (data.n_users, data.n_items)), data, k=5)
    assert got["hr_at_5"] == pytest.approx(hr) and got["ndcg_at_5"] == pytest.approx(ndcg)


def test_training_items_are_excluded_and_perfect_scores_hit():
    data = random_split(np.random.default_rng(4))
    scores = np.zeros((data.n_users, data.n_items))
    scores[data.test.user, data.test.item] = 1.0  # the test item scores highest
    scores[data.train.user, data.train.item] = 5.0  # training items score higher still: excluded
    r = metrics.ranks(lambda u: scores[u], data.test.user.to_numpy(), data.test.item.to_numpy(),
                      *metrics.train_items_csr(data.train, data.n_users, data.n_items), data.n_items)
    assert (r == 0).all()
    assert metrics.hit_rate_ndcg(r) == {"hr_at_10": 1.0, "ndcg_at_10": 1.0, "users": data.n_users}


def test_evaluate_model_uses_the_towers():
    data = random_split(np.random.default_rng(5))
    net = build(data.n_users, data.n_items, 8, 0.5, init_magnitude=1, seed=0)
    U, V = metrics.tower_vectors(net, data.n_users, data.n_items)
    from recsys.training import predict

    direct = predict(net, np.repeat(np.arange(3), data.n_items), np.tile(np.arange(data.n_items), 3))
    np.testing.assert_allclose((U[:3] @ V.T).ravel(), direct, rtol=1e-4, atol=1e-4)
    # evaluate_model against brute force on the network's own pairwise scores (no tower shortcut)
    all_pairs = predict(net, np.repeat(np.arange(data.n_users), data.n_items), np.tile(np.arange(data.n_items), data.n_users))
    hr, ndcg = brute_force(all_pairs.reshape(data.n_users, data.n_items).astype(np.float64), data)
    got = metrics.evaluate_model(net, data)
    assert got["hr_at_10"] == pytest.approx(hr) and got["ndcg_at_10"] == pytest.approx(ndcg)
