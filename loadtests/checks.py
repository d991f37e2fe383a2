"""Response validators shared by the locust scenarios and the benchmark client.

Each raises ``InvalidResponse`` naming what is wrong; a wrong answer counts as a failure, like an error status.
Pure functions over parsed JSON: no locust, no network.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

PROB_TOLERANCE = 1e-3


class InvalidResponse(ValueError):
    """A 2xx response whose body does not match the API contract."""


def check_prediction(item: Any, labels: Collection[str], where: str = "response") -> str | None:
    """``{"label", "probabilities", "readable"}``: probabilities cover every answer label and sum to ~1; a readable
    face's label is the most probable one, an unreadable face's label is null with a reason. Returns the label."""
    if not isinstance(item, Mapping):
        raise InvalidResponse(f"{where}: expected an object, got {type(item).__name__}")
    label, probs = item.get("label"), item.get("probabilities")
    if not isinstance(probs, Mapping) or set(probs) != set(labels):
        raise InvalidResponse(f"{where}: probabilities must have exactly the keys {sorted(labels)}, got {probs!r}")
    values = [float(v) for v in probs.values()]
    if any(not 0.0 <= v <= 1.0 for v in values) or not math.isclose(sum(values), 1.0, abs_tol=PROB_TOLERANCE):
        raise InvalidResponse(f"{where}: probabilities {values} are not a distribution (sum {sum(values):.4f})")
    if item.get("readable", True) is False:
        # The service claims no emotion for a face it cannot read (docs/api.md), but it says why.
        if label is not None or not item.get("unreadable_reason"):
            raise InvalidResponse(f"{where}: an unreadable face needs label null and a reason, got {dict(item)}")
        return None
    if label not in labels:
        raise InvalidResponse(f"{where}: label {label!r} is not one of {sorted(labels)}")
    if probs[label] < max(values) - PROB_TOLERANCE:
        raise InvalidResponse(f"{where}: label {label!r} is not the most probable class in {dict(probs)}")
    return str(label)


def check_classify(body: Any, labels: Collection[str]) -> str | None:
    """POST /v1/classify: a prediction plus ``request_id`` and ``model``; returns the label (None: unreadable)."""
    label = check_prediction(body, labels)
    if not body.get("request_id"):
        raise InvalidResponse("response has no request_id")
    model = body.get("model")
    if not isinstance(model, Mapping) or not {"name", "version"} <= set(model):
        raise InvalidResponse(f"response model must be {{name, version}}, got {model!r}")
    return label


def check_batch(body: Any, count: int, labels: Collection[str]) -> list[str | None]:
    """POST /v1/classify/batch: ``count`` results, in request order, each a prediction (errors fail the check)."""
    results = body.get("results") if isinstance(body, Mapping) else None
    if not isinstance(results, list) or len(results) != count:
        got = len(results) if isinstance(results, list) else results
        raise InvalidResponse(f"expected {count} results, got {got}")
    out = []
    for i, item in enumerate(results):
        if not isinstance(item, Mapping) or item.get("index") != i:
            raise InvalidResponse(f"results[{i}] has index {item.get('index') if isinstance(item, Mapping) else item}")
        if "error" in item:
            raise InvalidResponse(f"results[{i}] is an error for a valid image: {item['error']!r}")
        out.append(check_prediction(item, labels, f"results[{i}]"))
    return out


def check_faces(faces: Any, labels: Collection[str], where: str = "response") -> int:
    """A list of detected faces, each with a box and a prediction; returns how many."""
    if not isinstance(faces, list):
        raise InvalidResponse(f"{where}: 'faces' must be a list, got {type(faces).__name__}")
    for i, face in enumerate(faces):
        check_prediction(face, labels, f"{where}.faces[{i}]")
        box = face.get("box")
        if not isinstance(box, (list, Mapping)) or len(box) != 4:
            raise InvalidResponse(f"{where}.faces[{i}]: box must have 4 values, got {box!r}")
    return len(faces)


def check_analyze(body: Any, labels: Collection[str]) -> int:
    """POST /v1/analyze: every face in the frame; returns the face count."""
    if not isinstance(body, Mapping):
        raise InvalidResponse("analyze response must be an object")
    return check_faces(body.get("faces"), labels)


def check_error(body: Any) -> str:
    """An error body ``{"error": {"code", "message"}, "request_id"}``; returns the code."""
    err = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(err, Mapping) or not err.get("code") or "message" not in err:
        raise InvalidResponse(f"error body must be {{error: {{code, message}}}}, got {body!r}")
    return str(err["code"])
