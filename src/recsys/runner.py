"""Run the lab's notebooks with papermill, the kit's kernel and the project root as working
directory, then scrub what would differ between runs or machines (timestamps, durations,
absolute paths) from the executed copies.

``python -m recsys.runner [NAME ...] [--out outputs] [-p key value ...]`` (``make run-all``).
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
    """Remove timestamps and absolute paths from an executed notebook, in place."""
    root = root or project_root()
    nb = nbformat.read(path, as_version=4)
    for key in _VOLATILE:
        nb.metadata.get("papermill", {}).pop(key, None)
    prefix = re.compile(re.escape(str(root)) + r"/?")
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        for key in _VOLATILE:
            cell.metadata.get("papermill", {}).pop(key, None)
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = prefix.sub("", out["text"])
            for mime, value in out.get("data", {}).items():
                if mime.startswith("text/") and isinstance(value, str):
                    out["data"][mime] = prefix.sub("", value)
    nbformat.write(nb, path)


def run(name: str, out_dir: str | os.PathLike = "outputs", parameters: dict | None = None,
        kernel: str = KERNEL, progress: bool = False) -> Path:
    """Execute ``notebooks/<name>.ipynb`` into ``<out_dir>/notebooks/<name>.ipynb``."""
    import papermill

    root = project_root()
    src = root / "notebooks" / f"{Path(name).stem}.ipynb"
    if not src.is_file():
        raise FileNotFoundError(f"no notebook {src.name} in notebooks/")
    out_dir = Path(out_dir) if Path(out_dir).is_absolute() else root / out_dir
    dest = out_dir / "notebooks" / src.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shown = out_dir.relative_to(root) if out_dir.is_relative_to(root) else out_dir
    params = {"output_dir": str(shown), **(parameters or {})}
    os.environ["RECSYS_PROGRESS"] = "1" if progress else "0"  # bars carry timings: keep them out
    known = set(papermill_parameters(src))
    params = {k: v for k, v in params.items() if k in known}  # NB_ARGS go to the notebooks that declare them
    with tempfile.TemporaryDirectory(prefix="recsys-kernel-") as sockets:
        # the kernel talks to papermill over Unix sockets in a private folder, not plain TCP
        config = Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(sockets, "kernel")}})
        papermill.execute_notebook(str(src), str(dest), parameters=params, kernel_name=kernel, cwd=str(root),
                                   progress_bar=False, log_output=True, config=config)
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
    args = ap.parse_args(argv)
    names = args.names or [p.stem for p in notebooks()]
    params = {k: _value(v) for k, v in args.parameter}
    from papermill.exceptions import PapermillExecutionError

    declared = set()
    for path in notebooks():
        if path.stem in names:
            declared |= set(papermill_parameters(path))
    unknown = sorted(set(params) - declared)
    if unknown:
        print(f"python -m recsys.runner: error: no notebook has the parameter(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    for name in names:
        print(f"=== {name}", flush=True)
        try:
            dest = run(name, args.out, params)
        except PapermillExecutionError as e:  # one line, not papermill's page of traceback
            print(f"{name} failed in cell {e.exec_count}: {e.ename}: {e.evalue}", file=sys.stderr)
            print(f"    the executed notebook, with the full error: {Path(args.out) / 'notebooks' / (name + '.ipynb')}",
                  file=sys.stderr)
            return 1
        except FileNotFoundError as e:
            print(f"python -m recsys.runner: error: {e}", file=sys.stderr)
            return 2
        print(f"    -> {dest.relative_to(project_root()) if dest.is_relative_to(project_root()) else dest}")
    return 0


def papermill_parameters(path: Path) -> dict:
    import papermill

    return papermill.inspect_notebook(str(path))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
