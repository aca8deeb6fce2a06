"""benchmarks/recipe_probe.py, the development probe the GPU session (benchmarks/gpu_session.sh) runs: its settings
are the workflow's (params.yaml, presets merged in order, then --set), and its sheet stacks the objects' sheets."""

import imageio.v3 as iio
import numpy as np
import pytest
import yaml

from benchmarks.recipe_probe import ROOT, probe_settings, stack_sheets


def test_presets_merge_in_order_then_the_overrides_win():
    data = probe_settings(
        ["configs/rehearsal-sd.yaml", "configs/overlays/rehearsal-cpu.yaml"], ["train.steps=7", "nerf.blob_cap=0"]
    )
    overlay = yaml.safe_load((ROOT / "configs/overlays/rehearsal-cpu.yaml").read_text())
    assert data["train"]["steps"] == 7 and data["nerf"]["blob_cap"] == 0
    assert data["render"]["resolution"] == overlay["render"]["resolution"] == 32  # the overlay over the rehearsal
    assert data["render"]["background"] == "mlp"  # the rehearsal's key the overlay leaves alone
    assert data["nerf"]["unlock_steps"] == overlay["nerf"]["unlock_steps"]
    assert data["tracking"] == {"enabled": False}


def test_sheets_stack_top_to_bottom_padded_white_on_the_right(tmp_path):
    a = np.zeros((4, 6, 3), np.uint8)
    b = np.full((2, 3, 4), 100, np.uint8)  # narrower, with an alpha channel
    iio.imwrite(tmp_path / "a.png", a)
    iio.imwrite(tmp_path / "b.png", b)
    stack_sheets([tmp_path / "a.png", tmp_path / "b.png"], tmp_path / "out" / "both.png")
    got = iio.imread(tmp_path / "out" / "both.png")
    assert got.shape == (6, 6, 3)
    assert (got[:4] == 0).all()
    assert (got[4:, :3] == 100).all() and (got[4:, 3:] == 255).all()
    assert not list((tmp_path / "out").glob("*.tmp*"))


def test_an_untrained_object_scores_its_init_and_gains_nothing():
    from benchmarks.recipe_probe import shape_scores
    from pipeline.config import from_dict
    from pipeline.nerf.model import initial_model

    cfg = from_dict(probe_settings(None, []))
    got = shape_scores(cfg, initial_model(cfg, 3), "an orange pyramid.", seed=3)
    assert got["iou"] == got["init_iou"] and got["iou_gain"] == 0.0
    assert got["iou"] == pytest.approx(0.4185, abs=1e-4)  # the capped blob in a pyramid (RESULTS.md, session 8)


def test_stage_sheets_go_object_by_object_by_step_the_finished_sheet_last(tmp_path):
    from benchmarks.recipe_probe import stage_sheets

    for name in ["b-0/sheet.png", "b-0/sheet-1000.png", "b-0/sheet-250.png", "a-0/sheet-500.png", "a-0/other.png"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).touch()
    got = [f"{p.parent.name}/{p.name}" for p in stage_sheets(tmp_path)]
    assert got == ["a-0/sheet-500.png", "b-0/sheet-250.png", "b-0/sheet-1000.png", "b-0/sheet.png"]
