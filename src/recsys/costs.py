"""What a run will cost, said before it starts: an estimate from the input's size and the rates measured
on the 2-core reference machine (``benchmarks/bench_full_lab.py`` and the training benchmarks). It is an
order of magnitude, not a promise: another machine, a GPU or another data set moves it.
"""

from __future__ import annotations

import math
from pathlib import Path

from .presets import kind, preset_settings, scaled_epochs

#: Bytes per event row in the REES46 files (the Kaggle months and the kit's synthetic files agree within 10%).
BYTES_PER_ROW = {"csv": 135.0, "csv.gz": 36.0}
#: Rows read and prepared per second (``recsys prepare``'s lean read, gzip or not).
PREPARE_ROWS_PER_SECOND = 600_000.0
#: Training rows per event row, and distinct (user, product) pairs per event row, after the min-count filter.
TRAIN_ROWS_PER_ROW = 0.85
PAIRS_PER_ROW = 0.55
#: Training examples per second of each kind of model, at the batch sizes the presets use at scale: notebook
#: 02's full fits on 10M synthetic REES46 rows (5.8M pairs), measured on the reference machine: seed 237k
#: rows/s, implicit 408k, side 193k pairs/s, sequence 97k examples/s (rounded down).
TRAIN_RATE = {"mf": 230_000.0, "mf_implicit": 400_000.0, "side": 190_000.0, "sequence": 95_000.0}
#: Ranking the evaluation sample (20,000 users over the catalogue) and saving: seconds, roughly.
EVALUATE_SECONDS = 60.0


def estimate_rows(files) -> int:
    """Event rows in ``files``, from their sizes."""
    rows = 0.0
    for f in files:
        f = Path(f)
        per_row = BYTES_PER_ROW["csv.gz"] if f.name.endswith(".gz") else BYTES_PER_ROW["csv"]
        rows += f.stat().st_size / per_row
    return int(rows)


def training_job(files, preset: str = "best", epochs=None) -> dict:
    """The seconds a training job (read + prepare, train, evaluate) would take on the reference machine."""
    rows = estimate_rows(files)
    settings = preset_settings(preset)
    k = kind(preset)
    if k == "mf" and settings.get("objective", "event_score") == "event_score":
        examples, rate = rows * TRAIN_ROWS_PER_ROW, TRAIN_RATE["mf"]
        n_epochs = epochs if epochs is not None else 10  # the workshop's job
    else:
        examples = rows * PAIRS_PER_ROW
        rate = TRAIN_RATE["mf_implicit" if k == "mf" else k]
        n_epochs = epochs if epochs is not None else scaled_epochs(settings["epochs"], int(examples))
    steps = {"prepare": rows / PREPARE_ROWS_PER_SECOND, "train": examples * n_epochs / rate,
             "evaluate": EVALUATE_SECONDS if rows > 1_000_000 else 1.0}
    return {"rows": rows, "examples": int(examples), "epochs": int(n_epochs), "seconds": steps,
            "total_seconds": sum(steps.values())}


def describe(estimate: dict) -> str:
    """One line for a notebook: the estimate, and what it is made of."""
    minutes = estimate["total_seconds"] / 60
    parts = ", ".join(f"{k} ~{v / 60:.0f} min" if v >= 60 else f"{k} ~{math.ceil(v)} s"
                      for k, v in estimate["seconds"].items())
    total = f"~{minutes:.0f} min" if minutes >= 1 else "under a minute"
    return (f"about {estimate['rows']:,} event rows, {estimate['examples']:,} training examples x {estimate['epochs']} "
            f"epoch(s): {total} on a 2-core CPU ({parts})")
