"""Progress bars with an ETA on stderr, quiet where nobody watches.

``RECSYS_PROGRESS`` chooses the form (``enabled=False`` turns a bar off whatever it says):

* ``1`` (default): a tqdm bar, redrawn in place (a terminal, a notebook's stderr);
* ``lines``: one plain line per update, at most every :data:`LINE_INTERVAL` seconds, for logs that
  are read line by line (a SageMaker training job's log, CloudWatch): ``epoch 1/3: 42% 1.2M/2.9M
  row [00:31<00:43, 39.1k row/s]``;
* ``0``: nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys

from tqdm import tqdm

#: Seconds between two lines in ``lines`` mode.
LINE_INTERVAL = 15.0


def progress_mode(enabled: bool = True) -> str:
    """``"bar"``, ``"lines"`` or ``"off"``."""
    value = os.environ.get("RECSYS_PROGRESS", "1").strip().lower()
    if not enabled or value == "0":
        return "off"
    return "lines" if value == "lines" else "bar"


def progress_enabled(enabled: bool = True) -> bool:
    return progress_mode(enabled) != "off"


class _Lines:
    """A file for tqdm that writes each redraw as its own line (no carriage returns)."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


@contextlib.contextmanager
def progress_bar(total=None, enabled: bool = True, **kwargs):
    mode = progress_mode(enabled)
    if mode == "lines":
        kwargs = {"file": _Lines(sys.stderr), "mininterval": LINE_INTERVAL, "maxinterval": LINE_INTERVAL * 4,
                  "ascii": True, "ncols": 100, **kwargs}
    bar = tqdm(total=total, disable=mode == "off", **{"mininterval": 0.5, **kwargs})
    try:
        yield bar
    finally:
        bar.close()
