"""The ``recsys`` command: the lab's steps without notebooks.

Results go to stdout as exactly one JSON line; progress, epoch lines and warnings go to stderr.
Bad input (a missing, damaged or wrong file, a bad value, an unreachable database or endpoint)
exits with status 2 and one line ``recsys COMMAND: error: ...``, never a traceback. Commands that
write a directory refuse a non-empty one unless ``--force``, and write it completely or not at all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .constants import DEFAULT_MIN_PRODUCT_EVENTS, DEFAULT_MIN_USER_EVENTS, DEFAULT_SEED


class UsageError(ValueError):
    """A bad argument combination or target, found before any work starts."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) and the defaults shown in ``--help``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range (0-65535; 0 picks a free one)")
    return port


def _check_target(path: str, force: bool, what: str) -> Path:
    """Refuse a target that is a file or a non-empty directory (unless ``force``), and one that
    cannot be written; before any work is done."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UsageError(f"{what} {target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise UsageError(f"{what} {target} is not empty: pass --force to replace it")
    parent = target.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryDirectory(dir=parent).cleanup()
    except OSError as e:
        raise UsageError(f"{what} {target}: cannot write in {parent} ({e.strerror or e})") from None
    return target


@contextlib.contextmanager
def _replace_dir(target: Path):
    """Write into a fresh sibling directory; swap it in only when the block succeeds."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.resolve().parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _cmd_synth(args) -> dict:
    from .synthetic import generate

    path = generate(args.out, rows=args.rows, users=args.users, products=args.products, seed=args.seed,
                    progress=not args.quiet)
    return {"out": str(path), "rows": args.rows, "seed": args.seed}


def _cmd_prepare(args) -> dict:
    from .prepare import SUMMARY_KEYS, prepare_files

    target = _check_target(args.out, args.force, "--out")
    with _replace_dir(target) as tmp:
        prepared = prepare_files(args.inputs, out_dir=tmp, min_user_events=args.min_user_events,
                                 min_product_events=args.min_product_events, progress=not args.quiet)
    read = prepared.summary.get("read", {})
    for f in read.get("files", []):
        if f["rows_malformed"]:
            shown = ", ".join(f"line {n}: {r}" for n, r in f["malformed_examples"][:5])
            _err(f"warning: {f['path']}: {f['rows_malformed']} malformed row(s) skipped [{shown}]")
    return {k: prepared.summary[k] for k in SUMMARY_KEYS}


def _cmd_train(args) -> dict:
    from .prepare import Prepared
    from .training import HYPERPARAMETERS, TrainConfig, train_and_save

    if args.preset:
        from .presets import check
        from .selection import train_and_save_preset

        check(args.preset)  # an unknown name fails before anything is read
        target = _check_target(args.model_dir, args.force, "--model-dir")
        prepared = Prepared.load(args.prepared_dir)
        # epochs given here are used as given; the preset's own are scaled to the data (recsys.presets)
        overrides = {"epochs": args.epochs, "scale_epochs": False} if args.epochs is not None else {}
        with _replace_dir(target) as tmp:
            metrics = train_and_save_preset(prepared, tmp, args.preset, progress=not args.quiet, log=_err,
                                            ctx=args.ctx, seed=args.seed, **overrides)
        return {**metrics, "model_dir": str(args.model_dir)}
    if args.epochs is None:
        args.epochs = TrainConfig().epochs
    hyperparameters = {k: getattr(args, k) for k in HYPERPARAMETERS}
    TrainConfig(**hyperparameters, ctx=args.ctx).validate()  # a bad value fails before anything is read
    target = _check_target(args.model_dir, args.force, "--model-dir")
    prepared = Prepared.load(args.prepared_dir)
    with _replace_dir(target) as tmp:
        _, metrics = train_and_save(prepared, tmp, progress=not args.quiet, ctx=args.ctx, log=_err, **hyperparameters)
    return {**metrics, "model_dir": str(args.model_dir)}


def _cmd_serve(args) -> dict:
    import signal
    import threading

    from .sagemaker.local import LocalEndpoint

    ep = LocalEndpoint(args.model, name=args.name, port=args.port).start()
    info = {"url": ep.url, "endpoint_name": ep.name, "invocations": f"{ep.url}/invocations",
            "runtime_api": f"{ep.url}/endpoints/{ep.name}/invocations"}
    print(json.dumps(info, sort_keys=True), flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    ep.stop()
    _err(json.dumps({"stopped": ep.name, "requests": ep.requests, "errors": ep.errors}, sort_keys=True))
    return None


def _cmd_sql_score(args) -> dict:
    from . import sql

    eng = sql.engine(args.db)
    report = sql.score_table(eng, sql.invoker(args.endpoint, args.region), source=args.source, target=args.target,
                             max_batch_size=args.max_batch_size, progress=not args.quiet)
    return report.as_dict()


def _cmd_transform(args) -> dict:
    from .sagemaker.transform import check_settings, run_transform

    check_settings(args.strategy, args.max_payload_mb, args.max_concurrent_transforms)  # before any work
    for path in args.inputs:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no input file {path}")
    if not Path(args.model).exists():
        raise FileNotFoundError(f"no model at {args.model}")
    target = _check_target(args.out, args.force, "--out")
    with _replace_dir(target) as tmp:
        job = run_transform(args.model, args.inputs, tmp, strategy=args.strategy, max_payload_mb=args.max_payload_mb,
                            max_concurrent_transforms=args.max_concurrent_transforms, engine=args.engine,
                            progress=not args.quiet)
    result = job.as_dict()
    result["outputs"] = [str(target / p.name) for p in job.outputs]
    if job.note:
        _err(f"note: {job.note}")
    return result


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="recsys", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("synth", help="write a synthetic REES46-schema CSV (.csv or .csv.gz)")
    s.add_argument("--rows", type=int, required=True, help="number of event rows")
    s.add_argument("--users", type=int, default=None, help="number of users (default: rows/15)")
    s.add_argument("--products", type=int, default=None, help="number of products (default: rows/40)")
    s.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (same seed, same bytes)")
    s.add_argument("--out", required=True, help="output file; .gz compresses")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_synth)

    s = sub.add_parser("prepare", help="read, filter, index and split REES46 CSVs into a prepared dataset")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="REES46 event CSVs (.csv or .csv.gz)")
    s.add_argument("--out", required=True, help="output directory (Parquet files + summary.json)")
    s.add_argument("--min-user-events", type=int, default=DEFAULT_MIN_USER_EVENTS,
                   help="keep users with at least this many events")
    s.add_argument("--min-product-events", type=int, default=DEFAULT_MIN_PRODUCT_EVENTS,
                   help="keep products with at least this many events")
    s.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_prepare)

    from .training import TrainConfig

    d = TrainConfig()
    s = sub.add_parser("train", help="train the MF model on a prepared dataset and save a model directory")
    s.add_argument("prepared_dir", metavar="PREPARED_DIR", help="a directory written by `recsys prepare`")
    s.add_argument("--model-dir", required=True, help="output model directory")
    from .presets import DESCRIPTIONS

    s.add_argument("--preset", default=None,
                   help="train a model of notebook 02's ranking table with its settings instead: "
                        + "; ".join(f"{k}: {v}" for k, v in sorted(DESCRIPTIONS.items()))
                        + ". The options below are then ignored, except --epochs (used as given), --ctx and --seed")
    s.add_argument("--epochs", type=int, default=None, help=f"passes over the training rows (default: {d.epochs}, "
                   "or the preset's)")
    s.add_argument("--num-embeddings", type=int, default=d.num_embeddings, help="embedding and tower width")
    s.add_argument("--batch-size", type=int, default=d.batch_size, help="rows per optimisation step")
    s.add_argument("--opt", default=d.opt, help="any MXNet optimizer name")
    s.add_argument("--lr", type=float, default=d.lr, help="learning rate")
    s.add_argument("--momentum", type=float, default=d.momentum, help="momentum (sgd, nag)")
    s.add_argument("--wd", type=float, default=d.wd, help="weight decay")
    s.add_argument("--dropout", type=float, default=d.dropout, help="dropout after each tower")
    s.add_argument("--init-magnitude", type=float, default=d.init_magnitude, help="Xavier initialisation magnitude")
    s.add_argument("--objective", choices=("event_score", "implicit"), default=d.objective,
                   help="event_score: the seed's L2 loss on event types; implicit: BPR with sampled negatives")
    s.add_argument("--embedding-grad", choices=("mean", "sum"), default=d.embedding_grad,
                   help="embedding rows step on the batch-mean gradient (the seed's) or per example")
    s.add_argument("--ctx", default=d.ctx, help="auto (a GPU that runs the MXNet wheel, else the CPU), cpu, gpu, gpu:N")
    s.add_argument("--seed", type=int, default=d.seed, help="seeds Python, NumPy and MXNet")
    s.add_argument("--force", action="store_true", help="replace a non-empty --model-dir")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no epoch lines")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("serve", help="serve a model.tar.gz or model directory on 127.0.0.1 (SageMaker protocols)")
    s.add_argument("model", metavar="MODEL", help="a model directory or a model.tar.gz")
    s.add_argument("--port", type=_port, default=8080, help="TCP port on 127.0.0.1; 0 picks a free one")
    s.add_argument("--name", default="recsys-local", help="endpoint name for the Runtime API path")
    s.set_defaults(func=_cmd_serve)

    s = sub.add_parser("sql-score", help="CREATE TABLE predict SELECT *, recommend_score(...) FROM inputs, Aurora-style")
    s.add_argument("--db", required=True, help="SQLAlchemy URL, e.g. sqlite:///outputs/recsys.sqlite or mysql+pymysql://...")
    s.add_argument("--endpoint", required=True, help="http://host:port of a local endpoint, or a SageMaker endpoint name")
    s.add_argument("--source", default="inputs", help="table of (user_id, product_id) rows to score")
    s.add_argument("--target", default="predict", help="table to (re)create with the scores")
    s.add_argument("--max-batch-size", type=int, default=10_000, help="rows per request (Aurora's default)")
    s.add_argument("--region", default=None, help="AWS region for an endpoint name (default: the AWS configuration's)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_sql_score)

    s = sub.add_parser("transform", help="a SageMaker Batch Transform job on local files: DIR/<input name>.out, a "
                       "score per input line (empty: unknown pair), on AWS's MXNet serving stack when installed")
    s.add_argument("model", metavar="MODEL", help="a model directory or a model.tar.gz")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="CSV files of user_id,product_id lines, no header")
    s.add_argument("--out", required=True, help="output directory (one INPUT_NAME.out per input)")
    s.add_argument("--strategy", choices=("MultiRecord", "SingleRecord"), default="MultiRecord",
                   help="BatchStrategy: pack whole lines into each request, or one line per request")
    s.add_argument("--max-payload-mb", type=int, default=6, help="MaxPayloadInMB: the largest request (1-6)")
    s.add_argument("--max-concurrent-transforms", type=int, default=1, help="requests in flight at once")
    s.add_argument("--engine", choices=("auto", "container", "local"), default="auto",
                   help="container: AWS's MXNet serving stack (Multi Model Server, Java); local: the kit's endpoint; "
                        "auto: the container when the toolkits and Java are installed and no other one runs")
    s.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_transform)
    return p


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def main(argv=None) -> int:
    import tarfile

    from botocore.exceptions import BotoCoreError, NoRegionError
    from sqlalchemy.exc import NoSuchTableError, SQLAlchemyError

    from .events import EventsFormatError
    from .prepare import EmptyDatasetError
    from .sagemaker.container import ServingStackError
    from .sagemaker.transform import TransformJobError
    from .sql import ScoringError

    args = build_parser().parse_args(argv)
    prefix = f"recsys {args.command}: error:"
    try:
        result = args.func(args)
    except NoRegionError:
        _err(f"{prefix} an AWS region is needed for endpoint {getattr(args, 'endpoint', '')!r}: pass --region "
             "or set AWS_DEFAULT_REGION")
        return 2
    except NoSuchTableError as e:
        _err(f"{prefix} no table {e} in the database")
        return 2
    except SQLAlchemyError as e:  # unknown URL scheme, refused login, missing database, ...
        _err(f"{prefix} database: {_one_line(getattr(e, 'orig', None) or e)}")
        return 2
    except BotoCoreError as e:
        _err(f"{prefix} AWS: {_one_line(e)}")
        return 2
    except tarfile.TarError as e:
        _err(f"{prefix} {getattr(args, 'model', '')}: not a model.tar.gz or model directory ({_one_line(e)})")
        return 2
    except (EventsFormatError, EmptyDatasetError, FileNotFoundError, ValueError, ScoringError, OSError,
            TransformJobError, ServingStackError) as e:
        _err(f"{prefix} {_one_line(e)}")
        return 2
    if result is not None:
        print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
