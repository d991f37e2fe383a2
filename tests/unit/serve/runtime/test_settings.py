from __future__ import annotations

from pathlib import Path

import pytest

from models.contract import DEFAULT_MODEL_DIR
from serve.runtime.settings import SettingsError, digest_key, is_loopback, load_settings


def test_defaults() -> None:
    s = load_settings()
    assert (s.host, s.port, s.model_dir) == ("127.0.0.1", 8000, DEFAULT_MODEL_DIR)
    assert not s.auth_enabled and s.key_digests() == ()


def test_bad_value_names_the_variable_and_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMOTION_PORT", "abc")
    with pytest.raises(SettingsError, match=r"EMOTION_PORT='abc'"):
        load_settings()


@pytest.mark.parametrize(("key", "value"), [("EMOTION_PORT", "70000"), ("EMOTION_ORT_THREADS", "0"),
                                            ("EMOTION_AUTH", "maybe"), ("EMOTION_MAX_IMAGE_PIXELS", "-1")])  # fmt: skip
def test_out_of_range(monkeypatch: pytest.MonkeyPatch, key: str, value: str) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError, match=key):
        load_settings()


def test_auth_is_on_by_default_off_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMOTION_HOST", "0.0.0.0")
    with pytest.raises(SettingsError, match="no API keys"):
        load_settings()
    monkeypatch.setenv("EMOTION_API_KEYS", "k1, k2")
    s = load_settings()
    assert s.auth_enabled and s.key_digests() == tuple(sorted({digest_key("k1"), digest_key("k2")}))
    assert "k1" not in repr(s)


def test_keys_file_and_explicit_auth(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# comment\nalpha\n\nbeta\n")
    monkeypatch.setenv("EMOTION_API_KEYS_FILE", str(keys))
    monkeypatch.setenv("EMOTION_AUTH", "on")
    s = load_settings()
    assert s.auth_enabled and len(s.key_digests()) == 2
    monkeypatch.setenv("EMOTION_API_KEYS_FILE", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match="EMOTION_API_KEYS_FILE"):
        load_settings()


def test_auth_off_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMOTION_HOST", "0.0.0.0")
    monkeypatch.setenv("EMOTION_AUTH", "off")
    assert not load_settings().auth_enabled


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
