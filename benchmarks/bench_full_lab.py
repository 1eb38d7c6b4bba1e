"""The whole lab at the workshop's size: ``make run-all`` on synthetic REES46 data of the Kaggle
Oct+Nov size, against the same command on the October sample, in one invocation.

* The data: ``recsys synth`` at ``--rows`` (default 110,000,000, the two Kaggle months) with the
  months' numbers of users and products (default 5,300,000 and 206,000), written once as plain CSV
  (as Kaggle ships them) under ``benchmarks/_work/full/`` (git-ignored) and reused by later runs.
* Each run is ``make run-all OUT=... NB_ARGS='-p input_files [...]'`` in its own process; the
  notebooks' boundaries come from the runner's ``=== NAME`` lines, and the resident memory of the
  whole process tree (make, the runner, the kernel, the training job, the endpoint) is sampled every
  0.5 s from ``/proc``.
* Printed: each notebook's wall time and peak RSS (of the tree, and of its largest process) at the
  full size and on the sample, their ratios, the whole run's time and peak, and the targets
  (the whole run <= 2 h and <= 12 GB at 110M rows; <= 11 min and <= 2.5 GB at 10M rows).

    python benchmarks/bench_full_lab.py [--rows 110000000] [--users 5300000] [--products 206000]
    python benchmarks/bench_full_lab.py --rows 10000000 --users 480000 --products 190000   # 10M rows
    make bench-full                                                                         # the first line

Linux only (``/proc``). At 110M rows it takes about as long as the run itself plus the data's first
generation; the synthetic file takes about 15 GB of disk.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "full"
SAMPLE = ["data/sample/rees46_2019-Oct_head_0000-0250UTC.csv.gz"]
PAGE = os.sysconf("SC_PAGE_SIZE")


def _children() -> dict:
    """ppid -> [pid] for every process now."""
    tree = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(d))
    return tree


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return 0


def tree_rss(root_pid: int) -> tuple:
    """(sum of RSS over the process tree, the largest single RSS), in bytes."""
    tree = _children()
    todo, total, largest = [root_pid], 0, 0
    while todo:
        pid = todo.pop()
        r = _rss(pid)
        total += r
        largest = max(largest, r)
        todo.extend(tree.get(pid, ()))
    return total, largest


def run_all(input_files: list, out: Path, label: str) -> dict:
    """``make run-all`` on ``input_files`` into ``out``: per notebook ``{seconds, peak_tree, peak_process}``."""
    nb_args = "-p input_files " + json.dumps(input_files, separators=(",", ":"))
    cmd = ["make", "--no-print-directory", "run-all", f"OUT={out}", f"NB_ARGS={nb_args}"]
    print(f"[{label}] {' '.join(cmd[:-1])} 'NB_ARGS={nb_args}'", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=None, text=True)
    current = {"name": "setup", "start": t0}
    peaks = {}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            total, largest = tree_rss(proc.pid)
            p = peaks.setdefault(current["name"], {"peak_tree": 0, "peak_process": 0})
            p["peak_tree"] = max(p["peak_tree"], total)
            p["peak_process"] = max(p["peak_process"], largest)
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    times = {}
    for line in proc.stdout:
        sys.stdout.write(f"[{label}] {line}")
        sys.stdout.flush()
        if line.startswith("=== "):
            now = time.perf_counter()
            times[current["name"]] = now - current["start"]
            done = peaks.get(current["name"], {"peak_tree": 0})
            if current["name"] != "setup":  # as each notebook ends, not only at the end
                print(f"[{label}] {current['name']}: {times[current['name']]:.0f} s, peak {done['peak_tree'] / 2**30:.2f} GiB",
                      flush=True)
            current.update(name=line[4:].strip(), start=now)
    rc = proc.wait()
    times[current["name"]] = time.perf_counter() - current["start"]
    stop.set()
    sampler.join()
    if rc != 0:
        raise SystemExit(f"[{label}] make run-all failed with exit code {rc}")
    return {name: {"seconds": times.get(name, 0.0), **peaks.get(name, {"peak_tree": 0, "peak_process": 0})}
            for name in times}


def synthetic_file(rows: int, users: int, products: int, seed: int) -> Path:
    path = WORK / f"synth-{rows}-{users}-{products}-seed{seed}.csv"
    if path.is_file():
        print(f"data: {path.relative_to(ROOT)} (cached, {path.stat().st_size / 2**30:.1f} GiB)", flush=True)
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial.csv")
    t0 = time.perf_counter()
    subprocess.run([str(ROOT / ".venv" / "bin" / "recsys"), "synth", "--rows", str(rows), "--users", str(users),
                    "--products", str(products), "--seed", str(seed), "--out", str(tmp)], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    tmp.rename(path)
    print(f"data: generated {path.relative_to(ROOT)} in {time.perf_counter() - t0:.0f} s "
          f"({path.stat().st_size / 2**30:.1f} GiB)", flush=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=110_000_000)
    ap.add_argument("--users", type=int, default=5_300_000)
    ap.add_argument("--products", type=int, default=206_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--skip-sample", action="store_true", help="do not run the sample for the ratios")
    args = ap.parse_args()
    data = synthetic_file(args.rows, args.users, args.products, args.seed)
    runs = {}
    if not args.skip_sample:
        runs["sample"] = run_all(SAMPLE, WORK / "out-sample", "sample")
    runs["full"] = run_all([str(data)], WORK / f"out-{args.rows}", f"{args.rows / 1e6:g}M rows")
    gib = 2 ** 30
    print(f"\n{args.rows:,} synthetic rows ({args.users:,} users, {args.products:,} products) against the October sample")
    print(f"{'step':28s} {'full: time':>11s} {'peak tree':>10s} {'largest':>9s}   {'sample: time':>12s} {'peak':>7s}"
          f"   {'ratio time':>10s} {'ratio mem':>9s}")
    full, sample = runs["full"], runs.get("sample", {})
    for name, f in full.items():
        s = sample.get(name)
        line = f"{name:28s} {f['seconds']:10.0f}s {f['peak_tree'] / gib:9.2f}G {f['peak_process'] / gib:8.2f}G"
        if s:
            line += (f"   {s['seconds']:11.0f}s {s['peak_tree'] / gib:6.2f}G   {f['seconds'] / max(s['seconds'], 1e-9):9.1f}x"
                     f" {f['peak_tree'] / max(s['peak_tree'], 1):8.1f}x")
        print(line)
    total = sum(f["seconds"] for f in full.values())
    peak = max(f["peak_tree"] for f in full.values())
    limits = (7200, 12e9) if args.rows >= 100_000_000 else (660, 2.5e9) if args.rows >= 10_000_000 else (None, None)
    verdict = ""
    if limits[0]:
        ok = total <= limits[0] and peak <= limits[1]
        verdict = f"   targets <= {limits[0] / 60:.0f} min and <= {limits[1] / 1e9:g} GB: {'OK' if ok else 'MISSED'}"
    print(f"make run-all: {total / 60:.1f} min, peak {peak / 1e9:.2f} GB ({peak / gib:.2f} GiB){verdict}")
    if sample:
        s_total = sum(s["seconds"] for s in sample.values())
        print(f"sample: {s_total:.0f} s; ratio full/sample {total / s_total:.0f}x in time")
    print(json.dumps({"rows": args.rows, "runs": runs}, sort_keys=True))


if __name__ == "__main__":
    main()
