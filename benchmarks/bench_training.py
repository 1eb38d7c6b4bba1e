"""Training benchmark: the seed's configuration against the kit's, same data, one invocation.

Data: synthetic interactions with 1M users and 300k items (skewed item popularity, labels
with the REES46 funnel's shares), 64 dimensions, batch 1024, SGD lr 0.02 momentum 0.9.

* seed: ``MFBlock`` with dense embedding gradients, Gluon ``DataLoader`` over ``ArrayDataset``
  (``shuffle=True, num_workers=4, last_batch='rollover'``, as the lab page), ``Trainer.step``;
* kit: ``recsys.training.fit`` (row-block embedding updates, NumPy batching), two epochs, the
  second one's rate (the first also builds MXNet's cached graphs).

Prints rows/s of each and the ratio. Targets on the 2-core reference machine: ratio >= 10x,
kit >= 150k rows/s.

    python benchmarks/bench_training.py [--users 1000000 --items 300000 --rows 600000]
"""

from __future__ import annotations

import argparse
import json
import time
import types

import numpy as np
import pandas as pd


def synthetic(users: int, items: int, rows: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, items + 1) ** 0.8
    cdf = np.cumsum(pop) / pop.sum()
    item = np.minimum(np.searchsorted(cdf, rng.random(rows)), items - 1).astype(np.int32)
    user = rng.integers(0, users, rows).astype(np.int32)
    label = rng.choice(np.array([1, 3, 4], np.int8), rows, p=[0.94, 0.04, 0.02])
    train = pd.DataFrame({"user": user, "item": item, "event_type_digit": label})
    test = train.iloc[:1000].copy()
    return types.SimpleNamespace(n_users=users, n_items=items, train=train, test=test)


def seed_way(data, seconds: float = 20.0, warmup: int = 3) -> float:
    """The lab page's loop: dense gradients, DataLoader over ArrayDataset, Trainer.step."""
    from recsys.model import build
    from recsys.mx import mx

    gluon, nd = mx.gluon, mx.nd
    ctx = mx.cpu()
    net = build(data.n_users, data.n_items, 64, 0.5, ctx=ctx, sparse_grad=False, seed=0)
    net.hybridize()  # the seed's plain hybridize()
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.02, "wd": 0.0, "momentum": 0.9})
    t = data.train
    dataset = gluon.data.ArrayDataset(nd.array(t["user"].values, dtype=np.float32),
                                      nd.array(t["item"].values, dtype=np.float32),
                                      nd.array(t["event_type_digit"].values, dtype=np.float32))
    loader = gluon.data.DataLoader(dataset, shuffle=True, num_workers=4, batch_size=1024, last_batch="rollover")
    loss_function = gluon.loss.L2Loss()
    rows, start = 0, None
    for i, (user, item, label) in enumerate(loader):
        user, item, label = user.as_in_context(ctx), item.as_in_context(ctx), label.as_in_context(ctx)
        with mx.autograd.record():
            loss = loss_function(net(user, item), label)
        loss.backward()
        trainer.step(1024)
        if i == warmup:
            nd.waitall()
            start = time.perf_counter()
        elif i > warmup:
            rows += len(user)
            if time.perf_counter() - start > seconds:
                break
    nd.waitall()
    return rows / (time.perf_counter() - start)


def kit_way(data) -> tuple[float, dict]:
    from recsys.training import fit

    # two epochs; the second is the steady state (the first also builds the cached graphs)
    result = fit(data, progress=False, epochs=2, ctx="cpu", seed=0)
    return result.last["rows_per_second"], result.last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=300_000)
    ap.add_argument("--rows", type=int, default=600_000)
    ap.add_argument("--seed-seconds", type=float, default=20.0, help="how long to time the seed's loop")
    args = ap.parse_args()
    data = synthetic(args.users, args.items, args.rows)
    print(f"data: {args.users:,} users, {args.items:,} items, {args.rows:,} training rows, 64 dims, batch 1024")
    kit, last = kit_way(data)
    seed = seed_way(data, args.seed_seconds)
    ratio = kit / seed
    print(f"seed (dense gradients, DataLoader): {seed:>10,.0f} rows/s")
    print(f"kit  (row-block updates):           {kit:>10,.0f} rows/s   target >= 150,000   {'OK' if kit >= 150_000 else 'MISSED'}")
    print(f"ratio kit/seed: {ratio:.1f}x   target >= 10x   {'OK' if ratio >= 10 else 'MISSED'}")
    print(json.dumps({"seed_rows_per_second": seed, "kit_rows_per_second": kit, "ratio": ratio,
                      "kit_epoch": last}))


if __name__ == "__main__":
    main()
