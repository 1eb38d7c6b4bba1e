"""Progress bars that stay quiet where nobody watches (``enabled=False``, ``RECSYS_PROGRESS=0``)."""

from __future__ import annotations

import contextlib
import os

from tqdm import tqdm


def progress_enabled(enabled: bool = True) -> bool:
    return enabled and os.environ.get("RECSYS_PROGRESS", "1") != "0"


@contextlib.contextmanager
def progress_bar(total=None, enabled: bool = True, **kwargs):
    bar = tqdm(total=total, disable=not progress_enabled(enabled), mininterval=0.5, **kwargs)
    try:
        yield bar
    finally:
        bar.close()
