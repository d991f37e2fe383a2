"""The one Serve config file (``deploy/serve_config.yaml``), read the way ``serve run`` / ``serve deploy`` read it.

``emotion serve`` does not compose the graph from numbers of its own: it loads this file, validates it with Ray's
``ServeDeploySchema`` (what ``serve deploy`` and KubeRay apply), and starts Serve with its HTTP options, logging
config and per-deployment options. The builder's ``args:`` are ``EMOTION_*`` settings by name; a variable set in
the environment (or a command-line flag) overrides the file's value, the file overrides the settings' defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve.runtime.settings import ENV_PREFIX, Settings, SettingsError, load_settings

# Keys of ``http_options`` that are settings too: `emotion serve --port` and EMOTION_PORT win over the file.
HTTP_SETTINGS = ("host", "port")


class ServeConfigError(ValueError):
    """The Serve config file is missing, not YAML, or not a valid single-application Serve config."""


@dataclass(frozen=True)
class ServeConfig:
    """One validated Serve config holding the emotion application.

    Attributes:
        path: where it was read from.
        document: the whole file, as ``ServeDeploySchema`` validated it (plain dicts).
        app: the one application entry (``applications[0]``).
    """

    path: Path
    document: dict[str, Any]
    app: dict[str, Any]

    @property
    def args(self) -> dict[str, Any]:
        """The builder's ``args:``; null values mean "the setting's default"."""
        return {k: v for k, v in (self.app.get("args") or {}).items() if v is not None}

    @property
    def deployment_options(self) -> dict[str, dict[str, Any]]:
        """``Deployment.options(**...)`` per deployment name, exactly the fields the file sets."""
        return {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in self.app.get("deployments", [])}

    def http_options(self, settings: Settings) -> dict[str, Any]:
        """The file's ``http_options`` with host and port taken from the resolved settings."""
        return {**(self.document.get("http_options") or {}), "host": settings.host, "port": settings.port}

    @property
    def logging_config(self) -> dict[str, Any] | None:
        config: dict[str, Any] | None = self.document.get("logging_config")
        return config

    @property
    def proxy_location(self) -> str | None:
        location: str | None = self.document.get("proxy_location")
        return location

    def settings(self, environment: Settings, flags: Mapping[str, object] | None = None) -> Settings:
        """Settings for this launch: flags > ``EMOTION_*`` variables > the file (args, host, port) > defaults.

        Args:
            environment: the settings as read from the environment alone (its ``model_fields_set`` tells which
                variables were given).
            flags: command-line values (``--port`` ...), already in setting names.
        """
        http = self.document.get("http_options") or {}
        from_file = {**{k: http[k] for k in HTTP_SETTINGS if http.get(k) is not None}, **self.args}
        return settings_over(from_file, f"{self.path}: applications[0].args", environment, flags)


def load_serve_config(path: Path | str) -> ServeConfig:
    """Read and validate a Serve config file; raise ServeConfigError naming the file and the problem."""
    import yaml  # pyyaml comes with Ray
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        reason = f"cannot read the Serve config ({exc.strerror}); point EMOTION_SERVE_CONFIG at one"
        raise ServeConfigError(f"{path}: {reason}") from None
    except yaml.YAMLError as exc:
        raise ServeConfigError(f"{path}: not valid YAML ({exc})") from None
    try:
        validated = ServeDeploySchema.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ServeConfigError(f"{path}: not a valid Serve config: {problems}") from None
    if len(validated.applications) != 1:
        raise ServeConfigError(f"{path}: expected exactly one application, found {len(validated.applications)}")
    app = document["applications"][0]
    return ServeConfig(path=path, document=document, app=app)


def resolve_launch(flags: Mapping[str, object] | None = None) -> tuple[Settings, ServeConfig]:
    """What ``emotion serve`` runs: the Serve config that the flags or EMOTION_SERVE_CONFIG name, and the settings
    resolved against it (flags > ``EMOTION_*`` variables > the file > defaults)."""
    environment = load_settings(**(flags or {}))
    config = load_serve_config(environment.serve_config)
    return config.settings(environment, flags), config


def settings_over(
    from_file: Mapping[str, object], where: str, environment: Settings | None = None,
    flags: Mapping[str, object] | None = None,
) -> Settings:
    """Settings with one precedence for every launch path: flags > ``EMOTION_*`` variables > ``from_file`` >
    defaults. ``environment`` is the settings read from the environment alone (read here when not given)."""
    check_setting_names(from_file, where=where)
    environment = environment if environment is not None else load_settings()
    chosen = {k: v for k, v in from_file.items() if v is not None and k not in environment.model_fields_set}
    return load_settings(**chosen, **(flags or {}))


def check_setting_names(values: Mapping[str, object], where: str) -> None:
    """Builder args are settings by name: an unknown key is a typo, not something to ignore."""
    unknown = sorted(set(values) - set(Settings.model_fields))
    if unknown:
        known = ", ".join(sorted(Settings.model_fields))
        raise SettingsError(
            f"{where}: unknown setting(s) {unknown} (each arg is an {ENV_PREFIX}* setting in lower case: {known})"
        )
