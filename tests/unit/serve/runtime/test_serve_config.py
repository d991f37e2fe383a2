"""deploy/serve_config.yaml as `emotion serve` reads it: validation, and flags > EMOTION_* > file > defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from serve.core.batching import BatchConfig, CoalesceConfig
from serve.runtime.serve_config import ServeConfigError, load_serve_config, resolve_launch
from serve.runtime.settings import DEFAULT_SERVE_CONFIG, Settings, SettingsError, load_settings


def write_config(tmp_path: Path, edit: Any = None) -> Path:
    """A temp copy of the real config, optionally edited (``edit(document)``)."""
    document = yaml.safe_load(DEFAULT_SERVE_CONFIG.read_text())
    if edit is not None:
        edit(document)
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def args_of(document: dict[str, Any]) -> dict[str, Any]:
    args: dict[str, Any] = document["applications"][0]["args"]
    return args


def test_the_shipped_config_holds_one_app_with_its_deployment_options() -> None:
    config = load_serve_config(DEFAULT_SERVE_CONFIG)
    assert config.app["import_path"] == "serve.app:build_app"
    options = config.deployment_options
    assert set(options) == {"Ingress", "Preprocessor", "EmotionModel"}
    assert all("name" not in o for o in options.values())
    batching = BatchConfig(**options["EmotionModel"]["user_config"])  # valid for the deployment that reads it
    CoalesceConfig(**options["Ingress"]["user_config"])
    assert options["EmotionModel"]["max_ongoing_requests"] >= batching.max_batch_size  # or batches cannot fill
    assert "model_dir" not in config.args  # null = the setting's default
    assert set(config.args) <= set(Settings.model_fields)


def test_file_args_beat_defaults_env_beats_file_flags_beat_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def edit(doc: dict[str, Any]) -> None:
        args_of(doc).update(ort_threads=3, max_faces=7)
        doc["http_options"].update(port=8123, host="localhost")

    path = write_config(tmp_path, edit)
    settings, config = resolve_launch({"serve_config": path})
    assert config.path == path
    assert (settings.ort_threads, settings.max_faces, settings.port, settings.host) == (3, 7, 8123, "localhost")
    assert settings.max_body_bytes == load_settings().max_body_bytes  # untouched: the default

    monkeypatch.setenv("EMOTION_ORT_THREADS", "4")
    monkeypatch.setenv("EMOTION_PORT", "8124")
    settings, _ = resolve_launch({"serve_config": path})
    assert (settings.ort_threads, settings.max_faces, settings.port) == (4, 7, 8124)

    settings, _ = resolve_launch({"serve_config": path, "port": "8125", "ort_threads": 5})
    assert (settings.ort_threads, settings.port) == (5, 8125)


def test_env_var_names_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, lambda doc: args_of(doc).update(max_faces=9))
    monkeypatch.setenv("EMOTION_SERVE_CONFIG", str(path))
    settings, config = resolve_launch()
    assert config.path == path and settings.max_faces == 9


def test_http_options_take_host_and_port_from_the_settings(tmp_path: Path) -> None:
    def edit(doc: dict[str, Any]) -> None:
        del doc["http_options"]["host"], doc["http_options"]["port"]

    settings, config = resolve_launch({"serve_config": write_config(tmp_path, edit)})
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)  # absent from the file: the defaults
    http = config.http_options(load_settings(port=9001))
    assert http["port"] == 9001 and http["host"] == "127.0.0.1"
    assert http["request_timeout_s"] == config.document["http_options"]["request_timeout_s"]  # kept from the file


def test_an_unknown_arg_is_named(tmp_path: Path) -> None:
    path = write_config(tmp_path, lambda doc: args_of(doc).update(ort_thread=2))
    with pytest.raises(SettingsError, match="ort_thread"):
        resolve_launch({"serve_config": path})


def test_a_bad_arg_value_names_the_variable(tmp_path: Path) -> None:
    path = write_config(tmp_path, lambda doc: args_of(doc).update(ort_threads=0))
    with pytest.raises(SettingsError, match="EMOTION_ORT_THREADS"):
        resolve_launch({"serve_config": path})


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("applications: [unclosed\n", "not valid YAML"),
        ("applications:\n  - name: emotion\n    import_path: 12\n    bogus_field: 1\n", "not a valid Serve config"),
        ("proxy_location: Nowhere\napplications: []\n", "not a valid Serve config"),
        ("applications: []\n", "exactly one application"),
    ],
)
def test_broken_files_name_the_path(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ServeConfigError, match=problem) as info:
        load_serve_config(path)
    assert str(path) in str(info.value)


def test_a_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ServeConfigError, match="cannot read") as info:
        resolve_launch({"serve_config": path})
    assert str(path) in str(info.value)
