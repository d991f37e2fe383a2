"""Fuzz the running service with hostile requests; fail on any 5xx or if it is unhealthy afterwards.

    python tools/fuzz_service.py --requests 10000            # starts its own service on a private local Ray
    python tools/fuzz_service.py --url http://127.0.0.1:8000 --api-key KEY

Requests: random bytes under every content type, truncated and bit-flipped images, huge declared dimensions,
decompression bombs, oversized bodies, broken multipart, wrong fields, too many files, wrong methods and paths.

A shed answer (503 ``overloaded`` + Retry-After: the service is busy, which depends on the machine, not on the
request) is not a failure: the request is sent again after Retry-After, until it is admitted (at most
``MAX_SHED_RETRIES`` times), so that every hostile request is really processed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import os
import random
import secrets
import struct
import sys
import time
import zlib
from collections.abc import Callable
from typing import Any

import httpx
from PIL import Image

TYPES = ["image/jpeg", "image/png", "image/webp", "text/plain", "application/octet-stream", "", "image/gif",
         "multipart/form-data", "multipart/form-data; boundary=zz", "image/png; charset=utf-8"]  # fmt: skip
Req = dict[str, Any]
REQUEST_TIMEOUT_S = 120.0  # a hang guard: a transport error (timeout) fails the run
MAX_SHED_RETRIES = 60  # Retry-After is 1 s by default: a request shed a minute long means a stuck service


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


class Generator:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        seeds = [Image.effect_noise((s, s), 60).convert(m) for s, m in ((48, "L"), (160, "RGB"), (64, "RGBA"))]
        self.valid = [_encode(img, fmt) for img in seeds for fmt in ("PNG", "JPEG", "WEBP") if
                      not (fmt == "JPEG" and img.mode == "RGBA")]  # fmt: skip
        self.bomb = _encode(Image.new("1", (20_000, 20_000)), "PNG")
        self.cases: list[Callable[[], Req]] = [
            self.random_bytes, self.truncated, self.bitflip, self.huge_dims, self.valid_image, self.multipart_wrong,
            self.batch_mixed, self.too_many, self.wrong_method, self.oversized, self.bomb_case, self.broken_multipart,
        ]  # fmt: skip

    def next(self) -> Req:
        return self.rng.choice(self.cases)()

    def _raw(self, data: bytes, ctype: str | None = None) -> Req:
        ctype = self.rng.choice(TYPES) if ctype is None else ctype
        headers = {"content-type": ctype} if ctype else {}
        return {"method": "POST", "url": "/v1/classify", "content": data, "headers": headers}

    def random_bytes(self) -> Req:
        return self._raw(self.rng.randbytes(self.rng.choice([0, 1, 7, 100, 5000, 60000])))

    def truncated(self) -> Req:
        data = self.rng.choice(self.valid)
        return self._raw(data[: self.rng.randrange(0, len(data))], self.rng.choice(TYPES[:3]))

    def bitflip(self) -> Req:
        data = bytearray(self.rng.choice(self.valid))
        for _ in range(self.rng.randint(1, 20)):
            data[self.rng.randrange(len(data))] = self.rng.randrange(256)
        return self._raw(bytes(data), self.rng.choice(TYPES[:3]))

    def huge_dims(self) -> Req:
        w, h = self.rng.choice([(0, 5), (1, 1), (65535, 65535), (2**31 - 1, 1), (100_000, 3_000), (5000, 5000)])
        return self._raw(_png_header(w, h), "image/png")

    def valid_image(self) -> Req:
        return self._raw(self.rng.choice(self.valid), self.rng.choice(TYPES[:3]))

    def bomb_case(self) -> Req:
        return self._raw(self.bomb, "image/png")

    def oversized(self) -> Req:
        return self._raw(b"\xff\xd8\xff" + b"\0" * 11_000_000, "image/jpeg")

    def multipart_wrong(self) -> Req:
        field = self.rng.choice(["image", "files", "FILE", "", "file[]", "file"])
        return {"method": "POST", "url": "/v1/classify", "files": {field: ("x", self.rng.choice(self.valid))}}

    def batch_mixed(self) -> Req:
        items = [
            self.rng.choice([*self.valid, b"", b"junk", self.valid[0][:50]]) for _ in range(self.rng.randint(1, 8))
        ]
        return {"method": "POST", "url": "/v1/classify/batch", "files": [("files", ("f", d)) for d in items]}

    def too_many(self) -> Req:
        n = self.rng.choice([33, 100, 2000])
        return {"method": "POST", "url": "/v1/classify/batch", "files": [("files", ("f", b"x"))] * n}

    def wrong_method(self) -> Req:
        method, url = self.rng.choice(
            [
                ("GET", "/v1/classify"),
                ("PUT", "/v1/classify/batch"),
                ("POST", "/v1/model"),
                ("GET", "/v2/nothing"),
                ("DELETE", "/healthz"),
                ("GET", "/v1/classify/%00"),
            ]
        )
        request_id = self.rng.choice(["ok-1", "x y" * 100, "%%%"])
        return {"method": method, "url": url, "headers": {"x-request-id": request_id}}

    def broken_multipart(self) -> Req:
        body = self.rng.choice(
            [
                b'--zz\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc',
                b"--zz--\r\n",
                self.rng.randbytes(300),
                b"--zz\r\n\r\n\r\n--zz--",
            ]
        )
        url = self.rng.choice(["/v1/classify", "/v1/classify/batch"])
        return {
            "method": "POST",
            "url": url,
            "content": body,
            "headers": {"content-type": "multipart/form-data; boundary=zz"},
        }


def is_shed(resp: httpx.Response) -> bool:
    """503 ``overloaded`` + Retry-After: load shedding, the documented answer of a busy service."""
    if resp.status_code != 503 or "retry-after" not in resp.headers:
        return False
    try:
        return bool(resp.json()["error"]["code"] == "overloaded")
    except (ValueError, KeyError, TypeError):
        return False


def _retry_after(resp: httpx.Response) -> float:
    try:
        return min(max(float(resp.headers["retry-after"]), 0.1), 5.0)
    except ValueError:
        return 1.0


async def fuzz(url: str, n: int, concurrency: int, api_key: str | None, seed: int = 0) -> collections.Counter[int]:
    """Send ``n`` hostile requests; the count of each final status (-1: transport error; -2: 1 when healthy
    afterwards). Shed answers are retried (see the module docstring); a request still shed at the end counts 503."""
    gen = Generator(random.Random(seed))
    statuses: collections.Counter[int] = collections.Counter()
    headers = {"x-api-key": api_key} if api_key else {}
    shed = 0
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=REQUEST_TIMEOUT_S) as client:
        queue = [gen.next() for _ in range(n)]

        async def send(req: Req) -> httpx.Response:
            nonlocal shed
            for _ in range(MAX_SHED_RETRIES):
                resp = await client.request(**req)
                if not is_shed(resp):
                    break
                shed += 1
                await asyncio.sleep(_retry_after(resp))
            return resp

        async def worker() -> None:
            while queue:
                req = queue.pop()
                try:
                    resp = await send(req)
                    statuses[resp.status_code] += 1
                    if resp.status_code >= 500:
                        print(
                            f"5xx: {resp.status_code} {req['method']} {req['url']} {resp.text[:200]}", file=sys.stderr
                        )
                except httpx.HTTPError as exc:
                    statuses[-1] += 1
                    print(f"transport error: {type(exc).__name__} {req['method']} {req['url']}", file=sys.stderr)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        ready = await client.get("/readyz")
        ok = await send({"method": "POST", "url": "/v1/classify", "content": gen.valid[0],
                         "headers": {"content-type": "image/png"}})  # fmt: skip
        statuses[-2] = int(ready.status_code == 200 and ok.status_code == 200)  # -2: healthy afterwards
    if shed:
        print(f"{shed} shed answers (503 overloaded + Retry-After) were retried", file=sys.stderr)
    return statuses


def start_service() -> tuple[str, str, Callable[[], None]]:
    """Start the app as ``emotion serve`` does (its Serve config, the settings below as flags) on a small private
    local Ray (2 CPUs, free ports), auth on with a fresh random key; returns ``(url, api_key, stop)``. The limits are
    small, so that the hostile cases reach them."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from serve.runtime import local, ports

    key = secrets.token_urlsafe(16)
    flags = {
        "port": ports.free_port(20000, 32767), "metrics_export_port": ports.free_port(20000, 32767), "auth": "on",
        "api_keys": key, "max_body_bytes": 2_000_000, "max_image_pixels": 4_000_000, "max_images_per_request": 8,
    }  # fmt: skip
    ray_options = local.RayOptions(num_cpus=2, object_store_mb=200, temp_dir=f"/tmp/rt{secrets.token_hex(3)}")
    url, _ = local.launch(flags, ray_options)
    return url, key, local.stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running service; default: start one on a private local Ray")
    parser.add_argument("--api-key")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    opts = parser.parse_args(argv)
    stop: Callable[[], None] = lambda: None  # noqa: E731
    url, key = opts.url, opts.api_key
    if url is None:
        url, key, stop = start_service()
    try:
        start = time.perf_counter()
        statuses = asyncio.run(fuzz(url, opts.requests, opts.concurrency, key))
        took = time.perf_counter() - start
    finally:
        stop()
    healthy = statuses.pop(-2) == 1
    errors_5xx = sum(v for k, v in statuses.items() if k >= 500 or k < 0)
    print(f"{opts.requests} requests in {took:.0f}s; statuses {dict(sorted(statuses.items()))}; "
          f"5xx/transport errors {errors_5xx}; healthy afterwards: {healthy}")  # fmt: skip
    return 0 if errors_5xx == 0 and healthy else 1


if __name__ == "__main__":
    sys.exit(main())
