"""The planner's dynamic programme over the remaining retry budget (:func:`plan_values`).

For a charge with ``R`` retries left, candidate times ``t_1 < ... < t_m`` (allowed by the rules),
amount ``A``, cost per attempt ``c``, discount ``d(t)`` and planning gap ``g`` grid steps::

    W_0(j) = 0
    val_k(j) = p_k(j) * A * d(j) - c + (1 - p_k(j)) * W_{k-1}(j)
    W_k(j)  = max(0, max_{j' >= j + g} val_k(j'))        (0 = stop after a failure at t_j)

where ``p_k(j)`` is the model's probability at ``t_j`` in the state after the ``R - k`` earlier
planned retries failed (``later_proba``, see :mod:`.planner`), or, for a success model that
cannot score such a state, ``p_R(j) * decay ** (R - k)``. A later planned retry must also be
allowed in that state (``later_allowed``: the networks' caps counting the earlier planned
attempts as failed ones) and the gap ``g`` may differ per charge (a Mastercard advice wait).
"""

from __future__ import annotations

import numpy as np


def plan_values(
    proba: np.ndarray,
    allowed: np.ndarray,
    *,
    retries_left: np.ndarray,
    amount: np.ndarray,
    discount: np.ndarray,
    cost: float,
    gap_steps: int | np.ndarray,
    decay: float,
    later_proba: np.ndarray | None = None,
    later_allowed: np.ndarray | None = None,
) -> np.ndarray:
    """Expected value of retrying first at each candidate, planning the remaining budget.

    Parameters
    ----------
    proba
        ``(n, m)`` success probability of the next retry at each candidate (NaN = padding).
    allowed
        ``(n, m)`` bool, candidates the rules allow.
    retries_left
        ``(n,)`` int, retries left per charge (>= 1).
    amount
        ``(n,)`` amounts (minor units).
    discount
        ``(n, m)`` discount factor of money collected at each candidate.
    cost
        Cost of one attempt (minor units).
    gap_steps
        Minimum number of grid steps between two planned attempts (>= 1), one for all charges
        or ``(n,)`` per charge.
    decay
        Success of each later retry relative to the next one (used without ``later_proba``).
    later_proba
        Optional ``(S, n, m)``: ``later_proba[s - 1]`` is the success probability at each
        candidate after ``s`` failed planned retries (``S >= max(retries_left) - 1``).
    later_allowed
        Optional ``(S, n, m)`` bool: ``later_allowed[s - 1]`` marks the candidates a retry
        after ``s`` failed planned retries may take, within ``allowed`` (default: ``allowed``).

    Returns
    -------
    numpy.ndarray
        ``(n, m)`` value of a first retry at each candidate, ``-inf`` where not allowed.
    """
    n = proba.shape[0]
    if n > _PLAN_BLOCK_ROWS:
        # Rows are independent: blocks of rows keep the temporaries in cache (about 2x faster
        # on a 200-charge batch than one pass over the whole (n, m) arrays).
        return np.concatenate(
            [
                plan_values(
                    proba[k : k + _PLAN_BLOCK_ROWS],
                    allowed[k : k + _PLAN_BLOCK_ROWS],
                    retries_left=retries_left[k : k + _PLAN_BLOCK_ROWS],
                    amount=amount[k : k + _PLAN_BLOCK_ROWS],
                    discount=discount[k : k + _PLAN_BLOCK_ROWS],
                    cost=cost,
                    gap_steps=gap_steps
                    if isinstance(gap_steps, int)
                    else np.asarray(gap_steps)[k : k + _PLAN_BLOCK_ROWS],
                    decay=decay,
                    later_proba=None
                    if later_proba is None
                    else later_proba[:, k : k + _PLAN_BLOCK_ROWS],
                    later_allowed=None
                    if later_allowed is None
                    else later_allowed[:, k : k + _PLAN_BLOCK_ROWS],
                )
                for k in range(0, n, _PLAN_BLOCK_ROWS)
            ]
        )
    m = proba.shape[1]
    # Same arithmetic, in the same order, as the textbook form (tests pin it bit for bit against
    # ``plan_values_reference`` in tests/test_serving_hotpath.py), with the temporaries written in
    # place: on one charge the numpy call overhead dominates, on a batch the memory traffic.
    p = np.where(allowed, proba, 0.0)
    np.copyto(p, 0.0, where=np.isnan(p))  # nan_to_num for probabilities (never infinite)
    gain = amount[:, None] * discount
    out = np.full((n, m), -np.inf)
    w = np.zeros((n, m))  # W_{k-1}: value after a failure at j, with k-1 retries left
    blocked = ~allowed
    pk = np.empty((n, m))
    val = np.empty((n, m))
    tmp = np.empty((n, m))
    r_max = int(retries_left.max()) if n else 0
    powers = decay_powers(decay, r_max)
    stacked = None
    if later_proba is not None and r_max > 1:
        later = np.where(allowed[None], later_proba[: r_max - 1], 0.0)
        np.copyto(later, 0.0, where=np.isnan(later))
        stacked = np.concatenate([p[None], later])
    rows = np.arange(n)
    masks = None
    if later_allowed is not None and r_max > 1:
        masks = np.concatenate([blocked[None], ~later_allowed[: r_max - 1]])
    gaps = np.asarray(gap_steps, dtype=np.int64)
    uniform_gap = gaps.ndim == 0 or n == 0 or bool((gaps == gaps.flat[0]).all())
    gap = int(gaps.flat[0]) if n or gaps.ndim == 0 else 1
    for k in range(1, r_max + 1):
        exponent = np.maximum(retries_left - k, 0)[:, None]
        if stacked is None:
            np.multiply(p, powers[exponent], out=pk)
        else:
            pk[...] = stacked[exponent[:, 0], rows]
        np.multiply(pk, gain, out=val)
        np.subtract(val, cost, out=val)
        np.subtract(1.0, pk, out=tmp)
        np.multiply(tmp, w, out=tmp)
        np.add(val, tmp, out=val)
        val[blocked if masks is None else masks[exponent[:, 0], rows]] = -np.inf
        at_level = retries_left == k
        if at_level.any():
            out[at_level] = val[at_level]
        if k == r_max:
            break
        # W_k(j) = max(0, max_{j' >= j + gap} val_k(j')): a suffix maximum, shifted by the gap.
        suffix = np.maximum.accumulate(val[:, ::-1], axis=1)[:, ::-1]
        w.fill(0.0)
        if uniform_gap:
            if gap < m:
                np.maximum(suffix[:, gap:], 0.0, out=w[:, : m - gap])
        else:
            ahead = np.arange(m)[None, :] + gaps[:, None]
            inside = ahead < m
            gathered = np.take_along_axis(suffix, np.minimum(ahead, m - 1), axis=1)
            np.maximum(np.where(inside, gathered, 0.0), 0.0, out=w)
    return out


_PLAN_BLOCK_ROWS = 64


def decay_powers(decay: float, n: int) -> np.ndarray:
    """``decay ** i`` for ``i = 0 .. n`` as float64, computed one scalar at a time.

    ``decay ** exponents`` on a numpy array can round differently in the last bit depending on
    the array's length (vectorised and scalar ``pow`` differ), which made a charge's plan values
    depend on how many charges shared its batch; a table gathered by exponent does not.
    """
    return np.array([decay**i for i in range(n + 1)], dtype=np.float64)
