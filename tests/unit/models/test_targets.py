"""Cached distillation targets: the file reproduces its teacher, a file of other faces or labels is refused, and a
tiny training run distils from it without running a teacher."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from models.contract import CHECKPOINT_CONTRACT_FILE, load_contract, normalise
from models.predictors import onnx_predictor
from models.targets import CachedTargets, TargetsArgs, TargetsError, compute_targets, training_split

COUNTS = {"angry": 10, "happy": 12, "sad": 10}
SIZE = 12  # the conftest's tiny faces and tiny linear ONNX model


@pytest.fixture
def tiny_fer(make_parquet: Callable[..., Path]) -> Path:
    make_parquet("test", {"angry": 3, "happy": 3, "sad": 3}, seed=1)
    return make_parquet("train", COUNTS, corrupt=1)


@pytest.fixture
def tiny_model(tiny_fer: Path, linear_onnx: Callable[..., Path]) -> Path:
    return linear_onnx(tiny_fer / "tiny_model", seed=3)


def _args(data: Path, out: Path, **kw: object) -> TargetsArgs:
    settings: dict[str, object] = {"output": out, "data_dir": data, "image_size": SIZE, "val_fraction": 0.25, **kw}
    return TargetsArgs(**settings)  # type: ignore[arg-type]


def test_cached_logits_reproduce_the_onnx_model(tiny_fer: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = compute_targets(_args(tiny_fer, tmp_path / "t.npz", model=tiny_model)).save(tmp_path / "t.npz")
    cached = CachedTargets.load(out)
    split = training_split(tiny_fer, "angry,happy,sad", SIZE, 0.25, 42)
    assert cached.labels == ("angry", "happy", "sad")
    assert np.array_equal(cached.indices, split.train_idx) and cached.ids == split.train_ids
    assert np.array_equal(cached.y, split.faces.labels[split.train_idx])
    assert cached.meta["source"]["name"] == "tiny" and cached.meta["source"]["kind"] == "onnx"
    assert cached.meta["split"]["split_seed"] == 42 and cached.meta["n_val"] == len(split.val_idx)
    assert cached.accuracy() == pytest.approx(cached.meta["train_accuracy"])
    # The other way: the model run directly, one face at a time, on a few of the same faces.
    contract = load_contract(tiny_model)
    predict = onnx_predictor(tiny_model, contract)
    for row in (0, 5, len(cached.indices) - 1):
        face = split.faces.images[split.train_idx[row]][None]
        np.testing.assert_allclose(cached.logits[row], predict(normalise(face, contract))[0], atol=1e-5)


def test_columns_follow_the_runs_label_order(tiny_fer: Path, tiny_model: Path, tmp_path: Path) -> None:
    cached = compute_targets(_args(tiny_fer, tmp_path / "t.npz", model=tiny_model, classes="sad,happy,angry"))
    split = training_split(tiny_fer, "sad,happy,angry", SIZE, 0.25, 42)
    assert cached.labels == ("sad", "happy", "angry") and cached.ids == split.train_ids
    contract = load_contract(tiny_model)  # angry, happy, sad
    direct = onnx_predictor(tiny_model, contract)(normalise(split.faces.images[split.train_idx], contract))
    np.testing.assert_allclose(cached.logits, direct[:, [2, 1, 0]], atol=1e-5)


def test_cached_logits_reproduce_cnn_teachers(tiny_fer: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from models.architectures import TeacherCNN, TeacherEnsemble
    from models.contract import Preprocessing
    from models.loop import to_tensors

    torch.manual_seed(0)
    members = [TeacherCNN(1, 3).eval() for _ in range(2)]
    paths = []
    for i, member in enumerate(members):
        paths.append(tmp_path / f"t{i}.pt")
        torch.save(member.state_dict(), paths[-1])
    args = _args(tiny_fer, tmp_path / "t.npz", teacher_checkpoint=",".join(map(str, paths)), teacher_flip=True,
                 device="cpu")  # fmt: skip
    cached = compute_targets(args)
    assert cached.meta["source"]["kind"] == "cnn-teachers" and cached.meta["source"]["flip_averaged"] is True
    split = training_split(tiny_fer, "angry,happy,sad", SIZE, 0.25, 42)
    faces = to_tensors(split.faces.subset(split.train_idx[:4]), Preprocessing(), torch.device("cpu"))
    with torch.no_grad():
        direct = TeacherEnsemble(members, flip_average=True)(faces.x).numpy()
    np.testing.assert_allclose(cached.logits[:4], direct, atol=1e-5)


def test_a_file_of_other_faces_or_labels_is_refused(tiny_fer: Path, tiny_model: Path, tmp_path: Path) -> None:
    cached = CachedTargets.load(compute_targets(_args(tiny_fer, tmp_path / "t.npz", model=tiny_model))
                                .save(tmp_path / "t.npz"))  # fmt: skip
    cached.check_matches(("angry", "happy", "sad"), training_split(tiny_fer, None, SIZE, 0.25, 42))  # the same run
    with pytest.raises(TargetsError, match=r"not this run's training faces.*--split-seed 42"):
        cached.check_matches(("angry", "happy", "sad"), training_split(tiny_fer, None, SIZE, 0.25, 7))
    with pytest.raises(TargetsError, match=r"holds 25 faces, this run trains on 29"):
        cached.check_matches(("angry", "happy", "sad"), training_split(tiny_fer, None, SIZE, 0.1, 42))
    with pytest.raises(TargetsError, match=r"labels \['angry', 'happy', 'sad'\] are not this run's"):
        cached.check_matches(("angry", "happy"), training_split(tiny_fer, "angry,happy", SIZE, 0.25, 42))
    # The teacher must have the run's classes.
    with pytest.raises(TargetsError, match="a teacher must have the run's classes"):
        compute_targets(_args(tiny_fer, tmp_path / "x.npz", model=tiny_model, classes="angry,happy"))
    # Files that are not targets files.
    np.savez(tmp_path / "other.npz", logits=np.zeros((2, 3)))
    with pytest.raises(TargetsError, match="not an emotion targets file"):
        CachedTargets.load(tmp_path / "other.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(TargetsError, match="not a readable"):
        CachedTargets.load(tmp_path / "text.npz")
    with pytest.raises(TargetsError, match="no such targets file"):
        CachedTargets.load(tmp_path / "missing.npz")


def test_exactly_one_teacher_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one teacher"):
        TargetsArgs(output=tmp_path / "t.npz")
    with pytest.raises(ValueError, match="exactly one teacher"):
        TargetsArgs(output=tmp_path / "t.npz", model=tmp_path, teacher_checkpoint="a.pt")
    with pytest.raises(ValueError, match="--teacher-flip is for --teacher-checkpoint"):
        TargetsArgs(output=tmp_path / "t.npz", model=tmp_path, teacher_flip=True)


def test_the_targets_command_writes_the_file(tiny_fer: Path, tiny_model: Path, tmp_path: Path) -> None:
    from serve import cli

    out = tmp_path / "cmd" / "t.npz"
    argv = ["targets", "--model", str(tiny_model), "--data-dir", str(tiny_fer), "--output", str(out),
            "--image-size", str(SIZE), "--val-fraction", "0.25"]  # fmt: skip
    assert cli.main(argv) == 0
    assert CachedTargets.load(out).logits.shape == (25, 3)
    assert cli.main([*argv[:-4], "--classes", "angry,happy"]) == 2  # a clear error, not a traceback


# ----------------------------------------------------------------------------------------------- training from them


def _train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data-dir", str(data), "--output-dir", str(out), "--image-size", str(SIZE), "--preset", "micro-p4",
        "--epochs", "1", "--batch-size", "8", "--no-wandb", "--threads", "1", "--val-fraction", "0.25",
        "--max-batches-per-epoch", "2", *extra,
    ]  # fmt: skip


@pytest.mark.train
@pytest.mark.parametrize("distill", ["soft", "hard"])
def test_training_distils_from_cached_logits_without_a_teacher(
    tiny_fer: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, distill: str
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import models.train as train

    targets = compute_targets(_args(tiny_fer, tmp_path / "t.npz", model=tiny_model)).save(tmp_path / "t.npz")

    def no_teacher(*args: object, **kwargs: object) -> None:
        raise AssertionError("a teacher ran")

    monkeypatch.setattr(train, "train_teacher", no_teacher)
    out = tmp_path / "run"
    assert train.main(_train_argv(tiny_fer, out, "--distill", distill, "--teacher-logits", str(targets))) == 0
    assert not (out / "teacher").exists()
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in rows] == [("student", 1)]
    report = json.loads((out / "final_report.json").read_text())
    assert report["teacher"]["source"]["name"] == "tiny" and 0.0 <= report["test_accuracy"] <= 1.0
    contract = load_contract(out / "best", CHECKPOINT_CONTRACT_FILE, require_onnx=False)
    assert "cached logits of tiny 0" in contract.architecture

    with pytest.raises(TargetsError, match="not this run's training faces"):
        train.main(_train_argv(tiny_fer, tmp_path / "other", "--teacher-logits", str(targets), "--split-seed", "7"))


def test_teacher_logits_replace_the_teacher_flags() -> None:
    pytest.importorskip("torch")
    from models.train import TrainArgs

    with pytest.raises(ValueError, match="drop --teacher-checkpoint, --teacher-flip"):
        TrainArgs(teacher_logits="t.npz", teacher_checkpoint="a.pt", teacher_flip=True)
    with pytest.raises(ValueError, match="drop --distill=none"):
        TrainArgs(teacher_logits="t.npz", distill="none")
    with pytest.raises(ValueError, match="drop --teacher-only"):
        TrainArgs(teacher_logits="t.npz", teacher_only=True)


def test_cached_logits_follow_the_rows_of_each_batch() -> None:
    torch = pytest.importorskip("torch")
    from models.loop import Tensors, batches

    n = 10
    x, y = torch.randn(n, 1, 4, 4), torch.arange(n) % 3
    logits = torch.stack([torch.arange(n, dtype=torch.float32), torch.zeros(n), torch.zeros(n)], dim=1)
    train = Tensors(x, y, targets=logits)
    seen = []
    for bx, by, targets in batches(train, 4, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert targets is not None
        rows = targets[:, 0].long()  # column 0 holds each row's index
        assert torch.equal(x[rows], bx) and torch.equal(y[rows], by)
        seen += rows.tolist()
    assert sorted(seen) == list(range(n))
    assert all(t is None for _, _, t in batches(Tensors(x, y), 4, shuffle=False))
    with pytest.raises(ValueError, match="9 cached logits for 10"):
        Tensors(x, y, targets=logits[:9])
