"""Benchmark report: ``results.json``, ``benchmark.md`` (machine, targets, one table per workload) and plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Rows = list[dict[str, Any]]
COLUMNS = (
    "target", "mode", "load", "req/s", "img/s", "p50 ms", "p95 ms", "p99 ms", "err %", "shed", "timeouts",
    "server CPU %", "server CPU ms/img", "client CPU %", "machine CPU %", "calls per batch",
)  # fmt: skip
WORKLOADS = {"single": "single images (POST /v1/classify)", "batch32": "32-image requests (POST /v1/classify/batch)"}


# The done-criteria: (row label, goal, key in ``summary()``).
CRITERIA = (
    ("Ray / baseline throughput, single images, 8 clients", ">= 0.6", "single_8_clients_throughput_ratio"),
    ("Ray / baseline p99, single images, 8 clients", "<= 2", "single_8_clients_p99_ratio"),
    ("Ray 32-image requests / onnxruntime in-process (images/s, best)", ">= 0.85", "batch32_vs_inprocess_ratio"),
    ("same, per CPU second (in-process CPU ms/img / server CPU ms/img; robust to other tenants)", "info",
     "batch32_vs_inprocess_cpu_efficiency"),
)

def _find(rows: Rows, target: str, workload: str, mode: str, load: float) -> dict[str, Any] | None:
    return next((r for r in rows if (r["target"], r["workload"], r["mode"], r["load"]) ==
                 (target, workload, mode, load)), None)  # fmt: skip


def ray_targets(rows: Rows) -> list[str]:
    return list(dict.fromkeys(r["target"] for r in rows if r["target"].startswith("ray")))


def summary(rows: Rows, target: str = "ray") -> dict[str, Any]:
    """The issue's done-criteria for one Ray target, from this run's rows (None where a cell is missing)."""
    ray8, base8 = _find(rows, target, "single", "closed", 8.0), _find(rows, "baseline", "single", "closed", 8.0)
    ort = [r["images_per_s"] for r in rows if r["target"] == "onnxruntime"]
    ray_batch = [r["images_per_s"] for r in rows if (r["target"], r["workload"], r["mode"]) ==
                 (target, "batch32", "closed")]  # fmt: skip
    out: dict[str, Any] = {"single_8_clients_throughput_ratio": None, "single_8_clients_p99_ratio": None,
                           "batch32_vs_inprocess_ratio": None, "batch32_vs_inprocess_cpu_efficiency": None}  # fmt: skip
    ort_cost = [c for r in rows if r["target"] == "onnxruntime" and (c := _per_image(r))]
    ray_cost = [c for r in rows if (r["target"], r["workload"], r["mode"]) == (target, "batch32", "closed")
                and (c := _per_image(r))]  # fmt: skip
    if ort_cost and ray_cost:
        out["batch32_vs_inprocess_cpu_efficiency"] = round(min(ort_cost) / min(ray_cost), 2)
    if ray8 and base8 and base8["requests_per_s"]:
        out["single_8_clients_throughput_ratio"] = round(ray8["requests_per_s"] / base8["requests_per_s"], 2)
        if ray8["p99_ms"] and base8["p99_ms"]:
            out["single_8_clients_p99_ratio"] = round(ray8["p99_ms"] / base8["p99_ms"], 2)
    if ort and ray_batch:
        out["batch32_vs_inprocess_ratio"] = round(max(ray_batch) / max(ort), 2)
    return out


def _cell(value: Any) -> str:
    if value is None or value == {}:
        return "n/a"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v:g}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _per_image(row: dict[str, Any]) -> float | None:
    """CPU milliseconds per image (server tree; this process for in-process rows): robust to other tenants
    taking cores, unlike throughput."""
    cpu = row["client_cpu_pct"] if row["mode"] == "in-process" else row["server_cpu_pct"]
    if not cpu or not row["images_per_s"]:
        return None
    return round(float(cpu) * 10 / float(row["images_per_s"]), 2)


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# Benchmark: Ray Serve graph vs plain baselines",
        "",
        f"Run {results['started']} ({results['duration_s']} s), commit {m['git_commit']}, model "
        f"{results['model']['name']} {results['model']['version']}. Machine: {m['cpu']}, {m['logical_cpus']} "
        f"logical CPUs, {m['memory_gib']} GiB, Python {m['python']}, onnxruntime {m['onnxruntime']}, ray {m['ray']}. "
        f"Load average at start {m['load_avg_at_start']}; machine CPU % includes other tenants (200 = both cores).",
        "",
        f"Cells: {results['plan']['seconds']} s each. Closed loop: load = concurrent keep-alive clients; open loop: "
        "load = offered requests/s, latency from each request's scheduled start. In-process: load = batch size "
        "(client CPU = this process). Calls per batch: handle calls per executed `@serve.batch` batch, by deployment "
        "(Ray counters).",
        "",
    ]
    targets = ray_targets(results["rows"])
    sums = [summary(results["rows"], t) for t in targets]
    lines += [
        "| criterion | goal | " + " | ".join(targets) + " |",
        "|---|---|" + "---|" * len(targets),
        *(
            f"| {label} | {goal} | " + " | ".join(_cell(s[key]) for s in sums) + " |"
            for label, goal, key in CRITERIA
        ),
        "",
    ]
    for name, reason in results["skipped"].items():
        lines.append(f"Skipped {name}: {reason}")
    for workload, title in WORKLOADS.items():
        lines += ["", f"## {title}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for r in results["rows"]:
            if r["workload"] != workload and not (r["target"] == "preprocess" and workload == "single"):
                continue
            load = r["config"] + f", batch {r['load']:g}" if r["mode"] == "in-process" else f"{r['load']:g}"
            values = (r["target"], r["mode"], load, r["requests_per_s"], r["images_per_s"], r["p50_ms"], r["p95_ms"],
                      r["p99_ms"], r["error_pct"], r["shed"], r["timeouts"], r["server_cpu_pct"], _per_image(r),
                      r["client_cpu_pct"], r["machine_cpu_pct"], r["batch"])  # fmt: skip
            lines.append("| " + " | ".join(_cell(v) for v in values) + " |")
    if results.get("streams"):
        from loadtests.stream_capacity import summary_lines  # only runs with --streams need it

        lines += ["", "## camera streams (WS /v1/stream, 10 fps; every cell in streams.md)", "",
                  *summary_lines(results["streams"])]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(rows: Rows, out: Path) -> None:
    """``throughput.png`` and ``p99.png``: one panel per (workload, loop), one line per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for metric, ylabel, filename in (("images_per_s", "images/s", "throughput.png"), ("p99_ms", "p99 ms", "p99.png")):
        fig, axes = plt.subplots(2, 2, figsize=(11, 8))
        for i, workload in enumerate(WORKLOADS):
            for j, mode in enumerate(("closed", "open")):
                ax = axes[i][j]
                for k, target in enumerate(("noop", "baseline", *ray_targets(rows))):
                    pts = [(r["load"], r[metric]) for r in rows if (r["target"], r["workload"], r["mode"]) ==
                           (target, workload, mode) and r[metric] is not None]  # fmt: skip
                    if pts:
                        ax.plot(*zip(*pts, strict=True), marker="o", label=target, color=f"C{k}")
                ort = [r["images_per_s"] for r in rows if r["target"] == "onnxruntime"]
                if metric == "images_per_s" and ort:
                    ax.axhline(max(ort), color="grey", linestyle="--", label="onnxruntime in-process (best)")
                ax.set_title(f"{workload}, {mode} loop")
                ax.set_xlabel("concurrent clients" if mode == "closed" else "offered requests/s")
                ax.set_ylabel(ylabel)
                ax.set_yscale("log")
                ax.grid(alpha=0.3)
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / filename, dpi=90)
        plt.close(fig)


def write_report(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results = {**results, "summary": {t: summary(results["rows"], t) for t in ray_targets(results["rows"])}}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "benchmark.md").write_text(markdown(results))
    plot(results["rows"], out)
