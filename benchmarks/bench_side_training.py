"""Training rate of the best kit model (``SideMFBlock``, preset ``side``) at 1M users and 300k items,
next to the implicit ``MFBlock`` (preset ``implicit``) on the same synthetic pairs, in one run.

Prints (user, product) pairs per second of each, from the second of two epochs (the first also builds
MXNet's cached graphs), and their ratio.

    python benchmarks/bench_side_training.py [--users 1000000 --items 300000 --rows 600000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=300_000)
    ap.add_argument("--rows", type=int, default=600_000)
    args = ap.parse_args()
    from bench_training import synthetic

    from recsys.presets import user_settings
    from recsys.training import fit, fit_side

    data = synthetic(args.users, args.items, args.rows)
    rng = np.random.default_rng(1)
    data.products = pd.DataFrame({"category_id": rng.integers(0, 600, args.items),
                                  "brand": pd.array(rng.integers(0, 3000, args.items).astype(str), dtype=object)})
    times = {}

    def timer(name):
        marks = []

        def on_epoch(epoch, net):
            marks.append(time.perf_counter())
        return marks, on_epoch

    n_pairs = len(np.unique(data.train["user"].to_numpy().astype(np.int64) * args.items + data.train["item"].to_numpy()))
    marks, cb = timer("side")
    t0 = time.perf_counter()
    # the presets as they train at this size (the batch rule of recsys.presets applies), two epochs
    fit_side(data, progress=False, on_epoch=cb, **user_settings("side", epochs=2))
    times["SideMFBlock (preset side)"] = n_pairs / (marks[1] - marks[0])
    marks, cb = timer("implicit")
    fit(data, progress=False, on_epoch=cb, log=lambda _: None, **user_settings("implicit", epochs=2))
    times["MFBlock BPR (preset implicit)"] = n_pairs / (marks[1] - marks[0])
    print(f"{args.users:,} users x {args.items:,} items, {n_pairs:,} distinct training pairs "
          f"({time.perf_counter() - t0:.0f} s in all)")
    for name, rate in times.items():
        print(f"{name:32s} {rate:,.0f} pairs/s (second epoch)")
    a, b = times.values()
    print(f"ratio SideMFBlock / MFBlock BPR: {a / b:.2f}")


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
