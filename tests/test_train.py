import json

import pytest
import torch
from safetensors.torch import load_file

from pipeline.checkpoint import CheckpointError, CheckpointMismatch, checkpoint_step
from pipeline.config import from_dict
from pipeline.nerf.model import load_model
from pipeline.train import TrainingDiverged, checkpoint_model, learning_rate, train
from pipeline.world.prior import ClosedFormWorldPrior, generate_bank

TINY = {
    "world": {"images_per_caption": 8, "resolution": 16},
    "render": {"resolution": 16, "samples": 16},
    "nerf": {"levels": [4, 8, 12], "unlock_steps": [0, 2]},
    "shading": {"albedo_steps": 2},
    "train": {"steps": 8, "batch_views": 2, "checkpoint_every": 3, "warmup_steps": 2},
    "tracking": {"enabled": False},
}


@pytest.fixture(scope="module")
def prior():
    return ClosedFormWorldPrior(generate_bank(from_dict(TINY)), torch.device("cpu"))


def test_learning_rate_warmup_and_cosine():
    cfg = from_dict({"train": {"steps": 102, "lr": 0.1, "warmup_steps": 2, "final_lr_ratio": 0.1}})
    assert learning_rate(cfg, 0) == pytest.approx(1e-4)
    assert learning_rate(cfg, 2) == pytest.approx(0.1)
    assert learning_rate(cfg, 101) == pytest.approx(0.01)
    assert learning_rate(cfg, 51) == pytest.approx(0.055, abs=1e-3)


def test_end_to_end_outputs(tmp_path, prior):
    cfg = from_dict(TINY)
    m = train(cfg, "a-red-cube", "a red cube.", 0, tmp_path, prior)
    assert (
        m["steps"] == 8
        and m["resumed_from"] == 0
        and set(m["seconds_per_step"]) == {"render", "guidance", "backward", "optimiser"}
    )
    assert (tmp_path / "model.safetensors").exists()
    # the resumable checkpoint is gone; the finished outputs are kept as hard links (no extra disk space)
    kept = tmp_path / "checkpoint"
    assert sorted(p.name for p in kept.iterdir()) == ["final-metrics.json", "final-model.safetensors", "final.json"]
    assert (kept / "final-model.safetensors").stat().st_ino == (tmp_path / "model.safetensors").stat().st_ino
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(8))
    assert len(list((tmp_path / "previews").glob("*.png"))) >= 1
    model, loaded_cfg, ident = load_model(tmp_path / "model.safetensors")
    assert loaded_cfg == cfg and ident["prompt"] == "a red cube."


def test_finished_outputs_discarded_after_an_interrupt_are_restored_not_retrained(tmp_path, prior, monkeypatch):
    """Snakemake marks a job that finished while it was being interrupted as incomplete and deletes its outputs;
    the next run puts the finished model back instead of training again, but only for the same code."""
    import pipeline.train as tr

    cfg = from_dict(TINY)
    train(cfg, "p", "a red cube.", 0, tmp_path, prior)
    model = (tmp_path / "model.safetensors").read_bytes()
    for name in ("model.safetensors", "metrics.json"):
        (tmp_path / name).unlink()
    steps = []
    m = train(cfg, "p", "a red cube.", 0, tmp_path, prior, on_step=lambda s, _: steps.append(s))
    assert steps == [] and (tmp_path / "model.safetensors").read_bytes() == model and m["steps"] == 8
    (tmp_path / "model.safetensors").unlink()
    monkeypatch.setattr(tr, "code_digest", lambda: "other code")  # edited code: train again
    train(cfg, "p", "a red cube.", 0, tmp_path, prior, on_step=lambda s, _: steps.append(s))
    assert steps == list(range(8))


def test_resume_gives_identical_weights(tmp_path, prior):
    cfg = from_dict(TINY)
    train(cfg, "p", "a red cube.", 1, tmp_path / "full", prior)
    assert train(cfg, "p", "a red cube.", 1, tmp_path / "cut", prior, stop_after=5) == {"stopped_at": 5}
    assert checkpoint_step(tmp_path / "cut/checkpoint") == 5
    m = train(cfg, "p", "a red cube.", 1, tmp_path / "cut", prior)
    assert m["resumed_from"] == 5
    a, b = load_file(str(tmp_path / "full/model.safetensors")), load_file(str(tmp_path / "cut/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = (tmp_path / "full/log.jsonl").read_text().splitlines()
    lb = (tmp_path / "cut/log.jsonl").read_text().splitlines()
    assert [json.loads(x)["loss"] for x in la] == [json.loads(x)["loss"] for x in lb]


def test_a_run_part_way_is_its_checkpoints_weights_at_its_step(tmp_path, prior):
    """recipe_probe --score-at scores an unfinished run: the checkpoint's weights, the field at the checkpoint's step
    (its coarse-to-fine levels as training had them), refused for another run like a resume."""
    cfg = from_dict({**TINY, "nerf": {**TINY["nerf"], "kind": "pyramid", "unlock_steps": [0, 6]}})
    with pytest.raises(CheckpointError, match="no checkpoint to score"):
        checkpoint_model(cfg, tmp_path, "p", "a red cube.", 1)
    train(cfg, "p", "a red cube.", 1, tmp_path, prior, stop_after=2)
    model, step = checkpoint_model(cfg, tmp_path, "p", "a red cube.", 1)
    saved = load_file(str(tmp_path / "checkpoint/checkpoint.safetensors"))
    got = model.state_dict()
    assert step == 2 and all(torch.equal(got[k], saved[f"model.{k}"]) for k in got)
    pts = torch.rand(64, 3) - 0.5
    locked = model.field.query(pts, 0.01, False)[0]
    model.field.set_step(None)  # all levels at full weight; at step 2 the middle one had 2/3 (it trained at step 1)
    assert not torch.equal(locked, model.field.query(pts, 0.01, False)[0])
    with pytest.raises(CheckpointMismatch, match="different seed"):
        checkpoint_model(cfg, tmp_path, "p", "a red cube.", 2)


def test_checkpoint_from_another_config_is_refused(tmp_path, prior):
    cfg = from_dict(TINY)
    train(cfg, "p", "a red cube.", 0, tmp_path, prior, stop_after=3)
    other = from_dict({**TINY, "guidance": {"scale": 30.0}})
    with pytest.raises(CheckpointMismatch, match="different config_digest"):
        train(other, "p", "a red cube.", 0, tmp_path, prior)
    with pytest.raises(CheckpointMismatch, match="different seed"):
        train(cfg, "p", "a red cube.", 5, tmp_path, prior)


class NaNAfter:
    """Wraps a guidance model and returns NaN renders-as-seen-by-the-model from step `k` on (a NaN in ε̂ alone is now
    zeroed by SDS, see tests/test_sds.py; a NaN in x still makes the step NaN)."""

    def __init__(self, inner, k):
        self.inner, self.k, self.calls = inner, k, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, images):
        self.calls += 1
        x = self.inner.encode(images)
        return x * float("nan") if self.calls > self.k else x


def test_nan_stops_with_step_and_keeps_last_checkpoint(tmp_path, prior):
    cfg = from_dict(TINY)
    with pytest.raises(TrainingDiverged, match=r"step 4: loss is NaN/Inf; stopped. Last good checkpoint: step 3"):
        train(cfg, "p", "a red cube.", 0, tmp_path, NaNAfter(prior, 4))
    assert checkpoint_step(tmp_path / "checkpoint") == 3
    assert not (tmp_path / "model.safetensors").exists() and not (tmp_path / "metrics.json").exists()


def test_a_retry_after_divergence_resumes_with_another_random_stream(tmp_path, prior):
    """A NaN at step 4 stops the run (last good checkpoint: step 3); the retry resumes there with other cameras and
    noise instead of walking into the same NaN again, and says so in its metrics."""
    cfg = from_dict(TINY)
    train(cfg, "p", "a red cube.", 0, tmp_path / "clean", prior)
    with pytest.raises(TrainingDiverged, match="a retry resumes there with another random stream"):
        train(cfg, "p", "a red cube.", 0, tmp_path / "run", NaNAfter(prior, 4))
    m = train(cfg, "p", "a red cube.", 0, tmp_path / "run", prior)
    assert m["resumed_from"] == 3 and m["divergence_restarts"] == 1
    log = lambda d: [json.loads(x) for x in (tmp_path / d / "log.jsonl").read_text().splitlines()]  # noqa: E731
    clean, retried = log("clean"), log("run")
    assert [r["t_mean"] for r in retried[:3]] == [r["t_mean"] for r in clean[:3]]  # before: the same stream
    assert [r["t_mean"] for r in retried[3:]] != [r["t_mean"] for r in clean[3:]]  # after: another one


def test_tiny_random_stable_diffusion_trains(tmp_path):
    from tests.tiny_models import save_tiny_sd

    sd = save_tiny_sd(tmp_path / "sd")
    cfg = from_dict(
        {
            **TINY,
            "guidance": {"name": "stable-diffusion", "model": str(sd), "latent_resolution": 16, "scale": 100.0},
            "train": {**TINY["train"], "steps": 3, "device": "cpu"},  # asked for CPU explicitly
        }
    )
    m = train(cfg, "p", "a squirrel.", 0, tmp_path / "out", None)
    assert m["steps"] == 3 and (tmp_path / "out/model.safetensors").exists()


def test_guidance_debug_strips_leave_training_unchanged(tmp_path, prior):
    """Every N steps a strip of what the prior wants (render | z_t | x̂₀ at 4 timesteps); its noise has its own
    generator, so the trained weights are bit-identical to a run without it."""
    import imageio.v3 as iio

    plain = from_dict(TINY)
    debug = from_dict({**TINY, "train": {**TINY["train"], "guidance_debug_every": 4}})
    train(plain, "p", "a red cube.", 0, tmp_path / "plain", prior)
    train(debug, "p", "a red cube.", 0, tmp_path / "debug", prior)
    strips = sorted(p.name for p in (tmp_path / "debug/previews").glob("guidance-step*.png"))
    assert strips == ["guidance-step000004.png", "guidance-step000008.png"]
    img = iio.imread(tmp_path / "debug/previews" / strips[0])
    assert img.shape[:2] == (4 * 16, 3 * 16)  # 4 timesteps × (render, noisy, denoised) at the 16 px bank size
    a, b = load_file(str(tmp_path / "plain/model.safetensors")), load_file(str(tmp_path / "debug/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("decoder", [{}, {"features": 8, "mlp_hidden": 16}], ids=["dense", "mlp-decoded"])
def test_initial_model_is_where_training_starts_whatever_was_drawn_before(tmp_path, prior, decoder):
    """pipeline.geometry rebuilds the untrained init from (config, seed) to score iou_gain: it must be exactly the
    model training started from, however much of the global random stream loading the guidance consumed."""
    from pipeline.nerf.model import initial_model

    cfg = from_dict({**TINY, "nerf": {**TINY["nerf"], **decoder}, "train": {**TINY["train"], "steps": 1, "lr": 1e-30}})
    torch.manual_seed(123)
    torch.rand(1000)  # a guidance that draws while loading
    train(cfg, "p", "a red cube.", 3, tmp_path, prior)  # Adam at lr 1e-30 moves nothing visible
    trained, _, _ = load_model(tmp_path / "model.safetensors")
    torch.rand(7)
    init = initial_model(cfg, 3)
    for (name, a), (_, b) in zip(init.state_dict().items(), trained.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-20, rtol=0, msg=name)
    other = initial_model(cfg, 4).parameters()
    other_seed = [not torch.equal(a, b) for a, b in zip(init.parameters(), other, strict=True)]
    assert any(other_seed) == bool(decoder)  # the dense pyramid starts from the blob alone; an MLP is drawn


@pytest.mark.parametrize("key, weight", [("z_variance_weight", 100.0), ("normal_smooth_weight", 10.0)])
def test_a_regulariser_weight_enters_the_loss(tmp_path, prior, key, weight):
    """train.z_variance_weight (HiFA / threestudio) and train.normal_smooth_weight (stable-dreamfusion) change
    training when > 0, and training with them stays finite."""
    runs = {}
    for w in (0.0, weight):
        cfg = from_dict({**TINY, "train": {**TINY["train"], key: w}})
        train(cfg, "p", "a red cube.", 0, tmp_path / str(w), prior)
        runs[w] = load_file(str(tmp_path / str(w) / "model.safetensors"))
    assert runs[0.0].keys() == runs[weight].keys()
    assert all(torch.isfinite(v).all() for v in runs[weight].values())
    assert any(not torch.equal(runs[0.0][k], runs[weight][k]) for k in runs[0.0])


def test_normal_roughness_is_the_mean_squared_neighbour_difference():
    from pipeline.nerf.renderer import normal_roughness

    n = torch.zeros(2, 3, 4, 5)
    assert normal_roughness(n).item() == 0.0
    n[:, 2] = 1.0  # every pixel facing +z: smooth
    assert normal_roughness(n).item() == 0.0
    n[:, 0, :, 2:] = 1.0  # a crease between columns 1 and 2: one in 4 horizontal pairs differs by 1 in x
    assert normal_roughness(n).item() == pytest.approx(0.25)
    n[:, 1, 3, :] = 2.0  # and the last row: one in 3 vertical pairs differs by 2 in y
    assert normal_roughness(n).item() == pytest.approx(0.25 + 4 / 3)


def test_sdf_field_trains_with_the_eikonal_term(tmp_path, prior):
    """An sdf field with the eikonal term trains to finite weights, and the term changes what it learns."""
    nerf = {**TINY["nerf"], "density_activation": "sdf", "blob_density": 0.5, "blob_cap": 0.0}
    runs = {}
    for w in (0.0, 1.0):
        cfg = from_dict({**TINY, "nerf": nerf, "train": {**TINY["train"], "eikonal_weight": w}})
        train(cfg, "p", "a red cube.", 0, tmp_path / str(w), prior)
        runs[w] = load_file(str(tmp_path / str(w) / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in runs[1.0].values())
    assert any(not torch.equal(runs[0.0][k], runs[1.0][k]) for k in runs[0.0])
