"""Volume rendering with shading (albedo / Lambertian / textureless) and a background, shared by training,
evaluation views and the bundled world.

For samples i along a ray with spacing δ: α_i = 1 − exp(−σ_i δ), w_i = α_i Π_{j<i}(1 − α_j),
colour = Σ w_i c_i + (1 − Σ w_i)·background, where c_i = a_i (ambient + diffuse·max(0, n_i·l_i)),
a_i = albedo (1 when textureless), n_i = −∇σ/‖∇σ‖, l_i the unit vector to the point light.
Samples are stratified over the ray's segment inside the cube [−bound, bound]³.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pipeline.config import RenderConfig, ShadingConfig
from pipeline.nerf.cameras import Cameras, rays
from pipeline.nerf.field import Field


@dataclass
class Shading:
    """Per-view shading: colour = albedo·(ambient + diffuse·n·l); textureless replaces albedo by 1."""

    ambient: Tensor
    """[B]"""
    diffuse: Tensor
    """[B]"""
    textureless: Tensor
    """[B] bool"""

    @staticmethod
    def albedo(b: int) -> Shading:
        return Shading(torch.ones(b), torch.zeros(b), torch.zeros(b, dtype=torch.bool))

    @staticmethod
    def lit(b: int, cfg: ShadingConfig, textureless: bool = False) -> Shading:
        return Shading(torch.full((b,), cfg.ambient), torch.full((b,), cfg.diffuse), torch.full((b,), textureless))

    @property
    def needs_normals(self) -> bool:
        return bool((self.diffuse > 0).any())

    def __getitem__(self, index: slice) -> Shading:
        return Shading(self.ambient[index], self.diffuse[index], self.textureless[index])

    def modes(self) -> list[str]:
        return [
            "textureless" if t else ("lit" if d > 0 else "albedo")
            for t, d in zip(self.textureless.tolist(), self.diffuse.tolist(), strict=True)
        ]


def sample_shading(cfg: ShadingConfig, step: int, b: int, generator: torch.Generator | None = None) -> Shading:
    """Paper: albedo only for the first `albedo_steps`; then per view lit with p_lit (textureless with
    p_textureless given lit), else albedo."""
    if step < cfg.albedo_steps:
        return Shading.albedo(b)
    lit = torch.rand(b, generator=generator) < cfg.p_lit
    textureless = lit & (torch.rand(b, generator=generator) < cfg.p_textureless)
    return Shading(
        torch.where(lit, torch.tensor(cfg.ambient), torch.tensor(1.0)),
        torch.where(lit, torch.tensor(cfg.diffuse), torch.tensor(0.0)),
        textureless,
    )


class Background(nn.Module):
    """mlp: an MLP over the ray direction encoded at `background_freqs` frequencies (paper; low frequencies keep it a
    sky rather than a second scene); solid: a fixed colour; random: a random solid colour per view while training.
    While training, any mode is replaced per view by a random solid colour with probability `random_background_p`.
    Outside training every mode is the fixed colour (`fixed=True` forces it): evaluation views are always over the
    same background."""

    def __init__(self, cfg: RenderConfig, fixed: bool = False) -> None:
        super().__init__()
        self.mode = "solid" if fixed else cfg.background
        self.freqs = cfg.background_freqs
        self.random_p = 1.0 if self.mode == "random" else cfg.random_background_p
        self.register_buffer("color", torch.tensor(cfg.background_color, dtype=torch.float32))
        if cfg.background == "mlp":  # kept for the state dict even when fixed
            self.mlp = nn.Sequential(nn.Linear(3 + 6 * self.freqs, 32), nn.SiLU(), nn.Linear(32, 3))

    def forward(self, dirs: Tensor, training: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """dirs [B, H, W, 3] → colours [B, H, W, 3]."""
        if self.mode == "mlp" and training:
            freqs = 2.0 ** torch.arange(self.freqs, device=dirs.device) * torch.pi
            enc = (dirs[..., None] * freqs).flatten(-2)
            out = torch.sigmoid(self.mlp(torch.cat([dirs, enc.sin(), enc.cos()], -1)))
        else:
            out = self.color.expand_as(dirs)
        if training and self.random_p > 0:
            b = dirs.shape[0]
            pick = (torch.rand(b, generator=generator) < self.random_p).to(dirs.device)
            colour = torch.rand(b, 3, generator=generator).to(dirs.device)
            out = torch.where(pick[:, None, None, None], colour[:, None, None, :].expand_as(dirs), out)
        return out


@dataclass
class RenderOutput:
    rgb: Tensor
    """Composited colour [B, 3, H, W] in [0, 1]."""
    foreground: Tensor
    """Σ w_i c_i before the background [B, 3, H, W]."""
    opacity: Tensor
    """Σ w_i [B, 1, H, W]."""
    depth: Tensor
    """Expected depth along the ray normalised by opacity [B, 1, H, W] (0 where empty)."""
    normal: Tensor
    """Opacity-weighted world normals [B, 3, H, W] (zeros if not computed)."""
    orientation: Tensor
    """Ref-NeRF orientation penalty Σ sg(w_i)·max(0, n_i·d)² per opaque ray: summed over rays, divided by
    Σ sg(opacity) (0 if no normals)."""
    z_variance: Tensor
    """Variance of the depth along each ray under its weights, Σ w_i (t_i − depth)² / Σ w_i [B, 1, H, W] (world
    units²; 0 where empty): small when the ray's weight sits in one thin shell, i.e. at a sharp surface."""


def normal_roughness(normal: Tensor) -> Tensor:
    """Mean squared difference of vertically and of horizontally neighbouring pixels of a normal map [B, 3, H, W],
    summed over the channels and added for the two directions (`train.normal_smooth_weight`)."""
    down = (normal[..., 1:, :] - normal[..., :-1, :]).square().sum(1).mean()
    across = (normal[..., :, 1:] - normal[..., :, :-1]).square().sum(1).mean()
    return down + across


def unit(v: Tensor, eps: float = 1e-8) -> Tensor:
    """v / max(‖v‖, eps) over the last axis, as `F.normalize` but through rsqrt of the summed squares: on CPU,
    `linalg.vector_norm` over an axis of 3 is slow (fwd + bwd 11.1 → 7.3 ms on 197k vectors, benchmarks/RESULTS.md)."""
    return v * (v * v).sum(-1, keepdim=True).clamp(min=eps * eps).rsqrt()


def _ray_box(origins: Tensor, dirs: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0, t1 = (-bound - origins) * inv, (bound - origins) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp(min=0.0)
    far = torch.maximum(t0, t1).amin(-1)
    hit = far > near
    return torch.where(hit, near, torch.zeros_like(near)), torch.where(hit, far, torch.zeros_like(far))


def render(
    field: Field,
    cams: Cameras,
    resolution: int,
    samples: int,
    shading: Shading,
    background: Background,
    *,
    normal_eps: float = 0.02,
    generator: torch.Generator | None = None,
    training: bool = False,
    need_normals: bool | None = None,
) -> RenderOutput:
    """Render B views at `resolution`² with `samples` per ray; `generator` jitters the strata (None: midpoints)."""
    device = cams.position.device
    origins, dirs = rays(cams, resolution)
    near, far = _ray_box(origins, dirs, field.bound)
    b, h, w = near.shape
    offsets = (
        torch.rand(b, h, w, samples, generator=generator).to(device)
        if generator is not None
        else torch.full((b, h, w, samples), 0.5, device=device)
    )
    delta = (far - near)[..., None] / samples
    ts = near[..., None] + (torch.arange(samples, device=device) + offsets) * delta
    pts = origins[..., None, :] + dirs[..., None, :] * ts[..., None]
    with_grad = shading.needs_normals if need_normals is None else need_normals
    sigma, albedo, grad = field.query(pts, normal_eps, with_grad)
    alpha = 1.0 - torch.exp(-sigma * delta)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1.0 - alpha[..., :-1] + 1e-10], -1), -1)
    weights = alpha * trans  # [B, H, W, S]
    opacity = weights.sum(-1)

    view = lambda v: v.to(device).view(b, 1, 1, 1, -1)  # noqa: E731 - per-view broadcast
    textureless = shading.textureless.to(device).view(b, 1, 1, 1, 1)
    base = torch.where(textureless, torch.ones_like(albedo), albedo)
    if grad is not None:
        normals = -unit(grad)
        to_light = unit(cams.light.view(b, 1, 1, 1, 3) - pts, eps=1e-12)
        lambert = (normals * to_light).sum(-1, keepdim=True).clamp(min=0.0)
        colour = base * (view(shading.ambient) + view(shading.diffuse) * lambert)
        normal_map = (weights[..., None] * normals).sum(-2)
        facing = (normals * dirs[..., None, :]).sum(-1).clamp(min=0.0) ** 2
        # normalised by the opaque rays (threestudio): the penalty means the same whatever the object's size
        orientation = (weights.detach() * facing).sum() / opacity.detach().sum().clamp(min=1.0)
    else:
        colour = base * view(shading.ambient)
        normal_map = torch.zeros(b, h, w, 3, device=device)
        orientation = torch.zeros((), device=device)
    foreground = (weights[..., None] * colour).sum(-2)
    bg = background(dirs, training=training, generator=generator)
    rgb = foreground + (1.0 - opacity[..., None]) * bg
    norm = opacity.clamp(min=1e-6)
    mean_t = (weights * ts).sum(-1) / norm
    z_variance = (weights * (ts - mean_t[..., None]) ** 2).sum(-1) / norm
    empty = opacity <= 1e-4
    depth = torch.where(empty, torch.zeros_like(mean_t), mean_t)
    z_variance = torch.where(empty, torch.zeros_like(z_variance), z_variance)
    chw = lambda t: t.permute(0, 3, 1, 2)  # noqa: E731
    return RenderOutput(
        rgb=chw(rgb).clamp(0, 1),
        foreground=chw(foreground),
        opacity=opacity[:, None],
        depth=depth[:, None],
        normal=chw(normal_map),
        orientation=orientation,
        z_variance=z_variance[:, None],
    )


def render_chunked(
    field: Field,
    cams: Cameras,
    resolution: int,
    samples: int,
    shading: Shading,
    background: Background,
    chunk: int,
    *,
    normal_eps: float = 0.02,
) -> RenderOutput:
    """`render` without gradients, `chunk` views at a time (midpoint samples, so identical to one call): memory
    stays bounded for large view sets, and small chunks are faster on CPU (benchmarks/RESULTS.md)."""
    outs = []
    with torch.no_grad():
        for i in range(0, len(cams), chunk):
            outs.append(
                render(
                    field,
                    cams[i : i + chunk],
                    resolution,
                    samples,
                    shading[i : i + chunk],
                    background,
                    normal_eps=normal_eps,
                )
            )
    sizes = torch.tensor([o.rgb.shape[0] for o in outs], dtype=torch.float32, device=outs[0].rgb.device)
    return RenderOutput(
        rgb=torch.cat([o.rgb for o in outs]),
        foreground=torch.cat([o.foreground for o in outs]),
        opacity=torch.cat([o.opacity for o in outs]),
        depth=torch.cat([o.depth for o in outs]),
        normal=torch.cat([o.normal for o in outs]),
        orientation=(torch.stack([o.orientation for o in outs]) * sizes).sum() / sizes.sum(),
        z_variance=torch.cat([o.z_variance for o in outs]),
    )
