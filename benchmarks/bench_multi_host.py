"""Multi-instance training on MXNet's parameter server, locally: the same job on 1 and on 2 hosts under
AWS's real training toolkit (``run_training_job(instance_count=N)``, hosts on 127.0.0.x), with each
worker's training rate and its parameter traffic per step.

On one 2-core machine two hosts share the cores (and the servers and the scheduler run beside them), so
this shows the overhead of the parameter server, not a speed-up: on SageMaker each host has its own
instance. Prints both rates and their ratio, measured in this run.

    .venv/bin/python benchmarks/bench_multi_host.py [--preset side] [--epochs 4] [--input FILE ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from recsys.sagemaker.training_job import run_training_job  # noqa: E402

OCT = ROOT / "data" / "sample" / "rees46_2019-Oct_head_0000-0250UTC.csv.gz"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="side", choices=["seed", "implicit", "side"])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--input", nargs="+", default=[str(OCT)])
    args = ap.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for hosts in (1, 2):
            t0 = time.perf_counter()
            job = run_training_job({"preset": args.preset, "epochs": args.epochs}, {"train": args.input}, tmp,
                                   job_name=f"hosts-{hosts}", instance_count=hosts, timeout=3600,
                                   log=lambda _: None)
            m = job.metrics
            results[hosts] = {"job_seconds": time.perf_counter() - t0, "rows_per_second": m["train_rows_per_second"],
                              "hr_at_10": m["hr_at_10"], "hr_at_10_se": m["hr_at_10_se"],
                              "traffic": m.get("traffic"), "ps_stopped_by_themselves": m.get("ps_stopped_by_themselves")}
            print(f"{hosts} host(s): {m['train_rows_per_second']:,.0f} training rows/s per worker, job "
                  f"{results[hosts]['job_seconds']:.1f} s, HR@10 {m['hr_at_10']:.3f} (s.e. {m['hr_at_10_se']:.3f})"
                  + (f", {m['traffic']['bytes_pulled_per_step'] / 1e3:,.1f} kB pulled and "
                     f"{m['traffic']['bytes_pushed_per_step'] / 1e3:,.1f} kB pushed per step" if hosts > 1 else ""),
                  flush=True)
    r1, r2 = results[1]["rows_per_second"], results[2]["rows_per_second"]
    print(f"2 hosts / 1 host, all workers' rows/s: {2 * r2 / r1:.2f}x (each worker {r2 / r1:.2f}x) on this machine's "
          "shared cores; on SageMaker each host has its own instance")
    print(json.dumps(results, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
