"""Process settings: one pydantic-settings class read from ``EMOTION_*`` environment variables.

Read once at start-up (``load_settings``), never at import. A bad value fails fast with a message that names the
environment variable and the value, e.g. ``EMOTION_PORT='abc': Input should be a valid integer``.
"""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.contract import DEFAULT_MODEL_DIR
from serve.core.quality import QualityRule

ENV_PREFIX = "EMOTION_"
# The one Serve config: `emotion serve`, `serve run`, `serve deploy` and the KubeRay manifest all run it.
DEFAULT_SERVE_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "serve_config.yaml"


class SettingsError(ValueError):
    """An ``EMOTION_*`` setting is missing, malformed or inconsistent."""


class Settings(BaseSettings):
    """Everything the service reads from its environment. Scaling and resources live in deploy/ instead."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="ignore", frozen=True)

    model_dir: Path = Field(DEFAULT_MODEL_DIR, description="Folder holding model.onnx + config.json.")
    host: str = Field("127.0.0.1", description="HTTP listen address. Anything but loopback turns auth on (auto).")
    port: int = Field(8000, ge=1, le=65535, description="HTTP listen port.")
    api_keys: SecretStr = Field(SecretStr(""), description="Comma-separated API keys.")
    api_keys_file: Path | None = Field(None, description="File with one API key per line (# comments allowed).")
    auth: Literal["auto", "on", "off"] = Field("auto", description="auto = on unless host is loopback.")
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Largest accepted request body in bytes.")
    max_image_pixels: int = Field(16_000_000, ge=1, description="Largest accepted image (width x height).")
    max_images_per_request: int = Field(32, ge=1, le=1024, description="Most images in one batch request.")
    max_inflight_requests: int = Field(256, ge=1, description="Per ingress replica; beyond it -> 503 overloaded.")
    max_inflight_images: int = Field(
        128, ge=1, description="Per ingress replica: images (a frame counts 4) being processed; beyond -> 503."
    )
    max_queue_delay_s: float = Field(
        1.0, ge=0, description="Per ingress replica: 503 while the oldest request in progress is older (0 = off)."
    )
    request_timeout_s: float = Field(30.0, gt=0, description="Give up on a request after this long (503).")
    retry_after_s: int = Field(1, ge=0, description="Retry-After header value sent with 503 overloaded.")
    ort_threads: int = Field(1, ge=1, le=256, description="onnxruntime intra_op_num_threads per model replica.")
    ort_parallel_runs: int = Field(
        2, ge=1, le=64, description="Per model replica: a batch is split into this many session runs at once."
    )
    metrics_export_port: int = Field(8080, ge=1, le=65535, description="Ray's Prometheus export port.")
    object_store_mb: int = Field(256, ge=64, description="Embedded Ray object store size (emotion serve).")
    serve_config: Path = Field(
        DEFAULT_SERVE_CONFIG, description="Serve config file that emotion serve runs (scaling, user_config, HTTP)."
    )
    preprocess_threads: int = Field(
        2, ge=1, le=64, description="Per preprocessor replica: threads that decode frames and detect faces."
    )
    ready_timeout_s: float = Field(5.0, gt=0, description="How long /readyz waits for the model replica's answer.")
    # Frames and streams (/v1/analyze, /v1/stream): see reports/detection/README.md for how these were chosen.
    detector_threshold: float = Field(0.45, gt=0, lt=1, description="CenterFace score threshold.")
    detector_input_size: int = Field(640, ge=0, le=4096, description="Frame long side for detection (0 = native).")
    detector_threads: int = Field(1, ge=1, le=64, description="onnxruntime threads of the face detector.")
    min_face_px: int = Field(0, ge=0, description="Drop faces smaller than this (box width or height, pixels).")
    max_faces: int = Field(64, ge=1, le=1024, description="Most faces classified per frame (best scores kept).")
    # Unreadable faces (serve.core.quality): the defaults are QualityRule's, chosen in reports/real_photos/README.md.
    unreadable_min_face_px: float = Field(
        QualityRule.min_face_px, ge=0, description="A face box (or uploaded crop) with a shorter side is too_small."
    )
    unreadable_min_sharpness: float = Field(
        QualityRule.min_sharpness, ge=0, description="A model input crop with less Laplacian variance is blurred."
    )
    unreadable_min_score: float = Field(
        QualityRule.min_score, ge=0, lt=1, description="A detection scored below this is weak_detection."
    )
    stream_max_pending: int = Field(2, ge=0, le=64, description="Frames waiting per stream before the oldest drops.")
    stream_concurrency: int = Field(2, ge=1, le=16, description="Frames of one stream analysed at once.")

    @field_validator("host")
    @classmethod
    def _host_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @model_validator(mode="after")
    def _auth_needs_keys(self) -> Settings:
        if self.auth_enabled and not self.key_digests():
            raise ValueError(
                f"authentication is on (EMOTION_AUTH={self.auth!r}, EMOTION_HOST={self.host!r}) but no API keys are "
                "set: give EMOTION_API_KEYS or EMOTION_API_KEYS_FILE, or listen on 127.0.0.1"
            )
        return self

    @property
    def auth_enabled(self) -> bool:
        if self.auth == "auto":
            return not is_loopback(self.host)
        return self.auth == "on"

    def key_digests(self) -> tuple[str, ...]:
        """SHA-256 hex digests of the configured API keys; only digests ever leave this process."""
        keys = [k.strip() for k in self.api_keys.get_secret_value().split(",")]
        if self.api_keys_file is not None:
            try:
                lines = self.api_keys_file.read_text().splitlines()
            except OSError as exc:
                raise ValueError(f"EMOTION_API_KEYS_FILE={str(self.api_keys_file)!r}: {exc.strerror}") from None
            keys += [line.strip() for line in lines if not line.lstrip().startswith("#")]
        return tuple(sorted({digest_key(k) for k in keys if k}))


def digest_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings; raise SettingsError naming the variable and its bad value."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]  # keys are checked by pydantic
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ENV_PREFIX + "_".join(str(p) for p in err["loc"]).upper() if err["loc"] else "settings"
            value = err.get("input")
            shown = "" if not err["loc"] or isinstance(value, dict) or "api_keys" in key.lower() else f"={value!r}"
            problems.append(f"{key}{shown}: {err['msg'].removeprefix('Value error, ')}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
