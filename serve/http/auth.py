"""API-key authentication: constant-time comparison of SHA-256 digests, no detail in the failure."""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence

from serve.errors import Forbidden, Unauthorized
from serve.runtime.settings import digest_key


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key from ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, or None."""
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = headers.get("x-api-key", "").strip()
    return key or None


def check_api_key(presented: str | None, digests: Sequence[str]) -> None:
    """Raise Unauthorized (no key) or Forbidden (wrong key).

    Every stored digest is compared, with ``hmac.compare_digest``, so the time taken does not depend on which key
    matched or how much of it did.
    """
    if presented is None:
        raise Unauthorized("an API key is required (Authorization: Bearer <key> or X-API-Key)")
    candidate = digest_key(presented)
    matched = False
    for digest in digests:
        matched |= hmac.compare_digest(candidate, digest)
    if not matched:
        raise Forbidden("the API key is not valid")
