"""3D fields: density σ ≥ 0, albedo in [0, 1] and the density gradient ∇σ (normals are −∇σ/‖∇σ‖).

`Field` is the interface the renderer uses; `GridField` is the trainable one (a dense feature grid, optionally
decoded by a small MLP), pure PyTorch. Measured on 2 CPU cores at the bundled world's settings, a dense 32³ grid
read directly is far cheaper than a hash grid + MLP and converges in a few hundred steps, so it is the default; the
MLP decoder is there for higher-resolution setups.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.config import FieldConfig, scheduled


class Field(nn.Module):
    """σ, albedo and ∇σ at points. Subclasses implement `density_albedo`; `query` adds ∇σ by central differences."""

    bound: float

    def density_albedo(self, pts: Tensor) -> tuple[Tensor, Tensor]:
        """pts [..., 3] → σ [...], albedo [..., 3]."""
        raise NotImplementedError

    def query(self, pts: Tensor, normal_eps: float, with_grad: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """σ [...], albedo [..., 3] and ∇σ [..., 3] (None unless `with_grad`)."""
        sigma, albedo = self.density_albedo(pts)
        if not with_grad:
            return sigma, albedo, None
        offsets = torch.eye(3, device=pts.device, dtype=pts.dtype) * normal_eps
        shifted = torch.cat([pts[..., None, :] + offsets, pts[..., None, :] - offsets], dim=-2)
        s, _ = self.density_albedo(shifted)
        grad = (s[..., :3] - s[..., 3:]) / (2 * normal_eps)
        return sigma, albedo, grad

    def query_analytic(self, pts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """σ, albedo and the exact ∇σ at pts by autograd, in one query. Under grad mode ∇σ keeps its graph (a loss
        on the normals reaches the parameters through a double backward); under no_grad everything is detached."""
        keep = torch.is_grad_enabled()
        with torch.enable_grad():
            p = pts.detach().requires_grad_(True)
            sigma, albedo = self.density_albedo(p)
            (grad,) = torch.autograd.grad(sigma, p, torch.ones_like(sigma), create_graph=keep)
        if keep:
            return sigma, albedo, grad
        return sigma.detach(), albedo.detach(), grad.detach()


def require_analytic_normals(device: torch.device) -> None:
    """`nerf.normals: analytic` takes a loss on ∇σ back through `grid_sample` (a double backward), which older torch
    builds lack on some devices. Try it once on a 2³ grid before training, and fail with the fix instead of at step 0
    with autograd's message."""
    grid = torch.zeros(1, 1, 2, 2, 2, device=device, requires_grad=True)
    pts = torch.zeros(1, 1, 1, 1, 3, device=device, requires_grad=True)
    out = F.grid_sample(grid, pts, mode="bilinear", padding_mode="zeros", align_corners=True)
    (grad,) = torch.autograd.grad(out.sum(), pts, create_graph=True)
    try:
        grad.sum().backward()
    except (RuntimeError, NotImplementedError) as e:
        raise ValueError(
            f"nerf.normals: analytic needs the double backward of grid_sample, which torch {torch.__version__} on "
            f"{device.type} does not have ({e}). Set nerf.lookup: gather (the same interpolation, differentiable to "
            "any order), or nerf.normals: finite_difference (README, Paper setups: Normals), or use the torch this "
            "project pins (pyproject.toml)."
        ) from e


def trilinear_gather(volume: Tensor, pts: Tensor) -> Tensor:
    """`F.grid_sample(volume, pts, mode="bilinear", padding_mode="zeros", align_corners=True)` for volume
    [1, C, D, H, W] at pts [..., 3] in [−1, 1] (x → W, y → H, z → D), as [..., C], written as the 8 corners' rows of a
    [D·H·W, C] table weighted by their trilinear weights: plain indexing and arithmetic, so autograd takes it to any
    order (`nerf.lookup: gather`). Corners outside the volume count as zero, as grid_sample's zero padding does."""
    _, c, *size = volume.shape
    table = volume.reshape(c, -1).T
    dims = torch.tensor(size[::-1], device=pts.device)  # W, H, D: the extent along x, y, z
    u = (pts + 1) / 2 * (dims - 1).to(pts.dtype)  # align_corners=True: −1 and 1 are the first and last nodes
    lo = u.detach().floor()
    frac = u - lo  # keeps u's graph: the weights carry the derivative with respect to the points
    lo = lo.long()
    strides = torch.tensor([1, size[2], size[1] * size[2]], device=pts.device)  # x, y, z
    out = None
    for corner in range(8):
        bit = torch.tensor([(corner >> a) & 1 for a in range(3)], device=pts.device)
        idx = lo + bit
        inside = ((idx >= 0) & (idx < dims)).all(-1)
        weight = torch.where(bit.bool(), frac, 1 - frac).prod(-1) * inside
        rows = table[(idx.clamp(min=0) * strides).sum(-1).clamp(max=table.shape[0] - 1)]
        term = rows * weight[..., None]
        out = term if out is None else out + term
    return out


def blob(pts: Tensor, kind: str, strength: float, radius: float, cap: float = 0.0) -> Tensor:
    """Density blob added to the pre-activation density at init: gaussian λ·exp(−‖μ‖²/2σ²) or linear λ(1 − ‖μ‖/σ),
    clamped from above at `cap` (0: no cap)."""
    r = pts.norm(dim=-1)
    if kind == "gaussian":
        out = strength * torch.exp(-(r**2) / (2 * radius**2))
    elif kind == "linear":
        out = strength * (1 - r / radius)
    else:
        return torch.zeros_like(r)
    return out.clamp(max=cap) if cap > 0 else out


class GridField(Field):
    """Dense grid over [−bound, bound]³ (trilinear). Without MLP its 4 channels are pre-activation density and
    albedo logits; the density grid's central differences give ∇σ in the same lookup (no extra queries)."""

    def __init__(self, cfg: FieldConfig) -> None:
        super().__init__()
        self.cfg, self.bound = cfg, cfg.bound
        self.resolution = self._make_grids(cfg)
        self.mlp = (
            nn.Sequential(nn.Linear(cfg.features, cfg.mlp_hidden), nn.SiLU(), nn.Linear(cfg.mlp_hidden, 4))
            if cfg.mlp_hidden
            else None
        )
        axis = torch.linspace(-cfg.bound, cfg.bound, self.resolution)
        zz, yy, xx = torch.meshgrid(axis, axis, axis, indexing="ij")  # grid_sample: D=z, H=y, W=x
        self.register_buffer(
            "blob_grid",
            blob(torch.stack([xx, yy, zz], -1), cfg.blob, cfg.blob_density, cfg.blob_radius, cfg.blob_cap)[None, None],
            persistent=False,
        )

    _step: int | None = None

    def _make_grids(self, cfg: FieldConfig) -> int:
        """Create the trainable grid(s); return the resolution of the volume `_raw` gives."""
        r = cfg.resolution
        self.grid = nn.Parameter(torch.zeros(1, cfg.features, r, r, r))
        return r

    def _raw(self) -> Tensor:
        """The trainable features as one volume [1, C, R, R, R]."""
        return self.grid

    def _features(self, pts: Tensor) -> Tensor:
        """The MLP's input at pts [..., 3] → [..., C]."""
        return self._sample(self.grid, pts)

    def set_step(self, step: int | None) -> None:
        """The training step (coarse-to-fine levels, the `sdf` width); None = evaluation (all levels, last width)."""
        self._step = step

    def sdf_width(self) -> float:
        """The `sdf` activation's logistic width at the current step (the schedule's last value when evaluating)."""
        return scheduled(self.cfg.sdf_width, sys.maxsize if self._step is None else self._step)

    @property
    def spacing(self) -> float:
        """Distance between neighbouring nodes of the finest volume."""
        return 2 * self.bound / (self.resolution - 1)

    def _node_channel(self) -> Tensor:
        """The trainable part of the pre-activation density on the finest volume's nodes [1, 1, R, R, R]: the density
        channel of the grid(s), or with an MLP the decoder's density output at each node (the nodes' features are
        the levels' trilinear lookups there, which is what `_raw` upsamples to)."""
        raw = self._raw()
        if self.mlp is None:
            return raw[:, :1]
        return self.mlp(raw[0].permute(1, 2, 3, 0))[None, None, ..., 0]

    def _node_distance(self) -> Tensor:
        """The pre-activation density z on the finest volume's nodes [R, R, R] (a distance for an `sdf` field)."""
        return self._pre_density(self._node_channel())[0, 0]

    def _pre_density(self, channel: Tensor) -> Tensor:
        """The pre-activation density volume from the grid's density channel [1, 1, R, R, R]: scaled, plus the blob
        and the shift."""
        return self.cfg.density_scale * channel + self.blob_grid + self.cfg.density_shift

    def _activate(self, raw: Tensor) -> Tensor:
        if self.cfg.density_activation == "exp":
            return torch.exp(raw.clamp(max=15.0))
        if self.cfg.density_activation == "sigmoid":
            return self.cfg.density_max * torch.sigmoid(raw)
        if self.cfg.density_activation == "sdf":
            return self.cfg.density_max * torch.sigmoid(raw / self.sdf_width())
        return F.softplus(raw)

    def _sample(self, volume: Tensor, pts: Tensor) -> Tensor:
        """Trilinear lookup of volume [1, C, R, R, R] at pts [..., 3] → [..., C]; zero outside the cube."""
        if self.cfg.lookup == "gather":
            return trilinear_gather(volume, pts / self.bound)
        shape = pts.shape[:-1]
        g = (pts / self.bound).reshape(1, -1, 1, 1, 3)
        out = F.grid_sample(volume, g, mode="bilinear", padding_mode="zeros", align_corners=True)
        return out.reshape(volume.shape[1], -1).T.reshape(*shape, volume.shape[1])

    def _volume(self, with_grad: bool) -> Tensor:
        """[1, 4 (+3), R, R, R]: activated density, albedo logits (and ∇σ by central differences on the grid)."""
        raw = self._raw()
        density = self._activate(self._pre_density(raw[:, :1]))
        parts = [density, raw[:, 1:4]]
        if with_grad:
            dz, dy, dx = torch.gradient(density[0, 0], spacing=self.spacing)
            parts.append(torch.stack([dx, dy, dz])[None])
        return torch.cat(parts, dim=1)

    def total_variation(self) -> Tensor:
        """Mean squared difference of neighbouring pre-activation densities (the trainable part, `_node_channel`) of
        the finest volume (a smoothness prior on the density; the albedo is left free)."""
        d = self._node_channel()[0, 0]
        return (
            ((d[1:] - d[:-1]) ** 2).mean()
            + ((d[:, 1:] - d[:, :-1]) ** 2).mean()
            + ((d[:, :, 1:] - d[:, :, :-1]) ** 2).mean()
        )

    def eikonal(self) -> Tensor:
        """mean((‖∇z‖ − 1)²) over the finest volume's nodes, z the pre-activation density with the blob and shift."""
        dz, dy, dx = torch.gradient(self._node_distance(), spacing=self.spacing)
        return ((torch.sqrt(dx**2 + dy**2 + dz**2 + 1e-12) - 1.0) ** 2).mean()

    def curvature(self, band: float) -> Tensor:
        """mean((Δz)²) over the finest volume's inner nodes with |z| < band (near the surface), Δ the 7-point
        Laplacian: for a signed distance twice the mean curvature, so this smooths crumpled surfaces (Neuralangelo's
        curvature term, squared) and leaves flat faces and the field far from the surface alone."""
        z, h = self._node_distance(), self.spacing
        c = z[1:-1, 1:-1, 1:-1]
        lap = (
            z[2:, 1:-1, 1:-1] + z[:-2, 1:-1, 1:-1] + z[1:-1, 2:, 1:-1] + z[1:-1, :-2, 1:-1] + z[1:-1, 1:-1, 2:]
            + z[1:-1, 1:-1, :-2] - 6 * c
        ) / h**2  # fmt: skip
        near = c.detach().abs() < band
        return (lap[near] ** 2).mean() if near.any() else lap.sum() * 0.0

    def density_albedo(self, pts: Tensor) -> tuple[Tensor, Tensor]:
        if self.mlp is None:
            out = self._sample(self._volume(False), pts)
            return out[..., 0], torch.sigmoid(out[..., 1:4])
        out = self.mlp(self._features(pts))
        prior = blob(pts, self.cfg.blob, self.cfg.blob_density, self.cfg.blob_radius, self.cfg.blob_cap)
        density = self._activate(self.cfg.density_scale * out[..., 0] + prior + self.cfg.density_shift)
        return density, torch.sigmoid(out[..., 1:4])

    def query(self, pts: Tensor, normal_eps: float, with_grad: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        if with_grad and self.cfg.normals == "analytic":
            return self.query_analytic(pts)
        if self.mlp is not None or not with_grad:
            return super().query(pts, normal_eps, with_grad)
        out = self._sample(self._volume(True), pts)
        return out[..., 0], torch.sigmoid(out[..., 1:4]), out[..., 4:7]


class PyramidField(GridField):
    """Dense grids at several resolutions, summed, so coarse levels shape the object and fine ones add detail: with
    an MLP decoder, one trilinear lookup per level at the sample points; without one, the levels are upsampled to the
    finest and summed into one volume (whose central differences give the normals). Levels above the coarsest fade
    in one after another over `unlock_steps` (coarse-to-fine): early SDS steps can only move low frequencies, which
    keeps the first shape compact instead of a cloud of high-frequency fog."""

    def _make_grids(self, cfg: FieldConfig) -> int:
        self.levels = nn.ParameterList(nn.Parameter(torch.zeros(1, cfg.features, r, r, r)) for r in cfg.levels)
        return cfg.levels[-1]

    def level_weights(self) -> list[float]:
        """Fade-in weight of each level at the current step (1 for the coarsest; all 1 when no step is set)."""
        n = len(self.levels)
        if self._step is None or n == 1:
            return [1.0] * n
        start, end = self.cfg.unlock_steps
        span = (end - start) / (n - 1)
        out = [1.0]
        for level in range(1, n):
            begin = start + (level - 1) * span
            out.append(1.0 if span <= 0 else min(max((self._step - begin) / span, 0.0), 1.0))
        return out

    def _features(self, pts: Tensor) -> Tensor:
        """MLP input at pts [..., 3]: one trilinear lookup per unlocked level, weighted and summed → [..., C]."""
        out = None
        for grid, weight in zip(self.levels, self.level_weights(), strict=True):
            if weight > 0.0:
                f = self._sample(grid, pts) * weight
                out = f if out is None else out + f
        return out

    def _raw(self) -> Tensor:
        size = (self.resolution,) * 3
        total = None
        for grid, weight in zip(self.levels, self.level_weights(), strict=True):
            if weight == 0.0:
                continue
            up = (
                grid
                if grid.shape[-1] == self.resolution
                else F.interpolate(grid, size, mode="trilinear", align_corners=True)
            )
            total = up * weight if total is None else total + up * weight
        return total


def build_field(cfg: FieldConfig) -> GridField:
    """The trainable field named by `nerf.kind`."""
    return PyramidField(cfg) if cfg.kind == "pyramid" else GridField(cfg)
