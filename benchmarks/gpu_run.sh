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
# SPEED=1 also runs the older engine-vs-released-code comparison (benchmarks/speed.py, ~2 minutes) first.
#
# The machine may lack diffusers: then its wheel (and importlib_metadata's) must travel in .whl/ (ignored by git; make
# it where a package index is reachable with `pip download diffusers==0.42.1 importlib_metadata --no-deps -d .whl`
# and pass carry=[".whl"] to the run).
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if ! python3 -c "import diffusers" 2>/dev/null; then
  if ! ls .whl/diffusers-*.whl >/dev/null 2>&1; then
    echo "diffusers is not installed and there is no .whl/diffusers-*.whl to install it from (see the header)" >&2
    exit 1
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/diffusers-*.whl .whl/importlib_metadata-*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
OUTDIR=${OUT:-/tmp}
BUDGET=${BUDGET:-450}
COMPILE=${COMPILE-default}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__)"
if [ "${SPEED:-0}" = 1 ]; then
  python3 benchmarks/speed.py --size 512 --ks 1 3 10 --repeats 5 --repeats-large 3 --captioner-repeats 3 \
    --vocab-curve --batch-size 64 --profile --budget-min 2 --json "$OUTDIR/speed_gpu.json" 2>&1 | grep -v -i "warn" \
    | tee "$OUTDIR/speed_gpu.log"
fi
python3 benchmarks/gpu_throughput.py --json "$OUTDIR/gpu_throughput.json" --budget-s "$BUDGET" \
  ${COMPILE:+--compile "$COMPILE"} "$@" 2>&1 | grep -v "should be kept in float32" | tee "$OUTDIR/gpu_throughput.log"
python3 benchmarks/gpu_tables.py "$OUTDIR/gpu_throughput.json" > "$OUTDIR/tables.md"
