"""Reference rankers on a prepared dataset, to put the kit's HR@10 / NDCG@10 in context.

    python benchmarks/ranking_references.py [outputs/prepared]

Prints, on the same leave-last-out split and with the same metric code (recsys.metrics):
popularity, item co-occurrence (score = sum of co-occurrence counts with the user's training
items) and implicit ALS (Hu, Koren, Volinsky 2008; 64 factors, alpha 40, lambda 0.1, 15 sweeps,
plain NumPy: meant for the samples, dense user x item matrices).
"""

from __future__ import annotations

import json
import sys

import numpy as np

from recsys.metrics import evaluate_popularity, evaluate_vectors
from recsys.prepare import Prepared


def implicit_als(X: np.ndarray, factors=64, alpha=40.0, lam=0.1, sweeps=15, seed=0):
    rng = np.random.default_rng(seed)
    U = rng.normal(0, 0.01, (X.shape[0], factors))
    V = rng.normal(0, 0.01, (X.shape[1], factors))
    C = 1 + alpha * X
    for _ in range(sweeps):
        for A, B, W in ((U, V, C), (V, U, C.T)):
            BtB = B.T @ B
            for r in range(A.shape[0]):
                m = W[r] > 1
                Bm, cm = B[m], W[r][m]
                A[r] = np.linalg.solve(BtB + (Bm.T * (cm - 1)) @ Bm + lam * np.eye(factors), (Bm.T * cm).sum(axis=1))
    return U, V


def main() -> None:
    p = Prepared.load(sys.argv[1] if len(sys.argv) > 1 else "outputs/prepared")
    X = np.zeros((p.n_users, p.n_items))
    X[p.train["user"], p.train["item"]] = 1.0
    cooc = X.T @ X
    np.fill_diagonal(cooc, 0)
    results = {
        "popularity": evaluate_popularity(p),
        "item_cooccurrence": evaluate_vectors(X, cooc, p),
        "implicit_als_64": evaluate_vectors(*implicit_als(X), p),
    }
    for name, r in results.items():
        print(f"{name:20} HR@10 {r['hr_at_10']:.3f}  NDCG@10 {r['ndcg_at_10']:.3f}  ({r['users']} test users)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
