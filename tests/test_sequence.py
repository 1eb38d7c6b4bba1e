"""The sequence model (recsys.sequence): examples, the loss against NumPy, row updates, cold users, save/load,
learning a planted structure."""

import types

import numpy as np
import pandas as pd
import pytest

from conftest import OCT
from recsys import sequence
from recsys.artifacts import Recommender, save_model
from recsys.metrics import evaluate_model, evaluate_popularity, tower_vectors
from recsys.mx import mx
from recsys.prepare import prepare_files
from recsys.sequence import MASK, PRICE_BUCKETS, SAMPLER_POWER, Sequences, SequenceConfig, fit_sequence

nd = mx.nd


@pytest.fixture(scope="module")
def prepared():
    return prepare_files([OCT], progress=False)


def planted(n_users=300, n_items=80, length=6, seed=0):
    """Each user walks a hidden successor chain (item -> succ[item], 90% of the steps); categories, brands
    and prices are random, so nothing but learned item embeddings and transitions can find the next item."""
    rng = np.random.default_rng(seed)
    succ = rng.permutation(n_items)
    users, items = [], []
    for u in range(n_users):
        i = int(rng.integers(n_items))
        for _ in range(length):
            users.append(u)
            items.append(i)
            i = int(succ[i]) if rng.random() < 0.9 else int(rng.integers(n_items))
    users, items = np.array(users, np.int32), np.array(items, np.int32)
    last = np.r_[users[1:] != users[:-1], True]
    test = pd.DataFrame({"user": users[last], "item": items[last], "event_type_digit": np.ones(last.sum(), np.int8)})
    keep = ~last & ~pd.Series(list(zip(users, items))).isin(set(zip(test["user"], test["item"]))).to_numpy()
    train = pd.DataFrame({"user": users[keep], "item": items[keep],
                          "event_type_digit": rng.choice(np.array([1, 2, 3, 4], np.int8), keep.sum())})
    products = pd.DataFrame({"category_id": rng.integers(0, 8, n_items),
                             "brand": pd.array(rng.integers(0, 5, n_items).astype(str), dtype=object),
                             "price": np.exp(rng.normal(3, 1, n_items))})
    products.loc[3, "price"] = np.nan  # an unknown price
    products.loc[4, "brand"] = None  # no brand
    return types.SimpleNamespace(n_users=n_users, n_items=n_items, train=train, test=test, products=products)


# ---- examples ----------------------------------------------------------------------------------------------

def test_histories_skip_the_target_and_examples_are_at_most_one_per_row():
    train = pd.DataFrame({"user": [0, 0, 1, 0, 0, 1, 0], "item": [5, 6, 7, 5, 8, 9, 6],
                          "event_type_digit": np.array([1, 1, 1, 3, 1, 4, 2], np.int8)})
    s = Sequences.from_train(train, n_users=3)  # user 2 has no rows
    assert s.items.tolist() == [5, 6, 5, 8, 6, 7, 9] and s.starts.tolist() == [0, 5, 7, 7]
    pos = s.examples("last")  # each pair's last row: 5@2, 8@3, 6@4, 7@5, 9@6
    assert pos.tolist() == [2, 3, 4, 5, 6] and s.examples("first").tolist() == [0, 1, 3, 5, 6]
    assert len(s.examples("all")) == len(train)
    hist, events = s.histories(pos, s.starts[s.users[pos]], 3, exclude=s.items[pos])
    # the target's own earlier rows are not in its history (the protocol removes the test pair's rows)
    assert hist.tolist() == [[-1, -1, 6], [5, 6, 5], [5, 5, 8], [-1, -1, -1], [-1, -1, 7]]
    assert events.tolist() == [[0, 0, 1], [1, 1, 3], [1, 3, 1], [0, 0, 0], [0, 0, 1]]
    h, e = s.user_histories(2)
    assert h.tolist() == [[8, 6], [7, 9], [-1, -1]] and e.tolist() == [[1, 2], [1, 4], [0, 0]]
    assert s.pair_counts().tolist() == [2, 2, 2, 1, 2, 1, 1]


# ---- the loss against NumPy -----------------------------------------------------------------------------

def _np_tables(net):
    tb = net.tables
    t = {n: getattr(tb, n).data().asnumpy() + getattr(tb, n + "_start").data().asnumpy() for n in tb.names}
    zero = np.zeros((1, net.num_emb))
    brand = t["brand"].copy()
    brand[0] = 0.0
    price = net.price_bucket_bumps.data().asnumpy() @ t["price"]
    price /= np.sqrt((price ** 2).sum(1, keepdims=True))
    return t, np.vstack([t["category"], zero]), brand, np.vstack([price, zero])


def _np_parts(net, items):
    """Item parts of ``items`` (any shape; -1: an empty slot, all zero)."""
    t, cat, brand, price = _np_tables(net)
    e = net.item_embeddings.weight.data().asnumpy()
    c, b, q = (getattr(net, n).data().asnumpy() for n in ("item_category", "item_brand", "item_price_bucket"))
    i = np.maximum(items, 0)
    out = np.concatenate([e[i], cat[c[i]], brand[b[i]], price[q[i]]], axis=-1)
    return out * (np.asarray(items) >= 0)[..., None]


def _np_user(net, hist, events):
    t = _np_tables(net)[0]
    mask = events > 0
    x = _np_parts(net, hist)  # (n, L, 4d)
    a = np.exp(t["event_logits"][events] + t["position_logits"][0]) * mask
    w = a / np.maximum(a.sum(1, keepdims=True), 1e-30)
    last, pooled = x[:, -1], np.einsum("nl,nld->nd", w, x)
    d = net.num_emb
    u = np.concatenate([np.concatenate([last[:, k * d:(k + 1) * d], pooled[:, k * d:(k + 1) * d]], 1) @ t["transitions"][k].T
                        for k in range(4)], 1)
    return u, np.where(mask[:, -1], t["warm_bias"][0, 0], 1.0)


def _np_bias(net, items, log_pop):
    t = _np_tables(net)[0]
    return net.item_bias.weight.data().asnumpy()[items, 0] + t["popularity_weight"][0, 0] * log_pop


def _perturb(net, seed=1):
    """Random values everywhere (so that every term of the loss matters)."""
    rng = np.random.default_rng(seed)
    for p in list(net.tables.deviations()) + [net.item_embeddings.weight, net.item_bias.weight]:
        p.set_data(nd.array(rng.normal(0, 0.3, p.shape)))


@pytest.mark.parametrize("negatives, loss", [(16, "softmax"), (1000, "softmax"), (16, "bpr")])
def test_batch_loss_equals_a_numpy_computation(negatives, loss):
    """Sampled softmax with logQ (16 negatives of 80 products), the exact softmax (the whole catalogue), BPR:
    the graph's per-example loss equals NumPy's, from the raw parameters, with the target's popularity
    without the user's own rows and the target and history products excluded from the negatives."""
    data = planted()
    cfg = SequenceConfig(negatives=negatives, loss=loss, num_embeddings=4, history=3, seed=3).validate()
    net, seqs, codes = sequence.build_sequence_net(data, data.train, cfg, mx.cpu())
    _perturb(net)
    pos = seqs.examples("last")[:40]
    own = seqs.pair_counts()[pos]
    targets = seqs.items[pos]
    hist, events = seqs.histories(pos, seqs.starts[seqs.users[pos]], 3, exclude=targets)
    assert (hist == -1).any() and (hist[:, -1] == -1).any()  # empty slots and empty histories are in the batch
    stepper = sequence._Stepper(net, cfg, codes, data.n_items, len(pos), mx.cpu(), np.random.default_rng(0))
    b = stepper._batch(targets, hist, events, own)
    x = {k: nd.array(v, dtype="int64" if k in ("rows", "brows") or k.endswith("idx") else "float32") for k, v in b.items()}
    got = stepper.graph(stepper.bumps, nd.take(net.item_embeddings.weight.data(), x["rows"]),
                        nd.take(net.item_bias.weight.data(), x["brows"]),
                        *[x[k] for k in sequence.BATCH_INPUTS]).asnumpy()

    neg = b["rows"][b["neg_idx"]]
    assert stepper.full == (negatives >= data.n_items) and (not stepper.full or np.array_equal(neg, np.arange(80)))
    count = np.bincount(data.train["item"], minlength=data.n_items).astype(float)
    log_pop = np.log1p(count)
    u, bias_weight = _np_user(net, hist, events)
    v_pos, v_neg = _np_parts(net, targets), _np_parts(net, neg)
    pos_logit = (u * v_pos).sum(1) + bias_weight * _np_bias(net, targets, np.log1p(count[targets] - own))
    neg_logit = u @ v_neg.T + bias_weight[:, None] * _np_bias(net, neg, log_pop[neg])[None, :]
    excluded = (neg[None, :] == targets[:, None]) | (neg[None, None, :] == hist[:, :, None]).any(1)
    assert excluded.any() and not excluded.all(1).any()
    if loss == "bpr":
        per = np.log1p(np.exp(neg_logit - pos_logit[:, None])) * ~excluded
        want = per.sum(1) / (~excluded).sum(1)
    else:
        if not stepper.full:
            q = (count + 1) ** SAMPLER_POWER
            log_q = np.log(negatives * q / q.sum())
            pos_logit, neg_logit = pos_logit - log_q[targets], neg_logit - log_q[neg][None, :]
        logits = np.concatenate([pos_logit[:, None], np.where(excluded, MASK, neg_logit)], 1)
        m = logits.max(1, keepdims=True)
        want = -(logits[:, 0] - (m[:, 0] + np.log(np.exp(logits - m).sum(1))))
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


# ---- row updates ----------------------------------------------------------------------------------------

def test_row_updates_touch_only_the_batch_rows_and_equal_mxnet_lazy_adam():
    """One step: the item-embedding rows of the batch (its targets, negatives and history products) and the
    bias rows of its targets and negatives change, exactly as MXNet's Adam with ``lazy_update`` on a row-sparse
    gradient of the whole table moves them; every other row and its Adam state stays as it was."""
    data = planted()
    cfg = SequenceConfig(negatives=4, num_embeddings=4, history=3, seed=3, lr=0.05, wd=0.01).validate()
    net, seqs, codes = sequence.build_sequence_net(data, data.train, cfg, mx.cpu())
    _perturb(net)
    pos = seqs.examples("last")
    hist, _ = seqs.histories(pos, seqs.starts[seqs.users[pos]], 3, exclude=seqs.items[pos])
    pos = pos[hist[:, 0] >= 0][:8]  # full histories: some history products are neither a target nor a negative
    targets = seqs.items[pos]
    hist, events = seqs.histories(pos, seqs.starts[seqs.users[pos]], 3, exclude=targets)
    stepper = sequence._Stepper(net, cfg, codes, data.n_items, len(pos), mx.cpu(), np.random.default_rng(0))
    b = stepper._batch(targets, hist, events, seqs.pair_counts()[pos])
    x = {k: nd.array(v, dtype="int64" if k in ("rows", "brows") or k.endswith("idx") else "float32") for k, v in b.items()}
    # the reference: the gradient of the same loss with respect to the whole tables, then MXNet's lazy Adam
    e0, b0 = net.item_embeddings.weight.data().copy(), net.item_bias.weight.data().copy()
    rows, brows = b["rows"], b["brows"]
    whole = {"hist_idx": rows[b["hist_idx"]],  # an empty slot weighs nothing, whatever row it reads
             "pos_idx": rows[b["pos_idx"]], "neg_idx": rows[b["neg_idx"]], "pos_bidx": brows[b["pos_bidx"]],
             "neg_bidx": brows[b["neg_bidx"]], "part_idx": stepper._part_idx(np.arange(data.n_items))}
    ref = dict(x, **{k: nd.array(v, dtype="int64" if k.endswith("idx") else "float32") for k, v in whole.items()})
    ge, gb = e0.copy(), b0.copy()
    ge.attach_grad()
    gb.attach_grad()
    with mx.autograd.record():
        loss = stepper.graph(stepper.bumps, ge, gb, *[ref[k] for k in sequence.BATCH_INPUTS]).sum()
    loss.backward()
    want = {}
    for name, w0, g, rows in (("e", e0, ge.grad, b["rows"]), ("b", b0, gb.grad, b["brows"])):
        opt = mx.optimizer.Adam(learning_rate=0.05, wd=0.01, rescale_grad=1 / len(pos), lazy_update=True)
        w = w0.copy()
        state = opt.create_state(0, w)
        sparse = nd.sparse.row_sparse_array((g.asnumpy()[rows], rows), shape=g.shape)
        opt.update(0, w, sparse, state)
        want[name] = (w.asnumpy(), state[0].asnumpy(), rows)

    stepper.step(x, len(pos))
    for name, table, rt in (("e", net.item_embeddings.weight, stepper.items), ("b", net.item_bias.weight, stepper.bias)):
        w_want, mean_want, rows = want[name]
        w_got, w_start = table.data().asnumpy(), (e0 if name == "e" else b0).asnumpy()
        untouched = np.setdiff1d(np.arange(data.n_items), rows)
        assert len(untouched) > 0 and len(rows) > 0
        np.testing.assert_array_equal(w_got[untouched], w_start[untouched])  # untouched rows stay
        assert not rt.state[0].asnumpy()[untouched].any() and not rt.state[1].asnumpy()[untouched].any()
        assert (np.abs(w_got[rows] - w_start[rows]).max(axis=1) > 0).all()  # every batch row moved
        np.testing.assert_allclose(w_got, w_want, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(rt.state[0].asnumpy(), mean_want, rtol=1e-5, atol=1e-8)
    # history-only products have no bias term: their bias rows are not in the batch
    assert np.setdiff1d(b["rows"], b["brows"]).size > 0


# ---- cold users, save/load ------------------------------------------------------------------------------

def test_cold_users_are_ranked_by_popularity_and_warm_users_by_the_learned_bias(prepared):
    """A user without training rows has the vector (0, ..., 0, 0, 1): every product scores its training
    events, whatever the (random, trained) embeddings and biases, so their HR@10 is popularity's exactly.
    Users with a history never meet that coordinate; they weigh the learned bias."""
    from recsys.metrics import evaluate_model, evaluate_popularity, popularity_scores

    net, _, _ = fit_sequence(prepared, progress=False, epochs=2)
    _perturb(net, seed=7)  # large random embeddings and tables: any leak into a cold user's vector shows
    users, items = tower_vectors(net, prepared.n_users, prepared.n_items)
    cold = np.setdiff1d(prepared.test["user"], prepared.train["user"])
    assert len(cold) == 275
    scores = users[cold] @ items.T
    np.testing.assert_array_equal(scores, np.broadcast_to(popularity_scores(prepared), scores.shape))
    assert evaluate_model(net, prepared)["cold"]["hr_at_10"] == evaluate_popularity(prepared)["cold"]["hr_at_10"]
    warm = np.unique(prepared.train["user"])
    assert np.abs(users[warm, :-2]).sum(1).min() > 0  # warm users do get a history vector
    assert (users[warm, -1] == 0).all() and (users[warm, -2] != 0).all()  # and the learned bias, not the counts


def test_save_load_round_trip_scores_identically(prepared, tmp_path):
    net, cfg, rate = fit_sequence(prepared, progress=False, epochs=3)
    assert rate > 0 and net.config()["kind"] == "sequence"
    save_model(tmp_path / "m", net, prepared, {"model": "sequence"}, {})
    rec = Recommender.load(tmp_path / "m", keep_net=True)
    users, items = tower_vectors(net, prepared.n_users, prepared.n_items)
    assert rec.user_vectors is None  # computed per request from the stored histories, not held for every user
    np.testing.assert_array_equal(rec.user_rows(np.arange(prepared.n_users)), users)
    np.testing.assert_array_equal(rec.item_vectors, items)
    t = prepared.test
    direct = net(nd.array(t["user"].to_numpy()), nd.array(t["item"].to_numpy())).asnumpy()  # the block's own forward
    np.testing.assert_allclose(rec.score(t["user_id"], t["product_id"]), direct, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rec.score(t["user_id"], t["product_id"]), (users[t["user"]] * items[t["item"]]).sum(1),
                               rtol=1e-5, atol=1e-6)
    assert evaluate_model(rec.net, prepared) == evaluate_model(net, prepared)


# ---- learning --------------------------------------------------------------------------------------------

def test_learns_a_planted_successor_structure():
    """The next product follows a hidden successor of the last one (90% of the steps), unrelated to category,
    brand or price: popularity and the untrained model rank it near chance; the trained model finds it."""
    data = planted()
    pop = evaluate_popularity(data)["hr_at_10"]
    untrained = evaluate_model(fit_sequence(data, progress=False, epochs=0)[0], data)["hr_at_10"]
    trained = evaluate_model(fit_sequence(data, progress=False, epochs=20)[0], data)["hr_at_10"]
    assert pop < 0.2 and untrained < 0.3
    assert trained > 0.6 and trained > pop + 0.4


def test_same_seed_same_model_and_bad_settings_are_clear_errors():
    data = planted(n_users=60)
    a, _, _ = fit_sequence(data, progress=False, epochs=2, num_embeddings=4)
    b, _, _ = fit_sequence(data, progress=False, epochs=2, num_embeddings=4)
    for pa, pb in zip(a.collect_params().values(), b.collect_params().values()):
        np.testing.assert_array_equal(pa.data().asnumpy(), pb.data().asnumpy())
    for bad in ({"loss": "mse"}, {"targets": "next"}, {"negatives": 0}, {"lr": float("nan")}, {"history": 0},
                {"prior": -1.0}, {"mix_last": (1.0, 2.0)}):
        with pytest.raises(ValueError):
            fit_sequence(data, progress=False, **bad)
    with pytest.raises(ValueError, match="event_type_digit"):
        Sequences.from_train(pd.DataFrame({"user": [0], "item": [0], "event_type_digit": np.array([7], np.int8)}), 1)
    assert PRICE_BUCKETS > 0
