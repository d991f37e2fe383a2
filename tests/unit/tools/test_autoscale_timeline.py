"""tools.autoscale_timeline's pure parts: the config edit, the open-loop schedule, the metrics parse, the rows."""

from __future__ import annotations

from typing import Any

import pytest

from tools.autoscale_timeline import (
    CANDIDATES,
    DEPLOYMENTS,
    HEALTHY,
    TARGET,
    TOTAL_REQUESTS,
    Answer,
    Sample,
    autoscaled,
    p99,
    parse_metrics,
    per_second,
    schedule,
    summarize,
)


def shipped_like() -> dict[str, Any]:
    deployments = [{"name": d, "num_replicas": 1, "max_ongoing_requests": 8} for d in DEPLOYMENTS]
    return {"applications": [{"name": "emotion", "deployments": deployments}]}


def test_autoscaled_replaces_num_replicas_and_spreads_over_nodes() -> None:
    config = shipped_like()
    autoscaled(config, CANDIDATES["tuned"])
    for d in config["applications"][0]["deployments"]:
        assert "num_replicas" not in d  # Serve refuses both
        assert d["max_replicas_per_node"] == 1
        assert d["autoscaling_config"]["min_replicas"] == 1 and d["autoscaling_config"]["max_replicas"] == 2
        assert d["max_ongoing_requests"] == 8  # everything else kept
    by_name = {d["name"]: d["autoscaling_config"] for d in config["applications"][0]["deployments"]}
    assert by_name["EmotionModel"]["target_ongoing_requests"] == 1


def test_autoscaled_leaves_deployments_without_a_candidate_alone() -> None:
    config = shipped_like()
    autoscaled(config, {"EmotionModel": {}})
    by_name = {d["name"]: d for d in config["applications"][0]["deployments"]}
    assert by_name["Ingress"]["num_replicas"] == 1 and "autoscaling_config" not in by_name["Ingress"]
    assert by_name["EmotionModel"]["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 2}


def test_the_queue_delay_candidate_deploys_a_valid_app_level_policy() -> None:
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from serve.runtime.settings import DEFAULT_SERVE_CONFIG
    from tools.autoscale_timeline import APP_POLICIES

    config = yaml.safe_load(DEFAULT_SERVE_CONFIG.read_text())  # the shipped file, as the tool deploys it
    autoscaled(config, CANDIDATES["queue-delay"], app_policy=APP_POLICIES["queue-delay"])
    app = ServeDeploySchema.model_validate(config).applications[0]  # what `serve deploy` checks first
    assert app.autoscaling_policy is not None
    assert app.autoscaling_policy["policy_function"] == "serve.runtime.autoscaling:GraphDelayPolicy"
    assert all(d.autoscaling_config for d in app.deployments)  # Serve needs one per deployment under an app policy


def test_schedule_sends_rate_times_step_evenly_and_skips_idle_steps() -> None:
    times = schedule([2, 0, 4], step_s=1.0)
    assert times == [0.0, 0.5, 2.0, 2.25, 2.5, 2.75]
    assert len(schedule([10, 30], step_s=30.0)) == 1200


def test_parse_metrics_sums_per_deployment_over_nodes_and_ignores_other_series() -> None:
    head = "\n".join([
        "# HELP ray_serve_deployment_replica_healthy Tracks healthy replicas.",
        f'{HEALTHY}{{application="emotion",deployment="Ingress",SessionName="s"}} 2.0',
        f'{TARGET}{{application="emotion",deployment="Ingress"}} 2.0',
        f'{TOTAL_REQUESTS}{{application="emotion",deployment="EmotionModel"}} 1.5',
        f'{HEALTHY}_other{{deployment="Ingress"}} 9.0',
        f'{HEALTHY}{{application="emotion"}} 7.0',  # no deployment label
    ])  # fmt: skip
    worker = f'{HEALTHY}{{deployment="Ingress",replica="r2"}} 1.0\n{HEALTHY}{{deployment="X"}} NaN'
    out = parse_metrics([head, worker])
    assert out[HEALTHY] == {"Ingress": 3.0}
    assert out[TARGET] == {"Ingress": 2.0}
    assert out[TOTAL_REQUESTS] == {"EmotionModel": 1.5}


def test_p99_is_nearest_rank() -> None:
    assert p99([]) is None
    assert p99([5.0]) == 5.0
    assert p99([float(i) for i in range(1, 101)]) == 99.0


def test_per_second_buckets_by_answer_time_and_repeats_the_last_sample() -> None:
    answers = [Answer(0.1, 0.2, 200), Answer(0.5, 1.5, 200), Answer(0.6, 1.6, 503), Answer(1.0, 1.9, 0)]
    samples = [Sample(0.3, {HEALTHY: {"Ingress": 1.0}, TARGET: {"Ingress": 2.0}}, {"Ingress": 1})]
    rows = per_second(answers, [0.1, 0.5, 0.6, 1.0, 5.0], samples, seconds=3)
    assert [r["offered"] for r in rows] == [3, 1, 0]
    assert [r["ok"] for r in rows] == [1, 1, 0]
    assert [r["shed_503"] for r in rows] == [0, 1, 0] and [r["errors"] for r in rows] == [0, 1, 0]
    assert rows[0]["p99_ms"] == pytest.approx(100.0) and rows[1]["p99_ms"] == pytest.approx(1000.0)
    assert rows[2]["p99_ms"] is None
    assert [r["healthy_Ingress"] for r in rows] == [1.0, 1.0, 1.0]  # a gauge holds until the next scrape
    assert rows[0]["target_Ingress"] == 2.0 and rows[0]["running_api_Ingress"] == 1
    assert rows[0]["healthy_EmotionModel"] is None  # not exported (yet): no guess


def test_summarize_finds_the_scale_up_and_down() -> None:
    rows = []
    for t in range(6):
        healthy = 2.0 if 2 <= t < 4 else 1.0
        row: dict[str, Any] = {"t": t, "offered": 10, "ok": 10, "p99_ms": 20.0 + t, "shed_503": 0, "errors": 0}
        for d in DEPLOYMENTS:
            row |= {f"healthy_{d}": healthy, f"target_{d}": 2.0 if 1 <= t < 4 else 1.0}
        rows.append(row)
    out = summarize(rows, rates=[10, 10], step_s=3)
    assert out["scaling"]["Ingress"] == {"target_above_1_at_s": 1, "healthy_above_1_at_s": 2,
                                         "healthy_back_to_1_at_s": 4}  # fmt: skip
    assert [s["ok_per_s"] for s in out["steps"]] == [10.0, 10.0]
    assert out["steps"][0]["worst_p99_ms"] == 22.0 and out["steps"][1]["healthy"]["Ingress"] == 2.0
