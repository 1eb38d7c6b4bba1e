"""Evaluation cost at the full data's size: ranking the whole catalogue for the test users of a
model with 4.2M users and 189k items (the Oct+Nov Kaggle data's kept users and products).

Times ``evaluate_model`` with the default seeded sample of test users (``MAX_EVAL_USERS``) and
extrapolates the full evaluation (every test user) from the measured time per user; prints both and
their ratio. The model is initialised, not trained: ranking costs the same either way.

    python benchmarks/bench_evaluation.py [--users 4200000 --items 189000]
"""

from __future__ import annotations

import argparse
import time
import types

import numpy as np
import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=4_200_000)
    ap.add_argument("--items", type=int, default=189_000)
    ap.add_argument("--train-rows", type=int, default=20_000_000)
    args = ap.parse_args()
    from recsys import metrics
    from recsys.model import build

    rng = np.random.default_rng(0)
    train = pd.DataFrame({"user": rng.integers(0, args.users, args.train_rows).astype(np.int32),
                          "item": rng.integers(0, args.items, args.train_rows).astype(np.int32)})
    test = pd.DataFrame({"user": np.arange(args.users, dtype=np.int32),
                         "item": rng.integers(0, args.items, args.users).astype(np.int32)})
    prepared = types.SimpleNamespace(n_users=args.users, n_items=args.items, train=train, test=test)
    net = build(args.users, args.items, 64, 0.5, ctx="cpu", init_magnitude=1, seed=0)
    t0 = time.perf_counter()
    users, items = metrics.tower_vectors(net, args.users, args.items)
    towers = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = metrics.evaluate_vectors(users, items, prepared, progress=True)
    sampled = time.perf_counter() - t0
    per_user = sampled / r["users"]
    full = per_user * args.users
    print(f"{args.users:,} test users x {args.items:,} items, 64 dims")
    print(f"tower vectors (all users and items): {towers:.1f} s")
    print(f"sampled evaluation ({r['users']:,} users, HR@10 s.e. {r['hr_at_10_se']:.4f}): {sampled:.1f} s "
          f"({per_user * 1e3:.2f} ms per user)")
    print(f"full evaluation, every test user (extrapolated): {full / 60:.0f} min; ratio full/sampled: {full / sampled:.0f}x")


if __name__ == "__main__":
    main()
