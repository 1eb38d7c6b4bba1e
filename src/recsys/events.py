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
import zlib
import io
import os
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

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
    RAW_COLUMNS,
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

    def summary_lines(self) -> List[str]:
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


def read_header(path: str | os.PathLike) -> List[str]:
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


def _empty_as_null(col):
    return pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col)


def _dictionary(col):
    """A text or dictionary column as an Arrow dictionary array; empty text is missing."""
    return col if pa.types.is_dictionary(col.type) else pc.dictionary_encode(_empty_as_null(col))


def _categorical(col) -> pd.Categorical:
    """A text or dictionary column as a pandas Categorical; empty text is missing (NaN)."""
    return pd.Categorical(_dictionary(col).to_pandas())


def _int64(col) -> np.ndarray:
    return pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False)


def _to_float32(col) -> np.ndarray:
    """Text or number -> float32; empty or unparseable -> NaN."""
    if pa.types.is_string(col.type):
        col = _empty_as_null(col)
    try:
        return pc.cast(col, pa.float32()).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pd.to_numeric(pd.Series(col.to_pylist(), dtype=object), errors="coerce").to_numpy(np.float32)


_CAT_COLUMNS = ("event_type", "category_code", "brand")


@dataclasses.dataclass
class Catalogue:
    """Side tables of the events that the model does not train on.

    ``products``: one row per product, its last seen ``category_id``, ``category_code``,
    ``brand`` and ``price``; ``purchases``: ``user_id`` and ``price`` of every purchase event.
    """

    products: pd.DataFrame
    purchases: pd.DataFrame

    @classmethod
    def from_events(cls, events: pd.DataFrame) -> "Catalogue":
        products = events[list(_META_COLUMNS)].drop_duplicates("product_id", keep="last")
        buys = events["event_type_digit"].to_numpy() == EVENT_DIGITS["purchase"]
        return cls(products=products.reset_index(drop=True),
                   purchases=events.loc[buys, ["user_id", "price"]].reset_index(drop=True))


_META_COLUMNS = ("product_id", "category_id", "category_code", "brand", "price")
#: Columns of a lean read (``read_events(..., lean=True)``): what training needs, per row.
LEAN_COLUMNS = ("event_time", "product_id", "user_id", "event_type_digit")
_COLLAPSE_ROWS = 1_000_000


class _Columns:
    """Accumulates compact per-block arrays (no text is kept); concatenated once at the end.

    ``lean``: keep only :data:`LEAN_COLUMNS` per row, and fold the product attributes and the
    purchases into a :class:`Catalogue` as blocks arrive, so memory per kept row is 25 bytes.
    """

    def __init__(self, lean: bool = False) -> None:
        self.lean = lean
        per_row = ("event_time", "product_id", "user_id", "digit") + (() if lean else ("category_id", "price", *_CAT_COLUMNS))
        self.parts: Dict[str, list] = {c: [] for c in per_row}
        self.type_counts: Dict[str, int] = {}
        self.meta: List[pa.Table] = []
        self.meta_rows = 0
        self.buys: List[pd.DataFrame] = []

    def mark(self):
        return {k: len(v) for k, v in self.parts.items()}, len(self.meta), len(self.buys), dict(self.type_counts)

    def rollback(self, mark) -> None:
        lengths, n_meta, n_buys, counts = mark
        for k, parts in self.parts.items():
            del parts[lengths[k]:]
        del self.meta[n_meta:]
        del self.buys[n_buys:]
        self.meta_rows = sum(len(m) for m in self.meta)
        self.type_counts = counts

    def add(self, batch: pa.RecordBatch) -> None:
        """``batch`` has valid rows only; ids int64 or digit text, ``event_time`` a timestamp."""
        for c in ("event_time", "product_id", "user_id"):
            self.parts[c].append(_int64(batch[c]))
        et = _dictionary(batch["event_type"])
        names = et.dictionary.to_pylist()
        # one extra slot at the end: a missing event type maps to OTHER_EVENT_DIGIT
        codes = pc.fill_null(et.indices, len(names)).to_numpy(zero_copy_only=False)
        lut = np.array([EVENT_DIGITS.get(v, OTHER_EVENT_DIGIT) for v in names] + [OTHER_EVENT_DIGIT], np.int8)
        digit = lut[codes]
        self.parts["digit"].append(digit)
        for name, n in zip([*names, ""], np.bincount(codes, minlength=len(names) + 1)):
            if n:
                self.type_counts[name] = self.type_counts.get(name, 0) + int(n)
        if not self.lean:
            self.parts["event_type"].append(_categorical(et))
            self.parts["category_id"].append(_int64(batch["category_id"]))
            self.parts["price"].append(_to_float32(batch["price"]))
            for c in _CAT_COLUMNS[1:]:
                self.parts[c].append(_categorical(batch[c]))
            return
        pid = self.parts["product_id"][-1]
        last = pa.array(~pd.Series(pid).duplicated(keep="last").to_numpy())
        price = _to_float32(batch["price"])
        meta = pa.table({c: batch[c] for c in _META_COLUMNS}).filter(last)  # stays Arrow until the end
        self.meta.append(meta)
        self.meta_rows += meta.num_rows
        if self.meta_rows > _COLLAPSE_ROWS:
            self.meta = [self._last_per_product()]
            self.meta_rows = self.meta[0].num_rows
        buys = digit == EVENT_DIGITS["purchase"]
        if buys.any():
            self.buys.append(pd.DataFrame({"user_id": self.parts["user_id"][-1][buys], "price": price[buys]}))

    def _last_per_product(self) -> pa.Table:
        table = pa.concat_tables(self.meta, promote_options="permissive").combine_chunks()
        pid = pc.cast(table["product_id"], pa.int64()).to_numpy()
        return table.filter(pa.array(~pd.Series(pid).duplicated(keep="last").to_numpy()))

    def _products(self) -> pd.DataFrame:
        if not self.meta:
            return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(_META_COLUMNS, ("int64", "int64", "object", "object", "float32"))})
        table = self._last_per_product()
        df = pd.DataFrame({
            "product_id": _int64(table["product_id"]),
            "category_id": _int64(table["category_id"]),
            "category_code": np.asarray(_categorical(table["category_code"].combine_chunks()), dtype=object),
            "brand": np.asarray(_categorical(table["brand"].combine_chunks()), dtype=object),
            "price": _to_float32(table["price"].combine_chunks()),
        })
        return df

    def catalogue(self) -> Catalogue:
        buys = pd.concat(self.buys, ignore_index=True) if self.buys else pd.DataFrame(
            {"user_id": pd.Series(dtype="int64"), "price": pd.Series(dtype="float32")})
        return Catalogue(products=self._products(), purchases=buys)

    def _take(self, name: str, dtype) -> np.ndarray:
        """Concatenate one column and free its parts (peak: parts + one column, not all)."""
        parts = self.parts.pop(name)
        out = np.concatenate(parts) if parts else np.empty(0, dtype)
        parts.clear()
        return out

    def frame(self) -> pd.DataFrame:
        def cat(name):
            parts = [p for p in self.parts.pop(name) if len(p)]
            if not parts:
                return pd.Categorical([], categories=pd.Index([], dtype=object))
            return union_categoricals(parts)

        data = {"event_time": self._take("event_time", np.int64).view("datetime64[s]")}
        if not self.lean:
            data["event_type"] = cat("event_type")
        data["product_id"] = self._take("product_id", np.int64)
        if not self.lean:
            data["category_id"] = self._take("category_id", np.int64)
            data["category_code"] = cat("category_code")
            data["brand"] = cat("brand")
            data["price"] = self._take("price", np.float32)
        data["user_id"] = self._take("user_id", np.int64)
        data["event_type_digit"] = self._take("digit", np.int8)
        return pd.DataFrame(data, copy=False)


def _line_of(good_index: int, skipped_sorted: List[int], first_data_line: int = 2) -> int:
    """Physical line number of the ``good_index``-th (0-based) row that pyarrow yielded."""
    line = first_data_line + good_index
    for s in skipped_sorted:
        if s <= line:
            line += 1
        else:
            break
    return line


def _invalid_utf8(batch: pa.RecordBatch):
    """``None`` when every text value is valid UTF-8 (the usual case, checked in C); else the batch with
    the invalid values emptied and a ``(rows, READ_COLUMNS)`` boolean array marking them."""
    bad = np.zeros((batch.num_rows, len(READ_COLUMNS)), bool)
    columns = {}
    for j, c in enumerate(READ_COLUMNS):
        col = batch[c]
        try:
            col.validate(full=True)
            continue
        except pa.ArrowInvalid:
            pass
        values = col.cast(pa.binary()).to_pylist()
        for i, v in enumerate(values):
            if v is not None:
                try:
                    v.decode("utf-8")
                except UnicodeDecodeError:
                    bad[i, j] = True
        columns[c] = pc.if_else(pa.array(bad[:, j]), pa.scalar("", pa.string()),
                                pa.array([b"" if bad[i, j] else v for i, v in enumerate(values)], pa.binary()).cast(pa.string()))
    if not columns:
        return None
    for c, col in columns.items():
        batch = batch.set_column(batch.schema.get_field_index(c), c, col)
    return batch, bad


def _reason(batch: pa.RecordBatch, i: int) -> str:
    row = batch.slice(i, 1).to_pylist()[0]
    for c in ID_COLUMNS:
        v = row[c]
        if v is None or (isinstance(v, int) and v < 0) or (isinstance(v, str) and not _valid_id(pa.array([v]))[0].as_py()):
            return f"bad {c} {v if v is not None else ''!r}"
    return f"bad event_time {row['event_time'] if row['event_time'] is not None else ''!r}"


class _Retry(Exception):
    """This pass cannot finish the file faithfully: re-read it with the next, slower pass."""


def _read_one(path: Path, cols: _Columns, bar) -> FileReport:
    """Read one file into ``cols``, retrying with a slower pass when the fast one cannot
    report malformed rows faithfully (clean files, the usual case, are read once).

    Passes, fastest first: "threaded" (pyarrow converts the values itself on all cores, but
    its invalid-row handler gets no line numbers then, so any malformed row sends the file to)
    "typed" (the same on one thread, line numbers known); a value that does not convert
    (letters in an id, a malformed time) sends the file to "text", which validates every value.
    """
    try:
        header = read_header(path)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:  # BadGzipFile is an OSError
        raise EventsFormatError(f"{path}: not a readable {'gzip-compressed ' if path.suffix == '.gz' else ''}"
                                f"CSV file ({e})") from None
    check_header(path, header)
    mark, shown = cols.mark(), bar.n
    mode = "threaded"
    while True:
        try:
            return _read_pass(path, header, cols, bar, mode)
        except (OSError, EOFError, zlib.error) as e:  # e.g. "Truncated compressed stream"
            raise EventsFormatError(f"{path}: the file is damaged or cut short ({e}); nothing was prepared") from None
        except _Retry as retry:
            cols.rollback(mark)
            bar.n = shown
            mode = str(retry)


def _read_pass(path: Path, header, cols: _Columns, bar, mode: str) -> FileReport:
    typed = mode != "text"
    threaded = mode == "threaded"
    report = FileReport(path=str(path))
    skipped: List[int] = []  # physical line numbers pyarrow skipped (bad field count, blank)

    def on_invalid(row) -> str:
        skipped.append(row.number)
        if not row.text.strip():
            report.blank_lines += 1
        else:
            report.rows_read += 1
            report._add_malformed(row.number, f"expected {row.expected_columns} fields, got {row.actual_columns}")
        return "skip"

    types = {c: pa.string() for c in header}
    if typed:
        dictionary = pa.dictionary(pa.int32(), pa.string())
        types.update({c: pa.int64() for c in ID_COLUMNS}, event_time=pa.timestamp("s"), price=pa.float32(),
                     # a lean read keeps these only for one row per product: plain text is cheaper
                     **{c: pa.string() if cols.lean and c != "event_type" else dictionary for c in _CAT_COLUMNS})
    raw = pa.OSFile(str(path), "rb")
    stream = pa.CompressedInputStream(raw, "gzip") if path.suffix == ".gz" else raw

    def arrow_error(e: pa.ArrowInvalid):
        if typed and "conversion error" in str(e):
            return _Retry("text")
        return EventsFormatError(f"{path}: {e}")

    try:  # open_csv already reads and converts the first block
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(block_size=BLOCK_SIZE, use_threads=threaded),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid, ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(
                column_types=types,
                include_columns=list(READ_COLUMNS),
                strings_can_be_null=typed,
                quoted_strings_can_be_null=typed,
                timestamp_parsers=[TIME_FORMAT, TIME_FORMAT[:-4]],
                # the text pass checks UTF-8 per row (a Latin-1 byte makes one row malformed, not the file)
                check_utf8=typed,
            ),
        )
    except pa.ArrowInvalid as e:
        raw.close()
        raise arrow_error(e) from None
    yielded = 0  # rows pyarrow yielded so far, before the value checks
    last_pos = 0
    try:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as e:
                raise arrow_error(e) from None
            n = batch.num_rows
            bad_text = None if typed else _invalid_utf8(batch)
            if bad_text is not None:
                batch, bad_text = bad_text
            if typed:
                ok = pc.is_valid(batch["event_time"])
                for c in ID_COLUMNS:
                    ok = pc.and_(ok, pc.fill_null(pc.greater_equal(batch[c], 0), False))
                # a blank line arrives as a row of nulls
                blank_cols = [pc.is_null(batch[c]) for c in READ_COLUMNS if c != "event_type"]
            else:
                ok = _valid_id(batch["product_id"])
                for c in ID_COLUMNS[1:]:
                    ok = pc.and_(ok, _valid_id(batch[c]))
                times = _parse_time(batch["event_time"])
                ok = pc.and_(ok, pc.is_valid(times))
                if bad_text is not None:
                    ok = pc.and_(ok, pa.array(~bad_text.any(axis=1)))
                # a blank line arrives as a row of empty fields
                blank_cols = [pc.equal(pc.utf8_length(batch[c]), 0) for c in READ_COLUMNS]
            n_ok = pc.sum(ok).as_py() or 0
            if threaded and (skipped or n_ok < n):
                raise _Retry("typed")
            n_blank = 0
            if n_ok < n:
                blank = blank_cols[0]
                for b in blank_cols[1:]:
                    blank = pc.and_(blank, b)
                blank = pc.fill_null(blank, False).to_numpy(zero_copy_only=False)
                n_blank = int(blank.sum())
                skipped_sorted = sorted(skipped)
                for i in np.flatnonzero(~ok.to_numpy(zero_copy_only=False) & ~blank):
                    if bad_text is not None and bad_text[i].any():
                        c = READ_COLUMNS[int(np.flatnonzero(bad_text[i])[0])]
                        reason = f"invalid UTF-8 in column {c} (field {RAW_COLUMNS.index(c) + 1})"
                    else:
                        reason = _reason(batch, int(i))
                    report._add_malformed(_line_of(yielded + int(i), skipped_sorted), reason)
            if not typed:
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
    finally:
        reader.close()
        raw.close()
    report.malformed_examples.sort(key=lambda e: (e[0] is None, e[0]))
    return report


def read_events(paths: str | os.PathLike | Iterable[str | os.PathLike], progress: bool = True,
                lean: bool = False):
    """Read one or many REES46 CSV files (``.csv`` or ``.csv.gz``) into one DataFrame.

    Returns ``(events, report)``. ``events`` has, in file order then row order:
    ``event_time`` (datetime64[s]), ``event_type`` (category), ``product_id``,
    ``category_id`` and ``user_id`` (int64), ``category_code`` and ``brand`` (category, NaN
    when empty), ``price`` (float32) and ``event_type_digit`` (int8: the seed's 4/3/2/1).
    ``report`` (:class:`ReadReport`) counts rows read, valid and malformed per file.

    ``lean=True`` keeps only :data:`LEAN_COLUMNS` per row (25 bytes a row: what the full
    Kaggle files need to fit in memory) and returns ``(events, report, catalogue)`` with the
    product attributes and purchases folded into a :class:`Catalogue` while reading.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no input files given")
    for p in paths:
        if p.is_dir():
            raise EventsFormatError(f"{p} is a directory: give the CSV files in it, e.g. {p}/*.csv.gz")
        if not p.is_file():
            raise FileNotFoundError(f"input file not found: {p}")
    cols = _Columns(lean=lean)
    total = sum(p.stat().st_size for p in paths)
    reports = []
    with progress_bar(total=total, unit="B", unit_scale=True, desc="read events", enabled=progress) as bar:
        for p in paths:
            reports.append(_read_one(p, cols, bar))
    type_counts = dict(sorted(cols.type_counts.items()))
    other = {k: v for k, v in type_counts.items() if k not in KNOWN_EVENT_TYPES}
    report = ReadReport(files=reports, event_type_counts={k: v for k, v in type_counts.items() if k}, other_event_types=other)
    catalogue = cols.catalogue() if lean else None
    events = cols.frame()
    return (events, report, catalogue) if lean else (events, report)
