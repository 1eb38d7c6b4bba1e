"""Notebook 02's ranking table on any REES46 file, with the presets (the settings the validation split
of the October sample chose; nothing is chosen again on this data): validation HR@10 of the warm
validation users, test HR@10 / NDCG@10 for all and for warm test users, with the standard error.

    python benchmarks/ranking_table.py FILE.csv.gz [FILE ...] [--choose]

``--choose`` runs the validation protocol on this data instead (as notebook 02 does).
"""

from __future__ import annotations

import argparse
import time

from recsys.prepare import prepare_files
from recsys.selection import LABELS, SHOWN, best_kit_model, ceiling, ranking_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--choose", action="store_true", help="choose settings on this data's validation split")
    args = ap.parse_args()
    prepared = prepare_files(args.inputs, progress=False)
    s = prepared.summary
    print(f"{s['users_kept']:,} test users ({s['test_users_without_train_rows']:,} without a training row), "
          f"{s['products_kept']:,} items, {s['train_rows']:,} training rows")
    t0 = time.perf_counter()
    table, _, choices = ranking_table(prepared, choose=args.choose)
    shown = table.rename(index=LABELS)[SHOWN]
    print(shown.astype(float).round(3).to_string())
    print("ceiling:", {k: round(v, 3) for k, v in ceiling(prepared).items()})
    for name, c in choices.items():
        print(f"{name}: {c['settings']} (validation curve {c['validation_curve']})")
    print(f"best kit model by validation: {LABELS[best_kit_model(table)]}; {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
