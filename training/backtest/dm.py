"""The backtest's own direct-method model: a LightGBM fitted on customers kept apart.

:func:`fit_success_model` fits it on the logged retries of other customers (with model-error
replicates on customer-bootstrap reweightings); :class:`DeclineTransitions` draws the next decline
of a hypothetical failed retry in the DM roll-outs.

Every random choice here is keyed (:func:`features.keyed_random.keyed_uniforms`): which
customers are kept apart (:func:`split_customers`), which of them the DM learns from
(:func:`pick_dm_customers`) and the roll-outs' next declines depend on the seed and the
customer or charge id only, never on which other ids are processed with them, so a backtest
split over a cluster's partitions draws exactly what one process draws.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from retryopt.features import contract as c
from retryopt.features.decisions import DecisionBatch
from retryopt.features.examples import build_training_examples
from retryopt.features.keyed_random import keyed_uniforms
from retryopt.features.online import build_candidate_features
from retryopt.features.spec import FeatureSpec, encode_features, fit_feature_spec
from retryopt.serving.policies import CandidateScores
from retryopt.training.backtest.charges import member

if TYPE_CHECKING:
    import lightgbm as lgb

SPLIT_STREAM = 1
"""Keyed stream of the customer split (:func:`split_customers`)."""
PICK_STREAM = 2
"""Keyed stream of the DM customers' order under the example cap (:func:`pick_dm_customers`)."""
TRANSITION_STREAM = 3
"""Keyed stream of the roll-outs' next declines (:meth:`DeclineTransitions.sample`)."""


class DeclineTransitions:
    """Empirical distribution of the next decline given the previous one (for DM roll-outs).

    Fitted on consecutive failed attempts of the same charge (a failed attempt followed by a
    failed retry) in the DM's training data: for each previous ``decline_code`` the observed
    ``(decline_code, network_advice_code)`` pairs of the next failure. Unseen previous codes fall
    back to the pooled distribution.
    """

    def __init__(self, table: dict[object, tuple[np.ndarray, np.ndarray]]) -> None:
        self.table = table

    @classmethod
    def fit(cls, attempts: pd.DataFrame) -> DeclineTransitions:
        """Fit on a canonical attempts frame (all charges, all attempts)."""
        df = attempts.sort_values([c.CHARGE_ID, c.ATTEMPTED_AT], kind="stable")
        failed = (df[c.OUTCOME].astype(str) == c.FAILED).to_numpy()
        same = (
            df[c.CHARGE_ID].to_numpy(dtype=object)[1:]
            == df[c.CHARGE_ID].to_numpy(dtype=object)[:-1]
        )
        pair = np.flatnonzero(same & failed[1:] & failed[:-1]) + 1
        prev = df[c.DECLINE_CODE].to_numpy(dtype=object)[pair - 1]
        code = df[c.DECLINE_CODE].to_numpy(dtype=object)[pair]
        adv = df[c.NETWORK_ADVICE_CODE].to_numpy(dtype=object)[pair]
        table: dict[object, tuple[np.ndarray, np.ndarray]] = {None: (code, adv)}
        if len(pair):
            for key, idx in (
                pd.Series(np.arange(len(pair))).groupby(prev.astype(str)).indices.items()
            ):
                table[key] = (code[idx], adv[idx])
        return cls(table)

    def sample(self, previous: np.ndarray, uniforms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Draw the next ``(decline_code, network_advice_code)`` per previous decline code.

        ``uniforms`` (one in ``[0, 1)`` per row, keyed by the charge and retry number) pick the
        row's observed transition, so a row's draw does not depend on the other rows.
        """
        u = np.asarray(uniforms, dtype=np.float64)
        prev = np.asarray(previous, dtype=object).astype(str)
        code = np.asarray(previous, dtype=object).copy()
        adv = np.full(len(prev), None, dtype=object)
        pooled = self.table[None]
        for key in np.unique(prev):
            rows = np.flatnonzero(prev == key)
            codes, advs = self.table.get(key, pooled)
            if not len(codes):
                continue
            pick = np.minimum((u[rows] * len(codes)).astype(np.int64), len(codes) - 1)
            code[rows] = codes[pick]
            adv[rows] = advs[pick]
        return code, adv


class FittedSuccessModel:
    """A LightGBM success model for the direct method, fitted by the backtest itself.

    Fitted on the logged retries of charges kept apart from the evaluated ones (other
    customers), with the same point-in-time features as the shipped model
    (the feature registry). A :class:`serving.policies.SuccessModel`.
    """

    version = "backtest-dm"

    def __init__(
        self, booster: lgb.Booster, spec: FeatureSpec, transitions: DeclineTransitions | None = None
    ) -> None:
        self.booster = booster
        self.spec = spec
        self.transitions = transitions
        self.replicates: list[FittedSuccessModel] = []

    def predict_rows(self, raw: pd.DataFrame) -> np.ndarray:
        """P(success) per raw feature row."""
        if not len(raw):
            return np.empty(0)
        return np.asarray(self.booster.predict(encode_features(raw, self.spec)), dtype=np.float64)

    def predict_candidates(
        self, batch: DecisionBatch, candidate_times: np.ndarray
    ) -> CandidateScores:
        """Score candidate times (``(n_charges, k)``, NaT = padding)."""
        raw = build_candidate_features(batch, candidate_times)
        flat = ~np.isnat(candidate_times.ravel())
        proba = np.full(candidate_times.size, np.nan)
        if flat.any():
            rows = raw if flat.all() else raw.iloc[np.flatnonzero(flat)]
            proba[flat] = self.predict_rows(rows)
        return CandidateScores(proba=proba.reshape(candidate_times.shape))


def fit_success_model(
    attempts: pd.DataFrame, *, seed: int = 0, num_boost_round: int = 200, refits: int = 0
) -> FittedSuccessModel:
    """Fit the direct-method LightGBM on the logged retries of ``attempts``.

    Parameters
    ----------
    attempts
        Canonical attempts of the charges/customers kept apart from the evaluation, in any row
        order (they are put in :func:`canonical_order` first, so rows gathered from a cluster's
        partitions fit the same model as one process).
    seed
        LightGBM seed (deterministic, single thread).
    num_boost_round
        Boosting rounds (small learning rate, shallow trees: a smooth, calibrated-enough model).
    refits
        Number of extra fits on customer-bootstrap reweightings of the same data, kept in
        ``model.replicates``; the direct method plays every policy under each of them so its
        interval includes model error, not only charge sampling.
    """
    import lightgbm as lgb

    attempts = canonical_order(attempts)
    ex = build_training_examples(attempts)
    if len(ex.label) < 50:
        raise ValueError(
            f"only {len(ex.label)} logged retries to fit the direct-method model (need >= 50)"
        )
    spec = fit_feature_spec(ex.features)
    X = encode_features(ex.features, spec)
    params = {
        "objective": "binary",
        "learning_rate": 0.05,
        "num_leaves": 31,
        "min_data_in_leaf": 50,
        "feature_fraction": 0.9,
        "bagging_fraction": 0.9,
        "bagging_freq": 1,
        "seed": seed,
        "num_threads": 1,
        "deterministic": True,
        "verbose": -1,
    }
    booster = lgb.train(params, lgb.Dataset(X, label=ex.label), num_boost_round=num_boost_round)
    transitions = DeclineTransitions.fit(attempts)
    main = FittedSuccessModel(booster, spec, transitions)
    if not refits:
        return main
    # model-error replicates: the same fit on Poisson(1)-reweighted *customers* (a customer
    # bootstrap of the DM's training data, as sample weights so histories stay intact)
    cust = pd.factorize(ex.meta["customer_id"].astype(str))[0]
    rng = np.random.default_rng(seed + 7919)
    main.replicates = []
    for r in range(refits):
        wc = rng.poisson(1.0, size=int(cust.max()) + 1).astype(np.float64)
        ds = lgb.Dataset(X, label=ex.label, weight=wc[cust])
        b = lgb.train({**params, "seed": seed + r + 1}, ds, num_boost_round=num_boost_round)
        main.replicates.append(FittedSuccessModel(b, spec, transitions))
    return main


def canonical_order(attempts: pd.DataFrame) -> pd.DataFrame:
    """Rows ordered by customer, charge, time and attempt id (a total order on valid data)."""
    keys = [c.CUSTOMER_ID, c.CHARGE_ID, c.ATTEMPTED_AT, c.ATTEMPT_ID]
    return attempts.sort_values(keys, kind="stable").reset_index(drop=True)


def retry_counts(attempts: pd.DataFrame, customers: np.ndarray) -> pd.Series:
    """Logged retries per customer of ``customers`` (index: customer id; 0 when none).

    A retry is an attempt that is not its charge's first; this is the number of examples
    ``features.examples.build_training_examples`` makes for the customer.
    """
    cand = np.asarray(customers, dtype=object)
    rows = attempts[member(attempts[c.CUSTOMER_ID], cand)]
    per_customer = (
        rows.groupby(c.CUSTOMER_ID, sort=False).size()
        - rows.groupby(c.CUSTOMER_ID, sort=False)[c.CHARGE_ID].nunique()
    )
    per_customer.index = per_customer.index.astype(object)
    return per_customer.reindex(pd.Index(cand, dtype=object)).fillna(0).astype(np.int64)


def pick_dm_customers(counts: pd.Series, *, max_examples: int, seed: int) -> np.ndarray:
    """Whole customers with at most ``max_examples`` retries in all, in a keyed random order.

    ``counts``: retries per candidate customer (:func:`retry_counts`, in any order, possibly
    concatenated from partitions). Customers are taken in the order of their keyed uniform
    (ties by id) while the running total stays within the cap, so the DM fit stays bounded
    (~300k examples fit in well under a minute) whatever the size of the history.
    """
    ids = counts.index.to_numpy(dtype=object).astype(str).astype(object)
    order = np.argsort(ids, kind="stable")
    ids, n = ids[order], counts.to_numpy(dtype=np.int64)[order]
    if n.sum() <= max_examples:
        return ids
    ranked = np.argsort(keyed_uniforms(seed, ids, 0, stream=PICK_STREAM), kind="stable")
    keep = ranked[np.cumsum(n[ranked]) <= max_examples]
    return ids[np.sort(keep)]


def dm_customers(
    attempts: pd.DataFrame, candidates: np.ndarray, *, max_examples: int, seed: int
) -> np.ndarray:
    """Whole customers (a keyed random subset of ``candidates``), <= ``max_examples`` retries."""
    return pick_dm_customers(
        retry_counts(attempts, candidates), max_examples=max_examples, seed=seed
    )


def split_customers(customer_ids: np.ndarray, *, share: float, seed: int) -> np.ndarray:
    """Customer-level split: True for customers in the ``share`` part.

    Keyed by the customer id (:data:`SPLIT_STREAM`): a customer's side does not depend on the
    other customers, so each partition of a cluster splits its own customers as one process.
    """
    ids = np.asarray(customer_ids, dtype=object)
    return np.asarray(keyed_uniforms(seed, ids, 0, stream=SPLIT_STREAM) < share)
