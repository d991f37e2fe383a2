"""models/cli_args.py: argument dataclasses become --kebab-case flags; the commands keep their documented flags."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from models.cli_args import parse_arguments

REPO = Path(__file__).resolve().parents[3]


@dataclass
class Inner:
    flip: bool = True
    rate: float = 0.5


@dataclass
class Args:
    model: Path = field(metadata={"help": "required: it has no default"})
    batch_size: int = 8
    name: str = "x"
    output: Path | None = None
    verbose: bool = False
    variants: tuple[str, ...] = ("a", "b")
    sizes: tuple[int, ...] = ()
    inner: Inner = field(default_factory=Inner, metadata={"prefix": "in"})

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"--batch-size={self.batch_size} must be >= 1")


def parse(*argv: str) -> Args:
    return parse_arguments(Args, list(argv), prog="t")


def test_defaults_apply_when_a_flag_is_not_given() -> None:
    args = parse("--model", "m")
    assert args == Args(model=Path("m"))
    assert isinstance(args.model, Path) and args.inner == Inner()


def test_every_kind_of_field_parses() -> None:
    args = parse(
        "--model", "m", "--batch-size", "3", "--name", "y", "--output", "o/r.json", "--verbose",
        "--variants", "static, dynamic,", "--sizes", "1,2", "--no-in-flip", "--in-rate", "0.25",
    )  # fmt: skip
    assert args.batch_size == 3 and args.name == "y" and args.output == Path("o/r.json") and args.verbose
    assert args.variants == ("static", "dynamic") and args.sizes == (1, 2)
    assert args.inner == Inner(flip=False, rate=0.25)
    assert not parse("--model", "m", "--verbose", "--no-verbose").verbose


def test_usage_errors_exit_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--batch-size", "2"], ["--model", "m", "--batch-size", "two"], ["--model", "m", "--batch-size", "0"]):
        with pytest.raises(SystemExit) as exc:
            parse(*argv)
        assert exc.value.code == 2
    assert "--batch-size=0 must be >= 1" in capsys.readouterr().err  # the dataclass's own check, as a usage error


def test_unsupported_field_type_is_refused() -> None:
    @dataclass
    class Bad:
        mapping: dict[str, int] = field(default_factory=dict)

    with pytest.raises(TypeError, match="mapping"):
        parse_arguments(Bad, [], prog="t")


def test_commands_keep_their_documented_flags() -> None:
    """The flags README.md, the model card and the Makefile use (plus the old ``--no-dedup`` / ``--test``)."""
    from models.evaluate import EvaluateArguments
    from models.quantize import VARIANTS, QuantizeArguments

    ev = parse_arguments(EvaluateArguments, ["--model", "m", "--split", "val", "--no-dedup", "--threads", "0"],
                         prog="emotion evaluate")  # fmt: skip
    assert (ev.model, ev.split, ev.dedup, ev.threads) == (Path("m"), "val", False, 0)
    assert ev.output is None and ev.batch_size == 64
    q = parse_arguments(QuantizeArguments, ["--model", "a", "--output", "b", "--test", "--threads", "2"], prog="q")
    assert q.test and q.threads == 2 and q.variants == VARIANTS and q.min_compression == 3.5
    q = parse_arguments(QuantizeArguments, ["--model", "a", "--output", "b", "--variants", "static"], prog="q")
    assert q.variants == ("static",)
    from models.calibrate import CalibrateArguments

    c = parse_arguments(CalibrateArguments, ["--model", "m", "--data-dir", "d", "--threads", "2"], prog="c")
    assert (c.model, c.data_dir, c.threads, c.val_fraction, c.seed, c.batch_size) == (Path("m"), Path("d"), 2, 0.1,
                                                                                       42, 64)  # fmt: skip


@pytest.mark.train
def test_the_train_and_export_flags_parse() -> None:
    pytest.importorskip("torch")
    from models.export import ExportArguments
    from models.train import TrainArgs

    argv = ["--preset", "hybrid-tiny", "--teacher-checkpoint", "a.pt,b.pt", "--teacher-flip", "--no-wandb",
            "--aug-erase-prob", "0", "--pretrained-dir", "p"]  # fmt: skip
    t = parse_arguments(TrainArgs, argv, prog="emotion train")
    assert (t.preset, t.teacher_checkpoint, t.teacher_flip, t.wandb, t.pretrained_dir, t.augment.erase_prob) == (
        "hybrid-tiny", "a.pt,b.pt", True, False, "p", 0.0
    )
    e = parse_arguments(ExportArguments, ["--checkpoint", "a,b", "--output", "o", "--no-flip-average"], prog="e")
    assert (str(e.checkpoint), e.flip_average, e.data_dir, e.atol) == ("a,b", False, None, 1e-4)


def test_evaluate_quantize_and_calibrate_import_without_torch() -> None:
    code = ("import sys, models.evaluate, models.quantize, models.calibrate; "
            "assert 'torch' not in sys.modules, 'torch was imported'")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True)
