"""Training rates of the ranking presets at 1M users and 300k items on the same synthetic rows, in one run:
``sequence`` (the best kit model, SequenceMFBlock: next-product examples), ``side`` (SideMFBlock) and
``implicit`` (MFBlock with BPR), each as its preset trains at this size (the batch rule of
:mod:`recsys.presets` applies), three epochs.

Prints training pairs (examples) per second of each, over epochs 2 and 3 (the first also builds MXNet's
cached graphs), against the targets (>= 150k for sequence and side, >= 250k for implicit).

Those interactions are uniform (0.6 rows a user): the sequence model then has almost no histories to
read. So the same presets are also measured on REES46-like events from :mod:`recsys.synthetic`
(``--rees46-rows``, 20 rows a user, sessions and categories as in the Kaggle months), prepared as
notebook 01 does, where a sequence example reads a full history.

    python benchmarks/bench_side_training.py [--users 1000000 --items 300000 --rows 600000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.memory import release
from recsys.pairs import count_distinct_pairs


#: The rate is measured over epochs 2 and 3 (the first also builds MXNet's cached graphs and fills its
#: memory pool; on this shared machine a single epoch's rate varies by up to a quarter between runs).
STEADY = (1, 3)


def steady_rate(n: int, marks: list) -> float:
    """Examples per second over the epochs after the first (``marks``: the time at the end of each epoch)."""
    return n * (STEADY[1] - STEADY[0]) / (marks[STEADY[1] - 1] - marks[STEADY[0] - 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=300_000)
    ap.add_argument("--rows", type=int, default=600_000)
    ap.add_argument("--rees46-rows", type=int, default=4_000_000, help="REES46-like events (0: skip)")
    args = ap.parse_args()
    from recsys.presets import user_settings
    from recsys.training import fit, fit_side

    data = synthetic(args.users, args.items, args.rows)
    rng = np.random.default_rng(1)
    data.products = pd.DataFrame({"category_id": rng.integers(0, 600, args.items),
                                  "brand": pd.array(rng.integers(0, 3000, args.items).astype(str), dtype=object),
                                  "price": np.round(np.exp(rng.normal(4, 1.2, args.items)), 2)})
    from recsys.sequence import Sequences, SequenceConfig, fit_sequence

    n_pairs = count_distinct_pairs(data.train["user"].to_numpy(), data.train["item"].to_numpy(), args.items)
    n_examples = len(Sequences.from_train(data.train, data.n_users).examples(SequenceConfig().targets))
    rates, t0 = {}, time.perf_counter()
    for name, train, n in (("sequence", fit_sequence, n_examples), ("side", fit_side, n_pairs), ("implicit", fit, n_pairs)):
        marks = []
        kw = {"log": lambda _: None} if train is fit else {}
        train(data, progress=False, on_epoch=lambda epoch, net: marks.append(time.perf_counter()),
              **kw, **user_settings(name, epochs=STEADY[1]))
        rates[name] = steady_rate(n, marks)
        release()  # the previous model's memory gone before the next one trains, as in notebook 02
    print(f"{args.users:,} users x {args.items:,} items, {args.rows:,} training rows: {n_pairs:,} distinct pairs, "
          f"{n_examples:,} next-product examples ({time.perf_counter() - t0:.0f} s in all)")
    for name, target in (("sequence", 150_000), ("side", 150_000), ("implicit", 250_000)):
        verdict = "OK" if rates[name] >= target else "MISSED"
        print(f"preset {name:9s} {rates[name]:>10,.0f} pairs/s (epochs 2-3)   target >= {target:,}   {verdict}")
    result = {f"{k}_pairs_per_second": v for k, v in rates.items()}
    if args.rees46_rows:
        result.update({f"rees46_{k}": v for k, v in rees46_rates(args.rees46_rows).items()})
    print(json.dumps(result))


def rees46_rates(rows: int) -> dict:
    """The presets' rates (epochs 2-3) on REES46-like synthetic events, prepared as notebook 01 does."""
    import tempfile

    from recsys.prepare import prepare_files
    from recsys.presets import user_settings
    from recsys.selection import _train
    from recsys.synthetic import generate

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.csv"
        generate(path, rows, users=rows // 20, products=max(20_000, rows // 40), seed=7, progress=False)
        prepared = prepare_files([path], progress=False)
    print(f"REES46-like: {rows:,} events, {prepared.n_users:,} users x {prepared.n_items:,} items kept, "
          f"{len(prepared.train):,} training rows")
    rates = {}
    for name, target in (("sequence", 150_000), ("side", 150_000), ("implicit", 250_000)):
        marks = []
        _train(prepared, name, on_epoch=lambda epoch, net: marks.append(time.perf_counter()),
               **user_settings(name, epochs=STEADY[1]))
        rates[name] = steady_rate(_examples(prepared, name), marks)
        release()
        verdict = "OK" if rates[name] >= target else "MISSED"
        print(f"preset {name:9s} {rates[name]:>10,.0f} pairs/s (epochs 2-3)   target >= {target:,}   {verdict}")
    return rates


def _examples(prepared, name: str) -> int:
    """What one epoch of the preset trains on: next-product examples, or distinct (user, product) pairs."""
    if name == "sequence":
        from recsys.sequence import Sequences, SequenceConfig

        return len(Sequences.from_train(prepared.train, prepared.n_users).examples(SequenceConfig().targets))
    t = prepared.train
    return count_distinct_pairs(t["user"].to_numpy(), t["item"].to_numpy(), prepared.n_items)


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_training import synthetic  # noqa: E402

    main()
