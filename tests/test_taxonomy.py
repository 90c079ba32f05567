"""Table-driven tests of the decline-code taxonomy over the whole Stripe and ISO vocabularies."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retryopt.features.taxonomy import (
    ISO_RESPONSE_CODES,
    MASTERCARD_ADVICE_CODES,
    MASTERCARD_MAX_DECLINES_24H,
    MASTERCARD_MAX_DECLINES_30D,
    STRIPE_DECLINE_CODES,
    STRIPE_EXTRA_CODES,
    STRIPE_NEVER_RETRY_CODES,
    VISA_CATEGORY_1_CODES,
    VISA_CATEGORY_2_CODES,
    VISA_CATEGORY_3_CODES,
    VISA_CATEGORY_4_CODES,
    VISA_MAX_REATTEMPTS_30D,
    DeclineFamily,
    DeclineInfo,
    RetryRule,
    advice_info,
    classify_codes,
    classify_decline,
    is_retry_allowed,
    mastercard_advice,
    network_retry_limits,
    normalize_code,
    visa_category,
)

# Stripe's documented card decline codes (docs.stripe.com/declines/codes), written out here so
# that a code silently dropped from the module fails the suite.
STRIPE_DOCUMENTED = [
    "authentication_required",
    "approve_with_id",
    "call_issuer",
    "card_not_supported",
    "card_velocity_exceeded",
    "currency_not_supported",
    "do_not_honor",
    "do_not_try_again",
    "duplicate_transaction",
    "expired_card",
    "fraudulent",
    "generic_decline",
    "incorrect_number",
    "incorrect_cvc",
    "incorrect_pin",
    "incorrect_zip",
    "insufficient_funds",
    "invalid_account",
    "invalid_amount",
    "invalid_cvc",
    "invalid_expiry_month",
    "invalid_expiry_year",
    "invalid_number",
    "invalid_pin",
    "issuer_not_available",
    "lost_card",
    "merchant_blacklist",
    "new_account_information_available",
    "no_action_taken",
    "not_permitted",
    "offline_pin_required",
    "online_or_offline_pin_required",
    "pickup_card",
    "pin_try_exceeded",
    "processing_error",
    "reenter_transaction",
    "restricted_card",
    "revocation_of_all_authorizations",
    "revocation_of_authorization",
    "security_violation",
    "service_not_allowed",
    "stolen_card",
    "stop_payment_order",
    "testmode_decline",
    "transaction_not_allowed",
    "try_again_later",
    "withdrawal_count_limit_exceeded",
]
STRIPE_NEVER_LIST = [
    "incorrect_number",
    "lost_card",
    "pickup_card",
    "stolen_card",
    "revocation_of_authorization",
    "revocation_of_all_authorizations",
    "authentication_required",
    "highest_risk_level",
]
# Visa Core Rules, April 2026 (decline categories).
VISA_CAT = {
    1: ["04", "07", "12", "14", "15", "41", "43", "46", "57", "R0", "R1", "R3"],
    2: [
        "03",
        "19",
        "39",
        "51",
        "52",
        "53",
        "59",
        "61",
        "62",
        "65",
        "75",
        "78",
        "83",
        "86",
        "91",
        "93",
        "96",
        "5C",
        "9G",
        "N3",
        "N4",
        "Z5",
    ],
    3: ["54", "55", "82", "6P", "N7", "70", "1A"],
    4: ["01", "05", "13", "58", "63"],
}
ISO_ALL = sorted({c for codes in VISA_CAT.values() for c in codes} | ISO_RESPONSE_CODES)
STRIPE_ALL = sorted(set(STRIPE_DOCUMENTED) | STRIPE_EXTRA_CODES)
ALL_CODES = STRIPE_ALL + ISO_ALL


# --- vocabularies -----------------------------------------------------------------------------


def test_stripe_vocabulary_is_exactly_the_documented_list() -> None:
    assert set(STRIPE_DOCUMENTED) == STRIPE_DECLINE_CODES
    assert len(STRIPE_DOCUMENTED) == len(set(STRIPE_DOCUMENTED)) == 47
    assert "highest_risk_level" in STRIPE_EXTRA_CODES
    assert not STRIPE_DECLINE_CODES & STRIPE_EXTRA_CODES


def test_never_retry_list_is_stripes() -> None:
    assert set(STRIPE_NEVER_LIST) == STRIPE_NEVER_RETRY_CODES


@pytest.mark.parametrize(("category", "table"), [(1, VISA_CATEGORY_1_CODES),
                                                 (2, VISA_CATEGORY_2_CODES),
                                                 (3, VISA_CATEGORY_3_CODES)])  # fmt: skip
def test_visa_category_tables(category: int, table: frozenset[str]) -> None:
    assert set(VISA_CAT[category]) == table


def test_visa_categories_are_disjoint_and_cover_the_iso_table() -> None:
    tables = [VISA_CATEGORY_1_CODES, VISA_CATEGORY_2_CODES, VISA_CATEGORY_3_CODES,
              VISA_CATEGORY_4_CODES]  # fmt: skip
    assert sum(len(t) for t in tables) == len(frozenset().union(*tables))
    assert frozenset().union(*tables) == ISO_RESPONSE_CODES
    assert set(VISA_CAT[4]) <= VISA_CATEGORY_4_CODES


# --- every code -------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ALL_CODES)
def test_every_code_is_known_and_consistent(code: str) -> None:
    info = classify_decline(code)
    assert info.known
    assert info.code == code
    assert info.family is not DeclineFamily.UNKNOWN
    assert isinstance(info.family, DeclineFamily)
    assert isinstance(info.rule, RetryRule)
    assert info.hard == (info.rule is not RetryRule.RETRY)
    assert info.source
    assert info.meaning
    if info.rule in (RetryRule.UPDATE_PAYMENT_METHOD, RetryRule.NEVER_UNLESS_CARD_CHANGED):
        assert info.action_required is not None
    if info.rule is RetryRule.CUSTOMER_AUTHENTICATION:
        assert info.action_required == "customer_authentication"
        assert info.family is DeclineFamily.AUTHENTICATION


@pytest.mark.parametrize("code", STRIPE_ALL)
def test_stripe_codes_have_no_visa_category(code: str) -> None:
    assert classify_decline(code).visa_category is None
    assert "docs.stripe.com" in classify_decline(code).source


@pytest.mark.parametrize(
    ("code", "category"), [(c, k) for k, codes in VISA_CAT.items() for c in codes]
)
def test_iso_codes_carry_their_visa_category(code: str, category: int) -> None:
    info = classify_decline(code)
    assert info.visa_category == category
    assert "Visa Core Rules, April 2026" in info.source
    if category == 1:
        assert info.rule is RetryRule.NEVER
        assert info.hard
    elif category == 2:
        assert info.rule is RetryRule.RETRY
        assert not info.hard


@pytest.mark.parametrize("code", sorted(STRIPE_NEVER_RETRY_CODES - {"authentication_required"}))
def test_stripe_never_retry_codes_wait_for_a_card_change(code: str) -> None:
    info = classify_decline(code)
    assert info.rule is RetryRule.NEVER_UNLESS_CARD_CHANGED
    assert info.hard
    assert "smart-retries" in info.source
    assert not is_retry_allowed(info.rule, card_changed=False)
    assert is_retry_allowed(info.rule, card_changed=True)


def test_authentication_required_asks_for_authentication() -> None:
    info = classify_decline("authentication_required")
    assert info.family is DeclineFamily.AUTHENTICATION
    assert info.rule is RetryRule.CUSTOMER_AUTHENTICATION
    assert info.action_required == "customer_authentication"
    assert not is_retry_allowed(info.rule, card_changed=False)


# Spot checks of the mapping by meaning (the brief's examples).
@pytest.mark.parametrize(
    ("code", "family", "rule"),
    [
        ("insufficient_funds", DeclineFamily.FUNDS, RetryRule.RETRY),
        ("51", DeclineFamily.FUNDS, RetryRule.RETRY),
        ("do_not_honor", DeclineFamily.ISSUER_RISK, RetryRule.RETRY),
        ("05", DeclineFamily.ISSUER_RISK, RetryRule.RETRY),
        ("expired_card", DeclineFamily.CARD_DATA, RetryRule.UPDATE_PAYMENT_METHOD),
        ("54", DeclineFamily.CARD_DATA, RetryRule.UPDATE_PAYMENT_METHOD),
        ("lost_card", DeclineFamily.LOST_STOLEN_FRAUD, RetryRule.NEVER_UNLESS_CARD_CHANGED),
        ("stolen_card", DeclineFamily.LOST_STOLEN_FRAUD, RetryRule.NEVER_UNLESS_CARD_CHANGED),
        ("pickup_card", DeclineFamily.LOST_STOLEN_FRAUD, RetryRule.NEVER_UNLESS_CARD_CHANGED),
        ("fraudulent", DeclineFamily.LOST_STOLEN_FRAUD, RetryRule.NEVER_UNLESS_CARD_CHANGED),
        ("incorrect_number", DeclineFamily.CARD_DATA, RetryRule.NEVER_UNLESS_CARD_CHANGED),
        ("invalid_account", DeclineFamily.ACCOUNT_CLOSED, RetryRule.UPDATE_PAYMENT_METHOD),
        ("46", DeclineFamily.ACCOUNT_CLOSED, RetryRule.NEVER),
        ("card_velocity_exceeded", DeclineFamily.VELOCITY, RetryRule.RETRY),
        ("withdrawal_count_limit_exceeded", DeclineFamily.VELOCITY, RetryRule.RETRY),
        ("61", DeclineFamily.VELOCITY, RetryRule.RETRY),
        ("65", DeclineFamily.VELOCITY, RetryRule.RETRY),
        ("issuer_not_available", DeclineFamily.ISSUER_UNAVAILABLE, RetryRule.RETRY),
        ("try_again_later", DeclineFamily.ISSUER_UNAVAILABLE, RetryRule.RETRY),
        ("reenter_transaction", DeclineFamily.ISSUER_UNAVAILABLE, RetryRule.RETRY),
        ("91", DeclineFamily.ISSUER_UNAVAILABLE, RetryRule.RETRY),
        ("processing_error", DeclineFamily.PROCESSING, RetryRule.RETRY),
        ("96", DeclineFamily.PROCESSING, RetryRule.RETRY),
        ("generic_decline", DeclineFamily.GENERIC, RetryRule.RETRY),
        ("call_issuer", DeclineFamily.GENERIC, RetryRule.RETRY),
        ("no_action_taken", DeclineFamily.GENERIC, RetryRule.RETRY),
        ("do_not_try_again", DeclineFamily.ISSUER_RISK, RetryRule.NEVER),
        ("1A", DeclineFamily.AUTHENTICATION, RetryRule.CUSTOMER_AUTHENTICATION),
        ("R0", DeclineFamily.ACCOUNT_CLOSED, RetryRule.NEVER),
        ("stop_payment_order", DeclineFamily.ACCOUNT_CLOSED, RetryRule.NEVER),
    ],
)
def test_mapping_by_meaning(code: str, family: DeclineFamily, rule: RetryRule) -> None:
    info = classify_decline(code)
    assert (info.family, info.rule) == (family, rule)


def test_expired_card_asks_for_a_new_payment_method() -> None:
    assert classify_decline("expired_card").action_required == "update_payment_method"


# --- normalisation and unknown codes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("r0", "R0"),
        (" r1 ", "R1"),
        ("5c", "5C"),
        ("n7", "N7"),
        ("1a", "1A"),
        ("5", "05"),
        (" Insufficient_Funds\t", "insufficient_funds"),
        ("DO_NOT_HONOR", "do_not_honor"),
        (None, ""),
        ("", ""),
        ("   ", ""),
        (pd.NA, ""),
        (float("nan"), ""),
    ],
)
def test_normalize_code(raw: object, expected: str) -> None:
    assert normalize_code(raw) == expected


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [("r0", "R0"), ("Lost_Card", "lost_card"), (" 51 ", "51"), ("5", "05"), ("9g", "9G")],
)
def test_normalised_codes_classify_like_canonical(raw: str, canonical: str) -> None:
    assert classify_decline(raw) == classify_decline(canonical)


@pytest.mark.parametrize("code", [None, "", "  "])
def test_missing_code_is_unknown(code: str | None) -> None:
    info = classify_decline(code)
    assert info.family is DeclineFamily.UNKNOWN
    assert not info.known
    assert info.rule is RetryRule.RETRY
    assert not info.hard
    assert info.visa_category is None
    assert info.code == ""


@pytest.mark.parametrize("code", ["not_a_real_code", "weird decline", "123", "XYZ9"])
def test_unknown_code_is_soft_and_never_raises(code: str) -> None:
    info = classify_decline(code)
    assert (info.family, info.rule, info.hard, info.known) == (
        DeclineFamily.UNKNOWN,
        RetryRule.RETRY,
        False,
        False,
    )
    assert info.visa_category is None


@pytest.mark.parametrize("code", ["ZZ", "q1", "00", "99"])
def test_unknown_two_character_code_is_visa_category_4(code: str) -> None:
    info = classify_decline(code)
    assert not info.known
    assert info.family is DeclineFamily.UNKNOWN
    assert info.visa_category == 4
    assert visa_category(code) == 4


def test_visa_category_of_stripe_name_is_none() -> None:
    assert visa_category("insufficient_funds") is None
    assert visa_category(None) is None


# --- advice codes ------------------------------------------------------------------------------

MAC_WAITS = {"24": 1, "25": 24, "26": 48, "27": 96, "28": 144, "29": 192, "30": 240}


def test_mastercard_advice_vocabulary() -> None:
    assert set(MASTERCARD_ADVICE_CODES) == {"01", "02", "03", "04", "21", *MAC_WAITS}
    for code, advice in MASTERCARD_ADVICE_CODES.items():
        assert advice.meaning
        assert advice.never_retry == (code in {"03", "21"})


@pytest.mark.parametrize(("code", "hours"), sorted(MAC_WAITS.items()))
def test_mastercard_wait_codes(code: str, hours: float) -> None:
    advice = mastercard_advice(code)
    assert advice is not None
    assert advice.min_wait_hours == hours
    assert not advice.never_retry


@pytest.mark.parametrize("raw", ["3", " 03 ", "03"])
def test_mastercard_advice_normalisation(raw: str) -> None:
    advice = mastercard_advice(raw)
    assert advice is not None and advice.code == "03" and advice.never_retry


@pytest.mark.parametrize("raw", [None, "", "99", "do_not_try_again"])
def test_mastercard_advice_unknown(raw: str | None) -> None:
    assert mastercard_advice(raw) is None


@pytest.mark.parametrize("advice", ["03", "21", "3", "do_not_try_again", "DO_NOT_TRY_AGAIN"])
@pytest.mark.parametrize("code", [*ALL_CODES, "", "unknown_thing", "ZZ"])
def test_never_advice_overrides_every_code(code: str, advice: str) -> None:
    info = classify_decline(code, network_advice_code=advice)
    assert info.rule is RetryRule.NEVER
    assert info.hard
    base = classify_decline(code)
    assert (info.family, info.known, info.visa_category) == (
        base.family,
        base.known,
        base.visa_category,
    )
    assert not is_retry_allowed(info.rule, card_changed=True)


@pytest.mark.parametrize("advice", [*MAC_WAITS, "02", "04", "try_again_later", "77", "nonsense"])
@pytest.mark.parametrize("code", ALL_CODES)
def test_wait_and_neutral_advice_keep_the_code_rule(code: str, advice: str) -> None:
    base = classify_decline(code)
    info = classify_decline(code, network_advice_code=advice)
    assert (info.family, info.rule, info.hard, info.action_required) == (
        base.family,
        base.rule,
        base.hard,
        base.action_required,
    )


@pytest.mark.parametrize("advice", ["confirm_card_data", "01"])
def test_card_data_advice_raises_soft_codes(advice: str) -> None:
    info = classify_decline("insufficient_funds", network_advice_code=advice)
    assert info.rule is RetryRule.UPDATE_PAYMENT_METHOD
    assert info.hard
    assert info.action_required == "update_payment_method"
    # a stricter rule is kept
    assert classify_decline("41", network_advice_code=advice).rule is RetryRule.NEVER


def test_confirm_card_data_sets_card_data_family() -> None:
    assert classify_decline("51", network_advice_code="confirm_card_data").family == "card_data"


def test_advice_info_covers_both_vocabularies() -> None:
    assert advice_info("do_not_try_again") is not None
    assert advice_info("confirm_card_data") is not None
    assert advice_info("27") == mastercard_advice("27")
    assert advice_info("whatever") is None


# --- limits ------------------------------------------------------------------------------------


def test_limit_constants() -> None:
    assert VISA_MAX_REATTEMPTS_30D == 20
    assert MASTERCARD_MAX_DECLINES_24H == 10
    assert MASTERCARD_MAX_DECLINES_30D == 35


def test_network_retry_limits() -> None:
    (visa,) = network_retry_limits("visa")
    assert (visa.window_hours, visa.max_count, visa.counts) == (720.0, 20, "reattempts")
    assert "Visa" in visa.source
    mc = network_retry_limits(" MasterCard ")
    assert [(lim.window_hours, lim.max_count, lim.counts) for lim in mc] == [
        (24.0, 10, "declines"),
        (720.0, 35, "declines"),
    ]
    assert network_retry_limits("amex") == ()
    assert network_retry_limits(None) == ()


@pytest.mark.parametrize(
    ("rule", "changed", "allowed"),
    [
        ("retry", False, True),
        ("never", True, False),
        ("never_unless_card_changed", False, False),
        ("never_unless_card_changed", True, True),
        ("update_payment_method", True, True),
        ("customer_authentication", False, False),
    ],
)
def test_is_retry_allowed(rule: str, changed: bool, allowed: bool) -> None:
    assert is_retry_allowed(rule, card_changed=changed) is allowed


def test_is_retry_allowed_rejects_unknown_rule() -> None:
    with pytest.raises(ValueError):
        is_retry_allowed("sometimes", card_changed=True)


# --- vectorised == scalar ----------------------------------------------------------------------


def _expected_row(info: DeclineInfo) -> tuple[object, ...]:
    return (
        str(info.family),
        info.hard,
        str(info.rule),
        info.known,
        math.nan if info.visa_category is None else float(info.visa_category),
        info.action_required,
    )


def _frame_rows(frame: pd.DataFrame) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for rec in frame.to_dict("records"):
        action: object = rec["action_required"]
        action = action if isinstance(action, str) else None
        rows.append((rec["family"], bool(rec["hard"]), rec["rule"], bool(rec["known"]),
                     rec["visa_category"], action))  # fmt: skip
    return rows


def _same(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    return all(
        (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
        or x == y
        for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("dtype", ["str", "object"])
def test_classify_codes_equals_scalar_for_every_code(dtype: str) -> None:
    raw = [*ALL_CODES, "r0", " Lost_Card ", "5", None, "", "zz", "mystery_code"]
    codes = pd.Series(raw, dtype=dtype, index=pd.RangeIndex(100, 100 + len(raw)))
    frame = classify_codes(codes)
    assert list(frame.columns) == [
        "family", "hard", "rule", "known", "visa_category", "action_required",
    ]  # fmt: skip
    assert frame.index.equals(codes.index)
    assert frame["family"].dtype == "str" and frame["rule"].dtype == "str"
    assert frame["hard"].dtype == bool and frame["known"].dtype == bool
    assert frame["visa_category"].dtype == np.float64
    for value, got in zip(raw, _frame_rows(frame), strict=True):
        assert _same(got, _expected_row(classify_decline(value))), value


def test_classify_codes_with_advice_equals_scalar() -> None:
    rng = np.random.default_rng(7)
    code_pool = np.array([*ALL_CODES, None, "zz", "mystery"], dtype=object)
    advice_pool = np.array(
        [None, "", "03", "21", "24", "30", "01", "3", "do_not_try_again", "confirm_card_data",
         "try_again_later", "bogus"],
        dtype=object,
    )  # fmt: skip
    n = 3000
    codes = pd.Series(code_pool[rng.integers(0, len(code_pool), n)], dtype="str")
    advice = pd.Series(advice_pool[rng.integers(0, len(advice_pool), n)], dtype="str")
    codes.index = advice.index = pd.Index(rng.permutation(n) + 1)
    frame = classify_codes(codes, advice)
    assert frame.index.equals(codes.index)
    for c, a, got in zip(codes, advice, _frame_rows(frame), strict=True):
        expected = _expected_row(
            classify_decline(None if pd.isna(c) else c,
                             network_advice_code=None if pd.isna(a) else a)
        )  # fmt: skip
        assert _same(got, expected), (c, a)


def test_classify_codes_empty_and_mismatched() -> None:
    empty = classify_codes(pd.Series([], dtype="str"))
    assert len(empty) == 0 and "family" in empty.columns
    with pytest.raises(ValueError, match="advice_codes has 1 rows but codes has 2"):
        classify_codes(pd.Series(["51", "05"]), pd.Series(["03"]))


def test_classify_codes_all_missing() -> None:
    frame = classify_codes(pd.Series([None, None], dtype="str"), pd.Series([None, "03"]))
    assert frame["family"].tolist() == ["unknown", "unknown"]
    assert frame["rule"].tolist() == ["retry", "never"]
    assert not frame["known"].any()


# --- documentation ------------------------------------------------------------------------------


def test_docs_tables_match_the_module() -> None:
    doc = Path(__file__).resolve().parents[1] / "docs" / "taxonomy.md"
    documented: dict[str, tuple[str, ...]] = {}
    for line in doc.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith("`") and cells[2] in {"hard", "soft"}:
            code = cells[0].strip("`")
            assert code not in documented, f"{code} documented twice"
            documented[code] = tuple(cells[1:5])
    assert set(documented) == set(ALL_CODES)
    for code, (family, hardness, rule, action) in documented.items():
        info = classify_decline(code)
        expected = (
            str(info.family),
            "hard" if info.hard else "soft",
            str(info.rule),
            info.action_required or "–",
        )
        assert (family, hardness, rule, action) == expected, code
