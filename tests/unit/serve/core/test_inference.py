from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.contract import DEFAULT_MODEL_DIR, ContractError, ModelContract
from serve.core.inference import OnnxClassifier, answer, normalise, softmax, to_prediction

CONTRACT = ModelContract(name="t", version="0", labels=("angry", "happy", "sad"))


def test_normalise_follows_the_contract() -> None:
    x = np.array([[[0, 255]]], dtype=np.uint8).repeat(48, axis=1).repeat(24, axis=2)[:, :48, :48]
    out = normalise(x, CONTRACT)
    assert out.dtype == np.float32 and out.shape == (1, 1, 48, 48)
    assert out.min() == pytest.approx(-1.0) and out.max() == pytest.approx(1.0)
    with pytest.raises(TypeError):
        normalise(x.astype(np.float32), CONTRACT)
    with pytest.raises(ValueError):
        normalise(np.zeros((1, 32, 32), np.uint8), CONTRACT)


def test_softmax_and_label_mapping() -> None:
    probs = softmax(np.array([[0.0, 0.0, 0.0], [1000.0, 0.0, -1000.0]], dtype=np.float32))
    assert np.allclose(probs.sum(axis=1), 1.0) and np.allclose(probs[0], 1 / 3)
    pred = to_prediction(probs[1], CONTRACT.labels)
    assert pred.label == "angry" and set(pred.probabilities) == set(CONTRACT.labels)
    assert to_prediction(probs[0], CONTRACT.labels).label == "angry"  # ties: first in contract order


class FakeSession:
    """Logits = mean pixel per class offset; batch-invariant by construction."""

    def __init__(self, input_shape: list[Any], classes: int = 3) -> None:
        self.input_shape, self.classes, self.calls = input_shape, classes, 0

    def get_inputs(self) -> list[Any]:
        return [type("I", (), {"name": "pixel_values", "shape": self.input_shape})()]

    def get_outputs(self) -> list[Any]:
        return [type("O", (), {"name": "logits", "shape": ["batch", self.classes]})()]

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.calls += 1
        x = feeds["pixel_values"]
        return [x.mean(axis=(1, 2, 3))[:, None] * np.arange(self.classes, dtype=np.float32)]


def test_softmax_divides_the_logits_by_the_temperature() -> None:
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], dtype=np.float32)
    hot = softmax(logits, 2.0)
    np.testing.assert_allclose(hot, softmax(logits / 2.0), rtol=1e-6)
    e = np.exp([1.0, 0.0, -0.5])
    np.testing.assert_allclose(hot[0], e / e.sum(), rtol=1e-6)
    assert hot.dtype == np.float32 and np.array_equal(hot.argmax(1), logits.argmax(1))
    assert hot[0].max() < softmax(logits)[0].max()  # T > 1 flattens, T < 1 sharpens
    assert softmax(logits, 0.5)[0].max() > softmax(logits)[0].max()


def calibrated_model_dir(tmp_path: Path, temperature: float) -> Path:
    """A copy of the bundled config.json with ``output.temperature`` set, beside a placeholder ONNX file."""
    config = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    config["output"]["temperature"] = temperature
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / config.get("onnx_file", "model.onnx")).write_bytes(b"")  # the fake session never reads it
    return tmp_path


def test_probabilities_apply_the_contract_temperature(tmp_path: Path) -> None:
    folder = calibrated_model_dir(tmp_path, 2.5)
    clf = OnnxClassifier(folder, session_factory=lambda path, threads: FakeSession(["batch", 1, 48, 48]))
    assert clf.contract.output.temperature == 2.5
    x = np.random.default_rng(4).integers(0, 256, (6, 48, 48), dtype=np.uint8)
    (logits,) = FakeSession(["batch", 1, 48, 48]).run(["logits"], {"pixel_values": normalise(x, clf.contract)})
    probs = clf.predict_proba(x)
    np.testing.assert_allclose(probs, softmax(logits / 2.5), rtol=1e-6, atol=1e-7)
    assert not np.allclose(probs, softmax(logits), atol=1e-3)  # the temperature really changed the numbers
    assert [p.label for p in clf.predict(x)] == [clf.labels[k] for k in logits.argmax(1)]  # argmax unchanged


def test_bundled_model_probabilities_are_its_raw_logits_at_its_temperature() -> None:
    import onnxruntime as ort

    clf = OnnxClassifier(DEFAULT_MODEL_DIR)
    x = np.random.default_rng(8).integers(0, 256, (4, 48, 48), dtype=np.uint8)
    session = ort.InferenceSession(str(DEFAULT_MODEL_DIR / clf.contract.onnx_file), providers=["CPUExecutionProvider"])
    (logits,) = session.run([clf.contract.output.name], {clf.contract.input.name: normalise(x, clf.contract)})
    e = np.exp(logits.astype(np.float64) / clf.contract.output.temperature)
    np.testing.assert_allclose(clf.predict_proba(x), e / e.sum(axis=1, keepdims=True), rtol=0, atol=1e-6)


def test_fake_session_is_batched_when_invariant() -> None:
    fake = FakeSession(["batch", 1, 48, 48])
    clf = OnnxClassifier(DEFAULT_MODEL_DIR, session_factory=lambda path, threads: fake)
    assert not clf.row_by_row
    fake.calls = 0
    white = np.full((5, 48, 48), 255, np.uint8)
    preds = clf.predict(white)
    assert fake.calls == 1 and all(p.label == "sad" for p in preds)


def test_mismatched_onnx_is_a_contract_error() -> None:
    with pytest.raises(ContractError, match="shape"):
        OnnxClassifier(DEFAULT_MODEL_DIR, session_factory=lambda p, t: FakeSession(["batch", 1, 64, 64]))
    with pytest.raises(ContractError, match="labels"):
        OnnxClassifier(DEFAULT_MODEL_DIR, session_factory=lambda p, t: FakeSession(["batch", 1, 48, 48], classes=7))


def test_missing_model(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="does not exist"):
        OnnxClassifier(tmp_path / "nope")
    shutil.copy(DEFAULT_MODEL_DIR / "config.json", tmp_path / "config.json")
    with pytest.raises(ContractError, match="no ONNX file"):
        OnnxClassifier(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ContractError, match="missing key"):
        OnnxClassifier(tmp_path)


def test_bundled_model_answers_do_not_depend_on_batch_neighbours() -> None:
    clf = OnnxClassifier(DEFAULT_MODEL_DIR)
    x = np.random.default_rng(3).integers(0, 256, (6, 48, 48), dtype=np.uint8)
    together = clf.predict_proba(x)
    alone = np.concatenate([clf.predict_proba(x[i : i + 1]) for i in range(len(x))])
    assert np.allclose(together, alone, rtol=0, atol=1e-6)
    assert together.shape == (6, 3) and np.allclose(together.sum(axis=1), 1.0, atol=1e-5)
    clf.warm_up()


def test_parallel_runs_split_a_batch_and_keep_its_order() -> None:
    fake = FakeSession(["batch", 1, 48, 48])
    clf = OnnxClassifier(DEFAULT_MODEL_DIR, parallel_runs=2, session_factory=lambda path, threads: fake)
    x = np.random.default_rng(5).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    fake.calls = 0
    probs = clf.predict_proba(x)
    assert fake.calls == 2  # chunks of 3 and 2 faces, run side by side
    serial = OnnxClassifier(DEFAULT_MODEL_DIR, session_factory=lambda path, threads: FakeSession(["batch", 1, 48, 48]))
    assert np.array_equal(probs, serial.predict_proba(x))
    assert clf.predict_proba(x[:0]).shape == (0, 3)


def test_big_batches_run_as_several_small_runs_in_order() -> None:
    fake = FakeSession(["batch", 1, 48, 48])
    clf = OnnxClassifier(DEFAULT_MODEL_DIR, parallel_runs=2, run_batch_size=4, session_factory=lambda p, t: fake)
    x = np.random.default_rng(7).integers(0, 256, (10, 48, 48), dtype=np.uint8)
    fake.calls = 0
    probs = clf.predict_proba(x)
    assert fake.calls == 3  # 10 faces -> runs of 4, 3 and 3
    one_run = FakeSession(["batch", 1, 48, 48])
    serial = OnnxClassifier(DEFAULT_MODEL_DIR, run_batch_size=1024, session_factory=lambda p, t: one_run)
    assert np.array_equal(probs, serial.predict_proba(x))
    with pytest.raises(ValueError, match="run_batch_size=0"):
        OnnxClassifier(DEFAULT_MODEL_DIR, run_batch_size=0)


def test_bundled_model_gives_the_same_answers_with_parallel_runs() -> None:
    x = np.random.default_rng(6).integers(0, 256, (9, 48, 48), dtype=np.uint8)
    serial = OnnxClassifier(DEFAULT_MODEL_DIR).predict_proba(x)
    parallel = OnnxClassifier(DEFAULT_MODEL_DIR, parallel_runs=3).predict_proba(x)
    assert np.allclose(parallel, serial, rtol=0, atol=1e-6)


def test_parallel_runs_must_be_positive() -> None:
    with pytest.raises(ValueError, match="parallel_runs=0"):
        OnnxClassifier(DEFAULT_MODEL_DIR, parallel_runs=0)


def test_answer_without_grouping_is_the_prediction_plus_the_readable_fields() -> None:
    probs = np.array([0.2, 0.5, 0.3], np.float32)
    body = answer(probs, CONTRACT).to_json()
    assert body == {**to_prediction(probs, CONTRACT.labels).to_json(), "readable": True, "unreadable_reason": None}
    assert list(body) == ["label", "probabilities", "readable", "unreadable_reason"]
    flagged = answer(probs, CONTRACT, "too_small")
    assert (flagged.label, flagged.unreadable_reason) == (None, "too_small")
    assert flagged.probabilities == body["probabilities"]


def test_answer_groups_the_probabilities_and_keeps_the_model_s_own() -> None:
    from models.contract import AnswerSpec

    seven = ModelContract(name="s", version="0", labels=("angry", "disgust", "fear", "happy", "sad", "surprise",
                          "neutral"), answer=AnswerSpec((("angry", ("angry",)), ("happy", ("happy",)),
                          ("sad", ("sad",)))))  # fmt: skip
    surprised = np.array([0.3, 0.0, 0.05, 0.05, 0.1, 0.4, 0.1], np.float32)  # angry is the top model label of three
    pred = answer(surprised, seven)
    assert list(pred.probabilities) == ["angry", "happy", "sad", "other"] and pred.label == "other"
    assert pred.probabilities["other"] == pytest.approx(0.55)
    assert pred.model_probabilities is not None and list(pred.model_probabilities) == list(seven.labels)
    body = pred.to_json()
    assert list(body) == ["label", "probabilities", "model_probabilities", "readable", "unreadable_reason"]
    assert answer(surprised, seven, "blurred").label is None
