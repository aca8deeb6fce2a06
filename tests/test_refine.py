"""The second, sharp stage (pipeline/refine.py): its start is the first stage's surface as a distance, and SDS on
the world prior keeps a true primitive where it is."""

import numpy as np
import pytest
import torch

from benchmarks.recipe_probe import shape_scores
from benchmarks.truth_fixed_point import truth_model
from pipeline import config as cfgmod
from pipeline.geometry import grid_points
from pipeline.refine import drop_islands, initial_refined, refine_config, signed_distance
from pipeline.world.scenes import COLOURS, sdf

SMALL = {
    "world": {"images_per_caption": 24},
    "nerf": {"unlock_steps": [0, 0]},
    "tracking": {"enabled": False},
    "refine": {"enabled": True, "steps": 40, "sdf_width": [0, 0.02, 0.01, 20]},
}


def test_the_signed_distance_of_a_voxelised_sphere_is_the_spheres_within_half_a_node():
    r, spacing = 64, 2.0 / 63
    axis = np.linspace(-1, 1, r)
    zz, yy, xx = np.meshgrid(axis, axis, axis, indexing="ij")
    true = 0.4 - np.sqrt(xx**2 + yy**2 + zz**2)
    z = signed_distance(true > 0, spacing)
    near = np.abs(true) < 0.15
    assert np.abs(z - true)[near].max() <= 0.5 * spacing * 1.01 + 1e-6
    assert ((z > 0) == (true > 0)).all()
    with pytest.raises(ValueError, match="empty"):
        signed_distance(np.zeros((4, 4, 4), bool), spacing)


def test_islands_smaller_than_the_mesh_stages_fraction_are_dropped():
    occ = np.zeros((20, 20, 20), bool)
    occ[2:12, 2:12, 2:12] = True  # 1000 nodes
    occ[15:17, 15:17, 15:17] = True  # 8 nodes: under 5 %
    kept = drop_islands(occ, 0.05)
    assert kept.sum() == 1000 and not kept[15:17, 15:17, 15:17].any()
    assert drop_islands(occ, 0.0).sum() == 1008


def test_the_second_stage_starts_at_the_first_stages_surface_with_its_albedo():
    first_cfg = cfgmod.from_dict(SMALL)
    first = truth_model(first_cfg, "a green cube.", 0)
    cfg = refine_config(first_cfg)
    assert cfg.nerf.kind == "grid" and cfg.nerf.resolution == 64 and cfg.nerf.density_activation == "sdf"
    assert cfg.train.steps == 40 and cfg.train.lr == 0.001 and cfg.shading.albedo_steps == 0
    model = initial_refined(first, first_cfg, cfg)
    model.field.set_step(None)
    pts = grid_points(1.0)
    scores = shape_scores(cfg, model, "a green cube.")
    assert scores["iou"] >= 0.98 and scores["fog"] < 0.01
    _, albedo = model.field.density_albedo(torch.tensor([[0.0, 0.0, 0.0]]))
    assert torch.allclose(albedo[0], torch.tensor(COLOURS["green"]).clamp(0.02, 0.98), atol=1e-5)
    z = model.field._node_distance().detach().numpy().transpose(2, 1, 0).reshape(-1)  # (z, y, x) nodes → x, y, z
    true = -sdf("cube", pts).numpy()
    near = np.abs(true) < 0.1
    assert np.abs(z - true)[near].mean() < 0.5 * model.field.spacing


def test_a_refine_config_refuses_a_decoder_field():
    with pytest.raises(cfgmod.ConfigError, match="decoder-free"):
        refine_config(cfgmod.from_dict({**SMALL, "nerf": {"mlp_hidden": 16, "features": 8}}))


def test_the_second_stage_started_from_the_true_primitive_stays_there(tmp_path):
    """40 SDS steps of the second stage under the world prior, started at the true cube: it stays a cube (3D IoU
    ≥ 0.95 against the primitive, no fog) and keeps its colour."""
    from pipeline.train import Target, train_many
    from pipeline.world.prior import ClosedFormWorldPrior, generate_bank

    first_cfg = cfgmod.from_dict(SMALL)
    cfg = refine_config(first_cfg)
    first = truth_model(first_cfg, "a green cube.", 0)
    prior = ClosedFormWorldPrior(generate_bank(cfg), torch.device("cpu"))
    target = Target("a-green-cube", "a green cube.", 0, tmp_path, lambda: initial_refined(first, first_cfg, cfg), "x")
    train_many(cfg, [target], prior)
    from pipeline.nerf.model import load_model

    model, saved_cfg, ident = load_model(tmp_path / "model.safetensors")
    assert saved_cfg == cfg and ident["init"] == "x"
    scores = shape_scores(cfg, model, "a green cube.")
    assert scores["iou"] >= 0.95 and scores["fog"] < 0.01, scores


def test_the_workflow_refines_each_object_and_later_stages_read_the_second_stage(workdir):
    """refine.enabled adds one refine job per object; mesh, views and geometry then read refined/model.safetensors,
    and geometry gets the first stage beside it. Off (the default), nothing changes."""
    import re

    from tests.conftest import run_snakemake

    on = run_snakemake(workdir, "-n", "-p", "--config", 'refine={"enabled": true}').stdout
    assert len(re.findall(r"^rule refine:", on, re.M)) == 8
    assert on.count("python -m pipeline.refine") == 8
    meshes = re.findall(r"python -m pipeline\.mesh --model (\S+)", on)
    assert len(meshes) == 8 and all(m.endswith("/refined/model.safetensors") for m in meshes)
    assert len(re.findall(r"python -m pipeline\.geometry .*--first-stage \S+/seed0/model\.safetensors", on)) == 8
    off = run_snakemake(workdir, "-n", "-p").stdout
    assert "rule refine:" not in off and "refined/" not in off


def test_the_report_puts_the_first_stage_beside_the_refined_objects(tmp_path):
    """geometry.json of refined objects carries the first stage's measures: their means reach the summary, table.md
    has a first-stage row under the variant's, MLflow gets geometry.first_stage.<measure>; out-of-range values are
    refused like the top-level ones."""
    import json

    from pipeline.evaluate import collect_geometry
    from pipeline.records import RecordError
    from pipeline.report import table_md

    files = []
    for i, (iou, first) in enumerate([(0.7, 0.6), (0.5, 0.6)]):
        f = tmp_path / f"p{i}" / "seed0" / "geometry.json"
        f.parent.mkdir(parents=True)
        f.write_text(json.dumps({"iou": iou, "fog": 0.0, "first_stage": {"iou": first, "fog": 0.1, "iou_scaled": 0.7}}))
        files.append(f)
    geo = collect_geometry(files)
    assert geo["summary"]["iou"] == pytest.approx(0.6)
    assert geo["summary"]["first_stage"] == pytest.approx({"iou": 0.6, "fog": 0.1, "iou_scaled": 0.7})
    md = table_md({"v": {"models": {}, "retrieval_set_size": 36, "geometry": geo}}, [], True, None)
    assert "| ours: v | 0.600 | 0.000 |" in md and "| ours: v, first stage | 0.600 | 0.100 |" in md
    files[0].write_text(json.dumps({"iou": 0.7, "first_stage": {"iou": 7.5}}))
    with pytest.raises(RecordError, match=r"first_stage\.iou"):
        collect_geometry(files)
