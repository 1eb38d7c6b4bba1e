"""Batch Transform throughput: lines/s of the kit's transform job (``recsys.sagemaker.transform``)
through AWS's real MXNet serving stack (Multi Model Server + the inference toolkits, 2 workers on 2
cores) and through the kit's local endpoint, measured in one run on the same file.

Each engine is started once (its start-up is timed apart), warmed up with a small job, then runs the
file with MultiRecord at 1 and 2 requests in flight (MaxConcurrentTransforms); every output is checked
for one line per input line. The model is an initialised 64-dim MFBlock over random raw ids (scoring
cost does not depend on training), as in ``bench_endpoint.py``.

    python benchmarks/bench_transform.py [--lines 1000000 --max-payload-mb 5]

``--max-payload-mb`` defaults to 5: with these ids a CSV answer is about 5% longer than its request,
and at 6 MB the serving stack's 6,553,500-byte answer limit fails the job (the job says so).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_endpoint import make_model  # noqa: E402


def main() -> None:
    from recsys.sagemaker import transform as bt
    from recsys.sagemaker.container import ServingStack
    from recsys.sagemaker.endpoint import LocalEndpoint, package_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--max-payload-mb", type=int, default=5)
    args = ap.parse_args()
    if not bt.toolkits_available():
        sys.exit("bench_transform: AWS's serving toolkits or Java are missing (make setup installs them)")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        user_ids, product_ids = make_model(tmp / "model", args.users, args.items)
        tar = package_model(tmp / "model", tmp / "model.tar.gz")
        rng = np.random.default_rng(1)
        u, p = rng.choice(user_ids, args.lines), rng.choice(product_ids, args.lines)
        u[rng.random(args.lines) < 0.02] = 1  # 2% unknown, as in real traffic
        data = tmp / "pairs.csv"
        data.write_text("".join(f"{a},{b}\n" for a, b in zip(u, p)))
        warm = tmp / "warm.csv"
        warm.write_text("".join(f"{a},{b}\n" for a, b in zip(u[:20_000], p[:20_000])))
        size = data.stat().st_size
        print(f"model: {args.users:,} users x {args.items:,} items, 64 dims; input: {args.lines:,} lines, "
              f"{size / 1e6:.1f} MB; MultiRecord, MaxPayloadInMB={args.max_payload_mb}")
        engines = (("mxnet-serving-stack", lambda: ServingStack(tar, env=bt.batch_environment(
                        "MultiRecord", args.max_payload_mb, 2))),
                   ("local-endpoint", lambda: LocalEndpoint(tar, name="bench")))
        for name, make in engines:
            t0 = time.perf_counter()
            engine = make().start()
            startup = time.perf_counter() - t0
            try:
                bt.run_transform(tar, [warm], tmp / "warm-out", engine=engine, max_payload_mb=args.max_payload_mb,
                                 progress=False)
                for concurrent in (1, 2):
                    out = tmp / f"out-{name}-{concurrent}"
                    job = bt.run_transform(tar, [data], out, engine=engine, max_payload_mb=args.max_payload_mb,
                                           max_concurrent_transforms=concurrent, progress=False)
                    with open(job.outputs[0], "rb") as f:
                        assert sum(1 for _ in f) == args.lines
                    results.append({"engine": name, "max_concurrent_transforms": concurrent, "lines": job.records,
                                    "requests": job.requests, "seconds": job.seconds,
                                    "lines_per_second": job.records_per_second, "startup_seconds": startup})
                    print(f"{name:>20}, {concurrent} in flight: {job.records_per_second:>10,.0f} lines/s "
                          f"({job.requests} requests, {job.seconds:.1f} s; start-up {startup:.1f} s)", flush=True)
            finally:
                engine.stop()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
