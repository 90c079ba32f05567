"""Reading and atomically writing attempt tables (CSV or Parquet, chosen by file suffix).

Supported suffixes: ``.csv``, ``.csv.gz`` and ``.parquet`` / ``.pq``.

CSV files are read with pyarrow's multi-threaded reader and **every column is read as a
string**: no type guessing (``"03"`` stays ``"03"``, ``"1e5"`` stays text), and an empty field
is a missing value. Typing and checking is the job of :mod:`features.validation`.

Writes go to a temporary file in the destination directory that is then moved into place with
:func:`os.replace`, so a reader never sees a half-written file and a failed write leaves nothing
behind.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import os
import secrets
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

TableFormat = Literal["csv", "csv.gz", "parquet"]

SUPPORTED_SUFFIXES: tuple[str, ...] = (".csv", ".csv.gz", ".parquet", ".pq")


class TableIOError(ValueError):
    """A table cannot be read or written (unknown suffix, missing or unreadable file)."""


def table_format(path: str | Path) -> TableFormat:
    """Return the table format implied by the suffix of ``path``.

    Parameters
    ----------
    path
        File name ending in ``.csv``, ``.csv.gz``, ``.parquet`` or ``.pq`` (case-insensitive).

    Raises
    ------
    TableIOError
        For any other suffix.
    """
    name = Path(path).name.lower()
    if name.endswith(".csv.gz"):
        return "csv.gz"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise TableIOError(
        f"{str(path)!r}: unsupported table format; use one of {', '.join(SUPPORTED_SUFFIXES)}"
    )


def strip_table_suffix(path: str | Path) -> Path:
    """Return ``path`` without its table suffix (``a/attempts.csv.gz`` -> ``a/attempts``)."""
    p = Path(path)
    fmt = table_format(p)
    n = len(".csv.gz") if fmt == "csv.gz" else len(p.suffix)
    return p.with_name(p.name[:-n])


def _csv_header(path: Path, *, compressed: bool) -> list[str]:
    """Read and parse only the header line of a CSV file."""
    opener = gzip.open if compressed else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
        row = next(csv.reader(handle), None)
    if row is None:
        raise TableIOError(f"{str(path)!r}: empty file, expected a header line")
    return row


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet table chosen by the file suffix.

    Parameters
    ----------
    path
        ``.csv``, ``.csv.gz``, ``.parquet`` or ``.pq`` file.

    Returns
    -------
    pandas.DataFrame
        For CSV every column has pandas' default string dtype and empty fields are missing.
        For Parquet the stored types are kept.

    Raises
    ------
    TableIOError
        Unknown suffix, missing file, duplicate CSV header names or a file that cannot be
        parsed; the message names the path.
    """
    p = Path(path)
    fmt = table_format(p)
    if not p.is_file():
        raise TableIOError(f"{str(p)!r}: no such file")
    try:
        if fmt == "parquet":
            table = _read_parquet(p)
        else:
            table = _read_csv_as_strings(p, compressed=fmt == "csv.gz")
    except TableIOError:
        raise
    except (pa.ArrowException, OSError, UnicodeDecodeError, csv.Error, EOFError) as exc:
        raise TableIOError(f"{str(p)!r}: cannot read {fmt} table: {exc}") from exc
    # pandas' string dtype stores large_string; casting first (offsets only) makes the
    # conversion zero-copy instead of a per-column copy.
    fields = [
        field.with_type(pa.large_string()) if pa.types.is_string(field.type) else field
        for field in table.schema
    ]
    table = table.cast(pa.schema(fields, metadata=table.schema.metadata))
    return table.to_pandas()


def _read_parquet(path: Path) -> pa.Table:
    """Read a Parquet file, decoding text columns straight into ``large_string``.

    pandas' string dtype stores ``large_string``; asking the reader for it avoids a second pass
    over every text column (a cast that copies all offsets) after reading.
    """
    stored = pq.read_schema(path)
    if not any(pa.types.is_string(field.type) for field in stored):
        return pq.read_table(path)
    fields = [
        field.with_type(pa.large_string()) if pa.types.is_string(field.type) else field
        for field in stored
    ]
    return pq.read_table(path, schema=pa.schema(fields, metadata=stored.metadata))


def _read_csv_as_strings(path: Path, *, compressed: bool) -> pa.Table:
    header = _csv_header(path, compressed=compressed)
    duplicated = sorted(name for name, count in Counter(header).items() if count > 1)
    if duplicated:
        raise TableIOError(f"{str(path)!r}: duplicate column names in header: {duplicated}")
    convert = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in header},
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )
    source: pa.NativeFile | str = (
        pa.CompressedInputStream(pa.OSFile(str(path)), "gzip") if compressed else str(path)
    )
    return pacsv.read_csv(source, convert_options=convert)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it to ``path`` when the block succeeds.

    The parent directory is created if needed. If the block raises, the temporary file (or
    directory) is removed and ``path`` is left untouched.

    Examples
    --------
    >>> with atomic_path("out/report.json") as tmp:  # doctest: +SKIP
    ...     tmp.write_text("{}")
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for child in sorted(path.rglob("*"), reverse=True):
            if child.is_dir() and not child.is_symlink():
                child.rmdir()
            else:
                child.unlink()
        path.rmdir()
    else:
        path.unlink(missing_ok=True)


_UNITS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def _csv_ready(table: pa.Table) -> pa.Table:
    """Format tz-aware timestamps as ISO 8601 in UTC (``2024-05-01T10:00:00Z``) for CSV."""
    columns = []
    for field, column in zip(table.schema, table.columns, strict=True):
        if pa.types.is_timestamp(field.type) and field.type.tz is not None:
            utc = pc.cast(column, pa.timestamp(field.type.unit, tz="UTC"))
            ticks = pc.fill_null(pc.cast(utc, pa.int64()), 0).to_numpy()
            if not np.any(ticks % _UNITS_PER_SECOND[field.type.unit]):
                utc = pc.cast(utc, pa.timestamp("s", tz="UTC"))  # no fractional seconds
            text = pc.cast(utc, pa.string())  # "2024-05-01 10:00:00Z"
            column = pc.utf8_replace_slice(text, start=10, stop=11, replacement="T")
        columns.append(column)
    return pa.table(columns, names=table.column_names)


def write_table_atomic(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` as CSV or Parquet (by suffix of ``path``) atomically.

    The index is not written. In CSV, missing values are empty fields and tz-aware timestamps
    are written as ISO 8601 in UTC (``2024-05-01T10:00:00Z``, with fractional seconds only when
    present).

    Parameters
    ----------
    df
        The table.
    path
        Destination ending in ``.csv``, ``.csv.gz``, ``.parquet`` or ``.pq``.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    TableIOError
        Unknown suffix or a frame that cannot be converted; nothing is written.
    """
    final = Path(path)
    fmt = table_format(final)
    try:
        table = pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise TableIOError(f"{str(final)!r}: cannot convert the table for writing: {exc}") from exc
    with atomic_path(final) as tmp:
        if fmt == "parquet":
            pq.write_table(table, tmp)
        else:
            options = pacsv.WriteOptions(quoting_style="needed")
            if fmt == "csv.gz":
                with pa.CompressedOutputStream(str(tmp), "gzip") as sink:
                    pacsv.write_csv(_csv_ready(table), sink, write_options=options)
            else:
                pacsv.write_csv(_csv_ready(table), str(tmp), write_options=options)
    return final
