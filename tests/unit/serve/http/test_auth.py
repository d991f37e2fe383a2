from __future__ import annotations

import pytest

from serve.errors import Forbidden, Unauthorized
from serve.http.auth import check_api_key, presented_key
from serve.runtime.settings import digest_key

DIGESTS = (digest_key("secret-1"), digest_key("secret-2"))


def test_presented_key_sources() -> None:
    assert presented_key({"authorization": "Bearer abc"}) == "abc"
    assert presented_key({"authorization": "bearer  abc "}) == "abc"
    assert presented_key({"x-api-key": "xyz"}) == "xyz"
    assert presented_key({"authorization": "Basic Zm9v"}) is None
    assert presented_key({}) is None


def test_check() -> None:
    check_api_key("secret-2", DIGESTS)
    with pytest.raises(Unauthorized):
        check_api_key(None, DIGESTS)
    with pytest.raises(Forbidden) as info:
        check_api_key("secret-3", DIGESTS)
    assert "secret" not in info.value.message
    with pytest.raises(Forbidden):
        check_api_key("anything", ())
