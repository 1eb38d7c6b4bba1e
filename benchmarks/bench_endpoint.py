"""Endpoint benchmark on loopback: the local endpoint (``recsys serve``, its own process) under
CSV batches of 1,000 rows (Aurora's way) and single-pair requests, with 1 and 8 concurrent
clients (threads with keep-alive connections).

Prints pairs/s for the batches and p50/p95 latency for single pairs. Targets on the 2-core
reference machine: >= 200k pairs/s in batches; single-pair p50 <= 5 ms.

    python benchmarks/bench_endpoint.py [--users 200000 --items 100000 --seconds 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd


def make_model(model_dir: Path, users: int, items: int) -> tuple:
    """An initialised (untrained) MFBlock with random raw ids: scoring cost does not depend on training."""
    from recsys.artifacts import save_model
    from recsys.model import build

    rng = np.random.default_rng(0)
    user_ids = np.sort(rng.choice(10**9, users, replace=False)).astype(np.int64)
    product_ids = np.sort(rng.choice(10**8, items, replace=False)).astype(np.int64)
    prepared = types.SimpleNamespace(
        n_users=users, n_items=items,
        users=pd.DataFrame({"user_id": user_ids}), products=pd.DataFrame({"product_id": product_ids}),
        train=pd.DataFrame({"user": np.zeros(1, np.int32), "item": np.zeros(1, np.int32),
                            "event_type_digit": np.ones(1, np.int8)}))
    net = build(users, items, 64, 0.5, ctx="cpu", init_magnitude=1, seed=0)
    save_model(model_dir, net, prepared, {"note": "benchmark model"})
    return user_ids, product_ids


def client_loop(port: int, bodies: list, content_type: str, deadline: float, latencies: list, pairs: list) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    i = 0
    while time.perf_counter() < deadline:
        body, n = bodies[i % len(bodies)]
        t0 = time.perf_counter()
        conn.request("POST", "/invocations", body=body, headers={"Content-Type": content_type, "Accept": content_type})
        r = conn.getresponse()
        data = r.read()
        latencies.append(time.perf_counter() - t0)
        if r.status != 200:
            raise RuntimeError(f"status {r.status}: {data[:200]!r}")
        pairs.append(n)
        i += 1
    conn.close()


def run(port: int, bodies: list, clients: int, seconds: float) -> dict:
    latencies: list = []
    pairs: list = []
    deadline = time.perf_counter() + seconds
    threads = [threading.Thread(target=client_loop, args=(port, bodies, "text/csv", deadline, latencies, pairs))
               for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(lat), "pairs_per_second": sum(pairs) / wall,
            "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        user_ids, product_ids = make_model(model_dir, args.users, args.items)
        proc = subprocess.Popen([sys.executable, "-m", "recsys.cli", "serve", str(model_dir), "--port", "0"],
                                stdout=subprocess.PIPE, text=True, env={**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"})
        try:
            port = int(json.loads(proc.stdout.readline())["url"].rsplit(":", 1)[1])
            rng = np.random.default_rng(1)
            batches = []
            for _ in range(20):  # 1,000-row CSV bodies, 2% unknown ids as in real traffic
                u = rng.choice(user_ids, 1000)
                p = rng.choice(product_ids, 1000)
                u[rng.random(1000) < 0.02] = 1
                batches.append(("\n".join(f"{a},{b}" for a, b in zip(u, p)).encode(), 1000))
            singles = [(f"{a},{b}".encode(), 1) for a, b in zip(rng.choice(user_ids, 200), rng.choice(product_ids, 200))]
            run(port, batches, 1, 1.0)  # warm up
            results = {"batch_1000": [run(port, batches, c, args.seconds) for c in (1, 8)],
                       "single_pair": [run(port, singles, c, args.seconds) for c in (1, 8)]}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"model: {args.users:,} users x {args.items:,} items, 64 dims; server: recsys serve (own process)")
    for r in results["batch_1000"]:
        print(f"CSV batches of 1,000, {r['clients']} client(s): {r['pairs_per_second']:>10,.0f} pairs/s "
              f"(p50 {r['p50_ms']:.2f} ms, p95 {r['p95_ms']:.2f} ms per request)")
    for r in results["single_pair"]:
        print(f"single pair, {r['clients']} client(s):         p50 {r['p50_ms']:.2f} ms, p95 {r['p95_ms']:.2f} ms "
              f"({r['pairs_per_second']:,.0f} requests/s)")
    best = max(r["pairs_per_second"] for r in results["batch_1000"])
    p50 = results["single_pair"][0]["p50_ms"]
    print(f"batch throughput {best:,.0f} pairs/s   target >= 200,000   {'OK' if best >= 200_000 else 'MISSED'}")
    print(f"single-pair p50 (1 client) {p50:.2f} ms   target <= 5 ms   {'OK' if p50 <= 5 else 'MISSED'}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
