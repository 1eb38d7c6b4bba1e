"""Where attendees are: Python 3.10 and 3.11, the Makefile's interpreter search, both extras
resolving for 3.10, and no retired instance types in code, notebooks or the README's examples."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

BIN = Path(sys.executable).parent


def test_kit_code_runs_on_python_310():
    """vermin: nothing in src/, notebooks/ or tests/ needs more than Python 3.10."""
    r = subprocess.run([str(BIN / "vermin"), "-t=3.10-", "--violations", "--no-tips", "--eval-annotations",
                        "src", "notebooks", "tests"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_vermin_catches_a_311_feature(tmp_path):
    """The check above can fail: a 3.11-only module is reported."""
    (tmp_path / "new.py").write_text("import tomllib\n")
    r = subprocess.run([str(BIN / "vermin"), "-t=3.10-", "--violations", "--no-tips", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "tomllib" in r.stdout


def test_pyproject_allows_310_and_311_only():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'requires-python = ">=3.10,<3.12"' in text


@pytest.mark.extended  # pip resolves the whole pin set for Python 3.10: ~45 s each
@pytest.mark.parametrize("extra", ["cpu", "gpu"])
def test_dependencies_resolve_for_python_310(tmp_path, extra):
    """The whole dependency set installs on a SageMaker notebook instance's Python 3.10 (binary wheels only)."""
    report = tmp_path / "report.json"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                        "--python-version", "3.10", "--only-binary=:all:", "--target", str(tmp_path / "t"),
                        "--report", str(report), f".[{extra},dev]"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    installed = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    assert installed["numpy"].startswith("1.23")
    assert ("mxnet" if extra == "cpu" else "mxnet-cu112") in installed
    if extra == "gpu":  # libnvToolsExt.so.1 is one of libmxnet.so's DT_NEEDED libraries
        assert "nvidia-nvtx-cu11" in installed


def _fake_bin(tmp_path, versions: dict) -> Path:
    """A PATH folder whose `python3*` commands answer the version check as the given version."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for name, version in versions.items():
        script = fake / name
        script.write_text(f"#!/bin/bash\nexec {sys.executable} -c 'import sys; sys.version_info = {version!r}; "
                          f"exec(sys.argv[2] if len(sys.argv) > 2 else \"\")' \"$@\"\n")
        script.chmod(0o755)
    return fake


def _make(tmp_path, path: str, *args):
    work = tmp_path / "proj"
    work.mkdir(exist_ok=True)
    shutil.copy(ROOT / "Makefile", work / "Makefile")
    shutil.copy(ROOT / "pyproject.toml", work / "pyproject.toml")
    env = {"PATH": path, "HOME": str(tmp_path)}
    return subprocess.run([shutil.which("make"), *args], cwd=work, env=env, capture_output=True, text=True)


def test_makefile_finds_python_310_as_python3(tmp_path):
    fake = _fake_bin(tmp_path, {"python3": (3, 10, 14), "python3.9": (3, 9, 18)})
    r = _make(tmp_path, str(fake), "--eval", 'show: ; @echo "PYTHON=$(PYTHON)"', "show")
    assert r.stdout.strip() == f"PYTHON={fake / 'python3'}", r.stdout + r.stderr


def test_makefile_stops_with_one_line_without_python_310_or_311(tmp_path):
    fake = _fake_bin(tmp_path, {"python3": (3, 9, 18), "python3.12": (3, 12, 1)})
    r = _make(tmp_path, str(fake), "setup")
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("make: ***")]
    assert len(lines) == 1 and "no Python 3.10 or 3.11 found" in lines[0], r.stderr


RETIRED = re.compile(r"ml\.(p2|p3|m4)\.[0-9]*x?large")


def test_no_retired_instance_types_in_code_or_notebooks():
    hits = []
    for p in list((ROOT / "src").rglob("*.py")) + list((ROOT / "notebooks").glob("*.py")):
        hits += [f"{p.name}: {m.group(0)}" for m in RETIRED.finditer(p.read_text())]
    assert not hits


def test_readme_names_retired_types_only_to_say_they_do_not_work():
    for line in (ROOT / "README.md").read_text().splitlines():
        if RETIRED.search(line) or re.search(r"\bml\.(p2|p3|m4)\b", line):
            assert re.search(r"retired|cannot|does not|do not|no kernels", line, re.I), line


def test_defaults_are_todays_instance_types():
    from recsys.sagemaker import aws

    assert aws.TRAIN_INSTANCE_TYPE == "ml.g4dn.xlarge"
    assert aws.DEPLOY_INSTANCE_TYPE == "ml.m5.large"
    nb = (ROOT / "notebooks" / "03_sagemaker_train_deploy.py").read_text()
    assert 'train_instance_type = "ml.g4dn.xlarge"' in nb and 'deploy_instance_type = "ml.m5.large"' in nb


def test_mx_module_preloads_what_the_installed_build_needs():
    """The CPU build: nothing preloaded. A CUDA build (``make setup`` on a g4dn/g5/g6): each library of the fixed
    list that the nvidia-* wheels ship, in order, and mapped into the process. Never nvblas and friends.
    Which build is installed is read from MXNet itself (its compiled-in features)."""
    import recsys.mx as m

    cuda = m.mx.runtime.Features().is_enabled("CUDA")
    assert m.cuda_build_installed() is cuda
    maps = Path("/proc/self/maps").read_text() if os.path.exists("/proc/self/maps") else ""
    mapped = {os.path.realpath(line.split()[-1]) for line in maps.splitlines() if "/" in line}
    if not cuda:
        assert m.CUDA_LIBS == []
    else:
        nvidia = Path(m.mx.__file__).resolve().parent.parent / "nvidia"
        shipped = [nvidia / folder / "lib" / name for folder, name in m.CUDA_WHEEL_LIBS
                   if (nvidia / folder / "lib" / name).is_file()]
        assert [Path(p).resolve() for p in m.CUDA_LIBS] == [p.resolve() for p in shipped]
        assert {str(p.resolve()) for p in shipped} <= mapped
    assert not [p for p in mapped if re.search(r"/lib(nvblas|cufftw|OpenCL|cusolverMg)[^/]*$", p)]


@pytest.mark.extended  # installs the lab extra and starts JupyterLab: ~20 s
def test_make_lab_serves_jupyterlab_on_loopback_with_the_kit_kernel(tmp_path):
    """`make lab`: JupyterLab from the kit's environment, on 127.0.0.1 only, with the recsys-lab kernel."""
    import re
    import signal
    import socket
    import time

    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "lab.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(["make", "--no-print-directory", "lab", f"LAB_PORT={port}"], cwd=ROOT, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        token = None
        for _ in range(240):
            m = re.search(rf"http://127\.0\.0\.1:{port}/lab\?token=([0-9a-f]+)", log.read_text())
            if m:
                token = m.group(1)
                break
            assert proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.5)
        assert token, log.read_text()[-2000:]
        specs = requests.get(f"http://127.0.0.1:{port}/api/kernelspecs", params={"token": token}, timeout=10).json()
        assert "recsys-lab" in specs["kernelspecs"]
        listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
        assert f"127.0.0.1:{port}" in listening and f"0.0.0.0:{port}" not in listening and f"*:{port}" not in listening
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
