import json
from pathlib import Path

import pytest
import yaml

from pipeline import config as cfgmod
from pipeline.config import ConfigError, from_dict, scheduled
from tests.conftest import ROOT


def test_params_yaml_loads():
    cfg = cfgmod.load(ROOT / "params.yaml")
    assert cfg.guidance.name == "world"
    assert cfg.prompts.benchmark == "primitives"
    assert list(cfgmod.variants(cfg)) == ["world-w10-uniform"]


def test_scheduled_value_notation():
    assert scheduled(0.5, 123) == 0.5
    s = [100, 1.0, 3.0, 300]
    assert scheduled(s, 0) == 1.0
    assert scheduled(s, 100) == 1.0
    assert scheduled(s, 200) == 2.0
    assert scheduled(s, 300) == 3.0
    assert scheduled(s, 10_000) == 3.0


def test_sweep_expands_to_named_variants():
    cfg = from_dict({"sweep": {"guidance.scale": [10, 30], "schedule.name": ["uniform", "hifa"], "train.lr": [0.01]}})
    vs = cfgmod.variants(cfg)
    assert sorted(vs) == [
        "world-w10-hifa-lr0.01",
        "world-w10-uniform-lr0.01",
        "world-w30-hifa-lr0.01",
        "world-w30-uniform-lr0.01",
    ]
    v = vs["world-w30-hifa-lr0.01"]
    assert v.guidance.scale == 30.0 and v.schedule.name == "hifa" and v.train.lr == 0.01 and v.sweep == {}


def test_digest_changes_with_values_only():
    a, b = from_dict({}), from_dict({"guidance": {"scale": 10.0}})
    assert a.digest() == b.digest()
    assert from_dict({"guidance": {"scale": 11}}).digest() != a.digest()


def test_resolved_config_round_trips(tmp_path):
    cfg = from_dict({"schedule": {"name": "anneal", "t_max": [0, 0.98, 0.5, 300]}})
    cfgmod.save_resolved(cfg, tmp_path / "c.yaml")
    again = from_dict(yaml.safe_load((tmp_path / "c.yaml").read_text()))
    assert again == cfg


def _resolved(preset: Path | str, over: dict | None = None, *overlays: str) -> cfgmod.Config:
    """params.yaml with a preset merged over it, then each overlay (configs/overlays/<name>.yaml), as `--configfile
    preset overlay…` does (`over` instead of reading the preset's file)."""
    from snakemake.utils import update_config

    path = preset if isinstance(preset, Path) else ROOT / "configs" / f"{preset}.yaml"
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    update_config(data, yaml.safe_load(path.read_text()) if over is None else over)
    for name in overlays:
        update_config(data, yaml.safe_load((ROOT / "configs" / "overlays" / f"{name}.yaml").read_text()))
    return from_dict(data, str(path.name))


# presets used stacked with an overlay, as their comments say: (preset, overlay)
STACKS = [("rehearsal-sd", "rehearsal-cpu")]


def _presets() -> list[tuple[str, cfgmod.Config]]:
    """Every preset merged over params.yaml, and every documented stack of a preset and an overlay."""
    runs = [(p.name, _resolved(p)) for p in sorted((ROOT / "configs").glob("*.yaml"))]
    return runs + [(f"{a}.yaml + overlays/{b}.yaml", _resolved(a, None, b)) for a, b in STACKS]


def test_every_overlay_is_used_in_a_documented_stack():
    assert sorted(p.stem for p in (ROOT / "configs" / "overlays").glob("*.yaml")) == sorted(b for _, b in STACKS)


@pytest.mark.parametrize(
    "preset",
    [*sorted((ROOT / "configs").glob("*.yaml")), *STACKS],
    ids=lambda p: p.stem if isinstance(p, Path) else "+".join(p),
)
def test_presets_are_valid(preset):
    from snakemake.utils import validate

    cfg = _resolved(preset[0], None, preset[1]) if isinstance(preset, tuple) else _resolved(preset)
    for variant in cfgmod.variants(cfg).values():
        validate(variant.to_dict(), str(ROOT / "schemas/params.schema.json"))  # what the workflow checks too


def test_no_two_presets_share_a_results_folder_with_different_settings():
    """A variant's folder (results/<benchmark>/<variant>/) holds objects of one setting: a preset that pins anything
    params.yaml does not (a published sweep pinned to its recipe, the smoke run, the rehearsal) must name its
    variants apart (`tag`), or running it after the default would retrain the default's objects in place."""
    seen: dict[tuple[str, str], tuple[str, str]] = {}
    runs = [("params.yaml", _resolved(ROOT / "params.yaml", over={})), *_presets()]
    for src, cfg in runs:
        for name, variant in cfgmod.variants(cfg).items():
            d = variant.to_dict()
            for key in ("prompts", "seeds", "sweep", "ablation", "study", "tag", "tracking"):
                d.pop(key)  # prompts and seeds are sub-folders; the rest does not change an object
            key, setting = (cfg.prompts.benchmark, name), json.dumps(d, sort_keys=True)
            other = seen.setdefault(key, (src, setting))
            assert other[1] == setting, f"{src} and {other[0]} both write results/{key[0]}/{name}/ with other settings"


def test_the_published_sweeps_are_pinned_to_the_recipe_they_were_measured_with():
    """The README's sweep findings were measured with recipe1 (blob 10 uncapped, binary opacity [200, 0, 1000, 400]);
    re-running a preset must reproduce them after the default moved on."""
    for preset in ("sweep-guidance", "sweep-schedule", "sweep-guidance-learned", "candidate-recipe", "ablate-recipe1"):
        cfg = _resolved(preset)
        base = next(iter(cfgmod.variants(cfg).values()))
        recipe = (base.nerf.blob_density, base.nerf.blob_cap, base.train.entropy_weight)
        assert recipe == (10.0, 0.0, [200, 0, 1000, 400]), preset
        assert all("-recipe1" in name for name in cfgmod.variants(cfg)), preset


def test_tag_names_the_variants_and_is_not_a_setting():
    cfg = from_dict({"tag": "r1", "sweep": {"guidance.scale": [10, 3]}})
    assert list(cfgmod.variants(cfg)) == ["world-w10-uniform-r1", "world-w3-uniform-r1"]
    assert from_dict({"tag": "r1"}).digest() == from_dict({}).digest()
    abl = from_dict({"tag": "r1", "ablation": {"grid": {"nerf.kind": "grid"}}})
    assert list(cfgmod.variants(abl)) == ["world-w10-uniform-r1", "world-w10-uniform-r1-grid"]
    with pytest.raises(ConfigError, match=r"params.yaml: tag must be a plain name .* got '\.\./x'"):
        from_dict({"tag": "../x"})
    with pytest.raises(ConfigError, match="sweep.tag cannot be swept"):
        from_dict({"sweep": {"tag": ["a", "b"]}})


def test_json_schema_is_current_documented_and_strict():
    """schemas/params.schema.json is generated from pipeline/config.py (so it cannot drift): every key documented,
    ranges kept, unknown keys refused (as the validator does)."""
    import json

    from jsonschema import Draft202012Validator

    from pipeline import schema

    committed = (ROOT / "schemas/params.schema.json").read_text()
    assert committed == schema.render(), "run `python -m pipeline.schema`"
    assert (ROOT / "docs/configuration.md").read_text() == schema.render_markdown(), "run `python -m pipeline.schema`"
    s = json.loads(committed)
    scale = s["$defs"]["GuidanceConfig"]["properties"]["scale"]
    assert scale["minimum"] == 0.0 and scale["description"].startswith("Guidance weight")
    undocumented = [
        f"{name}.{key}"
        for name, d in s["$defs"].items()
        for key, p in d["properties"].items()
        if "description" not in p
    ]
    assert undocumented == []
    v = Draft202012Validator(s)
    good = cfgmod.load(ROOT / "params.yaml").to_dict()
    assert not list(v.iter_errors(good))
    bad = {**good, "guidance": {**good["guidance"], "sclae": 3}, "train": {**good["train"], "steps": 0}}
    messages = sorted(e.message for e in v.iter_errors(bad))
    assert "Additional properties are not allowed ('sclae' was unexpected)" in messages
    assert "0 is less than the minimum of 1" in messages


@pytest.mark.parametrize(
    ("data", "key", "expected"),
    [
        # what `snakemake --config 'train={"lr": 0.05}'` hands over: nested values as strings
        ({"train": {"lr": "0.05"}}, ("train", "lr"), 0.05),
        ({"train": {"steps": "12"}}, ("train", "steps"), 12),
        ({"train": {"lr": "1e-3"}}, ("train", "lr"), 1e-3),  # PyYAML reads 1e-3 as a string
        (
            {"train": {"orientation_weight": "[0, 1e-4, 1e-2, 400]"}},
            ("train", "orientation_weight"),
            [0, 1e-4, 1e-2, 400],
        ),
        ({"tracking": {"enabled": "false"}}, ("tracking", "enabled"), False),
        ({"camera": {"distance": "[1.5, 2.0]"}}, ("camera", "distance"), [1.5, 2.0]),
        ({"train": '{"lr": 0.07}'}, ("train", "lr"), 0.07),  # a whole section as one string
        ({"guidance": {"model": "123"}}, ("guidance", "model"), "123"),  # strings stay strings
    ],
)
def test_strings_from_the_command_line_are_coerced(data, key, expected):
    cfg = from_dict(data)
    assert getattr(getattr(cfg, key[0]), key[1]) == expected


def test_ablation_variants_change_one_thing_each():
    cfg = from_dict({"ablation": {"grid": {"nerf.kind": "grid"}, "sum": {"train.sds_reduction": "sum"}}})
    vs = cfgmod.variants(cfg)
    assert list(vs) == ["world-w10-uniform", "world-w10-uniform-grid", "world-w10-uniform-sum"]
    base = vs["world-w10-uniform"]
    assert base.digest() == cfgmod.variants(from_dict({}))["world-w10-uniform"].digest()  # = the plain default run
    assert vs["world-w10-uniform-grid"].nerf.kind == "grid" and vs["world-w10-uniform-grid"].train == base.train
    assert vs["world-w10-uniform-sum"].train.sds_reduction == "sum" and vs["world-w10-uniform-sum"].nerf == base.nerf


def test_swept_strings_make_safe_variant_names():
    cfg = from_dict({"sweep": {"guidance.model": ["a/b c", "$(x)"]}})
    assert all(cfgmod.SAFE_NAME.fullmatch(n) for n in cfgmod.variants(cfg))


def test_params_yaml_syntax_error_names_the_line_through_snakemake(workdir):
    """Snakemake's own message for a broken params.yaml has no line; the workflow says where."""
    from tests.conftest import run_snakemake

    (workdir / "params.yaml").write_text("prompts:\n  benchmark: primitives\nguidance:\n  scale: [1,\n  name: world\n")
    out = run_snakemake(workdir, "-n", check=False)
    assert out.returncode != 0
    assert "params.yaml: not valid YAML at line 6, column 1: expected ',' or ']'" in out.stdout + out.stderr


@pytest.mark.parametrize("preset", ["sd21-coco153", "if-coco153"])
def test_gpu_presets_bound_what_checkpoints_write(preset):
    """Issue #17: the GPU presets wrote their 0.46 GB checkpoint (38.3 M field parameters + two Adam moments, fp32)
    every 500 steps: 9 GB per object, 2.8 TB over the benchmark. Now at most 4 writes per object, and since the field
    lost its decoder's 16 feature channels (session 16) a checkpoint is 0.12 GB (9.6 M parameters)."""
    from pipeline.nerf.model import Model

    cfg = from_dict(yaml.safe_load((ROOT / "configs" / f"{preset}.yaml").read_text()))
    params = sum(p.numel() for p in Model(cfg).parameters())
    checkpoint_gb = 3 * 4 * params / 1e9
    assert params == 9_585_251 and round(checkpoint_gb, 2) == 0.12
    writes = (cfg.train.steps - 1) // cfg.train.checkpoint_every
    assert writes <= 4 and writes * checkpoint_gb < 2.0


@pytest.mark.parametrize("preset", ["sd21-coco153", "if-coco153", "rehearsal-sd"])
def test_gpu_presets_take_the_worlds_init_and_binary_opacity_in_their_own_steps(preset):
    """Merged over params.yaml (as --configfile does), the paper-shaped presets take the world's steep blob, capped at
    half the world's 8 (the 64x64 rehearsal carves it faster: RESULTS.md, session 18), and binary opacity (the CPU
    rehearsal's winner, README "Paper setups"), with the schedule in their own steps: from a quarter of the run, as the
    world's 100 of 400, not the world's 400-step numbers."""
    cfg = _resolved(preset)
    assert (cfg.nerf.blob_density, cfg.nerf.blob_cap, cfg.train.tv_weight, cfg.nerf.normals) == (40, 4, 0, "analytic")
    assert cfg.train.entropy_weight == [cfg.train.steps // 4, 0, 2000, cfg.train.steps]
    assert cfg.train.steps >= 2000 and cfg.shading.albedo_steps == cfg.train.steps // 5  # threestudio: 2000 of 10000
    assert cfg.train.orientation_weight[3] in (1000, 5000)  # ramped over their own steps, not the world's 400


@pytest.mark.parametrize("preset", ["sd21-coco153", "if-coco153"])
def test_the_rehearsal_is_the_gpu_preset_with_the_world_prior_and_a_fifth_of_the_steps(preset):
    """configs/rehearsal-sd.yaml proves a GPU preset's recipe: the same field, init, render, background, shading and
    regulariser weights, every step count scaled with the run (2,000 of 10,000 steps)."""
    gpu, reh = _resolved(preset).to_dict(), _resolved("rehearsal-sd").to_dict()
    r = reh["train"]["steps"] / gpu["train"]["steps"]
    assert r == 0.2

    def steps(v):  # a Scheduled value: the same weights, its steps scaled with the run
        return [round(v[0] * r), v[1], v[2], round(v[3] * r)] if isinstance(v, list) else v

    assert reh["nerf"] == {**gpu["nerf"], "unlock_steps": [round(s * r) for s in gpu["nerf"]["unlock_steps"]]}
    assert reh["render"] == gpu["render"]
    assert reh["shading"] == {**gpu["shading"], "albedo_steps": round(gpu["shading"]["albedo_steps"] * r)}
    same = ("batch_views", "lr", "background_lr", "final_lr_ratio", "weight_decay", "sds_reduction")
    scheduled = [k for k, v in gpu["train"].items() if k.endswith("_weight")]
    assert {"orientation_weight", "opacity_weight", "entropy_weight", "tv_weight"} <= set(scheduled)
    assert {k: reh["train"][k] for k in same} == {k: gpu["train"][k] for k in same}
    assert {k: reh["train"][k] for k in scheduled} == {k: steps(gpu["train"][k]) for k in scheduled}
    assert reh["train"]["warmup_steps"] == round(gpu["train"]["warmup_steps"] * r)


def test_the_cpu_rehearsal_is_the_rehearsal_at_32x32_with_regularisers_scaled_by_the_pixel_count():
    """configs/overlays/rehearsal-cpu.yaml changes only the size: 32×32 renders and bank, half the samples, steps and
    every step count, no 128³ level; the ray-mean regularisers × (32/64)² against the pixel-summed SDS term."""
    reh, cpu = _resolved("rehearsal-sd").to_dict(), _resolved("rehearsal-sd", None, "rehearsal-cpu").to_dict()
    k = (32 / 64) ** 2

    def scaled(v):  # a Scheduled weight: its values × k, its steps halved with the run
        return [v[0] // 2, v[1] * k, v[2] * k, v[3] // 2] if isinstance(v, list) else v * k

    assert reh["render"]["resolution"] == reh["world"]["resolution"] == 64
    assert cpu["world"] == {**reh["world"], "resolution": 32, "images_per_caption": 600}
    assert cpu["render"] == {**reh["render"], "resolution": 32, "samples": reh["render"]["samples"] // 2}
    assert cpu["nerf"] == {
        **reh["nerf"],
        "levels": reh["nerf"]["levels"][:-1],
        "unlock_steps": [s // 2 for s in reh["nerf"]["unlock_steps"]],
    }
    assert cpu["shading"] == {**reh["shading"], "albedo_steps": reh["shading"]["albedo_steps"] // 2}
    halved = {key: reh["train"][key] // 2 for key in ("steps", "warmup_steps")}
    weights = {key: scaled(reh["train"][key]) for key in ("orientation_weight", "opacity_weight", "entropy_weight")}
    assert cpu["train"] == {**reh["train"], **halved, **weights}
    assert cpu["train"]["orientation_weight"] == [0, 2.5, 250.0, 500]
    for section in ("guidance", "schedule", "camera", "views", "evaluate", "prompts", "seeds"):
        assert cpu[section] == reh[section], section
