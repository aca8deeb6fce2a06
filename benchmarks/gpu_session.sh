#!/usr/bin/env bash
# The prepared device check of issue #16, ONE `run` call of ~9 minutes on a lent H100/H200 (15 minutes of device
# time a session, start included; a machine left idle 30 s goes back, and a second call starts a bare one, bank and
# all). Here:   bash benchmarks/gpu_wheels.sh      (the wheels the image lacks → .whl/)
# Then the device tool, at once: run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=590)
#
# It measures what no CPU can: the paper-shaped rehearsal (configs/rehearsal-sd.yaml: the SD preset's field, 64x64
# renders, background, shading and regularisers, the world prior, 2,000 steps) on its 3 prompts, through
# benchmarks/recipe_probe.py (the workflow's own training, geometry, views and evaluation code; the device image has
# no Snakemake or open3d, so `pytest -m gpu tests/test_rehearsal.py` needs a full environment):
#   1. the card, torch, and whether analytic normals work there (torch 2.11 on CUDA, the image's in session 14, lacks
#      grid_sample's double backward: then the preset runs with central differences, about twice the step);
#   2. the rehearsal's 64x64 bank (300 images a caption; 44 s on an H200);
#   3. the preset, 3 prompts in 3 processes on the one GPU, scored part-way at 250, 500, 1,000 and 1,500 steps and at
#      the end (with the evaluation views' sheet at each stage), each line printed as it comes, so a run the time limit
#      cuts still reports. One variant only: in session 14 two variants side by side (6 processes) finished no object
#      in 420 s, and 3 processes none in ~250 s.
# $OUT gets card.txt, bank.log, preset.log (per object and stage: IoU, fog, size; at the end colour and shape hit, then
# the mean as a JSON line), preset.png (colour views above textureless ones, one object under the other) and each
# object's sheet at each stage it reached (<prompt>-<seed>-sheet-<step>.png).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; python3 -c "import torch; print('torch', torch.__version__)"; } \
  | tee "$OUT/card.txt"
normals=()
if ! python3 -c "import torch; from pipeline.nerf.field import require_analytic_normals as r; r(torch.device('cuda'))" \
  >> "$OUT/card.txt" 2>&1; then
  echo "analytic normals: not on this torch; the preset runs with central differences" | tee -a "$OUT/card.txt"
  normals=(--set nerf.normals=finite_difference)
else
  echo "analytic normals: ok" | tee -a "$OUT/card.txt"
fi
time python3 -c "
from benchmarks.recipe_probe import probe_settings, world_bank
from pipeline.config import from_dict
print(world_bank(from_dict(probe_settings('configs/rehearsal-sd.yaml', []))))" > "$OUT/bank.log" 2>&1 || exit 1

# the preset's 3 prompts; whatever the limit leaves is in preset.log already
timeout 480 python3 benchmarks/recipe_probe.py --config configs/rehearsal-sd.yaml "${normals[@]}" --jobs 3 \
  --score-at 250 500 1000 1500 --sheet "$OUT/preset.png" 2>&1 | tee "$OUT/preset.log"
# every object's sheet at every stage it reached (sheet-<step>.png; sheet.png at the end), cut run or not
for f in /tmp/recipe-probe/*/*/sheet*.png; do
  [ -e "$f" ] && cp "$f" "$OUT/$(basename "$(dirname "$f")")-$(basename "$f")"
done
