"""The store as the data contract: the attempts reported back, with the logged propensities.

Every stored attempt becomes one contract row (:func:`serving.outcomes.contract_row`: what the
report says, completed by its charge as last decided or described). ``retry_propensity`` comes
from the decision log:

- a charge's first attempt is not a retry: no propensity (NaN);
- a retry is matched to the charge's latest decision made between the previous attempt
  (included) and the retry (excluded: a decision made at the retry's time is the next one's).
  If that decision said ``retry`` and the retry was made within the hour of the grid that
  starts at the recommended ``retry_at`` (``retry_at <= attempted_at < retry_at + 1 h``), the
  row carries the decision's propensity;
- otherwise (no decision, a ``stop`` overridden, a retry made at another time) the time was
  chosen by someone else with an unknown probability: NaN. Off-policy estimators leave such
  rows out of their weights; the direct method and training still use them.

Beyond the contract, the frame carries ``arm`` (:data:`ARM_COLUMN`): the A/B arm of the
charge's first logged decision (a charge's whole dunning follows its customer's arm), empty for
charges never decided. Validation (``retryopt validate``, training) drops the extra column.

Attempts of charges the service never saw (no decision, no charge facts in the report) lack
the contract's required columns and are left out (counted in :class:`ExportResult`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pandas as pd

from retryopt.features import contract as c
from retryopt.features.localtime import NS_PER_HOUR
from retryopt.features.validation import ValidationReport, validate_attempts
from retryopt.serving.outcomes import contract_row
from retryopt.serving.store import LoggedDecision, SqlStore, from_us

HOUR_US = NS_PER_HOUR // 1000
ARM_COLUMN = "arm"


@dataclass(frozen=True)
class ExportResult:
    """The exported contract frame and what was left out."""

    attempts: pd.DataFrame  # canonical (validated) contract frame, plus ``arm``
    n_unknown_charge: int  # attempts of charges without facts (not exportable)
    n_with_propensity: int  # retries matched to a logged decision's chosen time
    report: ValidationReport  # the contract check of the exported rows


def retry_propensity(
    attempted_at: int, previous_at: int | None, decisions: list[LoggedDecision]
) -> float:
    """The logged propensity of a retry (NaN when not made at a logged decision's time).

    Parameters
    ----------
    attempted_at, previous_at
        The retry's time and the charge's previous attempt's (None: a first attempt), in
        microseconds since the epoch.
    decisions
        The charge's logged decisions, oldest first.
    """
    if previous_at is None:
        return float("nan")
    # Strictly before the retry: a decision made at the retry's own time already knows its
    # outcome (a client asking the moment an attempt failed) and is the next retry's.
    made = [d for d in decisions if previous_at <= d.decided_at < attempted_at]
    if not made:
        return float("nan")
    d = made[-1]
    if d.action != "retry" or d.retry_at is None:
        return float("nan")
    if d.retry_at <= attempted_at < d.retry_at + HOUR_US:
        return d.propensity
    return float("nan")


def export_attempts(store: SqlStore) -> ExportResult:
    """Every stored attempt as the data contract (see the module docstring).

    Rows that break the contract (none, since reports are checked on the way in) are left out
    and described in the result's report.
    """
    by_charge: dict[str, list[LoggedDecision]] = defaultdict(list)
    for d in store.logged_decisions():
        by_charge[d.charge_id].append(d)
    rows = []
    unknown = 0
    previous: tuple[str, int] | None = None
    for a in store.all_attempts():
        prev_at = previous[1] if previous is not None and previous[0] == a.charge_id else None
        previous = (a.charge_id, a.attempted_at)
        row = contract_row(a.report, a.charge, attempted_at=from_us(a.attempted_at))
        if any(row[col] is None for col in c.REQUIRED_COLUMNS if col != c.DECLINE_CODE):
            unknown += 1
            continue
        row[c.RETRY_PROPENSITY] = retry_propensity(
            a.attempted_at, prev_at, by_charge.get(a.charge_id, [])
        )
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(c.ALL_COLUMNS))
    frame[c.RETRY_PROPENSITY] = frame[c.RETRY_PROPENSITY].astype(np.float64)
    result = validate_attempts(frame, drop_invalid=True)
    clean = result.clean
    first_arm = {charge: decisions[0].arm for charge, decisions in by_charge.items()}
    clean[ARM_COLUMN] = pd.Series(
        clean[c.CHARGE_ID].map(first_arm).to_numpy(dtype=object), index=clean.index, dtype="str"
    )
    return ExportResult(
        attempts=clean,
        n_unknown_charge=unknown,
        n_with_propensity=int(clean[c.RETRY_PROPENSITY].notna().sum()),
        report=result.report,
    )
