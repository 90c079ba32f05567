"""CandidateEncoder's per-(decision, day) matrix path equals the per-row reference bit for bit.

:meth:`features.encoder.CandidateEncoder.matrix` builds row-major matrices from rows computed
once per (decision, local day) plus the hour-dependent features written in place; these tests
pin it to the per-row path (``_matrix_by_row``, itself pinned to the frame path,
:func:`feature_reference.encode_candidate_matrix`) on seeded random inputs: many decisions and
zones, NaT rows, unsorted rows, candidates before ``now``, missing ``card_added_at``, reordered
and partial specs, and the fallbacks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from feature_reference import encode_candidate_matrix
from synthetic_attempts import synthetic_attempts

from retryopt.features.candidates import WINDOW_24H_NS, WINDOW_30D_NS
from retryopt.features.decisions import DecisionBatch
from retryopt.features.encoder import CandidateEncoder
from retryopt.features.examples import build_training_examples
from retryopt.features.pit import _pit_counts
from retryopt.features.spec import FeatureSpec, fit_feature_spec

HOUR = np.timedelta64(1, "h")


@pytest.fixture(scope="module")
def synth() -> pd.DataFrame:
    return synthetic_attempts(customers=250, months=6, seed=11)


@pytest.fixture(scope="module")
def spec(synth: pd.DataFrame) -> FeatureSpec:
    return fit_feature_spec(build_training_examples(synth).features, min_level_count=5)


def _batch(
    synth: pd.DataFrame, n: int, seed: int, *, drop_card_added: bool = False
) -> tuple[DecisionBatch, np.ndarray]:
    """``n`` decisions of distinct customers (logged retries), 300 hourly candidates each."""
    data = synth.copy()
    if drop_card_added:
        rng0 = np.random.default_rng(seed + 1)
        mask = rng0.random(len(data)) < 0.3
        data.loc[mask, "card_added_at"] = pd.NaT
    ex = build_training_examples(data)
    rng = np.random.default_rng(seed)
    groups = data.groupby("customer_id", sort=False)
    seen: set[Any] = set()
    own, hist, ids, nows = [], [], [], []
    for i in rng.permutation(len(ex.label)).tolist():
        m = ex.meta.iloc[i]
        if m["customer_id"] in seen:
            continue
        seen.add(m["customer_id"])
        g = groups.get_group(m["customer_id"])
        now = m["decision_time"]
        own.append(g[(g["charge_id"] == m["charge_id"]) & (g["attempted_at"] <= now)])
        hist.append(g[g["charge_id"] != m["charge_id"]])
        ids.append(m["charge_id"])
        nows.append(now.tz_localize(None).to_datetime64().astype("datetime64[ns]"))
        if len(ids) == n:
            break
    batch = DecisionBatch(
        charge_ids=np.asarray(ids, dtype=object),
        now=np.asarray(nows),
        attempts=pd.concat(own, ignore_index=True),
        history=pd.concat(hist, ignore_index=True),
    )
    offsets = np.arange(-5, 295) * HOUR  # a few candidates before now too
    cand = np.asarray(nows)[:, None] + offsets[None, :]
    return batch, cand


def _same_bits(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == np.float64
    assert a.flags.c_contiguous
    np.testing.assert_array_equal(a.view(np.int64), b.view(np.int64))


def _check(enc: CandidateEncoder, dec: np.ndarray, times: np.ndarray, *, by_day: bool) -> None:
    t = times.astype("datetime64[ns]").view(np.int64)
    got = enc.matrix(dec, times)
    _same_bits(got, enc._matrix_by_row(dec, t))
    assert (enc._matrix_by_day(dec, t) is not None) == by_day


@pytest.mark.parametrize("drop_card_added", [False, True])
def test_by_day_rows_equal_per_row_path(
    synth: pd.DataFrame, spec: FeatureSpec, drop_card_added: bool
) -> None:
    batch, cand = _batch(synth, 24, seed=4, drop_card_added=drop_card_added)
    enc = CandidateEncoder(batch, spec)
    n, m = cand.shape
    rng = np.random.default_rng(7)
    flat = np.arange(n * m)
    subset = np.sort(rng.choice(n * m, size=1500, replace=False))
    shuffled = rng.permutation(n * m)[:3000]
    for select in (flat, subset, shuffled):
        dec, col = np.divmod(select, m)
        _check(enc, dec, cand[dec, col], by_day=True)
    # The full grid also equals the one-shot encoding.
    full = encode_candidate_matrix(batch, cand, spec)
    _same_bits(enc.matrix(flat // m, cand.reshape(-1)), full)
    # NaT rows keep the constants and get NaN candidate-dependent features.
    dec, col = np.divmod(subset, m)
    times = cand[dec, col].copy()
    times[rng.random(times.size) < 0.2] = np.datetime64("NaT", "ns")
    _check(enc, dec, times, by_day=True)


def test_by_day_single_decision_and_far_times(synth: pd.DataFrame, spec: FeatureSpec) -> None:
    batch, cand = _batch(synth, 6, seed=8)
    for i in range(len(batch.charge_ids)):
        sel = batch.attempts["charge_id"] == batch.charge_ids[i]
        one = DecisionBatch(
            charge_ids=batch.charge_ids[i : i + 1],
            now=batch.now[i : i + 1],
            attempts=batch.attempts[sel].reset_index(drop=True),
            history=batch.history,
        )
        enc = CandidateEncoder(one, spec)
        dec = np.zeros(cand.shape[1], dtype=np.int64)
        _check(enc, dec, cand[i], by_day=True)
        _same_bits(enc.matrix(dec, cand[i]), encode_candidate_matrix(one, cand[i : i + 1], spec))
        # Times years apart: the (decision, day) table would outgrow the rows -> per-row path.
        far = cand[i, :3] + np.asarray([0, 400 * 24, 800 * 24]) * HOUR
        _check(enc, dec[:3], far, by_day=False)


def test_by_day_reordered_partial_spec(synth: pd.DataFrame, spec: FeatureSpec) -> None:
    """Calendar columns split and reordered, some features absent (other column runs)."""
    rng = np.random.default_rng(5)
    dropped = {"success_dom_distance", "days_until_15th", "card_expired", "hours_from_now"}
    numeric = [name for name in spec.numeric if name not in dropped]
    numeric = [numeric[i] for i in rng.permutation(len(numeric))]
    partial = FeatureSpec(
        numeric=tuple(numeric),
        categorical=spec.categorical[::-1],
        levels=spec.levels,
        version=spec.version,
    )
    batch, cand = _batch(synth, 10, seed=6)
    enc = CandidateEncoder(batch, partial)
    n, m = cand.shape
    dec, col = np.divmod(np.arange(n * m), m)
    _check(enc, dec, cand[dec, col], by_day=True)
    _same_bits(enc.matrix(dec, cand[dec, col]), encode_candidate_matrix(batch, cand, partial))


def test_card_counter_counts_many_equal_pit_counts(synth: pd.DataFrame, spec: FeatureSpec) -> None:
    batch, cand = _batch(synth, 12, seed=9)
    enc = CandidateEncoder(batch, spec)
    counter = enc._counter
    assert counter is not None
    log, st = enc._log, enc._state
    n, m = cand.shape
    dec = np.repeat(np.arange(n), m)
    t = cand.reshape(-1).view(np.int64)
    assert dec.size > 4 * counter._ev_t.size  # the event-placement branch is exercised
    rng = np.random.default_rng(1)
    for q in (t - WINDOW_30D_NS, t - WINDOW_24H_NS, np.minimum(t, st.now[dec])):
        want = _pit_counts(log.card_key, log.t, st.card_key[dec], q)
        (got,) = counter.counts_many(dec, (q,))  # sorted queries: event placement
        np.testing.assert_array_equal(got, want)
        perm = rng.permutation(dec.size)  # unsorted queries: binary search
        np.testing.assert_array_equal(counter.counts(dec[perm], q[perm]), want[perm])


def test_calendar_features_are_the_calendar_columns_in_order() -> None:
    from retryopt.features.calendar import calendar_columns
    from retryopt.features.registry import CALENDAR_FEATURES

    columns = calendar_columns(np.arange(3, dtype=np.int64), CALENDAR_FEATURES)
    names = [k for k in columns if not k.startswith("_")]
    assert [name for name, _ in CALENDAR_FEATURES] == names
