"""The GPU guard, decided on faked device information (no GPU here): which compute capabilities run
the mxnet-cu112 1.9.1 wheel, what ctx="auto" and ctx="gpu" do on each, and MXNet's "no kernel image"
error turned into the guard's message. The driver query (``gpu_devices``) against a stub
``libcuda.so.1`` that reports devices of chosen compute capabilities."""

import json
import os
import subprocess
import sys

import pytest

import cuda_stub
import recsys.mx as m
from recsys.mx import GpuDevice, UnsupportedGPUError, choose_device, runs_wheel

K80 = GpuDevice(0, "Tesla K80", (3, 7))
T4 = GpuDevice(0, "Tesla T4", (7, 5))
A10G = GpuDevice(0, "NVIDIA A10G", (8, 6))
H100 = GpuDevice(0, "NVIDIA H100 80GB HBM3", (9, 0))


@pytest.mark.parametrize("capability, runs", [
    ((3, 7), False), ((5, 0), True), ((5, 2), True), ((6, 1), True), ((7, 0), True), ((7, 5), True),
    ((8, 0), True), ((8, 6), True), ((8, 9), True), ((9, 0), False), ((10, 0), False), ((8, 5), True),
])
def test_runs_wheel(capability, runs):
    assert runs_wheel(capability) is runs


@pytest.mark.parametrize("device", [T4, A10G], ids=["sm_75", "sm_86"])
def test_supported_gpu_is_used(device):
    assert choose_device("auto", 1, [device]) == ("gpu", 0, None)
    assert choose_device("gpu", 1, [device]) == ("gpu", 0, None)
    assert choose_device("gpu:0", 1, [device]) == ("gpu", 0, None)


@pytest.mark.parametrize("device", [K80, H100], ids=["sm_37", "sm_90"])
def test_unsupported_gpu_auto_falls_back_to_cpu_with_one_line(device):
    kind, idx, warning = choose_device("auto", 1, [device])
    assert kind == "cpu"
    assert "\n" not in warning
    major, minor = device.capability
    assert device.name in warning and f"{major}.{minor}" in warning and "ml.g4dn" in warning and "CPU" in warning


@pytest.mark.parametrize("device", [K80, H100], ids=["sm_37", "sm_90"])
def test_unsupported_gpu_explicit_raises(device):
    with pytest.raises(UnsupportedGPUError, match=device.name) as e:
        choose_device("gpu", 1, [device])
    assert "ml.g4dn" in str(e.value) and "\n" not in str(e.value)


def test_no_gpu_and_unknown_capability():
    assert choose_device("auto", 0, []) == ("cpu", 0, None)
    assert choose_device("cpu", 1, [T4]) == ("cpu", 0, None)
    assert choose_device("auto", 1, []) == ("gpu", 0, None)  # driver unreadable: MXNet's own error decides
    with pytest.raises(ValueError, match="sees 0 GPU"):
        choose_device("gpu", 0, [])
    with pytest.raises(ValueError, match="unknown ctx"):
        choose_device("tpu", 0, [])


def test_context_warns_once_and_uses_cpu(monkeypatch, capsys):
    monkeypatch.setattr(m, "num_gpus", lambda: 1)
    monkeypatch.setattr(m, "gpu_devices", lambda: [K80])
    monkeypatch.setattr(m, "_warned", set())
    assert m.context("auto") == m.mx.cpu()
    assert m.context("auto") == m.mx.cpu()
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "Tesla K80" in err
    with pytest.raises(UnsupportedGPUError):
        m.context("gpu")


def test_no_kernel_image_error_becomes_the_guards_message(monkeypatch):
    monkeypatch.setattr(m, "gpu_devices", lambda: [H100])
    with pytest.raises(UnsupportedGPUError, match="H100.*9.0"):
        with m.gpu_errors(m.mx.gpu(0)):
            raise m.mx.base.MXNetError("[12:00:00] src/operator/...: Check failed: err == cudaSuccess (209 vs. 0) : "
                                       "no kernel image is available for execution on the device")
    with pytest.raises(m.mx.base.MXNetError, match="something else"):  # other errors pass through
        with m.gpu_errors(m.mx.gpu(0)):
            raise m.mx.base.MXNetError("something else")


def test_entry_point_uses_the_guard(monkeypatch, tmp_path):
    """SM_NUM_GPUS > 0 on an unsupported GPU: the entry point trains on the CPU (ctx='auto')."""
    from recsys.sagemaker import entry

    assert entry.training_context({"SM_NUM_GPUS": "1"}) == "auto"
    assert entry.training_context({"SM_NUM_GPUS": "0"}) == "cpu"
    monkeypatch.setattr(m, "num_gpus", lambda: 1)
    monkeypatch.setattr(m, "gpu_devices", lambda: [K80])
    monkeypatch.setattr(m, "_warned", set())
    assert m.context(entry.training_context({"SM_NUM_GPUS": "1"})) == m.mx.cpu()


DRIVER_CHECK = r'''
import json, os, sys
import recsys.mx as m

count = {"n": 0}
m.num_gpus = lambda: count["n"]  # MXNet counts every GPU the driver has (the CPU build none): say so here
out = {}
for spec in sys.argv[1:]:
    os.environ["RECSYS_STUB_GPUS"] = spec
    count["n"] = len(spec.split(";")) if spec else 0
    devices = m.gpu_devices()
    got = {"devices": [[d.index, d.name, list(d.capability)] for d in devices]}
    for ctx in ("auto", "gpu", "gpu:1"):
        try:
            got[ctx] = str(m.context(ctx))
        except (m.UnsupportedGPUError, ValueError) as e:
            got[ctx] = f"{type(e).__name__}: {e}"
    out[spec] = got
print(json.dumps(out))
'''


def test_gpu_devices_reads_the_driver_and_the_guard_decides_on_it(tmp_path):
    """``gpu_devices()`` queries a real ``libcuda.so.1`` through ctypes: the stub driver of the gpu_extra tier
    (tests/cuda_stub.py, compiled here; a C compiler is a setup requirement anyway), reporting devices of a
    chosen compute capability. Runs in a fresh process whose LD_LIBRARY_PATH finds the stub first, so it runs
    the same with the CPU build, the CUDA build and on a GPU host."""
    stub = cuda_stub.build(tmp_path / "driver", os.path.join(os.path.dirname(m.mx.__file__), "libmxnet.so"))
    specs = ["", "7.5 Tesla T4", "9.0 NVIDIA H100 80GB HBM3", "3.7 Tesla K80", "8.6 NVIDIA A10G;9.0 NVIDIA H200"]
    env = {**os.environ, "LD_LIBRARY_PATH": str(stub)}
    r = subprocess.run([sys.executable, "-c", DRIVER_CHECK, *specs], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got[""] == {"devices": [], "auto": "cpu(0)", "gpu": "ValueError: ctx='gpu': MXNet sees 0 GPU(s)",
                       "gpu:1": "ValueError: ctx='gpu:1': MXNet sees 0 GPU(s)"}
    t4 = got["7.5 Tesla T4"]
    assert t4["devices"] == [[0, "Tesla T4", [7, 5]]]
    assert t4["auto"] == t4["gpu"] == "gpu(0)"  # sm_75 runs the wheel
    for spec, name, cap in (("9.0 NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3", "9.0"),
                            ("3.7 Tesla K80", "Tesla K80", "3.7")):  # no kernels for these: CPU, or a clear error
        assert got[spec]["devices"] == [[0, name, [int(cap[0]), int(cap[2])]]]
        assert got[spec]["auto"] == "cpu(0)"
        assert got[spec]["gpu"].startswith("UnsupportedGPUError: GPU 0 (" + name + f") has compute capability {cap}")
    two = got["8.6 NVIDIA A10G;9.0 NVIDIA H200"]
    assert two["devices"] == [[0, "NVIDIA A10G", [8, 6]], [1, "NVIDIA H200", [9, 0]]]
    assert two["auto"] == two["gpu"] == "gpu(0)"
    assert two["gpu:1"].startswith("UnsupportedGPUError: GPU 1 (NVIDIA H200) has compute capability 9.0")
    assert "warning: GPU 0 (NVIDIA H100 80GB HBM3) has compute capability 9.0" in r.stderr
