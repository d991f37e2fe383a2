"""The application builder that the CLI and Serve config files (``import_path: serve.app:build_app``) use.

Graph: Ingress (FastAPI) -> Preprocessor -> EmotionModel. Replica counts, autoscaling and CPU shares belong in
``deploy/serve_config.yaml``; the decorators only hold safe single-machine defaults.
"""

# No `from __future__ import annotations`: Serve reads build_app's annotation to validate `args` as AppArgs.
from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application, Deployment

from models.contract import load_contract
from serve.core.frames import detector_config
from serve.deployments.ingress import Ingress
from serve.deployments.model import EmotionModel
from serve.deployments.preprocessor import Preprocessor
from serve.runtime.settings import Settings, load_settings


class AppArgs(BaseModel):
    """Builder arguments (``args:`` in a Serve config). Unset fields fall back to ``EMOTION_*`` settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_dir: str | None = Field(None, description="Model folder; default EMOTION_MODEL_DIR or models/default.")
    ort_threads: int | None = Field(None, ge=1, description="onnxruntime intra-op threads per session run.")
    ort_parallel_runs: int | None = Field(None, ge=1, description="Session runs at once per model replica.")
    max_images_per_request: int | None = Field(None, ge=1, description="Batch request image limit.")
    max_image_pixels: int | None = Field(None, ge=1, description="Pixel limit per image.")
    max_body_bytes: int | None = Field(None, ge=1024, description="Request body byte limit.")

    def settings(self) -> Settings:
        overrides = {k: v for k, v in self.model_dump().items() if v is not None}
        return load_settings(**overrides)


def build_app(args: AppArgs) -> Application:
    """The Serve application builder (``import_path: serve.app:build_app``; one parameter, as Serve requires).

    Args:
        args: the config file's ``args:``; unset fields fall back to ``EMOTION_*`` settings.

    Raises:
        serve.runtime.settings.SettingsError: a bad ``EMOTION_*`` value.
        models.contract.ContractError: the model folder is missing or its config.json is malformed.
    """
    if not isinstance(args, AppArgs):  # a plain dict when called outside Serve's validation
        args = AppArgs.model_validate(args or {})
    return compose(args.settings())


def compose(settings: Settings) -> Application:
    """Compose the deployment graph from validated settings (the CLI passes its own)."""
    model_dir = str(settings.model_dir.resolve())
    load_contract(model_dir)  # fail at build time, not in a replica restart loop
    model = _deployment(EmotionModel).bind(model_dir, settings.ort_threads, settings.ort_parallel_runs)
    preprocessor = _deployment(Preprocessor).bind(
        model, model_dir, settings.max_image_pixels, detector_config(settings)
    )
    return _deployment(Ingress).bind(preprocessor, model, settings, settings.key_digests())


def _deployment(obj: object) -> Deployment:
    # @serve.deployment turns the classes into Deployments; type checkers still see the classes.
    assert isinstance(obj, Deployment)
    return obj
