"""The application builder: ``serve run`` / ``serve deploy`` / KubeRay (``import_path: serve.app:build_app``) and
``emotion serve`` all build the graph here, from the one Serve config file.

Graph: Ingress (FastAPI) -> EmotionModel for uploaded faces, Ingress -> Preprocessor -> EmotionModel for frames.
Replica counts, autoscaling, CPU shares, queue bounds and ``user_config`` live in ``deploy/serve_config.yaml``; the
decorators hold none of them.
"""

from collections.abc import Mapping
from typing import Any

from ray.serve import Application, Deployment

from models.contract import load_contract
from serve.core.frames import detector_config, quality_rule
from serve.deployments.ingress import Ingress
from serve.deployments.model import EmotionModel
from serve.deployments.preprocessor import Preprocessor
from serve.runtime.serve_config import settings_over
from serve.runtime.settings import Settings

DeploymentOptions = Mapping[str, Mapping[str, Any]]


def build_app(args: dict[str, Any]) -> Application:
    """The Serve application builder (one parameter, as Serve requires).

    Args:
        args: the config file's ``args:``: ``EMOTION_*`` settings by name in lower case (``model_dir``,
            ``ort_threads``...). As for ``emotion serve``, an ``EMOTION_*`` variable set in the environment wins over
            the file's value; null or absent args fall back to the settings' defaults.

    Raises:
        serve.runtime.settings.SettingsError: an unknown arg or a bad value.
        models.contract.ContractError: the model folder is missing or its config.json is malformed.
    """
    return compose(settings_over(args or {}, where="serve.app:build_app args"))


def compose(settings: Settings, options: DeploymentOptions | None = None) -> Application:
    """Compose the deployment graph from validated settings.

    Args:
        settings: the resolved settings.
        options: ``Deployment.options`` per deployment name (``emotion serve`` passes the config file's; Serve
            applies them itself for ``serve run`` / ``serve deploy``).
    """
    model_dir = str(settings.model_dir.resolve())
    load_contract(model_dir)  # fail at build time, not in a replica restart loop
    opts = options or {}
    model = _deployment(EmotionModel, opts).bind(model_dir, settings.ort_threads, settings.ort_parallel_runs)
    preprocessor = _deployment(Preprocessor, opts).bind(
        model,
        model_dir,
        settings.max_image_pixels,
        detector_config(settings),
        settings.preprocess_threads,
        quality_rule(settings),
    )
    return _deployment(Ingress, opts).bind(preprocessor, model, settings, settings.key_digests())


def _deployment(obj: object, options: DeploymentOptions) -> Deployment:
    # @serve.deployment turns the classes into Deployments; type checkers still see the classes.
    assert isinstance(obj, Deployment)
    return obj.options(**options[obj.name]) if obj.name in options else obj
