"""The closed-form world prior: the exact denoiser of the world's own (finite) image distribution.

For the bank images x_i with caption y (and view suffix v, when the prompt has one):

    E[x_0 | z_t, y] = Σ_i w_i x_i,   w = softmax_i(−‖z_t − α_t x_i‖² / 2σ_t²),   ε̂ = (z_t − α_t E[x_0 | z_t, y]) / σ_t

and the unconditional ε̂ uses every image of the bank. No training, exact at every t, deterministic.

With `world.background: any` the images come over an unknown solid background colour b (Gaussian per channel, mean
grey, a uniform colour's variance s²): x_i(b) = g_i + u_i b with u_i = 1 − opacity_i. b is integrated out per
channel in closed form (a rank-one Gaussian), so the weights gain α²s²(u_iᵀr_i)² / 2σ²(σ² + α²s²‖u_i‖²) −
½ log(1 + α²s²‖u_i‖²/σ²) with r_i = z_t − α g_i, and each image's background is its posterior mean
b̂_i = α s² u_iᵀr_i / (σ² + α²s²‖u_i‖²) (α = √ᾱ_t, σ² = 1 − ᾱ_t). The bank is
regenerated from its seed (`python -m pipeline.world.prior --out bank.safetensors`, a Snakemake rule) and stored as
8-bit images: that is the world's image distribution.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from pipeline.config import Config
from pipeline.config import load as load_config
from pipeline.guidance.base import Guidance, GuidanceLoadError
from pipeline.io import atomic_write
from pipeline.prompts import normalize
from pipeline.world.bank_id import BANK_MODES, bank_digest, bank_settings  # noqa: F401  (re-exported)
from pipeline.world.scenes import (
    CAPTIONS,
    COLOURS,
    SHAPES,
    VIEWS,
    caption,
    colourise,
    parse_caption,
    render_shape,
    view_index,
)


def linear_alphas_cumprod(T: int = 1000) -> Tensor:
    """DDPM's linear β schedule (1e-4 … 0.02): the world prior's ᾱ_t."""
    return torch.cumprod(1 - torch.linspace(1e-4, 2e-2, T, dtype=torch.float64), 0).float()


def generate_bank(cfg: Config, seed: int | None = None) -> dict[str, Tensor]:
    """Render the world: images uint8 [N, 3, H, W] over render.background_color, their opacity uint8 [N, H, W],
    caption index, view index and mode index per image, and the background colour float [3]."""
    g = torch.Generator().manual_seed(cfg.world.seed if seed is None else seed)
    modes = cfg.world.bank_modes
    per_shape = max(1, round(cfg.world.images_per_caption / len(modes)))
    images, opacity, cap_idx, view_idx, mode_idx = [], [], [], [], []
    for shape in tqdm(SHAPES, desc="world bank", leave=False):
        r = render_shape(cfg, shape, per_shape, g)
        views = view_index(r.cams)
        for colour, rgb in COLOURS.items():
            for m, mode in enumerate(modes):
                img = colourise(r, rgb, mode, cfg.render.background_color)
                images.append((img * 255).round().to(torch.uint8))
                opacity.append((r.opacity[:, 0] * 255).round().to(torch.uint8))
                cap_idx.append(torch.full((per_shape,), CAPTIONS.index(caption(colour, shape))))
                view_idx.append(views)
                mode_idx.append(torch.full((per_shape,), m))
    return {
        "images": torch.cat(images),
        "opacity": torch.cat(opacity),
        "background": torch.tensor(cfg.render.background_color, dtype=torch.float32),
        "caption": torch.cat(cap_idx),
        "view": torch.cat(view_idx),
        "mode": torch.cat(mode_idx),
    }


def bank_checksum(bank: dict[str, Tensor]) -> str:
    """sha256 of the bank's tensors (images, captions, views, modes): a file edited or corrupted after it was built
    (e.g. inverted images under the right settings) no longer matches the checksum it was saved with."""
    h = hashlib.sha256()
    for key in sorted(bank):
        h.update(key.encode())
        h.update(bank[key].contiguous().numpy().tobytes())
    return h.hexdigest()


def save_bank(bank: dict[str, Tensor], path: str | Path, cfg: Config) -> None:
    meta = {
        "settings": json.dumps(bank_settings(cfg), sort_keys=True),
        "captions": json.dumps(CAPTIONS),
        "sha256": bank_checksum(bank),
    }
    atomic_write(path, lambda p: save_file({k: v.contiguous() for k, v in bank.items()}, str(p), metadata=meta))


def load_bank(path: str | Path, cfg: Config) -> dict[str, Tensor]:
    path = Path(path)
    if not path.is_file():
        raise GuidanceLoadError(
            f"{path}: world bank not found; build it with `snakemake world_bank` or "
            f"`python -m pipeline.world.prior --params <params.yaml> --out {path}`"
        )
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        bank = load_file(str(path))
    except Exception as exc:
        raise GuidanceLoadError(f"{path}: unreadable world bank ({exc}); delete it and rebuild") from None
    if meta.get("settings") != json.dumps(bank_settings(cfg), sort_keys=True):
        raise GuidanceLoadError(f"{path}: world bank was built with other settings than this config; rebuild it")
    if meta.get("sha256") != bank_checksum(bank):
        raise GuidanceLoadError(
            f"{path}: world bank content does not match the checksum it was built with (edited or corrupted since, or "
            "built by an older version); delete it and rebuild (`snakemake world_bank`)"
        )
    return bank


BACKGROUND_VAR = 1.0 / 3.0
"""Variance of the background colour latent in [−1, 1] units: that of a colour uniform in [0, 1] (stable-dreamfusion's
random background), so `any` explains the colours training draws."""


class ClosedFormWorldPrior(Guidance):
    """Exact denoiser of the bank, conditioned on (caption, view suffix); embeddings are [caption, view] indices
    (−1 = any), "" is the unconditional embedding. `background="any"` integrates out a solid background colour
    (module docstring)."""

    kind = "pixel"

    def __init__(self, bank: dict[str, Tensor], device: torch.device, background: str = "fixed") -> None:
        super().__init__()
        self.device, self.dtype = device, torch.float32
        self.alphas_cumprod = linear_alphas_cumprod().to(device)
        images = bank["images"].to(device)
        n, c, h, w = images.shape
        self.resolution = int(w)
        self.x = images.flatten(1).float() / 127.5 - 1.0  # [N, D] in [−1, 1]
        self.any_background = background == "any"
        if self.any_background:
            if "opacity" not in bank:
                raise GuidanceLoadError("world bank has no opacity (built by an older version); delete it and rebuild")
            self.u = 1.0 - bank["opacity"].to(device).flatten(1).float() / 255.0  # [N, P]: background's share
            bg = bank["background"].to(device).float() * 2 - 1
            g = self.x.view(n, c, h * w) - self.u[:, None] * bg[None, :, None]  # the object alone: x_i(b) = g_i + u_i b
            self.x = g.flatten(1)
            self.ut = self.u.T.contiguous()
            self.u_sq = (self.u**2).sum(1)  # [N]
            self.ug = torch.einsum("np,ncp->nc", self.u, g)  # [N, C]: u_iᵀ g_ic
        self.xt = self.x.T.contiguous()  # [D, N]: w @ X as X^T w^T reads memory in order (2-3x faster on CPU)
        self.x_sq = (self.x**2).sum(1)
        self.caption = bank["caption"].to(device)
        self.view = bank["view"].to(device)

    @classmethod
    def from_config(
        cls, cfg: Config, device: torch.device, bank_path: str | Path | None = None
    ) -> ClosedFormWorldPrior:
        bank = load_bank(bank_path, cfg) if bank_path else generate_bank(cfg)
        return cls(bank, device, cfg.world.background)

    def _encode_text(self, texts: list[str]) -> Tensor:
        out = []
        for text in texts:
            if not text:
                out.append((-1, -1))
                continue
            base, _, suffix = text.partition(", ")
            base = normalize(base)
            try:
                parse_caption(base)
            except ValueError:
                raise ValueError(
                    f"the world prior knows only the {len(CAPTIONS)} captions of prompts/primitives.txt; got {text!r}"
                ) from None
            if suffix and suffix not in VIEWS:
                raise ValueError(f"unknown view suffix {suffix!r} in {text!r}; one of {VIEWS}")
            out.append((CAPTIONS.index(base), VIEWS.index(suffix) if suffix else -1))
        return torch.tensor(out, dtype=torch.long, device=self.device)

    def encode(self, images: Tensor) -> Tensor:
        """Renders [B, 3, H, W] in [0, 1] → [−1, 1] at the bank's size. A render of another size is resampled to it
        (an area average when shrinking: a 64×64 render to a 32×32 bank is its exact 2×2 mean; bilinear when
        enlarging), as Stable Diffusion's guidance resizes renders to its VAE's input: the prior works at its own
        resolution and SDS reaches every render pixel through the resampling."""
        x, size = images.float(), (self.resolution, self.resolution)
        if x.shape[-2:] != size:
            shrink = x.shape[-1] > self.resolution
            x = F.interpolate(x, size, mode="area") if shrink else F.interpolate(x, size, mode="bilinear")
        return x * 2 - 1

    def _mask(self, emb: Tensor) -> Tensor:
        """[B, N] bool: bank entries matching each embedding (caption −1 = all; view −1 = any view). A (caption, view)
        pair without images in the bank falls back to all views of the caption."""
        cap, view = emb[:, :1], emb[:, 1:]
        by_caption = (cap < 0) | (self.caption[None] == cap)
        mask = by_caption & ((view < 0) | (self.view[None] == view))
        return torch.where(mask.any(1, keepdim=True), mask, by_caption)

    def _logits(self, z_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor | None]:
        """log p(z_t | x_i) up to a constant for every bank image [B, N] (one matmul, shared by cond and uncond) and,
        with `any` background, each image's posterior background colour b̂_i [B, C, N]."""
        b = z_t.shape[0]
        ab = self.alphas_cumprod[t].view(b, 1)
        var = 1 - ab
        z = z_t.reshape(b, -1)
        dist = (z**2).sum(1, keepdim=True) - 2 * ab.sqrt() * (self.x @ z.T).T + ab * self.x_sq[None]
        logits = -dist / (2 * var)
        if not self.any_background:
            return logits, None
        c = z_t.shape[1]
        uz = (z.view(b * c, -1) @ self.ut).view(b, c, -1)  # [B, C, N]: u_iᵀ z_c
        proj = uz - ab.sqrt()[:, :, None] * self.ug.T[None]  # u_iᵀ r_ic
        k = ab * BACKGROUND_VAR  # α² s²
        denom = var + k * self.u_sq[None]  # [B, N]
        logits = logits + k * (proj**2).sum(1) / (2 * var * denom) - 0.5 * c * torch.log(denom / var)
        return logits, ab.sqrt()[:, :, None] * BACKGROUND_VAR * proj / denom[:, None]

    def _mean(self, logits: Tensor, emb: Tensor, bg: Tensor | None = None) -> Tensor:
        """Σ_i softmax(logits)_i x_i over each row's subset [B, D] (plus u_i b̂_i with `any` background). Rows over
        the whole bank share one matmul (one pass over the bank's memory); conditional rows only read their
        caption's images."""
        mask = self._mask(emb)
        full = mask.all(1)
        out = torch.empty(logits.shape[0], self.x.shape[1], device=logits.device)
        if full.any():
            w = torch.softmax(logits[full], 1)
            out[full] = (self.xt @ w.T).T
            if bg is not None:
                wb = (w[:, None] * bg[full]).flatten(0, 1)  # [R·C, N]
                out[full] += (self.ut @ wb.T).T.reshape(w.shape[0], -1)
        for r in (~full).nonzero().squeeze(1).tolist():
            idx = mask[r].nonzero().squeeze(1)
            w = torch.softmax(logits[r, idx], 0)
            out[r] = w @ self.x[idx]
            if bg is not None:
                out[r] += ((w * bg[r][:, idx]) @ self.u[idx]).flatten()
        return out

    def posterior_mean(self, z_t: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        """E[x_0 | z_t, y] [B, C, H, W] under the bank restricted to each embedding's images."""
        logits, bg = self._logits(z_t, t)
        return self._mean(logits, emb, bg).view_as(z_t)

    @torch.no_grad()
    def predict_noise(self, z_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor) -> tuple[Tensor, Tensor]:
        t = t.to(self.device)
        logits, bg = self._logits(z_t, t)
        ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        eps = [(z_t - ab.sqrt() * self._mean(logits, e, bg).view_as(z_t)) / (1 - ab).sqrt() for e in (cond, uncond)]
        return eps[0], eps[1]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Render the world's image bank (the closed-form prior's data).")
    ap.add_argument("--params", required=True, help="resolved params (YAML)")
    ap.add_argument("--out", required=True, help="bank .safetensors to write")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = load_config(args.params)
    bank = generate_bank(cfg)
    save_bank(bank, args.out, cfg)
    print(f"{args.out}: {bank['images'].shape[0]} images of {len(CAPTIONS)} captions")


if __name__ == "__main__":
    main()
