"""Fast synthetic contract frames for feature tests and benchmarks (not the synthetic world).

Generates canonical attempt frames (see :mod:`features.contract`) with numpy only: monthly
subscription charges, failed first attempts retried a few times at random gaps (with logged
propensities), card updates, missing card ids / time zones, a high-cardinality issuer column.
The outcome model is deliberately trivial: this data exercises the feature code (shapes,
dtypes, edge cases, speed), it does not stand for a payment world (see ``training.simulate``).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

_COUNTRIES: Final = ("US", "GB", "DE", "FR", "BR", "AU", "CA", "IN", "JP", "NL")
_COUNTRY_P: Final = (0.4, 0.12, 0.1, 0.08, 0.07, 0.06, 0.06, 0.05, 0.03, 0.03)
_CURRENCY: Final = ("USD", "GBP", "EUR", "EUR", "BRL", "AUD", "CAD", "INR", "JPY", "EUR")
_ZONES: Final = (
    "America/Los_Angeles",
    "Europe/London",
    "Europe/Berlin",
    "Europe/Paris",
    "America/Sao_Paulo",
    "Australia/Sydney",
    "America/Toronto",
    "Asia/Kolkata",
    "Asia/Tokyo",
    "Europe/Amsterdam",
)
_BRANDS: Final = ("visa", "mastercard", "amex", "discover")
_BRAND_P: Final = (0.55, 0.35, 0.07, 0.03)
_FUNDING: Final = ("credit", "debit", "prepaid", "unknown")
_FUNDING_P: Final = (0.58, 0.37, 0.04, 0.01)
_CODES: Final = (
    "insufficient_funds",
    "do_not_honor",
    "generic_decline",
    "51",
    "05",
    "91",
    "card_velocity_exceeded",
    "expired_card",
    "14",
    "try_again_later",
    "lost_card",
    "zz_unknown",
)
_CODE_P: Final = (0.3, 0.2, 0.15, 0.1, 0.07, 0.04, 0.04, 0.03, 0.02, 0.02, 0.02, 0.01)
_ADVICE: Final = ("01", "02", "03", "24", "25", "26")
_GAPS_H: Final = np.array([6, 24, 48, 72, 96, 120, 168], dtype=np.int64)
_MAX_ATTEMPTS: Final = 5
_NS_H: Final = 3_600_000_000_000


def _strings(
    prefix: str, values: np.ndarray, keep: np.ndarray | None = None
) -> pd.api.extensions.ExtensionArray:
    arr = pc.binary_join_element_wise(prefix, pa.array(values).cast(pa.string()), "")
    if keep is not None:
        arr = pc.if_else(pa.array(keep), arr, pa.scalar(None, pa.string()))
    return _to_str(arr)


def _to_str(arr: pa.Array | pa.ChunkedArray) -> pd.api.extensions.ExtensionArray:
    out = arr.to_pandas(types_mapper=lambda _t: pd.StringDtype("pyarrow", na_value=np.nan))
    return pd.Series(out).array


def _pick(table: tuple[str, ...], codes: np.ndarray, mask: np.ndarray | None = None) -> object:
    arr = pa.array(list(table), type=pa.string()).take(
        pa.array(codes, mask=None if mask is None else ~mask)
    )
    return _to_str(arr)


def synthetic_attempts(
    *, customers: int, months: int, seed: int, start: str = "2024-01-01"
) -> pd.DataFrame:
    """A canonical contract frame of monthly subscription charges and their retries.

    Parameters
    ----------
    customers, months
        Size of the book: one charge per customer and month (roughly 1.15 attempts per charge).
    seed
        Seed of the ``numpy.random.Generator``.
    start
        First billing month (UTC).

    Returns
    -------
    pandas.DataFrame
        Every contract column with canonical dtypes, rows in no particular order.
    """
    rng = np.random.default_rng(seed)
    n_c = customers
    country = rng.choice(len(_COUNTRIES), size=n_c, p=_COUNTRY_P)
    has_tz = rng.random(n_c) < 0.6
    brand = rng.choice(len(_BRANDS), size=n_c, p=_BRAND_P)
    funding = rng.choice(len(_FUNDING), size=n_c, p=_FUNDING_P)
    n_issuers = 800
    issuer = np.minimum(rng.zipf(1.3, size=n_c), n_issuers) - 1
    has_issuer = rng.random(n_c) < 0.9
    has_card_id = rng.random(n_c) < 0.8
    bill_day = rng.integers(1, 29, size=n_c)
    bill_hour = rng.integers(0, 24, size=n_c)
    base_amount = np.round(np.exp(rng.normal(7.5, 0.8, size=n_c))).astype(np.int64) + 50
    joined = rng.integers(0, 3 * 365, size=n_c)  # card added up to 3 years before start
    p_fail = np.where(funding == 1, 0.16, 0.09)

    # Charges: customer x month.
    cust = np.repeat(np.arange(n_c), months)
    month = np.tile(np.arange(months), n_c)
    n_ch = cust.size
    start_ns = pd.Timestamp(start, tz="UTC").value
    month_start = (
        pd.date_range(start, periods=months, freq="MS", tz="UTC").as_unit("ns").asi8[month]
    )
    first_t = (
        month_start
        + (bill_day[cust] - 1) * 24 * _NS_H
        + bill_hour[cust] * _NS_H
        + rng.integers(0, 3600, size=n_ch) * 1_000_000_000
    )
    # Card updates: a new card (new id, new expiry) with 3 % probability per month.
    update = rng.random(n_ch) < 0.03
    card_seq = np.cumsum(update.reshape(n_c, months), axis=1).reshape(-1)
    card_no = cust.astype(np.int64) * 64 + card_seq

    # Attempts per charge: first attempt fails with p_fail, each retry succeeds with 30 %.
    success = rng.random((n_ch, _MAX_ATTEMPTS)) < np.column_stack(
        [1 - p_fail[cust]] + [np.full(n_ch, 0.3)] * (_MAX_ATTEMPTS - 1)
    )
    any_s: np.ndarray = np.asarray(success.any(axis=1))
    first_s = np.argmax(success, axis=1)
    n_att = np.where(any_s, first_s + 1, _MAX_ATTEMPTS)
    ch = np.repeat(np.arange(n_ch), n_att)
    n = ch.size
    offsets = np.cumsum(n_att) - n_att
    k = np.arange(n) - offsets[ch]
    gap_idx = rng.integers(0, _GAPS_H.size, size=n)
    gaps = np.where(k == 0, 0, _GAPS_H[gap_idx] * _NS_H + rng.integers(0, 600, size=n) * 10**9)
    cum = np.cumsum(gaps)
    t = first_t[ch] + cum - cum[offsets[ch]]
    ok: np.ndarray = any_s[ch] & (k == first_s[ch])
    c = cust[ch]

    code = rng.choice(len(_CODES), size=n, p=_CODE_P)
    is_mc = brand[c] == 1
    has_adv = (~ok) & is_mc & (rng.random(n) < 0.3)
    advice = rng.integers(0, len(_ADVICE), size=n)
    propensity = np.where(k == 0, np.nan, 1.0 / _GAPS_H.size)
    propensity[(k > 0) & (rng.random(n) < 0.1)] = np.nan

    exp_year = 2025 + (card_no[ch] * 7 + 3) % 5
    exp_month = 1 + (card_no[ch] * 5) % 12
    card_added = start_ns - joined[c] * 24 * _NS_H + card_seq[ch] * 30 * 24 * _NS_H

    return pd.DataFrame(
        {
            "attempt_id": _strings("att_", np.arange(n)),
            "charge_id": _strings("ch_", ch),
            "customer_id": _strings("cus_", c),
            "attempted_at": pd.DatetimeIndex(t.view("datetime64[ns]")).tz_localize("UTC"),
            "amount": base_amount[c],
            "currency": _pick(_CURRENCY, country[c]),
            "outcome": _pick(("failed", "succeeded"), ok.astype(np.int64)),
            "decline_code": _pick(_CODES, code, ~ok),
            "network_advice_code": _pick(_ADVICE, advice, has_adv),
            "card_brand": _pick(_BRANDS, brand[c]),
            "card_funding": _pick(_FUNDING, funding[c]),
            "card_country": _pick(_COUNTRIES, country[c]),
            "card_added_at": pd.DatetimeIndex(card_added.view("datetime64[ns]")).tz_localize("UTC"),
            "card_exp_month": exp_month.astype(np.int64),
            "card_exp_year": exp_year.astype(np.int64),
            "card_id": _strings("card_", card_no[ch], has_card_id[c]),
            "issuer": _pick(
                tuple(f"issuer_{i}" for i in range(n_issuers)), issuer[c], has_issuer[c]
            ),
            "customer_timezone": _pick(_ZONES, country[c], has_tz[c]),
            "retry_propensity": propensity,
        }
    )
