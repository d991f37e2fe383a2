"""/healthz, /readyz and /v1/model through the real FastAPI app (in-process pipeline, tests/unit/serve/http)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.unit.serve.http.test_webapp import CLF, assert_error, make_client


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with make_client() as c:
        yield c


def test_health_ready_model_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    info = client.get("/v1/model").json()
    assert info["labels"] == list(CLF.labels) and info["metrics"] == {"a": 1}
    assert info["input"]["tensor"]["height"] == CLF.contract.input.height
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert {"image/jpeg", "image/png", "image/webp", "multipart/form-data"} <= set(body)
    assert "files" in str(spec["paths"]["/v1/classify/batch"]["post"]["requestBody"])


def test_not_ready_is_503() -> None:
    client = make_client()

    async def not_ready() -> bool:
        raise RuntimeError("model replica unreachable")

    client.app.state.service.pipeline.ready = not_ready  # type: ignore[attr-defined]
    assert_error(client.get("/readyz"), 503, "not_ready")


def test_model_info_is_the_contract_not_a_copy(client: TestClient) -> None:
    info = client.get("/v1/model").json()
    assert (info["name"], info["version"]) == (CLF.contract.name, CLF.contract.version)
    assert info["input"]["preprocessing"]["mean"] == list(CLF.contract.preprocessing.mean)
