#!/usr/bin/env bash
# Wheels of the Python packages the lent GPU machine's image lacks (its Python 3.12, x86-64), saved to .whl/
# (git-ignored through .git/info/exclude) for benchmarks/gpu_session.sh. Run here, where PyPI is reachable:
#   bash benchmarks/gpu_wheels.sh
# Versions are the ones installed in this checkout's environment, so the device runs what the tests ran.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
# the probe path (config validation, SDS training, geometry, views, the world's evaluator), the GPU guidance, meshes
names=(pydantic pydantic-core annotated-types typing-inspection diffusers clip-anytorch ftfy wcwidth PyMCubes trimesh)
pins=()
for n in "${names[@]}"; do
  pins+=("$n==$(python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$n")")
done
rm -rf .whl && mkdir .whl
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"
ls -1 .whl && du -sh .whl
