"""Independent, plain-Python reference of the data step (csv module, dicts, no pandas/pyarrow).

Slow and obvious on purpose: the tests compare the kit's fast code against it.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections import Counter
from datetime import datetime

FIELDS = 9


def _open_text(path):
    return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8") if str(path).endswith(".gz") else open(path, encoding="utf-8")


def read_rows(path):
    """(valid rows as dicts in file order, malformed line numbers, data rows read)."""
    valid, bad, read = [], [], 0
    with _open_text(path) as f:
        lines = f.read().splitlines()
    header = next(csv.reader([lines[0]]))
    for no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        read += 1
        fields = next(csv.reader([line]))
        if len(fields) != FIELDS:
            bad.append(no)
            continue
        row = dict(zip(header, fields))
        ok = all(row[c].isdigit() and int(row[c]) < 2**63 for c in ("user_id", "product_id", "category_id"))
        try:
            datetime.strptime(row["event_time"].removesuffix(" UTC"), "%Y-%m-%d %H:%M:%S")
        except ValueError:
            ok = False
        if not ok:
            bad.append(no)
            continue
        valid.append(row)
    return valid, bad, read


def prepare_summary(rows, min_user=5, min_product=5):
    """The seed's filter + leave-last-out split, computed row by row."""
    users = Counter(r["user_id"] for r in rows)
    products = Counter(r["product_id"] for r in rows)
    kept = [(i, r) for i, r in enumerate(rows) if users[r["user_id"]] >= min_user and products[r["product_id"]] >= min_product]
    kept.sort(key=lambda ir: (ir[1]["event_time"], ir[0]))  # time order, ties in file order
    last = {}
    for _, r in kept:
        last[r["user_id"]] = r["product_id"]
    train = [r for _, r in kept if last[r["user_id"]] != r["product_id"]]
    return {
        "users_total": len(users),
        "products_total": len(products),
        "users_kept": len({r["user_id"] for _, r in kept}),
        "products_kept": len({r["product_id"] for _, r in kept}),
        "rows_kept": len(kept),
        "train_rows": len(train),
        "test_rows": len(last),
        "test_pairs": {(u, p) for u, p in last.items()},
        "train_pairs": {(r["user_id"], r["product_id"]) for r in train},
    }
