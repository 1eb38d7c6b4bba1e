"""recsys.sql against SQLite and the MariaDB server (127.0.0.1:3306). The MariaDB tests fail,
never skip, when the server cannot be reached: CI must run them."""

import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from conftest import OCT, run_cli
from recsys import sql
from recsys.artifacts import Recommender, data_fingerprint
from recsys.prepare import prepare_files
from recsys.sagemaker.endpoint import LocalEndpoint
from recsys.training import fit

MARIADB = os.environ.get("RECSYS_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306")


@pytest.fixture(scope="module")
def prepared():
    p = prepare_files([OCT], progress=False)
    # a brand and a code with quotes, commas and SQL in them must round-trip
    p.products.loc[0, "brand"] = "O'Reilly, \"Ltd\"; DROP TABLE users; --"
    p.products.loc[1, "category_code"] = "a,b'c\"d"
    return p


@pytest.fixture(scope="module")
def model_dir(prepared, tmp_path_factory):
    from recsys.artifacts import save_model

    r = fit(prepared, progress=False, epochs=1)
    d = tmp_path_factory.mktemp("model")
    save_model(d, r.net, prepared)
    return d


@pytest.fixture(scope="module")
def endpoint(model_dir):
    with LocalEndpoint(model_dir, name="sql-test") as ep:
        yield ep


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def eng(request, tmp_path_factory):
    if request.param == "sqlite":
        e = sql.engine(f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite'}")
        yield e
        e.dispose()
        return
    name = f"recsys_test_{uuid.uuid4().hex[:8]}"
    server = sa.create_engine(MARIADB)
    with server.begin() as conn:  # fails (not skips) when MariaDB is down
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    e = sql.engine(f"{MARIADB}/{name}")
    yield e
    e.dispose()
    with server.begin() as conn:
        conn.execute(sa.text(f"DROP DATABASE {name}"))
    server.dispose()


@pytest.fixture(scope="module")
def loaded(eng, prepared):
    counts = sql.create_tables(eng, prepared)
    n = sql.create_inputs(eng, 5000)
    return counts, n


def test_tables_are_loaded_exactly(eng, prepared, loaded):
    counts, n = loaded
    assert counts == {"products": prepared.n_items, "users": prepared.n_users, "input": 1} and n == 5000
    with eng.connect() as conn:
        got = pd.read_sql(sa.text("SELECT * FROM products ORDER BY product_id"), conn)
        users = pd.read_sql(sa.text("SELECT * FROM users ORDER BY user_id"), conn)
    assert got["category_id"].tolist() == prepared.products["category_id"].tolist()  # 19 digits, exact
    assert got["brand"].iloc[0] == "O'Reilly, \"Ltd\"; DROP TABLE users; --"
    assert got["category_code"].iloc[1] == "a,b'c\"d"
    assert len(users) == prepared.n_users
    np.testing.assert_allclose(got["price"], prepared.products["price"], rtol=1e-12)


def test_inputs_is_a_deterministic_bounded_cross_join(eng, prepared, loaded):
    with eng.connect() as conn:
        rows = conn.execute(sa.text("SELECT user_id, product_id FROM inputs ORDER BY user_id, product_id")).all()
    users = sorted(prepared.users["user_id"])[: -(-5000 // prepared.n_items)]
    expected = sorted((u, p) for u in users for p in prepared.products["product_id"])[:5000]
    assert [tuple(r) for r in rows] == expected


def test_score_table_equals_the_endpoint_and_keeps_unknowns(eng, endpoint, model_dir, loaded):
    with eng.begin() as conn:  # unknown ids must be stored as NULL, not dropped
        conn.execute(sa.text("INSERT INTO inputs (user_id, product_id) VALUES (1, 2), (:u, 3)"),
                     {"u": int(Recommender.load(model_dir).user_ids[0])})
    call = sql.RuntimeInvoker(endpoint.runtime_client(), endpoint.name)
    report = sql.score_table(eng, call, max_batch_size=700, progress=False)
    assert report.predict_rows == report.inputs_rows == 5002
    assert report.requests_sent == -(-5002 // 700) and max(report.batch_sizes) <= 700
    assert report.unknown_pairs == 2
    with eng.connect() as conn:
        df = pd.read_sql(sa.text("SELECT user_id, product_id, recommend_score FROM predict"), conn)
    rec = Recommender.load(model_dir)
    expected = rec.score(df["user_id"], df["product_id"])
    np.testing.assert_allclose(df["recommend_score"].to_numpy(float), expected, rtol=1e-6, equal_nan=True)
    assert df["recommend_score"].isna().sum() == 2


def test_failure_midway_leaves_predict_unchanged(eng, endpoint, loaded):
    good = sql.RuntimeInvoker(endpoint.runtime_client(), endpoint.name)
    sql.score_table(eng, good, progress=False)
    with eng.connect() as conn:
        before = pd.read_sql(sa.text("SELECT * FROM predict ORDER BY user_id, product_id"), conn)
    calls = {"n": 0}

    def dies_on_third(body):
        calls["n"] += 1
        if calls["n"] == 3:
            raise sql.ScoringError("endpoint went away")
        return good(body)

    with pytest.raises(sql.ScoringError, match="predict is unchanged: endpoint went away"):
        sql.score_table(eng, dies_on_third, max_batch_size=500, progress=False)
    with eng.connect() as conn:
        after = pd.read_sql(sa.text("SELECT * FROM predict ORDER BY user_id, product_id"), conn)
        tables = set(sa.inspect(conn).get_table_names())
    pd.testing.assert_frame_equal(before, after)
    assert "predict__staging" not in tables


def test_endpoint_stopping_midway_is_a_clear_error(eng, model_dir, loaded):
    ep = LocalEndpoint(model_dir, name="dies").start()
    inner = sql.HttpInvoker(ep.url)
    calls = {"n": 0}

    def stop_after_one(body):
        calls["n"] += 1
        if calls["n"] == 2:
            ep.stop()
        return inner(body)

    with pytest.raises(sql.ScoringError, match="unreachable"):
        sql.score_table(eng, stop_after_one, target="predict_other", max_batch_size=1000, progress=False)
    with eng.connect() as conn:
        assert not {"predict_other", "predict_other__staging"} & set(sa.inspect(conn).get_table_names())


def test_top_n_per_user_with_window_function(eng, endpoint, loaded):
    sql.score_table(eng, sql.HttpInvoker(endpoint.url), progress=False)
    top = sql.top_n(eng, 3)
    with eng.connect() as conn:
        df = pd.read_sql(sa.text("SELECT * FROM predict WHERE recommend_score IS NOT NULL"), conn)
    expected = (df.sort_values(["user_id", "recommend_score", "product_id"], ascending=[True, False, True])
                .groupby("user_id").head(3))
    assert [(t["user_id"], t["product_id"]) for t in top] == list(zip(expected["user_id"], expected["product_id"]))
    assert [t["rnk"] for t in top[:3]] == [1, 2, 3]
    some = sql.top_n(eng, 2, users=[top[0]["user_id"]])
    assert len(some) == 2 and some[0] == top[0]


def test_input_sample_query(eng, endpoint, loaded, model_dir):
    rows = sql.score_query(eng, sql.HttpInvoker(endpoint.url), "input")
    assert rows == [{"user_id": "512505687", "product_id": "44600062", "recommend_score": None}]
    rec = Recommender.load(model_dir)
    u, p = int(rec.user_ids[3]), int(rec.product_ids[5])
    with eng.begin() as conn:  # a known pair beside the workshop's unknown one
        conn.execute(sa.text("INSERT INTO input (user_id, product_id) VALUES (:u, :p)"), {"u": str(u), "p": str(p)})
    rows = sql.score_query(eng, sql.HttpInvoker(endpoint.url), "input")
    known = [r for r in rows if r["user_id"] == str(u)]
    assert len(rows) == 2 and known[0]["recommend_score"] == pytest.approx(rec.score([u], [p])[0], rel=1e-6)
    with eng.begin() as conn:
        conn.execute(sa.text("DELETE FROM input WHERE user_id = :u"), {"u": str(u)})


def test_a_wrong_number_of_rows_back_is_a_scoring_error(eng, loaded):
    with pytest.raises(sql.ScoringError, match="answered 1 rows for 500 sent"):
        sql.score_table(eng, lambda body: "1.0\n", target="predict_short", max_batch_size=500, progress=False)
    with eng.connect() as conn:
        assert not {"predict_short", "predict_short__staging"} & set(sa.inspect(conn).get_table_names())


def test_a_failing_endpoint_through_the_real_client(eng, model_dir, loaded):
    """The endpoint itself fails (HTTP 500 on the third request): boto3 raises ModelError, the bridge a
    ScoringError, and predict is untouched."""

    class Failing(LocalEndpoint):
        calls = 0

        def invoke(self, body, content_type, accept):
            Failing.calls += 1
            if Failing.calls == 3:
                return 500, "internal error: RuntimeError: disk on fire", None
            return super().invoke(body, content_type, accept)

    with Failing(model_dir, name="failing") as ep:
        call = sql.RuntimeInvoker(ep.runtime_client(), ep.name)
        with pytest.raises(sql.ScoringError, match=r"Received server error \(500\).*disk on fire"):
            sql.score_table(eng, call, target="predict_fail", max_batch_size=500, progress=False)
    with eng.connect() as conn:
        assert not {"predict_fail", "predict_fail__staging"} & set(sa.inspect(conn).get_table_names())


def test_identifiers_and_aurora_text():
    with pytest.raises(ValueError):
        sql.check_identifier("predict; DROP TABLE users")
    assert sql.aurora_function_sql("recsys-lab", max_batch_size=1000) == (
        "CREATE FUNCTION recommend_score(user_id BIGINT, product_id BIGINT) RETURNS DOUBLE "
        "ALIAS aws_sagemaker_invoke_endpoint ENDPOINT NAME 'recsys-lab' MAX_BATCH_SIZE 1000")
    with pytest.raises(ValueError):
        sql.aurora_function_sql("x'; DROP TABLE users; --")


def test_sql_score_cli(eng, endpoint, loaded, model_dir):
    r = run_cli("sql-score", "--db", eng.url.render_as_string(hide_password=False), "--endpoint", endpoint.url,
                "--target", "predict_cli", "--max-batch-size", "2000", "-q")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["predict_rows"] == out["inputs_rows"] and out["requests_sent"] >= 3
    _assert_scores_match(eng, "predict_cli", model_dir)


def _assert_scores_match(eng, table, model_dir):
    with eng.connect() as conn:
        df = pd.read_sql(sa.text(f"SELECT user_id, product_id, recommend_score FROM {table}"), conn)
    expected = Recommender.load(model_dir).score(df["user_id"], df["product_id"])
    assert len(df) > 0 and df["recommend_score"].notna().sum() > 0
    np.testing.assert_allclose(df["recommend_score"].to_numpy(float), expected, rtol=1e-6, equal_nan=True)


def test_sql_score_cli_with_an_endpoint_name(eng, endpoint, loaded, model_dir, monkeypatch):
    """A SageMaker endpoint name: the real boto3 sagemaker-runtime client, routed to the local endpoint."""
    env = {"AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": endpoint.url, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    r = run_cli("sql-score", "--db", eng.url.render_as_string(hide_password=False), "--endpoint", endpoint.name,
                "--region", "us-east-1", "--target", "predict_named", "-q")
    assert r.returncode == 0, r.stderr
    _assert_scores_match(eng, "predict_named", model_dir)


def test_sql_score_cli_with_dead_endpoint_exits_2(tmp_path):
    db = f"sqlite:///{tmp_path / 'x.sqlite'}"
    e = sql.engine(db)
    with e.begin() as conn:
        conn.execute(sa.text("CREATE TABLE inputs (user_id BIGINT, product_id BIGINT)"))
        conn.execute(sa.text("INSERT INTO inputs VALUES (1, 2)"))
    r = run_cli("sql-score", "--db", db, "--endpoint", "http://127.0.0.1:9", "-q")
    assert r.returncode == 2 and "unreachable" in r.stderr and "Traceback" not in r.stderr


# ---- aurora_create_function against a real server (MariaDB is not Aurora: its ALIAS syntax cannot parse) ----

@pytest.fixture
def mariadb_fresh():
    """A fresh MariaDB database with one stored function ``recommend_score`` (returns 1), and the DDL
    statements sent through the engine (recorded by SQLAlchemy's cursor events)."""
    name = f"recsys_test_{uuid.uuid4().hex[:8]}"
    server = sa.create_engine(MARIADB)
    with server.begin() as conn:  # fails (not skips) when MariaDB is down
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    e = sql.engine(f"{MARIADB}/{name}")
    with e.begin() as conn:
        conn.execute(sa.text("CREATE FUNCTION recommend_score(user_id BIGINT, product_id BIGINT) RETURNS DOUBLE "
                             "DETERMINISTIC RETURN 1"))
    sent = []
    sa.event.listen(e, "before_cursor_execute", lambda conn, cursor, statement, *a: sent.append(statement)
                    if statement.split()[0].upper() in ("CREATE", "DROP") else None)

    def routines():
        with e.connect() as conn:
            return [r[0] for r in conn.execute(sa.text(
                "SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = DATABASE()"))]

    yield e, sent, routines
    e.dispose()
    with server.begin() as conn:
        conn.execute(sa.text(f"DROP DATABASE {name}"))
    server.dispose()


def test_aurora_create_function_refuses_bad_names_before_the_server_sees_anything(mariadb_fresh):
    eng, sent, routines = mariadb_fresh
    for bad in (dict(endpoint_name="recsys lab"), dict(endpoint_name="x'; DROP TABLE users; --"),
                dict(endpoint_name="recsys-lab", function="f; DROP DATABASE mysql")):
        with pytest.raises(ValueError, match="not a"):
            sql.aurora_create_function(eng, **bad)
    assert sent == [] and routines() == ["recommend_score"]


def test_aurora_create_function_on_a_server_that_is_not_aurora_is_one_line_and_sends_no_ddl(mariadb_fresh, tmp_path):
    """MariaDB answers no AURORA_VERSION(): one line, no DROP or CREATE sent, the existing function kept."""
    eng, sent, routines = mariadb_fresh
    with pytest.raises(sql.AuroraError) as e:
        sql.aurora_create_function(eng, "recsys-lab")
    assert "not Aurora MySQL" in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert sent == [] and routines() == ["recommend_score"]
    lite = sql.engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    with pytest.raises(sql.AuroraError, match="needs Aurora MySQL; sqlite") as e:
        sql.aurora_create_function(lite, "recsys-lab")
    assert "\n" not in str(e.value)


def test_aurora_create_function_proves_the_statement_under_a_scratch_name_before_replacing(mariadb_fresh):
    """A server that answers AURORA_VERSION() (here a stored function of that name on MariaDB) but refuses
    the ALIAS statement: the refusal is one line with the server's message, and ``recommend_score`` was
    never dropped (only the scratch name was tried)."""
    eng, sent, routines = mariadb_fresh
    with eng.begin() as conn:
        conn.execute(sa.text("CREATE FUNCTION aurora_version() RETURNS VARCHAR(20) DETERMINISTIC RETURN '3.05.2'"))
    sent.clear()
    with pytest.raises(sql.AuroraError) as e:
        sql.aurora_create_function(eng, "recsys-lab", max_batch_size=500)
    msg = str(e.value)
    assert msg.startswith("Aurora MySQL 3.05.2 refused the function: ") and "\n" not in msg, msg
    assert "aws_sagemaker_invoke_endpoint" in msg  # the server's own words, without SQLAlchemy's wrapping
    assert sent == ["DROP FUNCTION IF EXISTS recommend_score__check",
                    sql.aurora_function_sql("recsys-lab", "recommend_score__check", 500)], sent
    assert sorted(routines()) == ["aurora_version", "recommend_score"]


# ---- Batch Transform output into SQL; the model and the data must match -------------------------

def test_a_transform_round_trip_loads_next_to_its_input_and_agrees_with_predict(eng, endpoint, model_dir, loaded,
                                                                                 tmp_path):
    from recsys.sagemaker.transform import run_transform

    sql.score_table(eng, sql.RuntimeInvoker(endpoint.runtime_client(), endpoint.name), progress=False)
    pairs = tmp_path / "in" / "pairs.csv"
    assert sql.export_pairs(eng, pairs, "inputs", limit=3000) == 3000
    job = run_transform(model_dir, [pairs], tmp_path / "out", max_payload_mb=1, engine=endpoint, progress=False)
    assert sql.load_transform_output(eng, pairs, job.outputs[0], "predict_batch") == 3000
    with eng.connect() as conn:
        df = pd.read_sql(sa.text("SELECT * FROM predict_batch ORDER BY line"), conn)
        first = conn.execute(sa.text("SELECT user_id, product_id FROM inputs ORDER BY user_id, product_id LIMIT 3000")).all()
    assert df["line"].tolist() == list(range(1, 3001)) and [tuple(r) for r in first] == list(
        zip(df["user_id"], df["product_id"]))
    expected = Recommender.load(model_dir).score(df["user_id"], df["product_id"])
    np.testing.assert_allclose(df["recommend_score"].to_numpy(float), expected, rtol=1e-6, equal_nan=True)
    assert sql.score_agreement(eng, "predict", "predict_batch") == {"pairs": 3000, "null_mismatch": 0,
                                                                     "max_abs_diff": 0.0}


def test_a_transform_output_of_another_length_is_refused_and_loads_nothing(eng, loaded, tmp_path):
    pairs, out = tmp_path / "pairs.csv", tmp_path / "pairs.csv.out"
    pairs.write_text("1,2\n3,4\n5,6\n")
    out.write_text("0.5\n\n")
    with pytest.raises(sql.ScoringError, match="pairs.csv has more than 2 lines"):
        sql.load_transform_output(eng, pairs, out, "batch_short")
    out.write_text("0.5\n\n1.5\n2.5\n")
    with pytest.raises(sql.ScoringError, match="pairs.csv.out has more than 3 lines"):
        sql.load_transform_output(eng, pairs, out, "batch_short")
    assert not sa.inspect(eng).has_table("batch_short") and not sa.inspect(eng).has_table("batch_short__staging")


def test_aurora_load_from_s3_statements_keep_file_order_on_a_real_server(tmp_path):
    """Aurora's statements, run on MariaDB with LOAD DATA LOCAL INFILE in place of LOAD DATA FROM S3 (the
    rest is the same text): the scores land next to their pairs, an empty line as NULL."""
    pairs, out = tmp_path / "pairs.csv", tmp_path / "pairs.csv.out"
    pairs.write_text("".join(f"{u},{p}\n" for u, p in [(9, 1), (3, 7), (5, 5), (1, 9)]))
    out.write_text("0.25\n\n-1.5\n3.0\n")
    statements = sql.aurora_load_from_s3_sql("s3://bucket/in/pairs.csv", "s3://bucket/out/pairs.csv.out", "batch")
    assert sum("LOAD DATA FROM S3 's3://bucket/" in s for s in statements) == 2
    name = f"recsys_test_{uuid.uuid4().hex[:8]}"
    server = sa.create_engine(MARIADB)
    with server.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    e = sa.create_engine(f"{MARIADB}/{name}", connect_args={"local_infile": True})
    try:
        with e.begin() as conn:
            for s in statements:
                s = s.replace("LOAD DATA FROM S3 's3://bucket/in/pairs.csv'", f"LOAD DATA LOCAL INFILE '{pairs}'")
                s = s.replace("LOAD DATA FROM S3 's3://bucket/out/pairs.csv.out'", f"LOAD DATA LOCAL INFILE '{out}'")
                conn.exec_driver_sql(s.replace("%", "%%"))
            rows = conn.execute(sa.text("SELECT line, user_id, product_id, recommend_score FROM batch ORDER BY line")).all()
    finally:
        e.dispose()
        with server.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE {name}"))
        server.dispose()
    assert [tuple(r) for r in rows] == [(1, 9, 1, 0.25), (2, 3, 7, None), (3, 5, 5, -1.5), (4, 1, 9, 3.0)]


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """A model trained on the same events with every user and product id moved: no id in common."""
    from recsys.artifacts import save_model

    p = prepare_files([OCT], progress=False)
    p.users["user_id"] += 10 ** 12
    p.products["product_id"] += 10 ** 12
    d = tmp_path_factory.mktemp("other-model")
    save_model(d, fit(p, progress=False, epochs=1, num_embeddings=8).net, p)
    return d


def test_model_and_data_match_is_checked_by_fingerprint(prepared, model_dir, other_model):
    rec = Recommender.load(model_dir)
    assert sql.check_model_data(rec, prepared, "models/a", "data/a") == ""  # trained on exactly this data
    with pytest.raises(sql.ModelDataMismatch) as e:
        sql.check_model_data(Recommender.load(other_model), prepared, "models/other", "data/a")
    message = str(e.value)
    assert "\n" not in message and message.startswith("model models/other (trained on data ")
    assert f"does not match the data data/a ({data_fingerprint(prepared)[:12]})" in message
    assert f"knows 0 of its {prepared.n_users:,} users" in message
    fewer = prepare_files([OCT], progress=False, min_user_events=3)  # other data, the same ids in part
    warning = sql.check_model_data(rec, fewer, "models/a", "data/b")
    assert warning.startswith("warning: model models/a (trained on data ") and "\n" not in warning
    report = sql.ScoreReport("inputs", "predict", inputs_rows=10, predict_rows=10, unknown_pairs=10)
    with pytest.raises(sql.ModelDataMismatch, match="endpoint e knows none of the 10 pairs of inputs"):
        sql.check_scored(report, "e", "data/a")
    sql.check_scored(sql.ScoreReport("inputs", "predict", predict_rows=10, unknown_pairs=9), "e", "data/a")


@pytest.mark.notebook
def test_notebook_04_says_in_one_line_that_the_model_and_the_data_do_not_match(other_model, tmp_path):
    prepare_files([OCT], progress=False).save(tmp_path / "prepared")
    r = subprocess.run([sys.executable, "-m", "recsys.runner", "04_sql_scoring", "--out", str(tmp_path / "out"),
                        "--no-progress", "-p", "prepared_dir", str(tmp_path / "prepared"), "-p", "model", str(other_model),
                        "-p", "db_url", f"sqlite:///{tmp_path / 'db.sqlite'}"], capture_output=True, text=True)
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("04_sql_scoring failed in cell ") and ": ModelDataMismatch: model " in line
    # paths outside the project show by name (no machine paths in a notebook's output)
    assert f"model {other_model.name} (trained on data " in line and "does not match the data prepared (" in line
    assert "KeyError" not in r.stdout + r.stderr
