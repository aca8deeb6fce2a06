"""The paper-shaped rehearsal (configs/rehearsal-sd.yaml): the SD preset's field, 64×64 renders, background, shading
and regularisers, trained with the world prior on 3 prompts through the workflow, must meet the default run's
geometry bars. It needs a CUDA device: on 2 CPU cores the field alone costs 6.7 s a step, about 4 h an object
(benchmarks/RESULTS.md). Run: pytest -m gpu tests/test_rehearsal.py

Status (issue #16): threestudio's init with a white-only prior failed on an H200 (mean IoU 0.42, fog 46 %: sphere
0.83 / 4 %, cube 0.25 / 65 %, pyramid 0.18 / 70 %). The preset now has the background-agnostic prior (world.background:
any), the world's capped blob of 40, binary opacity and analytic normals, chosen on the CPU proxy
(configs/overlays/rehearsal-cpu.yaml). It has not run at 64×64, so this test is the measurement, not a known pass.
Its prompts are the cube, the cone and the pyramid, not the sphere: on the sphere the init's ball alone scores 0.81,
and with it the untrained field was above the bar (0.636). On these three the untrained field scores 0.489, so the
bar is training's; the proxy reads 0.596 / fog 2.3 % over two seeds, a gain of +0.107 (benchmarks/RESULTS.md,
session 13)."""

import json

import pytest
import torch

from tests.conftest import run_snakemake

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (7 h an object on 2 CPU cores)")
def test_the_paper_shaped_recipe_makes_objects_not_fog(workdir):
    run_snakemake(workdir, "--configfile", "configs/rehearsal-sd.yaml", "--retries", "0")
    files = sorted((workdir / "results/primitives/world-w10-uniform-rehearsal-sd").glob("*/seed0/geometry.json"))
    assert len(files) == 3
    got = [json.loads(f.read_text()) for f in files]
    iou, fog, gain = (sum(g[k] for g in got) / len(got) for k in ("iou", "fog", "iou_gain"))
    per_object = {f.parent.parent.name: (g["iou"], g["fog"], g["iou_gain"]) for f, g in zip(files, got, strict=True)}
    assert iou >= 0.6 and fog <= 0.1, per_object
    # the untrained ball scores 0.489 on these prompts (cube 0.681, cone 0.367, pyramid 0.418): training, not the
    # init, must earn the bar
    assert gain > 0, per_object
