"""Nothing in serving assumes three classes: the real Serve graph on a 7-class model folder answers every route
with the model's 7 labels and exports predictions of every label.

The model is a tiny real ONNX network (built with onnx.helper) whose class is set by a face's mean grey level:
``logits_k = -SCALE * (mean(x) - centre_k)^2``, one centre per label, so a flat grey image of level ``GREYS[k]``
is classified as ``LABELS[k]``. Its contract is the shipped one's (48x48x1, ``(pixel/255 - 0.5)/0.5``) with the
FER2013 labels; every row is computed alone, so the server's batch-invariance check at load passes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from models.contract import InputSpec, ModelContract
from models.data import default_data_dir
from serve.core.quality import REASONS
from tests.conftest import encode
from tests.integration.conftest import Service, private_service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
CENTRES = np.linspace(-0.9, 0.9, len(LABELS)).astype(np.float32)  # mean normalised pixel of each class
GREYS = [round((c * 0.5 + 0.5) * 255) for c in CENTRES]  # the flat grey level that lands on each centre
SCALE = 50.0


def write_seven_class_model(folder: Path) -> Path:
    """model.onnx (pixel_values [N,1,48,48] -> logits [N,7]) + a contract config.json like the shipped one."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    contract = ModelContract(name="seven-test", version="0.0.1", labels=LABELS,
                             input=InputSpec(channels=1, height=48, width=48),
                             architecture="test: class by mean grey level")  # fmt: skip
    spec, out = contract.input, contract.output
    nodes = [
        helper.make_node("Flatten", [spec.name], ["flat"], axis=1),
        helper.make_node("ReduceMean", ["flat", "axes"], ["mean"], keepdims=1),  # [N, 1]
        helper.make_node("Sub", ["mean", "centres"], ["diff"]),  # [N, 7]
        helper.make_node("Mul", ["diff", "diff"], ["square"]),
        helper.make_node("Mul", ["square", "neg_scale"], [out.name]),
    ]
    graph = helper.make_graph(
        nodes, "seven_classes",
        [helper.make_tensor_value_info(spec.name, TensorProto.FLOAT, ["batch", 1, 48, 48])],
        [helper.make_tensor_value_info(out.name, TensorProto.FLOAT, ["batch", len(LABELS)])],
        [numpy_helper.from_array(np.array([1], np.int64), "axes"), numpy_helper.from_array(CENTRES, "centres"),
         numpy_helper.from_array(np.array(-SCALE, np.float32), "neg_scale")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / contract.onnx_file))
    contract.save(folder)
    return folder


@pytest.fixture(scope="module")
def seven(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with private_service(model_dir=str(write_seven_class_model(tmp_path_factory.mktemp("seven_classes")))) as running:
        yield running


def grey_png(level: int, size: int = 48) -> bytes:
    """Mean grey ``level`` as a +-20 checkerboard: the model sees the level, the unreadable rule sees detail (a flat
    image is ``blurred``)."""
    board = np.indices((size, size)).sum(axis=0) % 2 * 40 - 20
    return encode(Image.fromarray(np.clip(level + board, 0, 255).astype(np.uint8)))


def flat_png(level: int = 128) -> bytes:
    return encode(Image.new("L", (48, 48), level))


def assert_seven(item: dict[str, Any], where: str = "answer", labels: tuple[str, ...] = LABELS) -> None:
    """A face answer in ``labels``: a readable face names the most probable one, an unreadable one none."""
    probs = item["probabilities"]
    assert list(probs) == list(labels), where
    if item["readable"]:
        assert item["label"] in labels and item["label"] == max(probs, key=probs.__getitem__), where
        assert item["unreadable_reason"] is None, where
    else:
        assert item["label"] is None and item["unreadable_reason"] in REASONS, where
    assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-5), (where, sum(probs.values()))


def a_photo() -> tuple[bytes, str]:
    """A photo with one large face from faces/boxes.parquet (skips when the data is missing)."""
    import pyarrow.parquet as pq

    path = default_data_dir() / "faces" / "boxes.parquet"
    if not path.is_file():
        pytest.skip(f"{path} not found (set EMOTION_DATA_DIR)")
    for row in pq.read_table(path).to_pylist():
        if row["image"]["path"].startswith("widerface") and len(row["boxes"]) == 1 and row["boxes"][0][2] >= 80:
            data = row["image"]["bytes"]
            return data, "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"
    pytest.skip("no photo with one large face in boxes.parquet")


def streamed_faces(service: Service) -> list[tuple[int, dict[str, Any]]]:
    """``(frame index, face)`` of every face answered when ``a_photo`` is streamed 3 times as JPEG: each frame
    answered once, in order, at least one with faces, and every answered frame with at least one face."""
    data, _ = a_photo()
    frame = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(frame, format="JPEG", quality=90)
    replies = service.stream_one_by_one([frame.getvalue()] * 3)
    assert [r["index"] for r in replies] == [0, 1, 2]
    answered = [r for r in replies if "faces" in r]
    assert answered and all(r["faces"] for r in answered), replies
    return [(r["index"], face) for r in answered for face in r["faces"]]


def test_model_route_names_the_seven_labels(seven: Service) -> None:
    body = seven.client.get("/v1/model").json()
    assert body["labels"] == list(LABELS) and body["name"] == "seven-test"


def test_classify_answers_each_of_the_seven_labels(seven: Service) -> None:
    for level, label in zip(GREYS, LABELS, strict=True):
        resp = seven.client.post("/v1/classify", content=grey_png(level), headers={"content-type": "image/png"})
        assert resp.status_code == 200, resp.text
        assert_seven(resp.json(), label)
        assert resp.json()["label"] == label and resp.json()["readable"]
        assert "model_probabilities" not in resp.json()  # this contract groups no labels


def test_batch_answers_seven_labels_in_input_order(seven: Service) -> None:
    files = [("files", (f"{i}.png", grey_png(level), "image/png")) for i, level in enumerate(GREYS)]
    resp = seven.client.post("/v1/classify/batch", files=files)
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert [r["index"] for r in results] == list(range(len(LABELS)))
    for r in results:
        assert_seven(r, f"results[{r['index']}]")
    assert [r["label"] for r in results] == list(LABELS)


def test_analyze_answers_seven_probabilities_per_face(seven: Service) -> None:
    data, media = a_photo()
    resp = seven.client.post("/v1/analyze", content=data, headers={"content-type": media})
    assert resp.status_code == 200, resp.text
    faces = resp.json()["faces"]
    assert faces, "the detector found no face in the photo"
    for i, face in enumerate(faces):
        assert_seven(face, f"faces[{i}]")


def test_stream_answers_seven_probabilities_and_a_smoothed_label(seven: Service) -> None:
    for index, face in streamed_faces(seven):
        assert_seven(face, f"frame {index}")
        assert face["track_id"] >= 1
        assert face["smoothed_label"] in LABELS or (face["smoothed_label"] is None and not face["readable"])


def test_metrics_count_predictions_of_labels_beyond_the_first_three(seven: Service) -> None:
    files = [("files", (f"{i}.png", grey_png(level), "image/png")) for i, level in enumerate(GREYS)]
    assert seven.client.post("/v1/classify/batch", files=files).status_code == 200
    name = "ray_emotion_predictions_total"

    def counted(text: str) -> bool:
        return all(seven.metric_total(text, name, emotion=label) > 0 for label in LABELS)

    text = seven.wait_for_metrics(counted)
    missing = [label for label in LABELS if seven.metric_total(text, name, emotion=label) <= 0]
    assert not missing, f"no {name} samples for {missing}"
    assert all(seven.metric_total(text, name, emotion=label) >= 1 for label in LABELS[3:])
