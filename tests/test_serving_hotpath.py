"""Hot-path helpers of the serving API equal their reference versions."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from retryopt.features.card_numbers import (
    body_may_hold_card_number,
    contains_card_number,
    find_card_number,
    luhn_ok,
)
from retryopt.serving.policies.explain import _local_label, _night_means, _timestamp
from retryopt.serving.policies.values import decay_powers
from retryopt.serving.service import _iso

# The reference: digit runs with at most one space or dash between digits, bounded by
# non-digits (the filter's earlier definition, which the detector keeps for such text).
_PAN_REFERENCE = re.compile(r"(?<![0-9])(?:[0-9][ -]?){12,18}[0-9](?![0-9])")


def contains_card_number_reference(text: str) -> bool:
    """:func:`contains_card_number` on text with single separators, by a regex (slower)."""

    def ok(match: str) -> bool:
        digits = match.replace(" ", "").replace("-", "")
        return 13 <= len(digits) <= 19 and luhn_ok(digits)

    # Every start position, since a failing greedy match may hide a shorter passing one.
    return any(
        ok(m.group())
        for start in range(len(text))
        for m in [_PAN_REFERENCE.match(text, start)]
        if m is not None
    ) or any(
        ok(text[i:j])
        for i in range(len(text))
        for j in range(i + 13, min(len(text), i + 38) + 1)
        if _PAN_REFERENCE.fullmatch(text, i, j)
    )


_PAN_ALPHABET = '0123456789 -x",:{}T'


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=_PAN_ALPHABET, max_size=80))
def test_pan_scan_equals_the_reference_scan(text: str) -> None:
    # Double separators are the detector's extension (covered in test_hostile_input.py).
    if "  " in text or "--" in text or " -" in text or "- " in text:
        return
    assert contains_card_number(text) == contains_card_number_reference(text)


_JSON_TEXT = st.text(alphabet="0123456789 -x:T.", max_size=30)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _JSON_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_JSON_TEXT, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(_JSON)
def test_the_raw_pre_check_never_hides_a_card_number(obj: Any) -> None:
    """The fast raw scan says "none" only when the decoded walk finds none."""
    raw = json.dumps(obj).encode()
    if not body_may_hold_card_number(raw):
        assert find_card_number(obj) is None


def test_pan_scan_finds_numbers_among_timestamps() -> None:
    body = '{"at":"2026-01-05T08:12:00Z","x":"4111 1111 1111 1111","n":12345678901234}'
    assert contains_card_number(body)
    assert not contains_card_number('{"at":"2026-01-05T08:12:00Z","amount":2500}')
    # 13-19 digits that fail the Luhn check are not card numbers.
    assert not contains_card_number('{"n":"4111111111111112"}')


def test_night_means_skip_nan_and_ignore_padding() -> None:
    rng = np.random.default_rng(5)
    p = rng.random((3, 40))
    p[0, 3] = np.nan
    night = rng.random((3, 40)) < 0.3
    night[2] = False
    got = _night_means(p, night)
    for i in range(2):
        sel = p[i][night[i] & ~np.isnan(p[i])]
        assert np.isclose(got[i], sel.mean(), rtol=1e-12)
    assert np.isnan(got[2])
    # The same row padded (in a wider batch) gives the same number, bit for bit.
    wide = np.concatenate([p, np.full((3, 25), np.nan)], axis=1)
    wide_night = np.concatenate([night, np.zeros((3, 25), dtype=bool)], axis=1)
    assert np.array_equal(_night_means(wide, wide_night), got, equal_nan=True)


def test_memoised_times_and_labels_are_the_plain_ones() -> None:
    import pandas as pd

    ns = int(pd.Timestamp("2026-03-08T07:00:00Z").value)
    first = _timestamp(ns)
    assert first == pd.Timestamp(ns, tz="UTC") and _timestamp(ns) is first
    assert _iso(first) == "2026-03-08T07:00:00Z" == _iso(pd.Timestamp(ns, tz="UTC"))
    assert _iso(pd.Timestamp("2026-03-08T07:00:00.5Z")) == "2026-03-08T07:00:00.500000Z"
    # 07:00 UTC on the US DST switch day is 03:00 EDT (2026-03-08).
    label = _local_label(ns, "America/New_York", 3)
    assert label == "Sunday 03:00 America/New_York (day 8 of the month)"
    assert _local_label(np.datetime64(ns, "ns"), "America/New_York", 3) == label


def plan_values_reference(
    proba: np.ndarray,
    allowed: np.ndarray,
    *,
    retries_left: np.ndarray,
    amount: np.ndarray,
    discount: np.ndarray,
    cost: float,
    gap_steps: int,
    decay: float,
) -> np.ndarray:
    """:func:`serving.policies.plan_values` written plainly (the reference it is pinned to)."""
    n, m = proba.shape
    p = np.where(allowed, np.nan_to_num(proba, nan=0.0), 0.0)
    gain = amount[:, None] * discount
    out = np.full((n, m), -np.inf)
    w = np.zeros((n, m))
    r_max = int(retries_left.max()) if n else 0
    powers = decay_powers(decay, r_max)
    for k in range(1, r_max + 1):
        exponent = np.clip(retries_left - k, 0, None)[:, None]
        pk = p * powers[exponent]
        val = pk * gain - cost + (1.0 - pk) * w
        val = np.where(allowed, val, -np.inf)
        at_level = retries_left == k
        if at_level.any():
            out[at_level] = val[at_level]
        if k == r_max:
            break
        suffix = np.maximum.accumulate(val[:, ::-1], axis=1)[:, ::-1]
        w = np.zeros((n, m))
        if gap_steps < m:
            w[:, : m - gap_steps] = np.maximum(suffix[:, gap_steps:], 0.0)
    return out


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 150),
    m=st.integers(1, 60),
    gap=st.integers(1, 30),
    cost=st.sampled_from([0.0, 0.5, 30.0]),
    discounted=st.booleans(),
)
def test_plan_values_equals_the_reference_bit_for_bit(
    seed: int, n: int, m: int, gap: int, cost: float, discounted: bool
) -> None:
    from retryopt.serving.policies import plan_values

    rng = np.random.default_rng(seed)
    proba = rng.random((n, m))
    proba[rng.random((n, m)) < 0.1] = np.nan
    kwargs: dict[str, Any] = {
        "retries_left": rng.integers(1, 6, size=n),
        "amount": rng.integers(100, 100_000, size=n).astype(np.float64),
        "discount": 0.99 ** rng.random((n, m)) if discounted else np.ones((n, m)),
        "cost": cost,
        "gap_steps": gap,
        "decay": 0.8,
    }
    allowed = rng.random((n, m)) < 0.8
    got = plan_values(proba, allowed, **kwargs)
    want = plan_values_reference(proba, allowed, **kwargs)
    assert np.array_equal(got, want)


def test_plan_values_do_not_depend_on_the_batch() -> None:
    """A charge's plan values are the same decided alone and among others, bit for bit."""
    from retryopt.serving.policies import plan_values

    rng = np.random.default_rng(0)
    n, m = 8, 30
    proba = rng.random((n, m))
    allowed = rng.random((n, m)) < 0.8
    retries_left = np.full(n, 5)  # exponents 0-4 of the decay, where numpy's pow rounding differed
    amount = rng.integers(100, 100_000, size=n).astype(np.float64)
    discount = np.ones((n, m))
    kwargs: dict[str, Any] = {"cost": 0.5, "gap_steps": 3, "decay": 0.8}
    together = plan_values(
        proba, allowed, retries_left=retries_left, amount=amount, discount=discount, **kwargs
    )
    for i in range(n):
        one = slice(i, i + 1)
        alone = plan_values(
            proba[one],
            allowed[one],
            retries_left=retries_left[one],
            amount=amount[one],
            discount=discount[one],
            **kwargs,
        )
        assert np.array_equal(alone[0], together[i]), f"row {i}"
