"""Calibration: the temperature fit and ECE in models.metrics, and the `emotion calibrate` command on a tiny model."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.calibrate import CalibrateArguments, calibrate, main, write_temperature
from models.contract import (
    CONFIG_FILE,
    METRICS_FILE,
    ContractError,
    ModelContract,
    OutputSpec,
    load_contract,
    normalise,
)
from models.evaluate import evaluate
from models.metrics import (
    classification_report,
    expected_calibration_error,
    fit_temperature,
    format_report,
    mean_cross_entropy,
    softmax,
)
from models.predictors import onnx_predictor, predict_logits, validation_split

LINEAR = Callable[..., Path]


def sample_labels(logits: np.ndarray, temperature: float, seed: int = 0) -> np.ndarray:
    """One label per row drawn from softmax(logits / temperature)."""
    p = softmax(logits, temperature)
    u = np.random.default_rng(seed).random((len(p), 1))
    return np.minimum((p.cumsum(axis=1) < u).sum(axis=1), p.shape[1] - 1)


def synthetic_logits(n: int = 40_000, classes: int = 3, scale: float = 4.0, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=scale, size=(n, classes))


# ----------------------------------------------------------------------------------------------- fit_temperature


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_recovers_the_temperature_the_labels_were_drawn_with(true_t: float) -> None:
    z = synthetic_logits()
    labels = sample_labels(z, true_t)
    assert fit_temperature(z, labels) == pytest.approx(true_t, rel=0.04)


def test_fit_is_the_minimum_of_the_cross_entropy() -> None:
    z = synthetic_logits(5_000)
    labels = sample_labels(z, 2.5, seed=3)
    t = fit_temperature(z, labels)
    best = mean_cross_entropy(z, labels, t)
    for other in (t * 0.98, t * 1.02, 1.0, 10.0):
        assert best < mean_cross_entropy(z, labels, other)


def test_fit_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="bounds"):
        fit_temperature(np.zeros((2, 3)), np.array([0, 1]), bounds=(2.0, 1.0))
    with pytest.raises(ValueError, match="labels"):
        fit_temperature(np.zeros((2, 3)), np.array([0]))


# ----------------------------------------------------------------------------------------------- ECE


def test_ece_of_a_small_example_computed_by_hand() -> None:
    probs = np.array([[0.9, 0.1], [0.95, 0.05], [0.58, 0.42], [0.55, 0.45]])
    labels = np.array([0, 1, 0, 1])  # right, wrong, right, wrong
    # 15 bins of width 1/15: 0.9 -> (13/15, 14/15], 0.95 -> (14/15, 1], 0.58 and 0.55 -> (8/15, 9/15].
    by_hand = (1 / 4) * abs(1 - 0.9) + (1 / 4) * abs(0 - 0.95) + (2 / 4) * abs(0.5 - (0.58 + 0.55) / 2)
    assert by_hand == pytest.approx(0.295)
    assert expected_calibration_error(probs, labels) == pytest.approx(by_hand, abs=1e-12)
    # One bin: |mean accuracy - mean confidence| = |0.5 - 0.745|.
    assert expected_calibration_error(probs, labels, bins=1) == pytest.approx(0.245, abs=1e-12)


def test_ece_of_perfectly_calibrated_data_is_about_zero() -> None:
    rng = np.random.default_rng(0)
    n, classes = 200_000, 3
    probs = rng.dirichlet(np.ones(classes), size=n)
    labels = sample_labels(np.log(probs), 1.0, seed=1)  # each label drawn from its own row's probabilities
    assert expected_calibration_error(probs, labels) < 0.005
    # Always-right answers at confidence 1 are calibrated too; confidence 1 with every answer wrong is ECE 1.
    onehot = np.eye(classes)[labels]
    assert expected_calibration_error(onehot, labels) == 0.0
    assert expected_calibration_error(onehot, (labels + 1) % classes) == 1.0


def test_temperature_scaling_calibrates_overconfident_logits() -> None:
    z = synthetic_logits()
    labels = sample_labels(z, 2.5)
    before = expected_calibration_error(softmax(z), labels)
    after = expected_calibration_error(softmax(z, fit_temperature(z, labels)), labels)
    assert before > 0.08 and after < 0.01


def test_report_scores_probabilities_at_the_temperature() -> None:
    z = synthetic_logits(3_000)
    labels = sample_labels(z, 2.5)
    plain, scaled = classification_report(z, labels, "abc"), classification_report(z, labels, "abc", 2.5)
    assert plain["accuracy"] == scaled["accuracy"] and plain["confusion_matrix"] == scaled["confusion_matrix"]
    assert (plain["temperature"], scaled["temperature"]) == (1.0, 2.5)
    assert scaled["mean_cross_entropy"] == pytest.approx(mean_cross_entropy(z, labels, 2.5))
    assert scaled["ece"] == pytest.approx(expected_calibration_error(softmax(z, 2.5), labels))
    assert scaled["ece"] < plain["ece"]
    assert f"ece={scaled['ece']:.4f}" in format_report(scaled)


# ----------------------------------------------------------------------------------------------- emotion calibrate


def contract3() -> ModelContract:
    return ModelContract(name="linear", version="1", labels=("angry", "happy", "sad"))


def test_calibrate_writes_config_and_metrics(fer_like: Path, linear_onnx: LINEAR, tmp_path: Path) -> None:
    folder = linear_onnx(tmp_path / "m", contract3(), seed=3)
    before = json.loads((folder / CONFIG_FILE).read_text())
    del before["output"]["temperature"]  # as an old config.json: temperature 1.0
    (folder / CONFIG_FILE).write_text(json.dumps(before, indent=2) + "\n")
    assert main(["--model", str(folder), "--data-dir", str(fer_like), "--threads", "1"]) == 0

    config = json.loads((folder / CONFIG_FILE).read_text())
    metrics = json.loads((folder / METRICS_FILE).read_text())
    cal = metrics["calibration"]
    t = config["output"]["temperature"]
    assert t > 0 and t == cal["temperature"] == metrics["temperature"] == load_contract(folder).output.temperature
    # Everything else in config.json is unchanged and in its order; the temperature joins the output spec.
    assert list(config) == list(before)
    assert {k: v for k, v in config.items() if k != "output"} == {k: v for k, v in before.items() if k != "output"}
    assert list(config["output"]) == [*before["output"], "temperature"]

    # Fitted on the validation split (9 of the 90 angry/happy/sad train faces), as quantize scores on.
    contract = load_contract(folder)
    val = validation_split(fer_like, contract)
    predict = onnx_predictor(folder, contract)
    val_logits = predict_logits(predict, normalise(val.images, contract), 64)
    assert cal["validation"]["n"] == len(val) == 9
    assert t == pytest.approx(fit_temperature(val_logits, val.labels), abs=1e-4)
    assert cal["validation"]["ece_before"] == pytest.approx(expected_calibration_error(softmax(val_logits), val.labels))
    assert cal["validation"]["ece_after"] == pytest.approx(
        expected_calibration_error(softmax(val_logits, t), val.labels)
    )
    assert cal["validation"]["mean_cross_entropy_after"] <= cal["validation"]["mean_cross_entropy_before"] + 1e-6
    assert set(cal["test"]) == {"n", "ece_before", "ece_after", "mean_cross_entropy_before",
                                "mean_cross_entropy_after"}  # fmt: skip
    assert cal["test"]["n"] == metrics["n"] == 33 and cal["ece_bins"] == 15

    # metrics.json is what `emotion evaluate` reports for the calibrated folder.
    fresh = evaluate(folder, fer_like, "test")
    for key in ("n", "accuracy", "macro_f1", "mean_cross_entropy", "ece", "temperature"):
        assert metrics[key] == pytest.approx(fresh[key], abs=1e-12), key
    assert metrics["dedup"]["ece"] == pytest.approx(fresh["dedup"]["ece"])
    assert metrics["ece"] == pytest.approx(cal["test"]["ece_after"])
    assert metrics["mean_cross_entropy"] == pytest.approx(cal["test"]["mean_cross_entropy_after"])

    # Fitted on the raw logits: a second run finds the same temperature and records the first as previous.
    again = calibrate(CalibrateArguments(model=folder, data_dir=fer_like))
    assert again["temperature"] == t and again["previous_temperature"] == t


def test_calibrate_keeps_other_metrics_keys(fer_like: Path, linear_onnx: LINEAR, tmp_path: Path) -> None:
    folder = linear_onnx(tmp_path / "m", contract3())
    (folder / METRICS_FILE).write_text(json.dumps({"note": "kept", "accuracy": -1.0}))
    calibrate(CalibrateArguments(model=folder, data_dir=fer_like))
    metrics = json.loads((folder / METRICS_FILE).read_text())
    assert list(metrics)[:2] == ["note", "accuracy"] and metrics["note"] == "kept" and metrics["accuracy"] >= 0


def test_calibrate_fails_cleanly(fer_like: Path, linear_onnx: LINEAR, tmp_path: Path) -> None:
    folder = linear_onnx(tmp_path / "m", contract3())
    config = (folder / CONFIG_FILE).read_text()
    assert main(["--model", str(folder), "--data-dir", str(tmp_path / "no-data")]) == 2
    (tmp_path / "only-train").mkdir()
    (tmp_path / "only-train" / "train.parquet").write_bytes((fer_like / "train.parquet").read_bytes())
    assert main(["--model", str(folder), "--data-dir", str(tmp_path / "only-train")]) == 2  # no test split
    assert (folder / CONFIG_FILE).read_text() == config and not (folder / METRICS_FILE).exists()
    assert main(["--model", str(tmp_path / "nowhere"), "--data-dir", str(fer_like)]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["--model", str(folder), "--val-fraction", "1.5"])
    assert exc.value.code == 2


def test_write_temperature_refuses_a_bad_value(linear_onnx: LINEAR, tmp_path: Path) -> None:
    folder = linear_onnx(tmp_path / "m", contract3())
    config = (folder / CONFIG_FILE).read_text()
    with pytest.raises(ContractError, match="temperature"):
        write_temperature(folder, 0.0)
    assert (folder / CONFIG_FILE).read_text() == config
    write_temperature(folder, 1.5)
    assert load_contract(folder).output.temperature == 1.5


# ----------------------------------------------------------------------------------------------- carried over


def test_quantize_ships_the_temperature_of_its_source(fer_like: Path, linear_onnx: LINEAR, tmp_path: Path) -> None:
    from models.quantize import QuantizeArguments, _ship

    contract = replace(contract3(), output=OutputSpec(temperature=1.7))
    source = linear_onnx(tmp_path / "fp32", contract)
    args = QuantizeArguments(model=source, output=tmp_path / "int8", data_dir=fer_like)
    shipped = _ship(source / "model.onnx", load_contract(source), "static", args)
    assert load_contract(shipped).output.temperature == 1.7
    assert json.loads((shipped / METRICS_FILE).read_text())["temperature"] == 1.7
