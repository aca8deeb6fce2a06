"""The identity of a world bank: the settings it depends on and the hash that names its file. Torch-free, so the
workflow can name the bank a variant needs while it plans its jobs without importing torch (≈ 2 s a Snakemake start).
"""

from __future__ import annotations

import hashlib
import json

from pipeline.config import Config

BANK_MODES = ("albedo", "lit")
"""Shading modes in the bank by default (`world.bank_modes`): what objects of the world look like (textureless
renders are not images of a "red cube"; SDS on a textureless render therefore pushes geometry, as in the paper)."""


LATER_KEYS = (("world", "bank_modes", list(BANK_MODES)), ("camera", "light_perturb", 1.0))
"""Bank settings added after banks were built: left out of the bank's name while they hold their default."""


def bank_settings(cfg: Config) -> dict:
    """Everything the bank depends on; its hash names the bank file."""
    data = cfg.to_dict()
    world = {k: v for k, v in data["world"].items() if k != "background"}  # background: a prior setting
    for section, key, default in LATER_KEYS:  # at their defaults, the banks built before them keep their names
        if data[section][key] == default:
            del (world if section == "world" else data[section])[key]
    return {
        "world": world,
        "camera": data["camera"],
        "shading": {"ambient": cfg.shading.ambient, "diffuse": cfg.shading.diffuse},
        "render": {
            "samples": cfg.render.samples,
            "background_color": cfg.render.background_color,
            "normal_eps": cfg.render.normal_eps,
        },
        "bound": cfg.nerf.bound,
        "version": 2,  # 2: opacity and background colour stored
    }


def bank_digest(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(bank_settings(cfg), sort_keys=True).encode()).hexdigest()[:10]
