"""The ``recsys`` command: the lab's steps without notebooks.

Results go to stdout as one JSON line; progress and warnings go to stderr. Known input
problems exit with status 2 and a one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from .constants import DEFAULT_MIN_PRODUCT_EVENTS, DEFAULT_MIN_USER_EVENTS, DEFAULT_SEED


def _cmd_synth(args) -> dict:
    from .synthetic import generate

    path = generate(args.out, rows=args.rows, users=args.users, products=args.products, seed=args.seed,
                    progress=not args.quiet)
    return {"out": str(path), "rows": args.rows, "seed": args.seed}


def _cmd_prepare(args) -> dict:
    from .prepare import SUMMARY_KEYS, prepare_files

    prepared = prepare_files(args.inputs, out_dir=args.out, min_user_events=args.min_user_events,
                             min_product_events=args.min_product_events, progress=not args.quiet)
    read = prepared.summary.get("read", {})
    for f in read.get("files", []):
        if f["rows_malformed"]:
            shown = ", ".join(f"line {n}: {r}" for n, r in f["malformed_examples"][:5])
            print(f"warning: {f['path']}: {f['rows_malformed']} malformed row(s) skipped [{shown}]", file=sys.stderr)
    return {k: prepared.summary[k] for k in SUMMARY_KEYS}


def _cmd_train(args) -> dict:
    from .prepare import Prepared
    from .training import HYPERPARAMETERS, train_and_save

    prepared = Prepared.load(args.prepared_dir)
    _, metrics = train_and_save(prepared, args.model_dir, progress=not args.quiet, ctx=args.ctx,
                                **{k: getattr(args, k) for k in HYPERPARAMETERS})
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
    return {"stopped": ep.name, "requests": ep.requests, "errors": ep.errors}


def _cmd_sql_score(args) -> dict:
    from . import sql

    eng = sql.engine(args.db)
    report = sql.score_table(eng, sql.invoker(args.endpoint, args.region), source=args.source, target=args.target,
                             max_batch_size=args.max_batch_size, progress=not args.quiet)
    return report.as_dict()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recsys", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a synthetic REES46-schema CSV (.csv or .csv.gz)")
    s.add_argument("--rows", type=int, required=True)
    s.add_argument("--users", type=int, default=None, help="default: rows/15")
    s.add_argument("--products", type=int, default=None, help="default: rows/40")
    s.add_argument("--seed", type=int, default=DEFAULT_SEED)
    s.add_argument("--out", required=True)
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_synth)

    s = sub.add_parser("prepare", help="read, filter, index and split REES46 CSVs into a prepared dataset")
    s.add_argument("inputs", nargs="+", metavar="INPUT")
    s.add_argument("--out", required=True, help="output directory (Parquet + summary.json)")
    s.add_argument("--min-user-events", type=int, default=DEFAULT_MIN_USER_EVENTS)
    s.add_argument("--min-product-events", type=int, default=DEFAULT_MIN_PRODUCT_EVENTS)
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_prepare)

    from .training import TrainConfig

    d = TrainConfig()
    s = sub.add_parser("train", help="train the MF model on a prepared dataset and save a model directory")
    s.add_argument("prepared_dir", metavar="PREPARED_DIR")
    s.add_argument("--model-dir", required=True)
    s.add_argument("--epochs", type=int, default=d.epochs)
    s.add_argument("--num-embeddings", type=int, default=d.num_embeddings)
    s.add_argument("--batch-size", type=int, default=d.batch_size)
    s.add_argument("--opt", default=d.opt, help="any MXNet optimizer name (default: sgd)")
    s.add_argument("--lr", type=float, default=d.lr)
    s.add_argument("--momentum", type=float, default=d.momentum)
    s.add_argument("--wd", type=float, default=d.wd)
    s.add_argument("--dropout", type=float, default=d.dropout)
    s.add_argument("--init-magnitude", type=float, default=d.init_magnitude)
    s.add_argument("--objective", choices=("event_score", "implicit"), default=d.objective)
    s.add_argument("--embedding-grad", choices=("mean", "sum"), default=d.embedding_grad,
                   help="embedding rows step on the batch-mean gradient (the seed's) or per example")
    s.add_argument("--ctx", default=d.ctx, help="auto (GPU if MXNet sees one), cpu, gpu, gpu:N")
    s.add_argument("--seed", type=int, default=d.seed)
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("serve", help="serve a model.tar.gz or model directory on 127.0.0.1 (SageMaker protocols)")
    s.add_argument("model", metavar="MODEL")
    s.add_argument("--port", type=int, default=8080, help="0 picks a free port (default: 8080, the container's)")
    s.add_argument("--name", default="recsys-local", help="endpoint name for the Runtime API path")
    s.set_defaults(func=_cmd_serve)

    s = sub.add_parser("sql-score", help="CREATE TABLE predict SELECT *, recommend_score(...) FROM inputs, Aurora-style")
    s.add_argument("--db", required=True, help="SQLAlchemy URL, e.g. sqlite:///outputs/recsys.sqlite or mysql+pymysql://...")
    s.add_argument("--endpoint", required=True, help="http://host:port of a local endpoint, or a SageMaker endpoint name")
    s.add_argument("--source", default="inputs")
    s.add_argument("--target", default="predict")
    s.add_argument("--max-batch-size", type=int, default=10_000, help="rows per request (Aurora's default 10,000)")
    s.add_argument("--region", default=None, help="AWS region for an endpoint name")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_sql_score)
    return p


def main(argv=None) -> int:
    from .events import EventsFormatError
    from .prepare import EmptyDatasetError
    from .sql import ScoringError

    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except (EventsFormatError, EmptyDatasetError, FileNotFoundError, ValueError, ScoringError) as e:
        print(f"recsys {args.command}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
