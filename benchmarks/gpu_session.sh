#!/usr/bin/env bash
# The prepared rehearsal check on a lent H100/H200 (15 minutes of device time a session, start included; a machine
# left idle 30 s goes back, and a second call starts a bare one, bank and all). Here:
#   bash benchmarks/gpu_wheels.sh      (the wheels the image lacks → .whl/)
# then the device tool, at once:
#   run(command="bash benchmarks/gpu_session.sh [VARIANT ...]", carry=[".whl"], timeout_s=590)
# A VARIANT is one quoted argument list for recipe_probe.py; none means the preset itself ("--jobs 3"). Examples:
#   1. bash benchmarks/gpu_session.sh                                     (≈ 300 s: start, bank, 3 objects)
#   2. LIMIT=400 SCORE_AT="500 1000 1500" bash benchmarks/gpu_session.sh \
#        "--set shading.albedo_steps=2000 --prompts 'a green cube' 'an orange pyramid' --jobs 2" \
#        "--set train.lr=0.005 --prompts 'a green cube' 'an orange pyramid' --jobs 2" …    (≈ 470 s, 6 processes)
#   3. analytic normals (by gathers on the image's torch) against central differences (grid_sample), 6 processes:
#      LIMIT=450 SCORE_AT="500 1000 1500" bash benchmarks/gpu_session.sh "--jobs 3" \
#        "--set nerf.lookup=grid_sample --set nerf.normals=finite_difference --jobs 3"
#
# It measures the paper-shaped rehearsal on a GPU (configs/rehearsal-sd.yaml: the SD preset's
# field, 64x64 renders, background, shading and regularisers, the world prior, 2,000 steps) through
# benchmarks/recipe_probe.py (the workflow's own training, geometry, views and evaluation code; the device image has
# no Snakemake or open3d, so `pytest -m slow tests/test_rehearsal.py` needs a full environment):
#   1. the card, torch, and whether analytic normals work there through grid_sample (torch 2.11 on CUDA, the image's
#      in sessions 14-15, lacks its double backward: then every variant reads the grids by `nerf.lookup: gather`, the
#      same interpolation differentiable to any order, so the preset runs with the analytic normals it asks for; in
#      sessions 14-15 the fallback was central differences, `--set nerf.normals=finite_difference`);
#   2. the rehearsal's 64x64 bank (300 images a caption; 43 s on an H200);
#   3. one probe per variant, side by side, each scored part-way at SCORE_AT (default 250 500 1000 1500) and at the
#      end, each line printed as it comes, so a run the time limit (LIMIT, default 480 s) cuts still reports. The
#      preset's 3 objects in 3 processes take ≈ 215 s; 6 processes run at about half the speed each.
# $OUT gets card.txt (card, torch, normals, bank time, which sheets were stacked), v<i>.log per variant (per object
# and stage: IoU, fog, size; at the end colour and shape hit, then the mean as a JSON line) and v<i>.png (the
# evaluation views, colour above textureless, of every object at every stage it reached, in that order). The device
# tool brings back at most 8 files, so keep to 3 variants.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
CONFIGS=(${CONFIGS:-configs/rehearsal-sd.yaml})  # a CPU smoke test of this script: CONFIGS="… configs/overlays/rehearsal-cpu.yaml"
[ -d .whl ] && { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl/*.whl || exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; python3 -c "import torch; print('torch', torch.__version__)"; } \
  | tee "$OUT/card.txt"
normals=()
if ! python3 -c "import torch; from pipeline.nerf.field import require_analytic_normals as r; r(torch.device('cuda'))" \
  >> "$OUT/card.txt" 2>&1; then
  echo "analytic normals: not through grid_sample on this torch; the preset reads its grids by nerf.lookup: gather" \
    | tee -a "$OUT/card.txt"
  normals=(--set nerf.lookup=gather)
else
  echo "analytic normals: ok" | tee -a "$OUT/card.txt"
fi
{ time python3 -c "
from benchmarks.recipe_probe import probe_settings, world_bank
from pipeline.config import from_dict
import sys
print(world_bank(from_dict(probe_settings(sys.argv[1:], []))))" "${CONFIGS[@]}"; } >> "$OUT/card.txt" 2>&1 || exit 1

# one probe per variant, side by side (no argument: the preset itself); a variant is a quoted argument list for
# recipe_probe.py, e.g. "--set train.lr=0.005 --prompts 'a green cube' --jobs 1"; whatever the limit leaves is in the
# logs already, and each variant's sheets (every object at every stage it reached) are stacked into v<i>.png
[ $# -eq 0 ] && set -- "--jobs 3"
i=0
for v in "$@"; do
  i=$((i + 1))
  echo "v$i: $v" | tee -a "$OUT/card.txt"
  eval "args=($v)"
  timeout "${LIMIT:-480}" python3 benchmarks/recipe_probe.py "${CONFIGS[@]/#/--config=}" "${normals[@]}" \
    --score-at ${SCORE_AT:-250 500 1000 1500} "${args[@]}" > "$OUT/v$i.log" 2>&1 &
done
wait
i=0
for v in "$@"; do
  i=$((i + 1))
  python3 - "$OUT/v$i.log" "$OUT/v$i.png" <<'PY'
import re, sys
from pathlib import Path
from benchmarks.recipe_probe import stack_sheets, stage_sheets
log, png = Path(sys.argv[1]), Path(sys.argv[2])
found = re.search(r"^objects: (.+)$", log.read_text(), re.M)
sheets = stage_sheets(Path(found[1])) if found else []
if sheets:
    stack_sheets(sheets, png)
print(png, len(sheets), "sheets:", *(f"{p.parent.name}/{p.name}" for p in sheets))
PY
done | tee -a "$OUT/card.txt"
tail -n 20 "$OUT"/v*.log
