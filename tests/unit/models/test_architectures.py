"""The student networks: the hybrid (conv stem) DeiT saves, reloads and exports like a plain transformers model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from models.architectures import ConvStem, build_student, load_student  # noqa: E402
from models.contract import CHECKPOINT_CONTRACT_FILE, ModelContract  # noqa: E402
from models.export import ExportArguments, export  # noqa: E402
from models.predictors import make_session  # noqa: E402

pytestmark = pytest.mark.train

LABELS = ("angry", "happy", "sad")


def _hybrid(folder: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_student("hybrid-micro", LABELS, image_size=48, num_channels=1)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that a reload that dropped them would show
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    model.eval()
    model.save_pretrained(folder)
    ModelContract(name="hybrid", version="0", labels=LABELS, architecture="hybrid-micro").save(
        folder, CHECKPOINT_CONTRACT_FILE
    )
    return model


def test_hybrid_has_a_conv_stem_and_six_by_six_tokens() -> None:
    model = build_student("hybrid-micro", LABELS, image_size=48, num_channels=1)
    assert isinstance(model.deit.embeddings.patch_embeddings.projection, ConvStem)
    assert model.deit.embeddings.position_embeddings.shape[1] == 36 + 2  # 6x6 patches + class + distillation
    logits = model(pixel_values=torch.zeros(2, 1, 48, 48)).logits
    assert logits.shape == (2, 3)


def test_hybrid_reloads_with_the_same_weights(tmp_path: Path) -> None:
    model = _hybrid(tmp_path)
    again = load_student(tmp_path).eval()
    assert type(again).__name__ == "DeiTHybridForImageClassificationWithTeacher"
    x = torch.randn(4, 1, 48, 48)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=x).logits, again(pixel_values=x).logits)


def test_hybrid_exports_to_onnx_with_matching_logits(tmp_path: Path) -> None:
    model = _hybrid(tmp_path / "ckpt")
    export(ExportArguments(checkpoint=tmp_path / "ckpt", output=tmp_path / "onnx"))  # flip-averaged by default
    x = np.random.default_rng(0).standard_normal((3, 1, 48, 48)).astype(np.float32)
    onnx_logits = make_session(tmp_path / "onnx" / "model.onnx").run(["logits"], {"pixel_values": x})[0]
    with torch.no_grad():
        views = [model(pixel_values=torch.from_numpy(v)).logits for v in (x, np.ascontiguousarray(x[..., ::-1]))]
        torch_logits = ((views[0] + views[1]) / 2).numpy()
    assert np.abs(onnx_logits - torch_logits).max() < 1e-4


def test_unknown_architecture_is_a_clear_error(tmp_path: Path) -> None:
    _hybrid(tmp_path)
    config = (tmp_path / "config.json").read_text().replace("DeiTHybridForImageClassificationWithTeacher", "NoSuchNet")
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(ValueError, match="NoSuchNet"):
        load_student(tmp_path)


def test_hybrid_checkpoint_starts_a_new_run_with_other_classes(tmp_path: Path) -> None:
    model = _hybrid(tmp_path)
    again = build_student("micro-p4", ("happy", "sad"), image_size=48, num_channels=1, pretrained_dir=str(tmp_path))
    stem_again = again.deit.embeddings.patch_embeddings.projection
    assert isinstance(stem_again, ConvStem)  # the checkpoint's stem, not the preset's plain patch embedding
    assert again.config.id2label == {0: "happy", 1: "sad"}
    assert torch.equal(model.deit.embeddings.patch_embeddings.projection.proj.weight, stem_again.proj.weight)
