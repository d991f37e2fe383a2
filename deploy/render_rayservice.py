"""Regenerate deploy/rayservice.yaml from deploy/serve_config.yaml and pyproject.toml (``make rayservice``).

Two things in the manifest are derived, never edited by hand:

* ``serveConfigV2`` embeds deploy/serve_config.yaml, comments included, with two in-cluster differences:
  ``http_options.host`` (0.0.0.0: pods listen on all interfaces, a NetworkPolicy limits who reaches them), and
  scaling: each deployment's ``num_replicas`` becomes ``IN_CLUSTER_AUTOSCALING`` (min 2, max = the worker group's
  ``maxReplicas``, one replica of a deployment per pod), the values chosen in reports/autoscaling/README.md;
* every container's ``image:`` is ``emotion-service:<version of pyproject.toml>``, the tag deploy/image/build.sh
  builds, so a version bump cannot leave the manifest on an old image.

tests/unit/deploy/test_rayservice.py fails when the checked-in manifest differs from what this script writes.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
IMAGE_NAME = "emotion-service"
LOOPBACK_HOST = re.compile(r"host: 127\.0\.0\.1 .*")
IN_CLUSTER_HOST = "host: 0.0.0.0              # in-cluster: the K8s Service + NetworkPolicy are the boundary."
IMAGE_LINE = re.compile(rf"(image: ){re.escape(IMAGE_NAME)}:[^\s#]+")
DEPLOYMENT_NAME = re.compile(r"^\s*- name: (\w+)")
NUM_REPLICAS = re.compile(r"^(\s*)num_replicas: \d+\b.*$")
MAX_PODS = re.compile(r"^\s+maxReplicas: (\d+)\s*$", re.MULTILINE)

# In-cluster scaling (reports/autoscaling/README.md: step loads on a 2-node cluster). min_replicas 2: losing a pod
# or a replica leaves one of each serving. 10 s up / 120 s down: Ray's 30 s / 600 s reacted 38-83 s into a burst and
# never gave replicas back; 5 s / 60 s reacted in 7-11 s but leaves no margin against flapping. Targets: the
# ingress's coalescer keeps <= 2 calls in flight per ingress replica, so a downstream target of 2 never asks for a
# second replica and 1 scaled at 20 req/s; 1.5 sits between. Ingress 8: above light load's 1-2 ongoing, below the
# 40-200 of an overload. The max is the worker group's maxReplicas: one replica of each deployment per pod.
IN_CLUSTER_MIN_REPLICAS = 2
IN_CLUSTER_DELAYS = {"upscale_delay_s": 10, "downscale_delay_s": 120, "look_back_period_s": 10, "metrics_interval_s": 2}
IN_CLUSTER_TARGETS = {"Ingress": 8, "Preprocessor": 1.5, "EmotionModel": 1.5}
# The decision itself: GraphDelayPolicy (serve/runtime/autoscaling.py) scales the whole graph on the ingress's
# oldest-request age. Against Ray's per-deployment policy with the targets above, in the same step load
# (reports/autoscaling/README.md), it did not scale at 80 req/s, which one replica each served in full (Ray's policy
# did, and p99 rose), scaled all three deployments together 17 s into the overload, and gave them back together.
# The targets above stay as the fallback: delete this line from a copy and Ray's own policy applies them.
IN_CLUSTER_POLICY = "{policy_function: serve.runtime.autoscaling:GraphDelayPolicy, policy_kwargs: {target_age_s: 0.25}}"
IMPORT_PATH = re.compile(r"^(\s*)import_path: serve\.app:build_app\b.*$")


def project_version(pyproject: Path = REPO / "pyproject.toml") -> str:
    version: str = tomllib.loads(pyproject.read_text())["project"]["version"]
    return version


def image_tag(version: str) -> str:
    """The image deploy/image/build.sh builds for ``version`` and the manifest runs."""
    return f"{IMAGE_NAME}:{version}"


def in_cluster_autoscaling(deployment: str, max_replicas: int) -> dict[str, float]:
    """The ``autoscaling_config`` a deployment gets in the manifest."""
    return {"min_replicas": IN_CLUSTER_MIN_REPLICAS, "max_replicas": max_replicas,
            "target_ongoing_requests": IN_CLUSTER_TARGETS[deployment], **IN_CLUSTER_DELAYS}  # fmt: skip


def _flow(values: dict[str, float]) -> str:
    return "{" + ", ".join(f"{key}: {value:g}" for key, value in values.items()) + "}"


def scale_in_cluster(serve_config: str, max_replicas: int) -> str:
    """Each deployment's ``num_replicas:`` line -> its in-cluster ``autoscaling_config`` + ``max_replicas_per_node:
    1``, and the application's ``autoscaling_policy`` after its import path (the rest of the text, comments
    included, unchanged). Raises ValueError unless every deployment of
    ``IN_CLUSTER_TARGETS`` had exactly one such line."""
    lines, name, scaled, policies = [], None, [], 0
    for line in serve_config.splitlines():
        app = IMPORT_PATH.match(line)
        if app:
            lines += [line, f"{app.group(1)}autoscaling_policy: {IN_CLUSTER_POLICY}  # in-cluster"]
            policies += 1
            continue
        named = DEPLOYMENT_NAME.match(line)
        name = named.group(1) if named else name
        replicas = NUM_REPLICAS.match(line)
        if replicas and name in IN_CLUSTER_TARGETS:
            indent = replicas.group(1)
            scaling = _flow(in_cluster_autoscaling(name, max_replicas))
            lines += [f"{indent}autoscaling_config: {scaling}  # in-cluster: deploy/render_rayservice.py",
                      f"{indent}max_replicas_per_node: 1"]  # fmt: skip
            scaled.append(name)
            continue
        lines.append(line)
    if policies != 1:
        raise ValueError(f"expected one `import_path: serve.app:build_app` line to add the policy to, found {policies}")
    if sorted(scaled) != sorted(IN_CLUSTER_TARGETS):
        raise ValueError(f"expected one num_replicas line for each of {sorted(IN_CLUSTER_TARGETS)}, found {scaled}")
    return "\n".join(lines) + ("\n" if serve_config.endswith("\n") else "")


def render(manifest: str, serve_config: str, version: str) -> str:
    """``manifest`` with serveConfigV2 = ``serve_config`` (in-cluster host and scaling) and every image =
    ``image_tag(version)``.

    Raises:
        ValueError: the Serve config has no loopback ``host:`` line or no ``num_replicas`` line per deployment, or
            the manifest has no serveConfigV2 block followed by rayClusterConfig, no worker ``maxReplicas``, or no
            emotion-service image.
    """
    config, hosts = LOOPBACK_HOST.subn(IN_CLUSTER_HOST, serve_config, count=1)
    if hosts != 1:
        raise ValueError("the Serve config has no `host: 127.0.0.1 ...` line to replace with the in-cluster host")
    pods = MAX_PODS.search(manifest.partition("workerGroupSpecs:")[2])
    if pods is None:
        raise ValueError("the manifest's workerGroupSpecs has no `maxReplicas:`")
    config = scale_in_cluster(config, int(pods.group(1)))
    body = "\n".join(("      " + line) if line.strip() else "" for line in config.splitlines())
    head, marker, rest = manifest.partition("  serveConfigV2: |\n")
    _, cluster, tail = rest.partition("\n  rayClusterConfig:")
    if not marker or not cluster:
        raise ValueError("the manifest has no `  serveConfigV2: |` block followed by `  rayClusterConfig:`")
    tail, images = IMAGE_LINE.subn(rf"\g<1>{image_tag(version)}", tail)
    if not images:
        raise ValueError(f"the manifest's rayClusterConfig names no {IMAGE_NAME} image")
    return f"{head}  serveConfigV2: |\n{body}\n\n  rayClusterConfig:{tail}"


def main() -> None:
    path = HERE / "rayservice.yaml"
    manifest = path.read_text()
    rendered = render(manifest, (HERE / "serve_config.yaml").read_text(), project_version())
    if rendered != manifest:
        path.write_text(rendered)


if __name__ == "__main__":
    main()
