"""Import MXNet the one way the kit does, pick the device, and refuse GPUs the wheel cannot run.

**CUDA libraries.** On a GPU setup (``make setup GPU=1``) ``mxnet-cu112`` links against the CUDA
11 runtime libraries that the ``nvidia-*-cu11`` wheels unpack under ``site-packages/nvidia/*/lib``.
The dynamic loader does not look there, so before importing MXNet this module loads the wheel
libraries ``libmxnet.so`` names as DT_NEEDED plus ``libcublasLt.so.11``, which ``libcublas`` needs
(:data:`CUDA_WHEEL_LIBS`; a test reads the installed wheels' ELF headers and compares), with
``RTLD_GLOBAL``, and only when a CUDA build of MXNet is installed. Nothing else from those folders is loaded: ``libnvblas`` exports ``sgemm_``/``dgemm_``
and would hijack SciPy's BLAS (a segfault), and ``libcufftw``, ``libOpenCL``, ``libcusolverMg``
are not needed. A library that is not in a wheel (a system CUDA toolkit, the SageMaker GPU
container) is left to the dynamic loader.

**GPU guard.** The ``mxnet-cu112`` 1.9.1 wheel carries machine code (SASS) for sm_50, sm_60,
sm_70, sm_80 and sm_86 and no PTX, so a GPU runs it only when its compute capability has the
same major version and at least the minor version of one of those: T4 (7.5), V100 (7.0), A10G
(8.6), A100 (8.0), L4 (8.9) can; K80 (3.7, ml.p2) and H100/H200 (9.0, ml.p5) cannot, although
MXNet imports and counts them. :func:`context` checks the device before any work goes there:
``ctx="auto"`` warns once and uses the CPU, ``ctx="gpu"`` raises :class:`UnsupportedGPUError`;
:func:`gpu_errors` turns MXNet's "no kernel image is available" into the same message.

Imported by the SageMaker containers (Python 3.8): standard library and MXNet only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from typing import NamedTuple, Optional, Tuple

#: ``libmxnet.so``'s DT_NEEDED libraries that the ``gpu`` extra's wheels provide, and ``libcublasLt``
#: that ``libcublas`` needs, in load order (each after what it links against):
#: ``(folder under site-packages/nvidia, file name)``.
#: ``libcuda.so.1`` (the driver) and ``libgomp.so.1`` (the OS) come from the system.
CUDA_WHEEL_LIBS = (
    ("cuda_runtime", "libcudart.so.11.0"),
    ("cublas", "libcublasLt.so.11"),
    ("cublas", "libcublas.so.11"),
    ("cudnn", "libcudnn.so.8"),
    ("cufft", "libcufft.so.10"),
    ("curand", "libcurand.so.10"),
    ("cusolver", "libcusolver.so.11"),
    ("nccl", "libnccl.so.2"),
    ("cuda_nvrtc", "libnvrtc.so.11.2"),
    ("nvtx", "libnvToolsExt.so.1"),
)
#: DT_NEEDED libraries of ``libmxnet.so`` that the system provides.
SYSTEM_LIBS = ("libcuda.so.1", "libgomp.so.1")

#: Architectures with SASS in the installed mxnet-cu112 1.9.1 wheel (checked with cuobjdump; no PTX).
WHEEL_SASS = ((5, 0), (6, 0), (7, 0), (8, 0), (8, 6))
WORKING_GPUS = "T4 (ml.g4dn), A10G (ml.g5), L4 (ml.g6), V100 or A100"
NOT_WORKING_GPUS = "K80 (ml.p2, retired) and H100/H200 (ml.p5) cannot"


def cuda_build_installed() -> bool:
    """Whether the installed MXNet is a CUDA build (``mxnet-cu112`` and friends)."""
    try:
        from importlib import metadata
    except ImportError:  # pragma: no cover
        return False
    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower()
        if name.startswith("mxnet-cu"):
            return True
    return False


def _find_wheel_lib(folder: str, name: str) -> Optional[str]:
    for base in sys.path:
        path = os.path.join(base or ".", "nvidia", folder, "lib", name)
        if os.path.isfile(path):
            return path
    return None


def _preload_cuda_wheels() -> list:
    """Load the CUDA wheels' copies of :data:`CUDA_WHEEL_LIBS`; return the paths loaded."""
    if not cuda_build_installed():
        return []
    loaded = []
    for folder, name in CUDA_WHEEL_LIBS:
        path = _find_wheel_lib(folder, name)
        if path is None:
            continue  # a system CUDA installation may provide it
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        loaded.append(path)
    return loaded


CUDA_LIBS = _preload_cuda_wheels()

try:
    import mxnet as mx  # noqa: E402  (after the preload on purpose)
except OSError as _e:  # a missing CUDA library: say which, and how to get it
    raise ImportError(
        f"MXNet could not load a library it links against ({_e}). On a GPU machine run `make setup GPU=1`; "
        f"without a GPU run `make setup GPU=0` (the CPU build)."
    ) from None


# ---- the GPU guard ----------------------------------------------------------------------------

class GpuDevice(NamedTuple):
    index: int
    name: str
    capability: Tuple[int, int]


class UnsupportedGPUError(RuntimeError):
    """The GPU cannot run the installed MXNet wheel's kernels."""


def runs_wheel(capability, sass=WHEEL_SASS) -> bool:
    """A device runs SASS built for the same major version and an equal or lower minor version."""
    major, minor = capability
    return any(m == major and n <= minor for m, n in sass)


def unsupported_message(device: GpuDevice) -> str:
    major, minor = device.capability
    return (f"GPU {device.index} ({device.name}) has compute capability {major}.{minor} (sm_{major}{minor}), "
            f"which the installed MXNet wheel has no kernels for (it runs sm_50 to sm_89): use an instance with a "
            f"{WORKING_GPUS} GPU; {NOT_WORKING_GPUS}.")


def gpu_devices() -> list:
    """The GPUs the driver reports, with their compute capability; ``[]`` without a usable driver."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return []
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return []
    devices = []
    for i in range(count.value):
        dev, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
        name = ctypes.create_string_buffer(256)
        if cuda.cuDeviceGet(ctypes.byref(dev), i) != 0:
            continue
        cuda.cuDeviceGetName(name, 256, dev)
        # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76
        if cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev) or cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev):
            continue
        devices.append(GpuDevice(i, name.value.decode(errors="replace") or "unknown GPU", (major.value, minor.value)))
    return devices


def num_gpus() -> int:
    """GPUs MXNet sees (0 on a CPU build or without a driver)."""
    try:
        return int(mx.context.num_gpus())
    except Exception:  # a CPU build, or a driver that cannot be queried
        return 0


def choose_device(ctx, n_gpus: int, devices) -> tuple:
    """The guard's decision, without touching a GPU: ``(kind, index, warning)`` with ``kind`` "cpu" or
    "gpu". ``devices`` are the driver's :class:`GpuDevice` entries (capabilities unknown when empty).

    ``"auto"``: the first GPU when there is one and it runs the wheel; on an unsupported GPU the CPU
    with a one-line warning. ``"gpu"`` / ``"gpu:N"``: that GPU, or :class:`UnsupportedGPUError`."""
    name = str(ctx).lower()
    by_index = {d.index: d for d in devices}
    if name == "auto":
        if n_gpus <= 0:
            return "cpu", 0, None
        dev = by_index.get(0)
        if dev is not None and not runs_wheel(dev.capability):
            return "cpu", 0, unsupported_message(dev) + " Training on the CPU instead."
        return "gpu", 0, None
    if name == "cpu":
        return "cpu", 0, None
    if name.startswith("gpu"):
        try:
            idx = int(name.split(":", 1)[1]) if ":" in name else 0
        except ValueError:
            raise ValueError(f"unknown ctx {ctx!r}: use 'auto', 'cpu', 'gpu' or 'gpu:N'") from None
        if idx >= n_gpus:
            raise ValueError(f"ctx={ctx!r}: MXNet sees {n_gpus} GPU(s)")
        dev = by_index.get(idx)
        if dev is not None and not runs_wheel(dev.capability):
            raise UnsupportedGPUError(unsupported_message(dev))
        return "gpu", idx, None
    raise ValueError(f"unknown ctx {ctx!r}: use 'auto', 'cpu', 'gpu' or 'gpu:N'")


_warned = set()


def context(ctx="auto"):
    """``"auto"`` -> ``mx.gpu(0)`` when MXNet sees a GPU that runs the wheel, else ``mx.cpu()``; also
    ``"cpu"``, ``"gpu"``, ``"gpu:1"`` or an ``mx.Context`` (see :func:`choose_device`)."""
    if isinstance(ctx, mx.Context):
        return ctx
    n = num_gpus()
    kind, idx, warning = choose_device(ctx, n, gpu_devices() if n > 0 else [])
    if warning and warning not in _warned:
        _warned.add(warning)
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    return mx.gpu(idx) if kind == "gpu" else mx.cpu()


@contextlib.contextmanager
def gpu_errors(ctx=None):
    """Turn MXNet's "no kernel image is available" (an unsupported GPU) into the guard's message."""
    try:
        yield
    except mx.base.MXNetError as e:
        if "no kernel image" not in str(e):
            raise
        idx = ctx.device_id if isinstance(ctx, mx.Context) else 0
        dev = {d.index: d for d in gpu_devices()}.get(idx)
        if dev is not None:
            raise UnsupportedGPUError(unsupported_message(dev)) from None
        raise UnsupportedGPUError(f"GPU {idx}: the installed MXNet wheel has no kernels for this GPU (it runs "
                                  f"sm_50 to sm_89): use an instance with a {WORKING_GPUS} GPU; "
                                  f"{NOT_WORKING_GPUS}.") from None
