"""The candidate grid of every charge the stop rules leave open: local hours, quiet hours, caps.

:func:`evaluate_rules` is the rules' verdict on one charge (stop rules of :mod:`.rules`, then the
grid); :func:`evaluate_rules_batch` gives the same verdicts for a batch with the grid stage in flat
numpy arrays (the serving hot path).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from retryopt.features.decisions import Constraints
from retryopt.features.localtime import NS_PER_HOUR, constant_offset, local_hours
from retryopt.serving.policies import caps
from retryopt.serving.policies.rules import (
    MASTERCARD_SOURCE,
    MERCHANT_SOURCE,
    VISA_SOURCE,
    ChargeState,
    Reason,
    RuleResult,
    _advice_wait_hours,
    _Open,
    _screen,
    _stop,
)


def evaluate_rules(
    state: ChargeState, constraints: Constraints, *, grid_hours: int = 1
) -> RuleResult:
    """Apply the network and merchant rules to one failed charge.

    Parameters
    ----------
    state
        The charge, its attempts and the card's recent attempts.
    constraints
        Budget, window, minimum gap, quiet hours.
    grid_hours
        Spacing of the candidate grid in hours (whole clock hours, UTC).

    Returns
    -------
    RuleResult
        A stop with reason and source, or the candidate grid with its allowed mask.
    """
    screened = _screen(state, constraints, grid_hours=grid_hours)
    if isinstance(screened, RuleResult):
        return screened
    return _grid_verdict(screened, constraints)


def _grid_hours(grid_ns: np.ndarray, step: int, zone: str) -> np.ndarray:
    """:func:`local_hours` of one charge's grid ``grid_ns`` (int64 ns, ascending by ``step``)."""
    first_ns = int(grid_ns[0])
    if first_ns % NS_PER_HOUR == 0 and step % NS_PER_HOUR == 0:
        # Whole-hour grid: with one UTC offset over the grid (as local_hours checks), the local
        # hour of point r is (h0 + r * step hours) % 24, h0 that of the first point (floor
        # division distributes over whole hours exactly).
        off = constant_offset(zone, first_ns, int(grid_ns[-1]))
        if off is None:
            return local_hours(grid_ns.view("datetime64[ns]"), zone)
        h0 = ((first_ns + off) // NS_PER_HOUR) % 24
        return (
            np.arange(h0, h0 + grid_ns.size * (step // NS_PER_HOUR), step // NS_PER_HOUR) % 24
        ).astype(np.int64, copy=False)
    return local_hours(grid_ns.view("datetime64[ns]"), zone)


def _grid_verdict(o: _Open, constraints: Constraints) -> RuleResult:
    """The candidate grid of one screened charge: quiet hours and the networks' caps."""
    state, notes = o.state, list(o.notes)
    retries_left, retries_used, first_failure = o.retries_left, o.retries_used, o.first_failure
    last_code, family = o.last_code, o.family
    grid_ns = np.arange(o.start, o.window_end + 1, o.step, dtype=np.int64)
    grid = grid_ns.view("datetime64[ns]")
    allowed = np.ones(grid.shape, dtype=bool)
    excluded: dict[str, int] = {}
    hours = _grid_hours(grid_ns, o.step, state.timezone)
    # Every candidate stays allowed unless quiet hours or a cap exclude some (then check).
    check = False

    if constraints.quiet_hours is not None:
        q0, q1 = constraints.quiet_hours
        quiet = (hours >= q0) & (hours < q1) if q0 <= q1 else (hours >= q0) | (hours < q1)
        excluded[Reason.QUIET_HOURS] = int((allowed & quiet).sum())
        allowed &= ~quiet
        check = True

    brand = o.brand
    if caps._may_cap(brand, state.card_event_times.size):
        cap = caps._charge_caps(o, grid_ns)
        excluded[Reason.NETWORK_LIMIT] = int((allowed & ~cap).sum())
        allowed &= cap
        check = True
    else:  # too few card events to reach a cap
        excluded[Reason.NETWORK_LIMIT] = 0
    if excluded[Reason.NETWORK_LIMIT]:
        notes.append(f"{excluded[Reason.NETWORK_LIMIT]} candidate hours over {brand} caps")

    if check and not allowed.any():
        reason = (
            Reason.NETWORK_LIMIT
            if excluded.get(Reason.NETWORK_LIMIT, 0) > 0
            else Reason.QUIET_HOURS
        )
        source = VISA_SOURCE if brand == "visa" else MASTERCARD_SOURCE
        return _stop(
            state,
            reason,
            source if reason == Reason.NETWORK_LIMIT else MERCHANT_SOURCE,
            note="no allowed retry time remains in the window",
            decline_code=last_code,
            family=family,
            retries_used=retries_used,
        )
    room_24h, room_30d = _planned_room(o, grid_ns)
    return RuleResult(
        charge_id=state.charge_id,
        stop=False,
        grid=grid,
        allowed=allowed,
        local_hours=hours,
        retries_left=retries_left,
        retries_used=retries_used,
        first_failure=np.datetime64(first_failure, "ns"),
        last_attempt=np.datetime64(o.last_attempt, "ns"),
        notes=tuple(notes),
        excluded=excluded,
        decline_code=last_code,
        decline_family=family,
        advice_wait_hours=_advice_wait_hours(o),
        cap_room_24h=room_24h,
        cap_room_30d=room_30d,
    )


def _planned_room(o: _Open, grid_ns: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The networks' cap room at the grid times when the plan's attempts could reach a cap.

    The plan counts its own later retries as failed attempts on the card (each is a Visa
    reattempt and a Mastercard decline), so a card with ``e`` earlier events and ``R`` retries
    left can reach a cap when ``e + R - 1`` could (:func:`caps._may_cap`). None when no cap can
    bind the plan (the room exceeds the planned attempts everywhere, or too few events).
    """
    planned = o.retries_left - 1
    if planned < 1 or not caps._may_cap(o.brand, o.state.card_event_times.size + planned):
        return None, None
    room_24h, room_30d = caps._charge_room(o, grid_ns)
    if min(int(room_24h.min(initial=caps.NO_CAP)), int(room_30d.min(initial=caps.NO_CAP))) > (
        planned
    ):
        return None, None
    return room_24h, room_30d


def evaluate_rules_batch(
    states: Sequence[ChargeState], constraints: Constraints, *, grid_hours: int = 1
) -> list[RuleResult]:
    """:func:`evaluate_rules` of every charge, with the grid stage vectorised over the batch.

    The stop rules run per charge (the same code as :func:`evaluate_rules`); the candidate
    grids, local hours, quiet hours and the networks' reattempt caps of all the remaining charges
    are then computed in one pass of flat arrays. Results equal ``[evaluate_rules(s, ...) for s
    in states]`` (tested on random charges); a charge whose zone changes its UTC offset inside
    its grid gets its local hours per charge, and a batch whose grids are too far apart to share
    one int64 search key has its caps counted per charge.
    """
    if len(states) < 2:  # one charge: the flat arrays only add overhead
        return [evaluate_rules(s, constraints, grid_hours=grid_hours) for s in states]
    out: list[RuleResult | None] = []
    opened: list[tuple[int, _Open]] = []
    for i, state in enumerate(states):
        screened = _screen(state, constraints, grid_hours=grid_hours)
        if isinstance(screened, RuleResult):
            out.append(screened)
        else:
            out.append(None)
            opened.append((i, screened))
    if opened:
        for i, result in zip(
            (i for i, _ in opened), _grid_verdicts([o for _, o in opened], constraints), strict=True
        ):
            out[i] = result
    return [r for r in out if r is not None]


def _grid_verdicts(opened: list[_Open], constraints: Constraints) -> list[RuleResult]:
    """:func:`_grid_verdict` of many screened charges in flat numpy arrays."""
    k = len(opened)
    start = np.fromiter((o.start for o in opened), dtype=np.int64, count=k)
    end = np.fromiter((o.window_end for o in opened), dtype=np.int64, count=k)
    step = np.fromiter((o.step for o in opened), dtype=np.int64, count=k)
    sizes = (end - start) // step + 1  # len(np.arange(start, end + 1, step)), start <= end
    bounds = np.zeros(k + 1, dtype=np.int64)
    np.cumsum(sizes, out=bounds[1:])
    total = int(bounds[-1])
    # Grid point r of charge j: start[j] + (r - bounds[j]) * step[j].
    if bool((step == step[0]).all()):
        flat_ns = np.repeat(start - bounds[:-1] * step[0], sizes) + (
            np.arange(total, dtype=np.int64) * step[0]
        )
    else:
        seg = np.repeat(np.arange(k, dtype=np.int64), sizes)
        flat_ns = start[seg] + (np.arange(total, dtype=np.int64) - bounds[seg]) * step[seg]
    # A view, not a copy: the results' grids are slices of it, as they were of the copy.
    flat = flat_ns.view("datetime64[ns]")
    last = start + (sizes - 1) * step
    lo, hi = bounds[:-1].tolist(), bounds[1:].tolist()

    # Local hours: one UTC offset per charge when its zone keeps the same offset at both ends
    # of its grid (exactly as local_hours), else converted per charge.
    offset = np.zeros(k, dtype=np.int64)
    slow: list[int] = []
    for j, (o, a, b) in enumerate(zip(opened, start.tolist(), last.tolist(), strict=True)):
        zone = o.state.timezone
        if zone in ("UTC", "Etc/UTC"):
            continue
        off = constant_offset(zone, a, b)
        if off is not None:
            offset[j] = off
        else:
            slow.append(j)
    step0 = int(step[0])
    if step0 % NS_PER_HOUR == 0 and bool((step == step0).all()) and not (start % NS_PER_HOUR).any():
        # Whole-hour grids: the local hour of point r is (h0 + r * grid hours) % 24 with h0 the
        # local hour of the start (floor division distributes over whole hours exactly), so
        # each charge's hours are a prefix of one of at most 24 precomputed cycles; cheaper
        # than dividing every grid time.
        h0 = (((start + offset) // NS_PER_HOUR) % 24).tolist()
        cycle = np.arange(int(sizes.max()), dtype=np.int64) * (step0 // NS_PER_HOUR)
        cycles = {h: (cycle + h) % 24 for h in set(h0)}
        hours = np.concatenate([cycles[h][:m] for h, m in zip(h0, sizes.tolist(), strict=True)])
    else:
        hours = ((flat_ns + np.repeat(offset, sizes)) // NS_PER_HOUR) % 24
    for j in slow:
        hours[lo[j] : hi[j]] = local_hours(flat[lo[j] : hi[j]], opened[j].state.timezone)

    allowed = np.ones(total, dtype=bool)
    quiet_excluded: list[int] | None = None
    if constraints.quiet_hours is not None:
        q0, q1 = constraints.quiet_hours
        quiet = (hours >= q0) & (hours < q1) if q0 <= q1 else (hours >= q0) | (hours < q1)
        quiet_excluded = np.add.reduceat(quiet, bounds[:-1]).tolist()
        allowed &= ~quiet

    capped = caps._capped(opened)
    if capped.any():
        cap = np.ones(total, dtype=bool)
        rows = np.repeat(capped, sizes)
        sel = np.flatnonzero(capped).tolist()
        sub_sizes = sizes[capped]
        sub_bounds = np.zeros(len(sel) + 1, dtype=np.int64)
        np.cumsum(sub_sizes, out=sub_bounds[1:])
        cap[rows] = caps._network_caps(
            [opened[j] for j in sel],
            flat_ns[rows],
            sub_sizes,
            sub_bounds,
            start[capped],
            last[capped],
        )
        network = allowed & ~cap
        network_excluded = np.add.reduceat(network, bounds[:-1]).tolist()
        allowed &= cap
    else:  # no charge has enough card events to reach a cap
        network_excluded = [0] * k
    any_allowed = np.logical_or.reduceat(allowed, bounds[:-1]).tolist()

    results: list[RuleResult] = []
    for j, o in enumerate(opened):
        state = o.state
        excluded: dict[str, int] = {}
        if quiet_excluded is not None:
            excluded[Reason.QUIET_HOURS] = int(quiet_excluded[j])
        excluded[Reason.NETWORK_LIMIT] = int(network_excluded[j])
        notes = list(o.notes)
        if excluded[Reason.NETWORK_LIMIT]:
            notes.append(f"{excluded[Reason.NETWORK_LIMIT]} candidate hours over {o.brand} caps")
        if not any_allowed[j]:
            reason = (
                Reason.NETWORK_LIMIT
                if excluded.get(Reason.NETWORK_LIMIT, 0) > 0
                else Reason.QUIET_HOURS
            )
            source = VISA_SOURCE if o.brand == "visa" else MASTERCARD_SOURCE
            results.append(
                _stop(
                    state,
                    reason,
                    source if reason == Reason.NETWORK_LIMIT else MERCHANT_SOURCE,
                    note="no allowed retry time remains in the window",
                    decline_code=o.last_code,
                    family=o.family,
                    retries_used=o.retries_used,
                )
            )
            continue
        a, b = lo[j], hi[j]
        room_24h, room_30d = _planned_room(o, flat_ns[a:b])
        results.append(
            RuleResult(
                charge_id=state.charge_id,
                stop=False,
                grid=flat[a:b],
                allowed=allowed[a:b],
                local_hours=hours[a:b],
                retries_left=o.retries_left,
                retries_used=o.retries_used,
                first_failure=np.datetime64(o.first_failure, "ns"),
                last_attempt=np.datetime64(o.last_attempt, "ns"),
                notes=tuple(notes),
                excluded=excluded,
                decline_code=o.last_code,
                decline_family=o.family,
                advice_wait_hours=_advice_wait_hours(o),
                cap_room_24h=room_24h,
                cap_room_30d=room_30d,
            )
        )
    return results
