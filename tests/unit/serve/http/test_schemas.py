"""serve.http.schemas: the OpenAPI contract matches what the handlers and the error tree really produce."""

from __future__ import annotations

import inspect

from serve import errors
from serve.core.imaging import MEDIA_TYPES
from serve.http.bodies import MULTIPART
from serve.http.schemas import BATCH_BODY, ERROR_RESPONSES, SINGLE_IMAGE_BODY


def service_errors() -> list[type[errors.ServiceError]]:
    return [
        cls for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.ServiceError) and cls.status not in (404, 405, 500)  # routing errors and bugs
    ]  # fmt: skip


def test_every_client_error_code_is_documented_under_its_status() -> None:
    found = service_errors()
    assert len(found) >= 10  # the checker sees the error tree
    for cls in found:
        assert cls.status in ERROR_RESPONSES, (cls.__name__, cls.status)
        assert cls.code in ERROR_RESPONSES[cls.status]["description"], (cls.__name__, cls.code)


def test_single_image_body_accepts_every_media_type_and_the_multipart_field() -> None:
    content = SINGLE_IMAGE_BODY["requestBody"]["content"]
    assert {kind for kind in MEDIA_TYPES if kind != "image/jpg"} | {MULTIPART} == set(content)
    assert content[MULTIPART]["schema"]["required"] == ["file"]


def test_batch_body_is_repeated_files() -> None:
    schema = BATCH_BODY["requestBody"]["content"][MULTIPART]["schema"]
    assert schema["required"] == ["files"] and schema["properties"]["files"]["type"] == "array"
