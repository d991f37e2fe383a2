"""Run inside the image build (deploy/image/Containerfile): the serving install is what the image promises.

    python verify_install.py VERSION

Exit 1 with a message when the installed emotion-service is not VERSION, Ray is not the manifest's 2.60.0, the
bundled model folder is missing, or a training/CUDA package (torch, transformers) slipped in.
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import sys

RAY_VERSION = "2.60.0"  # deploy/rayservice.yaml's rayVersion
FORBIDDEN = ("torch", "torchvision", "transformers", "triton")


def main(argv: list[str]) -> int:
    (version,) = argv
    problems = []
    if (installed := metadata.version("emotion-service")) != version:
        problems.append(f"emotion-service {installed} installed, expected {version}")
    if (ray := metadata.version("ray")) != RAY_VERSION:
        problems.append(f"ray {ray} installed, expected {RAY_VERSION}")
    problems += [f"{name} is installed (serving must not pull it)" for name in FORBIDDEN
                 if importlib.util.find_spec(name)]  # fmt: skip
    problems += [f"CUDA package {d.metadata['Name']}" for d in metadata.distributions()
                 if d.metadata["Name"].lower().startswith("nvidia-")]  # fmt: skip

    from models.contract import DEFAULT_MODEL_DIR, load_contract

    contract = load_contract(DEFAULT_MODEL_DIR)  # ContractError if config.json is missing or malformed
    if not (DEFAULT_MODEL_DIR / contract.onnx_file).is_file():
        problems.append(f"{DEFAULT_MODEL_DIR / contract.onnx_file} is missing")
    for problem in problems:
        print(f"verify_install: {problem}", file=sys.stderr)
    if not problems:
        print(f"verify_install: emotion-service {version}, ray {RAY_VERSION}, model {DEFAULT_MODEL_DIR}: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
