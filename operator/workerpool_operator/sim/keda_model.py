"""A model of KEDA's redis-list trigger driving a Deployment through the HPA, for side-by-side simulation.

Pure and deterministic, like the engine. Two control loops act on the same Deployment
(docs/simulator.md gives the sources):

- KEDA's operator, every ``polling_interval`` (30 s): the trigger is active when the list length is above
  ``activation_list_length``. Active at 0 replicas: scale to max(minReplicaCount, 1). Inactive for
  ``cooldown_period`` (300 s) since it was last active, at minReplicaCount 0: scale to 0. Nothing else.
- The HPA, every ``hpa_sync_period`` (15 s), only while replicas > 0, on the external metric (the list
  length, an AverageValue target of ``list_length`` per replica, read fresh from KEDA's metrics server):
  ratio = length / (list_length * replicas); within ``tolerance`` (10 %) of 1: keep the replicas, else
  ceil(length / list_length), clamped to [max(min, 1), max]. Scale-down: the highest recommendation of the
  last ``scale_down_window`` (300 s). Scale-up: at most max(4 pods, 100 %) per 15 s.

The trigger sees only the list: tasks already taken by a worker (running or prefetched) are invisible to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from workerpool_operator.engine import ScalingPolicy, Stamped


@dataclass(frozen=True, slots=True)
class KedaSettings:
    """A ScaledObject with one redis trigger, and the HPA defaults it runs under."""

    min_replicas: int = 0  # minReplicaCount
    max_replicas: int = 100  # maxReplicaCount
    list_length: int = 5  # the trigger's listLength: target list length per replica
    activation_list_length: int = 0  # active when the list is longer than this
    polling_interval: float = 30.0
    cooldown_period: float = 300.0  # inactive this long before going to zero
    hpa_sync_period: float = 15.0  # kube-controller-manager --horizontal-pod-autoscaler-sync-period
    tolerance: float = 0.1
    scale_down_window: float = 300.0
    scale_up_pods: int = 4
    scale_up_percent: int = 100
    scale_up_period: float = 15.0

    @classmethod
    def like(cls, policy: ScalingPolicy) -> KedaSettings:
        """KEDA's defaults, with the bounds, target and activation of ``policy``, for a fair comparison."""
        return cls(
            min_replicas=policy.min_replicas,
            max_replicas=policy.max_replicas,
            list_length=max(1, policy.target_per_replica),
            activation_list_length=max(0, policy.activation_backlog - 1),  # KEDA: active when length > this
        )


class KedaState(NamedTuple):
    last_active: float | None = None  # last time KEDA saw the trigger active
    recommendations: tuple[Stamped, ...] = ()  # the HPA's (time, recommendation) inside its scale-down window
    scale_ups: tuple[Stamped, ...] = ()  # (time, replicas before) of the HPA's scale-ups inside the period


class KedaAction(NamedTuple):
    desired_replicas: int
    reason: str


def keda_poll(
    list_length: int, replicas: int, state: KedaState, settings: KedaSettings, now: float
) -> tuple[KedaAction, KedaState]:
    """KEDA's own loop: activation from zero and the cooldown to zero; between 1 and N it leaves the HPA alone."""
    active = list_length > settings.activation_list_length
    last_active = now if active or state.last_active is None else state.last_active
    state = state._replace(last_active=last_active)
    if active and replicas == 0:
        wake = min(max(settings.min_replicas, 1), settings.max_replicas)
        return KedaAction(wake, f"keda: activate, list length {list_length} > {settings.activation_list_length}"), state
    if not active and replicas > 0 and settings.min_replicas == 0 and now - last_active >= settings.cooldown_period:
        return KedaAction(0, f"keda: inactive for {now - last_active:g}s: scale to zero"), state
    return KedaAction(replicas, f"keda: {'active' if active else 'inactive'}, list length {list_length}"), state


def hpa_sync(
    list_length: int, replicas: int, state: KedaState, settings: KedaSettings, now: float
) -> tuple[KedaAction, KedaState]:
    """One HPA sync on the external metric (the list length), with the default behavior."""
    if replicas == 0:
        return KedaAction(0, "hpa: scaling disabled at 0 replicas"), state
    target = settings.list_length
    low = min(max(settings.min_replicas, 1), settings.max_replicas)
    high = settings.max_replicas
    ratio = list_length / (target * replicas)
    within_tolerance = abs(ratio - 1.0) <= settings.tolerance
    recommendation = replicas if within_tolerance else math.ceil(list_length / target)
    recommendation = min(max(recommendation, low), high)

    since = now - settings.scale_down_window
    recommendations = (*(r for r in state.recommendations if r[0] > since), (now, recommendation))
    stabilized = replicas
    highest = max(value for _, value in recommendations)  # scale-down: highest in the window
    if stabilized > highest:
        stabilized = highest
    if recommendation > stabilized:  # scale-up: no stabilization window by default
        stabilized = recommendation

    scale_ups = tuple(s for s in state.scale_ups if s[0] > now - settings.scale_up_period)
    desired = stabilized
    if desired > replicas:
        period_start = min([replicas, *(before for _, before in scale_ups)])
        limit = max(
            period_start + settings.scale_up_pods,
            math.ceil(period_start * (100 + settings.scale_up_percent) / 100),
            replicas,  # as the HPA: a used-up limit holds the replicas, it never lowers them
        )
        desired = min(desired, limit)
        scale_ups = (*scale_ups, (now, replicas)) if desired > replicas else scale_ups
    desired = min(max(desired, low), high)
    reason = f"hpa: list length {list_length}, target {target} per replica, recommends {recommendation}"
    if desired < recommendation:
        reason += f", {desired} now (step limit)"
    elif desired > recommendation:
        reason += f", {desired} held (highest in the last {settings.scale_down_window:g}s)"
    return KedaAction(desired, reason), KedaState(state.last_active, recommendations, scale_ups)
