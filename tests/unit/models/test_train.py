"""Training end to end on a tiny generated dataset: checkpoints, resume, the best-model folder, the report."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from models.augment import AugmentConfig, augment_batch  # noqa: E402
from models.cli_args import parse_arguments  # noqa: E402
from models.contract import CHECKPOINT_CONTRACT_FILE, load_contract  # noqa: E402
from models.loop import cosine_with_warmup  # noqa: E402
from models.train import TrainArgs, main  # noqa: E402

pytestmark = pytest.mark.train

COUNTS = {"angry": 10, "happy": 12, "sad": 10}


def _argv(data: Path, out: Path, epochs: int, distill: str = "hard") -> list[str]:
    return [
        "--data-dir", str(data), "--output-dir", str(out), "--image-size", "12", "--preset", "micro-p4",
        "--epochs", str(epochs), "--teacher-epochs", "1", "--batch-size", "8", "--distill", distill,
        "--no-wandb", "--threads", "1", "--val-fraction", "0.25",
    ]


@pytest.fixture
def tiny_fer(make_parquet: Callable[..., Path]) -> Path:
    make_parquet("test", {"angry": 3, "happy": 3, "sad": 3}, seed=1)
    return make_parquet("train", COUNTS, corrupt=1)


def test_train_writes_best_model_and_resumes(tiny_fer: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(_argv(tiny_fer, out, epochs=1)) == 0
    best = out / "best"
    assert (best / "model.safetensors").is_file()
    contract = load_contract(best, CHECKPOINT_CONTRACT_FILE, require_onnx=False)
    assert contract.labels == ("angry", "happy", "sad")
    assert (contract.input.height, contract.input.width) == (12, 12)
    report = json.loads((out / "final_report.json").read_text())
    assert 0.0 <= report["test_accuracy"] <= 1.0
    assert (out / "teacher" / "last.pt").is_file() and (out / "student" / "last.pt").is_file()

    # A second call with more epochs continues from the checkpoint instead of starting over.
    assert main(_argv(tiny_fer, out, epochs=2)) == 0
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    student_epochs = [r["epoch"] for r in rows if r["stage"] == "student"]
    teacher_epochs = [r["epoch"] for r in rows if r["stage"] == "teacher"]
    assert student_epochs == [1, 2]
    assert teacher_epochs == [1]  # the finished teacher was not retrained


def test_train_without_teacher(tiny_fer: Path, tmp_path: Path) -> None:
    out = tmp_path / "plain"
    assert main(_argv(tiny_fer, out, epochs=1, distill="none")) == 0
    assert not (out / "teacher").exists()
    assert "teacher_test_accuracy" not in json.loads((out / "final_report.json").read_text())


def test_teacher_members_train_alone_then_teach_as_an_ensemble(tiny_fer: Path, tmp_path: Path) -> None:
    members = []
    for seed in (1, 2):
        out = tmp_path / f"teacher{seed}"
        assert main([*_argv(tiny_fer, out, epochs=1), "--teacher-only", "--seed", str(seed)]) == 0
        assert not (out / "student").exists() and not (out / "best").exists()
        assert 0.0 <= json.loads((out / "final_report.json").read_text())["teacher_test_accuracy"] <= 1.0
        members.append(str(out / "teacher" / "best.pt"))
    out = tmp_path / "student"
    assert main([*_argv(tiny_fer, out, epochs=1), "--teacher-checkpoint", ",".join(members), "--teacher-flip"]) == 0
    assert not (out / "teacher").exists()  # the ensemble was loaded, not trained
    report = json.loads((out / "final_report.json").read_text())
    assert {"teacher_test_accuracy", "test_flip_averaged_accuracy"} <= report.keys()
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        main([*_argv(tiny_fer, tmp_path / "x", epochs=1), "--teacher-checkpoint", f"{members[0]},nope.pt"])


def test_teacher_ensemble_averages_members_and_mirrors() -> None:
    from models.architectures import TeacherCNN, TeacherEnsemble

    torch.manual_seed(0)
    a, b = TeacherCNN(1, 3).eval(), TeacherCNN(1, 3).eval()
    x = torch.randn(4, 1, 12, 12)
    with torch.no_grad():
        assert torch.allclose(TeacherEnsemble([a, b])(x), (a(x) + b(x)) / 2, atol=1e-6)
        flipped = TeacherEnsemble([a], flip_average=True)
        assert torch.allclose(flipped(x), (a(x) + a(torch.flip(x, dims=[3]))) / 2, atol=1e-6)
        assert torch.allclose(flipped(x), flipped(torch.flip(x, dims=[3])), atol=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        TeacherEnsemble([])


def test_unknown_class_is_a_clear_error(tiny_fer: Path, tmp_path: Path) -> None:
    argv = [*_argv(tiny_fer, tmp_path / "x", epochs=1), "--classes", "angry,contempt"]
    with pytest.raises(ValueError, match="contempt"):
        main(argv)


def test_bad_arguments_name_the_value() -> None:
    with pytest.raises(ValueError, match="--distill='medium'"):
        TrainArgs(distill="medium")
    with pytest.raises(ValueError, match="--preset='huge'"):
        TrainArgs(preset="huge")
    args = parse_arguments(TrainArgs, ["--aug-rotate-deg", "0", "--no-aug-flip", "--lr", "0.01"], prog="emotion train")
    assert args.augment == AugmentConfig(flip=False, rotate_deg=0.0) and args.lr == 0.01


def test_augment_keeps_shape_and_is_seeded() -> None:
    x = torch.randn(6, 1, 12, 12)
    a = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(3))
    b = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b)
    off = AugmentConfig(flip=False, rotate_deg=0, scale=0, translate=0, brightness=0, contrast=0, erase_prob=0)
    assert torch.allclose(augment_batch(x, off), x, atol=1e-5)


def test_schedule_warms_up_then_decays() -> None:
    f = cosine_with_warmup(total_steps=100, warmup_steps=10, base_lr=1e-3, min_lr=1e-5)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(99) < 0.05
