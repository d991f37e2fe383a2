"""Export parity and int8 quantization of the micro DeiT (needs torch + transformers: the train extra)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.contract import CHECKPOINT_CONTRACT_FILE, ContractError, ModelContract, load_contract, normalise
from models.evaluate import evaluate
from models.predictors import load_checkpoint, load_for_contract, make_session

pytestmark = pytest.mark.train


def _logits(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    return np.asarray(make_session(onnx_path).run(["logits"], {"pixel_values": x})[0])


def test_export_writes_contract_and_matches_torch(micro_onnx: Path) -> None:
    contract = load_contract(micro_onnx)
    assert contract.labels == ("angry", "happy", "sad") and contract.onnx_file == "model.onnx"
    session = make_session(micro_onnx / "model.onnx")
    assert session.get_inputs()[0].name == "pixel_values" and isinstance(session.get_inputs()[0].shape[0], str)
    assert not list(micro_onnx.glob("*.data"))  # one self-contained file


def test_export_parity_numbers(micro_checkpoint: Path, tmp_path: Path) -> None:
    from models.export import ExportArguments, export

    diffs = export(ExportArguments(checkpoint=micro_checkpoint, output=tmp_path / "onnx"))
    assert set(diffs) == {"batch_1", "batch_32"} and max(diffs.values()) < 1e-4


def test_flip_average_is_in_the_graph(micro_checkpoint: Path, micro_onnx: Path, tmp_path: Path) -> None:
    from models.export import ExportArguments, export

    single = tmp_path / "single"
    export(ExportArguments(checkpoint=micro_checkpoint, output=single, flip_average=False))
    assert load_contract(micro_onnx).output.flip_averaged and not load_contract(single).output.flip_averaged
    x = np.random.default_rng(0).normal(size=(5, 1, 48, 48)).astype(np.float32)
    mirrored = np.ascontiguousarray(x[..., ::-1])
    both = _logits(micro_onnx / "model.onnx", x)
    # The default export answers the same for a face and its mirror image, and equals the mean of both views.
    np.testing.assert_allclose(both, _logits(micro_onnx / "model.onnx", mirrored), atol=1e-5)
    views = (_logits(single / "model.onnx", x) + _logits(single / "model.onnx", mirrored)) / 2
    np.testing.assert_allclose(both, views, atol=1e-5)
    assert np.abs(_logits(single / "model.onnx", x) - views).max() > 1e-4  # one view alone is not mirror-invariant


def test_checkpoint_and_onnx_evaluate_alike(micro_checkpoint: Path, fer_like: Path, tmp_path: Path) -> None:
    from models.export import ExportArguments, export

    single_view = tmp_path / "onnx"  # a checkpoint is evaluated on one view, so compare with a one-view export
    export(ExportArguments(checkpoint=micro_checkpoint, output=single_view, flip_average=False))
    torch_report = evaluate(micro_checkpoint, fer_like, "test", dedup=False)
    onnx_report = evaluate(single_view, fer_like, "test", dedup=False)
    assert torch_report["model"]["kind"] == "checkpoint" and onnx_report["model"]["kind"] == "onnx"
    assert torch_report["confusion_matrix"] == onnx_report["confusion_matrix"]
    assert torch_report["mean_cross_entropy"] == pytest.approx(onnx_report["mean_cross_entropy"], abs=1e-5)


def test_checkpoint_whose_contract_disagrees_with_id2label(micro_checkpoint: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(micro_checkpoint, bad)
    ModelContract(name="m", version="0", labels=("sad", "happy", "angry")).save(bad, CHECKPOINT_CONTRACT_FILE)
    with pytest.raises(ContractError, match="id2label"):
        load_checkpoint(bad)


def test_quantize_ships_a_batch_invariant_int8_model(micro_onnx: Path, fer_like: Path, tmp_path: Path) -> None:
    from models.quantize import choose, main

    out = tmp_path / "int8"
    argv = ["--model", str(micro_onnx), "--output", str(out), "--data-dir", str(fer_like)]
    argv += ["--variants", "dynamic,static", "--calibration-size", "16", "--bench-seconds", "0.05"]
    argv += ["--min-compression", "1.6"]  # a 0.5 MB micro model: graph overhead weighs more than in the real one
    assert main(argv) == 0
    assert {p.name for p in out.iterdir()} >= {"model.onnx", "config.json", "metrics.json", "quantization.json"}
    summary = json.loads((out / "quantization.json").read_text())
    rows = {r["variant"]: r for r in summary["rows"]}
    assert set(rows) == {"fp32", "dynamic", "static"}
    # Near-ties go to the faster variant on a timing of 0.05 s: which one wins may depend on the machine, the rule not.
    chosen = rows[summary["chosen"]]
    assert summary["chosen"] == choose(summary["rows"], 0.005, 1.6)["variant"] and chosen["batch_invariant"]
    assert (out / "model.onnx").stat().st_size < 0.6 * (micro_onnx / "model.onnx").stat().st_size
    # The shipped file: metrics.json is its own evaluation, and batch neighbours never change an answer.
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] == evaluate(out, fer_like, "test")["accuracy"] and "dedup" in metrics
    contract = load_contract(out)
    x = normalise(load_for_contract(fer_like, "test", contract).images, contract)
    together = _logits(out / "model.onnx", x)
    alone = np.concatenate([_logits(out / "model.onnx", x[i : i + 1]) for i in range(len(x))])
    assert np.array_equal(together.argmax(1), alone.argmax(1)) and np.abs(together - alone).max() < 1e-4


def _row(variant: str, size: int, acc: float, ms: float, invariant: bool = True) -> dict[str, object]:
    return {"variant": variant, "size_bytes": size, "val_accuracy": acc, "ms_batch1_min": ms,
            "batch_invariant": invariant}  # fmt: skip


def test_choose_keeps_the_size_and_invariance_rules() -> None:
    from models.quantize import choose

    rows = [
        _row("fp32", 8_740_000, 0.822, 4.7),
        _row("dynamic", 2_340_000, 0.830, 9.0, invariant=False),  # most accurate, but batch-dependent
        _row("fast_but_large", 3_500_000, 0.822, 2.9),  # fastest, but only 1/2.5 of fp32
        _row("static", 2_380_000, 0.821, 3.2),
        _row("static_per_channel", 2_430_000, 0.820, 3.3),
    ]
    assert choose(rows, 0.005)["variant"] == "static"
    assert choose(rows, 0.005, min_compression=2.0)["variant"] == "fast_but_large"
    with pytest.raises(ContractError, match=r"1/4\.0"):
        choose(rows, 0.005, min_compression=4.0)


def test_ensemble_of_checkpoints_exports_as_one_graph(micro_checkpoint: Path, tmp_path: Path) -> None:
    import shutil

    import torch

    from models.architectures import load_student
    from models.export import ExportArguments, export

    other = tmp_path / "other"
    shutil.copytree(micro_checkpoint, other)
    model = load_student(other)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)  # a different member, same contract
    model.save_pretrained(other)

    def export_one(checkpoint: str, name: str) -> Path:
        export(ExportArguments(checkpoint=Path(checkpoint), output=tmp_path / name, flip_average=False))
        return tmp_path / name / "model.onnx"

    both = export_one(f"{micro_checkpoint},{other}", "both")
    x = np.random.default_rng(1).normal(size=(4, 1, 48, 48)).astype(np.float32)
    members = [_logits(export_one(str(c), f"m{i}"), x) for i, c in enumerate((micro_checkpoint, other))]
    assert np.abs(members[0] - members[1]).max() > 1e-3  # the members really differ
    np.testing.assert_allclose(_logits(both, x), (members[0] + members[1]) / 2, atol=1e-5)
    assert load_contract(tmp_path / "both").architecture.startswith("ensemble of 2 students")

    # Members must agree on what goes in: another input size is refused, naming the folder.
    smaller = tmp_path / "smaller"
    shutil.copytree(micro_checkpoint, smaller)
    contract = load_contract(smaller, CHECKPOINT_CONTRACT_FILE, require_onnx=False)
    replace(contract, input=replace(contract.input, height=24, width=24)).save(smaller, CHECKPOINT_CONTRACT_FILE)
    with pytest.raises(ContractError, match=r"smaller.*differ"):
        load_checkpoint(f"{micro_checkpoint},{smaller}")


def test_export_carries_a_checkpoint_temperature_but_an_ensemble_starts_at_one(
    micro_checkpoint: Path, tmp_path: Path
) -> None:
    import shutil

    calibrated = tmp_path / "calibrated"
    shutil.copytree(micro_checkpoint, calibrated)
    contract = load_contract(calibrated, CHECKPOINT_CONTRACT_FILE, require_onnx=False)
    replace(contract, output=replace(contract.output, temperature=1.8)).save(calibrated, CHECKPOINT_CONTRACT_FILE)
    assert load_checkpoint(calibrated)[1].output.temperature == 1.8
    from models.export import ExportArguments, export

    export(ExportArguments(checkpoint=calibrated, output=tmp_path / "onnx", flip_average=False))
    assert load_contract(tmp_path / "onnx").output.temperature == 1.8
    # The mean logits of an ensemble are a new function: no member's temperature is carried to it.
    assert load_checkpoint(f"{calibrated},{calibrated}")[1].output.temperature == 1.0
