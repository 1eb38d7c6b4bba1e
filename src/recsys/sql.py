"""The workshop's SQL step on any SQLAlchemy URL: SQLite (embedded, the default), MariaDB/MySQL,
or Aurora MySQL.

* Tables: ``products`` and ``users`` (the workshop's columns, from the prepared data; the
  19-digit ``category_id`` stays an exact ``BIGINT``), the one-row ``input`` sample and
  ``inputs`` (users x products, limited).
* Scoring with Aurora machine learning's semantics (:func:`score_table`): what ``CREATE TABLE
  predict SELECT *, recommend_score(user_id, product_id) FROM inputs`` does on Aurora. The source
  rows are read in order, sent to the endpoint as CSV batches of at most ``max_batch_size``
  rows, and written to a staging table that replaces ``predict`` only when every row has its
  answer, so a failure leaves ``predict`` as it was and nothing half-written. Unknown ids are
  stored as NULL (the endpoint's empty CSV field). Values always travel as bound parameters;
  table names are checked identifiers.
* Top-N per user from ``predict`` with ``ROW_NUMBER()`` (SQLite >= 3.25, MariaDB 10.2+, MySQL 8).
* The Aurora ``CREATE FUNCTION ... ALIAS aws_sagemaker_invoke_endpoint`` text for a real endpoint.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sqlalchemy as sa

IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
ENDPOINT_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")  # SageMaker's rule
DEFAULT_MAX_BATCH_SIZE = 10_000  # Aurora's default MAX_BATCH_SIZE
SCORE_COLUMN = "recommend_score"


class ScoringError(RuntimeError):
    """Scoring stopped; the target table is as it was before the run."""


def check_identifier(name: str) -> str:
    if not isinstance(name, str) or not IDENT.match(name):
        raise ValueError(f"not a valid table name: {name!r} (letters, digits and _ only)")
    return name


def default_url(output_dir="outputs") -> str:
    from .paths import resolve

    path = resolve(Path(output_dir) / "recsys.sqlite")
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def engine(url: str | None = None, output_dir="outputs") -> sa.Engine:
    return sa.create_engine(url or default_url(output_dir), pool_pre_ping=True, future=True)


def _metadata() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table("products", md,
             sa.Column("product_id", sa.BigInteger, primary_key=True, autoincrement=False),
             sa.Column("category_id", sa.BigInteger),  # 19 digits: exact as BIGINT (the workshop used VARCHAR(30))
             sa.Column("category_code", sa.String(100)),  # the workshop's VARCHAR(30) truncates real codes
             sa.Column("brand", sa.String(100)),
             sa.Column("price", sa.Float(precision=53)),
             sa.Column("product_name", sa.String(255)))
    sa.Table("users", md,
             sa.Column("user_id", sa.BigInteger, primary_key=True, autoincrement=False),
             sa.Column("sum_purchase", sa.Float(precision=53)))
    sa.Table("input", md,
             sa.Column("user_id", sa.String(20), primary_key=True),
             sa.Column("product_id", sa.String(20)))
    sa.Table("inputs", md,
             sa.Column("user_id", sa.BigInteger, primary_key=True, autoincrement=False),
             sa.Column("product_id", sa.BigInteger, primary_key=True, autoincrement=False))
    return md


def product_name(brand, category_code, product_id) -> str:
    """REES46 has no product names: ``"<brand> <last part of the category code>"``."""
    leaf = category_code.rsplit(".", 1)[-1] if category_code else "product"
    return f"{brand} {leaf}" if brand else f"{leaf} {product_id}"


def _rows(df, columns) -> list:
    out = []
    for rec in df[list(columns)].itertuples(index=False, name=None):
        out.append({c: (None if v is None or (isinstance(v, float) and np.isnan(v)) else
                        (v.item() if hasattr(v, "item") else v)) for c, v in zip(columns, rec)})
    return out


def _insert(conn, table: sa.Table, rows: list, chunk: int = 5000) -> None:
    for s in range(0, len(rows), chunk):
        conn.execute(table.insert(), rows[s:s + chunk])


def create_tables(eng: sa.Engine, prepared, sample_input=(512505687, 44600062)) -> dict:
    """(Re)create and load ``products``, ``users`` and the one-row ``input`` sample table."""
    md = _metadata()
    products = prepared.products.copy()
    products["product_name"] = [product_name(b, c, p) for b, c, p in
                                zip(products["brand"], products["category_code"], products["product_id"])]
    with eng.begin() as conn:
        for name in ("products", "users", "input"):
            md.tables[name].drop(conn, checkfirst=True)
            md.tables[name].create(conn)
        _insert(conn, md.tables["products"],
                _rows(products, ["product_id", "category_id", "category_code", "brand", "price", "product_name"]))
        _insert(conn, md.tables["users"], _rows(prepared.users, ["user_id", "sum_purchase"]))
        conn.execute(md.tables["input"].insert(), [{"user_id": str(sample_input[0]), "product_id": str(sample_input[1])}])
    return {"products": len(products), "users": len(prepared.users), "input": 1}


def create_inputs(eng: sa.Engine, limit: int = 100_000) -> int:
    """``inputs``: the workshop's ``users CROSS JOIN products LIMIT n``, made deterministic (the
    first users by id, each with every product by id) and bounded (only as many users as the
    limit needs are joined)."""
    limit = int(limit)
    if limit < 1:
        raise ValueError("limit must be >= 1")
    md = _metadata()
    inputs = md.tables["inputs"]
    with eng.begin() as conn:
        n_products = conn.execute(sa.text("SELECT COUNT(*) FROM products")).scalar_one()
        if n_products == 0:
            raise ValueError("products is empty: load the tables first")
        n_users = -(-limit // n_products)
        inputs.drop(conn, checkfirst=True)
        inputs.create(conn)
        conn.execute(sa.text(
            "INSERT INTO inputs (user_id, product_id) "
            "SELECT u.user_id, p.product_id FROM (SELECT user_id FROM users ORDER BY user_id LIMIT :n_users) u "
            "CROSS JOIN products p ORDER BY u.user_id, p.product_id LIMIT :limit"),
            {"n_users": n_users, "limit": limit})
        return conn.execute(sa.text("SELECT COUNT(*) FROM inputs")).scalar_one()


# ---- the endpoint side ------------------------------------------------------------------------

class HttpInvoker:
    """POST CSV to a hosting-contract URL (``http://host:port``, ``/invocations`` is appended)."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        import requests

        self.url = url.rstrip("/")
        if not self.url.endswith("/invocations"):
            self.url += "/invocations"
        self.session = requests.Session()
        self.timeout = timeout

    def __call__(self, body: str) -> str:
        import requests

        try:
            r = self.session.post(self.url, data=body.encode(), timeout=self.timeout,
                                  headers={"Content-Type": "text/csv", "Accept": "text/csv"})
        except requests.RequestException as e:
            raise ScoringError(f"endpoint {self.url} unreachable: {type(e).__name__}") from None
        if r.status_code != 200:
            raise ScoringError(f"endpoint {self.url} answered {r.status_code}: {r.text.strip()[:200]}")
        return r.text


class RuntimeInvoker:
    """Call an endpoint through the SageMaker Runtime API with a boto3 ``sagemaker-runtime`` client."""

    def __init__(self, client, endpoint_name: str) -> None:
        self.client = client
        self.endpoint_name = endpoint_name

    def __call__(self, body: str) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            r = self.client.invoke_endpoint(EndpointName=self.endpoint_name, ContentType="text/csv",
                                            Accept="text/csv", Body=body.encode())
        except ClientError as e:
            raise ScoringError(f"endpoint {self.endpoint_name}: {e.response['Error'].get('Message', e)}") from None
        except BotoCoreError as e:
            raise ScoringError(f"endpoint {self.endpoint_name} unreachable: {e}") from None
        return r["Body"].read().decode()


def invoker(endpoint: str, region: str | None = None):
    """``http(s)://...`` -> :class:`HttpInvoker`; a plain name -> the real SageMaker Runtime API."""
    if endpoint.startswith(("http://", "https://")):
        return HttpInvoker(endpoint)
    if not ENDPOINT_NAME.match(endpoint):
        raise ValueError(f"not an endpoint URL or SageMaker endpoint name: {endpoint!r}")
    import boto3

    return RuntimeInvoker(boto3.client("sagemaker-runtime", region_name=region), endpoint)


def parse_scores(text: str, expected: int) -> list:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != expected:
        raise ScoringError(f"endpoint answered {len(lines)} rows for {expected} sent")
    try:
        return [None if line.strip() == "" else float(line.split(",")[0]) for line in lines]
    except ValueError:
        raise ScoringError(f"endpoint answered something that is not a score: {text[:80]!r}") from None


def _score_rows(call, rows: list) -> list:
    """One request: the rows' (user_id, product_id) as CSV (NULL as an empty field); each row
    gets its score (None when unknown) under ``recommend_score``. Returns the scores."""
    body = "".join(f"{'' if r['user_id'] is None else r['user_id']},"
                   f"{'' if r['product_id'] is None else r['product_id']}\n" for r in rows)
    scores = parse_scores(call(body), len(rows))
    for r, score in zip(rows, scores):
        r[SCORE_COLUMN] = score
    return scores


@dataclass
class ScoreReport:
    source: str
    target: str
    inputs_rows: int = 0
    predict_rows: int = 0
    requests_sent: int = 0
    unknown_pairs: int = 0
    seconds: float = 0.0
    batch_sizes: list = field(default_factory=list)

    @property
    def pairs_per_second(self) -> float:
        return self.predict_rows / self.seconds if self.seconds > 0 else float("nan")

    def as_dict(self) -> dict:
        return {"source": self.source, "target": self.target, "inputs_rows": self.inputs_rows,
                "predict_rows": self.predict_rows, "requests_sent": self.requests_sent,
                "unknown_pairs": self.unknown_pairs, "seconds": self.seconds,
                "pairs_per_second": self.pairs_per_second, "max_batch": max(self.batch_sizes or [0])}


def _swap(conn, staging: str, target: str) -> None:
    """Replace ``target`` by ``staging`` in one step."""
    insp = sa.inspect(conn)
    exists = insp.has_table(target)
    q = conn.dialect.identifier_preparer.quote
    if conn.dialect.name in ("mysql", "mariadb"):
        if exists:
            old = f"{target}__old"
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {q(old)}"))
            conn.execute(sa.text(f"RENAME TABLE {q(target)} TO {q(old)}, {q(staging)} TO {q(target)}"))
            conn.execute(sa.text(f"DROP TABLE {q(old)}"))
        else:
            conn.execute(sa.text(f"RENAME TABLE {q(staging)} TO {q(target)}"))
    else:  # SQLite: DDL is transactional
        if exists:
            conn.execute(sa.text(f"DROP TABLE {q(target)}"))
        conn.execute(sa.text(f"ALTER TABLE {q(staging)} RENAME TO {q(target)}"))


def score_table(eng: sa.Engine, call, source: str = "inputs", target: str = "predict",
                max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, progress: bool = True) -> ScoreReport:
    """``CREATE TABLE <target> SELECT *, recommend_score(user_id, product_id) FROM <source>``,
    Aurora-style: CSV batches through ``call(csv_text) -> csv_text``; atomic replacement."""
    from .progress import progress_bar

    check_identifier(source)
    check_identifier(target)
    if max_batch_size < 1:
        raise ValueError("max_batch_size must be >= 1")
    staging = check_identifier(f"{target}__staging")
    report = ScoreReport(source=source, target=target)
    src = sa.Table(source, sa.MetaData(), autoload_with=eng)
    names = [c.name for c in src.columns]
    for needed in ("user_id", "product_id"):
        if needed not in names:
            raise ValueError(f"table {source} has no {needed} column")
    if SCORE_COLUMN in names:
        raise ValueError(f"table {source} already has a {SCORE_COLUMN} column")
    stage = sa.Table(staging, sa.MetaData(), *[sa.Column(c.name, c.type) for c in src.columns],
                     sa.Column(SCORE_COLUMN, sa.Float(precision=53), nullable=True))
    order = [src.c[c.name] for c in src.primary_key.columns] or [src.c[n] for n in names]
    t0 = time.perf_counter()
    with eng.connect() as conn:
        report.inputs_rows = conn.execute(sa.select(sa.func.count()).select_from(src)).scalar_one()
    stage.drop(eng, checkfirst=True)
    stage.create(eng)
    try:
        # MySQL cannot run an INSERT while an unbuffered SELECT streams on the same connection, so
        # it reads on one and writes on another; SQLite would make the writer wait on the reader's
        # lock, so there one connection does both (one transaction, cursor left open).
        shared = eng.dialect.name == "sqlite"
        with eng.begin() as write, (contextlib.nullcontext(write) if shared else eng.connect()) as read, \
                progress_bar(total=report.inputs_rows, unit="pair", desc=f"score {source}", enabled=progress) as bar:
            result = read.execution_options(stream_results=True, yield_per=max_batch_size).execute(
                sa.select(src).order_by(*order))
            try:
                for part in result.partitions(max_batch_size):
                    rows = [dict(r._mapping) for r in part]
                    scores = _score_rows(call, rows)
                    report.requests_sent += 1
                    report.batch_sizes.append(len(rows))
                    report.unknown_pairs += sum(s is None for s in scores)
                    write.execute(stage.insert(), rows)
                    report.predict_rows += len(rows)
                    bar.update(len(rows))
            finally:
                result.close()  # an open cursor would keep SQLite's table lock
        if report.predict_rows != report.inputs_rows:
            raise ScoringError(f"{report.predict_rows} rows scored but {source} has {report.inputs_rows}")
        with eng.begin() as conn:
            _swap(conn, staging, target)
    except BaseException as e:
        stage.drop(eng, checkfirst=True)
        if isinstance(e, ScoringError):
            raise ScoringError(f"scoring {source} into {target} failed, {target} is unchanged: {e}") from None
        raise
    report.seconds = time.perf_counter() - t0
    return report


def score_query(eng: sa.Engine, call, source: str = "input") -> list:
    """``SELECT *, recommend_score(user_id, product_id) FROM <source>`` as a list of dicts."""
    check_identifier(source)
    with eng.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.text(f"SELECT * FROM {source}"))]
    if rows:
        _score_rows(call, rows)
    return rows


def top_n(eng: sa.Engine, n: int = 5, target: str = "predict", users=None) -> list:
    """The ``n`` best-scored products per user from ``target``, with product metadata."""
    check_identifier(target)
    where = ""
    params = {"n": int(n)}
    if users is not None:
        users = [int(u) for u in users]
        where = " AND p.user_id IN (" + ", ".join(f":u{i}" for i in range(len(users))) + ")"
        params.update({f"u{i}": u for i, u in enumerate(users)})
    query = (
        "SELECT t.user_id, t.product_id, t.recommend_score, t.rnk, pr.category_code, pr.brand, pr.price "
        "FROM (SELECT p.user_id, p.product_id, p.recommend_score, "
        "ROW_NUMBER() OVER (PARTITION BY p.user_id ORDER BY p.recommend_score DESC, p.product_id) AS rnk "
        f"FROM {target} p WHERE p.recommend_score IS NOT NULL{where}) t "
        "LEFT JOIN products pr ON pr.product_id = t.product_id "
        "WHERE t.rnk <= :n ORDER BY t.user_id, t.rnk")
    with eng.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(query), params)]


def aurora_function_sql(endpoint_name: str, function: str = "recommend_score", max_batch_size: int | None = None) -> str:
    """The Aurora MySQL statement that aliases ``function`` to a SageMaker endpoint."""
    check_identifier(function)
    if not ENDPOINT_NAME.match(endpoint_name or ""):
        raise ValueError(f"not a SageMaker endpoint name: {endpoint_name!r}")
    batch = f" MAX_BATCH_SIZE {int(max_batch_size)}" if max_batch_size else ""
    return (f"CREATE FUNCTION {function}(user_id BIGINT, product_id BIGINT) RETURNS DOUBLE "
            f"ALIAS aws_sagemaker_invoke_endpoint ENDPOINT NAME '{endpoint_name}'{batch}")


class AuroraError(RuntimeError):
    """The database cannot take the Aurora function (not Aurora MySQL, or the statement failed); one line."""


def _one_line(e: Exception) -> str:
    orig = getattr(e, "orig", None)  # SQLAlchemy wraps the driver's error with the statement and a link
    text = str(orig if orig is not None else e)
    return " ".join(text.split())[:300]


def aurora_create_function(eng: sa.Engine, endpoint_name: str, function: str = "recommend_score",
                           max_batch_size: int | None = None) -> str:
    """Create the function on a real Aurora MySQL (``mode="aws"`` only); returns the statement.

    Nothing is lost on failure: the server must answer ``AURORA_VERSION()`` and take the statement
    under a scratch name before the existing ``function`` is replaced; otherwise :class:`AuroraError`
    says why in one line and ``function`` is as it was."""
    statement = aurora_function_sql(endpoint_name, function, max_batch_size)
    if eng.dialect.name != "mysql":
        raise AuroraError(f"recommend_score needs Aurora MySQL; {eng.dialect.name} cannot alias a function to a "
                          "SageMaker endpoint (use the kit's scoring bridge, sql.score_table)")
    scratch = f"{function}__check"
    with eng.connect() as conn:
        try:
            version = conn.execute(sa.text("SELECT AURORA_VERSION()")).scalar()
        except sa.exc.DBAPIError as e:
            raise AuroraError(f"this server is not Aurora MySQL (AURORA_VERSION(): {_one_line(e)}); "
                              f"{function} is unchanged") from None
        try:  # the statement and the privileges, proven under a scratch name first
            conn.execute(sa.text(f"DROP FUNCTION IF EXISTS {scratch}"))
            conn.execute(sa.text(aurora_function_sql(endpoint_name, scratch, max_batch_size)))
            conn.execute(sa.text(f"DROP FUNCTION IF EXISTS {scratch}"))
            conn.execute(sa.text(f"DROP FUNCTION IF EXISTS {function}"))
            conn.execute(sa.text(statement))
        except sa.exc.DBAPIError as e:
            raise AuroraError(f"Aurora MySQL {version} refused the function: {_one_line(e)}") from None
    return statement


# ---- Batch Transform: a table out as CSV, the scores back in -------------------------------------

def export_pairs(eng: sa.Engine, path, source: str = "inputs", limit: int | None = None) -> int:
    """Write ``source``'s ``(user_id, product_id)`` rows, in key order, to ``path`` as a Batch Transform
    input (CSV, no header, one pair per line, NULL as an empty field); at most ``limit`` rows. Streams:
    memory does not grow with the table. Returns the number of lines written."""
    check_identifier(source)
    if limit is not None and int(limit) < 1:
        raise ValueError("limit must be >= 1 (or None for every row)")
    src = sa.Table(source, sa.MetaData(), autoload_with=eng)
    for needed in ("user_id", "product_id"):
        if needed not in src.c:
            raise ValueError(f"table {source} has no {needed} column")
    order = [src.c[c.name] for c in src.primary_key.columns] or [src.c.user_id, src.c.product_id]
    query = sa.select(src.c.user_id, src.c.product_id).order_by(*order)
    if limit is not None:
        query = query.limit(int(limit))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with eng.connect() as conn, open(path, "w", newline="") as f:
        result = conn.execution_options(stream_results=True, yield_per=10_000).execute(query)
        for part in result.partitions(10_000):
            f.write("".join(f"{'' if u is None else u},{'' if p is None else p}\n" for u, p in part))
            n += len(part)
    return n


def _batch_table(name: str) -> sa.Table:
    return sa.Table(name, sa.MetaData(),
                    sa.Column("line", sa.BigInteger, primary_key=True, autoincrement=False),
                    sa.Column("user_id", sa.BigInteger), sa.Column("product_id", sa.BigInteger),
                    sa.Column(SCORE_COLUMN, sa.Float(precision=53), nullable=True))


def _pair_field(text: str, what: str, path: Path, n: int):
    text = text.strip().strip('"')
    if text == "" or text.upper() == "NULL":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{path.name} line {n}: {what} {text[:40]!r} is not an integer id") from None


def load_transform_output(eng: sa.Engine, input_path, output_path, target: str = "predict_batch",
                          chunk: int = 10_000) -> int:
    """Load a Batch Transform result next to its input: line ``n`` of ``output_path`` (``<input>.out``)
    is the score of line ``n`` of ``input_path``. ``target`` becomes ``(line, user_id, product_id,
    recommend_score)`` (NULL where the pair is unknown), replaced only when both files were read to the
    end with the same number of lines. Streams both files. Returns the number of rows."""
    check_identifier(target)
    staging = check_identifier(f"{target}__staging")
    input_path, output_path = Path(input_path), Path(output_path)
    stage = _batch_table(staging)
    stage.drop(eng, checkfirst=True)
    stage.create(eng)
    n = 0
    try:
        with eng.begin() as conn, open(input_path) as fin, open(output_path) as fout:
            rows = []
            for n, (pair, score) in enumerate(itertools.zip_longest(fin, fout), start=1):
                if pair is None or score is None:
                    longer = output_path if pair is None else input_path
                    raise ScoringError(f"{input_path.name} and {output_path.name} differ in length: {longer.name} "
                                       f"has more than {n - 1} lines (a transform output has one line per input line)")
                fields = pair.rstrip("\r\n").split(",")
                if len(fields) != 2:
                    raise ValueError(f"{input_path.name} line {n}: {len(fields)} fields, expected user_id,product_id")
                text = score.strip()
                try:
                    value = float(text.split(",")[0]) if text else None
                except ValueError:
                    raise ValueError(f"{output_path.name} line {n}: {text[:40]!r} is not a score") from None
                rows.append({"line": n, "user_id": _pair_field(fields[0], "user_id", input_path, n),
                             "product_id": _pair_field(fields[1], "product_id", input_path, n), SCORE_COLUMN: value})
                if len(rows) >= chunk:
                    conn.execute(stage.insert(), rows)
                    rows = []
            if rows:
                conn.execute(stage.insert(), rows)
        with eng.begin() as conn:
            _swap(conn, staging, target)
    except BaseException:
        stage.drop(eng, checkfirst=True)
        raise
    return n


def score_agreement(eng: sa.Engine, a: str = "predict", b: str = "predict_batch") -> dict:
    """Pairs scored in both tables: how many, how many known in one and unknown in the other, and the
    largest absolute difference of the scores known in both."""
    check_identifier(a)
    check_identifier(b)
    q = (f"SELECT COUNT(*) AS pairs, "
         f"SUM(CASE WHEN (x.{SCORE_COLUMN} IS NULL) <> (y.{SCORE_COLUMN} IS NULL) THEN 1 ELSE 0 END) AS null_mismatch, "
         f"MAX(ABS(x.{SCORE_COLUMN} - y.{SCORE_COLUMN})) AS max_abs_diff "
         f"FROM {a} x JOIN {b} y ON x.user_id = y.user_id AND x.product_id = y.product_id")
    with eng.connect() as conn:
        row = conn.execute(sa.text(q)).mappings().one()
    return {"pairs": int(row["pairs"] or 0), "null_mismatch": int(row["null_mismatch"] or 0),
            "max_abs_diff": float(row["max_abs_diff"]) if row["max_abs_diff"] is not None else None}


def aurora_load_from_s3_sql(input_uri: str, output_uri: str, target: str = "predict_batch") -> list:
    """The Aurora MySQL statements that load a Batch Transform result from S3 next to its input
    (``LOAD DATA FROM S3``; the cluster needs an IAM role for S3 in ``aws_default_s3_role``): both files
    into tables with an AUTO_INCREMENT line (rows keep file order), then joined by row number."""
    check_identifier(target)
    for uri in (input_uri, output_uri):
        if not isinstance(uri, str) or not uri.startswith("s3://") or "'" in uri:
            raise ValueError(f"not an S3 URI: {uri!r}")
    tin, tout = check_identifier(f"{target}_in"), check_identifier(f"{target}_out")
    return [
        f"CREATE TABLE {tin} (line BIGINT AUTO_INCREMENT PRIMARY KEY, user_id BIGINT, product_id BIGINT)",
        f"CREATE TABLE {tout} (line BIGINT AUTO_INCREMENT PRIMARY KEY, {SCORE_COLUMN} DOUBLE)",
        f"LOAD DATA FROM S3 '{input_uri}' INTO TABLE {tin} FIELDS TERMINATED BY ',' LINES TERMINATED BY '\\n' "
        "(@u, @p) SET user_id = NULLIF(@u, ''), product_id = NULLIF(@p, '')",
        f"LOAD DATA FROM S3 '{output_uri}' INTO TABLE {tout} LINES TERMINATED BY '\\n' (@score) "
        f"SET {SCORE_COLUMN} = NULLIF(@score, '')",
        f"CREATE TABLE {target} AS SELECT i.n AS line, i.user_id, i.product_id, o.{SCORE_COLUMN} FROM "
        f"(SELECT user_id, product_id, ROW_NUMBER() OVER (ORDER BY line) AS n FROM {tin}) i JOIN "
        f"(SELECT {SCORE_COLUMN}, ROW_NUMBER() OVER (ORDER BY line) AS n FROM {tout}) o ON o.n = i.n",
    ]


# ---- does the model know this data? ----------------------------------------------------------------

class ModelDataMismatch(ValueError):
    """The model was trained on other data: none of the data's users or products is known to it."""


def check_model_data(rec, prepared, model_label: str, data_label: str) -> str:
    """Compare the model's data fingerprint (``model_info.json``) with the prepared data's: ``""`` when
    the model was trained on this data; a one-line warning when it was not but some ids are shared;
    :class:`ModelDataMismatch` (one line: which model, which data) when no user or no product is known
    to the model, so every pair would score NULL."""
    from .artifacts import data_fingerprint

    theirs = (rec.info or {}).get("data_fingerprint")
    ours = data_fingerprint(prepared)
    if theirs == ours:
        return ""
    users = int(np.isin(prepared.users["user_id"].to_numpy(np.int64), rec.user_ids).sum())
    products = int(np.isin(prepared.products["product_id"].to_numpy(np.int64), rec.product_ids).sum())
    trained = f"trained on data {theirs[:12]}" if theirs else "with no data fingerprint"
    if users == 0 or products == 0:
        raise ModelDataMismatch(
            f"model {model_label} ({trained}) does not match the data {data_label} ({ours[:12]}): it knows "
            f"{users} of its {len(prepared.users):,} users and {products} of its {len(prepared.products):,} products, "
            "so every pair would be unknown; prepare the data the model was trained on, or pass a model trained on it")
    return (f"warning: model {model_label} ({trained}) was not trained on the data {data_label} ({ours[:12]}): it "
            f"knows {users:,} of its {len(prepared.users):,} users and {products:,} of its {len(prepared.products):,} "
            "products; pairs with the others score NULL")


def check_scored(report: ScoreReport, endpoint_label: str, data_label: str) -> None:
    """:class:`ModelDataMismatch` when an endpoint knew none of the pairs it scored (the model behind it
    was trained on other data than ``data_label``): one line instead of empty results further on."""
    if report.predict_rows and report.unknown_pairs == report.predict_rows:
        raise ModelDataMismatch(
            f"endpoint {endpoint_label} knows none of the {report.predict_rows:,} pairs of {report.source} (from the "
            f"data {data_label}): the model behind it was trained on other data; deploy a model trained on this data")
