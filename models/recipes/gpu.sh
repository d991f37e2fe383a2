#!/usr/bin/env bash
# One prepared run for a short GPU lease (models/recipes/README.md): cached 0.4.0 logits -> single 3-class
# students; 7-class CNN teachers -> cached logits -> a 7-class student; then export, int8, calibrate, evaluate,
# and everything packed into $OUT (at most 8 files of at most 16 MiB).
#
#   OUT=/somewhere bash models/recipes/gpu.sh     # the lease: one H200 + 16 cores, BUDGET_S (540 s) of wall time
#   bash models/recipes/gpu.sh --smoke            # any CPU: the same steps at tiny sizes (1 epoch, 2 batches)
#
# Every size is an environment variable (defaults below); the script keeps its own deadline: trainings still
# running at BUDGET_S - POST_S are stopped (their best checkpoint so far is used) and packing starts by BUDGET_S.
set -uo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
REPO=$(cd "$(dirname "$SELF")/../.." && pwd)
cd "$REPO" || exit 1

# ------------------------------------------------------------------------------------------------ ship one run
# (internal) bash gpu.sh --ship RUN_DIR: export -> quantize -> calibrate -> evaluate of RUN_DIR/best.
if [[ ${1:-} == --ship ]]; then
    R=$2
    EM=("$PY" -m serve.cli)
    set -x
    "${EM[@]}" export --checkpoint "$R/best" --output "$R/onnx-fp32" --data-dir "$DATA" || exit 11
    "${EM[@]}" quantize --model "$R/onnx-fp32" --output "$R/int8" --data-dir "$DATA" --threads "$SHIP_THREADS" \
        --variants static,static_per_channel --bench-seconds "$BENCH_S" || exit 12
    "${EM[@]}" calibrate --model "$R/int8" --data-dir "$DATA" --threads "$SHIP_THREADS" \
        || echo "WARNING: emotion calibrate failed; the int8 folder keeps temperature 1.0"
    mkdir -p "$R/eval"
    "${EM[@]}" evaluate --model "$R/int8" --data-dir "$DATA" --split test --output "$R/eval/test.json" \
        --threads "$SHIP_THREADS" || exit 14
    exit 0
fi

MODE=full
case "${1:-}" in
    --smoke) MODE=smoke ;;
    "" | --full) ;;
    -h | --help) sed -n '2,10p' "$SELF"; exit 0 ;;
    *) echo "usage: bash models/recipes/gpu.sh [--smoke]" >&2; exit 2 ;;
esac

if [[ $MODE == full ]]; then
    : "${BUDGET_S:=540}" "${POST_S:=160}" "${DEVICE:=cuda}" "${THREADS:=2}" "${ORT_THREADS:=8}" "${SHIP_THREADS:=4}"
    : "${BATCH:=128}" "${MAXB:=0}" "${BENCH_S:=0.5}"
    : "${T7_SEEDS:=11 12 13 14}" "${T7_EPOCHS:=22}"
    : "${S3_RUNS:=soft}" "${S3_EPOCHS:=90}" "${S3_WARMUP:=5}"
    : "${S7_RUNS:=soft}" "${S7_EPOCHS:=32}" "${S7_WARMUP:=3}"
    : "${WORK:=/tmp/emotion-gpu}"
    : "${OUT:?set OUT: the folder whose files come back from the lease}"
else
    : "${BUDGET_S:=1800}" "${POST_S:=900}" "${DEVICE:=cpu}" "${THREADS:=1}" "${ORT_THREADS:=1}" "${SHIP_THREADS:=1}"
    : "${BATCH:=32}" "${MAXB:=2}" "${BENCH_S:=0.05}"
    : "${T7_SEEDS:=11 12}" "${T7_EPOCHS:=1}"
    : "${S3_RUNS:=soft hard}" "${S3_EPOCHS:=1}" "${S3_WARMUP:=1}"
    : "${S7_RUNS:=soft}" "${S7_EPOCHS:=1}" "${S7_WARMUP:=1}"
    : "${WORK:=$REPO/runs/recipe-smoke}"
    : "${OUT:=$WORK/out}"
fi
: "${PRESET:=hybrid-small}" "${S3_VERSION:=0.5.0}" "${S7_NAME:=emotion-vit-fer7}" "${S7_VERSION:=0.1.0}"
: "${SMOKE_TRAIN_PER_CLASS:=40}" "${SMOKE_TEST_PER_CLASS:=12}"
if [[ -z ${PYTHON:-} ]]; then  # here: the project's venv; on the lease (no venv travels): python3, which has torch
    if [[ -x $REPO/.venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
PY=$PYTHON
EM=("$PY" -m serve.cli)
export PY BENCH_S SHIP_THREADS PYTHONUNBUFFERED=1 TQDM_DISABLE=1 WANDB_MODE=offline HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 RECIPE_MODE=$MODE

START=$(date +%s)
DEADLINE=$((START + BUDGET_S))
TRAIN_END=$((DEADLINE - POST_S))
rm -rf "$WORK"
W=$WORK
LOGS=$W/logs
mkdir -p "$OUT" "$LOGS" "$W/targets" || exit 1
exec > >(tee -a "$OUT/recipe.log") 2>&1

log() { printf '[%4ds] %s\n' "$(($(date +%s) - START))" "$*"; }
until_() { local s=$(($1 - $(date +%s))); echo $((s < 30 ? 30 : s)); }  # seconds left before a deadline (>= 30)

declare -A PIDS
job() {  # job NAME LIMIT_S CMD...: CMD in the background under `timeout`, output in $LOGS/NAME.log
    local name=$1 limit=$2 shown
    shift 2
    shown="$*"
    log "start $name (limit ${limit}s): ${shown//"$PY -m serve.cli"/emotion}"
    (
        t0=$(date +%s)
        timeout -k 20 "$limit" "$@" >"$LOGS/$name.log" 2>&1
        rc=$?
        printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" >>"$LOGS/jobs.tsv"
        echo "$rc" >"$LOGS/$name.rc"
    ) &
    PIDS[$name]=$!
}
await() {  # await NAME...: wait for the jobs; report each one's exit status (124: stopped at its deadline)
    local name rc
    for name in "$@"; do
        wait "${PIDS[$name]}"
        rc=$(cat "$LOGS/$name.rc" 2>/dev/null || echo "?")
        log "end $name: rc=$rc"
        if [[ $rc != 0 ]]; then
            [[ $rc == 124 ]] && log "  $name was stopped at its deadline (its best checkpoint so far is used)"
            tail -n 15 "$LOGS/$name.log" | sed "s/^/  $name| /"
        fi
    done
}
ok() { [[ $(cat "$LOGS/$1.rc" 2>/dev/null) == 0 ]]; }

# ------------------------------------------------------------------------------------------------ preflight
log "mode $MODE: budget ${BUDGET_S}s (training until ${POST_S}s before the end), work $W, out $OUT"
"$PY" - <<'EOF'
import os, platform, sys
import numpy, onnxruntime, torch, transformers
cuda = torch.cuda.is_available()
print(f"python {platform.python_version()} ({sys.executable}), torch {torch.__version__}, transformers "
      f"{transformers.__version__}, onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__}, "
      f"cpus {os.cpu_count()}, cuda {cuda}" + (f" ({torch.cuda.get_device_name(0)})" if cuda else ""))
EOF
if [[ $DEVICE == cuda ]] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    log "ERROR: DEVICE=cuda but torch sees no GPU (DEVICE=cpu to run anyway)"; exit 3
fi

SRC=""
for root in ${EMOTION_DATA_DIR:+"$EMOTION_DATA_DIR"} "$REPO/.gpu/data" "$REPO/../shared/data" "$REPO/shared/data"; do
    if [[ -f $root/fer2013/train.parquet && -f $root/fer2013/test.parquet ]]; then SRC=$root/fer2013; break; fi
done
[[ -n $SRC ]] || { log "ERROR: no fer2013/{train,test}.parquet under EMOTION_DATA_DIR, .gpu/data, ../shared/data"; exit 3; }
if [[ $MODE == smoke ]]; then  # a few faces of each class from each split: the same code paths, tiny sizes
    DATA=$W/data/fer2013
    "$PY" - "$SRC" "$DATA" "$SMOKE_TRAIN_PER_CLASS" "$SMOKE_TEST_PER_CLASS" <<'EOF' || exit 3
import sys
from pathlib import Path
import pyarrow.compute as pc, pyarrow.parquet as pq
src, dst, per_class = Path(sys.argv[1]), Path(sys.argv[2]), {"train": int(sys.argv[3]), "test": int(sys.argv[4])}
dst.mkdir(parents=True, exist_ok=True)
for split, n in per_class.items():
    table = pq.read_table(src / f"{split}.parquet")
    parts = [table.filter(pc.equal(table["label"], label)).slice(0, n) for label in sorted(set(table["label"].to_pylist()))]
    import pyarrow as pa
    pq.write_table(pa.concat_tables(parts), dst / f"{split}.parquet")
    print(f"smoke data: {split} {sum(len(p) for p in parts)} faces ({n} per class) in {dst}")
EOF
else
    DATA=$SRC
fi
export DATA
log "data: $DATA"
COMMON=(--data-dir "$DATA" --device "$DEVICE" --threads "$THREADS" --batch-size "$BATCH" --no-wandb)
((MAXB > 0)) && COMMON+=(--max-batches-per-epoch "$MAXB")

# ------------------------------------------------------------------------------------------------ A: in parallel
# the shipped 0.4.0 ensemble's logits (onnxruntime, CPU) and the 7-class CNN teachers (GPU)
job targets040 "$(until_ $TRAIN_END)" "${EM[@]}" targets --model models/default --data-dir "$DATA" \
    --output "$W/targets/t040.npz" --threads "$ORT_THREADS"
T7_JOBS=()
for seed in $T7_SEEDS; do
    job "t7_$seed" "$(until_ $TRAIN_END)" "${EM[@]}" train "${COMMON[@]}" --classes all --teacher-only \
        --seed "$seed" --teacher-epochs "$T7_EPOCHS" --output-dir "$W/t7_$seed"
    T7_JOBS+=("t7_$seed")
done

# ------------------------------------------------------------------------------------------------ B: 3 classes
await targets040
STUDENTS=()
if ok targets040; then
    for distill in $S3_RUNS; do
        job "s3_$distill" "$(until_ $TRAIN_END)" "${EM[@]}" train "${COMMON[@]}" --preset "$PRESET" \
            --distill "$distill" --teacher-logits "$W/targets/t040.npz" --epochs "$S3_EPOCHS" \
            --warmup-epochs "$S3_WARMUP" --model-version "$S3_VERSION" --output-dir "$W/s3_$distill"
        STUDENTS+=("s3_$distill")
    done
fi

# ------------------------------------------------------------------------------------------------ C: 7 classes
await "${T7_JOBS[@]}"
TEACHERS=""
for seed in $T7_SEEDS; do
    [[ -f $W/t7_$seed/teacher/best.pt ]] && TEACHERS+="${TEACHERS:+,}$W/t7_$seed/teacher/best.pt"
done
if [[ -n $TEACHERS ]]; then
    job targets7 "$(until_ $TRAIN_END)" "${EM[@]}" targets --teacher-checkpoint "$TEACHERS" --teacher-flip \
        --classes all --data-dir "$DATA" --device "$DEVICE" --output "$W/targets/t7.npz" --threads "$THREADS"
    await targets7
    if ok targets7; then
        for distill in $S7_RUNS; do
            job "s7_$distill" "$(until_ $TRAIN_END)" "${EM[@]}" train "${COMMON[@]}" --classes all \
                --preset "$PRESET" --distill "$distill" --teacher-logits "$W/targets/t7.npz" --epochs "$S7_EPOCHS" \
                --warmup-epochs "$S7_WARMUP" --model-name "$S7_NAME" --model-version "$S7_VERSION" \
                --output-dir "$W/s7_$distill"
            STUDENTS+=("s7_$distill")
        done
    fi
else
    log "no 7-class teacher finished: no 7-class student"
fi

# ------------------------------------------------------------------------------------------------ D: ship each
((${#STUDENTS[@]})) && await "${STUDENTS[@]}"
SHIPS=()
for run in "${STUDENTS[@]}"; do
    if [[ -f $W/$run/best/config.json ]]; then
        job "ship_$run" "$(until_ $((DEADLINE - 30)))" bash "$SELF" --ship "$W/$run"
        SHIPS+=("ship_$run")
    else
        log "$run has no best checkpoint: nothing to ship"
    fi
done
((${#SHIPS[@]})) && await "${SHIPS[@]}"

# ------------------------------------------------------------------------------------------------ E: pack
log "packing into $OUT"
"$PY" - "$W" "$OUT" "$MODE" <<'EOF'
"""summary.json + summary.md: per run the epochs done, validation, test (int8), calibration, times."""
import json, statistics, sys
from pathlib import Path

work, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

def read(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None

jobs = {}
if (work / "logs" / "jobs.tsv").is_file():
    for line in (work / "logs" / "jobs.tsv").read_text().splitlines():
        name, rc, seconds = line.split("\t")
        jobs[name] = {"rc": int(rc), "seconds": int(seconds)}
runs = {}
for run in sorted(p for p in work.iterdir() if (p / "args.json").is_file()):
    args = read(run / "args.json") or {}
    rows = [json.loads(l) for l in (run / "history.jsonl").read_text().splitlines()] if (run / "history.jsonl").is_file() else []
    stage = "teacher" if args.get("teacher_only") else "student"
    rows = [r for r in rows if r["stage"] == stage]
    entry = {
        "stage": stage, "classes": args.get("classes"), "preset": args.get("preset"), "distill": args.get("distill"),
        "epochs_planned": args.get("teacher_epochs" if stage == "teacher" else "epochs"), "epochs_done": len(rows),
        "best_val_accuracy": max((r["val_accuracy"] for r in rows), default=None),
        "median_epoch_seconds": round(statistics.median(r["epoch_seconds"] for r in rows), 2) if rows else None,
        "final_report": read(run / "final_report.json"), "train_job": jobs.get(run.name),
    }
    metrics = read(run / "int8" / "metrics.json")
    if metrics:
        calibration = metrics.get("calibration") or {}
        quant = read(run / "int8" / "quantization.json") or {}
        entry["int8"] = {
            "test_n": metrics.get("n"), "test_accuracy": metrics.get("accuracy"), "test_macro_f1": metrics.get("macro_f1"),
            "temperature": calibration.get("temperature"), "test_ece_after": (calibration.get("test") or {}).get("ece_after"),
            "variant": quant.get("chosen"), "bytes": (run / "int8" / "model.onnx").stat().st_size,
            "labels": (read(run / "int8" / "config.json") or {}).get("labels"),
        }
        entry["ship_job"] = jobs.get(f"ship_{run.name}")
    runs[run.name] = entry
targets = {}
for npz in sorted((work / "targets").glob("*.npz")):
    import numpy as np
    with np.load(npz, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        targets[npz.name] = {"faces": int(data["logits"].shape[0]), "labels": [str(s) for s in data["labels"]],
                             "source": meta.get("source"), "train_accuracy": meta.get("train_accuracy"),
                             "val_accuracy": meta.get("val_accuracy"), "seconds": meta.get("seconds")}
summary = {"mode": mode, "runs": runs, "targets": targets, "jobs": jobs}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
lines = [f"# GPU recipe ({mode})", "", "| run | classes | epochs | s/epoch | best val | int8 test acc | macro-F1 | T | job |",
         "|---|---|---|---|---|---|---|---|---|"]
fmt = lambda v, f="{:.4f}": "" if v is None else f.format(v)
for name, r in runs.items():
    q = r.get("int8") or {}
    job = r.get("train_job") or {}
    lines.append(f"| {name} | {r['classes']} | {r['epochs_done']}/{r['epochs_planned']} | {fmt(r['median_epoch_seconds'], '{:.1f}')} "
                 f"| {fmt(r['best_val_accuracy'])} | {fmt(q.get('test_accuracy'))} | {fmt(q.get('test_macro_f1'))} "
                 f"| {fmt(q.get('temperature'), '{}')} | rc {job.get('rc', '?')}, {job.get('seconds', '?')} s |")
lines += ["", "| targets | faces | source | train acc | val acc | s |", "|---|---|---|---|---|---|"]
for name, t in targets.items():
    src = t["source"] or {}
    lines.append(f"| {name} | {t['faces']} | {src.get('name')} {src.get('version')} | {fmt(t['train_accuracy'])} "
                 f"| {fmt(t['val_accuracy'])} | {t['seconds']} |")
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF

MAX_BYTES=$((16 * 1024 * 1024))
pack() {  # pack NAME PATHS... (relative to $W): $OUT/NAME.tar.gz, whatever of PATHS exists
    local name=$1 have=() p
    shift
    for p in "$@"; do [[ -e $W/$p ]] && have+=("$p"); done
    ((${#have[@]})) || return 0
    tar -czf "$OUT/$name.tar.gz" -C "$W" "${have[@]}"
    log "$name.tar.gz: $(du -h "$OUT/$name.tar.gz" | cut -f1) (${have[*]})"
}
for run in "${STUDENTS[@]}"; do
    R=("$run/int8" "$run/eval" "$run/best" "$run/history.jsonl" "$run/final_report.json" "$run/args.json"
       "logs/$run.log" "logs/ship_$run.log")
    pack "$run" "${R[@]}"
    if [[ -f $OUT/$run.tar.gz ]] && (($(stat -c %s "$OUT/$run.tar.gz") > MAX_BYTES)); then
        log "$run.tar.gz is over 16 MiB: packed again without the checkpoint (best/)"
        pack "$run" "${R[@]:0:2}" "${R[@]:3}"
    fi
done
# The 7-class teachers as fp16 state dicts (half the bytes; emotion train / targets load them as they are),
# the cached logits, and every remaining log.
"$PY" - "$W" <<'EOF'
import sys
from pathlib import Path
import torch
work = Path(sys.argv[1])
for best in sorted(work.glob("t7_*/teacher/best.pt")):
    state = torch.load(best, map_location="cpu")
    dst = work / "teachers7" / f"{best.parts[-3]}.pt"
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, dst)
EOF
T7_FILES=()
for seed in $T7_SEEDS; do T7_FILES+=("t7_$seed/history.jsonl" "t7_$seed/final_report.json" "t7_$seed/args.json"); done
pack teachers-targets teachers7 targets "${T7_FILES[@]}" logs
log "done in $(($(date +%s) - START))s; $OUT holds: $(cd "$OUT" && ls | tr '\n' ' ')"
sleep 1  # let tee write the last lines of recipe.log
