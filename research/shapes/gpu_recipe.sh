#!/usr/bin/env bash
# Issue 17's training runs in ONE device call (one H200, no network, at most 600 s a command): run from the repository
# root of a checkout on a machine with torch (CUDA) and transformers, with diffusers installed or its wheel in .whl/
# (carry=[".whl"]; benchmarks/gpu_env.sh), with $OUT set to a folder that comes back:
#
#     OUT=/some/empty/folder bash research/shapes/gpu_recipe.sh          # the run tool sets $OUT
#
# Rehearsal of every leg on a CPU (small budgets and sizes; run under the device image's package versions before a GPU
# run, so that the device time goes to training, not to a crash):
#
#     R=/tmp/reh-$(date +%s); DEVICE=cpu DIT_S=90 UNET_S=60 TUNE_VAL=6 TEST=6 SAVE_EVERY=10 WORK=$R OUT=$R-out \
#       DIT_ARGS="--pool-size 512 --probe-scenes 8 --dit-layers 2 --threads 2" \
#       UNET_ARGS="--pool-size 512 --probe-scenes 8 --threads 2" bash research/shapes/gpu_recipe.sh
#
# Leg 1 (DIT_S s): the joint-attention (SD3-class) shapes model from scratch (research.shapes.train_mmdit), binding per
#   block logged at every checkpoint on 64 val scenes, the best checkpoint by that probe kept (OUT/mmdit/best).
#   It trains with train_mmdit's exact shortcuts (one T5 zero token standing for 256, pool latents encoded once):
#   on the CPU the 7-block transformer trains 2.0x faster with the first (11.2 -> 22.4 samples/s, batch 32, 2
#   threads: train_mmdit --profile-steps 6 with and without --no-collapse-t5); on the GPU unmeasured. At CPU scale
#   the model hardly reads its caption, and --no-pooled, --text-layers 1, --logit-mean 1.0 (runs/mmdit_cpu_text_routes/)
#   and --sink-anneal-steps (runs/mmdit_cpu_sink/) did not change that; check what this leg trains with
#   runs/mmdit_cpu_text_routes/caption_use.py.
# Leg 2: its segmenter settings chosen on 150 val scenes (grid, input sizes, read-outs), test read once
#   (research.shapes.tune_dit).
# Leg 3 (UNET_S s): the UNet recipe levers from scratch (16x16 level 96 -> 128 wide, 4 heads at every level instead
#   of 2/3/4, captions keeping 90% of position words instead of 70%); the checkpoint with the best val binding probe
#   is kept (OUT/unet/best).
# Leg 4: that UNet against the shipped one on 150 val scenes with the shipped segmenter settings (val only: the test
#   split is for a setting chosen on val; a new UNet replaces the shipped one only if it wins here, then gets
#   research.shapes.tune and filter_tune on a CPU).
# Each leg is bounded by `timeout` and copies what it made into $OUT before the next starts, so a leg that runs out of
# time still leaves the earlier ones' results. Sizes and budgets are environment variables (defaults in brackets).
set -uo pipefail
: "${OUT:?set OUT to the folder whose contents come back}"
DIT_S=${DIT_S:-210}        # leg 1 wall clock, all included [210]
UNET_S=${UNET_S:-170}      # leg 3 wall clock [170]
TUNE_VAL=${TUNE_VAL:-150}  # val scenes for legs 2 and 4 [150]
TEST=${TEST:-300}          # test scenes for leg 2 [300]
SAVE_EVERY=${SAVE_EVERY:-400}  # steps between checkpoints (each probed for binding) in legs 1 and 3 [400]
WORK=${WORK:-runs/gpu/$(date +%Y%m%d-%H%M%S)}  # big files (state.pt, checkpoints), outside $OUT; a new folder per
                           # run: training refuses a folder that holds a run [runs/gpu/<date-time>]
DEVICE=${DEVICE:-cuda}     # cpu: a rehearsal of every leg (with small budgets) on a machine without a GPU [cuda]
DIT_ARGS=${DIT_ARGS:-}     # more train_mmdit flags for leg 1, after the recipe's (the last one wins) [none]
UNET_ARGS=${UNET_ARGS:-}   # more train flags for leg 3 [none]
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
source benchmarks/gpu_env.sh || exit 2
mkdir -p "$OUT" "$WORK"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/recipe.log"; }
copy_run() {  # run folder -> $OUT/<name>: logs, configs and the chosen model folder (no optimiser state)
  local run=$1 name=$2 pick=$3
  mkdir -p "$OUT/$name"
  cp "$run"/log.jsonl "$run"/train_config.json "$OUT/$name/" 2>/dev/null
  cp "$run"/best.json "$OUT/$name/" 2>/dev/null
  if [ -d "$run/$pick" ]; then cp -r "$run/$pick" "$OUT/$name/model"; elif [ -d "$run/model" ]; then cp -r "$run/model" "$OUT/$name/model"; fi
}
python3 - "$DEVICE" <<'EOF' || { log "no CUDA device or packages missing"; exit 2; }
import sys, torch, diffusers, transformers
cuda = sys.argv[1].startswith("cuda")
assert torch.cuda.is_available() or not cuda, "no CUDA device"
print(torch.__version__, diffusers.__version__, transformers.__version__, torch.cuda.get_device_name(0) if cuda else "cpu")
EOF
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv > "$OUT/gpu.csv" 2>/dev/null

log "leg 1: MM-DiT, ${DIT_S}s"
timeout $((DIT_S + 60)) python3 -m research.shapes.train_mmdit --out "$WORK/mmdit" --device "$DEVICE" \
  --time-budget-s "$DIT_S" --save-every "$SAVE_EVERY" --probe-scenes 64 --keep-best all_blocks $DIT_ARGS > "$OUT/mmdit_stdout.log" 2>&1
log "leg 1 exit $?"
copy_run "$WORK/mmdit" mmdit best

log "leg 2: MM-DiT settings on val, test once"
timeout 150 python3 -m research.shapes.tune_dit --model "$OUT/mmdit/model" --out "$OUT/mmdit_tune" --val "$TUNE_VAL" \
  --test "$TEST" --device "$DEVICE" > "$OUT/mmdit_tune_stdout.log" 2>&1
log "leg 2 exit $?"

log "leg 3: UNet levers, ${UNET_S}s"
timeout $((UNET_S + 60)) python3 -m research.shapes.train --out "$WORK/unet" --device "$DEVICE" --time-budget-s "$UNET_S" \
  --unet-channels 64,128,128 --unet-heads 4,4,4 --p-drop-position 0.1 --save-every "$SAVE_EVERY" --probe-scenes 64 \
  --keep-best all_levels $UNET_ARGS > "$OUT/unet_stdout.log" 2>&1
log "leg 3 exit $?"
copy_run "$WORK/unet" unet best

log "leg 4: new UNet vs shipped on val, shipped settings"
timeout 90 python3 - "$OUT/unet/model" "$TUNE_VAL" "$DEVICE" > "$OUT/unet_vs_shipped.json" 2> "$OUT/unet_vs_shipped.err" <<'EOF'
import json, sys
from diffsegmenter import DiffSegmenter
from diffsegmenter.loading import resolve_model
from research.shapes.quality import binding_probe, evaluate_segmenter, scenes_of
new, n, device = sys.argv[1], int(sys.argv[2]), sys.argv[3]
val = scenes_of("val", n)
shipped = DiffSegmenter.from_pretrained("shapes", device=device)
out = {"val_scenes": n, "settings": "the shipped segmenter_config.json for both"}
for name, folder in (("shipped", resolve_model("shapes")), ("new", new)):
    seg = DiffSegmenter.from_pretrained(folder, device=device, config=shipped.config)
    out[name] = {"val": evaluate_segmenter(seg, val), "binding_probe_val": binding_probe(seg, val)}
print(json.dumps(out, indent=2, default=float))
EOF
log "leg 4 exit $?"
du -sh "$OUT" | tee -a "$OUT/recipe.log"
