"""GET /demo: the page and its script are served from the package."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_demo_page_is_served(frames_client: TestClient) -> None:
    page = frames_client.get("/demo")
    assert page.status_code == 200 and "/v1/stream" in frames_client.get("/demo/demo.js").text
    assert "demo.js" in page.text


def test_demo_assets_outside_the_folder_are_not_served(frames_client: TestClient) -> None:
    assert frames_client.get("/demo/../../errors.py").status_code == 404
