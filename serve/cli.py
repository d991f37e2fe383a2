"""``emotion``: one command line for the project. Subcommands dispatch lazily, so ``predict`` never imports Ray.

Add a subcommand by adding a row to ``COMMANDS``: ``name -> (help, "module:function")``; the function takes the
remaining argv list and returns an exit code (or None).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("start the service on an embedded local Ray instance", "serve.cli:serve_main"),
    "predict": ("classify local image files in-process (onnxruntime, no Ray)", "serve.cli:predict_main"),
    "analyze-video": ("faces + emotions of every frame of a video (needs the client extra)", "client.video:main"),
    "train": ("train a model", "models.train:main"),
    "evaluate": ("evaluate an ONNX model on a test split", "models.evaluate:main"),
    "export": ("export a trained checkpoint to ONNX", "models.export:main"),
    "quantize": ("quantize an ONNX model to int8", "models.quantize:main"),
    "targets": ("cache a teacher's logits of every training face (emotion train --teacher-logits)",
                "models.targets:main"),
    "calibrate": ("fit the probabilities' temperature on the validation split", "models.calibrate:main"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {help_}" for name, (help_, _) in COMMANDS.items()]
        print("usage: emotion <command> [args...]\n\ncommands:\n" + "\n".join(lines))
        return 0 if args and args[0] in ("-h", "--help") else 2
    module, _, func = COMMANDS[args[0]][1].partition(":")
    try:
        target = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as exc:
        print(f"emotion {args[0]}: not available ({exc})", file=sys.stderr)
        return 2
    result = target(args[1:])
    return int(result or 0)


def serve_main(argv: Sequence[str]) -> int:
    """``emotion serve``: runs the Serve config file (EMOTION_SERVE_CONFIG, default deploy/serve_config.yaml).

    Flags override EMOTION_* variables, which override the file's values, which override the settings' defaults.
    """
    parser = argparse.ArgumentParser(prog="emotion serve", description="Serve the model over HTTP (Ctrl-C stops).")
    parser.add_argument("--host", help="listen address (EMOTION_HOST, default 127.0.0.1)")
    parser.add_argument("--port", help="listen port (EMOTION_PORT, default 8000)")
    parser.add_argument("--model-dir", help="model folder (EMOTION_MODEL_DIR, default models/default)")
    parser.add_argument("--config", help="Serve config file (EMOTION_SERVE_CONFIG, default deploy/serve_config.yaml)")
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    from models.contract import ContractError
    from serve.runtime import local
    from serve.runtime.serve_config import ServeConfigError, resolve_launch
    from serve.runtime.settings import SettingsError

    flags = {"host": opts.host, "port": opts.port, "model_dir": opts.model_dir, "serve_config": opts.config}
    overrides = {k: v for k, v in flags.items() if v}
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def install_handlers() -> None:
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)

    install_handlers()
    try:
        settings, config = resolve_launch(overrides)
        local.preflight(settings)
        print(f"starting Ray and the service (model {settings.model_dir}, config {config.path}) ...", flush=True)
        url = local.start(settings, config)
        install_handlers()  # ray.init installs its own SIGTERM handler, which exits without cleaning up
        print(f"ready: {url}  (API docs {url}/docs, metrics on port {settings.metrics_export_port}); Ctrl-C stops",
              flush=True)  # fmt: skip
        while not stop.wait(0.5):
            if not local.ray_alive():  # Ray's GCS or raylet died under us: nothing left to serve
                print("emotion serve: Ray stopped under the service; shutting down", file=sys.stderr, flush=True)
                return 1
        print("shutting down ...", flush=True)
        return 0
    except (SettingsError, ServeConfigError, ContractError, local.StartupError) as exc:
        print(f"emotion serve: {exc}", file=sys.stderr)
        return 1
    finally:
        local.stop()


def predict_main(argv: Sequence[str]) -> int:
    """``emotion predict FILE...``: one JSON line per file, the same numbers the service returns."""
    parser = argparse.ArgumentParser(prog="emotion predict", description="Classify face images in-process.")
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--model-dir", type=Path, help="model folder (default: EMOTION_MODEL_DIR or models/default)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    opts = parser.parse_args(argv)

    from models.contract import ContractError
    from serve.core.frames import quality_rule
    from serve.core.inference import OnnxClassifier, answer
    from serve.core.uploads import UploadReader
    from serve.errors import ServiceError
    from serve.runtime.settings import SettingsError, load_settings

    try:
        settings = load_settings(**({"model_dir": opts.model_dir} if opts.model_dir else {}))
        clf = OnnxClassifier(settings.model_dir, intra_op_threads=opts.threads)
    except (SettingsError, ContractError) as exc:
        print(f"emotion predict: {exc}", file=sys.stderr)
        return 1
    # The same answer as POST /v1/classify: the service's decoding, config.json's grouping, the unreadable rule.
    uploads = UploadReader(clf.contract, settings.max_image_pixels, quality_rule(settings))
    failures = 0
    for path in opts.files:
        record: dict[str, object] = {"file": str(path)}
        try:
            pixels, unreadable = uploads.read(path.read_bytes())
            record |= answer(clf.predict_proba(pixels[None])[0], clf.contract, unreadable).to_json()
        except OSError as exc:
            failures += 1
            record["error"] = {"code": "unreadable_file", "message": exc.strerror or str(exc)}
        except ServiceError as exc:
            failures += 1
            record["error"] = {"code": exc.code, "message": exc.message}
        print(json.dumps(record))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
