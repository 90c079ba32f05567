"""The synthetic payment world: generator, ground truth, logging and oracle policies, ``play``.

Public API (see ``docs/synthetic-world.md``)::

    config = WorldConfig()                      # or WorldConfig.from_file("world.toml")
    world = simulate_world(config, customers=10_000, months=6, seed=7)
    world.attempts, world.truth                 # contract frame, hidden per-charge state
    world.success_probability(charge_id, attempts_so_far, times)
    result = play(OraclePolicy(world), world, world.failed_charges(), Constraints(), seed=1)
"""

from retryopt.training.simulate.config import WorldConfig
from retryopt.training.simulate.play import PlayResult, play
from retryopt.training.simulate.policies import LoggingPolicy, OraclePolicy
from retryopt.training.simulate.summary import WorldSummary, summarize_world
from retryopt.training.simulate.world import Outcome, SimulatedWorld, simulate_world

__all__ = [
    "LoggingPolicy",
    "OraclePolicy",
    "Outcome",
    "PlayResult",
    "SimulatedWorld",
    "WorldConfig",
    "WorldSummary",
    "play",
    "simulate_world",
    "summarize_world",
]
