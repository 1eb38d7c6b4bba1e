"""The `gpu` extra on a machine without a GPU (tier `gpu_extra`: it installs ~4 GB of wheels into its
own virtualenv; `make test-gpu-extra`, run by .ci/run).

A stub driver ``libcuda.so.1`` (every ``cu*`` function libmxnet.so imports, returning
CUDA_ERROR_NO_DEVICE; ``cuGetProcAddress`` hands them out) stands in for the NVIDIA driver, as on a
GPU host without a GPU visible. Checked in that virtualenv: every DT_NEEDED library of libmxnet.so
is loaded after ``import recsys.mx``; the kit's fixed preload list is exactly the NEEDED libraries
the CUDA wheels ship; nvblas, cufftw, OpenCL and cusolverMg are never loaded; SciPy's BLAS works
after the preload; MXNet sees 0 GPUs; ``fit(ctx="auto")`` trains an epoch on the CPU."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.gpu_extra

CUDA_ERROR_NO_DEVICE = 100
CUDA_ERROR_NOT_FOUND = 500


def stub_source(symbols) -> str:
    symbols = sorted(set(symbols) | {"cuInit", "cuDeviceGetCount", "cuDriverGetVersion"})
    funcs = "\n".join(f"int {s}(void) {{ return {CUDA_ERROR_NO_DEVICE}; }}" for s in symbols)
    table = "\n".join(f'    {{"{s}", (void *){s}}},' for s in symbols)
    return textwrap.dedent("""\
        /* A stand-in NVIDIA driver with no device: every entry point answers CUDA_ERROR_NO_DEVICE. */
        #include <string.h>
        {funcs}
        static const struct {{ const char *name; void *fn; }} table[] = {{
        {table}
        }};
        int cuGetProcAddress(const char *symbol, void **pfn, int version, unsigned long long flags) {{
            for (unsigned i = 0; i < sizeof(table) / sizeof(table[0]); i++)
                if (strcmp(symbol, table[i].name) == 0) {{ *pfn = table[i].fn; return 0; }}
            *pfn = 0;
            return {not_found};
        }}
        int cuGetProcAddress_v2(const char *symbol, void **pfn, int version, unsigned long long flags, void *status) {{
            return cuGetProcAddress(symbol, pfn, version, flags);
        }}
        """).format(funcs=funcs, table=table, not_found=CUDA_ERROR_NOT_FOUND)


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
    symbols = subprocess.run(["nm", "-D", "--undefined-only", str(libmxnet)], capture_output=True, text=True,
                             check=True).stdout.split()
    stub_dir = tmp_path / "driver"
    stub_dir.mkdir()
    (stub_dir / "libcuda.c").write_text(stub_source(s for s in symbols if s.startswith("cu") and s[2:3].isupper()))
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(stub_dir / "libcuda.so.1"), str(stub_dir / "libcuda.c")],
                   check=True)
    env = {**os.environ, "LD_LIBRARY_PATH": str(stub_dir), "RECSYS_PROGRESS": "0"}
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
