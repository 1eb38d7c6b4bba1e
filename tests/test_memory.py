"""recsys.memory.release: a finished model's memory leaves the process (reference cycles collected, the C
heap's free pages returned), which keeps notebook 02's peak at its largest step at full size."""

import gc
import sys

import numpy as np
import pytest

from recsys import memory

MB = 2**20
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resident size from /proc, glibc")


@linux
def test_release_frees_arrays_held_only_by_a_reference_cycle():
    """As a Gluon network and its Trainer refer to each other: ``del`` alone frees nothing until the cyclic
    collector runs (disabled here, as it effectively is between a few large allocations)."""
    gc.collect()
    gc.disable()
    try:
        a, b = {"table": np.ones(300 * MB // 8)}, {}
        a["other"], b["other"] = b, a
        held = memory.resident_bytes()
        del a, b
        assert memory.resident_bytes() > held - 50 * MB  # still resident: only the cycle refers to it
        memory.release()
        assert memory.resident_bytes() < held - 250 * MB
    finally:
        gc.enable()


@linux
def test_release_returns_the_c_heaps_free_pages():
    """Arrays below the mmap threshold come from the heap; freed behind one still in use, their pages stay
    resident until malloc_trim."""
    if memory._TRIM is None:
        pytest.skip("not glibc")
    memory.release()
    blocks = [np.ones(64 * 1024 // 8) for _ in range(4000)]  # 250 MiB of 64 KiB heap blocks
    pin = np.ones(64 * 1024 // 8)  # above them on the heap: the heap's top cannot shrink
    held = memory.resident_bytes()
    del blocks
    assert memory.resident_bytes() > held - 100 * MB
    memory.release()
    assert memory.resident_bytes() < held - 200 * MB
    del pin
