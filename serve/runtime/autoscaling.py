"""An application-level Serve autoscaling policy on the service's own signal: how long requests wait in the ingress.

Ray's default policy scales each deployment on its own ongoing requests, against a ``target_ongoing_requests`` that
has to be guessed per deployment (reports/autoscaling). This service already measures what its users feel: the age
of the oldest request in progress at each ingress replica, the signal its admission guard sheds on
(``EMOTION_MAX_QUEUE_DELAY_S``). Each Ingress replica reports it to the controller (``record_autoscaling_stats``);
``GraphDelayPolicy`` scales every deployment of the graph by the same factor, ``mean age / target_age_s``, so the
graph grows as one (one replica of each per node with ``max_replicas_per_node: 1``) before requests are shed.
Ray applies each deployment's ``min_replicas``/``max_replicas`` and up/down delays to the decision.

Opt in from the Serve config (docs/cluster.md)::

    applications:
      - name: emotion
        autoscaling_policy:
          policy_function: serve.runtime.autoscaling:GraphDelayPolicy
          policy_kwargs: {target_age_s: 0.25}
        deployments: [...]   # each with an autoscaling_config (bounds and delays), no num_replicas
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# The custom metric's name, written by the Ingress deployment and read here.
OLDEST_REQUEST_AGE = "oldest_request_age_s"
DEFAULT_TARGET_AGE_S = 0.25  # a quarter of the default shedding bound (EMOTION_MAX_QUEUE_DELAY_S = 1 s)


def scale_factor(ages: Mapping[Any, float], target_age_s: float) -> float | None:
    """``mean(ages) / target_age_s``: how many times the graph's replicas it takes to bring the oldest request's age
    to the target; None without a report (a new replica, or none has reported yet: hold the current count)."""
    values = [float(v) for v in ages.values() if math.isfinite(v)]
    if not values:
        return None
    return sum(values) / len(values) / target_age_s


class GraphDelayPolicy:
    """Scale every deployment of the application on the Ingress replicas' oldest-request age.

    Args:
        target_age_s: the age to hold the oldest request at (> 0); below it the graph shrinks, above it grows.
        ingress: the name of the deployment that reports ``OLDEST_REQUEST_AGE``.
    """

    def __init__(self, target_age_s: float = DEFAULT_TARGET_AGE_S, ingress: str = "Ingress") -> None:
        if not (isinstance(target_age_s, int | float) and math.isfinite(target_age_s) and target_age_s > 0):
            raise ValueError(f"GraphDelayPolicy: target_age_s must be a number > 0, got {target_age_s!r}")
        self.target_age_s = float(target_age_s)
        self.ingress = ingress

    def __call__(self, contexts: Mapping[Any, Any]) -> tuple[dict[Any, float], dict[Any, dict[str, Any]]]:
        """Serve's app-level policy call: ``{deployment id: AutoscalingContext}`` -> (desired replicas, state)."""
        ingress = next((c for c in contexts.values() if c.deployment_name == self.ingress), None)
        ages = (ingress.aggregated_metrics or {}).get(OLDEST_REQUEST_AGE, {}) if ingress is not None else {}
        factor = scale_factor(ages, self.target_age_s)
        decisions: dict[Any, float] = {}
        for deployment_id, ctx in contexts.items():
            current = ctx.current_num_replicas or ctx.target_num_replicas
            decisions[deployment_id] = ctx.target_num_replicas if factor is None else current * factor
        return decisions, {deployment_id: {} for deployment_id in contexts}
