"""The feature registry: every model feature declared once, in model-matrix order.

A declaration (:class:`Feature`) gives the feature's name, kind (numeric or categorical), group,
one-line meaning, source columns, what is known of them, its *stage* (how much of the candidate
time it reads) and its computation, which every path calls:

- ``state``: candidate-independent, one value per decision, from
  :class:`~features.decision_state.StateInputs` (numeric: float64 array, categorical: codes);
  evaluated by :func:`features.evaluate._decision_state` for both training and serving.
- ``calendar``: the candidate's local day only (:class:`~features.calendar.CalendarDays`);
  tabulated per day (:mod:`features.calendar`) and gathered per row.
- ``day``: the decision and the candidate's local day (:class:`~features.candidates.DayRows`).
- ``time``: the decision and the candidate time (:class:`~features.candidates.CandidateRows`).

Candidate-dependent computations write float64 values into an ``out`` array: a fresh column on
the frame path (:func:`features.evaluate._candidate_features`), a column view of the model matrix
in the encoder (:meth:`features.encoder.CandidateEncoder.matrix`).

:data:`NUMERIC_FEATURES` and :data:`CATEGORICAL_FEATURES` (model-matrix order: numeric first)
derive from :data:`FEATURES`; :func:`features_markdown` renders the table of
``docs/features.md`` (tested equal). ``python -m retryopt.features.registry`` prints it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, cast

import numpy as np

from retryopt.features import candidates as cf
from retryopt.features import decision_state as ds
from retryopt.features.calendar import CalendarCompute, CalendarFeatures
from retryopt.features.candidates import CandidateRows, DayRows
from retryopt.features.columns import _Codes
from retryopt.features.decision_state import StateInputs

__all__ = [
    "CALENDAR_FEATURES",
    "CATEGORICAL_FEATURES",
    "DAY_FEATURES",
    "FEATURES",
    "NUMERIC_FEATURES",
    "STATE_CATEGORICAL",
    "STATE_NUMERIC",
    "TIME_FEATURES",
    "Feature",
    "features_markdown",
]

Kind = Literal["numeric", "categorical"]
Stage = Literal["state", "calendar", "day", "time"]
StateNumericCompute = Callable[[StateInputs], np.ndarray]
StateCategoricalCompute = Callable[[StateInputs], _Codes]
DayCompute = Callable[[DayRows, np.ndarray], None]
TimeCompute = Callable[[CandidateRows, np.ndarray], None]
Compute = StateNumericCompute | StateCategoricalCompute | CalendarCompute | DayCompute | TimeCompute


@dataclass(frozen=True)
class Feature:
    """One model feature.

    Attributes
    ----------
    name
        Column name (raw features and model matrix).
    kind
        ``"numeric"`` (float64) or ``"categorical"`` (``str`` raw, spec levels when encoded).
    group
        Topic, for the docs.
    stage
        What the computation reads: ``"state"`` (candidate-independent), ``"calendar"``,
        ``"day"`` or ``"time"`` (see the module docstring).
    compute
        The computation (signature by stage, see the module docstring).
    meaning
        One line, for the docs.
    source
        Contract columns it is computed from.
    known
        Which rows of those columns are known at the decision.
    """

    name: str
    kind: Kind
    group: str
    stage: Stage
    compute: Compute
    meaning: str
    source: str
    known: str

    @property
    def dtype(self) -> str:
        """Raw feature dtype: ``float64`` (numeric) or ``str`` (categorical)."""
        return "float64" if self.kind == "numeric" else "str"

    @property
    def candidate_dependent(self) -> bool:
        """Whether the value depends on the candidate retry time."""
        return self.stage != "state"

    @property
    def computed_by(self) -> str:
        """Module-qualified name of the computation (``decision_state.retry_number``)."""
        return f"{self.compute.__module__.rsplit('.', 1)[-1]}.{self.compute.__name__}"


def _state(
    name: str, compute: StateNumericCompute, *, group: str, meaning: str, source: str, known: str
) -> Feature:
    return Feature(name, "numeric", group, "state", compute, meaning, source, known)


def _state_categorical(
    name: str,
    compute: StateCategoricalCompute,
    *,
    group: str,
    meaning: str,
    source: str,
    known: str,
) -> Feature:
    return Feature(name, "categorical", group, "state", compute, meaning, source, known)


def _calendar(
    name: str, compute: CalendarCompute, *, group: str, meaning: str, source: str, known: str
) -> Feature:
    return Feature(name, "numeric", group, "calendar", compute, meaning, source, known)


def _day(
    name: str, compute: DayCompute, *, group: str, meaning: str, source: str, known: str
) -> Feature:
    return Feature(name, "numeric", group, "day", compute, meaning, source, known)


def _time(
    name: str, compute: TimeCompute, *, group: str, meaning: str, source: str, known: str
) -> Feature:
    return Feature(name, "numeric", group, "time", compute, meaning, source, known)


_ZONE: Final = "customer_timezone, card_country"
_OTHER: Final = "other charges < now"
_LATEST: Final = "latest attempt"

# fmt: off
FEATURES: Final[tuple[Feature, ...]] = (
    # ---- numeric (model-matrix order) ----
    _state(
        "retry_number", ds.retry_number, group="attempt context",
        meaning="1 for the first retry, 2 for the second, ... (attempts of the charge so far)",
        source="attempted_at, charge_id", known="charge's attempts <= now",
    ),
    _time(
        "hours_since_first_failure", cf.hours_since_first_failure, group="attempt context",
        meaning="`t` - first attempt of the charge, hours",
        source="attempted_at", known="charge's attempts",
    ),
    _time(
        "hours_since_prev_attempt", cf.hours_since_prev_attempt, group="attempt context",
        meaning="`t` - latest attempt of the charge, hours",
        source="attempted_at", known="charge's attempts",
    ),
    _time(
        "hours_from_now", cf.hours_from_now, group="attempt context",
        meaning="`t` - `now`, hours", source="(decision)", known="now",
    ),
    _time(
        "card_attempts_24h", cf.card_attempts_24h, group="attempt context",
        meaning="known attempts of this card in `[t - 24 h, t)` (Mastercard: max 10 declines "
        "/ 24 h)",
        source="attempted_at, card_id / surrogate", known="known",
    ),
    _time(
        "card_attempts_30d", cf.card_attempts_30d, group="attempt context",
        meaning="same in `[t - 30 d, t)` (Mastercard 35, Visa 20 reattempts / 30 d)",
        source="attempted_at, card_id / surrogate", known="known",
    ),
    _state(
        "last_decline_hard", ds.last_decline_hard, group="decline",
        meaning="latest decline is hard (taxonomy rule != retry, after its advice code)",
        source="decline_code, network_advice_code", known=_LATEST,
    ),
    _state(
        "first_decline_hard", ds.first_decline_hard, group="decline",
        meaning="same for the charge's first decline",
        source="decline_code, network_advice_code", known="first attempt",
    ),
    _state(
        "last_visa_category", ds.last_visa_category, group="decline",
        meaning="Visa decline category 1-4 of the latest code (NaN for Stripe names)",
        source="decline_code", known=_LATEST,
    ),
    _state(
        "advice_never_retry", ds.advice_never_retry, group="decline",
        meaning="latest Mastercard advice code forbids retries (03, 21)",
        source="network_advice_code", known=_LATEST,
    ),
    _state(
        "advice_min_wait_hours", ds.advice_min_wait_hours, group="decline",
        meaning="minimum wait of the latest advice code (24: 1 h ... 30: 10 days), NaN if none",
        source="network_advice_code", known=_LATEST,
    ),
    _state(
        "distinct_codes", ds.distinct_codes, group="decline",
        meaning="distinct decline codes of the charge so far",
        source="decline_code", known="charge's attempts",
    ),
    _time(
        "local_hour", cf.local_hour, group="local time",
        meaning="hour of `t` in the customer's zone (fractional)",
        source=_ZONE, known="latest attempt's zone",
    ),
    _calendar(
        "local_weekday", cf.local_weekday, group="local time",
        meaning="weekday of `t`, Monday = 0", source=_ZONE, known="latest attempt's zone",
    ),
    _calendar(
        "local_day_of_month", cf.local_day_of_month, group="local time",
        meaning="day of month of `t`", source=_ZONE, known="latest attempt's zone",
    ),
    _calendar(
        "days_to_month_end", cf.days_to_month_end, group="local time",
        meaning="days from `t`'s date to the last day of its month",
        source=_ZONE, known="latest attempt's zone",
    ),
    _calendar(
        "is_business_day", cf.is_business_day, group="local time",
        meaning="`t` is Monday-Friday (no holiday calendar)",
        source=_ZONE, known="latest attempt's zone",
    ),
    _calendar(
        "days_since_1st", cf.days_since_1st, group="pay cycle",
        meaning="calendar days since the last 1st of a month (local date of `t`)",
        source=_ZONE, known="latest attempt's zone",
    ),
    _calendar(
        "days_until_1st", cf.days_until_1st, group="pay cycle",
        meaning="calendar days until the next 1st", source=_ZONE, known="latest attempt's zone",
    ),
    _calendar(
        "days_since_15th", cf.days_since_15th, group="pay cycle",
        meaning="calendar days since the last 15th", source=_ZONE, known="latest attempt's zone",
    ),
    _calendar(
        "days_until_15th", cf.days_until_15th, group="pay cycle",
        meaning="calendar days until the next 15th", source=_ZONE, known="latest attempt's zone",
    ),
    _calendar(
        "days_since_last_business_day", cf.days_since_last_business_day, group="pay cycle",
        meaning="calendar days since the last Monday-Friday day of a month",
        source=_ZONE, known="latest attempt's zone",
    ),
    _calendar(
        "days_until_last_business_day", cf.days_until_last_business_day, group="pay cycle",
        meaning="calendar days until the last Monday-Friday day of a month",
        source=_ZONE, known="latest attempt's zone",
    ),
    _calendar(
        "days_since_friday", cf.days_since_friday, group="pay cycle",
        meaning="days since a Friday (0 on Fridays)", source=_ZONE, known="latest attempt's zone",
    ),
    _calendar(
        "days_until_friday", cf.days_until_friday, group="pay cycle",
        meaning="days until a Friday (0 on Fridays)", source=_ZONE, known="latest attempt's zone",
    ),
    _state(
        "prior_successes", ds.prior_successes, group="payment pattern",
        meaning="successful payments of the customer's other charges",
        source="outcome", known=_OTHER,
    ),
    _day(
        "success_dom_distance", cf.success_dom_distance, group="payment pattern",
        meaning="circular distance (days) from `t`'s local day of month to the mean local day "
        "of month of those successes (as a fraction of the month); NaN if none",
        source="attempted_at, outcome, zone", known=_OTHER,
    ),
    _state(
        "success_dom_concentration", ds.success_dom_concentration, group="payment pattern",
        meaning="mean resultant length of those days (1 = always the same day)",
        source="attempted_at, outcome, zone", known=_OTHER,
    ),
    _day(
        "success_weekday_distance", cf.success_weekday_distance, group="payment pattern",
        meaning="circular distance (days) from `t`'s weekday to the successes' mean weekday",
        source="attempted_at, outcome, zone", known=_OTHER,
    ),
    _state(
        "success_weekday_concentration", ds.success_weekday_concentration,
        group="payment pattern",
        meaning="mean resultant length of the successes' weekdays",
        source="attempted_at, outcome, zone", known=_OTHER,
    ),
    _state(
        "prior_recoveries", ds.prior_recoveries, group="payment pattern",
        meaning="other charges whose first attempt failed and that later succeeded",
        source="outcome", known="success < now",
    ),
    _state(
        "mean_recovery_hours", ds.mean_recovery_hours, group="payment pattern",
        meaning="mean hours from first failure to recovery of those charges",
        source="attempted_at, outcome", known="success < now",
    ),
    _time(
        "card_age_days", cf.card_age_days, group="card",
        meaning="`t` - `card_added_at` of the latest attempt, days",
        source="card_added_at", known=_LATEST,
    ),
    _time(
        "days_to_expiry", cf.days_to_expiry, group="card",
        meaning="days from `t` to the end of the card's expiry month (UTC; negative = expired)",
        source="card_exp_month, card_exp_year", known=_LATEST,
    ),
    _time(
        "card_expired", cf.card_expired, group="card",
        meaning="`t` is after the end of the expiry month",
        source="card_exp_month, card_exp_year", known=_LATEST,
    ),
    _state(
        "card_changed", ds.card_changed, group="card",
        meaning="the latest attempt used another card than the first attempt",
        source="card_id / surrogate", known="charge's attempts",
    ),
    _state(
        "log_amount", ds.log_amount, group="amount",
        meaning="log(1 + amount in minor units)", source="amount", known=_LATEST,
    ),
    _state(
        "amount_vs_customer_mean", ds.amount_vs_customer_mean, group="amount",
        meaning="amount / mean first-attempt amount of the customer's other charges; NaN if none",
        source="amount", known="other charges started < now",
    ),
    _state(
        "prior_charges", ds.prior_charges, group="customer history",
        meaning="other charges of the customer that started before now",
        source="charge_id, attempted_at", known=_OTHER,
    ),
    _state(
        "prior_first_failures", ds.prior_first_failures, group="customer history",
        meaning="those whose first attempt failed", source="outcome", known=_OTHER,
    ),
    _state(
        "prior_recovery_rate", ds.prior_recovery_rate, group="customer history",
        meaning="`prior_recoveries / prior_first_failures`; NaN if no failure (a charge still "
        "in dunning at now counts as not recovered yet)",
        source="outcome", known=_OTHER,
    ),
    _time(
        "tenure_days", cf.tenure_days, group="customer history",
        meaning="`t` - the customer's first attempt, days",
        source="attempted_at", known="first attempt <= now",
    ),
    # ---- categorical (after the numeric ones) ----
    _state_categorical(
        "last_decline_code", ds.last_decline_code, group="decline",
        meaning="latest decline code, normalised (`taxonomy.normalize_code`)",
        source="decline_code", known=_LATEST,
    ),
    _state_categorical(
        "first_decline_code", ds.first_decline_code, group="decline",
        meaning="the charge's first decline code", source="decline_code", known="first attempt",
    ),
    _state_categorical(
        "last_decline_family", ds.last_decline_family, group="decline",
        meaning="taxonomy family of the latest decline (funds, issuer_unavailable, ...)",
        source="decline_code, network_advice_code", known=_LATEST,
    ),
    _state_categorical(
        "first_decline_family", ds.first_decline_family, group="decline",
        meaning="taxonomy family of the charge's first decline",
        source="decline_code, network_advice_code", known="first attempt",
    ),
    _state_categorical(
        "decline_sequence", ds.decline_sequence, group="decline",
        meaning='`"<previous code>><latest code>"`, `"none>51"` on the first retry',
        source="decline_code", known="charge's attempts",
    ),
    _state_categorical(
        "network_advice_code", ds.network_advice_code, group="decline",
        meaning="latest network (Mastercard) advice code, normalised",
        source="network_advice_code", known=_LATEST,
    ),
    _state_categorical(
        "card_brand", ds.card_brand, group="card",
        meaning="card brand of the latest attempt", source="card_brand", known=_LATEST,
    ),
    _state_categorical(
        "card_funding", ds.card_funding, group="card",
        meaning="card funding of the latest attempt", source="card_funding", known=_LATEST,
    ),
    _state_categorical(
        "card_country", ds.card_country, group="card",
        meaning="card country of the latest attempt", source="card_country", known=_LATEST,
    ),
    _state_categorical(
        "issuer", ds.issuer, group="card",
        meaning="issuer of the latest attempt (high cardinality, see below)",
        source="issuer", known=_LATEST,
    ),
    _state_categorical(
        "currency", ds.currency, group="amount",
        meaning="currency of the charge", source="currency", known=_LATEST,
    ),
)
# fmt: on

NUMERIC_FEATURES: Final[tuple[str, ...]] = tuple(f.name for f in FEATURES if f.kind == "numeric")
CATEGORICAL_FEATURES: Final[tuple[str, ...]] = tuple(
    f.name for f in FEATURES if f.kind == "categorical"
)


def _computations(stage: Stage, kind: Kind = "numeric") -> tuple[tuple[str, Compute], ...]:
    return tuple((f.name, f.compute) for f in FEATURES if f.stage == stage and f.kind == kind)


# (name, computation) per stage, in model-matrix order (the evaluation order of every path).
STATE_NUMERIC: Final = cast(tuple[tuple[str, StateNumericCompute], ...], _computations("state"))
STATE_CATEGORICAL: Final = cast(
    tuple[tuple[str, StateCategoricalCompute], ...], _computations("state", "categorical")
)
CALENDAR_FEATURES: Final = cast(CalendarFeatures, _computations("calendar"))
DAY_FEATURES: Final = cast(tuple[tuple[str, DayCompute], ...], _computations("day"))
TIME_FEATURES: Final = cast(tuple[tuple[str, TimeCompute], ...], _computations("time"))


def _check(features: tuple[Feature, ...]) -> None:
    names = [f.name for f in features]
    if len(set(names)) != len(names):
        raise ValueError(f"feature registry: duplicate names {sorted(names)}")
    kinds = [f.kind for f in features]
    if kinds != sorted(kinds, key=lambda k: k != "numeric"):
        raise ValueError("feature registry: numeric features must come before categorical ones")
    for f in features:
        if f.kind == "categorical" and f.stage != "state":
            raise ValueError(f"feature {f.name!r}: categorical features must be stage 'state'")
        if not f.meaning or "\n" in f.meaning or "|" in f.meaning.replace("\\|", ""):
            raise ValueError(f"feature {f.name!r}: meaning must be one line without '|'")


_check(FEATURES)


def features_markdown() -> str:
    """The feature table of ``docs/features.md`` (markdown, one row per feature, model order).

    Returns
    -------
    str
        Header, separator and one row per :data:`FEATURES` entry, newline-terminated.
    """
    lines = [
        "| name | kind | group | depends on `t` | meaning | source columns | known at "
        "| computed by |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in FEATURES:
        t = "no" if not f.candidate_dependent else f"yes ({f.stage})"
        lines.append(
            f"| `{f.name}` | {f.kind} | {f.group} | {t} | {f.meaning} | {f.source} | {f.known} "
            f"| `{f.computed_by}` |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(features_markdown(), end="")
