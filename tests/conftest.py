import contextlib
import gzip
import io
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
OCT = SAMPLE / "rees46_2019-Oct_head_0000-0250UTC.csv.gz"
NOV = SAMPLE / "rees46_2019-Nov_random10k.csv.gz"
HEADER = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"

os.environ.setdefault("RECSYS_PROGRESS", "0")
os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")


def row(t="2019-10-01 00:00:00 UTC", etype="view", product=1001, category=2053013555631882655,
        code="electronics.smartphone", brand="apple", price="10.50", user=501, session="s-1"):
    return f"{t},{etype},{product},{category},{code},{brand},{price},{user},{session}"


def run_cli(*args):
    """``recsys.cli.main(ARGS)`` in this process, its output captured as ``tests/test_cli.py``'s
    ``run_process`` gives it (argparse's exits included): the same code path without a new interpreter
    and MXNet import per call (about 4 s each). The process-level behaviour has its own tests
    (``run_process`` there)."""
    from recsys import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main([str(a) for a in args])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
    return subprocess.CompletedProcess(list(args), rc, out.getvalue(), err.getvalue())


def wait_for(condition, seconds: float = 30) -> None:
    """Poll ``condition`` until it holds or ``seconds`` pass (a loaded machine is slow to get there); the
    caller asserts it."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def write_csv(tmp_path):
    """write_csv(name, lines, header=True) -> path; .gz names are gzipped."""

    def _write(name, lines, header=True):
        text = "\n".join(([HEADER] if header else []) + list(lines))
        if lines or header:
            text += "\n"
        path = tmp_path / name
        data = text.encode()
        if name.endswith(".gz"):
            data = gzip.compress(data, mtime=0)
        path.write_bytes(data)
        return path

    return _write


class Lab:
    """One ``make run-all`` (its output directory and what it printed)."""

    def __init__(self, out: Path, stdout: str, stderr: str) -> None:
        self.out, self.stdout, self.stderr = out, stdout, stderr

    def metrics(self, notebook: str) -> dict:
        return json.loads((self.out / "metrics" / f"{notebook}.json").read_text())


def make_run_all(out, nb_args: str = "", only: str = ""):
    return subprocess.run(["make", "--no-print-directory", "run-all", f"OUT={out}", f"NB_ARGS={nb_args}",
                           f"ONLY={only}"], cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """``make run-all`` as the README gives it (the October sample, every default), once for the whole
    session: the tests of notebooks 01 to 04 and the aws-mode tests read its outputs, which they must
    not change (copy what a test writes into)."""
    out = tmp_path_factory.mktemp("lab") / "out"
    r = make_run_all(out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return Lab(out, r.stdout, r.stderr)
