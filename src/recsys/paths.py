"""Where things are: the project root, so that notebooks resolve the same relative paths
whether they run from ``notebooks/`` (Jupyter) or from the root (papermill, ``make run-all``)."""

from __future__ import annotations

import os
from pathlib import Path


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The nearest folder, from ``start`` (default: the working directory) upwards, that holds
    this kit's ``pyproject.toml``; the working directory when there is none."""
    here = Path(start or os.getcwd()).resolve()
    for d in (here, *here.parents):
        p = d / "pyproject.toml"
        if p.is_file() and 'name = "recsys"' in p.read_text(errors="ignore"):
            return d
    return here


def resolve(path: str | os.PathLike, root: Path | None = None) -> Path:
    """``path`` as given when absolute, else relative to the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (root or project_root()) / p


def display(path: str | os.PathLike, root: Path | None = None) -> str:
    """A path relative to the project root for printing (no machine-specific prefixes)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(root or project_root()))
    except ValueError:
        return p.name


def input_paths(value, root: Path | None = None, name: str = "input_files") -> list:
    """A notebook's list of input files, resolved; a plain string (a shell that ate the JSON quotes,
    a single path) is refused with one line saying how to pass a list."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of file paths, not {value!r}: pass "
                         f"-p {name} '[\"a.csv\", \"b.csv\"]' (JSON) or -p {name} a.csv,b.csv")
    if not value:
        raise ValueError(f"{name} is empty: give at least one REES46 CSV file")
    return [resolve(str(f), root) for f in value]
