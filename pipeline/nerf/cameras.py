"""Cameras: the paper's random camera sampler, evaluation orbits, rays and the view-dependent prompt suffix.

World frame: Z up; azimuth 0° looks at the object's front from +X; elevation is measured from the XY plane.
Shared by SDS-NeRF training, evaluation views and the bundled world's renderer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.config import CameraConfig


@dataclass
class Cameras:
    position: Tensor
    """Camera centres [B, 3]."""
    rotation: Tensor
    """Camera-to-world rotation [B, 3, 3]; columns are right, up, backward (OpenGL convention)."""
    focal: Tensor
    """Focal length as a fraction of the image width [B]."""
    elevation: Tensor
    """Nominal elevation in degrees [B] (before jitter; decides the view suffix)."""
    azimuth: Tensor
    """Nominal azimuth in degrees [0, 360) [B]."""
    light: Tensor
    """Point-light positions [B, 3]."""

    def __len__(self) -> int:
        return int(self.position.shape[0])

    def to(self, device: torch.device) -> Cameras:
        return Cameras(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    def __getitem__(self, index: slice) -> Cameras:
        """The cameras `index` selects (a slice), e.g. for rendering in chunks."""
        return Cameras(*(getattr(self, f)[index] for f in self.__dataclass_fields__))


VIEW_SUFFIXES = ("front view", "side view", "back view", "overhead view")


def view_suffix(elevation: float, azimuth: float) -> str:
    """Paper / threestudio rule: overhead above 60° elevation; front within ±45° of 0°, back within ±45° of 180°."""
    if elevation > 60.0:
        return "overhead view"
    az = azimuth % 360.0
    if az < 45.0 or az >= 315.0:
        return "front view"
    if 135.0 <= az < 225.0:
        return "back view"
    return "side view"


def with_suffix(text: str, elevation: float, azimuth: float) -> str:
    """ "a red cube." → "a red cube, front view"."""
    return f"{text.rstrip('.')}, {view_suffix(elevation, azimuth)}"


def _spherical(elev_deg: Tensor, azim_deg: Tensor, dist: Tensor) -> Tensor:
    el, az = torch.deg2rad(elev_deg), torch.deg2rad(azim_deg)
    return torch.stack([dist * el.cos() * az.cos(), dist * el.cos() * az.sin(), dist * el.sin()], dim=-1)


def look_at(position: Tensor, target: Tensor, up: Tensor) -> Tensor:
    """Rotation [B, 3, 3] with columns (right, up, backward) for cameras at `position` looking at `target`."""
    forward = torch.nn.functional.normalize(target - position, dim=-1)
    right = torch.nn.functional.normalize(torch.cross(forward, up, dim=-1), dim=-1)
    true_up = torch.cross(right, forward, dim=-1)
    return torch.stack([right, true_up, -forward], dim=-1)


def _lights(position: Tensor, cfg: CameraConfig, generator: torch.Generator | None) -> Tensor:
    """Light direction ~ N(camera position, light_perturb² I); distance U(light_distance) × camera distance."""
    b = position.shape[0]
    noise = torch.randn(b, 3, generator=generator) * cfg.light_perturb
    direction = torch.nn.functional.normalize(position + noise, dim=-1)
    lo, hi = cfg.light_distance
    scale = lo + (hi - lo) * torch.rand(b, generator=generator)
    return direction * (scale * position.norm(dim=-1))[:, None]


def sample_cameras(cfg: CameraConfig, batch: int, generator: torch.Generator | None = None) -> Cameras:
    """The paper's random cameras: elevation half uniform in angle, half uniform in area; azimuth U[0, 360);
    distance and focal uniform in their ranges; position, look-at and up jitter; a random point light."""
    g = generator
    lo, hi = cfg.elevation
    u = torch.rand(batch, generator=g)
    in_angle = lo + (hi - lo) * u
    s_lo, s_hi = math.sin(math.radians(lo)), math.sin(math.radians(hi))
    in_area = torch.rad2deg(torch.asin((s_lo + (s_hi - s_lo) * u).clamp(-1, 1)))
    use_area = torch.rand(batch, generator=g) < 0.5
    elevation = torch.where(use_area, in_area, in_angle)
    azimuth = 360.0 * torch.rand(batch, generator=g)
    d_lo, d_hi = cfg.distance
    distance = d_lo + (d_hi - d_lo) * torch.rand(batch, generator=g)
    f_lo, f_hi = cfg.focal
    focal = f_lo + (f_hi - f_lo) * torch.rand(batch, generator=g)
    position = _spherical(elevation, azimuth, distance)
    position = position + cfg.position_jitter * (2 * torch.rand(batch, 3, generator=g) - 1)
    target = cfg.look_at_jitter * torch.randn(batch, 3, generator=g)
    up = torch.tensor([0.0, 0.0, 1.0]) + cfg.up_jitter * torch.randn(batch, 3, generator=g)
    return Cameras(position, look_at(position, target, up), focal, elevation, azimuth, _lights(position, cfg, g))


def orbit_cameras(cfg: CameraConfig, azimuths: list[float], elevation: float | None = None) -> Cameras:
    """Evaluation / turntable cameras: no jitter, mid-range distance and focal, light at the camera."""
    n = len(azimuths)
    elev = torch.full((n,), cfg.eval_elevation if elevation is None else elevation)
    azim = torch.tensor(azimuths, dtype=torch.float32) % 360.0
    dist = torch.full((n,), sum(cfg.distance) / 2)
    position = _spherical(elev, azim, dist)
    up = torch.tensor([0.0, 0.0, 1.0]).expand(n, 3)
    rot = look_at(position, torch.zeros(n, 3), up)
    return Cameras(position, rot, torch.full((n,), sum(cfg.focal) / 2), elev, azim, position * 1.0)


def rays(cams: Cameras, resolution: int) -> tuple[Tensor, Tensor]:
    """Ray origins and unit directions, each [B, H, W, 3], through pixel centres."""
    b, device = len(cams), cams.position.device
    coords = (torch.arange(resolution, device=device, dtype=torch.float32) + 0.5) / resolution - 0.5
    y, x = torch.meshgrid(-coords, coords, indexing="ij")  # image row 0 is the top
    f = cams.focal.view(b, 1, 1)
    local = torch.stack([x.expand(b, -1, -1) / f, y.expand(b, -1, -1) / f, -torch.ones_like(x).expand(b, -1, -1)], -1)
    dirs = torch.nn.functional.normalize(torch.einsum("bij,bhwj->bhwi", cams.rotation, local), dim=-1)
    origins = cams.position.view(b, 1, 1, 3).expand_as(dirs)
    return origins, dirs
