"""The ``fallback`` policy: the network rules and a fixed ladder, served when no model is loaded."""

from __future__ import annotations

import numpy as np
import pandas as pd

from retryopt.features.build import AttemptColumns
from retryopt.features.decisions import DecisionBatch
from retryopt.serving.policies.base import Decision, _RulesPolicy
from retryopt.serving.policies.explain import _local_label
from retryopt.serving.policies.rules import Reason, RuleResult


class FallbackPolicy(_RulesPolicy):
    """The ``fallback`` policy used when no model is available.

    Rules first (exactly as the model policies), then a fixed ladder: retry ``k`` (1-based) at
    the first allowed hour at or after ``first failure + fallback_ladder_hours[k - 1]`` (the last
    ladder step repeats), or the last allowed hour of the window if none is later.
    """

    name = "fallback"

    def _choose(
        self,
        batch: DecisionBatch,
        rules: list[RuleResult],
        zones: list[str],
        *,
        columns: tuple[AttemptColumns, AttemptColumns | None] | None = None,
    ) -> list[Decision]:
        ladder = self.config.fallback_ladder_hours
        out: list[Decision] = []
        for r, zone in zip(rules, zones, strict=True):
            k = min(r.retries_used, len(ladder) - 1)
            assert r.first_failure is not None
            target = np.asarray(r.first_failure).astype("datetime64[ns]") + np.timedelta64(
                int(ladder[k] * 3600), "s"
            )
            ok = np.flatnonzero(r.allowed & (r.grid >= target))
            j = int(ok[0]) if ok.size else int(np.flatnonzero(r.allowed)[-1])
            out.append(
                Decision(
                    charge_id=r.charge_id,
                    action="retry",
                    retry_at=pd.Timestamp(r.grid[j]).tz_localize("UTC"),
                    success_probability=None,
                    reason=str(Reason.FALLBACK_SCHEDULE),
                    source="rule-based fallback schedule (no model loaded)",
                    action_required=None,
                    alternatives=(),
                    explanation=(
                        f"no model loaded: fixed schedule, retry {r.retries_used + 1} at "
                        f"{ladder[k]:g} h after the first failure; "
                        f"{_local_label(r.grid[j], zone, int(r.local_hours[j]))}"
                        + ("; " + "; ".join(r.notes) if r.notes else "")
                    ),
                    model_version=None,
                    policy=self.name,
                )
            )
        return out
