"""Integer-key sort and duplicate check of features.validation_sort match arrow string order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from retryopt.features.validation import validate_attempts
from retryopt.features.validation_sort import duplicates, sort_order, text_keys

_ALPHABET = ["a", "b", "\x00", "é", "Z", "0", "ab", "€"]


def _text(rng: np.random.Generator) -> str | None:
    value = "".join(rng.choice(_ALPHABET, int(rng.integers(0, 4))))
    if value and rng.random() < 0.5:
        value = "ch_" + value
    return value or None


@pytest.mark.parametrize("seed", range(4))
def test_sort_order_matches_arrow_sort(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(100):
        n = int(rng.integers(1, 60))
        charges = [_text(rng) for _ in range(n)]
        attempts = [_text(rng) for _ in range(n)]
        times = rng.integers(0, 3, n).astype(np.int64)
        sortable = np.array([x is not None for x in charges]) & (rng.random(n) < 0.9)
        half = n // 2
        charge = pa.chunked_array(
            [
                pa.array(charges[:half], pa.large_string()),
                pa.array(charges[half:], pa.large_string()),
            ]
        )
        attempt = pa.chunked_array([pa.array(attempts, pa.large_string())])
        got, group = sort_order(charge, times, attempt, sortable)
        reference = pc.sort_indices(
            pa.table({"c": charge, "t": times, "a": attempt}),
            sort_keys=[("c", "ascending"), ("t", "ascending"), ("a", "ascending")],
        ).to_numpy()
        expected = reference[sortable[reference]]
        np.testing.assert_array_equal(got, expected)
        if expected.size:
            assert group is not None
            ordered = [charges[i] for i in expected]
            starts = [i == 0 or ordered[i] != ordered[i - 1] for i in range(len(ordered))]
            np.testing.assert_array_equal(group, np.cumsum(starts))

        seen: set[str] = set()
        later = []
        for value in attempts:
            later.append(value is not None and value in seen)
            if value is not None:
                seen.add(value)
        np.testing.assert_array_equal(duplicates(attempt, n), np.array(later, dtype=bool))


def test_text_keys_too_wide_falls_back() -> None:
    wide = pa.chunked_array([pa.array(["x" * 40, "y"], pa.large_string())])
    assert text_keys(wide) is None
    order, group = sort_order(wide, np.zeros(2, np.int64), wide, np.ones(2, dtype=bool))
    np.testing.assert_array_equal(order, [0, 1])
    assert group is None
    np.testing.assert_array_equal(duplicates(wide, 2), [False, False])


@pytest.mark.parametrize("prefix", ["ch_", "ch_" + "x" * 40])
def test_validate_orders_and_groups_short_and_wide_charge_ids(prefix: str) -> None:
    base = {
        "customer_id": "cus_1",
        "amount": "1999",
        "currency": "usd",
        "card_brand": "visa",
        "card_funding": "debit",
        "card_country": "US",
        "card_added_at": "2023-01-15T08:30:00Z",
        "card_exp_month": "12",
        "card_exp_year": "2027",
    }
    specs = [  # attempt_id, charge suffix, day, outcome
        ("at_9", "b", 1, "failed"),
        ("at_3", "a", 2, "succeeded"),
        ("at_1", "a", 2, "failed"),  # tied with at_3 on (charge, time): at_1 first
        ("at_7", "b", 3, "succeeded"),
        ("at_8", "b", 4, "succeeded"),  # second success of charge b
    ]
    rows = [
        {
            **base,
            "attempt_id": attempt,
            "charge_id": prefix + suffix,
            "attempted_at": f"2024-05-0{day}T10:00:00Z",
            "outcome": outcome,
            "decline_code": "do_not_honor" if outcome == "failed" else None,
        }
        for attempt, suffix, day, outcome in specs
    ]
    result = validate_attempts(pd.DataFrame(rows, dtype="str"), drop_invalid=True)
    assert list(result.clean["attempt_id"]) == ["at_1", "at_3", "at_9", "at_7"]
    assert list(result.clean["charge_id"]) == [prefix + x for x in "aabb"]
    assert [i.rule for i in result.report.issues] == ["multiple_successes"]
    assert list(result.rejects["row"]) == [5]
