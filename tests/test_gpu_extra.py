"""The `gpu` extra on a machine without a GPU (tier `gpu_extra`: it installs ~4 GB of wheels into its
own virtualenv; `make test-gpu-extra`, run by .ci/run).

A stub driver ``libcuda.so.1`` (``tests/cuda_stub.py``: every ``cu*`` function libmxnet.so imports,
returning CUDA_ERROR_NO_DEVICE; ``cuGetProcAddress`` hands them out) stands in for the NVIDIA driver,
as on a GPU host without a GPU visible. Checked in that virtualenv: every DT_NEEDED library of libmxnet.so
is loaded after ``import recsys.mx``; the kit's fixed preload list is exactly the NEEDED libraries
the CUDA wheels ship; nvblas, cufftw, OpenCL and cusolverMg are never loaded; SciPy's BLAS works
after the preload; MXNet sees 0 GPUs; ``fit(ctx="auto")`` trains an epoch on the CPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import cuda_stub
from conftest import ROOT

pytestmark = pytest.mark.gpu_extra

CHECK = r'''
import json, os, re, subprocess, sys
from pathlib import Path
import numpy as np
import pandas as pd

import recsys.mx as m
libmxnet = Path(m.mx.__file__).parent / "libmxnet.so"
needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", subprocess.run(
    ["readelf", "-d", str(libmxnet)], capture_output=True, text=True, check=True).stdout)
maps = Path("/proc/self/maps").read_text()
mapped = {os.path.basename(line.split()[-1]) for line in maps.splitlines() if "/" in line}
nvidia = Path(m.mx.__file__).parent.parent / "nvidia"
in_wheels = {p.name for p in nvidia.glob("*/lib/lib*.so*")}
wheel_path = {p.name: p for p in nvidia.glob("*/lib/lib*.so*")}
closure, todo = set(), [n for n in needed if n in in_wheels]
while todo:  # the NEEDED libraries in the wheels, and what those need from the wheels (libcublasLt)
    n = todo.pop()
    if n not in closure:
        closure.add(n)
        todo += [d for d in re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", subprocess.run(
            ["readelf", "-d", str(wheel_path[n])], capture_output=True, text=True, check=True).stdout) if d in in_wheels]
import scipy.linalg.blas as blas
a = np.arange(6.0).reshape(2, 3)
gemm = blas.dgemm(1.0, a, a.T)
from recsys.training import fit
rng = np.random.default_rng(0)
train = pd.DataFrame({"user": rng.integers(0, 20, 400).astype(np.int32), "item": rng.integers(0, 15, 400).astype(np.int32),
                      "event_type_digit": rng.integers(1, 5, 400).astype(np.int8)})
prepared = type("P", (), {"train": train, "test": train.iloc[:20], "n_users": 20, "n_items": 15})()
result = fit(prepared, progress=False, epochs=1, ctx="auto", num_embeddings=8)
print(json.dumps({
    "needed": needed, "unresolved": sorted(n for n in needed if not any(x == n or x.startswith(n + ".") for x in mapped)),
    "preloaded": [os.path.basename(p) for p in m.CUDA_LIBS],
    "fixed_list": [name for _, name in m.CUDA_WHEEL_LIBS],
    "needed_in_wheels": sorted(closure),
    "forbidden_loaded": sorted(n for n in mapped if re.match(r"lib(nvblas|cufftw|OpenCL|cusolverMg)", n)),
    "gemm_ok": bool(np.allclose(gemm, a @ a.T)), "num_gpus": m.num_gpus(),
    "ctx": str(result.net.user_embeddings.weight.list_ctx()[0]), "epochs": len(result.history),
    "cuda_build": m.cuda_build_installed(),
}))
'''


@pytest.fixture(scope="module")
def gpu_venv(tmp_path_factory):
    d = Path(os.environ.get("RECSYS_GPU_VENV") or tmp_path_factory.mktemp("gpu") / "venv")
    py = d / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(d)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", f"{ROOT}[gpu]"], check=True)
    return d


def test_gpu_extra_imports_on_a_machine_without_gpu(gpu_venv, tmp_path):
    import json

    py = gpu_venv / "bin" / "python"
    libmxnet = next(gpu_venv.glob("lib/python3*/site-packages/mxnet/libmxnet.so"))
    stub_dir = cuda_stub.build(tmp_path / "driver", libmxnet)
    env = {**os.environ, "LD_LIBRARY_PATH": str(stub_dir), "RECSYS_PROGRESS": "0"}
    env.pop(cuda_stub.ENV, None)  # no device visible
    r = subprocess.run([str(py), "-c", CHECK], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["cuda_build"]
    assert got["unresolved"] == [], got
    assert got["preloaded"] == got["fixed_list"]
    assert sorted(got["fixed_list"]) == got["needed_in_wheels"]
    assert got["forbidden_loaded"] == []
    assert got["gemm_ok"] and got["num_gpus"] == 0
    assert got["ctx"] == "cpu(0)" and got["epochs"] == 1
