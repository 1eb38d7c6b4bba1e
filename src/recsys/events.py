"""Read REES46 event CSVs: only the needed columns, compact dtypes, malformed rows counted.

The reader streams each file in blocks with pyarrow, converts every block to compact NumPy
arrays and keeps nothing of the raw text, so memory grows with the rows kept, not with the
size of the file. Ids stay integers from text to ``int64`` (``category_id`` has 19 digits and
would lose precision through ``float64``).

A row is *malformed*, skipped and reported (count per file, reason, first line numbers) when

* it has the wrong number of fields (a truncated last line, a stray comma),
* ``user_id``, ``product_id`` or ``category_id`` is missing, not all digits or beyond int64,
* ``event_time`` is not ``YYYY-MM-DD HH:MM:SS UTC`` (the trailing `` UTC`` is optional).

Blank lines are not rows: they are skipped and counted separately. A header that lacks a
required column is an error that names the column and the file. An unparseable ``price``
becomes NaN (price is metadata, not a reason to lose an event).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from pandas.api.types import union_categoricals

from .constants import (
    EVENT_DIGITS,
    ID_COLUMNS,
    KNOWN_EVENT_TYPES,
    OTHER_EVENT_DIGIT,
    READ_COLUMNS,
    TIME_FORMAT,
)
from .progress import progress_bar

#: How many malformed line numbers to keep per file (the count is always complete).
MAX_EXAMPLES = 10
#: Text per streamed block; a block becomes a few tens of thousands of rows.
BLOCK_SIZE = 8 << 20
_INT64_MAX = str(np.iinfo(np.int64).max)


class EventsFormatError(ValueError):
    """The input is not a REES46 events CSV (empty file, missing required column)."""


@dataclasses.dataclass
class FileReport:
    """What reading one file found."""

    path: str
    rows_read: int = 0  # data rows seen (valid + malformed; header and blank lines excluded)
    rows_valid: int = 0
    rows_malformed: int = 0
    blank_lines: int = 0
    malformed_reasons: dict = dataclasses.field(default_factory=dict)
    malformed_examples: list = dataclasses.field(default_factory=list)  # [(line number, reason)]

    def _add_malformed(self, line: int | None, reason: str) -> None:
        self.rows_malformed += 1
        self.malformed_reasons[reason] = self.malformed_reasons.get(reason, 0) + 1
        if len(self.malformed_examples) < MAX_EXAMPLES:
            self.malformed_examples.append((line, reason))


@dataclasses.dataclass
class ReadReport:
    """What reading all files found; ``as_dict()`` is JSON-ready."""

    files: list
    event_type_counts: dict
    #: event types other than the four known ones: encoded as 1 like ``view``, but counted.
    other_event_types: dict

    @property
    def rows_read(self) -> int:
        return sum(f.rows_read for f in self.files)

    @property
    def rows_valid(self) -> int:
        return sum(f.rows_valid for f in self.files)

    @property
    def rows_malformed(self) -> int:
        return sum(f.rows_malformed for f in self.files)

    def as_dict(self) -> dict:
        return {
            "rows_read": self.rows_read,
            "rows_valid": self.rows_valid,
            "rows_malformed": self.rows_malformed,
            "event_type_counts": dict(self.event_type_counts),
            "other_event_types": dict(self.other_event_types),
            "files": [dataclasses.asdict(f) for f in self.files],
        }

    def summary_lines(self) -> list[str]:
        """Human-readable lines, one per file with malformed rows or blank lines."""
        lines = []
        for f in self.files:
            if f.rows_malformed or f.blank_lines:
                shown = ", ".join(f"line {n}: {r}" for n, r in f.malformed_examples)
                lines.append(
                    f"{Path(f.path).name}: {f.rows_malformed} malformed row(s) skipped "
                    f"of {f.rows_read}" + (f"; {f.blank_lines} blank line(s)" if f.blank_lines else "")
                    + (f" [{shown}]" if shown else "")
                )
        if self.other_event_types:
            lines.append(f"unknown event types encoded as {OTHER_EVENT_DIGIT}: {self.other_event_types}")
        return lines


def _open_raw(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_header(path: str | os.PathLike) -> list[str]:
    """The header fields of a (possibly gzipped) CSV; error for an empty file."""
    path = Path(path)
    with _open_raw(path) as raw:
        first = raw.readline()
    if not first.strip():
        raise EventsFormatError(f"{path}: empty file (no header line)")
    return next(csv.reader(io.StringIO(first.decode("utf-8-sig"))))


def check_header(path: str | os.PathLike, header: Sequence[str]) -> None:
    missing = [c for c in READ_COLUMNS if c not in header]
    if missing:
        raise EventsFormatError(
            f"{path}: missing required column(s) {', '.join(repr(c) for c in missing)}; "
            f"header has {list(header)}"
        )


def _valid_id(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """True where the text is 1..19 ASCII digits and fits int64."""
    length = pc.utf8_length(col)
    digits = pc.ascii_is_decimal(col)
    fits = pc.or_(pc.less(length, 19), pc.and_(pc.equal(length, 19), pc.less_equal(col, _INT64_MAX)))
    return pc.fill_null(pc.and_(pc.and_(digits, pc.greater(length, 0)), fits), False)


def _parse_time(col) -> pa.Array:
    """Seconds since the epoch (int64 timestamps); null where unparseable."""
    t = pc.strptime(col, format=TIME_FORMAT, unit="s", error_is_null=True)
    if t.null_count:
        # Accept the same stamp without the " UTC" suffix (files re-saved by other tools).
        alt = pc.strptime(col, format=TIME_FORMAT[:-4], unit="s", error_is_null=True)
        t = pc.coalesce(t, alt)
    return t


def _categorical(col) -> pd.Categorical:
    """Dictionary-encode a text column; empty text is missing (NaN)."""
    col = pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col)
    return pd.Categorical(pc.dictionary_encode(col).to_pandas())


class _Columns:
    """Accumulates compact per-block arrays; concatenated once at the end."""

    def __init__(self) -> None:
        self.ints = {c: [] for c in ("event_time", "product_id", "category_id", "user_id")}
        self.digits: list[np.ndarray] = []
        self.price: list[np.ndarray] = []
        self.cats = {c: [] for c in ("event_type", "category_code", "brand")}

    def add(self, batch: pa.RecordBatch) -> None:
        for c in ("product_id", "category_id", "user_id"):
            self.ints[c].append(pc.cast(batch[c], pa.int64()).to_numpy(zero_copy_only=False))
        self.ints["event_time"].append(
            pc.cast(batch["event_time"], pa.int64()).to_numpy(zero_copy_only=False)
        )
        self.price.append(_to_float32(batch["price"]))
        et = _categorical(batch["event_type"])
        # one extra slot at the end: code -1 (missing event type) maps to OTHER_EVENT_DIGIT
        lut = np.array([EVENT_DIGITS.get(v, OTHER_EVENT_DIGIT) for v in et.categories] + [OTHER_EVENT_DIGIT], np.int8)
        self.digits.append(lut[np.asarray(et.codes)])
        self.cats["event_type"].append(et)
        for c in ("category_code", "brand"):
            self.cats[c].append(_categorical(batch[c]))

    def frame(self) -> pd.DataFrame:
        def cat(parts):
            parts = [p for p in parts if len(p)]
            if not parts:
                return pd.Categorical([], categories=pd.Index([], dtype=object))
            return union_categoricals(parts)

        def ints(parts):
            return np.concatenate(parts) if parts else np.empty(0, np.int64)

        data = {
            "event_time": ints(self.ints["event_time"]).astype("datetime64[s]"),
            "event_type": cat(self.cats["event_type"]),
            "product_id": ints(self.ints["product_id"]),
            "category_id": ints(self.ints["category_id"]),
            "category_code": cat(self.cats["category_code"]),
            "brand": cat(self.cats["brand"]),
            "price": np.concatenate(self.price) if self.price else np.empty(0, np.float32),
            "user_id": ints(self.ints["user_id"]),
            "event_type_digit": np.concatenate(self.digits) if self.digits else np.empty(0, np.int8),
        }
        return pd.DataFrame(data)


def _to_float32(col) -> np.ndarray:
    """Text -> float32; empty or unparseable -> NaN."""
    col = pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col)
    try:
        return pc.cast(col, pa.float32()).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pd.to_numeric(pd.Series(col.to_pylist(), dtype=object), errors="coerce").to_numpy(np.float32)


def _line_of(good_index: int, skipped_sorted: list[int], first_data_line: int = 2) -> int:
    """Physical line number of the ``good_index``-th (0-based) row that pyarrow yielded."""
    line = first_data_line + good_index
    for s in skipped_sorted:
        if s <= line:
            line += 1
        else:
            break
    return line


def _reason(batch: pa.RecordBatch, i: int) -> str:
    row = batch.slice(i, 1).to_pylist()[0]
    for c in ID_COLUMNS:
        if not _valid_id(pa.array([row[c]], pa.string()))[0].as_py():
            return f"bad {c} {row[c]!r}"
    return f"bad event_time {row['event_time']!r}"


def _read_one(path: Path, cols: _Columns, bar) -> FileReport:
    header = read_header(path)
    check_header(path, header)
    report = FileReport(path=str(path))
    skipped: list[int] = []  # physical line numbers pyarrow skipped (bad field count, blank)

    def on_invalid(row) -> str:
        skipped.append(row.number)
        if not row.text.strip():
            report.blank_lines += 1
        else:
            report.rows_read += 1
            report._add_malformed(row.number, f"expected {row.expected_columns} fields, got {row.actual_columns}")
        return "skip"

    raw = pa.OSFile(str(path), "rb")
    stream = pa.CompressedInputStream(raw, "gzip") if path.suffix == ".gz" else raw
    reader = pacsv.open_csv(
        stream,
        read_options=pacsv.ReadOptions(block_size=BLOCK_SIZE, use_threads=False),
        parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid, ignore_empty_lines=False),
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in header},
            include_columns=list(READ_COLUMNS),
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    yielded = 0  # rows pyarrow yielded so far, before the value checks
    last_pos = 0
    for batch in reader:
        n = batch.num_rows
        ok = _valid_id(batch["product_id"])
        for c in ID_COLUMNS[1:]:
            ok = pc.and_(ok, _valid_id(batch[c]))
        times = _parse_time(batch["event_time"])
        ok = pc.and_(ok, pc.is_valid(times))
        n_ok = pc.sum(ok).as_py() or 0
        n_blank = 0
        if n_ok < n:
            # pyarrow yields a blank line as a row of empty fields: a blank line is not a row
            blank = pc.equal(pc.utf8_length(batch["event_time"]), 0)
            for c in READ_COLUMNS[1:]:
                blank = pc.and_(blank, pc.equal(pc.utf8_length(batch[c]), 0))
            blank = blank.to_numpy(zero_copy_only=False)
            n_blank = int(blank.sum())
            skipped_sorted = sorted(skipped)
            for i in np.flatnonzero(~ok.to_numpy(zero_copy_only=False) & ~blank):
                report._add_malformed(_line_of(yielded + int(i), skipped_sorted), _reason(batch, int(i)))
        batch = batch.set_column(batch.schema.get_field_index("event_time"), "event_time", times)
        if n_ok < n:
            batch = batch.filter(ok)
        report.blank_lines += n_blank
        report.rows_read += n - n_blank
        report.rows_valid += batch.num_rows
        yielded += n
        cols.add(batch)
        pos = raw.tell()
        bar.update(pos - last_pos)
        last_pos = pos
    reader.close()
    raw.close()
    report.malformed_examples.sort(key=lambda e: (e[0] is None, e[0]))
    return report


def read_events(paths: str | os.PathLike | Iterable[str | os.PathLike], progress: bool = True):
    """Read one or many REES46 CSV files (``.csv`` or ``.csv.gz``) into one DataFrame.

    Returns ``(events, report)``. ``events`` has, in file order then row order:
    ``event_time`` (datetime64[s]), ``event_type`` (category), ``product_id``,
    ``category_id`` and ``user_id`` (int64), ``category_code`` and ``brand`` (category, NaN
    when empty), ``price`` (float32) and ``event_type_digit`` (int8: the seed's 4/3/2/1).
    ``report`` (:class:`ReadReport`) counts rows read, valid and malformed per file.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no input files given")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"input file not found: {p}")
    cols = _Columns()
    total = sum(p.stat().st_size for p in paths)
    reports = []
    with progress_bar(total=total, unit="B", unit_scale=True, desc="read events", enabled=progress) as bar:
        for p in paths:
            reports.append(_read_one(p, cols, bar))
    events = cols.frame()
    counts = events["event_type"].value_counts(sort=False)
    type_counts = {str(k): int(v) for k, v in counts.items() if v}
    other = {k: v for k, v in type_counts.items() if k not in KNOWN_EVENT_TYPES}
    missing_type = int(events["event_type"].isna().sum())
    if missing_type:
        other[""] = missing_type
    return events, ReadReport(files=reports, event_type_counts=type_counts, other_event_types=other)
