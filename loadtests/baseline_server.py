"""The plain single-process FastAPI + onnxruntime server users would pick instead of the Ray graph.

Same API shape as the service for ``/v1/classify`` (raw image body or multipart ``file``) and
``/v1/classify/batch`` (multipart ``files``), same preprocessing per the model contract. ``--noop`` serves the same
routes without decoding or inference (constant answers): the framework limit.

    python -m loadtests.baseline_server --port 8101 [--noop] [--threads 0]
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from loadtests.inference import Classifier
from models.contract import DEFAULT_MODEL_DIR, load_contract

Infer = Callable[[list[bytes]], list[dict[str, Any]]]


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}, "request_id": uuid.uuid4().hex}, status)


async def _images(request: Request, field: str) -> list[bytes]:
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form()
        return [await part.read() for part in form.getlist(field) if not isinstance(part, str)]
    return [await request.body()]


def create_app(infer: Infer, model: dict[str, str], *, threaded: bool = True) -> FastAPI:
    """The routes around ``infer(images) -> [{label, probabilities}]``, run in the threadpool when ``threaded``."""
    app = FastAPI(title="plain baseline")

    async def run(images: list[bytes]) -> list[dict[str, Any]]:
        return await run_in_threadpool(infer, images) if threaded else infer(images)

    @app.get("/healthz")
    @app.get("/readyz")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model_info() -> dict[str, str]:
        return model

    @app.post("/v1/classify", response_model=None)
    async def classify(request: Request) -> dict[str, Any] | JSONResponse:
        images = await _images(request, "file")
        if len(images) != 1 or not images[0]:
            return _error(400, "bad_request", "send exactly one image")
        try:
            (result,) = await run(images)
        except OSError as exc:
            return _error(422, "invalid_image", str(exc))
        return {"request_id": uuid.uuid4().hex, **result, "model": model}

    @app.post("/v1/classify/batch", response_model=None)
    async def classify_batch(request: Request) -> dict[str, Any] | JSONResponse:
        images = await _images(request, "files")
        if not images:
            return _error(400, "bad_request", "send at least one file")
        try:
            results = await run(images)
        except OSError as exc:
            return _error(422, "invalid_image", str(exc))
        indexed = [{"index": i, **r} for i, r in enumerate(results)]
        return {"request_id": uuid.uuid4().hex, "results": indexed, "model": model}

    return app


def onnx_infer(classifier: Classifier) -> Infer:
    labels = classifier.labels

    def infer(images: list[bytes]) -> list[dict[str, Any]]:
        probs = classifier.classify(images)
        return [
            {"label": labels[int(np.argmax(row))], "probabilities": dict(zip(labels, row.tolist(), strict=True))}
            for row in probs
        ]

    return infer


def noop_infer(labels: tuple[str, ...]) -> Infer:
    answer = {"label": labels[0], "probabilities": {label: 1.0 if i == 0 else 0.0 for i, label in enumerate(labels)}}
    return lambda images: [answer] * len(images)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = one per core)")
    parser.add_argument("--noop", action="store_true", help="no decoding, no inference: the framework limit")
    args = parser.parse_args(argv)
    contract = load_contract(args.model_dir)
    model = {"name": contract.name, "version": contract.version}
    if args.noop:
        infer = noop_infer(contract.labels)
    else:
        infer = onnx_infer(Classifier.load(args.model_dir, threads=args.threads))
    uvicorn.run(
        create_app(infer, model, threaded=not args.noop),
        host=args.host,
        port=args.port,
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
