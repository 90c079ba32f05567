"""Backtest outputs: JSON, CSV, PNG plots and a self-contained HTML report, written atomically.

Layout of ``--out DIR``::

    results.json           everything machine-readable (meta, headline, overlap, rules, warnings)
    estimates.csv          policy x estimator x statistic with 95 % intervals
    uplift.csv             differences to the first policy (joint bootstrap)
    breakdowns.csv         by decline family, card funding, card country
    retry_numbers.csv      retries and success rate per retry number
    curves.csv             cumulative recovery by day since the first failure
    calibration.csv        reliability of the direct-method model
    recovery_curves.png, uplift.png, families.png, calibration.png
    report.html            the report, images embedded as base64
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retryopt.training.backtest.answer import (
    DECIDING_STATISTIC,
    ESTIMATOR_NAMES,
    Verdict,
    answer_box,
    certainty_text,
    page,
    policy_rows,
    rows_table,
)
from retryopt.training.backtest.result import BacktestResult

PLOTS = ("recovery_curves", "uplift", "families", "calibration")


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def result_to_dict(result: BacktestResult) -> dict[str, Any]:
    """The machine-readable summary written to ``results.json``."""
    return _json_safe(
        {
            "meta": result.meta,
            "warnings": result.warnings,
            "headline": result.headline().to_dict(orient="records"),
            "overlap": result.overlap,
            "rules": result.rules,
            "truth": result.truth,
            "estimates": result.estimates.to_dict(orient="records"),
        }
    )


def _plot_curves(result: BacktestResult, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    head = result.headline()
    for _, row in head.iterrows():
        sub = result.curves[
            (result.curves["policy"] == row["policy"])
            & (result.curves["estimator"] == row["estimator"])
        ]
        ax.plot(
            sub["day"],
            sub["recovered"],
            marker="o",
            ms=3,
            label=f"{row['policy']} ({row['estimator']})",
        )
        ax.fill_between(sub["day"], sub["ci_low"], sub["ci_high"], alpha=0.15)
    ax.set_xlabel("days since the first failure")
    ax.set_ylabel("share of failed charges recovered")
    ax.set_title("Recovery curves (95 % bootstrap bands)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_uplift(result: BacktestResult, path: Path) -> None:
    import matplotlib.pyplot as plt

    up = result.uplift[result.uplift["statistic"] == "recovery_rate"]
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.35 * max(len(up), 1)))
    if len(up):
        labels = [f"{p} [{e}]" for p, e in zip(up["policy"], up["estimator"], strict=True)]
        y = np.arange(len(up))
        v = up["uplift"].to_numpy()
        err = np.vstack([v - up["ci_low"].to_numpy(), up["ci_high"].to_numpy() - v])
        ax.errorbar(v, y, xerr=np.nan_to_num(err), fmt="o", capsize=3)
        ax.set_yticks(y, labels, fontsize=8)
        ax.axvline(0, color="grey", lw=1)
    ax.set_xlabel(f"recovery-rate uplift vs {result.meta.get('baseline', '')} (95 % CI)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_families(result: BacktestResult, path: Path) -> None:
    import matplotlib.pyplot as plt

    bd = result.breakdowns
    head = result.headline()
    sub = bd[(bd["breakdown"] == "decline_family") & (bd["statistic"] == "recovery_rate")]
    keep = set(zip(head["policy"], head["estimator"], strict=True))
    sub = sub[[(p, e) in keep for p, e in zip(sub["policy"], sub["estimator"], strict=True)]]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    if len(sub):
        piv = sub.pivot_table(index="level", columns="policy", values="value")
        piv.plot.bar(ax=ax, rot=30)
    ax.set_ylabel("recovery rate")
    ax.set_title("Recovery by decline family of the first failure")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_calibration(result: BacktestResult, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    cal = result.calibration
    if len(cal):
        ax.plot(cal["mean_predicted"], cal["observed"], marker="o", label="direct-method model")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect")
    ax.set_xlabel("predicted P(success), first retry")
    ax.set_ylabel("observed success rate")
    ax.set_title("Calibration of the success model")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v: object, digits: int = 3) -> str:
    if isinstance(v, float | np.floating):
        return "" if not math.isfinite(float(v)) else f"{float(v):.{digits}f}"
    return html.escape(str(v))


def headline_markdown(result: BacktestResult) -> str:
    """The comparison as a Markdown table (value [95 % CI])."""
    head = result.headline()
    unit = str(result.meta.get("amount_unit", "USD"))
    cols = [
        ("recovery_rate", "recovery rate", 3),
        ("recovered_amount", f"recovered {unit} / failed charge", 2),
        ("discounted_value", f"discounted value net of costs, {unit} / failed charge", 2),
        ("retries_per_failed_charge", "retries / failed", 2),
        ("retries_per_recovered_charge", "retries / recovered", 2),
        ("median_days_to_recovery", "median days", 0),
        ("recovered_within_7d_rate", "recovered in 7 d", 3),
    ]
    lines = [
        "| policy | estimator | " + " | ".join(c[1] for c in cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for _, row in head.iterrows():
        cells = []
        for key, _, d in cols:
            v = row.get(key, float("nan"))
            lo = row.get(f"{key}_low", float("nan"))
            hi = row.get(f"{key}_high", float("nan"))
            cells.append(f"{_fmt(v, d)} [{_fmt(lo, d)}, {_fmt(hi, d)}]")
        lines.append(f"| {row['policy']} | {row['estimator']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _table_html(df: pd.DataFrame, max_rows: int = 400) -> str:
    """A diagnostics table: human headers, 3 decimals, scrolling inside its own box."""
    if df.empty:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{html.escape(str(c).replace('_', ' '))}</th>" for c in df.columns)
    body = []
    for _, row in df.head(max_rows).iterrows():
        body.append("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row.to_numpy()) + "</tr>")
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


REPORT_STATISTICS = (
    "discounted_value",
    "recovered_amount",
    "recovery_rate",
    "retries_per_failed_charge",
    "median_days_to_recovery",
    "recovered_within_7d_rate",
)


def _uplift(result: BacktestResult, policy: str, estimator: str) -> tuple[float, float, float]:
    up = result.uplift
    row = up[
        (up["policy"] == policy)
        & (up["estimator"] == estimator)
        & (up["statistic"] == DECIDING_STATISTIC)
    ]
    if row.empty:
        return float("nan"), float("nan"), float("nan")
    r = row.iloc[0]
    return float(r["uplift"]), float(r["ci_low"]), float(r["ci_high"])


def backtest_verdict(result: BacktestResult) -> Verdict | None:
    """Which policy is best on the objective, by how much against the baseline (or, when the
    baseline is best, against the runner-up), how sure, and from which estimator."""
    head = result.headline()
    if head.empty or DECIDING_STATISTIC not in head:
        return None
    head = head[np.isfinite(head[DECIDING_STATISTIC].to_numpy(dtype=np.float64))]
    if head.empty:
        return None
    ranked = head.sort_values(DECIDING_STATISTIC, ascending=False, kind="stable")
    estimator_of = dict(zip(head["policy"], head["estimator"], strict=True))
    unit = str(result.meta.get("amount_unit", "USD"))
    best = str(ranked["policy"].iloc[0])
    baseline = str(result.meta.get("baseline") or best)
    if best != baseline:
        d, lo, hi = _uplift(result, best, estimator_of[best])
        other = baseline
    elif len(ranked) > 1:
        other = str(ranked["policy"].iloc[1])
        up, up_lo, up_hi = _uplift(result, other, estimator_of[other])
        d, lo, hi = -up, -up_hi, -up_lo
    else:
        return Verdict(
            best=best,
            baseline=best,
            estimator=estimator_of[best],
            baseline_estimator=estimator_of[best],
            difference=float("nan"),
            low=float("nan"),
            high=float("nan"),
            unit=unit,
            certainty="",
        )
    return Verdict(
        best=best,
        baseline=other,
        estimator=estimator_of[best],
        baseline_estimator=estimator_of.get(other, "observed"),
        difference=d,
        low=lo,
        high=hi,
        unit=unit,
        certainty=certainty_text(lo, hi),
    )


def _answer(result: BacktestResult) -> str:
    verdict = backtest_verdict(result)
    meta = result.meta
    how = (
        f"{meta.get('n_charges')} failed charges, {meta.get('n_logged_retries')} logged "
        f"retries; {meta.get('n_boot')} bootstrap resamples by charge. Judged on the value "
        "recovered net of attempt costs, discounted from the first failure "
        "(features/objective.py)."
    )
    if verdict is None:
        return (
            '<section class="answer unsure" id="answer"><p>No policy could be valued.</p>'
            f'<p class="how">{html.escape(how)}</p></section>'
        )
    return answer_box(verdict, html.escape(how))


def render_html(result: BacktestResult, images: dict[str, bytes]) -> str:
    """The self-contained HTML report: the answer first, diagnostics below."""
    unit = str(result.meta.get("amount_unit", "USD"))
    warn = "".join(f'<p class="warn">&#9888; {html.escape(w)}</p>' for w in result.warnings)
    imgs = "".join(
        f'<figure><img alt="{k}" src="data:image/png;base64,{base64.b64encode(v).decode()}"/>'
        f"</figure>"
        for k, v in images.items()
    )
    overlap = pd.DataFrame(
        [
            {"policy": p, **{k: v for k, v in d.items() if k != "warning"}}
            for p, d in result.overlap.items()
        ]
    )
    rules = pd.DataFrame([{"policy": p, **d} for p, d in result.rules.items()])
    est = result.estimates[result.estimates["statistic"].isin(REPORT_STATISTICS)]
    meta = html.escape(json.dumps(_json_safe(result.meta), indent=1))
    families = result.breakdowns[result.breakdowns["statistic"] == "recovery_rate"]
    truth = ""
    if result.truth:
        dumped = html.escape(json.dumps(_json_safe(result.truth), indent=1))
        truth = f"<h3>Ground truth</h3><pre>{dumped}</pre>"
    estimators = "; ".join(f"<b>{k}</b>: {html.escape(v)}" for k, v in ESTIMATOR_NAMES.items())
    n_warn = len(result.warnings)
    body = f"""<h1>retryopt backtest</h1>{_answer(result)}
<h2>Policies</h2>
<p>One row per policy, each from its most direct available estimator. Rates in percent and
amounts in {html.escape(unit)} per failed charge, with 95 % bootstrap intervals in brackets.</p>
{rows_table(policy_rows(result.headline(), REPORT_STATISTICS, unit))}
<h2>Plots</h2>{imgs}
<h2>Diagnostics</h2>
<details{" open" if n_warn else ""}><summary>{n_warn} warning{"" if n_warn == 1 else "s"}</summary>
{warn or "<p>none</p>"}</details>
<p>Estimators: {estimators}. IPS and SNIPS use a {result.meta.get("bandwidth_hours")} h kernel
on the retry time. Amounts in {html.escape(unit)} (major units; every currency converted at
{html.escape(str(result.meta.get("fx_source", "reference rates")))}).</p>
<h3>All estimates</h3>{_table_html(est)}
<h3>Difference to {html.escape(str(result.meta.get("baseline")))}</h3>{_table_html(result.uplift)}
<h3>Overlap</h3>{_table_html(overlap)}
<h3>Network rules</h3>{_table_html(rules)}
<h3>By retry number</h3>{_table_html(result.retry_numbers)}
<h3>Breakdowns</h3>{_table_html(families)}
{truth}<h3>Run</h3><pre>{meta}</pre>"""
    return page("retryopt backtest", body)


def write_outputs(result: BacktestResult, out_dir: str | Path) -> Path:
    """Write every output into a temp dir next to ``out_dir``, then move it into place.

    An existing ``out_dir`` is replaced only after the new one is complete.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "results.json").write_text(json.dumps(result_to_dict(result), indent=1))
        for name, df in (
            ("estimates", result.estimates),
            ("uplift", result.uplift),
            ("breakdowns", result.breakdowns),
            ("retry_numbers", result.retry_numbers),
            ("curves", result.curves),
            ("calibration", result.calibration),
        ):
            df.to_csv(tmp / f"{name}.csv", index=False)
        (tmp / "comparison.md").write_text(headline_markdown(result) + "\n")
        drawers = {
            "recovery_curves": _plot_curves,
            "uplift": _plot_uplift,
            "families": _plot_families,
            "calibration": _plot_calibration,
        }
        images = {}
        for name, draw in drawers.items():
            draw(result, tmp / f"{name}.png")
            images[name] = (tmp / f"{name}.png").read_bytes()
        (tmp / "report.html").write_text(render_html(result, images))
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
