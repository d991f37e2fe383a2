"""Tiny generated datasets and model folders for the models/ tests (no real data needed)."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from models.contract import CHECKPOINT_CONTRACT_FILE, InputSpec, ModelContract

LABELS = ("angry", "happy", "sad")
SIZE = 12


def face_bytes(rng: np.random.Generator, size: int = SIZE, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(size, size), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def write_parquet(path: Path, rows: Sequence[tuple[str, bytes]]) -> Path:
    images = [{"bytes": data, "path": f"{path.stem}/{label}/{i}.png"} for i, (label, data) in enumerate(rows)]
    table = pa.table({"image": images, "label": [label for label, _ in rows]})
    pq.write_table(table, path)
    return path


@pytest.fixture
def make_parquet(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_parquet(split, counts={"angry": 3}, corrupt=0, seed=0)`` -> the dataset root."""

    def make(split: str, counts: dict[str, int], corrupt: int = 0, seed: int = 0) -> Path:
        rng = np.random.default_rng(seed)
        rows = [(label, face_bytes(rng)) for label, n in counts.items() for _ in range(n)]
        rows += [(next(iter(counts)), b"not an image")] * corrupt
        write_parquet(tmp_path / f"{split}.parquet", rows)
        return tmp_path

    return make


def tiny_contract(size: int = SIZE) -> ModelContract:
    return ModelContract(name="tiny", version="0", labels=LABELS, input=InputSpec(height=size, width=size))


def write_linear_onnx(folder: Path, contract: ModelContract, seed: int = 0) -> Path:
    """A linear classifier as ONNX (Flatten -> MatMul -> Add) plus config.json: an ONNX model folder without torch."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    spec = contract.input
    k = spec.channels * spec.height * spec.width
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array((rng.standard_normal((k, contract.num_classes)) / np.sqrt(k)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(contract.num_classes, np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", [spec.name], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["mm"]),
            helper.make_node("Add", ["mm", "b"], [contract.output.name]),
        ],
        "linear",
        [
            helper.make_tensor_value_info(
                spec.name, TensorProto.FLOAT, ["batch", spec.channels, spec.height, spec.width]
            )
        ],
        [helper.make_tensor_value_info(contract.output.name, TensorProto.FLOAT, ["batch", contract.num_classes])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / contract.onnx_file))
    contract.save(folder)
    return folder


@pytest.fixture
def linear_onnx() -> Callable[..., Path]:
    """Factory: ``linear_onnx(folder, contract=None, seed=0)`` writes a torch-free ONNX model folder."""

    def make(folder: Path, contract: ModelContract | None = None, seed: int = 0) -> Path:
        return write_linear_onnx(folder, contract or tiny_contract(), seed)

    return make


@pytest.fixture(scope="session")
def fer_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 48x48 dataset root with train/test parquet files (3 duplicated test faces occur in train)."""
    root = tmp_path_factory.mktemp("fer_like")
    rng = np.random.default_rng(1)
    train = [(label, face_bytes(rng, 48)) for label in (*LABELS, "fear") for _ in range(30)]
    test = [(label, face_bytes(rng, 48)) for label in (*LABELS, "fear") for _ in range(10)]
    test += [train[0], train[31], train[62]]  # angry, happy, sad faces that also occur in train
    write_parquet(root / "train.parquet", train)
    write_parquet(root / "test.parquet", test)
    return root


@pytest.fixture(scope="session")
def micro_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised micro-p4 DeiT checkpoint folder, as models/train.py writes it."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from models.architectures import build_student

    folder = tmp_path_factory.mktemp("micro_checkpoint")
    torch.manual_seed(0)
    model = build_student("micro-p4", LABELS, image_size=48, num_channels=1)
    model.save_pretrained(folder)
    ModelContract(name="micro", version="0", labels=LABELS, architecture="micro-p4").save(
        folder, CHECKPOINT_CONTRACT_FILE
    )
    return folder


@pytest.fixture(scope="session")
def micro_onnx(micro_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The micro checkpoint exported to an fp32 ONNX model folder."""
    from models.export import ExportArguments, export

    out = tmp_path_factory.mktemp("micro_onnx")
    export(ExportArguments(checkpoint=micro_checkpoint, output=out))
    return out
