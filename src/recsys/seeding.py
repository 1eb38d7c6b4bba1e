"""One seed for Python, NumPy and (when it is imported) MXNet."""

from __future__ import annotations

import random
import sys

import numpy as np


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    if "mxnet" in sys.modules:
        sys.modules["mxnet"].random.seed(seed)
