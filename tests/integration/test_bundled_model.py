"""The bundled model folder models/default/: batch-invariant on real faces, and its metrics.json is reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from models.contract import DEFAULT_MODEL_DIR, load_contract, load_metrics
from models.data import default_fer_dir
from models.evaluate import evaluate, load_for_contract, make_session, preprocess

pytestmark = [pytest.mark.data, pytest.mark.timeout(900)]  # a hang guard: a full test-split evaluation


@pytest.fixture(scope="module")
def fer_dir() -> object:
    root = default_fer_dir()
    if not (root / "test.parquet").is_file():
        pytest.skip(f"no FER2013 parquet under {root} (set EMOTION_DATA_DIR)")
    return root


def test_bundled_model_is_batch_invariant_on_real_faces(fer_dir: object) -> None:
    contract = load_contract(DEFAULT_MODEL_DIR)
    faces = load_for_contract(fer_dir, "test", contract)  # type: ignore[arg-type]
    rows = np.random.default_rng(0).choice(len(faces), size=64, replace=False)
    x = preprocess(faces.images[np.sort(rows)], contract)
    session = make_session(DEFAULT_MODEL_DIR / contract.onnx_file, threads=2)
    name, out = contract.input.name, contract.output.name
    together = session.run([out], {name: x})[0]
    alone = np.concatenate([session.run([out], {name: x[i : i + 1]})[0] for i in range(len(x))])
    assert np.array_equal(together.argmax(1), alone.argmax(1)), "a face's answer changed with its batch neighbours"
    assert np.abs(together - alone).max() < 1e-4


def test_bundled_metrics_match_a_fresh_evaluation(fer_dir: object) -> None:
    shipped = load_metrics(DEFAULT_MODEL_DIR)
    assert shipped is not None, f"{DEFAULT_MODEL_DIR} ships no metrics.json (run `emotion quantize` to write it)"
    fresh = evaluate(
        DEFAULT_MODEL_DIR, fer_dir, "test", batch_size=shipped.get("batch_size", 64), threads=2, dedup=False
    )  # type: ignore[arg-type]
    assert fresh["n"] == shipped["n"]
    assert fresh["accuracy"] == pytest.approx(shipped["accuracy"], abs=1e-9)
    assert fresh["macro_f1"] == pytest.approx(shipped["macro_f1"], abs=1e-9)
