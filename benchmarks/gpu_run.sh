#!/bin/bash
# Everything this repository measures on a GPU, in one command of under 10 minutes (one H200: the `run` tool's limit
# is 600 s per command and 15 minutes of device time per task, machine start included):
#
#   bash benchmarks/gpu_run.sh            # writes $OUT/gpu_throughput.json, gpu_throughput.log, tables.md
#
# benchmarks/gpu_throughput.py within BUDGET seconds (default 450; it stops adding cases when they are spent and
# rewrites its JSON after every case, so a run cut short keeps what it measured): SD1.5 ceiling / engine /
# single-prompt mode at batches 1, 32, 128, 64, 8, host syncs, the check against the CPU float32 path, channels-last,
# the prefetching loader, SDXL / SD3 / FLUX / PixArt-Σ, then torch.compile (COMPILE, default "default"; empty: off)
# if time is left. Nothing is downloaded: every model is built from configs with random weights.
#
# Rehearsal on a CPU (tiny models, every case, about 20 s): `OUT=/tmp/rehearsal COMPILE= bash benchmarks/gpu_run.sh
# --smoke`. Run so under the device image's package versions, diffusers installed from .whl/ as there, it finished.
#
# SPEED=1 also runs the older engine-vs-released-code comparison (benchmarks/speed.py, ~2 minutes) first, out of the
# same BUDGET.
#
# The device machine has no diffusers: its wheel travels in .whl/ (carry=[".whl"]; see benchmarks/gpu_env.sh).
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
source benchmarks/gpu_env.sh || exit 1
OUTDIR=${OUT:-/tmp}
BUDGET=${BUDGET:-450}
COMPILE=${COMPILE-default}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__)"
START=$SECONDS
if [ "${SPEED:-0}" = 1 ]; then
  python3 benchmarks/speed.py --size 512 --ks 1 3 10 --repeats 5 --repeats-large 3 --captioner-repeats 3 \
    --vocab-curve --batch-size 64 --profile --budget-min 2 --json "$OUTDIR/speed_gpu.json" 2>&1 \
    | grep -v "should be kept in float32" | tee "$OUTDIR/speed_gpu.log"
fi
# what speed.py took comes out of the budget, so that the whole command stays under the 600 s limit
BUDGET=$((BUDGET - (SECONDS - START)))
python3 benchmarks/gpu_throughput.py --json "$OUTDIR/gpu_throughput.json" --budget-s "$BUDGET" \
  ${COMPILE:+--compile "$COMPILE"} "$@" 2>&1 | grep -v "should be kept in float32" | tee "$OUTDIR/gpu_throughput.log"
python3 benchmarks/gpu_tables.py "$OUTDIR/gpu_throughput.json" > "$OUTDIR/tables.md"
