"""The scaling engine: how many workers each queue needs, and which of them to let go. Pure and deterministic.

- ``policy.py``: ``ScalingPolicy``, one queue's rules, and the two policies' names (``throughput``, ``demand``);
- ``decide.py``: ``decide(observation, state, policy, now) -> (decision, new_state)``, its types (``QueueState``,
  ``Decision``) and the two policies;
- ``forecast.py``: what the worker reports teach (task seconds, arrival rate, start-up delay);
- ``drain.py``: scale-down without killing (which workers drain, when one is removed, when taken back);
- ``schedules.py``: capacity ahead of known spikes (cron windows, and any other source of ``Window`` values).
"""

from workerpool_operator.engine.decide import (
    DEMAND,
    POLICIES,
    THROUGHPUT,
    Decision,
    QueueState,
    ScalingPolicy,
    Stamped,
    decide,
)
from workerpool_operator.engine.drain import idlest_first
from workerpool_operator.engine.schedules import Schedule

__all__ = [
    "DEMAND",
    "POLICIES",
    "THROUGHPUT",
    "Decision",
    "QueueState",
    "ScalingPolicy",
    "Schedule",
    "Stamped",
    "decide",
    "idlest_first",
]
