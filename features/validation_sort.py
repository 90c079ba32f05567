"""Row order and duplicates of :mod:`features.validation`: text as integer keys.

Internal to validation. Identifier columns are compared as order-preserving integer keys
(:func:`text_keys`) wherever they fit, which is much faster than sorting or hashing strings; an
arrow path handles the rest.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from retryopt.features.validation_columns import np_bool

MAX_KEY_BYTES = 32
"""Widest text (in UTF-8 bytes) turned into integer sort/hash keys; wider text uses arrow."""


def text_keys(arr: pa.Array | pa.ChunkedArray) -> list[np.ndarray] | None:
    """Order-preserving integer keys of a ``large_string`` column, most significant first.

    The UTF-8 bytes of each value, zero-padded to the longest value, are packed big-endian into
    ``uint64`` words (byte positions that hold the same byte in every row are skipped: they never
    decide an order); a final length key breaks ties between values that differ only by trailing
    NUL bytes. Comparing the key tuples lexicographically is comparing the strings byte by byte
    (arrow's string order). Nulls get the keys of ``""``. ``None`` when a value is longer than
    :data:`MAX_KEY_BYTES` bytes.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], pa.large_string())
    n = len(arr)
    if n == 0:
        return [np.zeros(0, dtype=np.uint64)]
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset : arr.offset + n + 1]
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    if arr.null_count:  # a null slot may span bytes: treat it as ""
        lengths = np.where(np_bool(arr.is_valid()), lengths, 0)
    width = int(lengths.max())
    if width > MAX_KEY_BYTES:
        return None
    data = (
        np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(1, np.uint8)
    )
    uniform = bool(np.all(lengths == width))  # then the values are back to back
    if uniform:
        block = data[int(starts[0]) : int(starts[0]) + n * width].reshape(n, width)
        varies = np.flatnonzero(~np.all(block == block[:1], axis=0))
        columns = [block[:, j] for j in varies]
    else:
        columns = []
        for j in range(width):
            present = lengths > j
            byte = np.where(present, data[np.where(present, starts + j, 0)], np.uint8(0))
            if not np.all(byte == byte[0]):
                columns.append(byte)
    n_words = -(-len(columns) // 8)
    packed = np.zeros((n, 8 * n_words), dtype=np.uint8)
    for j, byte in enumerate(columns):
        packed[:, j] = byte
    words = packed.view(">u8")  # big-endian: the first byte is the most significant
    keys = [words[:, i].astype(np.uint64) for i in range(n_words)]
    if not uniform and not np.all(lengths == lengths[0]):
        keys.append(lengths.astype(np.uint64))
    return keys or [np.zeros(n, dtype=np.uint64)]


def duplicates(ids: pa.Array | pa.ChunkedArray, n: int) -> np.ndarray:
    """Mask of rows whose (present) id occurred in an earlier row."""
    duplicate = np.zeros(n, dtype=bool)
    keys = text_keys(ids)
    if keys is None:
        counts = pc.value_counts(ids)
        repeated = counts.field("values").filter(
            pc.and_(pc.greater(counts.field("counts"), 1), pc.is_valid(counts.field("values")))
        )
        if len(repeated) == 0:
            return duplicate
        rows = np.flatnonzero(np_bool(pc.is_in(ids, value_set=repeated)))
    else:
        # One 64-bit hash per id (exact when the id fits one key word); the few rows whose
        # hash repeats are compared as text below.
        hashed = keys[0].copy()
        for key in keys[1:]:
            hashed = (hashed * np.uint64(0x9E3779B97F4A7C15)) ^ key
        present = np.flatnonzero(~np.asarray(ids.is_null().to_numpy(zero_copy_only=False)))
        hashed = hashed[present]
        by_hash = np.argsort(hashed)  # sorting beats a hash table on 64-bit keys here
        equal = hashed[by_hash[1:]] == hashed[by_hash[:-1]]
        repeats = np.zeros(present.size, dtype=bool)
        repeats[by_hash[1:][equal]] = True
        repeats[by_hash[:-1][equal]] = True
        rows = present[repeats]
    if rows.size == 0:
        return duplicate
    # Only the few rows holding a repeated id: keep each id's first occurrence.
    later = pd.Series(ids.take(pa.array(rows)).to_pylist()).duplicated(keep="first").to_numpy()
    duplicate[rows[later]] = True
    return duplicate


def sort_order(
    charge: pa.ChunkedArray, ts_ns: np.ndarray, attempt: pa.ChunkedArray, sortable: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Positions of the ``sortable`` rows ordered by (charge_id, attempted_at, attempt_id).

    Strings compare in code-point (UTF-8 byte) order; missing attempt ids sort last; the sort
    is stable, so rows equal on all three keys keep their input order. Also returns the charge
    group number of each ordered row when it falls out of the sort (else ``None``).

    Charge ids are sorted as integer keys (:func:`text_keys`) with the time by a stable
    ``numpy.lexsort``; only the rows tied on (charge, time) are then ordered by attempt id.
    """
    if not sortable.any():
        return np.zeros(0, dtype=np.int64), None
    keys = text_keys(charge)
    if keys is None:
        table = pa.table({"c": charge, "t": ts_ns, "a": attempt})
        order = pc.sort_indices(
            table,
            sort_keys=[("c", "ascending"), ("t", "ascending"), ("a", "ascending")],
        )  # nulls (missing attempt ids) are placed at the end by default
        positions = np.asarray(order.to_numpy(), dtype=np.int64)
        return positions[sortable[positions]], None
    rows = np.flatnonzero(sortable)
    sub_keys = [key[rows] for key in keys]
    times = ts_ns[rows]
    local = np.lexsort([times, *reversed(sub_keys)])  # stable; last key is the primary one
    positions = rows[local]
    same_charge = np.ones(max(positions.size - 1, 0), dtype=bool)
    for key in sub_keys:
        ordered = key[local]
        same_charge &= ordered[1:] == ordered[:-1]
    ordered_times = times[local]
    tie = same_charge & (ordered_times[1:] == ordered_times[:-1])
    if tie.any():
        # Runs of rows equal on (charge, time): order each run by attempt id (stable, nulls last).
        tied_before = np.r_[False, tie]
        in_run = tied_before | np.r_[tie, False]
        slots = np.flatnonzero(in_run)
        run = np.cumsum(~tied_before[slots])
        ties = pa.table({"r": run, "a": attempt.take(pa.array(positions[slots]))})
        within = pc.sort_indices(ties, sort_keys=[("r", "ascending"), ("a", "ascending")])
        positions[slots] = positions[slots][np.asarray(within.to_numpy(), dtype=np.int64)]
    group = np.cumsum(np.r_[True, ~same_charge], dtype=np.int64)
    return positions, group


def group_ids(sorted_keys: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Group number per row of a sorted, null-free column (a new group where the value changes)."""
    n = len(sorted_keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    same = np_bool(pc.equal(sorted_keys.slice(1), sorted_keys.slice(0, n - 1)))
    return np.cumsum(np.r_[True, ~same], dtype=np.int64)


def in_order(values: Any, rows: np.ndarray, keep: np.ndarray | None, *, identity: bool) -> Any:
    """``values`` at ``rows`` (ascending positions selected by mask ``keep`` when monotonic)."""
    if identity:
        return values
    if isinstance(values, np.ndarray):
        return values[rows]
    if keep is not None:
        return values.filter(pa.array(keep))
    return values.take(pa.array(rows, type=pa.int64()))
