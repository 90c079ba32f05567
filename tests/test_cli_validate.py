"""``retryopt validate``: exit codes, report and written files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from retryopt.cli import app
from retryopt.features import contract as c
from retryopt.features.io import read_table

HEADER = (
    "attempt_id,charge_id,customer_id,attempted_at,amount,currency,outcome,decline_code,"
    "card_brand,card_funding,card_country,card_added_at,card_exp_month,card_exp_year\n"
)
ROWS = [
    "at_1,ch_1,cus_1,2024-05-01T10:00:00Z,1999,usd,failed,insufficient_funds,visa,debit,US,"
    "2023-01-01T00:00:00Z,12,2027\n",
    "at_2,ch_1,cus_1,2024-05-03T10:00:00Z,1999,usd,succeeded,,visa,debit,US,"
    "2023-01-01T00:00:00Z,12,2027\n",
    "at_3,ch_2,cus_2,2024-05-02T10:00:00Z,500,eur,failed,weird_code_42,mastercard,credit,FR,"
    "2022-01-01T00:00:00Z,3,2026\n",
]
BAD_ROW = (
    "at_4,ch_3,cus_3,2024-05-02T10:00:00,-5,EUR,failed,do_not_honor,visa,credit,FR,"
    "2022-01-01T00:00:00Z,3,2026\n"
)


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["validate", *args])
    return result.exit_code, result.output


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.csv"
    path.write_text(HEADER + "".join(ROWS))
    return path


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + "".join(ROWS) + BAD_ROW)
    return path


def test_valid_file_exits_0_and_writes_nothing(good: Path) -> None:
    code, output = _run(str(good))
    assert code == 0, output
    assert "3 rows, 3 valid" in output
    assert "'weird_code_42': 1" in output  # unknown decline code, counted
    assert "Decline families" in output
    assert sorted(p.name for p in good.parent.iterdir()) == ["good.csv"]


def test_strict_mode_reports_and_writes_nothing(bad: Path) -> None:
    out = bad.parent / "out.parquet"
    code, output = _run(str(bad), "--out", str(out))
    assert code == 1
    assert "[timestamp_no_zone] attempted_at" in output
    assert "[not_positive] amount" in output and "'-5'" in output
    assert "[currency_not_lower_case] currency" in output and "'EUR'" in output
    assert "row 4" in output
    assert "Nothing written" in output
    assert sorted(p.name for p in bad.parent.iterdir()) == ["bad.csv"]


def test_drop_invalid_writes_clean_and_rejects_with_defaults(bad: Path) -> None:
    code, output = _run(str(bad), "--drop-invalid")
    assert code == 0, output
    clean_path = bad.parent / "bad.clean.parquet"
    rejects_path = bad.parent / "bad.rejects.csv"
    assert f"3 clean rows -> {clean_path}" in output
    assert f"1 rejected rows -> {rejects_path}" in output
    clean = pd.read_parquet(clean_path)
    assert tuple(clean.columns) == c.ALL_COLUMNS
    assert str(clean[c.ATTEMPTED_AT].dtype) == "datetime64[ns, UTC]"
    assert list(clean[c.ATTEMPT_ID]) == ["at_1", "at_2", "at_3"]
    rejects = read_table(rejects_path)
    assert list(rejects["row"]) == ["4"]
    assert rejects.loc[0, "attempt_id"] == "at_4"
    assert "amount: not positive" in str(rejects.loc[0, "reason"])
    assert "attempted_at: timestamp without zone offset" in str(rejects.loc[0, "reason"])


def test_drop_invalid_with_explicit_paths(bad: Path, tmp_path: Path) -> None:
    out = tmp_path / "o" / "clean.csv"
    rej = tmp_path / "o" / "rejected.parquet"
    code, output = _run(str(bad), "--drop-invalid", "--out", str(out), "--rejects", str(rej))
    assert code == 0, output
    assert len(read_table(out)) == 3
    assert len(read_table(rej)) == 1


def test_out_without_drop_invalid_writes_canonical_table_when_valid(
    good: Path, tmp_path: Path
) -> None:
    out = tmp_path / "canonical.parquet"
    code, output = _run(str(good), "--out", str(out))
    assert code == 0, output
    assert tuple(pd.read_parquet(out).columns) == c.ALL_COLUMNS


def test_quiet_prints_one_line(bad: Path) -> None:
    code, output = _run(str(bad), "--quiet")
    assert code == 1
    assert output.strip().count("\n") == 0
    assert "4 rows, 3 valid" in output


@pytest.mark.parametrize(
    "args",
    [
        ["{dir}/missing.csv"],
        ["{dir}/table.xlsx"],
        ["{good}", "--rejects", "{dir}/r.csv"],
        ["{good}", "--drop-invalid", "--out", "{dir}/clean.json"],
        [],
    ],
)
def test_usage_errors_exit_2(good: Path, args: list[str]) -> None:
    filled = [a.format(dir=good.parent, good=good) for a in args]
    code, _ = _run(*filled)
    assert code == 2
    assert sorted(p.name for p in good.parent.iterdir()) == ["good.csv"]


def test_unreadable_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"garbage")
    code, output = _run(str(path))
    assert code == 2
    assert "broken.parquet" in output


def test_missing_column_exits_1_even_with_drop_invalid(tmp_path: Path) -> None:
    path = tmp_path / "cols.csv"
    path.write_text(HEADER.replace("currency,", "") + ROWS[0].replace(",usd,", ","))
    code, output = _run(str(path), "--drop-invalid")
    assert code == 1
    assert "'currency'" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cols.csv"]
    assert "use --drop-invalid" not in output  # it was given: say why nothing could be kept
    assert "no row can be kept" in output
