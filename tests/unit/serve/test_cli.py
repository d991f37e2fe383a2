"""The `emotion` command line, in-process: dispatch, `predict` output, and `serve` failing before Ray starts."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import pytest

from models.contract import DEFAULT_MODEL_DIR, load_contract
from serve import cli
from serve.runtime import local


@pytest.fixture
def no_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve` must fail in its checks: starting Ray here is a test failure (and leave signal handlers alone)."""

    def refuse(*args: object, **kwargs: object) -> str:
        raise AssertionError("emotion serve tried to start Ray")

    monkeypatch.setattr(local, "start", refuse)
    monkeypatch.setattr(signal, "signal", lambda *args: None)


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: emotion <command>")
    for name in cli.COMMANDS:
        assert f"  {name} " in out


def test_every_command_target_resolves() -> None:
    import importlib

    assert cli.COMMANDS["calibrate"][1] == "models.calibrate:main"
    for name, (_, target) in cli.COMMANDS.items():
        module, _, func = target.partition(":")
        if module.startswith(("models.train", "models.export", "client.")):
            continue  # torch / the client extra: not part of every install
        assert callable(getattr(importlib.import_module(module), func)), name


def test_calibrate_dispatches_to_its_argument_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["calibrate", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: emotion calibrate") and "--model" in out and "--data-dir" in out


@pytest.mark.parametrize("argv", [["no-such-command"], []])
def test_unknown_or_missing_command_is_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert "commands:" in capsys.readouterr().out


def test_predict_says_a_featureless_image_is_unreadable_like_the_service(
    tmp_path: Path, face_png: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "face.png"
    image.write_bytes(face_png)  # a smooth gradient: no detail for the model to read
    assert cli.main(["predict", str(image)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["label"] is None and record["readable"] is False and record["unreadable_reason"] == "blurred"
    assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_predict_prints_one_json_line_per_file(
    tmp_path: Path, face_png: bytes, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMOTION_UNREADABLE_MIN_SHARPNESS", "0")  # the gradient passes once the blur rule is off
    image, missing = tmp_path / "face.png", tmp_path / "missing.png"
    image.write_bytes(face_png)
    assert cli.main(["predict", str(image)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    labels = load_contract(DEFAULT_MODEL_DIR).labels
    assert record["file"] == str(image) and list(record["probabilities"]) == list(labels)
    assert record["label"] == max(record["probabilities"], key=record["probabilities"].get)
    assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)

    assert cli.main(["predict", str(image), str(missing)]) == 1  # one failure: exit 1, still one line each
    ok, failed = (json.loads(x) for x in capsys.readouterr().out.splitlines())
    assert ok["label"] == record["label"] and failed["error"]["code"] == "unreadable_file"


def test_serve_with_a_bad_port_variable_exits_1(
    no_launch: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EMOTION_PORT", "eighty")
    assert cli.main(["serve"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("emotion serve: ") and "EMOTION_PORT='eighty'" in err


def test_serve_refuses_a_port_in_use(no_launch: None, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert cli.main(["serve", "--port", str(port)]) == 1
    assert f"127.0.0.1:{port} is already in use" in capsys.readouterr().err


def test_serve_with_a_missing_config_file_exits_1(
    no_launch: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", "--config", str(tmp_path / "none.yaml")]) == 1
    assert "none.yaml" in capsys.readouterr().err
