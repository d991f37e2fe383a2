"""models.evaluate and tools/check_model.py on a torch-free linear ONNX model and a generated dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.contract import ContractError, InputSpec, ModelContract, OutputSpec, load_contract, normalise
from models.data import DatasetError
from models.evaluate import evaluate, main
from models.metrics import expected_calibration_error, mean_cross_entropy, softmax
from models.predictors import load_for_contract, onnx_predictor

REPO = Path(__file__).resolve().parents[3]
LINEAR = Callable[..., Path]


def contract48() -> ModelContract:
    return ModelContract(name="linear", version="1", labels=("angry", "happy", "sad"))


def test_report_contents(fer_like: Path, linear_onnx: LINEAR, tmp_path: Path) -> None:
    folder = linear_onnx(tmp_path / "m", contract48())
    r = evaluate(folder, fer_like, "test", batch_size=7)
    assert r["n"] == 33 and r["labels"] == ["angry", "happy", "sad"]
    assert r["skipped_corrupt"] == 0 and r["dataset"]["dropped_by_class"] == {"fear": 10}
    assert np.asarray(r["confusion_matrix"]).sum() == 33
    assert set(r["per_class"]["sad"]) == {"precision", "recall", "f1", "support"}
    assert {"accuracy", "mean_cross_entropy", "macro_f1", "ece", "temperature"} <= set(r)
    assert r["temperature"] == 1.0 and 0.0 <= r["ece"] <= 1.0 and "ece" in r["dedup"]
    assert r["dedup"]["excluded_in_train"] == 3 and r["dedup"]["n"] == 30
    assert evaluate(folder, fer_like, "test", batch_size=64)["accuracy"] == r["accuracy"]
    assert "dedup" not in evaluate(folder, fer_like, "train")


def test_probabilities_are_scored_at_the_contract_temperature(
    fer_like: Path, linear_onnx: LINEAR, tmp_path: Path
) -> None:
    folder = linear_onnx(tmp_path / "m", contract48(), seed=2)
    contract = load_contract(folder)
    data = load_for_contract(fer_like, "test", contract)
    logits = onnx_predictor(folder, contract)(normalise(data.images, contract))
    plain = evaluate(folder, fer_like, "test")
    replace(contract, output=OutputSpec(temperature=0.25)).save(folder)
    sharp = evaluate(folder, fer_like, "test")
    assert sharp["temperature"] == 0.25 and sharp["accuracy"] == plain["accuracy"]
    assert sharp["mean_cross_entropy"] == pytest.approx(mean_cross_entropy(logits, data.labels, 0.25))
    assert sharp["ece"] == pytest.approx(expected_calibration_error(softmax(logits, 0.25), data.labels))
    assert plain["ece"] == pytest.approx(expected_calibration_error(softmax(logits), data.labels))
    assert sharp["ece"] != pytest.approx(plain["ece"])


def test_main_writes_json_and_png(fer_like: Path, linear_onnx: LINEAR, tmp_path: Path) -> None:
    folder = linear_onnx(tmp_path / "m", contract48())
    out = tmp_path / "eval" / "test.json"
    assert main(["--model", str(folder), "--data-dir", str(fer_like), "--output", str(out), "--threads", "1"]) == 0
    assert json.loads(out.read_text())["n"] == 33
    assert out.with_suffix(".png").is_file()


def test_missing_dataset_and_unknown_class(fer_like: Path, linear_onnx: LINEAR, tmp_path: Path) -> None:
    folder = linear_onnx(tmp_path / "m", contract48())
    with pytest.raises(DatasetError, match="does not exist"):
        evaluate(folder, tmp_path / "no-data")
    assert main(["--model", str(folder), "--data-dir", str(tmp_path / "no-data")]) == 2
    with pytest.raises(SystemExit) as exc:  # a bad flag value is a usage error naming the flag
        main(["--model", str(folder), "--data-dir", str(fer_like), "--batch-size", "0"])
    assert exc.value.code == 2
    other = linear_onnx(tmp_path / "c", replace(contract48(), labels=("angry", "contempt", "sad")))
    with pytest.raises(DatasetError, match="contempt"):
        evaluate(other, fer_like)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"input": InputSpec(height=12, width=12)}, "has shape"),
        ({"input": InputSpec(name="image")}, "no input 'image'"),
        ({"output": OutputSpec(name="probs")}, "no output 'probs'"),
        ({"labels": ("angry", "happy", "sad", "fear")}, "lists 4 labels"),
    ],
)
def test_config_that_does_not_match_the_onnx_file(
    change: dict[str, object], message: str, fer_like: Path, linear_onnx: LINEAR, tmp_path: Path
) -> None:
    folder = linear_onnx(tmp_path / "m", contract48())
    replace(contract48(), **change).save(folder)  # type: ignore[arg-type]
    with pytest.raises(ContractError, match=message):
        evaluate(folder, fer_like)


def test_onnx_path_never_imports_torch(fer_like: Path, linear_onnx: LINEAR, tmp_path: Path) -> None:
    folder = linear_onnx(tmp_path / "m", contract48())
    argv = ["--model", str(folder), "--data-dir", str(fer_like), "--output", str(tmp_path / "r.json")]
    code = (
        "import sys; from models.evaluate import main; "
        f"rc = main({argv!r}); "
        "assert rc == 0; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True)


@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_check_model_reproduces_evaluate(
    temperature: float, fer_like: Path, linear_onnx: LINEAR, tmp_path: Path
) -> None:
    folder = linear_onnx(tmp_path / "m", replace(contract48(), output=OutputSpec(temperature=temperature)), seed=5)
    r = evaluate(folder, fer_like, "test", dedup=False)
    assert r["temperature"] == temperature
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "check_model.py"),
            "--model",
            str(folder),
            "--data",
            str(fer_like / "test.parquet"),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert out.strip() == (
        f"n={r['n']} accuracy={r['accuracy']:.6f} macro_f1={r['macro_f1']:.6f} "
        f"temperature={temperature:g} ece={r['ece']:.6f}"
    )
