"""Peak memory of the local endpoint (``recsys serve``, its own process) under 40 parallel 5.9 MB CSV
requests, without the in-flight cap and with it, in one run.

Each client retries a 503 after its ``Retry-After``, so every request is answered in the end. The
server's resident memory is sampled every 10 ms (psutil); the script prints the idle RSS, the peak
RSS for each setting, their ratio, and how many 503s the capped server sent.

    python benchmarks/bench_endpoint_memory.py [--clients 40 --mb 5.9]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_endpoint import make_model  # noqa: E402


def run(model_dir: Path, body: bytes, clients: int, cap: int | None) -> dict:
    env = {**os.environ, "RECSYS_PROGRESS": "0"}
    if cap is not None:
        env["RECSYS_ENDPOINT_MAX_INFLIGHT_BYTES"] = str(cap)
    proc = subprocess.Popen([sys.executable, "-m", "recsys.cli", "serve", str(model_dir), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        url = json.loads(proc.stdout.readline())["url"]
        server = psutil.Process(proc.pid)
        idle = server.memory_info().rss
        peak, done = [idle], threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], server.memory_info().rss)
                time.sleep(0.01)

        refused, failures = [0], []
        lock = threading.Lock()

        def client():
            try:
                send()
            except Exception as e:  # noqa: BLE001 - counted and shown, not lost in a thread
                with lock:
                    failures.append(repr(e)[:120])

        def send():
            while True:
                r = requests.post(url + "/invocations", data=body, headers={"Content-Type": "text/csv",
                                                                           "Accept": "text/csv"}, timeout=300)
                if r.status_code != 503:
                    assert r.status_code == 200, r.text[:200]
                    return
                with lock:
                    refused[0] += 1
                time.sleep(float(r.headers.get("Retry-After", "1")))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        done.set()
        sampler.join()
        return {"idle_mib": idle / 2**20, "peak_mib": peak[0] / 2**20, "refused_503": refused[0], "seconds": seconds,
                "failures": failures}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=40)
    ap.add_argument("--mb", type=float, default=5.9)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--items", type=int, default=100_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        user_ids, product_ids = make_model(model_dir, args.users, args.items)
        line = f"{int(user_ids[0])},{int(product_ids[0])}\n".encode()
        body = line * int(args.mb * 1e6 // len(line))
        print(f"{args.clients} parallel requests of {len(body) / 1e6:.1f} MB ({len(body) // len(line):,} rows each)")
        uncapped = run(model_dir, body, args.clients, cap=0)
        capped = run(model_dir, body, args.clients, cap=None)
    for name, r in (("no cap", uncapped), ("in-flight cap (default)", capped)):
        print(f"{name:>24}: idle {r['idle_mib']:.0f} MiB, peak {r['peak_mib']:.0f} MiB, "
              f"{r['refused_503']} x 503 retried, {r['seconds']:.1f} s for all requests, "
              f"{len(r['failures'])} failed {sorted(set(r['failures']))}")
    print(f"peak memory ratio (capped / uncapped): {capped['peak_mib'] / uncapped['peak_mib']:.2f}")


if __name__ == "__main__":
    main()
