from __future__ import annotations

import re

import pytest

from serve import errors


def test_codes_are_unique_snake_case_and_statuses_are_http() -> None:
    codes = [cls.code for cls in errors.ALL_ERRORS]
    assert len(codes) == len(set(codes))
    for cls in errors.ALL_ERRORS:
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", cls.code), cls
        assert 400 <= cls.status <= 599, cls


@pytest.mark.parametrize(
    ("cls", "status"),
    [
        (errors.EmptyBody, 400), (errors.InvalidImage, 422), (errors.UnsupportedMediaType, 415),
        (errors.ImageTooLarge, 413), (errors.PayloadTooLarge, 413), (errors.TooManyImages, 413),
        (errors.MissingField, 422), (errors.Unauthorized, 401), (errors.Forbidden, 403), (errors.Overloaded, 503),
    ],
)  # fmt: skip
def test_documented_statuses(cls: type[errors.ServiceError], status: int) -> None:
    assert cls.status == status


def test_info_round_trip() -> None:
    info = errors.InvalidImage("bad").info()
    rebuilt = errors.from_info(info)
    assert isinstance(rebuilt, errors.InvalidImage) and rebuilt.message == "bad"
    assert isinstance(errors.from_info(errors.ErrorInfo("no_such_code", "x")), errors.InternalError)


def test_from_status_and_body() -> None:
    assert isinstance(errors.from_status(404, "x"), errors.NotFound)
    assert isinstance(errors.from_status(405, "x"), errors.MethodNotAllowed)
    assert isinstance(errors.from_status(418, "x"), errors.BadRequest)
    body = errors.error_body(errors.Forbidden("nope"), "rid-1")
    assert body == {"error": {"code": "forbidden", "message": "nope"}, "request_id": "rid-1"}
