"""The catalogue of bad inputs: one table, one row per input a careless or hostile user can hand the lab, each with
the message it must give.

A row names where the input enters (`entry`: a config value, a YAML file, a prompt file, a file one stage hands the
next, a model directory), the input itself, and a regular expression for the message. Every row must end in a located
error: an exception of the entry's own type (never a traceback from inside a library) whose message is one line, starts
with the file the input came from (`params.yaml` for config values), and matches the row; it must come within 10 s and
without allocating 2 GB. Rows whose `why` is set record what the input did before it was refused.

Adding a case is adding a row; adding a place inputs enter is adding an entry (a function that feeds the input in and
returns the message and the location it must start with).
"""

from __future__ import annotations

import hashlib
import json
import re
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, from_dict, load, variants


@dataclass(frozen=True)
class Bad:
    entry: str
    given: Any
    message: str
    why: str = ""

    @property
    def id(self) -> str:
        """The entry and the start of the input (with a digest where the start is not enough to tell rows apart)."""
        full = repr(self.given)
        short = full if len(full) <= 60 else f"{full[:50]}…{hashlib.sha256(full.encode()).hexdigest()[:6]}"
        return f"{self.entry}:{short}"


MISSING, DIRECTORY = "<missing>", "<a directory>"
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)
"""500 bytes of YAML that expand to 9^9 values once its aliases are followed."""
NAN, INF = float("nan"), float("inf")


def _rprecision(r: float = 0.5, iou: float = 0.6, score: float = 1.0) -> str:
    return json.dumps(
        {
            "models": {"m.pt": {"color": {"r_precision": r, "stderr": 0.1}}},
            "objects": [{"prompt_id": "p", "seed": 0, "clip": "m.pt", "mode": "color", "score": score}],
            "geometry": {"objects": [{"prompt_id": "p", "seed": 0, "iou": iou, "fog": 0.1}], "summary": {"iou": iou}},
        }
    )


def _views(**over: Any) -> dict[str, np.ndarray]:
    good = np.zeros((2, 3, 8, 8), np.float32)
    return {"color": good, "textureless": good, "opacity": np.zeros((2, 8, 8), np.float32), **over}


CONFIG = [
    # unknown keys, with the nearest known one
    Bad("config", {"guidance": {"sclae": 3}}, r"unknown key guidance\.sclae \(did you mean guidance\.scale\?\); "),
    Bad("config", {"trian": {"steps": 3}}, r"unknown key trian \(did you mean train\?\); allowed keys under the top"),
    Bad("config", {"camera": {"distanse": [1, 2]}}, r"unknown key camera\.distanse \(did you mean camera\.distance"),
    Bad("config", {"bogus": 1}, "unknown key bogus"),
    Bad("config", {"guidance": 5}, "guidance must be a mapping"),
    # types
    Bad("config", {"guidance": {"scale": "big"}}, "guidance.scale must be a number, got 'big'"),
    Bad("config", {"train": {"steps": 1.5}}, "train.steps must be an integer, got 1.5"),
    Bad("config", {"train": {"steps": True}}, "train.steps must be an integer, got True"),
    Bad("config", {"train": {"lr": "1e-3", "steps": "ten"}}, "train.steps must be an integer, got 'ten'"),
    Bad("config", {"tracking": {"enabled": "yes"}}, "tracking.enabled must be true/false"),
    Bad("config", {"train": {"lr": "fast"}}, "train.lr must be a number, got 'fast'"),
    Bad("config", {"train": {"lr": "-1"}}, r"train\.lr must be > 0\.0, got -1\.0"),
    Bad("config", {"train": {"steps": "1.5"}}, "train.steps must be an integer, got 1.5"),
    Bad("config", {"tracking": {"enabled": "yes please"}}, "tracking.enabled must be true/false, got 'yes please'"),
    Bad("config", {"train": {"orientation_weight": [0, 1, 2]}}, r"train\.orientation_weight must be a number or \["),
    Bad("config", {"render": {"background_color": "white"}}, "render.background_color"),
    Bad("config", {"seeds": "0"}, "seeds must be a list of integers, got 0"),
    # choices
    Bad("config", {"guidance": {"name": "imagen"}}, "guidance.name must be one of 'world', 'world-unet'"),
    Bad("config", {"schedule": {"name": "cosine"}}, "schedule.name must be one of 'uniform', 'anneal', 'step'"),
    Bad("config", {"nerf": {"kind": "octree"}}, "nerf.kind must be one of 'grid', 'pyramid'"),
    Bad("config", {"guidance": {"dtype": "int8"}}, "guidance.dtype must be one of"),
    Bad("config", {"train": {"device": "tpu"}}, "train.device must be one of 'auto', 'cpu', 'cuda'"),
    Bad("config", {"evaluate": {"combine": "max"}}, "evaluate.combine must be one of"),
    # ranges and orderings
    Bad("config", {"guidance": {"scale": -3}}, r"guidance\.scale must be >= 0\.0, got -3"),
    Bad("config", {"schedule": {"t_max": 1.5}}, r"schedule\.t_max values must lie in \[0, 1\]"),
    Bad("config", {"schedule": {"t_min": 0.9, "t_max": 0.5}}, r"schedule\.t_min \(0\.9\) must be below schedule\."),
    Bad("config", {"schedule": {"name": "anneal"}}, "schedule.name=anneal needs schedule.t_max"),
    Bad("config", {"train": {"steps": 0}}, "train.steps must be >= 1, got 0"),
    Bad("config", {"train": {"lr": 0}}, r"train\.lr must be > 0\.0"),
    Bad("config", {"camera": {"distance": [3, 2]}}, r"camera\.distance must be \[low, high\]"),
    Bad("config", {"camera": {"distance": [0, 0]}}, "camera.distance must be positive", "accepted; renders of nothing"),
    Bad("config", {"camera": {"distance": [-2, -1]}}, "camera.distance must be positive", "accepted"),
    Bad(
        "config", {"camera": {"focal": [0, 0]}}, "camera.focal must be positive", "a zero focal length: 'lower the lr'"
    ),
    Bad("config", {"seeds": [0, 0]}, "seeds must be a non-empty list of distinct integers"),
    Bad("config", {"seeds": []}, "seeds must be a non-empty list of distinct integers"),
    Bad("config", {"seeds": [-1]}, r"seeds must be a non-empty list of distinct integers >= 0, got \[-1\]"),
    Bad("config", {"shading": {"p_lit": 1.5}}, r"shading\.p_lit must be <= 1\.0"),
    Bad("config", {"train": {"final_lr_ratio": -0.1}}, r"train\.final_lr_ratio must be >= 0\.0"),
    Bad("config", {"nerf": {"kind": "pyramid", "levels": [32, 16]}}, "nerf.levels must be increasing"),
    Bad("config", {"nerf": {"unlock_steps": [10, 5]}}, r"nerf\.unlock_steps must be \[start, end\]"),
    Bad("config", {"nerf": {"bound": 0}}, r"nerf\.bound must be > 0\.0"),
    # non-finite values
    Bad("config", {"guidance": {"scale": "nan"}}, "guidance.scale must be a finite number, got nan"),
    Bad("config", {"guidance": {"scale": INF}}, "guidance.scale must be a finite number, got inf"),
    Bad("config", {"train": {"lr": NAN}}, "train.lr must be a finite number, got nan", "trained on NaN"),
    Bad("config", {"schedule": {"name": "anneal", "t_max": [0, 0.98, NAN, 10]}}, "schedule.t_max must be a finite"),
    Bad("config", {"train": {"opacity_weight": [0, 0.0, INF, 10]}}, "train.opacity_weight must be a finite"),
    # sizes, counts and steps: bounded before any allocation (each used to run forever or die in allocation)
    Bad("config", {"train": {"steps": 10**12}}, "train.steps must be <= 1000000", "ran forever"),
    Bad("config", {"train": {"steps": "1e12"}}, "train.steps must be", "ran forever"),
    Bad("config", {"views": {"turntable_frames": 10**7}}, "views.turntable_frames must be <= 720", "5 GB, then died"),
    Bad("config", {"render": {"resolution": 10**6}}, "render.resolution must be <= 1024", "died in allocation"),
    Bad("config", {"render": {"samples": 10**8}}, "render.samples must be <= 1024", "died in allocation"),
    Bad("config", {"train": {"batch_views": 10**5}}, "train.batch_views must be <= 64", "died in allocation"),
    Bad("config", {"mesh": {"resolution": 10**5}}, "mesh.resolution must be <= 512", "died in allocation"),
    Bad("config", {"evaluate": {"bootstrap": 10**12}}, "evaluate.bootstrap must be <= 100000", "died in allocation"),
    Bad("config", {"world": {"images_per_caption": 10**9}}, "world.images_per_caption must be <= 10000"),
    Bad("config", {"world": {"resolution": 4096}}, "world.resolution must be <= 256"),
    Bad("config", {"views": {"resolution": 10**5}}, "views.resolution must be <="),
    Bad("config", {"views": {"azimuths": 10**6}}, "views.azimuths must be <= 360"),
    Bad("config", {"mesh": {"texture_size": 10**5}}, "mesh.texture_size must be <= 4096"),
    Bad("config", {"guidance": {"latent_resolution": 10**5}}, "guidance.latent_resolution must be <= 2048"),
    Bad("config", {"prompts": {"max_tokens": 10**6}}, "prompts.max_tokens must be <= 512"),
    Bad("config", {"train": {"objects_per_job": 1000}}, "train.objects_per_job must be <= 64"),
    Bad("config", {"refine": {"steps": 10**9}}, "refine.steps must be <= 1000000"),
    Bad("config", {"guidance": {"scale": 1e6}}, "guidance.scale must be <= 1000", "MissingInputException (w1e+06)"),
    Bad("config", {"guidance": {"scale": 1e300}}, "guidance.scale must be <= 1000", "zeroed every SDS element"),
    Bad("config", {"seeds": [10**20]}, r"seeds must be at most 100 integers below 2\^31", "PeriodicWildcardError"),
    Bad("config", {"seeds": list(range(101))}, r"seeds must be at most 100 integers"),
    Bad("config", {"nerf": {"kind": "pyramid", "levels": [16, 4096]}}, r"nerf\.levels must each lie in \[4, 512\]"),
    Bad(
        "config",
        {"sweep": {"guidance.scale": list(range(1, 21)), "train.lr": [0.01 * i for i in range(1, 21)]}},
        "would make 400 variants",
    ),
    # values that gave silent wrong results
    Bad(
        "config",
        {"render": {"background_color": [1.0, INF, 0.0]}},
        r"render\.background_color\[1\] must be a finite number, got inf",
        "white views scored 0 % while geometry reported IoU 0.78",
    ),
    Bad("config", {"render": {"background_color": [1.0, 2.0, 0.0]}}, r"background_color must be 3 values in \[0, 1\]"),
    Bad("config", {"render": {"background_color": [-1, 0, 0]}}, r"background_color must be 3 values in \[0, 1\]"),
    Bad("config", {"render": {"background_color": [1, 1]}}, r"background_color must be 3 values in \[0, 1\]"),
    Bad("config", {"schedule": {"dreamtime_m1": 1e6}}, "schedule.dreamtime_m1 must be <= 1000", "pinned t at 20"),
    Bad("config", {"schedule": {"dreamtime_s2": 1e-9}}, "schedule.dreamtime_s2 must be >= 1", "pinned t at 20"),
    Bad("config", {"schedule": {"dreamtime_m2": 900}}, "dreamtime_m2 .* must not exceed dreamtime_m1"),
    # sweeps, ablations and names
    Bad("config", {"sweep": {"guidance.scael": [1, 2]}}, r"sweep key 'guidance\.scael' is not a params key .*scale\?"),
    Bad("config", {"sweep": {"guidance.scale": [10, -1]}}, r"guidance\.scale must be >= 0\.0, got -1"),
    Bad("config", {"sweep": {"guidance.scale": []}}, "sweep.guidance.scale must be a non-empty list"),
    Bad("config", {"sweep": {"tag": ["a", "b"]}}, "sweep.tag cannot be swept"),
    Bad("config", {"sweep": {"train.objects_per_job": [1, 4]}}, "objects_per_job"),
    Bad("config", {"ablation": {"x": {"nerf.kindd": "grid"}}}, r"ablation\.x\): sweep key 'nerf\.kindd' is not a par"),
    Bad("config", {"ablation": {"x": {"nerf.kind": "octree"}}}, "nerf.kind must be one of 'grid', 'pyramid'"),
    Bad("config", {"ablation": {"a b": {"nerf.kind": "grid"}}}, "ablation.a b must be a name"),
    Bad("config", {"ablation": {"x": {}}}, "ablation.x must be a name"),
    Bad("config", {"ablation": {"x": {"nerf.kind": "grid"}}, "sweep": {"guidance.scale": [1, 2]}}, "not both"),
    Bad("config", {"tag": "../x"}, r"tag must be a plain name .* got '\.\./x'", "a results folder outside results/"),
    Bad("config", {"prompts": {"benchmark": "../../escape"}}, "prompts.benchmark must be a plain file name"),
    Bad("config", {"prompts": {"benchmark": "a$(touch PWNED)"}}, "prompts.benchmark must be a plain file name"),
    Bad("config", {"tracking": {"uri": "http://alice:secret@host"}}, "tracking.uri", "the password in every output"),
]

YAML = [
    Bad("yaml", "guidance: [1,\n  scale: 3\n", "not valid YAML"),
    Bad("yaml", "train:\n  lr: 0.1\n  lr: 0.2\n", r"line 3, column 3: duplicate key 'lr' \(first at line 2\)"),
    Bad("yaml", "train: {steps: [1, 2\n", "not valid YAML at line 2"),
    Bad("yaml", BOMB + "sweep:\n  guidance.scale: *i\n", "more than 100,000 values", "exhausted memory"),
    Bad("yaml", BOMB + "prompts:\n  select: *i\n", "more than 100,000 values", "exhausted memory"),
    Bad(
        "yaml",
        "- train\n- steps\n",
        r"must be a mapping of sections \(prompts:, guidance:, train:, \.\.\.\), got a list",
    ),
    Bad("yaml", "train:\n\tsteps: 3\n", "not valid YAML"),
    Bad("yaml", "train: !!python/object/apply:os.system ['echo pwned']\n", "not valid YAML", "code from data"),
]

PROMPT_FILES = [
    Bad("prompt file", MISSING, "prompt file not found; create it"),
    Bad("prompt file", DIRECTORY, "is a directory, not a prompt file"),
    Bad("prompt file", b"", "is empty"),
    Bad("prompt file", b"\n  \n\n", "has only blank lines"),
    Bad("prompt file", b"a red cube\n\xff\xfe bad\n", ":2: not valid UTF-8"),
    Bad("prompt file", b"a red cube\nA red cube.\n", r":2: duplicate caption 'a red cube\.' \(same as line 1"),
    Bad("prompt file", b"a red\x07 cube\n", ":1: line or control character"),
    Bad("prompt file", b"ok\n...\n", r":2: caption '\.\.\.' has no letters or digits"),
    Bad("prompt file", b"ok\n!!!\n", ":2: caption '!!!' has no letters or digits"),
    Bad("prompt file", b"a red\x0bcube\nb\n", r":1: line or control character '\\x0b'"),
    Bad("prompt file", b"a red\x0ccube\n", r":1: line or control character '\\x0c'"),
    Bad("prompt file", "a red\u0085cube\n".encode(), r":1: line or control character '\\x85'"),
    Bad("prompt file", "a red\u2028cube\n".encode(), r":1: line or control character '\\u2028'"),
    Bad("prompt file", "a red\u2029cube\n".encode(), r":1: line or control character '\\u2029'"),
    Bad("prompt file", "a red cube\nb\ufeffc\n".encode(), ":2: invisible format character U[+]FEFF"),
    Bad("prompt file", "a red\u200bcube\n".encode(), r":1: invisible format character U\+200B \(ZERO WIDTH SPACE\)"),
    Bad("prompt file", "a red \u200fcube\n".encode(), r":1: invisible format character U\+200F \(RIGHT-TO-LEFT MARK"),
    Bad("prompt file", "a red \u202ecube\n".encode(), r":1: invisible format character U\+202E"),
    Bad("prompt file", "caf\u00e9 au lait\ncafe\u0301 au lait\n".encode(), ":2: duplicate caption"),  # NFC vs NFD
    Bad("prompt file", b"a red cube\na red\tcube\n", ":2: duplicate caption"),
    Bad("prompt file", b"a red cube\na red  cube\n", r":2: duplicate caption 'a red  cube\.' \(same as line 1"),
    Bad("prompt file", "a red cube\n\uff41 red cube\n".encode(), ":2: duplicate caption"),  # full-width a
    Bad("prompt file", b"x" * 1001 + b"\n", ":1: caption is 1001 characters"),
    Bad("prompt file", b"a red cube\x00\n", r":1: line or control character '\\x00'"),
    Bad(
        "prompt file", b"a red cube number 1\n" * 100_001, r"100,002 lines, .* at most 5,000 lines", "3.2 GB, then died"
    ),
    Bad("prompt file", b"abc " * 300_000, "at most 5,000 lines", "one line of 1.2 MB"),
]

PROMPTS_JSON = [
    Bad("prompts.json", '{"prompts": [{"id": "p", "te', r"not a readable prompts\.json \(Unterminated string"),
    Bad("prompts.json", "", r"not a readable prompts\.json \(Expecting value"),
    Bad("prompts.json", '{"prompts": [{"id": "p"}], "selected": []}', r"not a prompts\.json of this pipeline \(needs"),
    Bad("prompts.json", "[1, 2]", "not a prompts.json of this pipeline"),
    Bad("prompts.json", b"\xff\xfe", r"not a readable prompts\.json \('utf-8' codec"),
    Bad("prompts.json", '{"prompts": "all"}', "not a prompts.json of this pipeline"),
]

VIEWS = [
    Bad("views.npz", _views(color=np.full((2, 3, 8, 8), np.nan, np.float32)), "color views contain NaN/Inf"),
    Bad("views.npz", _views(textureless=np.full((2, 3, 8, 8), np.inf, np.float32)), "textureless views contain NaN/In"),
    Bad("views.npz", _views(color=np.zeros((2, 3, 8, 8), np.uint8)), r"color must be float \[N, 3, H, W\] in \[0, 1\]"),
    Bad("views.npz", _views(color=np.zeros((2, 8, 8), np.float32)), r"color must be float \[N, 3, H, W\]"),
    Bad("views.npz", _views(color=np.full((2, 3, 8, 8), 255, np.float32)), r"color values must lie in \[0, 1\]"),
    Bad("views.npz", {"color": np.zeros((2, 3, 8, 8), np.float32)}, "not a views.npz written by pipeline.views"),
    Bad("views.npz", b"", "not a views.npz written by pipeline.views"),
    Bad("views.npz", b"PK\x03\x04truncated", "not a views.npz written by pipeline.views"),
    Bad("views.npz", MISSING, "not a views.npz written by pipeline.views"),
]

RECORDS = [
    Bad("rprecision.json", _rprecision(r=1.7), r"models\.m\.pt\.color\.r_precision = 1\.7 lies outside its range"),
    Bad("rprecision.json", _rprecision(r=-0.1), r"r_precision = -0\.1 lies outside its range"),
    Bad("rprecision.json", _rprecision(iou=7.5), r"geometry\.objects\[0\]\.iou = 7\.5 lies outside its range \[0, 1\]"),
    Bad("rprecision.json", _rprecision(iou=NAN), r"geometry\.objects\[0\]\.iou is nan, not a finite number"),
    Bad("rprecision.json", _rprecision(score=NAN), r"objects\[0\]\.score is nan", "reported as 'worse, p = 0'"),
    Bad("rprecision.json", '{"models": {"m.pt": {"color": {"r_precis', "not a readable record"),
    Bad("rprecision.json", '{"models": {}}', "not an rprecision.json of this pipeline"),
    Bad("rprecision.json", "", "not a readable record"),
    Bad("geometry.json", '{"iou": 7.5}', r"iou = 7\.5 lies outside its range \[0, 1\]", "averaged into the table"),
    Bad("geometry.json", '{"iou": NaN}', "iou is nan, not a finite number", "averaged into the table"),
    Bad("geometry.json", '{"iou": 0.5, "chamfer": -1.0}', r"chamfer = -1\.0 lies outside its range \[0, inf\]"),
    Bad("geometry.json", '{"iou": "high"}', "iou is 'high', not a finite number"),
    Bad("geometry.json", '{"iou": 0.5, "first_stage": {"fog": 2}}', r"first_stage\.fog = 2 lies outside its range"),
    Bad("geometry.json", '{"iou": 0.5', "not a readable record"),
    Bad("geometry.json", "[0.5]", "must be a JSON object"),
]

MODEL_FILES = [
    Bad("model.safetensors", (stage, cut), message)
    for stage in ("mesh", "views", "geometry")
    for cut, message in [
        ("empty", "not a readable model"),
        ("truncated", "not a readable model"),
        ("foreign", "not a model written by pipeline.train"),
        ("wrong-shapes", "weights do not fit its own config"),
    ]
]

CHECKPOINTS = [
    Bad("checkpoint", b"", "checkpoint.safetensors: not a readable training checkpoint"),
    Bad("checkpoint", b"truncated", "checkpoint.safetensors: not a readable training checkpoint"),
    Bad("checkpoint", b"\x00" * 64, "checkpoint.safetensors: not a readable training checkpoint"),
    Bad("checkpoint", 1000, r"step 1000 is outside this run's 1\.\.4.*delete .* to start this object over"),
    Bad("checkpoint", -5, r"step -5 is outside this run's 1\.\.4.*delete .* to start this object over"),
    Bad("checkpoint", "nan", "holds NaN/Inf values"),
    Bad("checkpoint", "other-seed", r"checkpoint was written for a different seed .*; delete .* to start this"),
]

MODEL_DIRECTORIES = [
    Bad("model_index.json", ["models.evilmodel.payload", "Tok"], "component 'tokenizer'", "ran payload.py"),
    Bad("model_index.json", ["os", "system"], "component 'tokenizer'"),
    Bad("model_index.json", ["diffusers", "__class__"], "component 'tokenizer'"),
    Bad("model_index.json", ["transformers", "AutoModel.from_pretrained"], "component 'tokenizer'"),
    Bad("model_index.json", "CLIPTokenizer", "component 'tokenizer'"),
]

MESHES = [
    Bad("mesh.ply", "truncated", "not a mesh.ply written by pipeline.mesh", "null metrics, exit 0"),
    Bad("mesh.ply", "empty file", "not a mesh.ply written by pipeline.mesh"),
    Bad("mesh.ply", "foreign", "not a mesh.ply written by pipeline.mesh"),
    Bad("mesh.ply", "nan vertices", "vertices are NaN/Inf"),
    Bad("mesh.ply", "face index out of range", "a face index lies outside its 386 vertices"),
]

GEOMETRY_VIEWS = [
    Bad("views.npz (geometry)", {"opacity": np.full((2, 1, 8, 8), np.nan, np.float32)}, "opacity must be finite"),
    Bad("views.npz (geometry)", {"opacity": np.full((2, 1, 8, 8), 1.5, np.float32)}, r"in \[0, 1\]"),
    Bad("views.npz (geometry)", {"azimuths": np.array([0.0], np.float32)}, "one image per azimuth"),
    Bad("views.npz (geometry)", {"opacity": None}, "not a views.npz written by pipeline.views"),
]

WORLD_BANKS = [
    Bad("world bank", "inverted", "world bank content does not match the checksum", "trained on"),
    Bad("world bank", "no checksum", r"built by an older version\); delete it and rebuild"),
    Bad("world bank", "other config", "world bank was built with other settings than this config; rebuild it"),
    Bad("world bank", "truncated", "world bank"),
]

CATALOGUE = [
    *CONFIG,
    *YAML,
    *PROMPT_FILES,
    *PROMPTS_JSON,
    *VIEWS,
    *RECORDS,
    *MODEL_FILES,
    *CHECKPOINTS,
    *MODEL_DIRECTORIES,
    *MESHES,
    *GEOMETRY_VIEWS,
    *WORLD_BANKS,
]


# --- entries: feed one input in where a user's input enters, return (message, where it must say it came from) ---


def _config(tmp: Path, given: dict) -> tuple[str, str]:
    with pytest.raises(ConfigError) as err:
        variants(from_dict(given))
    return str(err.value), "params.yaml"


def _yaml(tmp: Path, given: str) -> tuple[str, str]:
    path = tmp / "params.yaml"
    path.write_text(given)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ConfigError) as err:
        load(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KB: no alias was expanded
    return str(err.value), str(path)


def _write(path: Path, given: Any) -> Path:
    if given == DIRECTORY:
        path.mkdir()
    elif given != MISSING:
        path.write_bytes(given if isinstance(given, bytes) else given.encode())
    return path


def _prompt_file(tmp: Path, given: Any) -> tuple[str, str]:
    from pipeline.prompts import PromptFileError, read_prompt_file

    path = _write(tmp / "bench.txt", given)
    with pytest.raises(PromptFileError) as err:
        read_prompt_file(path)
    return str(err.value), str(path)


TINY = {
    "world": {"images_per_caption": 2, "resolution": 8},
    "render": {"resolution": 8, "samples": 8},
    "nerf": {"kind": "grid", "resolution": 12},
    "train": {"steps": 5, "batch_views": 1, "warmup_steps": 1},
    "shading": {"albedo_steps": 1},
    "mesh": {"resolution": 16},
    "views": {"azimuths": 2, "resolution": 8, "samples": 8, "turntable_frames": 2},
    "tracking": {"enabled": False},
}


def _stage(run: Callable[[], None]) -> str:
    """A stage's CLI entry point: a located error ends it as SystemExit('error: …')."""
    with pytest.raises(SystemExit) as exc:
        run()
    msg = str(exc.value.code)
    assert msg.startswith("error: "), msg
    return msg.removeprefix("error: ")


def _prompts_json(tmp: Path, given: Any) -> tuple[str, str]:
    """Read by the training and the evaluation jobs: both refuse it with the same line."""
    from pipeline import evaluate
    from pipeline import train as train_mod
    from pipeline.config import save_resolved

    pj = _write(tmp / "prompts.json", given)
    save_resolved(from_dict(TINY), tmp / "config.yaml")
    common = ["--params", str(tmp / "config.yaml"), "--prompts", str(pj)]
    msg = _stage(lambda: train_mod.main([*common, "--prompt-id", "p", "--seed", "0", "--out", str(tmp / "o")]))
    also = _stage(lambda: evaluate.main([*common, "--views", str(tmp / "v.npz"), "--out", str(tmp / "r.json")]))
    assert also.split(" (")[0] == msg.split(" (")[0] and also.startswith(str(pj)), (
        also
    )  # its needs list the retrieval set
    assert "prepare stage rewrites it" in msg
    return msg, str(pj)


def _views_npz(tmp: Path, given: Any) -> tuple[str, str]:
    from pipeline.evaluate import EvaluationError, load_views

    path = tmp / "views.npz"
    if isinstance(given, dict):
        np.savez(path, **given)
    else:
        _write(path, given)
    with pytest.raises(EvaluationError) as err:
        load_views(path)
    return str(err.value), str(path)


def _rprecision_json(tmp: Path, given: str) -> tuple[str, str]:
    """Read by the report and the findings: never averaged into a table, the same line from both."""
    from pipeline import findings, report

    bad = _write(tmp / "v" / "rprecision.json", given) if (tmp / "v").mkdir() is None else None
    (tmp / "v" / "config.yaml").write_text("{}\n")
    msgs = {
        _stage(lambda: report.main(["--evals", str(bad), "--out-dir", str(tmp / "out")])),
        _stage(
            lambda: findings.main(
                [
                    "--study",
                    "s",
                    "--evals",
                    str(bad),
                    "--configs",
                    str(tmp / "v" / "config.yaml"),
                    "--out-dir",
                    str(tmp),
                ]
            )
        ),
    }
    assert len(msgs) == 1, msgs
    assert not (tmp / "out" / "table.md").exists()
    return msgs.pop(), str(bad)


def _geometry_json(tmp: Path, given: str) -> tuple[str, str]:
    from pipeline.evaluate import collect_geometry
    from pipeline.records import RecordError

    path = tmp / "p" / "seed0" / "geometry.json"
    path.parent.mkdir(parents=True)
    _write(path, given)
    with pytest.raises(RecordError) as err:
        collect_geometry([path])
    return str(err.value), str(path)


def _saved_model(tmp: Path, caption: str = "a red cube.") -> Path:
    from pipeline.checkpoint import identity
    from pipeline.nerf.model import Model, save_model

    cfg = from_dict(TINY)
    path = tmp / "obj" / "model.safetensors"
    torch.manual_seed(0)
    save_model(path, Model(cfg), cfg, identity(cfg, "p", caption, 0))
    return path


def _model_file(tmp: Path, given: tuple[str, str]) -> tuple[str, str]:
    """A truncated or foreign model.safetensors, read by every stage after training."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    stage, cut = given
    path = _saved_model(tmp)
    data = path.read_bytes()
    if cut == "empty":
        path.write_bytes(b"")
    elif cut == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif cut == "foreign":
        save_file({"w": torch.zeros(3)}, str(path))
    else:  # our metadata, weights of another shape
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata()
        save_file({k: v[..., :1].contiguous() for k, v in load_file(str(path)).items()}, str(path), metadata=meta)
    msg = _stage(lambda: _run_stage(stage, tmp, path))
    assert msg.endswith("delete it and run the workflow again (its training job writes it anew)")
    return msg, str(path)


def _run_stage(stage: str, tmp: Path, model: Path, mesh: Path | None = None, views: Path | None = None) -> None:
    import importlib

    mesh, views = mesh or tmp / "x.ply", views or tmp / "x.npz"
    argv = {
        "mesh": ["--model", str(model), "--out-dir", str(tmp / "m")],
        "views": ["--model", str(model), "--mesh", str(mesh), "--out-dir", str(tmp / "v")],
        "geometry": ["--model", str(model), "--mesh", str(mesh), "--views", str(views), "--out", str(tmp / "g.json")],
    }[stage]
    importlib.import_module(f"pipeline.{stage}").main(argv)


def _checkpoint(tmp: Path, given: Any) -> tuple[str, str]:
    """The training job's resume point: corrupt, out of this run's steps, non-finite or another object's."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from pipeline.checkpoint import CheckpointError, CheckpointMismatch, identity, load_checkpoint, save_checkpoint
    from pipeline.nerf.model import Model

    cfg = from_dict(TINY)
    model = Model(cfg)
    opt = torch.optim.Adam(model.parameters())
    ident = identity(cfg, "p", "a red cube.", 0)
    path = tmp / "checkpoint.safetensors"
    if isinstance(given, bytes):
        path.write_bytes(given)
    elif isinstance(given, int):
        save_checkpoint(tmp, model, opt, given, ident)
    else:
        save_checkpoint(tmp, model, opt, 2, identity(cfg, "p", "a red cube.", 1) if given == "other-seed" else ident)
        if given == "nan":
            with safe_open(str(path), "pt") as fh:
                meta = fh.metadata()
            tensors = load_file(str(path))
            next(iter(tensors.values()))[..., 0] = float("nan")
            save_file(tensors, str(path), metadata=meta)
    with pytest.raises((CheckpointError, CheckpointMismatch)) as err:
        load_checkpoint(tmp, model, opt, ident, cfg.train.steps)
    return str(err.value), str(tmp if given == "other-seed" else path)


def _model_index(tmp: Path, given: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A model directory naming its own module (or any library but diffusers/transformers): refused before any
    import, the payload never runs."""
    from pipeline.guidance.base import GuidanceLoadError
    from pipeline.guidance.loading import load_component

    model = tmp / "models" / "evilmodel"
    model.mkdir(parents=True)
    (tmp / "models" / "__init__.py").write_text("")
    (model / "__init__.py").write_text("")
    marker = tmp / "pwned"
    (model / "payload.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass Tok: pass\n")
    monkeypatch.syspath_prepend(str(tmp))
    (model / "model_index.json").write_text(json.dumps({"_class_name": "X", "tokenizer": given}))
    with pytest.raises(GuidanceLoadError) as err:
        load_component(model, "tokenizer")
    assert not marker.exists()
    return str(err.value), str(model / "model_index.json")


def _box_mesh(tmp: Path) -> Path:
    import open3d as o3d

    from pipeline.mesh import export

    box = o3d.geometry.TriangleMesh.create_box(0.5, 0.5, 0.5).translate((-0.25, -0.25, -0.25))
    export(box.subdivide_midpoint(3), tmp / "m")
    return tmp / "m" / "mesh.ply"


def _mesh_ply(tmp: Path, given: str) -> tuple[str, str]:
    """A mesh.ply cut short, foreign or corrupt, read by the geometry and views jobs: both refuse it."""
    path = _box_mesh(tmp)
    data = path.read_bytes()
    if given == "truncated":
        path.write_bytes(data[: len(data) * 2 // 3])
    elif given == "empty file":
        path.write_bytes(b"")
    elif given == "foreign":
        path.write_text("solid cube\nendsolid cube\n")
    else:
        header, body = data.split(b"end_header\n", 1)
        vertex_props = header.split(b"element face")[0].split(b"\n")
        kinds = [line.split()[1] for line in vertex_props if line.startswith(b"property ")]
        size = {b"double": 8, b"float": 4, b"uchar": 1}
        arr = bytearray(body)
        if given == "nan vertices":
            arr[0 : size[kinds[0]]] = np.array(np.nan, "<f8" if kinds[0] == b"double" else "<f4").tobytes()
        else:  # the first face's first index, after the vertices (and the face's uchar count)
            vertices = int(re.search(rb"element vertex (\d+)", header).group(1))
            at = vertices * sum(size[k] for k in kinds) + 1
            arr[at : at + 4] = np.uint32(10**6).tobytes()
        path.write_bytes(header + b"end_header\n" + bytes(arr))
    model = _saved_model(tmp)
    views = tmp / "views.npz"
    np.savez(views, **_views(), azimuths=np.array([0.0, 180.0], np.float32))
    msgs = {_stage(lambda s=stage: _run_stage(s, tmp, model, path, views)) for stage in ("geometry", "views")}
    assert len(msgs) == 1, msgs
    return msgs.pop(), str(path)


def _geometry_views(tmp: Path, given: dict) -> tuple[str, str]:
    """The views a geometry job scores silhouettes from: non-finite, out of range, or not one image per azimuth."""
    views = tmp / "views.npz"
    arrays = {**_views(opacity=np.zeros((2, 1, 8, 8), np.float32)), "azimuths": np.array([0.0, 180.0], np.float32)}
    arrays = {k: v for k, v in {**arrays, **given}.items() if v is not None}
    np.savez(views, **arrays)
    return _stage(lambda: _run_stage("geometry", tmp, _saved_model(tmp), _box_mesh(tmp), views)), str(views)


def _world_bank(tmp: Path, given: str) -> tuple[str, str]:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from pipeline.guidance import GuidanceLoadError
    from pipeline.world.prior import generate_bank, load_bank, save_bank

    cfg = from_dict(TINY)
    path = tmp / "bank.safetensors"
    save_bank(generate_bank(cfg), path, cfg)
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(path))
    if given == "inverted":
        save_file({**tensors, "images": 255 - tensors["images"]}, str(path), metadata=meta)
    elif given == "no checksum":
        save_file(tensors, str(path), metadata={k: v for k, v in meta.items() if k != "sha256"})
    elif given == "other config":
        cfg = from_dict({**TINY, "world": {"images_per_caption": 3, "resolution": 8}})
    else:
        path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(GuidanceLoadError) as err:
        load_bank(path, cfg)
    return str(err.value), str(path)


ENTRIES: dict[str, Callable[..., tuple[str, str]]] = {
    "config": _config,
    "yaml": _yaml,
    "prompt file": _prompt_file,
    "prompts.json": _prompts_json,
    "views.npz": _views_npz,
    "rprecision.json": _rprecision_json,
    "geometry.json": _geometry_json,
    "model.safetensors": _model_file,
    "checkpoint": _checkpoint,
    "model_index.json": _model_index,
    "mesh.ply": _mesh_ply,
    "views.npz (geometry)": _geometry_views,
    "world bank": _world_bank,
}


def test_the_catalogue_is_large_and_every_row_enters_somewhere():
    assert len(CATALOGUE) >= 180
    assert {b.entry for b in CATALOGUE} == set(ENTRIES)
    ids = [b.id for b in CATALOGUE]
    assert len(ids) == len(set(ids)), "two rows with the same input"


@pytest.mark.parametrize("bad", CATALOGUE, ids=lambda b: b.id)
def test_bad_input_gives_one_located_line(bad: Bad, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB
    t0 = time.monotonic()
    entry = ENTRIES[bad.entry]
    args = (tmp_path, bad.given, monkeypatch) if bad.entry == "model_index.json" else (tmp_path, bad.given)
    message, where = entry(*args)
    assert re.search(bad.message, message), f"expected /{bad.message}/, got: {message}"
    assert message.startswith(where), f"does not name {where} first: {message}"
    assert "\n" not in message and "Traceback" not in message, message
    assert time.monotonic() - t0 < 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 2_000_000
