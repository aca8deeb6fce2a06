"""Integrity against hostile or careless input and against crashes: no code from data, deterministic files, resume
after a torn write."""

import json

import pytest
import torch

from pipeline.config import from_dict
from pipeline.guidance.base import GuidanceLoadError
from pipeline.guidance.loading import load_component
from pipeline.nerf.model import Model, load_model, save_model
from pipeline.train import _truncate_log

TINY = {"nerf": {"kind": "grid", "resolution": 8}, "tracking": {"enabled": False}}


def test_a_model_directory_cannot_run_its_own_code(tmp_path, monkeypatch):
    """model_index.json naming a module of the directory (or any library but diffusers/transformers) is refused
    before any import: the payload never runs."""
    model = tmp_path / "models" / "evilmodel"
    model.mkdir(parents=True)
    (tmp_path / "models" / "__init__.py").write_text("")
    (model / "__init__.py").write_text("")
    marker = tmp_path / "pwned"
    (model / "payload.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass Tok: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for entry in (["models.evilmodel.payload", "Tok"], ["os", "system"], ["diffusers", "__class__"]):
        (model / "model_index.json").write_text(json.dumps({"_class_name": "X", "tokenizer": entry}))
        with pytest.raises(GuidanceLoadError, match="model_index.json: component 'tokenizer'"):
            load_component(model, "tokenizer")
    assert not marker.exists()


def test_model_files_are_byte_identical_for_identical_models(tmp_path):
    """The same weights, config and identity give the same bytes (safetensors writes its metadata in hash order;
    we sort it), so DVC sees no change where there is none; and the file loads back."""
    cfg = from_dict(TINY)
    torch.manual_seed(0)
    model = Model(cfg)
    ident = {"prompt_id": "p", "seed": 0, "prompt": "a red cube", "config_digest": cfg.digest()}
    save_model(tmp_path / "a.safetensors", model, cfg, ident)
    save_model(tmp_path / "b.safetensors", model, cfg, dict(ident))
    a, b = (tmp_path / "a.safetensors").read_bytes(), (tmp_path / "b.safetensors").read_bytes()
    assert a == b
    n = int.from_bytes(a[:8], "little")
    assert n % 8 == 0
    header = json.loads(a[8 : 8 + n])
    assert list(header) == sorted(header) and list(header["__metadata__"]) == ["config", "git_sha", "identity"]
    back, cfg2, ident2 = load_model(tmp_path / "a.safetensors")
    assert ident2 == ident and cfg2.to_dict() == json.loads(json.dumps(cfg.to_dict()))
    for (k, v), (k2, v2) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)


def test_resume_drops_a_torn_last_log_line(tmp_path):
    """A full disk or a kill mid-write leaves a partial last line; resume drops it (and any later step) instead of
    failing for good."""
    log = tmp_path / "log.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in range(5)]
    log.write_text("\n".join(lines) + "\n" + '{"step": 5, "lo')
    _truncate_log(log, 4)
    assert log.read_text() == "\n".join(lines[:4]) + "\n"
    log.write_text("\n".join(lines) + "\n\x00\x00garbage\n")
    _truncate_log(log, 10)
    assert log.read_text() == "\n".join(lines) + "\n"


def _rprecision(r: float = 0.5, iou: float = 0.6) -> dict:
    return {
        "models": {"m.pt": {"color": {"r_precision": r, "stderr": 0.1}}},
        "objects": [{"prompt_id": "p", "seed": 0, "clip": "m.pt", "mode": "color", "score": 1.0}],
        "geometry": {"objects": [{"prompt_id": "p", "seed": 0, "iou": iou, "fog": 0.1}], "summary": {"iou": iou}},
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (json.dumps(_rprecision(r=1.7)), r"models.m.pt.color.r_precision = 1.7 lies outside its range \[0, 1\]"),
        (json.dumps(_rprecision(iou=7.5)), r"geometry.objects\[0\].iou = 7.5 lies outside its range \[0, 1\]"),
        (json.dumps(_rprecision(iou=float("nan"))), r"geometry.objects\[0\].iou is nan, not a finite number"),
        ('{"models": {"m.pt": {"color": {"r_precis', "not a readable record"),
        ('{"models": {}}', "not an rprecision.json of this pipeline"),
    ],
)
def test_a_corrupt_evaluation_is_refused_by_the_report_and_the_findings(tmp_path, content, message):
    """Never averaged into a table (an R-precision of 1.7 was shown as 170 %): one located line, no traceback."""
    from pipeline import findings, report

    bad = tmp_path / "v" / "rprecision.json"
    bad.parent.mkdir()
    bad.write_text(content)
    with pytest.raises(SystemExit, match=f"error: {bad}: .*{message}"):
        report.main(["--evals", str(bad), "--out-dir", str(tmp_path / "out")])
    config = tmp_path / "v" / "config.yaml"
    config.write_text("{}\n")
    with pytest.raises(SystemExit, match=f"error: {bad}: .*{message}"):
        findings.main(["--study", "s", "--evals", str(bad), "--configs", str(config), "--out-dir", str(tmp_path)])
    assert not (tmp_path / "out" / "table.md").exists()


def test_evaluation_refuses_non_finite_views_when_called_directly():
    from pipeline.evaluate import EvaluationError, evaluate
    from pipeline.prompts import normalize

    views = {"color": torch.full((2, 3, 8, 8), float("nan")), "geo": torch.zeros(2, 3, 8, 8)}
    objects = [{"prompt_id": "p", "seed": 0, "text": "a red cube", "views": views}]
    with pytest.raises(EvaluationError, match="p seed 0: color views contain NaN/Inf"):
        evaluate(objects, [normalize("a red cube")], [], "mean", True)


def test_geometry_records_out_of_range_are_refused(tmp_path):
    from pipeline.evaluate import collect_geometry
    from pipeline.records import RecordError

    f = tmp_path / "p" / "seed0" / "geometry.json"
    f.parent.mkdir(parents=True)
    f.write_text(json.dumps({"iou": 0.5, "chamfer": -1.0}))
    with pytest.raises(RecordError, match=r"chamfer = -1.0 lies outside its range \[0, inf\]"):
        collect_geometry([f])


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train:\n  lr: 0.1\n  lr: 0.2\n", r"line 3, column 3: duplicate key 'lr' \(first at line 2\)"),
        (BOMB + "sweep:\n  guidance.scale: *i\n", "more than 100,000 values once its aliases are expanded"),
        ("train: {steps: [1, 2\n", "line 2"),
    ],
)
def test_config_yaml_is_loaded_strictly(tmp_path, text, message):
    """Duplicate keys are refused (PyYAML keeps the last silently); an alias bomb is refused before anything walks
    it (it exhausted memory while the DAG was built)."""
    import resource

    from pipeline.config import ConfigError, load

    path = tmp_path / "params.yaml"
    path.write_text(text)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ConfigError, match=f"{path}: not valid YAML at .*{message}"):
        load(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KB: no expansion happened


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"train": {"steps": 10**12}}, "train.steps must be <= 1000000"),
        ({"views": {"turntable_frames": 10**7}}, "views.turntable_frames must be <= 720"),
        ({"render": {"resolution": 10**6}}, "render.resolution must be <= 1024"),
        ({"render": {"samples": 10**8}}, "render.samples must be <= 1024"),
        ({"train": {"batch_views": 10**5}}, "train.batch_views must be <= 64"),
        ({"mesh": {"resolution": 10**5}}, "mesh.resolution must be <= 512"),
        ({"evaluate": {"bootstrap": 10**12}}, "evaluate.bootstrap must be <= 100000"),
        ({"world": {"images_per_caption": 10**9}}, "world.images_per_caption must be <= 10000"),
        ({"guidance": {"scale": 1e6}}, "guidance.scale must be <= 1000"),
        ({"seeds": [10**20]}, r"seeds must be at most 100 integers below 2\^31"),
        ({"camera": {"distance": [0, 0]}}, "camera.distance must be positive"),
        ({"nerf": {"kind": "pyramid", "levels": [16, 4096]}}, r"nerf.levels must each lie in \[4, 512\]"),
        (
            {"sweep": {"guidance.scale": list(range(1, 21)), "train.lr": [0.01 * i for i in range(1, 21)]}},
            "would make 400 variants",
        ),
    ],
)
def test_sizes_are_bounded_before_any_allocation(override, message):
    """Every size, count and step has a documented upper bound, checked when the config is read."""
    from pipeline.config import ConfigError, from_dict, variants

    with pytest.raises(ConfigError, match=message):
        variants(from_dict(override))


def test_prompt_files_have_a_size_limit(tmp_path):
    from pipeline.prompts import PromptFileError, read_prompt_file

    path = tmp_path / "big.txt"
    path.write_text("".join(f"a red cube number {i}\n" for i in range(100_000)))
    with pytest.raises(PromptFileError, match=f"{path}: 100,001 lines, .* at most 5,000 lines"):
        read_prompt_file(path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"render": {"background_color": [1.0, float("inf"), 0.0]}},
            r"render.background_color\[1\] must be a finite number, got inf",
        ),
        ({"render": {"background_color": [1.0, 2.0, 0.0]}}, r"render.background_color must be 3 values in \[0, 1\]"),
        ({"schedule": {"dreamtime_m1": 1e6}}, "schedule.dreamtime_m1 must be <= 1000"),
        ({"schedule": {"dreamtime_s2": 1e-9}}, "schedule.dreamtime_s2 must be >= 1"),
        ({"schedule": {"dreamtime_m2": 900}}, "dreamtime_m2 .* must not exceed dreamtime_m1"),
    ],
)
def test_values_that_gave_silent_wrong_results_are_refused(override, message):
    """An infinite background scored white views 0 % while geometry looked fine; DreamTime at its extremes pinned t
    at one value; colours outside [0, 1]."""
    from pipeline.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match=message):
        from_dict(override)


def test_a_truncated_views_file_is_refused_with_its_path(tmp_path):
    import numpy as np

    from pipeline.evaluate import EvaluationError, load_views

    npz = tmp_path / "views.npz"
    np.savez_compressed(npz, color=np.zeros((2, 3, 8, 8), np.float32), textureless=np.zeros((2, 3, 8, 8), np.float32))
    npz.write_bytes(npz.read_bytes()[:100])
    with pytest.raises(EvaluationError, match=f"{npz}: not a views.npz written by pipeline.views"):
        load_views(npz)
