#!/usr/bin/env bash
# The prepared device check of issue #16, one `run` call of ~8 minutes on a lent H100/H200 (15 minutes of device
# time a session, start included). Here:   bash benchmarks/gpu_wheels.sh      (the wheels the image lacks → .whl/)
# Then the device tool: run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=580)
#
# It measures what no CPU can: the paper-shaped rehearsal (configs/rehearsal-sd.yaml: the SD preset's field, 64x64
# renders, background, shading and regularisers, the world prior, 2,000 steps) on its 3 prompts, through
# benchmarks/recipe_probe.py (the workflow's own training, geometry, views and evaluation code; the device image has
# no Snakemake or open3d, so `pytest -m gpu tests/test_rehearsal.py` needs a full environment):
#   1. the card, torch, and whether analytic normals work there (else the rehearsal falls back to central differences);
#   2. the rehearsal's 64x64 bank (300 images a caption);
#   3. the preset as it is, and beside it the preset with central differences (or, where analytic normals do not
#      work, threestudio's init: blob 10 uncapped, no binary opacity), 3 prompts each, 6 processes on the one GPU.
# $OUT gets card.txt, bank.log, and per variant <name>.log (per object IoU, fog, colour, shape hit; then the mean as a
# JSON line) and <name>.png (colour views above textureless ones, one object under the other).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; python3 -c "import torch; print('torch', torch.__version__)"; } \
  | tee "$OUT/card.txt"
second=(fd --set nerf.normals=finite_difference)
if ! python3 -c "import torch; from pipeline.nerf.field import require_analytic_normals as r; r(torch.device('cuda'))" \
  >> "$OUT/card.txt" 2>&1; then
  echo "analytic normals: not on this torch; the preset runs with central differences" | tee -a "$OUT/card.txt"
  first=(preset-fd --set nerf.normals=finite_difference)
  second=(threestudio-init --set nerf.normals=finite_difference --set nerf.blob_density=10 --set nerf.blob_cap=0
    --set train.entropy_weight=0)
else
  echo "analytic normals: ok" | tee -a "$OUT/card.txt"
  first=(preset)
fi
time python3 -c "
from benchmarks.recipe_probe import probe_settings, world_bank
from pipeline.config import from_dict
print(world_bank(from_dict(probe_settings('configs/rehearsal-sd.yaml', []))))" > "$OUT/bank.log" 2>&1 || exit 1

probe() {  # name, then --set overrides
  local name=$1
  shift
  timeout 420 python3 benchmarks/recipe_probe.py --config configs/rehearsal-sd.yaml "$@" --jobs 3 \
    --sheet "$OUT/$name.png" > "$OUT/$name.log" 2>&1   # the preset's 3 prompts
}
probe "${first[@]}" &
probe "${second[@]}" &
wait
tail -n 5 "$OUT"/*.log
