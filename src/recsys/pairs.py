"""The distinct (user, item) pairs of a training set, in bounded memory.

Every ranking model and every ranking evaluation needs them (BPR trains on them, the evaluation removes
each user's training items). ``np.unique`` on the 64-bit keys of 100M rows holds the keys, a sorted copy,
a mask and the int64 result, and the ``//`` and ``%`` that split it make two more int64 arrays: about
30 bytes a row at its peak, 3 GB on the Kaggle months. Here the keys are sorted in place and split block
by block straight into int32: at most ``9 x rows + 8 x pairs`` bytes (the keys, the first-of-pair mask
and the two int32 outputs), 1.4 GB at 100M rows and 64M pairs.
"""

from __future__ import annotations

import numpy as np

#: Rows split per step when the sorted keys are turned into the output arrays (bounds the temporaries).
BLOCK = 4_000_000


def _sorted_keys(users, items, n_items: int):
    """``(keys, first)``: the rows' ``user * n_items + item`` keys sorted (a new int64 array), and whether
    each is the first of its pair."""
    keys = np.asarray(users).astype(np.int64)  # always a copy: sorted in place below
    keys *= max(int(n_items), 1)
    keys += np.asarray(items)
    keys.sort()
    first = np.empty(len(keys), bool)
    if len(keys):
        first[0] = True
        np.not_equal(keys[1:], keys[:-1], out=first[1:])
    return keys, first


def distinct_pairs(users, items, n_items: int) -> tuple:
    """``(users, items)`` (int32) of the distinct pairs among the rows ``(users[k], items[k])``, in (user,
    item) order."""
    keys, first = _sorted_keys(users, items, n_items)
    m = int(np.count_nonzero(first))
    out_u, out_i = np.empty(m, np.int32), np.empty(m, np.int32)
    j = 0
    for s in range(0, len(keys), BLOCK):
        k = keys[s:s + BLOCK][first[s:s + BLOCK]]
        out_u[j:j + len(k)], out_i[j:j + len(k)] = np.divmod(k, max(int(n_items), 1))
        j += len(k)
    return out_u, out_i


def count_distinct_pairs(users, items, n_items: int) -> int:
    """How many distinct (user, item) pairs the rows hold."""
    _, first = _sorted_keys(users, items, n_items)
    return int(np.count_nonzero(first))


def user_blocks(starts: np.ndarray, rows: int | None = None):
    """``[s, e)`` row ranges of about ``rows`` rows each that cut only between users, for rows grouped by
    user (``starts``: each user's first row, then the end; ``rows`` default :data:`BLOCK`). A user with more
    rows is a block of its own."""
    rows = BLOCK if rows is None else rows
    starts = np.asarray(starts, np.int64)
    n, s = int(starts[-1]) if len(starts) else 0, 0
    while s < n:
        e = int(starts[np.searchsorted(starts, s + rows, side="right") - 1])
        if e <= s:  # one user holds more than `rows` rows from s on: the block ends where the next user starts
            e = int(starts[np.searchsorted(starts, s, side="right")])
        yield s, e
        s = e
