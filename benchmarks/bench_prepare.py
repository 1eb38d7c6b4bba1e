"""Prepare benchmark: the kit's data step against the seed's, on the same synthetic file.

Each contender runs in its own fresh Python process (so peak RSS is its own), alternating,
twice by default, after the file has been read once into the page cache; the script prints the
best wall time and the peak memory of each and their ratios, all from one invocation.

    python benchmarks/bench_prepare.py                 # 10M rows (the issue's target size)
    python benchmarks/bench_prepare.py --rows 1000000  # quicker look
    python benchmarks/bench_prepare.py --scaling 10000000 30000000   # kit only: memory growth

The seed's way is the lab page's code: ``pd.read_csv`` of every column, ``apply(lambda)`` per
row for the event digit, ``value_counts`` + two ``merge``s to filter, ``groupby().last()`` and an
outer ``merge(indicator=True)`` to split. The kit's way is ``recsys.prepare.prepare_files``.
Synthetic files are cached in ``benchmarks/_work/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"

KIT = """
from recsys.prepare import prepare_files
p = prepare_files([PATH], progress=False)
result = {k: p.summary[k] for k in ("rows_kept", "train_rows", "test_rows", "users_kept", "products_kept")}
"""

SEED = """
import pandas as pd
df = pd.read_csv(PATH, delimiter=",", on_bad_lines="skip")
df = df[["user_id", "product_id", "event_type", "category_id", "category_code", "brand"]]
df["event_type_digit"] = df["event_type"].apply(
    lambda x: 4 if x == "purchase" else 3 if x == "cart" else 2 if x == "remove_from_cart" else 1)
users = df["user_id"].value_counts()
products = df["product_id"].value_counts()
quantiles = [0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99, 1]
uq, pq = users.quantile(quantiles), products.quantile(quantiles)
users = users[users >= 5]
products = products[products >= 5]
reduced_df = df.merge(pd.DataFrame({"user_id": users.index})).merge(pd.DataFrame({"product_id": products.index}))
test_df = reduced_df.groupby("user_id").last().reset_index()
train_df = reduced_df.merge(test_df[["user_id", "product_id"]], on=["user_id", "product_id"], how="outer", indicator=True)
train_df = train_df[(train_df["_merge"] == "left_only")]
result = {"rows_kept": len(reduced_df), "train_rows": len(train_df), "test_rows": len(test_df),
          "users_kept": int(reduced_df["user_id"].nunique()), "products_kept": int(reduced_df["product_id"].nunique())}
"""

HARNESS = """
import json, resource, sys, time
PATH = sys.argv[1]
t0 = time.perf_counter()
{body}
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"seconds": seconds, "peak_bytes": peak, "result": result}}))
"""


def synthetic(rows: int, seed: int = 42) -> Path:
    path = WORK / f"synth_{rows}_s{seed}.csv"
    if not path.is_file():
        from recsys.synthetic import generate

        print(f"generating {path.name} ...", file=sys.stderr)
        generate(path.with_suffix(".tmp"), rows=rows, seed=seed)
        path.with_suffix(".tmp").rename(path)
    return path


def measure(body: str, path: Path) -> dict:
    code = HARNESS.format(body=textwrap.dedent(body))
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def compare(rows: int, repeat: int = 2) -> None:
    path = synthetic(rows)
    size = path.stat().st_size
    print(f"file: {path.name}, {rows:,} rows, {size / 2**20:,.0f} MiB")
    with open(path, "rb") as f:  # warm the page cache: whoever runs first must not pay the disk
        while f.read(1 << 24):
            pass
    runs = {"kit": [], "seed": []}
    for _ in range(repeat):  # alternate, keep each one's best run: less noise from the machine
        runs["kit"].append(measure(KIT, path))
        runs["seed"].append(measure(SEED, path))
    kit = min(runs["kit"], key=lambda m: m["seconds"])
    seed = min(runs["seed"], key=lambda m: m["seconds"])
    print(f"runs (seconds): kit {[round(m['seconds'], 2) for m in runs['kit']]}, "
          f"seed {[round(m['seconds'], 2) for m in runs['seed']]}; best of each below")
    if kit["result"]["rows_kept"] != seed["result"]["rows_kept"] or kit["result"]["test_rows"] != seed["result"]["test_rows"]:
        print(f"note: results differ: kit {kit['result']} seed {seed['result']}")
    print(f"{'':8}{'seconds':>10}{'peak RSS':>14}{'rows/s':>14}")
    for name, m in (("seed", seed), ("kit", kit)):
        print(f"{name:8}{m['seconds']:>10.2f}{gib(m['peak_bytes']):>14}{rows / m['seconds']:>14,.0f}")
    speed = seed["seconds"] / kit["seconds"]
    mem = kit["peak_bytes"] / seed["peak_bytes"]
    print(f"speed-up (seed time / kit time): {speed:.1f}x   target >= 5x   {'OK' if speed >= 5 else 'MISSED'}")
    print(f"memory (kit peak / seed peak):   {mem:.3f}    target <= 0.25  {'OK' if mem <= 0.25 else 'MISSED'}")
    print(json.dumps({"rows": rows, "seed": seed, "kit": kit, "speedup": speed, "memory_ratio": mem}))


def scaling(sizes: list[int]) -> None:
    print("kit prepare, peak memory against kept rows (extrapolation to the full Kaggle data):")
    points = []
    for rows in sizes:
        path = synthetic(rows)
        m = measure(KIT, path)
        kept = m["result"]["rows_kept"]
        points.append((rows, kept, m["peak_bytes"], m["seconds"]))
        print(f"  {rows:>12,} rows  {kept:>12,} kept  peak {gib(m['peak_bytes'])}  {m['seconds']:.1f} s")
    (_, k1, m1, _), (_, k2, m2, _) = points[0], points[-1]
    per_row = (m2 - m1) / (k2 - k1)
    base = m1 - per_row * k1
    full = 110_000_000
    print(f"  marginal memory: {per_row:.0f} bytes per kept row, fixed {gib(base)}")
    print(f"  extrapolated peak for {full:,} kept rows (Oct+Nov, no filtering): {gib(base + per_row * full)}")
    print(json.dumps({"points": points, "bytes_per_kept_row": per_row, "fixed_bytes": base,
                      "extrapolated_110M_bytes": base + per_row * full}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--scaling", type=int, nargs="+", metavar="ROWS", help="kit only, at these sizes")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each contender (alternating; best kept)")
    args = ap.parse_args()
    WORK.mkdir(exist_ok=True)
    if args.scaling:
        scaling(args.scaling)
    else:
        compare(args.rows, args.repeat)


if __name__ == "__main__":
    main()
