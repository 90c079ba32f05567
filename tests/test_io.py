"""Reading and atomic writing of attempt tables (features.io)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest

from retryopt.features import contract as c
from retryopt.features.io import (
    TableIOError,
    atomic_path,
    read_table,
    strip_table_suffix,
    table_format,
    write_table_atomic,
)
from retryopt.features.validation import ContractError, load_attempts, validate_attempts

CSV_TEXT = (
    "attempt_id,charge_id,customer_id,attempted_at,amount,currency,outcome,decline_code,"
    "network_advice_code,card_brand,card_funding,card_country,card_added_at,card_exp_month,"
    "card_exp_year\n"
    "at_1,ch_1,cus_1,2024-05-01T10:00:00Z,1999,usd,failed,51,03,visa,debit,US,"
    "2023-01-01T00:00:00Z,01,2027\n"
    'at_2,ch_1,cus_1,2024-05-03T10:00:00.5+02:00,1999,usd,succeeded,,"",visa,debit,US,'
    "2023-01-01T00:00:00Z,1,2027\n"
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_csv_is_read_as_strings_without_type_guessing(tmp_path: Path) -> None:
    df = read_table(_write(tmp_path / "a.csv", CSV_TEXT))
    assert list(df.columns)[:3] == ["attempt_id", "charge_id", "customer_id"]
    assert all(df[col].dtype == "str" for col in df.columns)
    assert df.loc[0, "network_advice_code"] == "03"  # leading zero kept
    assert df.loc[0, "decline_code"] == "51"
    assert df.loc[0, "card_exp_month"] == "01"
    assert df["decline_code"].isna().iloc[1]  # empty field -> missing
    assert df["network_advice_code"].isna().iloc[1]  # quoted empty field -> missing


def test_gzipped_csv_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "a.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\ufeff" + CSV_TEXT)
    df = read_table(path)
    assert df.columns[0] == "attempt_id"
    assert len(df) == 2


def test_unknown_suffix_missing_file_and_garbage_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(TableIOError, match=r"a\.xlsx.*unsupported"):
        read_table(tmp_path / "a.xlsx")
    with pytest.raises(TableIOError, match=r"nope\.csv.*no such file"):
        read_table(tmp_path / "nope.csv")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"this is not parquet")
    with pytest.raises(TableIOError, match=r"bad\.parquet"):
        read_table(bad)
    ragged = _write(tmp_path / "ragged.csv", "a,b\n1,2\n3\n")
    with pytest.raises(TableIOError, match=r"ragged\.csv"):
        read_table(ragged)
    empty = _write(tmp_path / "empty.csv", "")
    with pytest.raises(TableIOError, match=r"empty\.csv.*empty"):
        read_table(empty)


def test_duplicate_csv_header_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(TableIOError, match=r"duplicate column names.*'amount'"):
        read_table(_write(tmp_path / "d.csv", "amount,amount\n1,2\n"))


def test_table_format_and_suffix_stripping() -> None:
    assert table_format("x/A.CSV") == "csv"
    assert table_format("x/a.csv.gz") == "csv.gz"
    assert table_format("a.pq") == table_format("a.parquet") == "parquet"
    assert strip_table_suffix("d/attempts.csv.gz") == Path("d/attempts")
    assert strip_table_suffix("attempts.parquet") == Path("attempts")


@pytest.mark.parametrize("name", ["out.parquet", "out.csv", "out.csv.gz"])
def test_canonical_round_trip(tmp_path: Path, name: str) -> None:
    canonical = validate_attempts(read_table(_write(tmp_path / "in.csv", CSV_TEXT))).clean
    path = write_table_atomic(canonical, tmp_path / name)
    assert _files(tmp_path) == sorted(["in.csv", name])
    again = validate_attempts(read_table(path)).clean
    pd.testing.assert_frame_equal(again, canonical)
    assert again.loc[1, c.ATTEMPTED_AT] == pd.Timestamp("2024-05-03T08:00:00.5Z")


def test_csv_timestamps_are_iso_8601_utc(tmp_path: Path) -> None:
    canonical = validate_attempts(read_table(_write(tmp_path / "in.csv", CSV_TEXT))).clean
    text = write_table_atomic(canonical.iloc[:1], tmp_path / "o.csv").read_text()
    assert "2024-05-01T10:00:00Z" in text
    assert "2023-01-01T00:00:00Z" in text


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "keep.parquet").write_bytes(b"old")
    bad = pd.DataFrame({"x": [object(), object()]})  # not convertible to arrow
    with pytest.raises(TableIOError):
        write_table_atomic(bad, tmp_path / "keep.parquet")
    assert _files(tmp_path) == ["keep.parquet"]
    assert (tmp_path / "keep.parquet").read_bytes() == b"old"


def test_atomic_path_removes_temp_on_error_and_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        assert tmp.parent == tmp_path
        raise RuntimeError("boom")
    assert _files(tmp_path) == ["report.json"]
    assert target.read_text() == "old"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert _files(tmp_path) == ["report.json"]


def test_atomic_path_creates_parent_directories(tmp_path: Path) -> None:
    path = write_table_atomic(pd.DataFrame({"a": [1]}), tmp_path / "x" / "y" / "t.parquet")
    assert path.is_file()


def test_load_attempts_returns_canonical_or_names_the_file(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.csv", CSV_TEXT)
    assert tuple(load_attempts(good).columns) == c.ALL_COLUMNS
    bad = _write(tmp_path / "bad.csv", CSV_TEXT.replace(",usd,", ",USD,"))
    with pytest.raises(ContractError, match=r"bad\.csv") as info:
        load_attempts(bad)
    assert info.value.report.issues[0].rows == (1, 2)
    assert len(load_attempts(bad, drop_invalid=True)) == 0
