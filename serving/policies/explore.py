"""Safe exploration: the next retry time drawn among the allowed times close to the best.

Without exploration a deterministic planner always picks the same time in the same state, so
its log cannot tell what another time would have done: inverse-propensity estimators (IPS,
SNIPS, DR) of any other policy have no overlap. With exploration, the planner draws the retry
time **uniformly among the allowed grid times whose planned value is within ``tolerance`` of
the best** (relative: ``value >= best * (1 - tolerance)``) with probability ``share``, and takes
the best time otherwise; it reports the probability of the chosen grid slot,
``propensity = (1 - share) * [the best] + share / (number of near-best times)``. Keeping most of
the mass on the best time keeps the importance weights of the deployed policy, and of policies
that mostly agree with it, close to 1 over a charge's several retries (their product is what
IPS, SNIPS and DR weigh a charge by); the near-best draws give the rest overlap.

What exploration never changes (it runs after every rule):

- a stop stays a stop (a hard decline, a network cap, an exhausted budget, and
  ``not_worth_an_attempt``: the best value must be positive, so every time in the set is too);
- only times the rules allow are drawn (network waits, the window, the minimum gap, quiet
  hours, the guardrail ladder);
- the expected planned-value loss of a decision is at most ``share * tolerance`` times the best
  value (every near-best time is worth at least ``best * (1 - tolerance)``).

The draw is reproducible: its uniform is a hash of ``(seed, charge id, retries so far, last
attempt time)``, so a repeated request for the same charge state draws the same time (the
decision log also answers repeats from the store). The hash is not the outcome's: an outcome
cannot influence its own draw, which is all the importance weights need.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

import numpy as np

DEFAULT_EXPLORATION_TOLERANCE: Final = 0.02
"""Relative planned-value tolerance of the near-best set (``RETRYOPT_EXPLORATION_TOLERANCE``)."""

DEFAULT_EXPLORATION_SHARE: Final = 0.3
"""Share of the service's decisions drawn from the near-best set (``RETRYOPT_EXPLORATION_SHARE``;
0 = off).

Both defaults were chosen on tuning worlds (seeds 101-103, never the README's;
``benchmarks/bench_exploration.py``, figures in the README's "Safe exploration"): the planned
loss is bounded by ``share * tolerance`` = 0.6 % of the best planned value per decision; the
measured cost was -0.52 % [-1.29, +0.24] of the recovered amount (inside issue 15's 1 %
budget) and +0.35 % of the first retry's true value, while larger tolerances cost 0.8-1.5 % of
it; and the log supports IPS, SNIPS and DR for the deployed policy in every tuning world (share
1, drawing every decision, did not).
"""

EXPLORATION_SCHEME: Final = "near_best"
"""Name of the scheme in responses and the decision log (with its parameters, :func:`scheme`)."""

NO_EXPLORATION: Final = "none"
"""A decision made without a random draw."""

DETERMINISTIC_PROPENSITY: Final = 1.0
"""The propensity of a decision made without a random draw."""


def scheme(tolerance: float, share: float) -> str:
    """The logged ``exploration``: ``near_best:share=0.3,tolerance=0.05`` (``none`` when off)."""
    if tolerance <= 0 or share <= 0:
        return NO_EXPLORATION
    return f"{EXPLORATION_SCHEME}:share={share:g},tolerance={tolerance:g}"


def check_exploration(tolerance: float, share: float) -> None:
    """A ``ValueError`` naming a tolerance outside ``[0, 1)`` or a share outside ``[0, 1]``."""
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"exploration tolerance must be in [0, 1), got {tolerance}")
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"exploration share must be in [0, 1], got {share}")


def state_uniforms(
    charge_ids: Sequence[str],
    retries_used: Sequence[int],
    last_attempt_ns: Sequence[int],
    *,
    seed: int = 0,
) -> np.ndarray:
    """One reproducible uniform in ``[0, 1)`` per charge state (BLAKE2b of the state)."""
    out = np.empty(len(charge_ids), dtype=np.float64)
    for i, (cid, used, last) in enumerate(
        zip(charge_ids, retries_used, last_attempt_ns, strict=True)
    ):
        digest = hashlib.blake2b(
            f"{seed}|{cid}|{int(used)}|{int(last)}".encode(), digest_size=8
        ).digest()
        out[i] = int.from_bytes(digest, "big") / 2.0**64
    return out


def near_best_draw(
    values: np.ndarray, uniforms: np.ndarray, tolerance: float, share: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a grid index per row: the best, or (with probability ``share``) a near-best time.

    Parameters
    ----------
    values
        ``(n, m)`` planned values, ``-inf`` (or NaN) where a time is not allowed.
    uniforms
        ``(n,)`` uniforms in ``[0, 1)`` (:func:`state_uniforms`).
    tolerance
        Relative tolerance in ``[0, 1)`` of the near-best set
        ``{j: values[j] >= best * (1 - tolerance)}``; 0 = off (the argmax, propensity 1).
    share
        Probability of drawing uniformly from the near-best set rather than taking the best
        (first on ties); ``1`` = always draw.

    Returns
    -------
    chosen, propensity
        ``(n,)`` grid index and the probability with which it was drawn,
        ``(1 - share) * [j is the best] + share / |near-best set|``. Rows whose best value is
        not positive (a stop) get the argmax and propensity 1: a stop is never explored.
    """
    clean = np.where(np.isnan(values), -np.inf, values)
    best_idx = np.argmax(clean, axis=1) if clean.shape[1] else np.zeros(len(clean), np.int64)
    chosen = np.array(best_idx, dtype=np.int64)  # a copy: best_idx is read below
    propensity = np.ones(len(clean), dtype=np.float64)
    if tolerance <= 0 or share <= 0 or clean.shape[1] == 0:
        return chosen, propensity
    best = clean[np.arange(len(clean)), chosen]
    live = np.isfinite(best) & (best > 0)
    near = live[:, None] & (clean >= (best * (1.0 - tolerance))[:, None])
    counts = near.sum(axis=1)
    for i in np.flatnonzero(live & (counts > 1)).tolist():
        k = int(counts[i])
        u = float(uniforms[i])
        if u < share:
            idx = np.flatnonzero(near[i])
            chosen[i] = int(idx[min(int(u / share * k), k - 1)])
        propensity[i] = share / k + (1.0 - share) * (chosen[i] == best_idx[i])
    return chosen, propensity
