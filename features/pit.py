"""Point-in-time sums: per query, the events of its group strictly before the query time.

:class:`_PitIndex` (merged sort, exclusive cumulative sums), :func:`_pit_counts` (counts, with
cheap routes for small inputs) and :class:`_CardCounter` (the card attempt counters of a decision
batch, the serving hot path). Integer sums, so results do not depend on summation order.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from retryopt.features.columns import _SMALL_PRODUCT, _SMALL_ROWS
from retryopt.features.history import _Log


class _PitIndex:
    """Point-in-time lookups: per query, events of its group with time < the query time.

    Events and queries are merged and sorted by (group, time, queries-first-at-ties); exclusive
    cumulative sums read at the query positions minus the group's start give counts and sums.
    Integer sums are exact, so results do not depend on summation order.
    """

    def __init__(
        self, ev_group: np.ndarray, ev_time: np.ndarray, q_group: np.ndarray, q_time: np.ndarray
    ) -> None:
        n_e = ev_group.size
        n_q = q_group.size
        self.n_e = n_e
        g = np.concatenate([ev_group, q_group])
        tt = np.concatenate([ev_time, q_time])
        kind = np.concatenate([np.ones(n_e, dtype=np.int8), np.zeros(n_q, dtype=np.int8)])
        order = np.lexsort((kind, tt, g))
        del tt, kind
        m = order.size
        g_sorted = g[order]
        del g
        new_group = np.ones(m, dtype=bool)
        new_group[1:] = g_sorted[1:] != g_sorted[:-1]
        del g_sorted
        group_start = np.maximum.accumulate(np.where(new_group, np.arange(m), 0))
        del new_group
        is_query = order >= n_e
        q_pos = np.empty(n_q, dtype=np.int64)
        q_pos[order[is_query] - n_e] = np.flatnonzero(is_query)
        del is_query
        self.order = order
        self.q_pos = q_pos
        self.q_start = group_start[q_pos]

    def sums(self, values: np.ndarray | None = None) -> np.ndarray:
        """Per query: sum of ``values`` (int64 per event; None = count) over its known events."""
        if self.q_pos.size == 0:
            return np.zeros(0, dtype=np.int64)
        merged = np.zeros(self.order.size, dtype=np.int64)
        merged[: self.n_e] = 1 if values is None else values
        seq = merged[self.order]
        del merged
        cs = np.cumsum(seq)
        cs -= seq  # exclusive
        return cs[self.q_pos] - cs[self.q_start]


def _pit_counts(
    ev_group: np.ndarray, ev_time: np.ndarray, q_group: np.ndarray, q_time: np.ndarray
) -> np.ndarray:
    """Per query: number of events of its group with time < query time."""
    if q_group.size > 1 and ev_group.size <= _SMALL_ROWS and bool((q_group == q_group[0]).all()):
        # One group (one decision's card): sorted event times, counts by binary search.
        ev_t = np.sort(ev_time[ev_group == q_group[0]])
        return np.searchsorted(ev_t, q_time, side="left").astype(np.int64)
    if ev_group.size * q_group.size <= _SMALL_PRODUCT:
        hit = (ev_group == q_group[:, None]) & (ev_time < q_time[:, None])
        return hit.sum(axis=1, dtype=np.int64)
    return _PitIndex(ev_group, ev_time, q_group, q_time).sums()


class _CardCounter:
    """Online counts of a decision's card events before query times (the serving hot path).

    Equal to ``_pit_counts(log.card_key, log.t, card_key[dec], q)``: the log's events of the
    decisions' cards are searched with one sorted int64 key ``card * R + (t - base)`` per call
    (``base`` just below the call's earliest query, event times clipped to ``[base, top + 1]``,
    which keeps every "event before query" comparison). Falls back to :func:`_pit_counts` when
    the key would not fit in int64.
    """

    def __init__(self, log: _Log, card_key: np.ndarray) -> None:
        self._log_key = log.card_key
        self._log_t = log.t
        self._dec_key = card_key  # card of each decision
        keys, self._dec_group = np.unique(card_key, return_inverse=True)
        self._dec_group = self._dec_group.reshape(-1).astype(np.int64)
        self._n_groups = int(keys.size)
        at = np.searchsorted(keys, log.card_key)
        at_ok = np.minimum(at, max(keys.size - 1, 0))
        hit = (at < keys.size) & (keys[at_ok] == log.card_key) if keys.size else at < 0
        self._ev_group = at_ok[hit].astype(np.int64)
        self._ev_t = log.t[hit]

    def counts(self, dec: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Per row: events of the card of decision ``dec[r]`` with time ``< q[r]``."""
        return self.counts_many(dec, (q,))[0]

    def counts_many(self, dec: np.ndarray, queries: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        """:meth:`counts` of several query arrays (each as long as ``dec``), one event sort."""
        if dec.size == 0:
            return [np.zeros(0, dtype=np.int64) for _ in queries]
        base = min(int(q.min()) for q in queries) - 1
        top = max(int(q.max()) for q in queries)
        width = top - base + 2
        if self._n_groups * width >= _KEY_LIMIT or base < _INT64_MIN_SAFE:
            key = self._dec_key[dec]
            return [_pit_counts(self._log_key, self._log_t, key, q) for q in queries]
        w = np.int64(width)
        ev = np.sort(self._ev_group * w + (np.clip(self._ev_t, base, top + 1) - base))
        group = self._dec_group[dec]
        first = np.searchsorted(ev, np.arange(self._n_groups, dtype=np.int64) * w, side="left")
        group_start = first[group]
        group *= w
        out = []
        for q in queries:
            qk = q - base
            qk += group
            if qk.size > 4 * ev.size and bool((qk[1:] >= qk[:-1]).all()):
                # Sorted queries (a decision's grid in time order), far more than events: place
                # each event among the queries instead; the events before query k are those
                # placed at or before k (exact integer counts, as the search below).
                at = np.searchsorted(qk, ev, side="right")
                pos = np.cumsum(np.bincount(at, minlength=qk.size + 1)[: qk.size])
            else:
                pos = np.searchsorted(ev, qk, side="left")
            pos -= group_start
            out.append(pos.astype(np.int64, copy=False))
        return out


# Largest search key of _CardCounter (int64 with headroom) and the lowest base it accepts.
_KEY_LIMIT: Final = 2**62
_INT64_MIN_SAFE: Final = -(2**62)
