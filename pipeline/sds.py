"""Score Distillation Sampling: the gradient, classifier-free guidance, weightings and timestep schedules.

SDS (DreamFusion, Poole et al. 2022, Eq. 3): with x = g(θ), z_t = α_t x + σ_t ε, ε ~ N(0, I),

    ∇θ L_SDS = E_t,ε[ w(t) (ε̂(z_t; y, t) − ε) ∂x/∂θ ]

where the U-Net Jacobian ∂ε̂/∂z_t is dropped. We apply it through a surrogate with a stop-gradient target,

    L = ½ Σ ‖x − sg(x − g)‖²,  g = w(t)(ε̂ − ε)   ⇒   ∂L/∂x = g exactly,

so autograd carries g back through the renderer (and the VAE encoder for latent models) and nothing reaches the
denoiser. Timesteps are integer indices into the guidance model's ᾱ table of length T; bounds t_min/t_max are
fractions of T.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.config import GuidanceConfig, ScheduleConfig, scheduled
from pipeline.guidance.base import Guidance
from pipeline.guidance.prompting import perp_neg_combine
from pipeline.registry import Registry

WEIGHTINGS: Registry[Callable[[Tensor], Tensor]] = Registry("weighting")
"""guidance.weighting: w(t) as a function of ᾱ_t."""
SCHEDULES: Registry[Callable[[TimestepSchedule, int, int, torch.Generator | None], Tensor]] = Registry(
    "timestep schedule"
)
"""schedule.name: integer timesteps [batch] for a training step, from the schedule's config and bounds."""


def cfg_combine(eps_c: Tensor, eps_u: Tensor, scale: float, convention: str) -> Tensor:
    """Classifier-free guidance. dreamfusion: ε_c + ω(ε_c − ε_u); diffusers: ε_u + s(ε_c − ε_u)."""
    if convention == "dreamfusion":
        return eps_c + scale * (eps_c - eps_u)
    if convention == "diffusers":
        return eps_u + scale * (eps_c - eps_u)
    raise ValueError(f"unknown CFG convention {convention!r}; use 'dreamfusion' or 'diffusers'")


@WEIGHTINGS.register("sds")
def _sds_weight(alpha_bar: Tensor) -> Tensor:
    """σ_t² = 1 − ᾱ_t (the paper's)."""
    return 1.0 - alpha_bar


@WEIGHTINGS.register("uniform")
def _uniform_weight(alpha_bar: Tensor) -> Tensor:
    return torch.ones_like(alpha_bar)


@WEIGHTINGS.register("fantasia3d")
def _fantasia3d_weight(alpha_bar: Tensor) -> Tensor:
    """√ᾱ_t (1 − ᾱ_t)."""
    return alpha_bar.sqrt() * (1.0 - alpha_bar)


def weighting(name: str, alpha_bar: Tensor) -> Tensor:
    """w(t) from ᾱ_t by the registered weighting `name`: sds = 1 − ᾱ_t (= σ_t²), uniform = 1, fantasia3d =
    √ᾱ_t (1 − ᾱ_t)."""
    return WEIGHTINGS.get(name)(alpha_bar)


class TimestepSchedule:
    """Timestep indices t ∈ [0, T) per training step, for one named schedule.

    * uniform:   t ~ U{⌊T·t_min⌋ … ⌊T·t_max⌋}
    * anneal:    the same with t_min / t_max given as [start_step, start, end, end_step] schedules
    * step:      uniform, and from `switch_step` on the upper bound is `t_max_after` (ProlificDreamer)
    * hifa:      deterministic t(p) = t_min + (t_max − t_min)(1 − √p), p = step / (N − 1)
    * dreamtime: deterministic t(p) = argmin_t |Σ_{t' ≥ t} π(t') − p| with the time prior
                 π(t) ∝ W_d(t)·W_p(t) on [lo, hi]; W_p flat on [m2, m1] with Gaussian tails (width s1 above m1,
                 s2 below m2; m and s in units of T/1000); W_d per `dreamtime_weight` (default 1 − ᾱ_t: bounded,
                 so the flat part of W_p dominates; √((1 − ᾱ_t)/ᾱ_t) grows without bound near T).
    Deterministic schedules give the same t to every view of a step and are non-increasing in the step.
    """

    def __init__(self, cfg: ScheduleConfig, alphas_cumprod: Tensor, total_steps: int) -> None:
        self.cfg = cfg
        self.T = int(alphas_cumprod.shape[0])
        self.total_steps = total_steps
        if cfg.name == "dreamtime":
            self._dreamtime_table = self._dreamtime(alphas_cumprod.double().cpu())

    def bounds(self, step: int) -> tuple[int, int]:
        """Inclusive integer bounds (lo, hi) of t at `step`."""
        c = self.cfg
        t_min, t_max = scheduled(c.t_min, step), scheduled(c.t_max, step)
        if c.name == "step" and step >= c.switch_step:
            t_max = c.t_max_after
        lo = min(max(int(self.T * t_min), 0), self.T - 1)
        hi = min(max(int(self.T * t_max), lo), self.T - 1)
        return lo, hi

    def progress(self, step: int) -> float:
        return min(max(step / max(self.total_steps - 1, 1), 0.0), 1.0)

    def __call__(self, step: int, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """Integer timesteps [batch] (int64, CPU) for training step `step`, by the registered schedule."""
        return SCHEDULES.get(self.cfg.name)(self, step, batch, generator)

    def constant(self, t: int, step: int, batch: int) -> Tensor:
        """The same t for every view of the step, clamped to the step's bounds."""
        lo, hi = self.bounds(step)
        return torch.full((batch,), min(max(t, lo), hi), dtype=torch.long)

    def _dreamtime(self, alphas_cumprod: Tensor, resolution: int = 2001) -> Tensor:
        """t for p on a grid of `resolution` points in [0, 1], from the normalised time prior."""
        c, T = self.cfg, self.T
        scale = T / 1000.0
        ts = torch.arange(T, dtype=torch.float64)
        m1, m2, s1, s2 = c.dreamtime_m1 * scale, c.dreamtime_m2 * scale, c.dreamtime_s1 * scale, c.dreamtime_s2 * scale
        w_p = torch.where(
            ts > m1,
            torch.exp(-((ts - m1) ** 2) / (2 * s1**2)),
            torch.where(ts < m2, torch.exp(-((ts - m2) ** 2) / (2 * s2**2)), torch.ones_like(ts)),
        )
        w_d = {
            "sds": 1 - alphas_cumprod,
            "snr-sqrt": ((1 - alphas_cumprod) / alphas_cumprod).sqrt(),
            "none": torch.ones_like(alphas_cumprod),
        }[c.dreamtime_weight]
        lo, hi = self.bounds(0)
        prior = w_p * w_d
        prior[:lo] = 0
        prior[hi + 1 :] = 0
        prior = prior / prior.sum()
        tail = prior.flip(0).cumsum(0).flip(0)  # tail[t] = Σ_{t' >= t} π(t')
        ps = torch.linspace(0, 1, resolution, dtype=torch.float64)
        return (tail[None, :] - ps[:, None]).abs().argmin(dim=1)


@SCHEDULES.register("uniform")
@SCHEDULES.register("anneal")
@SCHEDULES.register("step")
def _uniform_t(schedule: TimestepSchedule, step: int, batch: int, generator: torch.Generator | None) -> Tensor:
    """t ~ U{lo … hi} at the step's bounds (anneal and step move the bounds, see TimestepSchedule.bounds)."""
    lo, hi = schedule.bounds(step)
    return torch.randint(lo, hi + 1, (batch,), generator=generator)


@SCHEDULES.register("hifa")
def _hifa_t(schedule: TimestepSchedule, step: int, batch: int, generator: torch.Generator | None) -> Tensor:
    """t(p) = t_min + (t_max − t_min)(1 − √p), the same for every view."""
    t_min, t_max = float(schedule.cfg.t_min), float(schedule.cfg.t_max)
    frac = t_min + (t_max - t_min) * (1.0 - math.sqrt(schedule.progress(step)))
    return schedule.constant(round(frac * schedule.T), step, batch)


@SCHEDULES.register("dreamtime")
def _dreamtime_t(schedule: TimestepSchedule, step: int, batch: int, generator: torch.Generator | None) -> Tensor:
    """DreamTime's t(p) from the precomputed table of its time prior."""
    table = schedule._dreamtime_table
    return schedule.constant(int(table[round(schedule.progress(step) * (len(table) - 1))]), step, batch)


@dataclass
class SDSOutput:
    loss: Tensor
    """Surrogate loss; its gradient w.r.t. x is w(t)(ε̂ − ε) (summed over the batch)."""
    grad: Tensor
    """The SDS gradient w(t)(ε̂ − ε) [B, C, h, w] (after optional clipping)."""
    t: Tensor
    """Timesteps used [B]."""
    w: Tensor
    """Weights w(t) [B]."""
    score_norm: Tensor
    """‖ε̂ − ε‖ per sample [B], before clipping."""
    nonfinite: Tensor
    """How many gradient elements of each sample were NaN/Inf and zeroed [B]."""


def sds_from_x(
    guidance: Guidance,
    x: Tensor,
    cond: Tensor,
    uncond: Tensor,
    t: Tensor,
    noise: Tensor,
    cfg: GuidanceConfig,
    step: int = 0,
    negatives: Tensor | None = None,
    neg_weights: Tensor | None = None,
) -> SDSOutput:
    """SDS on x [B, C, h, w] (already in the guidance model's space) at timesteps t [B] with noise ε [B, C, h, w].
    With Perp-Neg `negatives` [B, K, ...] and `neg_weights` [B, K] (pipeline/guidance/prompting.py), ε̂ is Perp-Neg's
    combination at the same guidance weight."""
    t = t.to(x.device)
    ab = guidance.alphas_cumprod.to(x.device)[t].float()
    a, s = ab.sqrt().view(-1, 1, 1, 1), (1 - ab).sqrt().view(-1, 1, 1, 1)
    with torch.no_grad():
        z_t = a * x.detach() + s * noise
        if negatives is None:
            eps_c, eps_u = guidance.predict_noise(z_t, t, cond, uncond)
            eps_hat = cfg_combine(eps_c.float(), eps_u.float(), cfg.scale, cfg.convention)
        else:
            eps_c, eps_u, eps_neg = guidance.predict_noise_negatives(z_t, t, cond, uncond, negatives)
            s_diffusers = cfg.scale + 1.0 if cfg.convention == "dreamfusion" else cfg.scale
            eps_hat = perp_neg_combine(eps_u, eps_c, eps_neg, neg_weights.to(x.device), s_diffusers)
        score = eps_hat - noise
        score_norm = score.flatten(1).norm(dim=1)
        clip = scheduled(cfg.score_clip, step)
        if clip > 0:
            score = score.clamp(-clip, clip)
        w = weighting(cfg.weighting, ab)
        grad = w.view(-1, 1, 1, 1) * score
        # one NaN pixel (e.g. an fp16 overflow in the U-Net) would make the whole step NaN: zero it and count it,
        # as both peers do (threestudio, stable-dreamfusion: nan_to_num on the SDS gradient)
        nonfinite = (~torch.isfinite(grad)).flatten(1).sum(1)
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
    target = (x - grad).detach()
    loss = 0.5 * ((x - target) ** 2).sum()
    return SDSOutput(loss=loss, grad=grad, t=t, w=w, score_norm=score_norm, nonfinite=nonfinite)


def sds(
    guidance: Guidance,
    images: Tensor,
    cond: Tensor,
    uncond: Tensor,
    t: Tensor,
    cfg: GuidanceConfig,
    step: int = 0,
    generator: torch.Generator | None = None,
    negatives: Tensor | None = None,
    neg_weights: Tensor | None = None,
) -> SDSOutput:
    """SDS for renders [B, 3, H, W] in [0, 1]: encode (pixels or VAE latent), draw ε, apply :func:`sds_from_x`."""
    x = guidance.encode(images)
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device)
    return sds_from_x(guidance, x, cond, uncond, t, noise, cfg, step, negatives, neg_weights)
