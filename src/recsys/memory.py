"""Give memory back between the big steps of a run.

Two things keep a finished model's memory resident, measured on notebook 02 at 27M training rows (the
resident size after each model, with and without :func:`release`: 0.87 and 0.68 GiB after the implicit
model, 1.15 and 0.76 GiB after the side model):

* **Reference cycles.** A Gluon network, its ``Trainer`` and the kit's row tables refer to each other, so
  ``del net`` frees nothing until Python's cyclic collector runs, which a few large arrays never trigger:
  each full-size model (and its optimizer state, 1.9 GB for the seed's model at 3.6M users) stayed
  resident while the next one trained.
* **The C heap.** Arrays below glibc's mmap threshold (which rises to 32 MiB as large arrays are freed)
  come from the heap; a freed heap is reused by Python, but its pages stay resident until
  ``malloc_trim`` returns them.

:func:`release` does both; :func:`recsys.selection.ranking_table` calls it after each model, so that the
peak of a run is its largest step, not the sum of what its steps left behind.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys


def _malloc_trim():
    """glibc's ``malloc_trim``, or None (another C library, another OS)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def release() -> None:
    """Collect unreachable reference cycles, then return the C heap's free pages to the OS (glibc only)."""
    gc.collect()
    if _TRIM is not None:
        _TRIM(0)


def resident_bytes() -> int:
    """This process's resident set size in bytes (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0
