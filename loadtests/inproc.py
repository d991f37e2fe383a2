"""The compute limit: onnxruntime in this process on real preprocessed faces, and a description of the machine."""

from __future__ import annotations

import platform
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from loadtests.data import fer_faces
from loadtests.inference import make_session, preprocess
from loadtests.servers import REPO
from models.contract import load_contract

CONFIGS = ((1, 1), (1, 2), (2, 1))  # (sessions, intra-op threads each); sessions run in parallel Python threads


@dataclass(frozen=True)
class Cell:
    kind: str  # "onnxruntime" | "preprocess"
    config: str
    batch: int
    images_per_s: float
    cpu_pct: float


def measure(model_dir: Path, seconds: float, batches: tuple[int, ...]) -> list[Cell]:
    """images/s of session.run for each (sessions x threads) config and batch size; plus Pillow preprocessing."""
    contract = load_contract(model_dir)
    faces = [f.data for f in fer_faces()[:256]]

    def decode_32() -> int:
        for data in faces[:32]:
            preprocess(data, contract)
        return 32

    cells = [_timed("preprocess", "Pillow decode + normalise, 1 thread", 1, seconds, [decode_32])]
    x = np.stack([preprocess(d, contract) for d in faces])
    feed = contract.input.name
    for sessions, threads in CONFIGS:
        pool = [make_session(model_dir / contract.onnx_file, threads) for _ in range(sessions)]
        for batch in batches:
            inputs = {feed: x[:batch]}
            for sess in pool:
                for _ in range(3):
                    sess.run(None, inputs)
            runs = [partial(_run, sess, inputs, batch) for sess in pool]
            cells.append(_timed("onnxruntime", f"{sessions} session(s) x {threads} thread(s)", batch, seconds, runs))
    return cells


def _run(session: Any, inputs: dict[str, np.ndarray], batch: int) -> int:
    session.run(None, inputs)
    return batch


def _timed(kind: str, config: str, batch: int, seconds: float, runs: Sequence[Callable[[], int]]) -> Cell:
    """Run every ``runs[i]()`` (returns images done) in its own thread, in a loop, for ``seconds``."""
    counts = [0] * len(runs)
    me = psutil.Process()
    cpu0 = me.cpu_times()
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            counts[i] += runs[i]()

    start = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(len(runs))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    span = time.perf_counter() - start
    cpu1 = me.cpu_times()
    cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    return Cell(kind, config, batch, round(sum(counts) / span, 1), round(100 * cpu / span, 1))


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())  # fmt: skip
    flags = Path("/proc/cpuinfo").read_text()

    def pkg(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "n/a"

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return {
        "cpu": model,
        "logical_cpus": psutil.cpu_count(),
        "avx512_vnni": "avx512_vnni" in flags,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": pkg("onnxruntime"),
        "ray": pkg("ray"),
        "fastapi": pkg("fastapi"),
        "uvicorn": pkg("uvicorn"),
        "git_commit": commit.stdout.strip() or "n/a",
        "load_avg_at_start": [round(v, 2) for v in psutil.getloadavg()],
    }
