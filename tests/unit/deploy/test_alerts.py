"""deploy/prometheus/ checked by Debian's promtool (installed with apt-get when missing): the scrape config, the
alert rules and their unit tests (alerts_test.yml: every alert fires when it should and stays quiet when it should),
and the KubeRay job against deploy/rayservice.yaml. The rules run against a real Prometheus and the running service
in tests/integration/test_prometheus.py."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve.runtime import metrics
from serve.runtime.settings import Settings
from tests.prometheus_tools import promtool
from tests.unit.test_docs import OPERATIONS, first_table, unquote

pytestmark = pytest.mark.timeout(1800)  # a hang guard that covers installing the prometheus package (apt-get)
REPO = Path(__file__).resolve().parents[3]
PROMETHEUS = REPO / "deploy" / "prometheus"
CONFIG, KUBERAY = PROMETHEUS / "prometheus.yml", PROMETHEUS / "kuberay.yml"
ALERTS, ALERTS_TEST = PROMETHEUS / "alerts.yml", PROMETHEUS / "alerts_test.yml"
RAYSERVICE = REPO / "deploy" / "rayservice.yaml"


def run_promtool(*args: str | Path) -> str:
    done = subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(map(str, args))} failed:\n{output}"
    return output


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> dict[str, dict[str, Any]]:
    rules = [rule for group in load(ALERTS)["groups"] for rule in group["rules"]]
    names = [rule["alert"] for rule in rules]
    assert len(names) >= 6 and len(names) == len(set(names)), f"alert names must be unique: {names}"
    return {rule["alert"]: rule for rule in rules}


def test_scrape_config_and_its_rules_are_valid() -> None:
    output = run_promtool("check", "config", CONFIG)
    assert "1 rule files found" in output, output
    config = load(CONFIG)
    assert [(PROMETHEUS / name).resolve() for name in config["rule_files"]] == [ALERTS]
    local = next(job for job in config["scrape_configs"] if job["job_name"] == "emotion-local")
    port = Settings.model_fields["metrics_export_port"].default
    assert local["static_configs"] == [{"targets": [f"127.0.0.1:{port}"]}], "the local job scrapes the default port"


def test_kuberay_job_is_valid_and_matches_the_rayservice(tmp_path: Path) -> None:
    """Debian's promtool has no Kubernetes discovery, so the job is checked with it swapped for a static target;
    its relabelling must keep the pods of deploy/rayservice.yaml, on the port Ray exports metrics from."""
    jobs = load(KUBERAY)["scrape_configs"]
    all_jobs = [job["job_name"] for job in load(CONFIG)["scrape_configs"] + jobs]
    assert sorted(all_jobs) == ["emotion-local", "kuberay", "ray"]
    checkable = [{k: v for k, v in job.items() if k != "kubernetes_sd_configs"} for job in jobs]
    for job in checkable:
        job["static_configs"] = [{"targets": ["127.0.0.1:8080"]}]
    derived = tmp_path / "prometheus.yml"
    derived.write_text(yaml.safe_dump({"scrape_configs": checkable}))
    run_promtool("check", "config", derived)

    (kuberay,) = jobs
    keep = {rule["source_labels"][0]: rule["regex"] for rule in kuberay["relabel_configs"] if rule["action"] == "keep"}
    service = load(RAYSERVICE)
    # KubeRay names the RayCluster of a RayService `<name>-<suffix>` and labels its pods ray.io/cluster with it.
    assert re.fullmatch(keep["__meta_kubernetes_pod_label_ray_io_cluster"], service["metadata"]["name"] + "-x7k2p")
    cluster = service["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        (container,) = group["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        named = [name for name in ports if re.fullmatch(keep["__meta_kubernetes_pod_container_port_name"], name)]
        assert named == ["metrics"], f"{container['name']}: ports {ports}"
        assert str(ports["metrics"]) == group["rayStartParams"]["metrics-export-port"]


def test_alert_rules_are_valid() -> None:
    assert f"SUCCESS: {len(alert_rules())} rules found" in run_promtool("check", "rules", ALERTS)


def test_alert_unit_tests_pass() -> None:
    assert "SUCCESS" in run_promtool("test", "rules", ALERTS_TEST)


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """promtool only checks the alerts a test names: each alert needs a case where it fires and one where the
    input looks close to it (a burst, a neighbour series) and it stays quiet."""
    spec = load(ALERTS_TEST)
    assert [(PROMETHEUS / name).resolve() for name in spec["rule_files"]] == [ALERTS]
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in spec["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = set(alert_rules())
    assert firing == names, f"never tested firing: {sorted(names - firing)}; unknown: {sorted(firing - names)}"
    assert quiet == names, f"never tested quiet: {sorted(names - quiet)}; unknown: {sorted(quiet - names)}"


def test_alerts_use_only_metrics_that_exist() -> None:
    """A misspelt metric name makes an alert that can never fire; the service's names come from EXPORTED_NAMES."""
    exported = set()
    for name in metrics.EXPORTED_NAMES:
        base = name.removesuffix("_bucket")
        exported |= {name} if base == name else {base + s for s in ("_bucket", "_sum", "_count")}
    used = {m for rule in alert_rules().values() for m in re.findall(r"\bray_emotion_[a-z_]+", rule["expr"])}
    assert used and used <= exported, f"not exported: {sorted(used - exported)}"
    serve_used = {m for rule in alert_rules().values() for m in re.findall(r"\bray_serve_[a-z_]+", rule["expr"])}
    assert serve_used, "the replica and readiness alerts read Serve's own series"


def test_rules_carry_a_severity_a_summary_and_a_description() -> None:
    for name, rule in alert_rules().items():
        assert rule["labels"]["severity"] in {"page", "ticket"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_operations_doc_lists_every_alert() -> None:
    rows = first_table(OPERATIONS.read_text(), "Alerts", ["Alert", "Fires when", "What to do"])
    documented = [unquote(row["Alert"]) for row in rows]
    assert sorted(documented) == sorted(alert_rules()), f"docs/operations.md#alerts lists {documented}"
