"""Key figures of each notebook, written to ``outputs/metrics/<notebook>.json``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np


def _plain(v):
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_metrics(name: str, metrics: dict, output_dir: str | os.PathLike = "outputs") -> Path:
    """Write ``metrics`` as sorted, indented JSON (NaN -> null) and return the path."""
    path = Path(output_dir) / "metrics" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(metrics), indent=2, sort_keys=True) + "\n")
    return path


def read_metrics(name: str, output_dir: str | os.PathLike = "outputs") -> dict:
    return json.loads((Path(output_dir) / "metrics" / f"{name}.json").read_text())
