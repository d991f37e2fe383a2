"""GraphDelayPolicy with fake autoscaling contexts (Serve's AutoscalingContext has many more fields; the policy
reads only these)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from serve.runtime.autoscaling import OLDEST_REQUEST_AGE, GraphDelayPolicy, scale_factor


@dataclass
class Context:
    deployment_name: str
    current_num_replicas: int
    target_num_replicas: int
    aggregated_metrics: dict[str, dict[str, float]] | None = field(default_factory=dict)


def graph(ages: dict[str, float] | None, replicas: tuple[int, int, int] = (1, 1, 2)) -> dict[str, Any]:
    metrics = None if ages is None else {OLDEST_REQUEST_AGE: ages}
    return {
        "Ingress": Context("Ingress", replicas[0], replicas[0], metrics),
        "Preprocessor": Context("Preprocessor", replicas[1], replicas[1]),
        "EmotionModel": Context("EmotionModel", replicas[2], replicas[2]),
    }


def test_scale_factor_is_the_mean_age_over_the_target() -> None:
    assert scale_factor({"r1": 0.5, "r2": 0.3}, 0.25) == pytest.approx(1.6)
    assert scale_factor({"r1": float("nan"), "r2": 0.5}, 0.25) == pytest.approx(2.0)  # a broken report is ignored
    assert scale_factor({}, 0.25) is None


def test_every_deployment_scales_by_the_ingress_factor() -> None:
    decisions, state = GraphDelayPolicy(target_age_s=0.25)(graph({"r1": 0.75, "r2": 0.75}))
    assert decisions == {"Ingress": pytest.approx(3.0), "Preprocessor": pytest.approx(3.0),
                         "EmotionModel": pytest.approx(6.0)}  # fmt: skip
    assert state == {"Ingress": {}, "Preprocessor": {}, "EmotionModel": {}}


def test_a_fast_graph_asks_for_fewer_replicas() -> None:
    decisions, _ = GraphDelayPolicy(target_age_s=0.25)(graph({"r1": 0.05}, replicas=(2, 2, 2)))
    assert all(v == pytest.approx(0.4) for v in decisions.values())  # Ray clamps to min_replicas, after its delay


@pytest.mark.parametrize("ages", [None, {}], ids=["no metrics", "no report yet"])
def test_without_a_report_the_targets_are_held(ages: dict[str, float] | None) -> None:
    decisions, _ = GraphDelayPolicy()(graph(ages, replicas=(2, 1, 2)))
    assert decisions == {"Ingress": 2, "Preprocessor": 1, "EmotionModel": 2}


def test_the_target_must_be_positive() -> None:
    for bad in (0, -1.0, float("inf"), "0.25"):
        with pytest.raises(ValueError, match="target_age_s"):
            GraphDelayPolicy(target_age_s=bad)  # type: ignore[arg-type]
