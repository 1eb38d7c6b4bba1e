"""Import MXNet the one way the kit does, and pick the device.

On a GPU setup (``make setup GPU=1``) ``mxnet-cu112`` links against the CUDA 11 runtime
libraries that the ``nvidia-*-cu11`` wheels unpack under ``site-packages/nvidia/*/lib``. The
dynamic loader does not look there, so before importing MXNet this module loads them once with
``RTLD_GLOBAL`` (the way PyTorch finds its own CUDA wheels). On a CPU setup there is no such
folder and nothing happens. Check a GPU machine with
``python -c "import recsys.mx as m; print(m.num_gpus())"``.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys


def _preload_cuda_wheels() -> list:
    """Load the CUDA 11 runtime wheels' shared libraries, dependencies first; return their paths."""
    libs = []
    for base in sys.path:
        libs += glob.glob(os.path.join(base, "nvidia", "*", "lib", "lib*.so*"))
    pending, loaded = sorted(set(libs)), []
    # Several passes: a library whose dependency is not loaded yet fails and is retried.
    for _ in range(len(pending) + 1):
        failed = []
        for lib in pending:
            try:
                ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
                loaded.append(lib)
            except OSError:
                failed.append(lib)
        if not failed or len(failed) == len(pending):
            break
        pending = failed
    return loaded


CUDA_LIBS = _preload_cuda_wheels()

import mxnet as mx  # noqa: E402  (after the preload on purpose)


def num_gpus() -> int:
    try:
        return int(mx.context.num_gpus())
    except Exception:  # a CPU build, or a driver that cannot be queried
        return 0


def context(ctx="auto"):
    """``"auto"`` -> ``mx.gpu(0)`` when MXNet sees a GPU, else ``mx.cpu()``; also ``"cpu"``,
    ``"gpu"``, ``"gpu:1"`` or an ``mx.Context``."""
    if isinstance(ctx, mx.Context):
        return ctx
    name = str(ctx).lower()
    if name == "auto":
        return mx.gpu(0) if num_gpus() > 0 else mx.cpu()
    if name == "cpu":
        return mx.cpu()
    if name.startswith("gpu"):
        idx = int(name.split(":", 1)[1]) if ":" in name else 0
        if idx >= num_gpus():
            raise ValueError(f"ctx={ctx!r}: MXNet sees {num_gpus()} GPU(s)")
        return mx.gpu(idx)
    raise ValueError(f"unknown ctx {ctx!r}: use 'auto', 'cpu', 'gpu' or 'gpu:N'")
