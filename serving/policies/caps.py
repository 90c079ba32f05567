"""The card networks' reattempt caps over a charge's candidate grid.

Visa: at most 20 reattempts per card in 30 days (categories 2-4); Mastercard: at most 10
declines per card in 24 hours and 35 in 30 days (:data:`.rules.VISA_SOURCE`,
:data:`.rules.MASTERCARD_SOURCE`). Counted per charge (:func:`_charge_caps`) or for a whole batch
at once (:func:`_network_caps`); both give the same mask.
"""

from __future__ import annotations

import numpy as np

from retryopt.features import taxonomy
from retryopt.features.localtime import NS_PER_DAY
from retryopt.serving.policies.rules import _Open


def _trailing_counts(events: np.ndarray, grid_ns: np.ndarray, span_ns: int) -> np.ndarray:
    """Number of ``events`` (sorted int64 ns) in ``(t - span, t)`` for every grid time ``t``."""
    if events.size == 0:
        return np.zeros(grid_ns.shape, dtype=np.int64)
    upper = np.searchsorted(events, grid_ns, side="left")
    lower = np.searchsorted(events, grid_ns - span_ns, side="right")
    return (upper - lower).astype(np.int64)


NO_CAP = np.iinfo(np.int64).max // 4
"""Room of a window no network rule limits (Visa has no 24-hour cap)."""


def _charge_room(o: _Open, grid_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How many more failed attempts the networks' caps allow at each grid time of one charge.

    Returns ``(room_24h, room_30d)`` (int64, :data:`NO_CAP` where no cap applies): Visa: at most
    20 reattempts per card in 30 days (categories 2-4); Mastercard: at most 10 declines per card
    in 24 hours and 35 in 30 days (:data:`.rules.VISA_SOURCE`, :data:`.rules.MASTERCARD_SOURCE`).
    A retry at ``t`` is allowed when both rooms are > 0; a planned retry after ``s`` planned
    failures needs the room for them too (:mod:`.planner`).
    """
    state, now, brand = o.state, o.now, o.brand
    room_24h = np.full(grid_ns.shape, NO_CAP, dtype=np.int64)
    room_30d = np.full(grid_ns.shape, NO_CAP, dtype=np.int64)
    if brand not in ("visa", "mastercard"):
        return room_24h, room_30d
    ev = state.card_event_times.astype("datetime64[ns]").astype(np.int64)
    keep = ev < now
    ev, ev_failed, ev_retry = (
        ev[keep],
        state.card_event_failed[keep],
        state.card_event_is_retry[keep],
    )
    order = np.argsort(ev, kind="stable")
    ev, ev_failed, ev_retry = ev[order], ev_failed[order], ev_retry[order]
    if brand == "visa":
        # Visa: at most 20 reattempts per card in 30 days (categories 2-4).
        n_re = _trailing_counts(ev[ev_retry], grid_ns, 30 * NS_PER_DAY)
        room_30d = taxonomy.VISA_MAX_REATTEMPTS_30D - n_re
    else:
        # Mastercard: at most 10 declines per card in 24 hours and 35 in 30 days.
        fails = ev[ev_failed]
        room_24h = taxonomy.MASTERCARD_MAX_DECLINES_24H - _trailing_counts(
            fails, grid_ns, NS_PER_DAY
        )
        room_30d = taxonomy.MASTERCARD_MAX_DECLINES_30D - _trailing_counts(
            fails, grid_ns, 30 * NS_PER_DAY
        )
    return room_24h, room_30d


def _charge_caps(o: _Open, grid_ns: np.ndarray) -> np.ndarray:
    """The networks' reattempt caps of one screened charge at its grid times ``grid_ns``."""
    if not _may_cap(o.brand, o.state.card_event_times.size):
        return np.ones(grid_ns.shape, dtype=bool)
    room_24h, room_30d = _charge_room(o, grid_ns)
    return np.asarray((room_24h > 0) & (room_30d > 0))


# Fewest card events that can reach a network's cap (a trailing count never exceeds the
# number of events): charges with fewer are never capped and skip the counting.
_VISA_MIN_EVENTS = taxonomy.VISA_MAX_REATTEMPTS_30D
_MASTERCARD_MIN_EVENTS = min(
    taxonomy.MASTERCARD_MAX_DECLINES_24H, taxonomy.MASTERCARD_MAX_DECLINES_30D
)


def _may_cap(brand: str, n_events: int) -> bool:
    """Whether a charge of ``brand`` with ``n_events`` card events can reach a network cap."""
    if brand == "visa":
        return n_events >= _VISA_MIN_EVENTS
    if brand == "mastercard":
        return n_events >= _MASTERCARD_MIN_EVENTS
    return False


def _capped(opened: list[_Open]) -> np.ndarray:
    """Which screened charges can reach a network cap (:func:`_may_cap`)."""
    return np.fromiter(
        (_may_cap(o.brand, o.state.card_event_times.size) for o in opened),
        dtype=bool,
        count=len(opened),
    )


# Largest search key of the batched caps (int64 with headroom).
_KEY_LIMIT = 2**62


def _network_caps(
    opened: list[_Open],
    flat_ns: np.ndarray,
    sizes: np.ndarray,
    bounds: np.ndarray,
    start: np.ndarray,
    last: np.ndarray,
) -> np.ndarray:
    """The networks' reattempt caps (as in :func:`_charge_caps`) at every flat grid time.

    Visa: at most 20 reattempts per card in 30 days (categories 2-4); Mastercard: at most 10
    declines per card in 24 hours and 35 in 30 days (VISA_SOURCE / MASTERCARD_SOURCE). The
    card events of all charges are counted with one sorted int64 key ``charge * R + (t - base)``
    (``base``: the charge's lowest window bound minus 1, earlier events clipped to it).
    """
    k = len(opened)
    cap = np.ones(flat_ns.size, dtype=bool)
    brands = [o.brand for o in opened]
    is_visa = np.fromiter((b == "visa" for b in brands), dtype=bool, count=k)
    is_mc = np.fromiter((b == "mastercard" for b in brands), dtype=bool, count=k)
    if not (is_visa.any() or is_mc.any()):
        return cap
    span30 = 30 * NS_PER_DAY
    base = start - span30 - 1
    width = int((last - base).max()) + 2
    if k * width >= _KEY_LIMIT:  # grids too far apart for one int64 key: per charge
        for j, o in enumerate(opened):
            a, b = int(bounds[j]), int(bounds[j + 1])
            cap[a:b] = _charge_caps(o, flat_ns[a:b])
        return cap
    ev_sizes = [o.state.card_event_times.size for o in opened]
    if sum(ev_sizes) == 0:
        return cap
    ev = np.concatenate(
        [o.state.card_event_times.astype("datetime64[ns]").astype(np.int64) for o in opened]
    )
    ev_failed = np.concatenate([o.state.card_event_failed for o in opened]).astype(bool)
    ev_retry = np.concatenate([o.state.card_event_is_retry for o in opened]).astype(bool)
    ev_seg = np.repeat(np.arange(k, dtype=np.int64), ev_sizes)
    now = np.fromiter((o.now for o in opened), dtype=np.int64, count=k)
    keep = ev < now[ev_seg]
    w = np.int64(width)
    # Events at or before the charge's base count in every window bound alike: clip them there.
    key = ev_seg * w + (np.maximum(ev, base[ev_seg]) - base[ev_seg])
    # Search key of every grid time, in the same per-charge ranges as the events' keys.
    q_all = np.repeat(np.arange(k, dtype=np.int64) * w - base, sizes) + flat_ns

    def counts(events: np.ndarray, span: int, q: np.ndarray) -> np.ndarray:
        upper = np.searchsorted(events, q, side="left")
        lower = np.searchsorted(events, q - span, side="right")
        return upper - lower

    visa_rows = np.flatnonzero(np.repeat(is_visa, sizes))
    if visa_rows.size:
        # Visa: at most 20 reattempts per card in 30 days (categories 2-4).
        events = np.sort(key[keep & ev_retry & is_visa[ev_seg]])
        q = q_all[visa_rows]
        cap[visa_rows] = counts(events, span30, q) < taxonomy.VISA_MAX_REATTEMPTS_30D
    mc_rows = np.flatnonzero(np.repeat(is_mc, sizes))
    if mc_rows.size:
        # Mastercard: at most 10 declines per card in 24 hours and 35 in 30 days.
        events = np.sort(key[keep & ev_failed & is_mc[ev_seg]])
        q = q_all[mc_rows]
        cap[mc_rows] = (counts(events, NS_PER_DAY, q) < taxonomy.MASTERCARD_MAX_DECLINES_24H) & (
            counts(events, span30, q) < taxonomy.MASTERCARD_MAX_DECLINES_30D
        )
    return cap
