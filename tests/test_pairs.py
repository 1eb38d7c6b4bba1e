"""recsys.pairs: the distinct (user, item) pairs in bounded memory, and the user-aligned blocks that the
sequence model's examples are grouped in."""

import numpy as np
import pandas as pd
import pytest

from recsys import pairs
from recsys.sequence import Sequences


def random_rows(n=5000, n_users=300, n_items=50, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_users, n).astype(np.int32), rng.integers(0, n_items, n).astype(np.int32)


@pytest.mark.parametrize("block", [pairs.BLOCK, 7, 1000])
def test_distinct_pairs_are_numpys_unique_pairs_in_int32(monkeypatch, block):
    monkeypatch.setattr(pairs, "BLOCK", block)
    users, items = random_rows()
    want = np.unique(users.astype(np.int64) * 50 + items)
    u, i = pairs.distinct_pairs(users, items, 50)
    assert u.dtype == np.int32 and i.dtype == np.int32
    assert u.tolist() == (want // 50).tolist() and i.tolist() == (want % 50).tolist()
    assert pairs.count_distinct_pairs(users, items, 50) == len(want)
    assert users.tolist() == random_rows()[0].tolist()  # the input is not sorted in place


def test_distinct_pairs_of_nothing():
    u, i = pairs.distinct_pairs(np.empty(0, np.int32), np.empty(0, np.int32), 10)
    assert len(u) == len(i) == 0 and pairs.count_distinct_pairs(u, i, 10) == 0


def test_user_blocks_cut_only_between_users_and_cover_every_row():
    counts = np.array([3, 0, 10, 1, 1, 0, 4, 2])  # user 2 alone holds more than a block
    starts = np.concatenate([[0], np.cumsum(counts)])
    blocks = list(pairs.user_blocks(starts, rows=4))
    assert blocks[0][0] == 0 and blocks[-1][1] == counts.sum()
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:])) and all(s < e for s, e in blocks)
    assert all(s in starts and e in starts for s, e in blocks)  # never inside a user
    assert (3, 13) in blocks  # the big user is a block of its own
    assert all(e - s <= 4 for s, e in blocks if (s, e) != (3, 13))
    assert list(pairs.user_blocks(np.zeros(4, np.int64))) == []  # users without rows: no block


def test_sequence_examples_and_pair_counts_do_not_depend_on_the_blocks(monkeypatch):
    """Grouping by pair block by block gives what one pass over all rows gives (a block cut inside a user
    would split its pairs: counts too low, a pair's last row twice)."""
    users, items = random_rows(n=3000, n_users=40, n_items=12, seed=3)
    train = pd.DataFrame({"user": users, "item": items, "event_type_digit": np.ones(len(users), np.int8)})
    s = Sequences.from_train(train, n_users=40)
    key = s.users.astype(np.int64) * 12 + s.items
    _, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
    _, first = np.unique(key, return_index=True)
    _, rev = np.unique(key[::-1], return_index=True)
    monkeypatch.setattr(pairs, "BLOCK", 50)  # about 75 rows a user: every block is one user
    assert s.pair_counts().tolist() == cnt[inv].tolist()
    assert s.examples("first").tolist() == sorted(first.tolist())
    assert s.examples("last").tolist() == sorted((len(key) - 1 - rev).tolist())
