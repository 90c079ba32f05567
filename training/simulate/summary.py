"""Marginals of a simulated world, as printed by ``retryopt simulate``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from retryopt.features import contract as C  # noqa: N812
from retryopt.training.simulate.config import NEVER_RETRIED_CODES

__all__ = ["WorldSummary", "summarize_attempts", "summarize_world"]


@dataclass(frozen=True)
class WorldSummary:
    """Headline figures of an attempts frame produced by the world (or any contract frame).

    ``first_attempt_failure_rate``: failed first attempts / charges; ``decline_mix``: share of
    each code among failed first attempts; ``recovery_rate``: charges with a failed first
    attempt that later succeeded; ``recovery_days``: percentiles (10, 25, 50, 75, 90) of days
    from the first failure to the recovery; ``recovered_2_12_days``: share of recoveries 2-12
    days after the first failure.
    """

    customers: int
    charges: int
    attempts: int
    first_attempt_failure_rate: float
    decline_mix: dict[str, float]
    hard_decline_share: float
    recovery_rate: float
    recovery_days: dict[int, float]
    recovered_2_12_days: float
    retries_per_failed_charge: float
    explored_retry_share: float

    def format(self) -> str:
        """A short human-readable report."""
        lines = [
            f"customers {self.customers:,}  charges {self.charges:,}  attempts {self.attempts:,}",
            f"first-attempt failure rate   {self.first_attempt_failure_rate:7.2%}"
            "   (published: 5-15 %, Recurly)",
            f"recovered by logging policy  {self.recovery_rate:7.2%}"
            "   (published: ~40-60 %, Churn Buster / Recurly)",
            "days to recovery (p10/p25/p50/p75/p90): "
            + " / ".join(f"{v:.1f}" for v in self.recovery_days.values()),
            f"recoveries 2-12 days after the first decline: {self.recovered_2_12_days:.1%}",
            f"retries per failed charge {self.retries_per_failed_charge:.2f}; "
            f"retries off the schedule (propensity < 0.5): {self.explored_retry_share:.1%}",
            f"hard declines among first declines: {self.hard_decline_share:.1%}",
            "decline mix of first declines:",
        ]
        for code, share in self.decline_mix.items():
            lines.append(f"  {code:<26}{share:7.2%}")
        return "\n".join(lines)


def summarize_attempts(attempts: pd.DataFrame) -> WorldSummary:
    """Summarise a canonical attempts frame (first attempt = earliest row of each charge)."""
    a = attempts.sort_values([C.CHARGE_ID, C.ATTEMPTED_AT], kind="mergesort")
    charge = a[C.CHARGE_ID].to_numpy(dtype=object)
    is_first = np.ones(len(a), dtype=bool)
    is_first[1:] = charge[1:] != charge[:-1]
    first = a[is_first]
    failed_first = first[first[C.OUTCOME] == C.FAILED]
    failed_ids = pd.Index(failed_first[C.CHARGE_ID])
    later = a[~is_first & a[C.CHARGE_ID].isin(failed_ids)]
    wins = later[later[C.OUTCOME] == C.SUCCEEDED]
    t_first = failed_first.set_index(C.CHARGE_ID)[C.ATTEMPTED_AT]
    days = (
        (wins[C.ATTEMPTED_AT].to_numpy() - t_first.reindex(wins[C.CHARGE_ID]).to_numpy())
        / np.timedelta64(1, "s")
        / 86400.0
    ).astype(np.float64)
    mix = failed_first[C.DECLINE_CODE].value_counts(normalize=True)
    prop = later[C.RETRY_PROPENSITY].to_numpy(dtype=np.float64)
    n_failed = len(failed_first)
    return WorldSummary(
        customers=int(a[C.CUSTOMER_ID].nunique()),
        charges=len(first),
        attempts=len(a),
        first_attempt_failure_rate=n_failed / len(first) if len(first) else float("nan"),
        decline_mix={str(k): float(v) for k, v in mix.items()},
        hard_decline_share=float(mix[mix.index.isin(list(NEVER_RETRIED_CODES))].sum()),
        recovery_rate=wins[C.CHARGE_ID].nunique() / n_failed if n_failed else float("nan"),
        recovery_days={
            q: float(np.quantile(days, q / 100)) if days.size else float("nan")
            for q in (10, 25, 50, 75, 90)
        },
        recovered_2_12_days=float(((days >= 2) & (days <= 12)).mean())
        if days.size
        else float("nan"),
        retries_per_failed_charge=len(later) / n_failed if n_failed else float("nan"),
        explored_retry_share=float((prop < 0.5).mean()) if prop.size else float("nan"),
    )


def summarize_world(world: object) -> WorldSummary:
    """Summary of a :class:`~training.simulate.world.SimulatedWorld`'s attempts."""
    attempts = getattr(world, "attempts", None)
    if not isinstance(attempts, pd.DataFrame):
        raise TypeError("summarize_world expects a SimulatedWorld")
    return summarize_attempts(attempts)
