"""The answer an analyst reads first: which policy, by how much, how sure, from which estimator.

Pure functions shared by the backtest report (:mod:`.report`) and the champion/challenger
report (:mod:`.ab`): the verdict of a comparison, rates as percentages and amounts with their
intervals inline, human column names, and the page's HTML frame (fits 1280 px: tables wrap,
wide diagnostics scroll inside their own box).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

ESTIMATOR_NAMES = {
    "observed": "observed outcomes (on-policy)",
    "truth": "ground truth (simulated world)",
    "dr": "doubly robust (DR)",
    "dm": "direct method (DM)",
    "snips": "self-normalised importance sampling (SNIPS)",
    "ips": "importance sampling (IPS)",
    "ab": "A/B on logged outcomes",
}

# statistic -> (label, kind): "rate" shown as a percentage, "amount" in the reporting currency,
# "count" as a plain number, "days" as whole days.
STATISTICS: dict[str, tuple[str, str]] = {
    "discounted_value": ("value net of costs / failed charge", "amount"),
    "recovered_amount": ("recovered / failed charge", "amount"),
    "recovery_rate": ("recovery rate", "rate"),
    "recovered_within_7d_rate": ("recovered within 7 days", "rate"),
    "retries_per_failed_charge": ("retries / failed charge", "count"),
    "retries_per_recovered_charge": ("retries / recovered charge", "count"),
    "median_days_to_recovery": ("median days to recovery", "days"),
}

# The objective every policy is judged on (features/objective.py): the discounted value of the
# recovered amount net of the attempts' cost.
DECIDING_STATISTIC = "discounted_value"


def _finite(v: object) -> bool:
    return isinstance(v, int | float) and math.isfinite(float(v))


def fmt_value(v: object, kind: str, unit: str = "", *, signed: bool = False) -> str:
    """One number as the analyst reads it (``61.2 %``, ``10.84 USD``, ``2.17``, ``4 d``)."""
    if not _finite(v):
        return "n/a"
    x = float(v)  # type: ignore[arg-type]
    sign = "+" if signed else ""
    if kind == "rate":
        return f"{100 * x:{sign}.1f} %"
    if kind == "amount":
        return f"{x:{sign}.2f} {unit}".strip()
    if kind == "days":
        return f"{x:{sign}.0f} d"
    return f"{x:{sign}.2f}"


def fmt_interval(
    v: object, low: object, high: object, kind: str, unit: str = "", *, signed: bool = False
) -> str:
    """``61.2 % (59.0-63.1)``: the value with its interval inline (no unit repeated)."""
    text = fmt_value(v, kind, unit, signed=signed)
    if not (_finite(low) and _finite(high)):
        return text
    lo = fmt_value(low, kind, signed=signed).replace(" %", "").replace(" d", "")
    hi = fmt_value(high, kind, signed=signed).replace(" %", "").replace(" d", "")
    return f"{text} ({lo} to {hi})"


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """The comparison's answer."""

    best: str  # the policy (or arm) with the highest value
    baseline: str  # what it is compared with
    estimator: str  # where the best policy's numbers come from
    baseline_estimator: str  # where the baseline's numbers come from
    difference: float  # best minus baseline, reporting currency per failed charge
    low: float
    high: float
    unit: str
    certainty: str  # one sentence: how sure

    def sentence(self) -> str:
        """The answer in one sentence (plain text)."""
        est = ESTIMATOR_NAMES.get(self.estimator, self.estimator)
        if self.best == self.baseline:
            return f"{self.best} is the only policy valued ({est})."
        base = ESTIMATOR_NAMES.get(self.baseline_estimator, self.baseline_estimator)
        diff = fmt_interval(self.difference, self.low, self.high, "amount", self.unit, signed=True)
        source = (
            f"both from {est}"
            if est == base
            else f"{self.best} from {est}, {self.baseline} from {base}"
        )
        return (
            f"{self.best} is best: {diff} value net of costs per failed charge against "
            f"{self.baseline} (95 % interval in brackets; {source}). {self.certainty}"
        )


def certainty_text(low: float, high: float) -> str:
    """How sure a difference is, from its 95 % interval."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "No interval is available for this difference: treat it as unconfirmed."
    if low > 0:
        return "The whole 95 % interval is above zero: the gain is unlikely to be chance."
    if high < 0:
        return "The whole 95 % interval is below zero."
    return (
        "The 95 % interval includes zero: the data do not yet separate the two; collect more "
        "charges before switching."
    )


def policy_rows(
    headline: pd.DataFrame, statistics: Sequence[str], unit: str
) -> list[dict[str, str]]:
    """One row per policy: its estimator and each statistic with its interval inline."""
    rows = []
    for _, r in headline.iterrows():
        row = {
            "policy": str(r["policy"]),
            "estimator": ESTIMATOR_NAMES.get(str(r["estimator"]), str(r["estimator"])),
        }
        for stat in statistics:
            label, kind = STATISTICS[stat]
            row[label] = fmt_interval(
                r.get(stat, float("nan")),
                r.get(f"{stat}_low", float("nan")),
                r.get(f"{stat}_high", float("nan")),
                kind,
                unit if kind == "amount" else "",
            )
        rows.append(row)
    return rows


def rows_table(rows: Sequence[dict[str, str]], *, css_class: str = "policies") -> str:
    """An HTML table of already formatted rows (first row's keys are the header)."""
    if not rows:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r.values()) + "</tr>" for r in rows
    )
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


PAGE_CSS = """
body{font-family:system-ui,sans-serif;margin:0 auto;padding:1.5em 2em;max-width:1180px;
  color:#1d1d1f;line-height:1.4;box-sizing:border-box}
h1{font-size:1.6em;margin:.2em 0 .6em}h2{font-size:1.2em;margin-top:1.6em}
.answer{background:#eef6ee;border-left:6px solid #2e7d32;padding:.8em 1.2em;margin:1em 0;
  font-size:1.15em}
.answer.unsure{background:#fff8e1;border-left-color:#f9a825}
.answer p{margin:.3em 0}.answer .how{font-size:.85em;color:#444}
table{border-collapse:collapse;font-size:13px;margin:.8em 0;max-width:100%}
td,th{border:1px solid #d0d0d0;padding:4px 8px;text-align:left;vertical-align:top;
  overflow-wrap:anywhere}
th{background:#f3f3f3;font-weight:600;overflow-wrap:normal}
table.policies td:first-child{font-weight:600}
.scroll{max-width:100%;overflow-x:auto}
.warn{background:#fff3cd;padding:.4em .6em;border-left:4px solid #e0a800;margin:.3em 0;
  font-size:.9em}
figure{margin:1em 0}img{max-width:100%;height:auto}
pre{white-space:pre-wrap;overflow-wrap:anywhere;font-size:12px;background:#f7f7f7;padding:.6em}
details summary{cursor:pointer;font-weight:600}
"""


def page(title: str, body: str) -> str:
    """A self-contained HTML page (no external resources)."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{PAGE_CSS}</style></head>"
        f"<body>{body}</body></html>"
    )


def answer_box(verdict: Verdict, detail: str) -> str:
    """The verdict as the report's first block (``detail``: HTML shown under it)."""
    unsure = not (verdict.low > 0 or verdict.high < 0) or verdict.best == verdict.baseline
    cls = "answer unsure" if unsure else "answer"
    return (
        f'<section class="{cls}" id="answer"><p>{html.escape(verdict.sentence())}</p>'
        f'<p class="how">{detail}</p></section>'
    )
