#!/usr/bin/env bash
# The prepared throughput check on a lent H100/H200 (one call; 15 minutes of device time a session, start included):
#   bash benchmarks/gpu_wheels.sh                 (here: the wheels the device image lacks → .whl/)
#   run(command="bash benchmarks/gpu_throughput.sh", carry=[".whl"], timeout_s=540)
# For SD 2.1 and IF (real architectures, random weights, fp16): object-steps/s and GPU memory per object at
# K = 1, 4, 8, 16 objects per job (train.objects_per_job), STEPS steps each, each setup under its own time limit so a
# cut run still reports what it measured. $OUT gets card.txt, sd21.json and if.json (one JSON line per K, then the
# summary); record them with the card's name in benchmarks/RESULTS.md.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-throughput}
STEPS=${STEPS:-40}
KS=${KS:-1,4,8,16}
mkdir -p "$OUT"
[ -d .whl ] && { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl/*.whl || exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; python3 -c "import torch; print('torch', torch.__version__)"; } \
  | tee "$OUT/card.txt"
timeout 240 python3 benchmarks/bench_sds_gpu.py --setup sd21 --steps "$STEPS" --dtype float16 --objects-per-job "$KS" \
  --stages train 2>&1 | grep -v "kept in float32" | tee "$OUT/sd21.json"
timeout 240 python3 benchmarks/bench_sds_gpu.py --setup if --steps "$STEPS" --dtype float16 --objects-per-job "$KS" \
  --stages train 2>&1 | grep -v "kept in float32" | tee "$OUT/if.json"
