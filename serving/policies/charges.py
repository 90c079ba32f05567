"""The rules' view of each charge (:class:`.rules.ChargeState`), built from a batch's columns.

:class:`RuleRows` holds the contract columns the rules read as plain lists (from a pandas frame or
from :class:`features.columns.AttemptColumns`); :func:`charge_states` groups them per charge, with
the card's earlier attempts across the customer's charges for the networks' caps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from retryopt.features import contract as c
from retryopt.features.columns import AttemptColumns
from retryopt.features.decisions import DecisionBatch
from retryopt.features.localtime import resolve_zone
from retryopt.serving.policies.rules import CardRef, ChargeState


def _opt_str(value: object) -> str | None:
    return None if value is None or pd.isna(value) else str(value)  # type: ignore[call-overload]


def _opt_int(value: object) -> int | None:
    return None if value is None or pd.isna(value) else int(value)  # type: ignore[call-overload]


def card_refs(frame: pd.DataFrame) -> list[CardRef]:
    """One :class:`CardRef` per row of a canonical contract frame."""
    brands = frame[c.CARD_BRAND].tolist()
    ids = frame[c.CARD_ID].tolist() if c.CARD_ID in frame else [None] * len(frame)
    months = frame[c.CARD_EXP_MONTH].tolist()
    years = frame[c.CARD_EXP_YEAR].tolist()
    return [
        CardRef(
            brand=str(b).lower() if _opt_str(b) else "unknown",
            card_id=_opt_str(i),
            exp_month=_opt_int(m),
            exp_year=_opt_int(y),
        )
        for b, i, m, y in zip(brands, ids, months, years, strict=True)
    ]


@dataclass(frozen=True, kw_only=True)
class RuleRows:
    """The contract columns the rules read, as plain lists / int64 arrays (no pandas).

    Built once per batch from a canonical frame (:meth:`from_frame`) or from
    :class:`features.columns.AttemptColumns` (:meth:`from_columns`); strings are ``None`` when
    missing, brands lower-case (``"unknown"`` when missing), expiry ``None`` when missing.
    """

    charge_id: list[Any]
    customer_id: list[Any]
    attempted_at: np.ndarray
    outcome: list[str]
    decline_code: list[str | None]
    advice_code: list[str | None]
    brand: list[str]
    card_id: list[str | None]
    exp_month: list[int | None]
    exp_year: list[int | None]
    timezone: list[Any]
    country: list[Any]

    def __len__(self) -> int:
        return len(self.charge_id)

    def card(self, i: int) -> CardRef:
        """The card of row ``i``."""
        return CardRef(
            brand=self.brand[i],
            card_id=self.card_id[i],
            exp_month=self.exp_month[i],
            exp_year=self.exp_year[i],
        )

    def same_card(self, card: CardRef, rows: np.ndarray) -> np.ndarray:
        """Whether each row of ``rows`` used ``card`` (:meth:`CardRef.same_as`)."""
        key = (card.brand, card.exp_month, card.exp_year)
        out = np.empty(rows.size, dtype=bool)
        for k, i in enumerate(rows.tolist()):
            other_id = self.card_id[i]
            if card.card_id is not None and other_id is not None:
                out[k] = card.card_id == other_id
            else:
                out[k] = key == (self.brand[i], self.exp_month[i], self.exp_year[i])
        return out

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> RuleRows:
        """The rules' columns of a canonical contract frame."""
        n = len(frame)

        def strs(col: str) -> list[str | None]:
            return [_opt_str(v) for v in frame[col].tolist()] if col in frame else [None] * n

        def ints(col: str) -> list[int | None]:
            return [_opt_int(v) for v in frame[col].tolist()] if col in frame else [None] * n

        times = frame[c.ATTEMPTED_AT].to_numpy(dtype="datetime64[ns]").astype(np.int64)
        return cls(
            charge_id=frame[c.CHARGE_ID].tolist(),
            customer_id=frame[c.CUSTOMER_ID].tolist() if c.CUSTOMER_ID in frame else [None] * n,
            attempted_at=times,
            outcome=[str(o) for o in frame[c.OUTCOME].tolist()],
            decline_code=strs(c.DECLINE_CODE),
            advice_code=strs(c.NETWORK_ADVICE_CODE),
            brand=[b.lower() if b else "unknown" for b in strs(c.CARD_BRAND)],
            card_id=strs(c.CARD_ID),
            exp_month=ints(c.CARD_EXP_MONTH),
            exp_year=ints(c.CARD_EXP_YEAR),
            timezone=frame[c.CUSTOMER_TIMEZONE].tolist()
            if c.CUSTOMER_TIMEZONE in frame
            else [None] * n,
            country=frame[c.CARD_COUNTRY].tolist() if c.CARD_COUNTRY in frame else [None] * n,
        )

    @classmethod
    def from_columns(cls, cols: AttemptColumns) -> RuleRows:
        """The rules' columns of :class:`features.columns.AttemptColumns` (serving's fast path)."""
        n = cols.n_rows
        data = cols.columns

        def raw(col: str) -> list[Any]:
            values = data.get(col)
            if values is None:
                return [None] * n
            return values.tolist() if isinstance(values, np.ndarray) else list(values)

        def strs(col: str) -> list[str | None]:
            return [None if v is None or v != v else str(v) for v in raw(col)]

        def ints(col: str) -> list[int | None]:
            return [None if v is None or v != v else int(v) for v in raw(col)]

        return cls(
            charge_id=raw(c.CHARGE_ID),
            customer_id=raw(c.CUSTOMER_ID),
            attempted_at=np.asarray(data[c.ATTEMPTED_AT], dtype=np.int64),
            outcome=[str(o) for o in raw(c.OUTCOME)],
            decline_code=strs(c.DECLINE_CODE),
            advice_code=strs(c.NETWORK_ADVICE_CODE),
            brand=[b.lower() if b else "unknown" for b in strs(c.CARD_BRAND)],
            card_id=strs(c.CARD_ID),
            exp_month=ints(c.CARD_EXP_MONTH),
            exp_year=ints(c.CARD_EXP_YEAR),
            timezone=raw(c.CUSTOMER_TIMEZONE),
            country=raw(c.CARD_COUNTRY),
        )


def _group_sorted(keys: list[Any], times: np.ndarray) -> tuple[dict[Any, np.ndarray], np.ndarray]:
    """Rows grouped by key, each group in time order (stable): key -> row positions."""
    if not keys:
        return {}, np.array([], dtype=np.int64)
    if len(set(keys)) == 1:  # the dict's notion of equal keys, as ``lookup`` below
        # One key (a single-charge request): the stable time order is the whole grouping.
        return {keys[0]: np.argsort(times, kind="stable")}, np.zeros(len(keys), dtype=np.int64)
    lookup: dict[Any, int] = {}
    codes = np.fromiter(
        (lookup.setdefault(k, len(lookup)) for k in keys), dtype=np.int64, count=len(keys)
    )
    order = np.lexsort((times, codes))  # stable: ties keep the input order
    sorted_codes = codes[order]
    bounds = np.searchsorted(sorted_codes, np.arange(len(lookup) + 1))
    groups = {k: order[bounds[v] : bounds[v + 1]] for k, v in lookup.items()}
    return groups, codes


def _view_ns(values: np.ndarray) -> np.ndarray:
    return values.view("datetime64[ns]")


def _astype_ns(values: np.ndarray) -> np.ndarray:
    return values.astype("datetime64[ns]")


_ZONES: dict[tuple[Any, Any], str] = {}


def _resolve_zone_cached(customer_timezone: Any, card_country: Any) -> str:
    """:func:`resolve_zone`, memoised (it validates the zone through ZoneInfo on every call)."""
    try:
        return _ZONES[(customer_timezone, card_country)]
    except KeyError:
        pass
    except TypeError:  # unhashable values: not cached
        return resolve_zone(customer_timezone, card_country)
    zone = resolve_zone(customer_timezone, card_country)
    if len(_ZONES) >= 4096:
        _ZONES.clear()
    _ZONES[(customer_timezone, card_country)] = zone
    return zone


def charge_states_from_rows(
    *,
    charge_ids: Sequence[Any],
    now: np.ndarray,
    attempts: RuleRows,
    history: RuleRows | None = None,
    current_cards: Sequence[CardRef | None] | None = None,
) -> list[ChargeState]:
    """Build the rules' view of every charge from plain columns (no pandas).

    Parameters
    ----------
    charge_ids
        The charges to decide.
    now
        Decision time per charge (``datetime64[ns]``, UTC naive).
    attempts
        The charges' attempts (any order; sorted by time per charge here, stable).
    history
        The customers' other attempts (rows of the decided charge itself are ignored).
    current_cards
        Optional card per charge that the next retry would use; ``None`` = the card of the
        charge's last attempt.
    """
    groups, _ = _group_sorted(attempts.charge_id, attempts.attempted_at)
    hist_groups: dict[Any, np.ndarray] = {}
    hist_retry = np.array([], dtype=bool)
    if history is not None and len(history):
        hist_groups, _ = _group_sorted(history.customer_id, history.attempted_at)
        # A history row is a reattempt when an earlier row of the same customer has the same
        # charge (time order, stable; the decided charge's own rows are dropped below and never
        # precede another charge's rows, so this is exact after the drop).
        hist_retry = np.zeros(len(history), dtype=bool)
        for rows in hist_groups.values():
            seen: set[Any] = set()
            for i in rows.tolist():
                cid = history.charge_id[i]
                hist_retry[i] = cid in seen
                seen.add(cid)
    now_ns = np.asarray(now).astype("datetime64[ns]")
    empty_t = np.array([], dtype="datetime64[ns]")
    # int64 ns columns as datetime64[ns]: a view of the (fresh, fancy-indexed) rows; other
    # dtypes are converted as before.
    as_ns: Callable[[np.ndarray], np.ndarray] = (
        _view_ns if attempts.attempted_at.dtype == np.int64 else _astype_ns
    )
    failed_all: np.ndarray | None = None  # per attempt row: failed (built when first needed)
    retry_all: np.ndarray | None = None  # per attempt row: not the first of its charge
    states: list[ChargeState] = []
    for k, charge_id in enumerate(list(charge_ids)):
        t_now = now_ns[k]
        idx = groups.get(charge_id)
        if idx is None or idx.size == 0:
            states.append(
                ChargeState(
                    charge_id=str(charge_id),
                    now=t_now,
                    attempt_times=empty_t,
                    outcomes=(),
                    decline_codes=(),
                    advice_codes=(),
                    cards=(),
                    current_card=CardRef(brand="unknown"),
                )
            )
            continue
        rows = idx.tolist()
        times = as_ns(attempts.attempted_at[idx])
        cards = tuple([attempts.card(i) for i in rows])
        current = None if current_cards is None else current_cards[k]
        current = current or cards[-1]
        outcomes = tuple([attempts.outcome[i] for i in rows])
        last = rows[-1]
        zone = _resolve_zone_cached(attempts.timezone[last], attempts.country[last])
        decline_codes = tuple([attempts.decline_code[i] for i in rows])
        advice_codes = tuple([attempts.advice_code[i] for i in rows])
        hidx = None
        if history is not None and hist_groups:
            hidx = hist_groups.get(attempts.customer_id[last])
            if hidx is not None and hidx.size:
                hidx = hidx[np.array([history.charge_id[i] != charge_id for i in hidx.tolist()])]
        if history is None or hidx is None or not hidx.size:
            # No other charge of the customer: the card events are this charge's attempts on
            # the current card (read from batch-wide columns rather than rebuilt per charge).
            if failed_all is None:
                failed_all = np.fromiter(
                    (o == c.FAILED for o in attempts.outcome), dtype=bool, count=len(attempts)
                )
                retry_all = np.ones(len(attempts), dtype=bool)
                retry_all[[g[0] for g in groups.values()]] = False
            assert retry_all is not None
            same = attempts.same_card(current, idx)
            sel = idx if same.all() else idx[same]
            events = (as_ns(attempts.attempted_at[sel]), failed_all[sel], retry_all[sel])
        else:
            # Card events: this charge's attempts plus the customer's other charges on this card.
            ev_t = [attempts.attempted_at[idx], history.attempted_at[hidx]]
            ev_f = [
                np.array([o == c.FAILED for o in outcomes], dtype=bool),
                np.array([history.outcome[i] == c.FAILED for i in hidx.tolist()]),
            ]
            ev_r = [np.arange(len(outcomes)) > 0, hist_retry[hidx]]
            same = np.concatenate(
                [attempts.same_card(current, idx), history.same_card(current, hidx)]
            )
            events = (
                np.concatenate(ev_t)[same].astype("datetime64[ns]"),
                np.concatenate(ev_f).astype(bool)[same],
                np.concatenate(ev_r).astype(bool)[same],
            )
        states.append(
            ChargeState(
                charge_id=str(charge_id),
                now=t_now,
                attempt_times=times,
                outcomes=outcomes,
                decline_codes=decline_codes,
                advice_codes=advice_codes,
                cards=cards,
                current_card=current,
                timezone=zone,
                card_event_times=events[0],
                card_event_failed=events[1],
                card_event_is_retry=events[2],
            )
        )
    return states


def charge_states(
    batch: DecisionBatch,
    *,
    current_cards: Sequence[CardRef | None] | None = None,
    columns: tuple[AttemptColumns, AttemptColumns | None] | None = None,
) -> list[ChargeState]:
    """Build the rules' view of every charge of ``batch``.

    Parameters
    ----------
    batch
        Failed charges, their attempts and the customers' history.
    current_cards
        Optional card per charge that the next retry would use (after a card update); ``None``
        (or a ``None`` entry) means the card of the charge's last attempt.
    columns
        Optional ``(attempts, history)`` holding the same rows as ``batch.attempts`` /
        ``batch.history`` as :class:`features.columns.AttemptColumns`; read instead of the frames.
    """
    if columns is not None:
        attempts = RuleRows.from_columns(columns[0])
        history = None if columns[1] is None else RuleRows.from_columns(columns[1])
    else:
        attempts = RuleRows.from_frame(batch.attempts)
        hist_frame = batch.history
        history = (
            None if hist_frame is None or not len(hist_frame) else RuleRows.from_frame(hist_frame)
        )
    return charge_states_from_rows(
        charge_ids=batch.charge_ids.tolist(),
        now=np.asarray(batch.now),
        attempts=attempts,
        history=history,
        current_cards=current_cards,
    )
