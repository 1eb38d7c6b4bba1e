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


def brute_force(scores, data, k=10, users=None):
    """One user at a time, in plain Python: the rank is the number of other candidates scoring at
    least as high as the test item (ties count against it)."""
    hits, ndcgs = [], []
    for u, t in zip(data.test.user, data.test.item):
        if users is not None and u not in users:
            continue
        seen = set(data.train.loc[data.train.user == u, "item"])
        rank = sum(1 for i in range(data.n_items) if i != t and i not in seen and scores[u, i] >= scores[u, t])
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
    assert got["users"] == data.n_users and got["sampled"] is False
    hits = np.array([1.0] * int(round(hr * data.n_users)) + [0.0] * (data.n_users - int(round(hr * data.n_users))))
    assert got["hr_at_10_se"] == pytest.approx(hits.std(ddof=1) / np.sqrt(data.n_users))


def test_ties_count_against_the_test_item():
    """All scores equal: the test item ranks behind every other candidate, so nobody hits."""
    data = random_split(np.random.default_rng(6), n_items=12, rows=40)
    flat = np.zeros((data.n_users, data.n_items))
    got = metrics.evaluate_scores(lambda u: flat[u], data, k=10)
    assert got["hr_at_10"] == brute_force(flat, data)[0]
    n_candidates = data.n_items - np.array([len(set(data.train.loc[data.train.user == u, "item"]))
                                            for u in data.test.user])
    assert got["hr_at_10"] == pytest.approx(np.mean(n_candidates - 1 < 10))  # hits only with < 10 rivals
    one_tie = flat.copy()
    one_tie[data.test.user, data.test.item] = 1.0
    rival = (data.test.item.to_numpy() + 1) % data.n_items
    one_tie[data.test.user, rival] = 1.0  # one rival with the same score is ahead of it
    got = metrics.evaluate_scores(lambda u: one_tie[u], data, k=1)
    hr, _ = brute_force(one_tie, data, k=1)
    assert got["hr_at_1"] == pytest.approx(hr) and got["hr_at_1"] < 1


def test_warm_users_and_sampling():
    rng = np.random.default_rng(8)
    data = random_split(rng, n_users=80, rows=200)
    data.train = data.train[data.train.user >= 20]  # users 0..19 become cold
    U, V = rng.normal(size=(data.n_users, 4)), rng.normal(size=(data.n_items, 4))
    got = metrics.evaluate_vectors(U, V, data)
    warm = set(data.train.user)
    hr, ndcg = brute_force(U @ V.T, data, users=warm)
    assert got["warm"]["users"] == len(warm) and got["warm"]["hr_at_10"] == pytest.approx(hr)
    sample = metrics.evaluate_vectors(U, V, data, max_users=30, seed=1)
    picked, _, sampled = metrics.eval_users(data.test, 30, seed=1)
    assert sample["sampled"] and sample["users"] == 30 and sampled
    assert sample["hr_at_10"] == pytest.approx(brute_force(U @ V.T, data, users=set(picked))[0])


def test_heuristic_prefers_the_last_rows_category():
    import pandas as pd

    data = random_split(np.random.default_rng(9), n_users=10, n_items=20, rows=60)
    data.products = pd.DataFrame({"category_id": np.arange(20) // 5, "brand": [None] * 20})
    scorer = metrics.heuristic_scorer(data)
    scores = scorer(np.arange(data.n_users))
    for u in range(data.n_users):
        mine = data.train.loc[data.train.user == u, "item"].to_numpy()
        if len(mine):
            same = np.arange(20) // 5 == mine[-1] // 5
            recent = np.isin(np.arange(20) // 5, mine[-5:] // 5)
            assert scores[u][same].min() >= 6.0  # the last row's category: 4 + 2 (it is recent too)
            assert not (~recent).any() or scores[u][~recent].max() < 1.0  # elsewhere only the popularity prior
        else:
            assert scores[u].max() < 1.0  # no training row: popularity alone


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
    assert metrics.hit_rate_ndcg(r) == {"hr_at_10": 1.0, "ndcg_at_10": 1.0, "users": data.n_users,
                                        "hr_at_10_se": 0.0, "ndcg_at_10_se": 0.0}


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
