"""Notebooks: pairs in sync, and each notebook run end to end with papermill on the sample."""

import json
import os

import jupytext
import nbformat
import pytest

from conftest import OCT, ROOT, make_run_all
from reference import prepare_summary, read_rows

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
KERNEL = "recsys-lab"


def _cells(nb):
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.stem)
def test_pair_in_sync(py):
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.is_file(), f"{ipynb.name} missing: run `make sync`"
    assert _cells(jupytext.read(py)) == _cells(nbformat.read(ipynb, as_version=4)), f"{py.name} and {ipynb.name} differ: run `make sync`"


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.stem)
def test_has_parameters_cell_and_no_outputs_committed(py):
    nb = nbformat.read(py.with_suffix(".ipynb"), as_version=4)
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_parse_cleanly(py, caplog):
    """papermill reads every parameter (a second '=' on a line, even in a comment, makes it skip the line
    with an "Unable to parse line" warning, and the parameter is then unknown to the runner)."""
    import logging

    import papermill

    with caplog.at_level(logging.WARNING, logger="papermill"):
        params = papermill.inspect_notebook(str(py.with_suffix(".ipynb")))
    assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()]
    assert "output_dir" in params


def run_notebook(name, out_dir, **params):
    """Execute a notebook the way `make run-all` does (papermill, the kit's kernel, scrubbed)."""
    from recsys.runner import run

    return run(name, out_dir, params)


@pytest.mark.notebook
def test_notebook_01_on_october_sample(lab):
    metrics = lab.metrics("01_explore_clean_prepare")
    valid, bad, read = read_rows(OCT)
    ref = prepare_summary(valid)
    assert metrics["rows_malformed"] == len(bad) == 1
    assert metrics["rows_read"] == read
    for k in ("users_total", "products_total", "users_kept", "products_kept", "rows_kept", "train_rows", "test_rows"):
        assert metrics[k] == ref[k], k
    assert (lab.out / "prepared" / "summary.json").is_file()
    assert (lab.out / "figures" / "01_events_per_user_product.png").stat().st_size > 10_000


@pytest.mark.notebook
def test_executed_notebooks_hold_no_absolute_paths_timestamps_or_timings(lab):
    names = sorted(p.name for p in (lab.out / "notebooks").iterdir())
    assert names == [p.name for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))]
    for name in names:
        text = (lab.out / "notebooks" / name).read_text()
        cells = nbformat.reads(text, as_version=4).cells
        assert str(ROOT) not in text, name  # no absolute paths of the checkout
        for cell in cells:  # OUT only where it was given: the parameters
            if "injected-parameters" not in cell.metadata.get("tags", []):
                assert str(lab.out) not in json.dumps(cell), (name, cell.source[:200])
        assert "start_time" not in text and "duration" not in text, name  # no timestamps
        outputs = json.dumps([c.get("outputs", []) for c in cells])
        assert "rows/s" not in outputs and "pairs/s" not in outputs, name  # timings went to stderr
    assert "epoch 1/3" in lab.stderr  # progress and timings stream to the terminal, not into the notebooks
    assert "Passed unknown parameter" not in lab.stdout + lab.stderr
    assert "without encryption" not in lab.stdout + lab.stderr


def readme_figures():
    """The README's table of key figures: (value as written, decimals, notebook, key path, band). ``band`` is
    the ``± X`` written after a trained model's figure (its floating-point sums depend on the CPU's BLAS
    kernels), else None: counts and the baselines are exact at the precision shown."""
    import re

    rows = []
    for line in (ROOT / "README.md").read_text().splitlines():
        m = re.match(r"^\| [^|]+ \| ([0-9][0-9,]*(?:\.([0-9]+))?)(?: ± ([0-9.]+))? \| `(\d\d_[a-z_]+)\.([a-z0-9_.]+)` \|$",
                     line)
        if m:
            band = float(m.group(3)) if m.group(3) else None
            rows.append((float(m.group(1).replace(",", "")), len(m.group(2) or ""), m.group(4), m.group(5), band))
    return rows


def check_readme_figures(out_dir, notebooks):
    checked = 0
    for value, decimals, notebook, key, band in readme_figures():
        if notebook not in notebooks:
            continue
        got = json.loads((out_dir / "metrics" / f"{notebook}.json").read_text())
        for part in key.split("."):
            got = got[part]
        if band is None:
            assert round(got, decimals) == pytest.approx(value, abs=1e-9), \
                f"README says {notebook}.{key} = {value}, the run {got}"
        else:
            assert abs(got - value) <= band + 1e-9, f"README says {notebook}.{key} = {value} ± {band}, the run {got}"
        checked += 1
    return checked


def test_readme_table_of_figures_is_parsed():
    rows = readme_figures()
    assert len(rows) >= 15 and {r[2] for r in rows} == {"01_explore_clean_prepare", "02_train_local"}
    banded = {r[3] for r in rows if r[4] is not None}
    # the trained models' figures carry a band; the counts and the baselines are exact
    assert {"implicit.hr_at_10", "side.hr_at_10", "best.hr_at_10"} <= banded
    assert not banded & {"rows_read", "users_kept", "popularity.hr_at_10", "heuristic.hr_at_10"}
    assert all(0 < r[4] <= 0.01 for r in rows if r[4] is not None)


@pytest.mark.notebook
def test_notebook_02_after_01_on_october_sample(lab):
    assert check_readme_figures(lab.out, {"01_explore_clean_prepare", "02_train_local"}) >= 15
    m = lab.metrics("02_train_local")
    assert m["mean_predictor"]["test_mse"] == pytest.approx(0.2826, abs=1e-3)
    assert m["event_score"]["test_mse"] > m["mean_predictor"]["test_mse"]  # what the notebook says in words
    assert (lab.out / "model_best" / "model_info.json").is_file()
    assert set(m["event_score"]) >= {"train_mse", "test_mse", "hr_at_10", "ndcg_at_10"}
    for name in ("implicit", "side", "sequence", "popularity", "heuristic"):
        assert set(m[name]) >= {"hr_at_10", "ndcg_at_10", "val_hr_at_10", "val_hr_at_10_se", "hr_at_10_se",
                                "warm_hr_at_10", "cold_hr_at_10"}, name
    # the best kit model is chosen on validation; it beats the heuristic (the target: >= 0.36)
    assert m["best"]["name"] == "sequence" and m["best"]["hr_at_10"] >= 0.36 > m["heuristic"]["hr_at_10"]
    assert m["sequence"]["cold_hr_at_10"] >= m["popularity"]["cold_hr_at_10"]  # cold users: no worse than popularity
    assert m["selection"]["side"]["settings"]["epochs"] == 40 and m["selection"]["side"]["validation_curve"]
    assert {g["settings"]["loss"] for g in m["selection"]["sequence"]["grid"]} == {"softmax", "bpr"}
    assert m["heuristic"]["hr_at_10"] == pytest.approx(0.338, abs=2e-3)
    assert m["ceiling"]["test_items_in_training_items"] == 0 and 0 < m["ceiling"]["hr_at_10_ceiling"] < 1
    assert len(m["event_score"]["history"]) == 3
    assert 0 < m["event_score"]["test_mse"] < 10 and m["event_score"]["test_mse"] != m["event_score"]["train_mse"]
    assert m["popularity"]["hr_at_10"] == pytest.approx(0.0873, abs=1e-3)  # 77 of 882 test users
    assert m["test_users"] == 882
    # the implicit objective ranks clearly better than popularity; the seed's objective does not
    assert m["implicit"]["hr_at_10"] > 1.25 * m["popularity"]["hr_at_10"]
    assert m["implicit"]["ndcg_at_10"] > m["popularity"]["ndcg_at_10"]
    assert m["event_score"]["hr_at_10"] < m["popularity"]["hr_at_10"]
    for d in ("model", "model_implicit", "model_side", "model_sequence"):
        assert (lab.out / d / "model_info.json").is_file()
    # each model directory holds the figures of its own network: the seed's MSEs and its ranking together
    seed_info = json.loads((lab.out / "model" / "model_info.json").read_text())["metrics"]
    assert seed_info["test_mse"] == m["event_score"]["test_mse"] and seed_info["hr_at_10"] == m["event_score"]["hr_at_10"]
    for fig in ("02_train_test_mse.png", "02_two_users_scatter.png", "02_ranking.png"):
        assert (lab.out / "figures" / fig).stat().st_size > 5_000


@pytest.mark.notebook
def test_notebook_03_local_mode(lab):
    """The default job: preset "best" (notebook 02's choice) under AWS's training toolkit, deployed on the
    local endpoint (the workshop's preset "seed" in notebook 03: tests/test_aws_mode.py)."""
    m = lab.metrics("03_sagemaker_train_deploy")
    best = lab.metrics("02_train_local")["best"]
    assert m["mode"] == "local" and m["training"]["rows_malformed"] == 1
    assert m["hyperparameters"] == {"preset": "best"}, m["hyperparameters"]
    assert best["name"] == "sequence" and m["training"]["epochs"] == 6  # the preset's epochs
    assert m["estimate"]["rows"] > 10_000 and m["estimate"]["total_seconds"] < 60  # said before the job started
    # the job trains what notebook 02 trained (same data, seed and settings, on the CPU): the same ranking
    assert m["training"]["hr_at_10"] == pytest.approx(best["hr_at_10"], abs=1e-9)
    pred = m["predictions"]
    assert len(pred["json"]) == 2 and pred["csv"] == pytest.approx(pred["json"], rel=1e-6)
    assert pred["unknown_json"][1] is None and pred["unknown_csv"] == ["", ""]
    lat = m["latency_ms"]
    # through boto3 on loopback: a single pair well under 50 ms, a 1,000-row batch under 500 ms
    assert 0 < lat["single_pair_p50_ms"] < 50 and 0 < lat["batch_1000_p50_ms"] < 500, lat
    assert (lab.out / "sagemaker" / "jobs" / "recsys-lab-training" / "output" / "model.tar.gz").is_file()


@pytest.mark.notebook
def test_notebook_04_on_sqlite(lab):
    """make run-all's notebook 04: the best model of notebook 02, SQLite, Batch Transform on AWS's stack."""
    m = lab.metrics("04_sql_scoring")
    assert m["database"] == "sqlite" and m["model"].endswith("model_best")
    assert m["inputs_rows"] == m["predict_rows"] == 100_000
    assert m["requests_sent"] == 10 and m["unknown_pairs"] == 0 and m["pairs_per_second"] > 1_000
    assert len(m["top_n_first_user"]) == 5
    assert m["transform"]["rows"] == 20_000 and m["transform"]["agreement"]["null_mismatch"] == 0
    assert (lab.out / "figures" / "04_score_distribution.png").is_file()


@pytest.mark.notebook
def test_notebook_04_on_mariadb(lab, tmp_path):
    """The MySQL path on a real MariaDB server (fails, never skips, when the server is down)."""
    import shutil
    import uuid

    import sqlalchemy as sa

    for d in ("prepared", "model_best"):
        shutil.copytree(lab.out / d, tmp_path / d)
    name = f"recsys_nb_{uuid.uuid4().hex[:8]}"
    base = os.environ.get("RECSYS_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306")
    server = sa.create_engine(base)
    with server.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    try:  # the transform (not a database's business) ran in make run-all's notebook 04
        run_notebook("04_sql_scoring", tmp_path, db_url=f"{base}/{name}", transform_rows=0, progress=False)
    finally:
        with server.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE {name}"))
    m = json.loads((tmp_path / "metrics" / "04_sql_scoring.json").read_text())
    sqlite = lab.metrics("04_sql_scoring")
    assert m["database"] == "mysql" and m["inputs_rows"] == m["predict_rows"] == 100_000
    assert m["requests_sent"] == 10 and m["unknown_pairs"] == 0
    assert m["top_n_first_user"] == sqlite["top_n_first_user"]  # the same scores through either database


def test_runner_run_refuses_a_parameter_the_notebook_does_not_declare(tmp_path):
    """A misspelt parameter fails before anything runs (papermill would only warn and run the defaults)."""
    from recsys.runner import run

    with pytest.raises(ValueError, match="notebook 02_train_local has no parameter.s. implicit_epochs; it takes "):
        run("02_train_local", tmp_path, {"implicit_epochs": 1})
    assert not (tmp_path / "notebooks").exists()


def test_runner_scrub_removes_stderr_and_fixes_the_injected_cell_id(tmp_path):
    """Executed notebooks are the same bytes run after run: stderr (progress, timings) and papermill's
    random id for the injected parameters cell do not stay in them."""
    import nbformat

    from recsys.runner import scrub

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print(1)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n"),
                    nbformat.v4.new_output("stream", name="stderr", text="epoch 1/3: 42%|####  | 12k row/s\r"),
                    nbformat.v4.new_output("stream", name="stdout", text="2\n")]
    injected = nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["injected-parameters"]})
    nb.cells = [injected, cell]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    scrub(path, tmp_path)
    got = nbformat.read(path, as_version=4)
    assert got.cells[0]["id"] == "injected-parameters"
    assert [(o["name"], o["text"]) for o in got.cells[1].outputs] == [("stdout", "1\n2\n")]  # one, however it came


def test_runner_reads_lists_the_way_a_shell_leaves_them():
    from recsys.runner import _value

    assert _value('["a.csv","b.csv"]') == ["a.csv", "b.csv"]  # quoted, as typed in Python
    assert _value("[a.csv,b.csv]") == ["a.csv", "b.csv"]  # what make's shell leaves of it
    assert _value("a.csv,b.csv") == ["a.csv", "b.csv"]
    assert _value("a.csv") == "a.csv" and _value("7") == 7 and _value("false") is False


@pytest.mark.notebook
def test_make_run_all_with_the_readmes_full_data_form(tmp_path):
    """The README's instructor path, with the two sample files standing in for the Kaggle months, as
    make's shell passes the list (notebook 01: where the two files meet)."""
    nov = "data/sample/rees46_2019-Nov_random10k.csv.gz"
    oct_ = str(OCT.relative_to(ROOT))
    r = make_run_all(tmp_path, f'-p input_files ["{oct_}","{nov}"]', only="01_explore_clean_prepare")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    m = json.loads((tmp_path / "metrics" / "01_explore_clean_prepare.json").read_text())
    assert m["input_files"] == [oct_, nov]
    assert m["users_kept"] == 914  # both samples: the November users with 5 events join
    assert [p.name for p in (tmp_path / "notebooks").iterdir()] == ["01_explore_clean_prepare.ipynb"]  # ONLY


@pytest.mark.notebook
def test_make_run_all_refuses_a_plain_string_with_one_line(tmp_path):
    r = make_run_all(tmp_path, f"-p input_files {OCT.relative_to(ROOT)}")
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if "input_files" in line]
    assert len(errors) == 1 and "must be a list of file paths" in errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr


@pytest.mark.notebook
def test_python_m_recsys_runner(tmp_path):
    import subprocess
    import sys

    def runner(*args):
        return subprocess.run([sys.executable, "-m", "recsys.runner", *args], cwd=ROOT, capture_output=True, text=True)

    r = runner("01_explore_clean_prepare", "--out", str(tmp_path), "-p", "min_user_events", "6")
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "metrics" / "01_explore_clean_prepare.json").read_text())
    assert m["min_user_events"] == 6 and m["users_kept"] < 882
    r = runner("01_explore_clean_prepare", "--out", str(tmp_path), "-p", "no_such_parameter", "1")
    assert r.returncode == 2 and "no notebook has the parameter(s) no_such_parameter" in r.stderr
    r = runner("09_nothing", "--out", str(tmp_path))
    assert r.returncode == 2 and "no notebook 09_nothing.ipynb" in r.stderr


@pytest.mark.notebook
@pytest.mark.extended
def test_a_second_make_run_all_into_the_same_directory_gives_byte_identical_notebooks(lab, tmp_path):
    """Two make run-all on the sample, the second over the first's outputs (the session's, so this runs
    last): timings go to stderr, which the runner keeps out of the executed notebooks, and nothing else
    varies."""
    import shutil

    first = tmp_path / "first"
    shutil.copytree(lab.out / "notebooks", first)
    r = make_run_all(lab.out)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for path in sorted(first.iterdir()):
        assert path.read_bytes() == (lab.out / "notebooks" / path.name).read_bytes(), path.name


def test_notebook_03s_seed_defaults_are_the_workshops_hyperparameters():
    """Notebook 03 with preset="seed" and its other parameters at their defaults sends the workshop's
    SageMaker hyperparameters (the notebook's own defaults, read from its parameters cell)."""
    import ast

    import papermill

    from recsys.sagemaker.entry import job_hyperparameters

    params = papermill.inspect_notebook(str(ROOT / "notebooks" / "03_sagemaker_train_deploy.ipynb"))
    seed_hps = {k: ast.literal_eval(params[k]["default"]) for k in ("num_embeddings", "opt", "lr", "momentum", "wd")}
    assert job_hyperparameters("seed", 2, **seed_hps) == {"preset": "seed", "num_embeddings": 64, "opt": "sgd",
                                                          "lr": 0.02, "momentum": 0.9, "wd": 0.0, "epochs": 2}
