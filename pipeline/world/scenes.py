"""The bundled offline world: procedural primitives rendered with the training renderer.

Six shapes × six colours, captions like "a red cube." (normalised). A scene is an analytic density field
σ = σ_max · sigmoid(−sdf/ε) with a constant albedo, rendered by pipeline.nerf.renderer with the same random
cameras, view suffixes, shading and background as SDS-NeRF training. Because the albedo is constant, one render with
white albedo gives every colour exactly: the renderer computes colour = Σ w_i a·s_i + (1 − Σ w_i)·bg, which for a
constant a equals a·(white foreground) + (1 − opacity)·bg (tests check this against a direct render).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.config import Config
from pipeline.nerf.cameras import VIEW_SUFFIXES, Cameras, sample_cameras, view_suffix
from pipeline.nerf.field import Field
from pipeline.nerf.renderer import Background, Shading, render_chunked

SHAPES = ["sphere", "cube", "cylinder", "cone", "torus", "pyramid"]
COLOURS = {
    "red": (0.85, 0.1, 0.1),
    "green": (0.1, 0.7, 0.15),
    "blue": (0.1, 0.25, 0.9),
    "yellow": (0.95, 0.85, 0.1),
    "purple": (0.55, 0.15, 0.75),
    "orange": (1.0, 0.5, 0.05),
}
VIEWS = list(VIEW_SUFFIXES)


def caption(colour: str, shape: str) -> str:
    """Normalised caption: "a red cube.", "an orange torus."."""
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {shape}."


CAPTIONS = [caption(c, s) for s in SHAPES for c in COLOURS]
"""Every caption of the world (= prompts/primitives.txt, normalised), in file order."""


def parse_caption(text: str) -> tuple[str, str]:
    """ "a red cube." → ("red", "cube"); raises ValueError for anything outside the world."""
    words = text.rstrip(".").split()
    if len(words) != 3 or words[1] not in COLOURS or words[2] not in SHAPES:
        raise ValueError(f"{text!r} is not a caption of the bundled world (e.g. 'a red cube.')")
    return words[1], words[2]


def sdf(shape: str, p: Tensor) -> Tensor:
    """Signed distance (exact or a close bound) of each primitive, centred at the origin, radius ≈ 0.5, Z up."""
    x, y, z = p.unbind(-1)
    if shape == "sphere":
        return p.norm(dim=-1) - 0.5
    if shape == "cube":
        q = p.abs() - 0.4
        return q.clamp(min=0).norm(dim=-1) + q.amax(-1).clamp(max=0)
    if shape == "cylinder":
        d = torch.stack([torch.hypot(x, y) - 0.4, z.abs() - 0.45], -1)
        return d.clamp(min=0).norm(dim=-1) + d.amax(-1).clamp(max=0)
    if shape == "cone":  # base radius 0.5 at z = −0.45, apex at z = 0.5
        h, r = 0.95, 0.5
        slope = math.atan2(r, h)
        side = (torch.hypot(x, y) - r * (0.5 - z) / h) * math.cos(slope)
        return torch.maximum(side, torch.maximum(-z - 0.45, z - 0.5))
    if shape == "torus":  # ring in the XY plane
        return torch.hypot(torch.hypot(x, y) - 0.35, z) - 0.15
    if shape == "pyramid":  # square base of half-width 0.5 at z = −0.4, apex at z = 0.5
        h, w = 0.9, 0.5
        slope = math.atan2(w, h)
        half = w * (0.5 - z) / h
        side = (torch.maximum(x.abs(), y.abs()) - half) * math.cos(slope)
        return torch.maximum(side, torch.maximum(-z - 0.4, z - 0.5))
    raise ValueError(f"unknown shape {shape!r}; one of {SHAPES}")


class PrimitiveField(Field):
    """Analytic density of one primitive with a constant albedo."""

    def __init__(
        self,
        shape: str,
        colour: tuple[float, float, float] = (1.0, 1.0, 1.0),
        bound: float = 1.0,
        sigma_max: float = 60.0,
        softness: float = 0.01,
    ) -> None:
        super().__init__()
        self.shape, self.bound, self.sigma_max, self.softness = shape, bound, sigma_max, softness
        self.register_buffer("colour", torch.tensor(colour, dtype=torch.float32))

    def density_albedo(self, pts: Tensor) -> tuple[Tensor, Tensor]:
        sigma = self.sigma_max * torch.sigmoid(-sdf(self.shape, pts) / self.softness)
        return sigma, self.colour.expand(*pts.shape[:-1], 3)


@dataclass
class ShapeRenders:
    """Colour-independent renders of one shape: combine with any albedo through :func:`colourise`."""

    white: Tensor
    """Lit foreground with white albedo [N, 3, H, W]."""
    opacity: Tensor
    """[N, 1, H, W]"""
    cams: Cameras


def render_shape(
    cfg: Config, shape: str, n: int, generator: torch.Generator, chunk: int = 64, cams: Cameras | None = None
) -> ShapeRenders:
    """`n` lit renders of `shape` (ambient/diffuse from cfg.shading), in chunks of `chunk` views, from `cams` or
    else from the training camera sampler."""
    field = PrimitiveField(shape, bound=cfg.nerf.bound)
    bg = Background(cfg.render)
    cams = sample_cameras(cfg.camera, n, generator) if cams is None else cams
    out = render_chunked(
        field,
        cams,
        cfg.world.resolution,
        cfg.render.samples,
        Shading.lit(n, cfg.shading),
        bg,
        chunk,
        normal_eps=cfg.render.normal_eps,
    )
    return ShapeRenders(out.foreground, out.opacity, cams)


def colourise(r: ShapeRenders, colour: tuple[float, float, float], mode: str, background: list[float]) -> Tensor:
    """Images [N, 3, H, W] of a shape in `colour`: mode albedo, lit or textureless, over the solid background."""
    c = torch.tensor(colour).view(1, 3, 1, 1)
    bg = torch.tensor(background).view(1, 3, 1, 1)
    fg = {"albedo": c * r.opacity, "lit": c * r.white, "textureless": r.white}[mode]
    return (fg + (1 - r.opacity) * bg).clamp(0, 1)


def view_index(cams: Cameras) -> Tensor:
    """Index into VIEWS of each camera's suffix [N]."""
    return torch.tensor(
        [VIEWS.index(view_suffix(e, a)) for e, a in zip(cams.elevation.tolist(), cams.azimuth.tolist(), strict=True)]
    )
