"""The backtest and A/B reports as an analyst sees them: rendered by headless Chromium at
1280 px, the answer first, one row per policy, no horizontal overflow.

The screenshots are kept in the test's temp folder (``report.png``, ``ab.png``) for a look.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from headless_chromium import chromium_path, measure, screenshot
from test_ab import _logged
from test_backtest_runner import HoursModel, history

from retryopt.features.decisions import Constraints
from retryopt.serving.policies import FixedSchedule, UniformRandom
from retryopt.training.backtest.ab import compare_arms, write_ab_report
from retryopt.training.backtest.config import BacktestConfig
from retryopt.training.backtest.report import backtest_verdict, write_outputs
from retryopt.training.backtest.runner import run_backtest

WIDTH = 1280

needs_chromium = pytest.mark.skipif(
    chromium_path() is None,
    reason="Chromium not installed (apt-get install chromium): the reports are not rendered",
)


@pytest.fixture(scope="module")
def backtest_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A backtest of four policies (one without overlap: warnings) written as a report."""
    result = run_backtest(
        history(1500, seed=5),
        {
            "logged": None,
            "fixed:96,168": FixedSchedule((96.0, 168.0)),
            "fixed:2,4": FixedSchedule((2.0, 4.0)),
            "random": UniformRandom(seed=3),
        },
        config=BacktestConfig(
            n_boot=60, seed=1, fit_dm=False, constraints=Constraints(max_retries=2)
        ),
        dm_model=HoursModel(),
    )
    assert result.warnings  # the report must still lead with the answer
    out = write_outputs(result, tmp_path_factory.mktemp("report") / "bt")
    (out / "verdict.txt").write_text(backtest_verdict(result).sentence())  # type: ignore[union-attr]
    return out / "report.html"


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def _first_screen_text(html: str) -> str:
    return html[: html.index("<h2>Plots</h2>")]


def test_the_backtest_report_leads_with_the_answer(backtest_report: Path) -> None:
    html = backtest_report.read_text()
    verdict = (backtest_report.parent / "verdict.txt").read_text()
    top = _first_screen_text(html)
    # the answer comes first: which policy, by how much (with its interval), from which estimator
    assert top.index('id="answer"') < top.index("<table")
    assert top.index('id="answer"') < html.index('class="warn"')
    assert re.search(r"\w+ is best: [+-]\d+\.\d\d USD \([+-]\d+\.\d\d to [+-]\d+\.\d\d\)", verdict)
    assert "estimated" not in verdict or "from" in verdict
    # one row per policy; rates as percentages with their intervals inline; no raw column names
    table = top[top.index("<table") : top.index("</table>")]
    assert table.count("<tr>") == 1 + 4
    assert re.search(r"\d+\.\d %[^<]*\(\d+\.\d to \d+\.\d\)", table)
    assert "_low" not in top and "recovery_rate" not in top


@needs_chromium
def test_the_backtest_report_fits_1280_px_in_chromium(backtest_report: Path) -> None:
    assert measure(backtest_report, width=WIDTH) <= WIDTH
    png = screenshot(backtest_report, backtest_report.with_name("report.png"), width=WIDTH)
    assert _png_size(png) == (WIDTH, 900) and png.stat().st_size > 20_000


@needs_chromium
def test_a_too_wide_page_is_caught(tmp_path: Path) -> None:
    page = tmp_path / "wide.html"
    page.write_text('<html><body><div style="width:2000px">wide</div></body></html>')
    assert measure(page, width=WIDTH) > WIDTH


@needs_chromium
def test_the_ab_report_fits_1280_px_in_chromium(tmp_path: Path) -> None:
    result = compare_arms(_logged(300, p_champion=0.3, p_challenger=0.45, seed=2), n_boot=200)
    served = {"champion": "model 2026-12-01-a1b2c3", "challenger": "fixed:72,120,168,216"}
    page = write_ab_report(result, served, tmp_path / "ab") / "report.html"
    html = page.read_text()
    assert html.index('id="answer"') < html.index("<table")
    assert "challenger - champion" in html
    assert measure(page, width=WIDTH) <= WIDTH
    png = screenshot(page, page.with_name("ab.png"), width=WIDTH)
    assert _png_size(png) == (WIDTH, 900)
