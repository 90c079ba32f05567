"""``retryopt demo --loop --store URL``: the loop's store is checked before anything runs."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from retryopt.cli import app
from retryopt.serving.store import OutcomeRecord, open_store


def test_a_store_without_loop_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["demo", "--out-dir", str(tmp_path), "--store", f"sqlite:///{tmp_path / 's.db'}"]
    )
    assert result.exit_code == 2
    assert "--store" in result.output and "--loop" in result.output


def test_an_unsupported_store_url_names_the_option(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["demo", "--loop", "--out-dir", str(tmp_path), "--store", "mysql://u:secret@h/db"]
    )
    assert result.exit_code == 2
    assert "--store" in result.output and "unsupported store URL" in result.output
    assert "secret" not in result.output


def test_a_store_that_holds_a_log_is_refused(store_url: str, tmp_path: Path) -> None:
    """On both backends: the loop starts from the world's history, never on top of a log."""
    store = open_store(store_url)
    try:
        store.record_outcomes(
            [
                OutcomeRecord(
                    charge_id="ch_1",
                    attempted_at=1_700_000_000_000_000_000,
                    customer_id="cus_1",
                    outcome="declined",
                    decision_id=None,
                    report={"charge_id": "ch_1"},
                    charge=None,
                    received_at=1_700_000_000_000_000_000,
                )
            ]
        )
    finally:
        store.close()
    out_dir = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["demo", "--loop", "--out-dir", str(out_dir), "--store", store_url]
    )
    assert result.exit_code == 2
    assert "not empty" in result.output and "1 outcomes" in result.output
    assert not (out_dir / "loop").exists()  # refused before the world is simulated
