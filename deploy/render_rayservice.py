"""Regenerate deploy/rayservice.yaml from deploy/serve_config.yaml and pyproject.toml (``make rayservice``).

Two things in the manifest are derived, never edited by hand:

* ``serveConfigV2`` embeds deploy/serve_config.yaml, comments included; only ``http_options.host`` differs
  (0.0.0.0: pods listen on all interfaces, a NetworkPolicy limits who reaches them);
* every container's ``image:`` is ``emotion-service:<version of pyproject.toml>``, the tag deploy/image/build.sh
  builds, so a version bump cannot leave the manifest on an old image.

tests/unit/deploy/test_rayservice.py fails when the checked-in manifest differs from what this script writes.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
IMAGE_NAME = "emotion-service"
LOOPBACK_HOST = re.compile(r"host: 127\.0\.0\.1 .*")
IN_CLUSTER_HOST = "host: 0.0.0.0              # in-cluster: the K8s Service + NetworkPolicy are the boundary."
IMAGE_LINE = re.compile(rf"(image: ){re.escape(IMAGE_NAME)}:[^\s#]+")


def project_version(pyproject: Path = REPO / "pyproject.toml") -> str:
    version: str = tomllib.loads(pyproject.read_text())["project"]["version"]
    return version


def image_tag(version: str) -> str:
    """The image deploy/image/build.sh builds for ``version`` and the manifest runs."""
    return f"{IMAGE_NAME}:{version}"


def render(manifest: str, serve_config: str, version: str) -> str:
    """``manifest`` with serveConfigV2 = ``serve_config`` (in-cluster host) and every image = ``image_tag(version)``.

    Raises:
        ValueError: the Serve config has no loopback ``host:`` line, or the manifest has no serveConfigV2 block
            followed by rayClusterConfig, or no emotion-service image.
    """
    config, hosts = LOOPBACK_HOST.subn(IN_CLUSTER_HOST, serve_config, count=1)
    if hosts != 1:
        raise ValueError("the Serve config has no `host: 127.0.0.1 ...` line to replace with the in-cluster host")
    body = "\n".join(("      " + line) if line.strip() else "" for line in config.splitlines())
    head, marker, rest = manifest.partition("  serveConfigV2: |\n")
    _, cluster, tail = rest.partition("\n  rayClusterConfig:")
    if not marker or not cluster:
        raise ValueError("the manifest has no `  serveConfigV2: |` block followed by `  rayClusterConfig:`")
    tail, images = IMAGE_LINE.subn(rf"\g<1>{image_tag(version)}", tail)
    if not images:
        raise ValueError(f"the manifest's rayClusterConfig names no {IMAGE_NAME} image")
    return f"{head}  serveConfigV2: |\n{body}\n\n  rayClusterConfig:{tail}"


def main() -> None:
    path = HERE / "rayservice.yaml"
    manifest = path.read_text()
    rendered = render(manifest, (HERE / "serve_config.yaml").read_text(), project_version())
    if rendered != manifest:
        path.write_text(rendered)


if __name__ == "__main__":
    main()
