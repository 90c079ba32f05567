"""Run the evaluation suite: per world, simulate, train, play every policy against the truth.

For each world of :mod:`training.simulate.suite` the runner

1. simulates the world (``customers`` x ``months``, the world's seed);
2. trains a bundle on its history (``training.train.run_training``, no MLflow);
3. plays on the failed charges of the bundle's held-out test month(s), with common random
   numbers (``replications`` plays, seeds ``play_seed``, ``play_seed + 1``, ...), under the
   default decision objective (:class:`features.objective.Objective`): the planner, the planner
   in guardrail mode, every fixed schedule of ``fixed_schedules`` (the best one is chosen in
   hindsight by recovered USD) and the oracle (true probabilities, same objective);
4. reports per policy the true recovered USD, discounted value net of costs, retries and median
   day of recovery per failed charge (:func:`~.ground_truth.gap_summary`, the backtest's own
   definitions), the share of retries whose true success probability was under 1 % (hopeless),
   and, for the planners, calibration at the times they chose (mean predicted minus mean true
   success probability, equal-mass ECE against the true probabilities);
5. judges the issue's criteria (:func:`judge_world`, :func:`judge_suite`).

Pure computation apart from the temporary history file and bundle that training needs
(``work_dir``); :func:`write_suite_outputs` is the file edge (JSON, CSV, Markdown).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retryopt.features import contract as C  # noqa: N812
from retryopt.features.decisions import Constraints, DecisionBatch, PolicyDecisions, RetryPolicy
from retryopt.features.io import write_table_atomic
from retryopt.model.bundle import load_bundle
from retryopt.serving.policies import BundleSuccessModel, FixedSchedule, PlannerPolicy
from retryopt.training.backtest.estimators import MetricSet, objective_for
from retryopt.training.backtest.ground_truth import gap_summary, played_contributions
from retryopt.training.evaluation import expected_calibration_error
from retryopt.training.progress import Progress, quiet
from retryopt.training.simulate import OraclePolicy, SimulatedWorld, play, simulate_world
from retryopt.training.simulate.policies import charge_progress
from retryopt.training.simulate.suite import SuiteWorld
from retryopt.training.train import run_training
from retryopt.training.train_config import TrainConfig, load_config

__all__ = [
    "CRITERIA",
    "SuiteRunConfig",
    "WorldResult",
    "judge_suite",
    "judge_world",
    "played_retry_truth",
    "run_suite",
    "run_world",
    "suite_table",
    "write_suite_outputs",
]

PLANNER = "model"
GUARDED = "model+guardrail"
ORACLE = "oracle"

# The "Done when" thresholds (issue 14), declared once.
HOPELESS_P = 0.01  # a retry whose true success probability is under 1 % is hopeless
MAX_HOPELESS_SHARE = 0.02  # hopeless retries under 2 % of the planner's retries
MAX_ABS_BIAS = 0.02  # mean predicted - mean true success at the chosen times within +-0.02
MAX_ECE = 0.03  # ECE at the chosen times
MIN_MEAN_GAP_CLOSED = 0.60  # averaged over the suite, share of the fixed-to-oracle gap
CRITERIA: tuple[str, ...] = (
    "usd_at_least_best_fixed",
    "retries_at_most_best_fixed",
    "median_day_at_most_oracle",
    "hopeless_under_2pct",
    "bias_within_2pts",
    "ece_at_most_3pts",
)


@dataclass(frozen=True, kw_only=True)
class SuiteRunConfig:
    """Size and options of a suite run (the worlds themselves are fixed in the suite)."""

    customers: int = 20_000
    months: int = 6
    replications: int = 2
    play_seed: int = 3
    fixed_schedules: tuple[tuple[float, ...], ...] = (
        (72.0, 120.0, 168.0, 216.0),  # the project's guardrail ladder (Hyperswitch-style)
        (72.0, 168.0, 336.0, 480.0),  # Stripe's older default: 4 tries in 21 days
        (24.0, 72.0, 168.0, 336.0),
        (24.0, 48.0, 72.0, 96.0),  # daily, early
        (120.0, 240.0, 360.0, 480.0),  # spread over the window
    )
    guardrail_hours: tuple[float, ...] = (72.0, 120.0, 168.0, 216.0)
    bootstrap: int = 400
    bootstrap_seed: int = 0
    ece_bins: int = 10
    train_threads: int = 1

    def __post_init__(self) -> None:
        if self.customers < 100 or self.months < 4:
            raise ValueError("a suite world needs >= 100 customers and >= 4 months")
        if self.replications < 1 or self.bootstrap < 10:
            raise ValueError("replications must be >= 1 and bootstrap >= 10")
        if not self.fixed_schedules:
            raise ValueError("give at least one fixed schedule")


@dataclass(kw_only=True)
class WorldResult:
    """What one world's run measured (plain data, JSON-serialisable via :meth:`to_dict`)."""

    world: str
    configuration: str
    seed: int
    timing_signal: bool
    charges: int
    best_fixed: str
    policies: dict[str, dict[str, float]]
    planner_vs_best_fixed: dict[str, float]
    criteria: dict[str, bool] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return asdict(self)


class RecordingPolicy:
    """A planner that records its predicted success probability at every chosen time."""

    def __init__(self, inner: PlannerPolicy, *, name: str) -> None:
        self.inner = inner
        self.name = name
        self.records: list[tuple[str, int, float]] = []  # charge, retry number, prediction

    def decide(self, batch: DecisionBatch) -> PolicyDecisions:
        """The planner's decisions (same as ``inner.decide``), recording the predictions."""
        decisions = self.inner.decide_detailed(batch)
        _, count, _ = charge_progress(batch)
        ids = np.asarray(batch.charge_ids, dtype=object)
        for cid, k, d in zip(ids, count, decisions, strict=True):
            if d.retry_at is not None and d.success_probability is not None:
                self.records.append((str(cid), int(k), float(d.success_probability)))
        retry_at = np.array(
            [
                np.datetime64("NaT", "ns")
                if d.retry_at is None
                else np.datetime64(d.retry_at.tz_convert("UTC").tz_localize(None).as_unit("ns"))
                for d in decisions
            ],
            dtype="datetime64[ns]",
        )
        return PolicyDecisions(
            retry_at=retry_at,
            propensity=np.ones(len(decisions)),
            reason=np.array([d.reason for d in decisions], dtype=object),
        )

    def predictions(self) -> pd.DataFrame:
        """Recorded predictions: ``charge_id``, ``retry_number``, ``predicted``."""
        return pd.DataFrame(self.records, columns=["charge_id", "retry_number", "predicted"])


def played_retry_truth(world: SimulatedWorld, attempts: pd.DataFrame) -> pd.DataFrame:
    """True success probability of every played retry, given the charge's earlier attempts.

    ``attempts`` are :attr:`PlayResult.attempts` (first attempts and retries, contract rows).
    Returns ``charge_id``, ``retry_number`` (1 = first retry) and ``true_p``.
    """
    a = attempts[[C.CHARGE_ID, C.ATTEMPTED_AT]].copy()
    a["hours"] = world.to_hours(a[C.ATTEMPTED_AT])
    a = a.sort_values([C.CHARGE_ID, "hours"], kind="mergesort").reset_index(drop=True)
    rank = a.groupby(C.CHARGE_ID, sort=False).cumcount().to_numpy()
    ids = a[C.CHARGE_ID].to_numpy(dtype=object)
    hours = a["hours"].to_numpy(dtype=np.float64)
    retry = np.flatnonzero(rank >= 1)
    if retry.size == 0:
        return pd.DataFrame({"charge_id": [], "retry_number": [], "true_p": []})
    width = int(rank.max())
    prev = np.full((retry.size, width), np.nan)
    for j in range(width):  # the j-th earlier attempt of each retry's charge
        has = rank[retry] > j
        prev[has, j] = hours[retry[has] - rank[retry[has]] + j]
    pos = world.positions(ids[retry])
    true_p = world.success_probability_hours(pos, prev, hours[retry][:, None])[:, 0]
    return pd.DataFrame(
        {"charge_id": ids[retry].astype(str), "retry_number": rank[retry], "true_p": true_p}
    )


def _held_out_charges(world: SimulatedWorld, split: Mapping[str, Any]) -> np.ndarray:
    """Failed charges first failing in the bundle's test months (and partial months merged)."""
    months = set(split.get("test_months", [])) | set(split.get("merged_partial_months", []))
    failed = world.failed_charges()
    first = world.from_hours(world.charge_first_h[world.positions(failed)])
    month = pd.DatetimeIndex(first).strftime("%Y-%m")
    return np.asarray(failed[np.isin(month, sorted(months))], dtype=object)


def _train(
    world: SimulatedWorld, seed: int, work_dir: Path, threads: int
) -> tuple[BundleSuccessModel, dict[str, Any]]:
    """A bundle trained on the world's history (no MLflow) and its time split."""
    data = work_dir / "attempts.parquet"
    write_table_atomic(world.attempts, data)
    base = load_config(seed=seed).to_dict()
    base["training"]["num_threads"] = threads
    run = run_training(
        data,
        work_dir / "models",
        config=TrainConfig.from_dict(base),
        experiment="suite",
        registered_name=None,
        track=False,
    )
    bundle = load_bundle(run.bundle_path)
    return BundleSuccessModel(bundle), dict(bundle.metrics.get("split") or {})


def _bootstrap_interval(diff: np.ndarray, n: int, seed: int) -> tuple[float, float]:
    """95 % percentile interval of the mean of per-charge differences (resampling charges)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diff.size, size=(n, diff.size))
    means = diff[idx].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def run_world(
    world_spec: SuiteWorld,
    config: SuiteRunConfig,
    *,
    work_dir: Path,
    progress: Progress = quiet,
) -> WorldResult:
    """Simulate, train and play one world of the suite; measure and judge it."""
    started = time.perf_counter()
    world = simulate_world(
        world_spec.config(), customers=config.customers, months=config.months, seed=world_spec.seed
    )
    progress(f"{world_spec.name}: simulated {len(world.attempts):,} attempts")
    work_dir.mkdir(parents=True, exist_ok=True)
    model, split = _train(world, world_spec.seed, work_dir, config.train_threads)
    charges = _held_out_charges(world, split)
    if charges.size == 0:
        raise ValueError(f"{world_spec.name}: no failed charges in the held-out months")
    progress(f"{world_spec.name}: trained; {charges.size} held-out failed charges")
    cons, metrics = objective_for(Constraints(), None)
    policies: dict[str, RetryPolicy] = {}
    kinds: dict[str, str] = {}
    for hours in config.fixed_schedules:
        label = "fixed:" + ",".join(f"{h:g}" for h in hours)
        policies[label] = FixedSchedule(hours, name=label)
        kinds[label] = "fixed"
    policies[PLANNER] = RecordingPolicy(PlannerPolicy(model), name=PLANNER)
    policies[GUARDED] = RecordingPolicy(
        PlannerPolicy(model, guardrail_hours=config.guardrail_hours), name=GUARDED
    )
    policies[ORACLE] = OraclePolicy(world)
    kinds.update({PLANNER: "model", GUARDED: "model", ORACLE: "oracle"})
    contrib: dict[str, np.ndarray] = {}
    truths: dict[str, list[pd.DataFrame]] = {k: [] for k in policies}
    for label, policy in policies.items():
        total = np.zeros((charges.size, len(metrics.names)))
        for r in range(config.replications):
            result = play(policy, world, charges, cons, seed=config.play_seed + r)
            total += played_contributions(result.attempts, charges, metrics=metrics)
            truth = played_retry_truth(world, result.attempts)
            if isinstance(policy, RecordingPolicy):
                truth = truth.merge(
                    policy.predictions(), on=["charge_id", "retry_number"], how="left"
                )
                policy.records.clear()
            truths[label].append(truth)
        contrib[label] = total / config.replications
        progress(f"{world_spec.name}: played {label}")
    summary = gap_summary(contrib, metrics, kinds)
    policy_rows = _policy_rows(summary, truths, config)
    best = str(summary["best_fixed"])
    versus = _planner_vs(contrib, metrics, best, summary, config)
    out = WorldResult(
        world=world_spec.name,
        configuration=world_spec.configuration,
        seed=world_spec.seed,
        timing_signal=world_spec.timing_signal,
        charges=int(charges.size),
        best_fixed=best,
        policies=policy_rows,
        planner_vs_best_fixed=versus,
    )
    out.criteria = judge_world(out)
    out.seconds = round(time.perf_counter() - started, 1)
    return out


def _policy_rows(
    summary: Mapping[str, Any], truths: Mapping[str, list[pd.DataFrame]], config: SuiteRunConfig
) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    for label, values in summary["true_values"].items():
        t = pd.concat(truths[label], ignore_index=True)
        row = {k: float(v) for k, v in values.items()}
        row["hopeless_share"] = float((t["true_p"] < HOPELESS_P).mean()) if len(t) else 0.0
        if "predicted" in t:
            ok = t["predicted"].notna().to_numpy()
            pred = t["predicted"].to_numpy(dtype=np.float64)[ok]
            true = t["true_p"].to_numpy(dtype=np.float64)[ok]
            row["calibration_bias"] = float(pred.mean() - true.mean()) if ok.any() else math.nan
            row["calibration_ece"] = expected_calibration_error(true, pred, n_bins=config.ece_bins)
            row["predictions_matched"] = float(ok.mean()) if len(t) else math.nan
        rows[label] = row
    return rows


def _planner_vs(
    contrib: Mapping[str, np.ndarray],
    metrics: MetricSet,
    best: str,
    summary: Mapping[str, Any],
    config: SuiteRunConfig,
) -> dict[str, float]:
    col = {n: i for i, n in enumerate(metrics.names)}
    out: dict[str, float] = {}
    for label, prefix in ((PLANNER, ""), (GUARDED, "guardrail_")):
        for name in ("recovered_amount", "retries", "discounted_value"):
            diff = contrib[label][:, col[name]] - contrib[best][:, col[name]]
            lo, hi = _bootstrap_interval(diff, config.bootstrap, config.bootstrap_seed)
            out[f"{prefix}{name}_difference"] = float(diff.mean())
            out[f"{prefix}{name}_difference_lo"] = lo
            out[f"{prefix}{name}_difference_hi"] = hi
        out[f"{prefix}gap_closed_usd"] = float(summary.get(f"{label}_gap_closed", math.nan))
        out[f"{prefix}gap_closed_value"] = float(
            summary.get(f"{label}_discounted_gap_closed", math.nan)
        )
    return out


def judge_world(result: WorldResult) -> dict[str, bool]:
    """The issue's per-world criteria for the planner (:data:`CRITERIA`).

    Recovered USD at least the best fixed schedule's (on the world without a timing signal:
    the 95 % bootstrap interval of the difference reaches 0), with no more retries; median day
    of recovery no later than the oracle's; hopeless retries under 2 %; at the chosen times,
    mean predicted minus mean true success within +-0.02 and ECE <= 0.03.
    """
    v = result.planner_vs_best_fixed
    p = result.policies[PLANNER]
    usd_ok = v["recovered_amount_difference"] >= 0 or (
        not result.timing_signal and v["recovered_amount_difference_hi"] >= 0
    )
    return {
        "usd_at_least_best_fixed": bool(usd_ok),
        "retries_at_most_best_fixed": bool(v["retries_difference"] <= 0),
        "median_day_at_most_oracle": bool(
            p["median_days_to_recovery"] <= result.policies[ORACLE]["median_days_to_recovery"]
        ),
        "hopeless_under_2pct": bool(p["hopeless_share"] < MAX_HOPELESS_SHARE),
        "bias_within_2pts": bool(abs(p.get("calibration_bias", math.nan)) <= MAX_ABS_BIAS),
        "ece_at_most_3pts": bool(p.get("calibration_ece", math.nan) <= MAX_ECE),
    }


def judge_suite(results: Sequence[WorldResult]) -> dict[str, Any]:
    """Suite-level verdicts: every per-world criterion on every world, and the mean gap closed.

    The fixed-to-oracle gap is measured in the objective the oracle maximises (discounted value
    net of attempt costs), where the oracle is the ceiling; the gap in recovered USD is reported
    beside it.
    """
    out: dict[str, Any] = {name: all(r.criteria[name] for r in results) for name in CRITERIA}
    value = [r.planner_vs_best_fixed["gap_closed_value"] for r in results]
    usd = [r.planner_vs_best_fixed["gap_closed_usd"] for r in results]
    out["mean_gap_closed_value"] = float(np.nanmean(value)) if value else math.nan
    out["mean_gap_closed_usd"] = float(np.nanmean(usd)) if usd else math.nan
    out["mean_gap_closed_at_least_60pct"] = bool(
        out["mean_gap_closed_value"] >= MIN_MEAN_GAP_CLOSED
    )
    return out


def run_suite(
    worlds: Sequence[SuiteWorld],
    config: SuiteRunConfig,
    *,
    work_dir: Path,
    progress: Progress = quiet,
) -> tuple[list[WorldResult], dict[str, Any]]:
    """Run every world (in order) and judge the suite."""
    results = [run_world(w, config, work_dir=work_dir / w.name, progress=progress) for w in worlds]
    return results, judge_suite(results)


def suite_table(results: Sequence[WorldResult]) -> str:
    """A Markdown table, one row per world (planner vs best fixed vs oracle)."""
    head = (
        "| world | charges | best fixed | USD / failed charge: best fixed -> planner "
        "(diff, 95 % CI) | oracle USD | gap closed (value / USD) | retries: fixed -> planner "
        "| median day: fixed / planner / oracle | discounted value: fixed / planner / oracle "
        "| hopeless retries | bias / ECE at chosen times | guardrail: USD diff, retries diff, "
        "median day |\n|" + "---|" * 12
    )
    lines = [head]
    for r in results:
        f, p, o = r.policies[r.best_fixed], r.policies[PLANNER], r.policies[ORACLE]
        g = r.policies[GUARDED]
        v = r.planner_vs_best_fixed
        lines.append(
            f"| {r.world} | {r.charges} | {r.best_fixed} | {f['recovered_amount']:.2f} -> "
            f"{p['recovered_amount']:.2f} ({v['recovered_amount_difference']:+.2f}, "
            f"[{v['recovered_amount_difference_lo']:+.2f}, "
            f"{v['recovered_amount_difference_hi']:+.2f}]) | {o['recovered_amount']:.2f} | "
            f"{_share(v['gap_closed_value'])} / {_share(v['gap_closed_usd'])} | "
            f"{f['retries_per_failed_charge']:.2f} -> {p['retries_per_failed_charge']:.2f} | "
            f"{f['median_days_to_recovery']:g} / {p['median_days_to_recovery']:g} / "
            f"{o['median_days_to_recovery']:g} | {f['discounted_value']:.2f} / "
            f"{p['discounted_value']:.2f} / {o['discounted_value']:.2f} | "
            f"{p['hopeless_share']:.1%} | {p.get('calibration_bias', math.nan):+.3f} / "
            f"{p.get('calibration_ece', math.nan):.3f} | "
            f"{v['guardrail_recovered_amount_difference']:+.2f}, "
            f"{v['guardrail_retries_difference']:+.2f}, {g['median_days_to_recovery']:g} |"
        )
    return "\n".join(lines)


def _share(value: float) -> str:
    """A share as a whole percentage; ``n/a`` when undefined (the oracle did not gain)."""
    return "n/a" if not math.isfinite(value) else f"{value:.0%}"


def write_suite_outputs(
    out: Path,
    results: Sequence[WorldResult],
    verdict: Mapping[str, Any],
    config: SuiteRunConfig,
) -> list[Path]:
    """Write ``results.json``, ``policies.csv`` and ``table.md`` atomically into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": asdict(replace(config)),
        "worlds": [r.to_dict() for r in results],
        "suite": dict(verdict),
    }
    rows = [
        {"world": r.world, "policy": label, **values}
        for r in results
        for label, values in r.policies.items()
    ]
    written = []
    for name, text in (
        ("results.json", json.dumps(payload, indent=2, default=float, allow_nan=True)),
        ("policies.csv", pd.DataFrame(rows).to_csv(index=False)),
        ("table.md", suite_table(results) + "\n"),
    ):
        path = out / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    return written
