"""The paper-shaped rehearsal (configs/rehearsal-sd.yaml): the SD preset's field, 64×64 renders, background, shading
and regularisers, trained with the world prior on 3 prompts through the workflow, must meet the default run's
geometry bars. Since session 16 the field has no decoder, and on 2 CPU cores it trains ≈ 1.7 steps/s an object (2,000
steps ≈ 20-35 min), so it runs without a GPU: pytest -m slow tests/test_rehearsal.py (98 min on 2 cores, session 19).

Status (issue #16): it passes since session 18 (blob capped at 4): cube 0.672, cone 0.662, pyramid 0.599, mean 0.644,
fog 1.0 %, gain +0.155 (this test, session 19; benchmarks/recipe_probe.py reads the same IoUs); seed 1 through the
probe: 0.634 / 0.651 / 0.625, mean 0.637. History: the MLP-decoded field it had crumpled under the shaded 64×64
renders (an H200, session 15: mean IoU 0.387, below the untrained ball's 0.489). The decoder-free field does not
crumple: seed 0, through benchmarks/recipe_probe.py on the CPU, cube 0.618, cone 0.524, pyramid 0.548 (session 16);
with textureless renders in the bank (session 17) 0.692 / 0.554 / 0.545, mean 0.597, fog 3.3 %; the bar is 0.6.
Its prompts are the cube, the cone and the pyramid, not the sphere: the init's ball alone scores 0.81 there. On
these three the untrained field scores 0.489, so the bar is training's."""

import json

import pytest

from tests.conftest import run_snakemake

pytestmark = pytest.mark.slow


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
