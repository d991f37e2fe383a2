"""Regenerate deploy/rayservice.yaml's serveConfigV2 from deploy/serve_config.yaml (``make rayservice``)."""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    config = (HERE / "serve_config.yaml").read_text()
    config = re.sub(r"host: 127\.0\.0\.1 .*", "host: 0.0.0.0              # in-cluster: the K8s Service + "
                    "NetworkPolicy are the boundary.", config, count=1)  # fmt: skip
    body = "\n".join(("      " + line) if line.strip() else "" for line in config.splitlines())
    manifest = (HERE / "rayservice.yaml").read_text()
    head, _, rest = manifest.partition("  serveConfigV2: |\n")
    _, _, tail = rest.partition("\n  rayClusterConfig:")
    (HERE / "rayservice.yaml").write_text(f"{head}  serveConfigV2: |\n{body}\n\n  rayClusterConfig:{tail}")


if __name__ == "__main__":
    main()
