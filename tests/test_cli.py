import json
import os
import subprocess
import sys

from conftest import HEADER, OCT
from conftest import run_cli as run
from recsys.prepare import SUMMARY_KEYS


def run_process(*args):
    """``python -m recsys.cli ARGS``: exit status, stdout and stderr of a real process."""
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
    r = run_process("prepare", bad, "--out", tmp_path / "p", "-q")
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


# ---- one line, exit 2, nothing half-written: every bad input the CLI can meet ----------------------

def _one_line_exit_2(r, *fragments):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    for f in fragments:
        assert f in lines[0], lines[0]
    assert r.stdout == ""
    return lines[0]


def test_prepare_damaged_gzip_files(tmp_path):
    truncated = tmp_path / "cut.csv.gz"
    truncated.write_bytes(OCT.read_bytes()[:300_000])
    _one_line_exit_2(run("prepare", truncated, "--out", tmp_path / "p1", "-q"), "cut.csv.gz", "damaged or cut short")
    corrupt = tmp_path / "bad.csv.gz"
    corrupt.write_bytes(b"this is not gzip data")
    _one_line_exit_2(run("prepare", corrupt, "--out", tmp_path / "p2", "-q"), "bad.csv.gz", "not a readable gzip")
    assert not (tmp_path / "p1").exists() and not (tmp_path / "p2").exists()  # nothing half-written
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".p")]  # no temporary directory left


def test_prepare_directory_file_target_and_unwritable_target(tmp_path):
    _one_line_exit_2(run("prepare", tmp_path, "--out", tmp_path / "p", "-q"), "is a directory")
    afile = tmp_path / "afile"
    afile.write_text("x")
    _one_line_exit_2(run("prepare", OCT, "--out", afile, "-q"), "exists and is not a directory")
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o500)
    try:
        if os.access(readonly, os.W_OK):  # root writes anywhere: use a path under a file instead
            target = afile / "sub" / "p"
        else:
            target = readonly / "p"
        _one_line_exit_2(run("prepare", OCT, "--out", target, "-q"), "cannot write")
    finally:
        readonly.chmod(0o700)


def test_prepare_refuses_a_non_empty_target_without_force(tmp_path):
    target = tmp_path / "p"
    assert run("prepare", OCT, "--out", target, "-q").returncode == 0
    before = (target / "summary.json").read_text()
    _one_line_exit_2(run("prepare", OCT, "--out", target, "-q"), "not empty", "--force")
    assert (target / "summary.json").read_text() == before
    r = run("prepare", OCT, "--out", target, "--force", "-q")
    assert r.returncode == 0 and json.loads(r.stdout)["users_kept"] == 882


def test_latin1_bytes_make_one_row_malformed_not_the_file(tmp_path, write_csv):
    from conftest import row

    path = tmp_path / "latin.csv"
    lines = [row(user=u) for u in range(1, 8)]
    text = "\n".join([HEADER] + lines) + "\n"
    data = text.encode().replace(b"apple,10.50,3,", b"caf\xe9,10.50,3,")
    path.write_bytes(data)
    r = run("prepare", path, "--out", tmp_path / "p", "--min-user-events", 1, "--min-product-events", 1, "-q")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rows_malformed"] == 1
    assert "line 4: invalid UTF-8 in column brand (field 6)" in r.stderr


def test_train_bad_values_and_targets(tmp_path):
    prep = tmp_path / "p"
    assert run("prepare", OCT, "--out", prep, "-q").returncode == 0
    _one_line_exit_2(run("train", prep, "--model-dir", tmp_path / "m", "--lr", "nan", "-q"), "lr must be a finite number")
    _one_line_exit_2(run("train", prep, "--model-dir", tmp_path / "m", "--momentum", "1.5", "-q"), "momentum")
    _one_line_exit_2(run("train", prep, "--model-dir", tmp_path / "m", "--epochs", "ten", "-q"), "invalid int value")
    assert not (tmp_path / "m").exists()
    (prep / "summary.json").write_text("{not json")
    _one_line_exit_2(run("train", prep, "--model-dir", tmp_path / "m", "-q"), "summary.json", "not valid JSON")


def test_train_names_a_damaged_parquet_file(tmp_path):
    prep = tmp_path / "p"
    assert run("prepare", OCT, "--out", prep, "-q").returncode == 0
    (prep / "train.parquet").write_bytes(b"PAR1 garbage")
    _one_line_exit_2(run("train", prep, "--model-dir", tmp_path / "m", "-q"), "train.parquet", "not a readable Parquet")


def test_train_epoch_lines_go_to_stderr_and_one_json_line_to_stdout(tmp_path):
    prep = tmp_path / "p"
    assert run("prepare", OCT, "--out", prep, "-q").returncode == 0
    r = subprocess.run([sys.executable, "-m", "recsys.cli", "train", str(prep), "--model-dir", str(tmp_path / "m"),
                        "--epochs", "2", "--ctx", "cpu"], capture_output=True, text=True,
                       env={**os.environ, "RECSYS_PROGRESS": "1"})
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == 1 and json.loads(r.stdout)["epochs"] == 2
    assert "epoch 1/2: loss" in r.stderr and "epoch 2/2: loss" in r.stderr


def test_train_implicit_objective_from_the_command_line(tmp_path):
    prep = tmp_path / "p"
    assert run("prepare", OCT, "--out", prep, "-q").returncode == 0
    r = run("train", prep, "--model-dir", tmp_path / "m", "--objective", "implicit", "--epochs", 2, "--batch-size", 64,
            "--lr", 0.1, "--momentum", 0, "--embedding-grad", "sum", "--init-magnitude", 10, "-q")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["objective"] == "implicit"
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["hyperparameters"]["objective"] == "implicit" and config["hyperparameters"]["embedding_grad"] == "sum"


def test_serve_bad_model_busy_port_and_port_out_of_range(tmp_path):
    import socket

    notatar = tmp_path / "model.tar.gz"
    notatar.write_bytes(b"not a tar")
    _one_line_exit_2(run("serve", notatar, "--port", 0), "not a model.tar.gz or model directory")
    _one_line_exit_2(run("serve", tmp_path / "nothing", "--port", 0), "no model at")
    r = run_process("serve", notatar, "--port", 70000)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "out of range" in r.stderr
    prep, model = tmp_path / "p", tmp_path / "m"
    assert run("prepare", OCT, "--out", prep, "-q").returncode == 0
    assert run("train", prep, "--model-dir", model, "--epochs", 1, "-q").returncode == 0
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        _one_line_exit_2(run("serve", model, "--port", busy.getsockname()[1]), "Address already in use")


def test_help_shows_every_option_with_help_text():
    import argparse

    from recsys.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command, parser in sub.choices.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"recsys {command} {action.dest}: no help text"
        assert parser.formatter_class is argparse.ArgumentDefaultsHelpFormatter  # defaults are shown
    r = run_process("train", "--help")
    assert "(default: 0.02)" in " ".join(r.stdout.split())


def test_sql_score_bad_databases_tables_and_endpoints(tmp_path):
    import uuid

    db = f"sqlite:///{tmp_path / 'x.sqlite'}"
    _one_line_exit_2(run("sql-score", "--db", "nosuchdb://x", "--endpoint", "http://127.0.0.1:9", "-q"), "database:")
    _one_line_exit_2(run("sql-score", "--db", db, "--endpoint", "http://127.0.0.1:9", "-q"), "no table inputs")
    mysql = os.environ.get("RECSYS_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306")
    wrong_password = mysql.replace("root@", "root:definitely-wrong@") if "@" in mysql else mysql
    _one_line_exit_2(run("sql-score", "--db", wrong_password + "/test", "--endpoint", "http://127.0.0.1:9", "-q"),
                     "database:", "Access denied")
    _one_line_exit_2(run("sql-score", "--db", f"{mysql}/nosuchdb_{uuid.uuid4().hex[:8]}", "--endpoint",
                         "http://127.0.0.1:9", "-q"), "database:", "Unknown database")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = str(tmp_path / "absent")
    r = subprocess.run([sys.executable, "-m", "recsys.cli", "sql-score", "--db", db, "--endpoint", "my-endpoint", "-q"],
                       capture_output=True, text=True, env=env)
    _one_line_exit_2(r, "AWS region", "--region")
