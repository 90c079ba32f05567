"""The logging policy: the retry times of the simulated history, with their propensities.

Retry ``k`` (1-based) of a charge whose first attempt failed at ``f`` is placed on an hourly grid
of offsets from ``f``. The allowed offsets are ``G_k = {lo_k, ..., hi}`` with
``lo_k = ceil(previous offset + min_gap_hours)`` and ``hi = floor(window_hours)``. The schedule's
offset is ``s_k = min(max(schedule_hours[k-1], lo_k), hi)``.

- ``mixed`` mode: with probability ``1 - eps`` the schedule's offset, with probability ``eps`` an
  offset drawn uniformly from ``G_k``. The logged propensity of the chosen offset ``h`` is
  ``(1 - eps) * [h == s_k] + eps / |G_k|``.
- ``fixed`` mode: always ``s_k``, propensity ``1.0``.

The policy stops after ``len(schedule_hours)`` retries, when ``G_k`` is empty, and (unless
``retry_hard_declines``) after a hard decline or a Mastercard "do not try again" advice code (03
or 21): Visa category 1 codes must not be retried and Mastercard charges retries after 03/21
(domain-facts.md, Visa Core Rules / Mastercard MAC).
"""

from __future__ import annotations

import numpy as np

from retryopt.training.simulate.config import CODE_INDEX, LoggingPolicyConfig
from retryopt.training.simulate.truth import ADVICE_INDEX

__all__ = ["logging_retry_offsets", "stops_after"]


def stops_after(config: LoggingPolicyConfig, code: np.ndarray, advice: np.ndarray) -> np.ndarray:
    """Whether the logging policy stops after a decline (code ids, advice ids)."""
    if config.retry_hard_declines:
        return np.zeros(code.shape, dtype=bool)
    hard_ids = np.array([CODE_INDEX[c] for c in config.hard_codes if c in CODE_INDEX])
    never_advice = np.array([ADVICE_INDEX["03"], ADVICE_INDEX["21"]])
    return np.isin(code, hard_ids) | np.isin(advice, never_advice)


def logging_retry_offsets(
    config: LoggingPolicyConfig,
    retry_number: int,
    previous_offset: np.ndarray,
    u_explore: np.ndarray,
    u_pick: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (hours after the first failure) of retry ``retry_number`` and their propensities.

    Parameters
    ----------
    config
        The logging policy's config.
    retry_number
        1-based retry index.
    previous_offset
        ``(n,)`` offset of the charge's previous attempt (0 for the first attempt).
    u_explore, u_pick
        ``(n,)`` uniforms: explore or not, and which grid hour when exploring.

    Returns
    -------
    offsets ``(n,)`` float hours (NaN = stop) and propensities ``(n,)`` (NaN where stopped).
    """
    n = previous_offset.shape[0]
    if retry_number > len(config.schedule_hours):
        return np.full(n, np.nan), np.full(n, np.nan)
    lo = np.ceil(previous_offset + max(config.min_gap_hours, 1e-9) - 1e-9)
    hi = float(np.floor(config.window_hours))
    size = hi - lo + 1
    feasible = size >= 1
    sched = np.clip(np.maximum(config.schedule_hours[retry_number - 1], lo), None, hi)
    sched = np.ceil(sched - 1e-9)
    if config.mode == "fixed":
        offset = sched
        prop = np.ones(n)
    else:
        eps = config.exploration
        explore = u_explore < eps
        safe_size = np.where(feasible, size, 1.0)
        random_offset = lo + np.minimum(np.floor(u_pick * safe_size), safe_size - 1)
        offset = np.where(explore, random_offset, sched)
        prop = (1.0 - eps) * (offset == sched) + eps / safe_size
    offset = np.where(feasible, offset, np.nan)
    prop = np.where(feasible, prop, np.nan)
    return offset, prop
