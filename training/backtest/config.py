"""The backtest's options, declared once (``retryopt backtest`` takes its defaults from here).

Light on purpose (no numpy or pandas at import): the command line reads the defaults when it
builds its options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from retryopt.features.decisions import Constraints

MIN_ESS: Final = 30.0
"""Minimum effective sample size of the trajectory weights for IPS/SNIPS/DR to be reported.

Below it the weighted estimates rest on a handful of charges and their bootstrap intervals are
not trustworthy (measured on the ground-truth worlds: with ESS ~ 1-10 the 95 % intervals covered
the truth in about half the cases); the estimators then declare themselves unavailable
("insufficient overlap") instead of reporting a number.
"""


@dataclass(frozen=True, kw_only=True)
class BacktestConfig:
    """Options of a backtest (see ``docs/backtesting.md``)."""

    n_boot: int = 200
    """Bootstrap resamples by charge (shared by all policies) behind every 95 % interval."""
    seed: int = 0
    """Seed of the resampling, the DM split and fit, the random policies and the plays."""
    bandwidth_hours: float = 6.0
    """Width of the IPS kernel around a deterministic target's retry time (hours)."""
    min_ess: float = MIN_ESS
    """Minimum effective sample size of a policy's weights for IPS, SNIPS and DR."""
    fit_dm: bool = True
    """Without a given DM model, fit one on customers kept apart from the evaluated ones."""
    dm_share: float = 0.5
    """Share of the failed charges' customers kept apart to fit the DM model."""
    dm_max_examples: int = 300_000
    """Cap on the logged retries the DM model is fitted on (whole customers, seeded)."""
    dm_refits: int = 4
    """DM refits on customer-bootstrap reweightings (its interval then includes model error)."""
    constraints: Constraints | None = None
    """Retry constraints applied to every policy (None: ``Constraints()``, 4 retries in 504 h)."""
    holdout: bool = True
    """Evaluate only the failed charges of the model bundles' test months (when they say)."""
    reporting_currency: str = "usd"
    """Currency of every reported amount (major units; lower-cased)."""
    simulate: bool = False
    """Also play every policy in the simulated world that produced the data (ground truth)."""
    truth_replications: int = 3
    """With ``simulate``: plays per policy, with distinct common random numbers, averaged."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "reporting_currency", self.reporting_currency.lower())
        checks = {
            "n_boot >= 1": self.n_boot >= 1,
            "bandwidth_hours > 0": self.bandwidth_hours > 0,
            "min_ess > 0": self.min_ess > 0,
            "0 < dm_share < 1": 0 < self.dm_share < 1,
            "dm_max_examples >= 1": self.dm_max_examples >= 1,
            "dm_refits >= 0": self.dm_refits >= 0,
            "truth_replications >= 1": self.truth_replications >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid backtest option(s): {', '.join(bad)}")
