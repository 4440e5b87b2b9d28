#!/bin/bash
# speed.py on a CUDA machine (fp16): full-size SD1.5 + BLIP-large with random weights, 512², K = 1, 3, 10,
# captioner on at K=3, GPU throughput over image batch sizes, the large-vocabulary curve and a profile.
# Needs diffusers (and importlib_metadata) as wheels under .whl/ where the machine has no package index.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/diffusers-*.whl .whl/importlib_metadata-*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
OUTDIR=${OUT:-/tmp}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__)"
python3 benchmarks/speed.py --size 512 --ks 1 3 10 --repeats 5 --repeats-large 3 --captioner-repeats 3 \
  --vocab-curve --batch-size 64 --profile --json "$OUTDIR/speed_gpu.json" "$@" 2>&1 | grep -v -i "warn" \
  | tee "$OUTDIR/speed_gpu.log"
