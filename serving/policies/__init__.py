"""Retry policies: the network rules, the planner, greedy, and the baselines held to the same rules.

Every policy implements :class:`features.decisions.RetryPolicy` (``decide(batch)``), so that the
API, backtests and the synthetic world's ``play`` run them alike. Modules:

- :mod:`.rules` (stop rules, reasons, sources), :mod:`.grid` (the allowed candidate grid),
  :mod:`.caps` (the networks' reattempt caps), :mod:`.charges` (the rules' view of a batch);
- :mod:`.model` (the success model and the model-bundle adapter), :mod:`.values` (the planner's
  dynamic programme), :mod:`.explain` (explanations), :mod:`.base` (shared machinery);
- :mod:`.planner` (``model`` and ``greedy``), :mod:`.baselines` (``fallback``, ``fixed`` and
  ``random``: no model, the same rules through the same code).
"""

from retryopt.serving.policies.base import Alternative, Decision, PlannerConfig, StochasticPolicy
from retryopt.serving.policies.baselines import FallbackPolicy, FixedSchedule, UniformRandom
from retryopt.serving.policies.charges import (
    RuleRows,
    card_refs,
    charge_states,
    charge_states_from_rows,
)
from retryopt.serving.policies.grid import evaluate_rules, evaluate_rules_batch
from retryopt.serving.policies.model import (
    ENGINES,
    BundleSuccessModel,
    CandidateScores,
    SuccessModel,
)
from retryopt.serving.policies.planner import GreedyPolicy, PlannerPolicy
from retryopt.serving.policies.rules import (
    MASTERCARD_SOURCE,
    MERCHANT_SOURCE,
    STRIPE_SOURCE,
    VISA_SOURCE,
    CardRef,
    ChargeState,
    Reason,
    RuleResult,
)
from retryopt.serving.policies.values import plan_values

__all__ = [
    "ENGINES",
    "MASTERCARD_SOURCE",
    "MERCHANT_SOURCE",
    "STRIPE_SOURCE",
    "VISA_SOURCE",
    "Alternative",
    "BundleSuccessModel",
    "CandidateScores",
    "CardRef",
    "ChargeState",
    "Decision",
    "FallbackPolicy",
    "FixedSchedule",
    "GreedyPolicy",
    "PlannerConfig",
    "PlannerPolicy",
    "Reason",
    "RuleResult",
    "RuleRows",
    "StochasticPolicy",
    "SuccessModel",
    "UniformRandom",
    "card_refs",
    "charge_states",
    "charge_states_from_rows",
    "evaluate_rules",
    "evaluate_rules_batch",
    "plan_values",
]
