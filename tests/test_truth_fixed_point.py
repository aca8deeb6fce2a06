"""benchmarks/truth_fixed_point.py starts its `truth` arm at the primitive itself: exact checks of that start."""

import math

import pytest
import torch

from benchmarks.recipe_probe import shape_scores
from benchmarks.truth_fixed_point import truth_model
from pipeline import config as cfgmod
from pipeline.geometry import grid_points
from pipeline.world.scenes import COLOURS, sdf


def _cfg(**nerf):
    return cfgmod.from_dict({"nerf": {"unlock_steps": [0, 0], **nerf}, "tracking": {"enabled": False}})


def test_the_truth_start_is_the_primitive_with_its_colour():
    cfg = _cfg()
    model = truth_model(cfg, "a green cube.", 0)
    pts = grid_points(cfg.nerf.bound)
    sigma, albedo = model.field.density_albedo(pts)
    want = 60.0 * torch.sigmoid(torch.logit(torch.tensor(math.log(2) / 0.25 / 60.0)) - sdf("cube", pts) / 0.002)
    assert torch.allclose(sigma, want.clamp(min=1e-4), rtol=1e-4, atol=1e-4)
    assert torch.allclose(albedo, torch.tensor(COLOURS["green"]).clamp(0.02, 0.98).expand_as(albedo), atol=1e-6)
    scores = shape_scores(cfg, model, "a green cube.")
    assert scores["iou"] == 1.0 and scores["iou_scaled"] == 1.0 and scores["scale"] == 1.0
    assert scores["fog"] < 1e-4


def test_the_truth_start_cancels_the_blob_and_the_shift():
    """The field adds its blob and density shift to the grid: the start must not depend on them."""
    a = truth_model(_cfg(), "a purple torus.", 0)
    b = truth_model(_cfg(blob_density=10.0, blob_cap=0.0, density_shift=-2.0), "a purple torus.", 0)
    pts = grid_points(1.0, 24)
    assert torch.allclose(a.field.density_albedo(pts)[0], b.field.density_albedo(pts)[0], rtol=1e-4, atol=1e-4)


def test_a_soft_truth_keeps_the_iso_level_on_the_true_surface():
    cfg = _cfg()
    scores = shape_scores(cfg, truth_model(cfg, "a red sphere.", 0, softness=0.05), "a red sphere.")
    assert scores["scale"] == 1.0 and scores["iou"] > 0.95


def test_a_decoder_field_is_refused():
    with pytest.raises(SystemExit, match="mlp_hidden"):
        truth_model(_cfg(features=8, mlp_hidden=16), "a red sphere.", 0)
