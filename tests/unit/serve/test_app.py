"""The application builder, inspected without Ray: graph wiring, bound arguments, per-deployment options."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray.serve import Application, Deployment

from models.contract import ContractError
from serve.app import build_app, compose
from serve.runtime.serve_config import load_serve_config
from serve.runtime.settings import DEFAULT_SERVE_CONFIG, Settings, SettingsError, load_settings


def graph(app: Application) -> tuple[Deployment, Deployment, Deployment]:
    """(ingress, preprocessor, model) of a built app, checking that each is bound where the graph says."""
    ingress: Deployment = app._bound_deployment
    pre_app, model_app = ingress.init_args[:2]
    assert isinstance(pre_app, Application) and isinstance(model_app, Application)
    preprocessor: Deployment = pre_app._bound_deployment
    assert preprocessor.init_args[0] is model_app  # one model deployment, shared by the ingress and preprocessor
    return ingress, preprocessor, model_app._bound_deployment


def test_build_app_wires_ingress_preprocessor_and_model() -> None:
    ingress, preprocessor, model = graph(build_app({}))
    assert (ingress.name, preprocessor.name, model.name) == ("Ingress", "Preprocessor", "EmotionModel")
    settings = load_settings()
    model_dir = str(settings.model_dir.resolve())
    assert model.init_args == (model_dir, settings.ort_threads, settings.ort_parallel_runs)
    _, pre_dir, max_pixels, detector, threads, quality = preprocessor.init_args
    assert (pre_dir, max_pixels, threads) == (model_dir, settings.max_image_pixels, settings.preprocess_threads)
    assert detector.max_faces == settings.max_faces
    assert quality.min_sharpness == settings.unreadable_min_sharpness
    bound_settings, digests = ingress.init_args[2:]
    assert isinstance(bound_settings, Settings) and bound_settings == settings and digests == ()


def test_build_app_args_override_the_defaults_and_null_means_default() -> None:
    ingress, preprocessor, model = graph(
        build_app({"ort_threads": 3, "max_image_pixels": 5000, "model_dir": None, "unreadable_min_face_px": 24})
    )
    assert model.init_args[1] == 3
    assert preprocessor.init_args[2] == 5000
    assert preprocessor.init_args[5].min_face_px == 24
    assert ingress.init_args[2].max_image_pixels == 5000


def test_an_emotion_variable_wins_over_build_app_args(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMOTION_ORT_THREADS", "2")
    _, _, model = graph(build_app({"ort_threads": 3, "ort_parallel_runs": 4}))
    assert model.init_args[1:] == (2, 4)  # the variable beats the file; the other arg still applies


def test_build_app_passes_key_digests_not_keys() -> None:
    ingress, _, _ = graph(build_app({"auth": "on", "api_keys": "secret-key"}))
    (digest,) = ingress.init_args[3]
    assert digest != "secret-key" and len(digest) == 64


def test_build_app_rejects_unknown_and_bad_args(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="ort_thread"):
        build_app({"ort_thread": 2})
    with pytest.raises(SettingsError, match="EMOTION_ORT_THREADS"):
        build_app({"ort_threads": 0})
    with pytest.raises(ContractError):
        build_app({"model_dir": str(tmp_path)})


def test_compose_applies_the_config_files_options() -> None:
    options = load_serve_config(DEFAULT_SERVE_CONFIG).deployment_options
    for deployment in graph(compose(load_settings(), options)):
        wanted = options[deployment.name]
        assert deployment.max_ongoing_requests == wanted["max_ongoing_requests"]
        assert deployment.max_queued_requests == wanted["max_queued_requests"]
        assert deployment.user_config == wanted.get("user_config")
        assert deployment.ray_actor_options["num_cpus"] == wanted["ray_actor_options"]["num_cpus"]
        if "autoscaling_config" in wanted:
            auto = deployment._deployment_config.autoscaling_config
            assert auto.max_replicas == wanted["autoscaling_config"]["max_replicas"]
        else:
            assert deployment.num_replicas == wanted["num_replicas"]


def test_compose_applies_only_the_options_given() -> None:
    options = {"EmotionModel": {"max_ongoing_requests": 3, "user_config": {"max_batch_size": 2}}}
    ingress, preprocessor, model = graph(compose(load_settings(), options))
    assert (model.max_ongoing_requests, model.user_config) == (3, {"max_batch_size": 2})
    assert ingress.user_config is None and preprocessor.user_config is None
    assert ingress.max_ongoing_requests != 3
