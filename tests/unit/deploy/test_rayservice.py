"""deploy/rayservice.yaml is a valid KubeRay RayService that runs exactly deploy/serve_config.yaml on the image
deploy/image/build.sh builds.

* The manifest against KubeRay's own CRD schema (../shared/schemas/kuberay, skipped when absent): the structural
  schema is translated to JSON Schema (int-or-string, nullable, preserve-unknown-fields; unknown fields rejected
  as `kubectl apply` does with strict field validation; int32/int64 ranges; list-map keys unique). Only the CEL
  rules (x-kubernetes-validations) are not evaluated.
* serveConfigV2 against Ray's ServeDeploySchema (serve.runtime.serve_config.load_serve_config, as `emotion serve`
  reads the file), and equal to deploy/serve_config.yaml except http_options.host and the in-cluster scaling.
* Every image is emotion-service:<pyproject version>, and the manifest is exactly what `make rayservice` writes.

Each check also runs on a deliberately broken copy and must fail there, so none can pass vacuously.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import tomllib
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema  # a requirement of ray itself (ray[serve] pulls it into every install)
import pytest
import yaml
from packaging.requirements import Requirement
from pydantic import ValidationError

from models.data import default_data_dir
from serve.runtime.serve_config import ServeConfigError, load_serve_config

REPO = Path(__file__).resolve().parents[3]
MANIFEST = REPO / "deploy" / "rayservice.yaml"
SERVE_CONFIG = REPO / "deploy" / "serve_config.yaml"
PYPROJECT = REPO / "pyproject.toml"
IN_CLUSTER_HOST = "0.0.0.0"
LOCAL_HOST = "127.0.0.1"

Document = dict[str, Any]


def load_render() -> ModuleType:
    """deploy/render_rayservice.py (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location("render_rayservice", REPO / "deploy" / "render_rayservice.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_rayservice = load_render()


def manifest() -> Document:
    document: Document = yaml.safe_load(MANIFEST.read_text())
    return document


def project_version() -> str:
    version: str = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    return version


# --- KubeRay's CRD schema -------------------------------------------------------------------------------------

def crd_path() -> Path:
    """The CRD beside the shared data: ``$EMOTION_DATA_DIR/../schemas`` (default ``../shared/schemas``)."""
    return default_data_dir().parent / "schemas" / "kuberay" / "ray.io_rayservices.yaml"


@pytest.fixture(scope="module")
def crd_schema() -> Document:
    path = crd_path()
    if not path.is_file():
        pytest.skip(f"KubeRay's RayService CRD not found at {path} (the shared folder beside the data: set "
                    "EMOTION_DATA_DIR to <shared>/data, with the CRD under <shared>/schemas/kuberay/)")  # fmt: skip
    crd = yaml.safe_load(path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema: Document = version["schema"]["openAPIV3Schema"]
    return schema


# Keywords that mean the same in a Kubernetes structural schema and in JSON Schema.
SAME_KEYWORDS = frozenset({
    "type", "required", "enum", "pattern", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "multipleOf", "minLength", "maxLength", "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties",
})  # fmt: skip
INTEGER_FORMATS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def to_json_schema(node: Document) -> Document:
    """A Kubernetes structural schema node as JSON Schema.

    ``default``, ``description`` and CEL rules are dropped; ``x-kubernetes-list-type`` / ``-list-map-keys`` are
    checked by ``list_key_problems`` instead. An object with ``properties`` and neither ``additionalProperties``
    nor ``x-kubernetes-preserve-unknown-fields`` rejects other fields: the API server prunes them, and
    ``kubectl apply`` (strict field validation, its default) refuses them, so a misspelt field is an error.
    """
    out: Document = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: to_json_schema(child) for name, child in value.items()}
        elif key == "items":
            out[key] = to_json_schema(value)
        elif key == "additionalProperties":
            out[key] = to_json_schema(value) if isinstance(value, dict) else value
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [to_json_schema(child) for child in value]
        elif key == "not":
            out[key] = to_json_schema(value)
        elif key in SAME_KEYWORDS:
            out[key] = value
        elif key == "format" and value in INTEGER_FORMATS:
            low, high = INTEGER_FORMATS[value]
            out.setdefault("minimum", low)
            out.setdefault("maximum", high)
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    open_object = node.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in node
    if node.get("type") == "object" and "properties" in node and not open_object:
        out["additionalProperties"] = False
    return out


def list_key_problems(schema: Document, value: Any, where: str = "") -> Iterator[str]:
    """Duplicates in ``x-kubernetes-list-type: map`` (by the list-map keys, defaults applied) and ``set`` lists."""
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, child in value.items():
            child_schema = properties.get(key, extra if isinstance(extra, dict) else None)
            if child_schema is not None:
                yield from list_key_problems(child_schema, child, f"{where}.{key}")
    elif isinstance(value, list):
        items = schema.get("items", {})
        list_type = schema.get("x-kubernetes-list-type")
        if list_type == "map":
            keys = schema["x-kubernetes-list-map-keys"]
            defaults = {k: items.get("properties", {}).get(k, {}).get("default") for k in keys}
            seen: set[tuple[Any, ...]] = set()
            for i, item in enumerate(value):
                key = tuple(item.get(k, defaults[k]) for k in keys)
                if key in seen:
                    yield f"{where}[{i}]: duplicate {dict(zip(keys, key, strict=True))} in a list keyed by {keys}"
                seen.add(key)
        elif list_type == "set" and len({yaml.safe_dump(item) for item in value}) != len(value):
            yield f"{where}: duplicate items in a set"
        for i, item in enumerate(value):
            yield from list_key_problems(items, item, f"{where}[{i}]")


def crd_problems(crd: Document, document: Document) -> list[str]:
    schema = to_json_schema(crd)
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    problems = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
    problems += list(list_key_problems(crd, document))
    if document.get("apiVersion") != "ray.io/v1" or document.get("kind") != "RayService":
        problems.append(f"not a ray.io/v1 RayService: {document.get('apiVersion')} {document.get('kind')}")
    return problems


def test_the_manifest_is_a_valid_rayservice(crd_schema: Document) -> None:
    assert crd_problems(crd_schema, manifest()) == []


def head_container(doc: Document) -> Document:
    container: Document = doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    return container


def worker_group(doc: Document) -> Document:
    group: Document = doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    return group


BROKEN_MANIFESTS: dict[str, tuple[Callable[[Document], None], str]] = {
    # name: (mutation, a fragment of the expected problem)
    "rayStartParams value not a string": (
        lambda d: d["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
        "rayStartParams.num-cpus: 0 is not of type 'string'",
    ),
    "replicas not an integer": (
        lambda d: worker_group(d).update(replicas="one"), "replicas: 'one' is not of type 'integer'"
    ),
    "containerPort beyond int32": (
        lambda d: head_container(d)["ports"][0].update(containerPort=2**31), "containerPort: 2147483648 is greater"
    ),
    "cpu not a quantity": (lambda d: head_container(d)["resources"]["limits"].update(cpu="two"), "limits.cpu"),
    "misspelt field": (
        lambda d: d["spec"]["rayClusterConfig"].update(enableInTreeAutoscaler=True),
        "'enableInTreeAutoscaler' was unexpected",
    ),
    "required field missing": (lambda d: worker_group(d).pop("groupName"), "'groupName' is a required property"),
    "serveConfigV2 not a string": (lambda d: d["spec"].update(serveConfigV2={"applications": []}), "serveConfigV2"),
    "duplicate env name": (
        lambda d: head_container(d)["env"].append(dict(head_container(d)["env"][0])), "duplicate {'name': 'EMOTION_"
    ),
    "duplicate port (protocol defaulted)": (
        lambda d: head_container(d)["ports"].append({"containerPort": 8000, "protocol": "TCP", "name": "again"}),
        "duplicate {'containerPort': 8000, 'protocol': 'TCP'}",
    ),
}


@pytest.mark.parametrize("name", sorted(BROKEN_MANIFESTS))
def test_the_crd_check_rejects_a_broken_copy(crd_schema: Document, name: str) -> None:
    mutate, expected = BROKEN_MANIFESTS[name]
    broken = copy.deepcopy(manifest())
    mutate(broken)
    problems = crd_problems(crd_schema, broken)
    assert any(expected in p for p in problems), f"{name}: expected a problem with {expected!r}, got {problems}"


def test_the_int_or_string_translation_accepts_both_and_nothing_else() -> None:
    int_or_string = [{"type": "integer"}, {"type": "string"}]
    cpu = {"anyOf": int_or_string, "pattern": "^[0-9]+m?$", "x-kubernetes-int-or-string": True}
    quantity = {"type": "object", "properties": {"cpu": cpu}}
    validator = jsonschema.Draft202012Validator(to_json_schema(quantity))
    assert validator.is_valid({"cpu": 2}) and validator.is_valid({"cpu": "500m"})
    assert not validator.is_valid({"cpu": "two"}) and not validator.is_valid({"cpu": 1.5})
    assert not validator.is_valid({"cpu": 2, "memory": "1Gi"})  # unknown field
    preserved = to_json_schema({"type": "object", "properties": {}, "x-kubernetes-preserve-unknown-fields": True})
    assert jsonschema.Draft202012Validator(preserved).is_valid({"anything": {"goes": 1}})


# --- serveConfigV2: Ray's ServeDeploySchema, and no drift from deploy/serve_config.yaml ----------------------------

def embedded_config(doc: Document, tmp_path: Path) -> Document:
    """serveConfigV2 validated the way `emotion serve` validates the file (Ray's ServeDeploySchema), plus each
    deployment's autoscaling_config with Ray's AutoscalingConfig (the schema takes it as a plain dict; Serve
    validates it only when it applies the deployment)."""
    from ray.serve.config import AutoscalingConfig

    path = tmp_path / "serveConfigV2.yaml"
    path.write_text(doc["spec"]["serveConfigV2"])
    config = load_serve_config(path)
    for deployment in config.app.get("deployments", []):
        if deployment.get("autoscaling_config") is not None:
            AutoscalingConfig(**deployment["autoscaling_config"])  # pydantic.ValidationError if malformed
    return config.document


def in_cluster(shipped: Document, max_pods: int) -> Document:
    """deploy/serve_config.yaml as the manifest must run it, as data: num_replicas -> the in-cluster autoscaling."""
    expected = copy.deepcopy(shipped)
    expected["applications"][0]["autoscaling_policy"] = yaml.safe_load(render_rayservice.IN_CLUSTER_POLICY)
    for d in expected["applications"][0]["deployments"]:
        d.pop("num_replicas", None)
        d["autoscaling_config"] = render_rayservice.in_cluster_autoscaling(d["name"], max_pods)
        d["max_replicas_per_node"] = 1
    return expected


def drift(embedded: Document, shipped: Document, max_pods: int | None = None) -> list[str]:
    """How serveConfigV2 differs from deploy/serve_config.yaml beyond the documented http_options.host and the
    in-cluster scaling (min 2 .. the worker group's maxReplicas per deployment)."""
    shipped = in_cluster(shipped, worker_group(manifest())["maxReplicas"] if max_pods is None else max_pods)
    problems = []
    if embedded.get("http_options", {}).get("host") != IN_CLUSTER_HOST:
        problems.append(f"serveConfigV2 http_options.host is not {IN_CLUSTER_HOST}")
    if shipped.get("http_options", {}).get("host") != LOCAL_HOST:
        problems.append(f"deploy/serve_config.yaml http_options.host is not {LOCAL_HOST}")
    same_host = copy.deepcopy(embedded)
    same_host.setdefault("http_options", {})["host"] = shipped.get("http_options", {}).get("host")
    for key in sorted(set(same_host) | set(shipped)):
        if same_host.get(key) != shipped.get(key):
            problems.append(f"{key}: serveConfigV2 has {same_host.get(key)!r}, serve_config.yaml {shipped.get(key)!r}")
    return problems


def test_serve_config_v2_is_a_valid_serve_config_equal_to_the_launch_file(tmp_path: Path) -> None:
    embedded = embedded_config(manifest(), tmp_path)
    assert embedded["applications"][0]["import_path"] == "serve.app:build_app"
    assert drift(embedded, load_serve_config(SERVE_CONFIG).document) == []


def with_serve_config(doc: Document, edit: Callable[[Document], None]) -> Document:
    """A copy of the manifest whose serveConfigV2 is ``edit``ed (as YAML data, whatever the file's numbers are)."""
    changed = copy.deepcopy(doc)
    config = yaml.safe_load(changed["spec"]["serveConfigV2"])
    edit(config)
    changed["spec"]["serveConfigV2"] = yaml.safe_dump(config, sort_keys=False)
    return changed


def deployment(config: Document, name: str) -> Document:
    (found,) = [d for d in config["applications"][0]["deployments"] if d["name"] == name]
    return found


def wrong_max_ongoing_requests(config: Document) -> None:
    deployment(config, "Ingress")["max_ongoing_requests"] = "lots"


def wrong_max_replicas(config: Document) -> None:
    model = deployment(config, "EmotionModel")
    model.pop("num_replicas", None)
    model["autoscaling_config"] = {"min_replicas": 1, "max_replicas": "lots"}


@pytest.mark.parametrize(
    ("edit", "error", "field"),
    [(wrong_max_ongoing_requests, ServeConfigError, "max_ongoing_requests"),
     (wrong_max_replicas, ValidationError, "max_replicas")],
)  # fmt: skip
def test_a_serve_config_v2_field_of_the_wrong_type_is_rejected(
    tmp_path: Path, edit: Callable[[Document], None], error: type, field: str
) -> None:
    assert embedded_config(with_serve_config(manifest(), lambda c: None), tmp_path)  # the round trip alone is valid
    with pytest.raises(error, match=field):
        embedded_config(with_serve_config(manifest(), edit), tmp_path)


def more_batching(config: Document) -> None:
    deployment(config, "EmotionModel")["user_config"]["max_batch_size"] += 1


def test_drift_from_the_launch_file_is_detected(tmp_path: Path) -> None:
    shipped = load_serve_config(SERVE_CONFIG).document
    problems = drift(embedded_config(with_serve_config(manifest(), more_batching), tmp_path), shipped)
    assert len(problems) == 1 and problems[0].startswith("applications:"), problems
    loopback = manifest()
    loopback["spec"]["serveConfigV2"] = loopback["spec"]["serveConfigV2"].replace(f"host: {IN_CLUSTER_HOST}",
                                                                                  f"host: {LOCAL_HOST}", 1)  # fmt: skip
    assert drift(embedded_config(loopback, tmp_path), shipped) == [
        f"serveConfigV2 http_options.host is not {IN_CLUSTER_HOST}"
    ]


# --- the image and Ray versions, and `make rayservice` -----------------------------------------------------------

def images(doc: Document) -> list[str]:
    cluster = doc["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster.get("workerGroupSpecs", [])]
    return [c["image"] for t in templates for c in t["spec"]["containers"]]


def test_every_image_is_the_pyproject_version_tag() -> None:
    expected = f"emotion-service:{project_version()}"
    assert render_rayservice.image_tag(project_version()) == expected  # the tag deploy/image/build.sh builds
    found = images(manifest())
    assert len(found) == 2 and set(found) == {expected}, found
    stale = manifest()
    worker_group(stale)["template"]["spec"]["containers"][0]["image"] = "emotion-service:0.0.0"
    assert set(images(stale)) != {expected}


def test_ray_version_matches_the_pinned_and_installed_ray() -> None:
    pinned = [Requirement(r) for r in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]]
    (ray,) = [r for r in pinned if r.name == "ray"]
    assert str(ray.specifier) == f"=={manifest()['spec']['rayClusterConfig']['rayVersion']}"
    assert metadata.version("ray") == manifest()["spec"]["rayClusterConfig"]["rayVersion"]


def test_the_manifest_is_what_make_rayservice_writes() -> None:
    text = MANIFEST.read_text()
    config = SERVE_CONFIG.read_text()
    assert render_rayservice.render(text, config, project_version()) == text, "run `make rayservice`"
    # ... and the renderer really rewrites a stale image tag and a drifted serveConfigV2:
    stale = text.replace(f"emotion-service:{project_version()}", "emotion-service:0.0.0")
    assert stale != text and render_rayservice.render(stale, config, project_version()) == text
    drifted = re.sub(r"(max_batch_size: )(\d+)", lambda m: f"{m[1]}{int(m[2]) + 1}", text, count=1)
    assert drifted != text and render_rayservice.render(drifted, config, project_version()) == text
    with pytest.raises(ValueError, match="host"):
        render_rayservice.render(text, config.replace("host: 127.0.0.1", "host: 10.0.0.1"), project_version())


def test_in_cluster_every_deployment_autoscales_two_to_the_worker_pods_one_per_pod(tmp_path: Path) -> None:
    embedded = embedded_config(manifest(), tmp_path)
    policy = embedded["applications"][0]["autoscaling_policy"]
    assert policy["policy_function"] == "serve.runtime.autoscaling:GraphDelayPolicy"
    from serve.runtime.autoscaling import GraphDelayPolicy  # the controller imports the same path

    assert GraphDelayPolicy(**policy["policy_kwargs"]).target_age_s == 0.25
    group = worker_group(manifest())
    assert group["minReplicas"] >= render_rayservice.IN_CLUSTER_MIN_REPLICAS  # room for min 2, one per pod
    for d in embedded["applications"][0]["deployments"]:
        assert "num_replicas" not in d and d["max_replicas_per_node"] == 1
        assert d["autoscaling_config"]["min_replicas"] == 2
        assert d["autoscaling_config"]["max_replicas"] == group["maxReplicas"]
    # The renderer refuses a Serve config whose scaling it cannot find, rather than ship it unscaled:
    config = SERVE_CONFIG.read_text()
    without = re.sub(r"\n\s*num_replicas: 1[^\n]*", "", config, count=1)
    with pytest.raises(ValueError, match="num_replicas"):
        render_rayservice.render(MANIFEST.read_text(), without, project_version())
