"""Run the lab's notebooks with papermill, the kit's kernel and the project root as working
directory, then scrub what would differ between runs or machines from the executed copies.

``python -m recsys.runner [NAME ...] [--out outputs] [-p key value ...] [--no-progress]`` (``make run-all``).

Two channels: what a notebook shows (stdout, tables, figures) stays in the executed notebook; what
changes from run to run (progress bars with their ETA, rates, latencies: the kit writes them to
stderr) streams live to the runner's stderr and is removed from the executed copy, with papermill's
timestamps and durations and the machine's absolute paths. Two runs on the same data therefore give
byte-identical executed notebooks.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import nbformat
from traitlets.config import Config

from .paths import project_root

KERNEL = "recsys-lab"
_VOLATILE = ("start_time", "end_time", "duration", "input_path", "output_path")


def notebooks(root: Path | None = None) -> list[Path]:
    root = root or project_root()
    return sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def scrub(path: str | os.PathLike, root: Path | None = None) -> None:
    """Remove timestamps, durations, stderr (progress and timings) and absolute paths from an executed
    notebook, in place."""
    root = root or project_root()
    nb = nbformat.read(path, as_version=4)
    for key in _VOLATILE:
        nb.metadata.get("papermill", {}).pop(key, None)
    prefix = re.compile(re.escape(str(root)) + r"/?")
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell["id"] = "injected-parameters"  # papermill gives it a new random id on every run
        for key in _VOLATILE:
            cell.metadata.get("papermill", {}).pop(key, None)
        if "outputs" in cell:
            cell["outputs"] = _coalesced([o for o in cell["outputs"]
                                          if not (o.get("output_type") == "stream" and o.get("name") == "stderr")])
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = prefix.sub("", out["text"])
            for mime, value in out.get("data", {}).items():
                if mime.startswith("text/") and isinstance(value, str):
                    out["data"][mime] = prefix.sub("", value)
    nbformat.write(nb, path)


def _coalesced(outputs: list) -> list:
    """Consecutive stdout chunks as one output: how the kernel's writes were split into messages depends on
    timing, the text does not."""
    out = []
    for o in outputs:
        if (out and o.get("output_type") == "stream" and out[-1].get("output_type") == "stream"
                and out[-1].get("name") == o.get("name")):
            out[-1]["text"] = "".join(out[-1]["text"]) + "".join(o["text"])
        else:
            out.append(o)
    return out


def run(name: str, out_dir: str | os.PathLike = "outputs", parameters: dict | None = None,
        kernel: str = KERNEL, progress: bool = False) -> Path:
    """Execute ``notebooks/<name>.ipynb`` into ``<out_dir>/notebooks/<name>.ipynb``; a parameter the
    notebook does not declare is refused (``ValueError``), as the command line refuses one no notebook
    declares. With ``progress``, bars and timings stream to this process's stderr."""
    import papermill

    root = project_root()
    src = root / "notebooks" / f"{Path(name).stem}.ipynb"
    if not src.is_file():
        raise FileNotFoundError(f"no notebook {src.name} in notebooks/")
    known = set(papermill_parameters(src))
    unknown = sorted(set(parameters or {}) - known)
    if unknown:
        raise ValueError(f"notebook {src.stem} has no parameter(s) {', '.join(unknown)}; it takes {', '.join(sorted(known))}")
    out_dir = Path(out_dir) if Path(out_dir).is_absolute() else root / out_dir
    dest = out_dir / "notebooks" / src.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shown = out_dir.relative_to(root) if out_dir.is_relative_to(root) else out_dir
    params = {"output_dir": str(shown), **(parameters or {})}
    os.environ["RECSYS_PROGRESS"] = "1" if progress else "0"
    with tempfile.TemporaryDirectory(prefix="recsys-kernel-") as sockets:
        # the kernel talks to papermill over Unix sockets in a private folder, not plain TCP
        config = Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(sockets, "kernel")}})
        papermill.execute_notebook(str(src), str(dest), parameters=params, kernel_name=kernel, cwd=str(root),
                                   progress_bar=False, log_output=False, stderr_file=sys.stderr if progress else None,
                                   config=config)
    scrub(dest, root)
    return dest


def _value(text: str):
    """A parameter value: JSON when it parses; ``[a,b]`` (JSON whose quotes a shell removed, as in
    ``make run-all NB_ARGS='-p input_files ["a.csv","b.csv"]'``) or ``a,b`` as a list of strings;
    else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    t = text.strip()
    if t.startswith("[") and t.endswith("]"):
        return [x.strip().strip("'\"") for x in t[1:-1].split(",") if x.strip()]
    if "," in t:
        return [x.strip() for x in t.split(",") if x.strip()]
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recsys.runner", description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="notebook names (default: all, in order)")
    ap.add_argument("--out", default="outputs")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="a notebook parameter; VALUE is JSON when it parses (e.g. -p epochs 5)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars or timings on stderr")
    args = ap.parse_args(argv)
    names = args.names or [p.stem for p in notebooks()]
    params = {k: _value(v) for k, v in args.parameter}
    from papermill.exceptions import PapermillExecutionError

    declared = {}
    for path in notebooks():
        if path.stem in names:
            declared[path.stem] = set(papermill_parameters(path))
    unknown = sorted(set(params) - set().union(*declared.values())) if declared else sorted(params)
    if unknown:
        print(f"python -m recsys.runner: error: no notebook has the parameter(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    for name in names:
        print(f"=== {name}", flush=True)
        mine = {k: v for k, v in params.items() if k in declared.get(name, set())}  # each notebook gets its own
        try:
            dest = run(name, args.out, mine, progress=not args.no_progress)
        except PapermillExecutionError as e:  # one line, not papermill's page of traceback
            executed = Path(args.out) / "notebooks" / (name + ".ipynb")
            print(f"{name} failed in cell {e.exec_count}: {e.ename}: {e.evalue} (the full error is in {executed})",
                  file=sys.stderr)
            return 1
        except FileNotFoundError as e:
            print(f"python -m recsys.runner: error: {e}", file=sys.stderr)
            return 2
        print(f"    -> {dest.relative_to(project_root()) if dest.is_relative_to(project_root()) else dest}", flush=True)
    return 0


def papermill_parameters(path: Path) -> dict:
    import papermill

    return papermill.inspect_notebook(str(path))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
