"""The per-replica state the routes share: lookup from a connection, request ids, the model reference."""

from __future__ import annotations

from types import SimpleNamespace

from models.contract import DEFAULT_MODEL_DIR, load_contract
from serve.http.state import ServiceState, get_state, request_id
from serve.runtime.metrics import null_ingress_metrics
from serve.runtime.settings import load_settings


def test_state_lookup_request_id_and_model_ref() -> None:
    contract = load_contract(DEFAULT_MODEL_DIR, require_onnx=False)
    state = ServiceState(pipeline=None, settings=load_settings(), contract=contract, model_metrics=None,  # type: ignore[arg-type]
                         metrics=null_ingress_metrics())  # fmt: skip
    conn = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(service=state)), state=SimpleNamespace())
    assert get_state(conn) is state  # type: ignore[arg-type]
    assert request_id(conn) == "-"  # type: ignore[arg-type]
    conn.state.request_id = "abc-123"
    assert request_id(conn) == "abc-123"  # type: ignore[arg-type]
    assert state.model_ref == {"name": contract.name, "version": contract.version}
    assert (state.ongoing, state.open_streams, state.admission) == (0, 0, None)
