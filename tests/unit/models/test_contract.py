"""models/contract.py: reading config.json, the preprocessing every consumer shares, and the ONNX tensor check."""

from __future__ import annotations

import json
import re
import shutil
import typing
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from models.contract import (
    CONFIG_FILE,
    DEFAULT_MODEL_DIR,
    RESAMPLING,
    ContractError,
    InputSpec,
    ModelContract,
    OutputSpec,
    Preprocessing,
    ResizeMethod,
    check_onnx_matches,
    load_contract,
    load_metrics,
    normalise,
)

LABELS = ("angry", "happy", "sad")


def contract(**changes: Any) -> ModelContract:
    return replace(ModelContract(name="t", version="0", labels=LABELS), **changes)


def rgb(height: int = 2, width: int = 3) -> ModelContract:
    pre = Preprocessing(color_mode="RGB", mean=(0.0, 0.5, 1.0), std=(1.0, 0.5, 0.25))
    return contract(input=InputSpec(channels=3, height=height, width=width), preprocessing=pre)


# ----------------------------------------------------------------------------------------------- load_contract


def test_the_bundled_model_folder_loads_and_round_trips(tmp_path: Path) -> None:
    bundled = load_contract(DEFAULT_MODEL_DIR)
    assert (DEFAULT_MODEL_DIR / bundled.onnx_file).is_file()
    assert bundled.num_classes == len(bundled.labels) > 1
    assert bundled.input.channels == len(bundled.preprocessing.mean) == len(bundled.preprocessing.std)
    assert bundled.preprocessing.resize in RESAMPLING
    # What save() writes, load_contract() reads back unchanged (the ONNX file is not needed for that).
    bundled.save(tmp_path)
    assert load_contract(tmp_path, require_onnx=False) == bundled


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"name": "x", "version": "1"}', "missing key 'labels'"),
        ('{"name": "x", "version": "1", "labels": ["a"], "input": {"colour": 1}}', "colour"),
    ],
)
def test_malformed_config_is_a_contract_error_naming_the_problem(text: str, message: str, tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text(text)
    with pytest.raises(ContractError, match=message) as exc:
        load_contract(tmp_path, require_onnx=False)
    assert CONFIG_FILE in str(exc.value)


def test_missing_folder_config_or_onnx_file(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="does not exist"):
        load_contract(tmp_path / "nowhere")
    with pytest.raises(ContractError, match=f"has no {CONFIG_FILE}"):
        load_contract(tmp_path)
    shutil.copy(DEFAULT_MODEL_DIR / CONFIG_FILE, tmp_path / CONFIG_FILE)
    with pytest.raises(ContractError, match=r"has no ONNX file 'model\.onnx'"):
        load_contract(tmp_path)
    assert load_contract(tmp_path, require_onnx=False).onnx_file == "model.onnx"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"labels": ()}, "at least one class"),
        ({"labels": ("a", "a")}, "duplicates"),
        ({"input": InputSpec(channels=3)}, "does not match"),
        ({"preprocessing": Preprocessing(mean=(0.5, 0.5))}, "needs 1 value"),
        ({"preprocessing": Preprocessing(std=(0.0,))}, "must be > 0"),
        ({"input": InputSpec(height=0)}, "must be positive"),
    ],
)
def test_inconsistent_contracts_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ContractError, match=message):
        contract(**changes)


def test_temperature_round_trips_and_defaults_to_one(tmp_path: Path) -> None:
    calibrated = contract(output=OutputSpec(flip_averaged=True, temperature=1.37))
    calibrated.save(tmp_path)
    written = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert written["output"]["temperature"] == 1.37
    assert load_contract(tmp_path, require_onnx=False) == calibrated
    # An old config.json without the key means plain softmax; an integer in JSON is a float temperature.
    del written["output"]["temperature"]
    (tmp_path / CONFIG_FILE).write_text(json.dumps(written))
    assert load_contract(tmp_path, require_onnx=False).output.temperature == 1.0
    written["output"]["temperature"] = 2
    (tmp_path / CONFIG_FILE).write_text(json.dumps(written))
    loaded = load_contract(tmp_path, require_onnx=False).output.temperature
    assert loaded == 2.0 and isinstance(loaded, float)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf"), float("nan"), "2", None, True])
def test_a_temperature_that_is_not_a_positive_number_is_refused(temperature: Any, tmp_path: Path) -> None:
    with pytest.raises(ContractError, match=r"output\.temperature"):
        contract(output=OutputSpec(temperature=temperature))
    data = contract().to_dict()
    data["output"]["temperature"] = temperature
    (tmp_path / CONFIG_FILE).write_text(json.dumps(data))  # NaN and Infinity as JSON's usual extensions
    with pytest.raises(ContractError, match=r"output\.temperature") as exc:
        load_contract(tmp_path, require_onnx=False)
    assert CONFIG_FILE in str(exc.value)


def test_every_allowed_resize_name_has_a_pillow_filter() -> None:
    assert set(RESAMPLING) == set(typing.get_args(ResizeMethod))
    assert len(set(RESAMPLING.values())) == len(RESAMPLING)  # no two names share a filter by mistake


# ----------------------------------------------------------------------------------------------- normalise


def test_normalise_grayscale_values_and_layout() -> None:
    images = np.array([[[0, 255, 51], [102, 153, 204]]], dtype=np.uint8)  # one 2x3 face
    x = normalise(images, contract(input=InputSpec(height=2, width=3)))
    assert x.dtype == np.float32 and x.shape == (1, 1, 2, 3) and x.flags.c_contiguous
    np.testing.assert_allclose(x[0, 0], [[-1.0, 1.0, -0.6], [-0.2, 0.2, 0.6]], atol=1e-6)
    # [N, H, W, 1] is the same face.
    np.testing.assert_array_equal(normalise(images[..., None], contract(input=InputSpec(height=2, width=3))), x)


def test_normalise_rgb_moves_channels_first_with_per_channel_mean_and_std() -> None:
    images = np.random.default_rng(0).integers(0, 256, (4, 2, 3, 3), dtype=np.uint8)
    x = normalise(images, rgb())
    assert x.dtype == np.float32 and x.shape == (4, 3, 2, 3) and x.flags.c_contiguous
    for c, (mean, std) in enumerate([(0.0, 1.0), (0.5, 0.5), (1.0, 0.25)]):
        np.testing.assert_allclose(x[:, c], (images[..., c] / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)


def test_normalise_keeps_an_empty_batch() -> None:
    assert normalise(np.zeros((0, 48, 48), np.uint8), contract()).shape == (0, 1, 48, 48)


@pytest.mark.parametrize(
    ("batch", "target", "error"),
    [
        (np.zeros((1, 48, 48), np.float32), contract(), TypeError),
        (np.zeros((1, 48, 48), np.int16), contract(), TypeError),
        (np.zeros((1, 32, 32), np.uint8), contract(), ValueError),
        (np.zeros((48, 48), np.uint8), contract(), ValueError),  # one face without the batch axis
        (np.zeros((1, 1, 48, 48, 1), np.uint8), contract(), ValueError),
        (np.zeros((1, 48, 48, 3), np.uint8), contract(), ValueError),  # RGB for a grayscale model
        (np.zeros((1, 2, 3), np.uint8), rgb(), ValueError),  # grayscale for an RGB model
    ],
)
def test_normalise_refuses_the_wrong_dtype_or_shape(batch: np.ndarray, target: ModelContract, error: type) -> None:
    with pytest.raises(error, match="uint8" if error is TypeError else "contract needs"):
        normalise(batch, target)


# ----------------------------------------------------------------------------------------------- check_onnx_matches


def fake_session(inputs: dict[str, list[Any]], outputs: dict[str, list[Any]]) -> Any:
    """What check_onnx_matches reads of an onnxruntime session: get_inputs()/get_outputs() with name and shape."""

    def tensors(spec: dict[str, list[Any]]) -> list[SimpleNamespace]:
        return [SimpleNamespace(name=name, shape=shape) for name, shape in spec.items()]

    return SimpleNamespace(get_inputs=lambda: tensors(inputs), get_outputs=lambda: tensors(outputs))


def test_check_onnx_matches_accepts_dynamic_and_matching_static_dims() -> None:
    check_onnx_matches(contract(), fake_session({"pixel_values": ["batch", 1, 48, 48]}, {"logits": ["batch", 3]}))
    check_onnx_matches(contract(), fake_session({"pixel_values": [8, "c", "h", "w"]}, {"logits": [8, "n"]}))


@pytest.mark.parametrize(
    ("inputs", "outputs", "message"),
    [
        ({"image": ["b", 1, 48, 48]}, {"logits": ["b", 3]}, r"no input 'pixel_values' \(it has \['image'\]\)"),
        ({"pixel_values": ["b", 1, 48, 48]}, {"probs": ["b", 3]}, "no output 'logits'"),
        ({"pixel_values": ["b", 3, 48, 48]}, {"logits": ["b", 3]}, r"says \[N, 1, 48, 48\]"),
        ({"pixel_values": ["b", 1, 48]}, {"logits": ["b", 3]}, "has shape"),
        ({"pixel_values": ["b", 1, 48, 48]}, {"logits": ["b", 4]}, "lists 3 labels"),
        ({"pixel_values": ["b", 1, 48, 48]}, {"logits": ["b"]}, "lists 3 labels"),
    ],
)
def test_check_onnx_matches_names_the_mismatch(
    inputs: dict[str, list[Any]], outputs: dict[str, list[Any]], message: str
) -> None:
    with pytest.raises(ContractError, match=message):
        check_onnx_matches(contract(), fake_session(inputs, outputs))


def test_load_metrics_is_the_bundled_report_or_none(tmp_path: Path) -> None:
    metrics = load_metrics(DEFAULT_MODEL_DIR)
    assert metrics is not None and metrics["labels"] == list(load_contract(DEFAULT_MODEL_DIR).labels)
    assert load_metrics(tmp_path) is None


# ----------------------------------------------------------------------------------------------- answer grouping

SEVEN = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
THREE_AND_OTHER = {"groups": {"angry": ["angry"], "happy": ["happy"], "sad": ["sad"]}, "other": "other"}


def seven(answer: Any) -> ModelContract:
    return ModelContract.from_dict({"name": "s", "version": "1", "labels": list(SEVEN), "answer": answer})


def test_without_answer_the_service_answers_in_the_model_labels() -> None:
    plain = contract()
    assert plain.answer is None and plain.answer_labels == LABELS
    probs = np.array([[0.2, 0.3, 0.5]], np.float32)
    assert plain.group(probs) is probs  # untouched, not a copy
    np.testing.assert_array_equal(plain.grouping_matrix, np.eye(3, dtype=np.float32))
    assert "answer" not in plain.to_dict()  # config.json files without grouping are written as before


def test_a_grouping_sums_each_group_and_the_rest_into_other_in_answer_order(tmp_path: Path) -> None:
    grouped = seven({"groups": {"sad": ["sad"], "angry": ["angry", "disgust"], "happy": ["happy"]}})
    assert grouped.answer_labels == ("sad", "angry", "happy", "other")  # the file's order, then other
    probs = np.random.default_rng(0).dirichlet(np.ones(7), 5).astype(np.float32)
    out = grouped.group(probs)
    assert out.shape == (5, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=1), probs.sum(axis=1), atol=1e-6)  # mass is kept
    np.testing.assert_allclose(out[:, 0], probs[:, 4], atol=1e-7)
    np.testing.assert_allclose(out[:, 1], probs[:, 0] + probs[:, 1], atol=1e-6)
    np.testing.assert_allclose(out[:, 3], probs[:, [2, 5, 6]].sum(axis=1), atol=1e-6)
    np.testing.assert_allclose(grouped.group(probs[0]), out[0], atol=1e-7)  # one row works too
    grouped.save(tmp_path)
    assert load_contract(tmp_path, require_onnx=False) == grouped  # round trip through config.json


def test_other_is_left_out_when_every_label_is_grouped_and_may_be_renamed() -> None:
    everything = seven({"groups": {"negative": ["angry", "disgust", "fear", "sad"], "positive": ["happy"],
                                   "neutral": ["neutral", "surprise"]}})  # fmt: skip
    assert everything.answer_labels == ("negative", "positive", "neutral")
    renamed = seven({**THREE_AND_OTHER, "other": "none_of_these"})
    assert renamed.answer_labels == ("angry", "happy", "sad", "none_of_these")
    assert seven({"groups": THREE_AND_OTHER["groups"]}).answer_labels[-1] == "other"  # the default name


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"groups": {"angry": ["anger"]}}, "'anger' is not a model label"),
        ({"groups": {"angry": ["angry"], "bad": ["angry", "disgust"]}}, "'angry' and 'bad' both hold 'angry'"),
        ({"groups": {"angry": ["angry", "angry"]}}, "lists 'angry' twice"),
        ({"groups": {"sad": ["neutral"]}}, "named like the model label 'sad'"),
        ({"groups": {"angry": ["angry"]}, "other": "neutral"}, "already a model label"),
        ({"groups": {"angry": ["angry"], "calm": ["neutral"]}, "other": "calm"}, "already a model label or a group"),
        ({"groups": {"angry": ["angry"]}, "other": None}, "are in no group and answer.other is null"),
        ({"groups": {"angry": ["angry"]}, "other": ""}, "non-empty name or null"),
        ({"groups": {}}, "at least one group"),
        ({"groups": {"angry": []}}, "lists no model label"),
        ({"groups": {"angry": "angry"}}, "must be a list of model labels"),
        ({"groups": [["angry", ["angry"]]]}, "answer must be"),
        ({"groups": {"angry": ["angry"]}, "others": "x"}, "answer must be"),
        (["angry"], "answer must be"),
    ],
)
def test_bad_groupings_are_contract_errors_naming_the_problem(answer: Any, message: str) -> None:
    with pytest.raises(ContractError, match=re.escape(message)):
        seven(answer)


def test_a_null_answer_is_no_grouping() -> None:
    assert seven(None).answer is None and seven(None).answer_labels == SEVEN
