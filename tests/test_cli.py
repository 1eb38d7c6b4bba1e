import json
import subprocess
import sys

from conftest import OCT
from recsys.prepare import SUMMARY_KEYS


def run(*args):
    return subprocess.run([sys.executable, "-m", "recsys.cli", *map(str, args)], capture_output=True, text=True)


def test_synth_then_prepare_prints_one_json_line(tmp_path):
    out = tmp_path / "s.csv.gz"
    r = run("synth", "--rows", 20000, "--users", 800, "--products", 300, "--seed", 3, "--out", out, "-q")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"out": str(out), "rows": 20000, "seed": 3}
    r = run("prepare", out, "--out", tmp_path / "prep", "--min-user-events", 3, "-q")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert set(summary) == set(SUMMARY_KEYS)
    assert summary["rows_read"] == 20000 and summary["test_rows"] == summary["users_kept"]
    assert (tmp_path / "prep" / "summary.json").is_file()


def test_prepare_reports_malformed_rows_on_stderr(tmp_path):
    r = run("prepare", OCT, "--out", tmp_path / "p", "-q")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rows_malformed"] == 1
    assert "1 malformed row(s) skipped [line 17436" in r.stderr


def test_bad_input_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    r = run("prepare", bad, "--out", tmp_path / "p", "-q")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "missing required column(s) 'event_time'" in r.stderr
    assert "Traceback" not in r.stderr
    r = run("prepare", tmp_path / "missing.csv", "--out", tmp_path / "p", "-q")
    assert r.returncode == 2 and "not found" in r.stderr


def test_train_prints_metrics_and_writes_a_model(tmp_path):
    r = run("prepare", OCT, "--out", tmp_path / "p", "-q")
    assert r.returncode == 0, r.stderr
    r = run("train", tmp_path / "p", "--model-dir", tmp_path / "m", "--epochs", 1, "--ctx", "cpu", "-q")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    m = json.loads(lines[0])
    assert {"train_mse", "test_mse", "hr_at_10", "ndcg_at_10", "train_rows_per_second"} <= set(m)
    assert m["train_rows_per_second"] > 0 and 0 <= m["hr_at_10"] <= 1
    assert (tmp_path / "m" / "model_info.json").is_file()


def test_train_on_a_missing_dataset_exits_2(tmp_path):
    r = run("train", tmp_path / "nothing", "--model-dir", tmp_path / "m", "-q")
    assert r.returncode == 2 and "run notebook 01" in r.stderr and "Traceback" not in r.stderr
