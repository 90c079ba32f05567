"""The backtest's own direct-method model: a LightGBM fitted on customers kept apart.

:func:`fit_success_model` fits it on the logged retries of other customers (with model-error
replicates on customer-bootstrap reweightings); :class:`DeclineTransitions` draws the next decline
of a hypothetical failed retry in the DM roll-outs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from retryopt.features import contract as c
from retryopt.features.decisions import DecisionBatch
from retryopt.features.examples import build_training_examples
from retryopt.features.online import build_candidate_features
from retryopt.features.spec import FeatureSpec, encode_features, fit_feature_spec
from retryopt.serving.policies import CandidateScores
from retryopt.training.backtest.charges import member

if TYPE_CHECKING:
    import lightgbm as lgb


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

    def sample(
        self, previous: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw the next ``(decline_code, network_advice_code)`` per previous decline code."""
        prev = np.asarray(previous, dtype=object).astype(str)
        code = np.asarray(previous, dtype=object).copy()
        adv = np.full(len(prev), None, dtype=object)
        pooled = self.table[None]
        for key in np.unique(prev):
            rows = np.flatnonzero(prev == key)
            codes, advs = self.table.get(key, pooled)
            if not len(codes):
                continue
            pick = rng.integers(0, len(codes), size=len(rows))
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
        Canonical attempts of the charges/customers kept apart from the evaluation.
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


def dm_customers(
    attempts: pd.DataFrame, candidates: np.ndarray, *, max_examples: int, seed: int
) -> np.ndarray:
    """Whole customers (a seeded random subset of ``candidates``) with <= ``max_examples`` retries.

    A retry is an attempt that is not its charge's first; this is the number of examples
    ``features.examples.build_training_examples`` makes, so the DM fit stays bounded (~300k
    examples fit in well under a minute) whatever the size of the history.
    """
    cand = np.asarray(candidates, dtype=object)
    rows = attempts[member(attempts[c.CUSTOMER_ID], cand)]
    per_customer = (
        rows.groupby(c.CUSTOMER_ID, sort=False).size()
        - rows.groupby(c.CUSTOMER_ID, sort=False)[c.CHARGE_ID].nunique()
    )
    counts = per_customer.reindex(pd.Index(cand)).fillna(0).to_numpy(dtype=np.int64)
    if counts.sum() <= max_examples:
        return cand
    order = np.random.default_rng(seed).permutation(len(cand))
    keep = order[np.cumsum(counts[order]) <= max_examples]
    return cand[np.sort(keep)]


def split_customers(customer_ids: np.ndarray, *, share: float, seed: int) -> np.ndarray:
    """Deterministic customer-level split: True for customers in the ``share`` part."""
    uniq, inv = np.unique(np.asarray(customer_ids, dtype=str), return_inverse=True)
    rng = np.random.default_rng(seed)
    return (rng.random(len(uniq)) < share)[inv]
