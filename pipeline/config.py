"""Typed experiment configuration: params.yaml → dataclasses, validation, sweep expansion.

`params.yaml` is the single source of truth. Snakemake reads it as its config and calls :func:`load` on it before
any job starts; every `python -m pipeline.*` stage reads the resolved per-variant config through the same code.
Every field is documented where it is declared. Anything that changes over training uses one notation,
``[start_step, start_value, end_value, end_step]`` (see :func:`scheduled`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml

from pipeline import yamlio

Scheduled = Union[float, list[float]]
"""A number, or ``[start_step, start_value, end_value, end_step]`` interpolated linearly between the steps."""


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""Names that reach a path or a shell command (benchmark, variant)."""


class ConfigError(ValueError):
    """A params.yaml problem; the message names the file, the key and the fix."""


def scheduled(value: Scheduled, step: int) -> float:
    """Evaluate a :data:`Scheduled` value at ``step`` (linear between start_step and end_step, clamped outside)."""
    if isinstance(value, (int, float)):
        return float(value)
    start_step, v0, v1, end_step = value
    if end_step <= start_step:
        return float(v1 if step >= end_step else v0)
    frac = min(max((step - start_step) / (end_step - start_step), 0.0), 1.0)
    return float(v0 + (v1 - v0) * frac)


MAX_STEPS = 1_000_000
"""Upper bound of every step count: 100x the paper's 10k steps (≈ 28 h an object at 10 steps/s)."""
MAX_VARIANTS = 256
"""Variants one run may expand to (a sweep's grid)."""
MAX_PIXELS = 1024
"""Upper bound of a render's side: SD renders 512x512 at most; 1024² rays x 1024 samples is ≈ 4 GB a view in fp32."""
MAX_SAMPLES = 1024
"""Upper bound of samples per ray (the paper takes 256 at most)."""
JOB_KEYS = ("train.objects_per_job",)
"""Keys that say how jobs are formed, not what they compute: not in a variant's resolved config or digest."""


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> dict[str, Any]:
    return {"min": lo, "max": hi, "lo_open": lo_open}


@dataclass
class PromptsConfig:
    benchmark: str = "primitives"
    """Prompt set: the file prompts/<benchmark>.txt, one caption a line. Its captions are also the retrieval set."""
    select: list[str] = field(default_factory=list)
    """Captions (normalised or raw) to train; empty trains every caption. The retrieval set stays the whole file."""
    max_tokens: int = field(default=77, metadata=_range(1, 512))
    """Text-encoder context length; longer prompts get a warning (they are truncated by the encoder)."""


@dataclass
class GuidanceConfig:
    name: Literal["world", "world-unet", "stable-diffusion", "deepfloyd-if"] = "world"
    """The 2D prior: the bundled closed-form world prior, the bundled learned UNet, Stable Diffusion, DeepFloyd IF."""
    model: str = ""
    """Hub name or local diffusers directory; empty picks the default for `name`."""
    convention: Literal["dreamfusion", "diffusers"] = "dreamfusion"
    """CFG form: dreamfusion ε̂ = ε_c + ω(ε_c − ε_u); diffusers ε̂ = ε_u + s(ε_c − ε_u) (s = ω + 1)."""
    scale: float = field(default=10.0, metadata=_range(0.0, 1000.0))
    """Guidance weight: ω under the dreamfusion convention, s under the diffusers one."""
    weighting: Literal["sds", "uniform", "fantasia3d"] = "sds"
    """w(t): sds = σ_t² = 1 − ᾱ_t (paper), uniform = 1, fantasia3d = √ᾱ_t (1 − ᾱ_t)."""
    score_clip: Scheduled = 0.0
    """Debiased SDS: clamp (ε̂ − ε) elementwise to ±threshold (0 = off); a schedule makes it grow linearly."""
    view_suffix: bool = True
    """Append the view-dependent suffix (", front view", ...) to the prompt, as in the paper."""
    negative_prompt: str = ""
    """Unconditional text of CFG, which ε̂ steers away from (threestudio `negative_prompt`, stable-dreamfusion
    `--negative`); empty = the usual "". With the closed-form world prior it must be one of the world's captions."""
    negative_view_prompts: bool = False
    """Janus counter-measure: add the opposite views to each view's negative text (front → "back view", side →
    "front view, back view", back → "front view", overhead → "bottom view"; stable-dreamfusion `--negative_dir_text`).
    Needs a prior with a text encoder (not the closed-form world prior)."""
    perp_neg: bool = False
    """Janus counter-measure: Perp-Neg (Armandpour et al. 2023; threestudio `use_perp_neg`): the positive embedding
    interpolated by azimuth between the front/side/back prompts, the other views as negatives applied perpendicular
    to the positive direction, with threestudio's weight curves (pipeline/guidance/prompting.py). Costs two more
    U-Net passes per view; needs `view_suffix` and a prior with continuous embeddings (not the closed-form world)."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Guidance model dtype; auto = fp16 on a GPU, fp32 on a CPU."""
    latent_resolution: int = field(default=512, metadata=_range(8, 2048))
    """Latent models: renders are resized to this many pixels before the VAE encoder (SD 2.1-base: 512)."""
    compile: Literal["off", "default", "reduce-overhead"] = "off"
    """torch.compile the U-Net of a diffusers prior: default fuses kernels; reduce-overhead also records CUDA graphs
    (CUDA only; the U-Net's shapes are fixed within a run). Measure first: benchmarks/bench_sds_gpu.py."""


@dataclass
class ScheduleConfig:
    name: Literal["uniform", "anneal", "step", "hifa", "dreamtime"] = "uniform"
    """Timestep schedule: uniform U(t_min, t_max); anneal (t_min/t_max scheduled); step; hifa; dreamtime."""
    t_min: Scheduled = 0.02
    """Lower timestep bound as a fraction of the model's T; a schedule list for `anneal`."""
    t_max: Scheduled = 0.98
    """Upper timestep bound as a fraction of the model's T; a schedule list for `anneal`."""
    switch_step: int = field(default=5000, metadata=_range(0, MAX_STEPS))
    """`step` schedule: from this step on, t_max becomes `t_max_after` (ProlificDreamer: 5000)."""
    t_max_after: float = field(default=0.5, metadata=_range(0.0, 1.0))
    """`step` schedule: upper bound after `switch_step`."""
    dreamtime_m1: float = field(default=800.0, metadata=_range(0.0, 1000.0))
    """DreamTime prior: flat between m2 and m1 (timesteps out of 1000) ..."""
    dreamtime_m2: float = field(default=500.0, metadata=_range(0.0, 1000.0))
    """... with Gaussian tails of width s1 above m1 and s2 below m2."""
    dreamtime_s1: float = field(default=300.0, metadata=_range(1.0, 1000.0))
    """DreamTime: tail width above m1."""
    dreamtime_s2: float = field(default=100.0, metadata=_range(1.0, 1000.0))
    """DreamTime: tail width below m2."""
    dreamtime_weight: Literal["sds", "snr-sqrt", "none"] = "sds"
    """DreamTime's diffusion weight term W_d(t): sds = 1 − ᾱ_t, snr-sqrt = √((1 − ᾱ_t)/ᾱ_t), none = 1."""


@dataclass
class CameraConfig:
    distance: list[float] = field(default_factory=lambda: [2.0, 2.5])
    """Camera distance range from the origin (paper: U(1.0, 1.5) in its own units)."""
    elevation: list[float] = field(default_factory=lambda: [-10.0, 90.0])
    """Elevation range in degrees; half the samples uniform in angle, half uniform in area (paper)."""
    focal: list[float] = field(default_factory=lambda: [0.7, 1.35])
    """Focal length as a multiple of the image width (paper: λ ~ U(0.7, 1.35), ≈ 40°–71° field of view)."""
    position_jitter: float = field(default=0.1, metadata=_range(0.0))
    """Camera position jitter U(−j, j)³."""
    look_at_jitter: float = field(default=0.2, metadata=_range(0.0))
    """Look-at point jitter: N(0, j² I) (paper: N(0, 0.2 I) read as std 0.2)."""
    up_jitter: float = field(default=0.02, metadata=_range(0.0))
    """Up-vector noise N(0, j² I)."""
    light_distance: list[float] = field(default_factory=lambda: [0.8, 1.5])
    """Point light: direction ~ N(camera position, light_perturb² I), distance in this range times the camera
    distance."""
    light_perturb: float = field(default=1.0, metadata=_range(0.0))
    """Std of the light direction's noise around the camera's (threestudio's `light_position_perturb`, DreamFusion's
    N(camera, I)); 0 is a light behind the camera (a headlight), the same for every view of the bank and training."""
    eval_elevation: float = 30.0
    """Evaluation views: elevation in degrees (paper: 30°); distance and focal are the midpoints of the ranges."""


@dataclass
class FieldConfig:
    kind: Literal["grid", "pyramid"] = "pyramid"
    """grid: one dense grid of `resolution`³; pyramid: dense grids at the `levels` resolutions, trilinearly upsampled
    to the finest and summed, the fine levels unlocked coarse-to-fine over `unlock_steps` (threestudio's progressive
    band-limited grid, dense)."""
    resolution: int = field(default=32, metadata=_range(4, 512))
    """Dense feature grid resolution per axis over the cube [−bound, bound]³ (kind: grid)."""
    levels: list[int] = field(default_factory=lambda: [16, 32, 64])
    """Pyramid level resolutions, coarse to fine (kind: pyramid)."""
    unlock_steps: list[int] = field(default_factory=lambda: [0, 200])
    """Pyramid: [start, end] steps over which the levels above the coarsest fade in, one after another."""
    density_shift: float = 0.0
    """Pre-activation density offset. 0 with the linear blob (Magic3D), whose negative tail already makes empty space
    transparent; the paper's small gaussian blob needs about −4 (softplus(−4) ≈ 0.018)."""
    features: int = field(default=4, metadata=_range(4, 64))
    """Feature channels per voxel; with `mlp_hidden: 0` it must be 4 (density + RGB albedo read directly)."""
    mlp_hidden: int = field(default=0, metadata=_range(0, 1024))
    """Hidden width of the decoder MLP (0 = no MLP, the grid holds density and albedo logits directly)."""
    bound: float = field(default=1.0, metadata=_range(0.0, lo_open=True))
    """Half side of the cube the field lives in; rays are sampled inside the sphere of radius bound·√3 ∩ cube."""
    density_activation: Literal["exp", "softplus", "sigmoid", "sdf"] = "softplus"
    """Density activation (paper: exp). `sigmoid`: σ = density_max · sigmoid(pre-activation), bounded, so the linear
    blob starts as a sharp-edged ball (σ half of density_max on its sphere, e^−4 of it 4/λ·radius further out) and
    updates concentrate on the surface (soft density is the trap SDS settles into on the world:
    benchmarks/truth_fixed_point.py)."""
    density_max: float = field(default=60.0, metadata=_range(0.0, lo_open=True))
    """σ inside for `density_activation: sigmoid` or `sdf` (the world's primitives are rendered at 60)."""
    sdf_width: Scheduled = field(default_factory=lambda: [0, 0.1, 0.01, 300])
    """`density_activation: sdf`: the pre-activation z is a negative signed distance (positive inside) and
    σ = density_max · sigmoid(z / sdf_width), the logistic density of NeuS (Wang et al. 2021), with a width annealed
    from soft (the whole shape can move) to sharp (a surface, no fog). The world's primitives are rendered with this
    profile at width 0.01. Pair it with `blob: linear` and `blob_density` = `blob_radius` (z = radius − ‖x‖, a
    sphere's exact distance) and `train.eikonal_weight`, which keeps z a distance so the width means what it says.
    Evaluation uses the schedule's last width."""
    blob: Literal["gaussian", "linear", "none"] = "linear"
    """Density blob added at init: gaussian λ·exp(−‖μ‖²/2σ²) (paper) or linear λ·(1 − ‖μ‖/σ) (Magic3D)."""
    blob_density: float = field(default=10.0, metadata=_range(0.0))
    """Blob strength λ_τ (paper 5; Magic3D linear 10)."""
    blob_radius: float = field(default=0.5, metadata=_range(0.0, lo_open=True))
    """Blob width σ_τ (paper 0.2; Magic3D linear 0.5)."""
    blob_cap: float = field(default=0.0, metadata=_range(0.0))
    """Upper bound on the blob's pre-activation density (0 = none). A linear blob steep enough to keep surfaces dense
    (λ 40) is also +40 at the centre, more than a few hundred steps can remove: a torus keeps its hole filled. A cap
    keeps the steep edge and the negative tail and leaves an interior the SDS gradient can carve."""
    density_scale: float = field(default=1.0, metadata=_range(0.0, lo_open=True))
    """The pre-activation density is density_scale × the field's density channel (+ blob + shift). Adam moves every
    value by about the learning rate a step, so this is the density's learning rate relative to the albedo's: an
    `sdf` field needs its distance to move ≈ 0.001 a step (faster steps crumple the surface) while the albedo keeps
    `train.lr`."""
    normals: Literal["finite_difference", "analytic"] = "finite_difference"
    """How ∇σ (normals −∇σ/‖∇σ‖, Lambertian shading, the orientation penalty) is computed. finite_difference: central
    differences `render.normal_eps` apart (6 more field queries a sample with an MLP decoder; a direct grid takes
    them on its nodes in the same lookup). analytic: the exact derivative of σ at the sample by autograd (threestudio's
    DreamFusion `normal_type: analytic`), one query a sample. With an MLP-decoded 16³…128³ pyramid it halves the
    field's step (12.1 → 6.7 s on 2 CPU cores); a direct grid's node differences stay the cheaper (0.118 against
    0.193 s for the default): benchmarks/bench_field_step.py, benchmarks/RESULTS.md."""
    lookup: Literal["grid_sample", "gather"] = "grid_sample"
    """How the grids are read at the sample points (trilinear, zero outside the cube, either way). grid_sample:
    torch's `F.grid_sample`. gather: the same interpolation written as 8 corner gathers and their weights, so autograd
    differentiates it to any order: for `normals: analytic` on a torch whose `grid_sample` lacks the double backward on
    the device (torch 2.11 on CUDA, the lent GPU machines' image; `require_analytic_normals` says so). Same values as
    grid_sample up to float rounding (summation order), so runs of the two are not bit-identical."""


@dataclass
class RenderConfig:
    resolution: int = field(default=32, metadata=_range(8, MAX_PIXELS))
    """Training render size in pixels (paper: 64)."""
    samples: int = field(default=48, metadata=_range(2, MAX_SAMPLES))
    """Stratified samples per ray inside the bounding volume."""
    background: Literal["mlp", "solid", "random"] = "solid"
    """Background: direction MLP (paper), a solid colour, or a random solid colour per view while training."""
    background_color: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    """Solid background colour; evaluation views, previews and turntables always use it, whatever `background`, so
    colour painted into a learned background cannot score."""
    background_freqs: int = field(default=2, metadata=_range(0, 32))
    """Frequencies of the mlp background's direction encoding (low: a smooth sky, not a second scene)."""
    random_background_p: float = field(default=0.0, metadata=_range(0.0, 1.0))
    """Probability that a training view gets a random solid background colour instead of `background`
    (stable-dreamfusion's random background; `background: random` means 1)."""
    normal_eps: float = field(default=0.02, metadata=_range(0.0, lo_open=True))
    """Central finite-difference step for normals −∇σ/‖∇σ‖ (in world units; `nerf.normals: finite_difference`)."""


@dataclass
class ShadingConfig:
    albedo_steps: int = field(default=1000, metadata=_range(0, MAX_STEPS))
    """Albedo-only warm-up (paper: first 1,000 steps)."""
    p_lit: float = field(default=0.75, metadata=_range(0.0, 1.0))
    """After warm-up: probability of a lit render (else albedo)."""
    p_textureless: float = field(default=0.5, metadata=_range(0.0, 1.0))
    """Given lit: probability of textureless shading (albedo = 1)."""
    ambient: float = field(default=0.1, metadata=_range(0.0, 1.0))
    """Lit ambient term (paper 0.1)."""
    diffuse: float = field(default=0.9, metadata=_range(0.0, 1.0))
    """Lit diffuse term (paper 0.9)."""


@dataclass
class TrainConfig:
    steps: int = field(default=400, metadata=_range(1, MAX_STEPS))
    """Optimisation steps (paper: 15,000)."""
    batch_views: int = field(default=4, metadata=_range(1, 64))
    """Views (cameras) per step (paper: 4)."""
    lr: float = field(default=0.05, metadata=_range(0.0, lo_open=True))
    """Peak Adam learning rate."""
    warmup_steps: int = field(default=20, metadata=_range(0, MAX_STEPS))
    """Linear warm-up from lr·1e-3 to lr."""
    final_lr_ratio: float = field(default=0.1, metadata=_range(0.0, 1.0))
    """Cosine decay from lr to lr·ratio by the last step."""
    weight_decay: float = field(default=0.0, metadata=_range(0.0))
    """AdamW weight decay."""
    orientation_weight: Scheduled = field(default_factory=lambda: [0, 1e-4, 1e-2, 5000])
    """Orientation loss weight (Ref-NeRF), annealed in (paper: 1e-4 → 1e-2 over 5k steps)."""
    opacity_weight: Scheduled = 1e-3
    """Opacity penalty weight on sqrt((Σw)² + 0.01), mean over rays (paper: 1e-3…5e-3)."""
    entropy_weight: Scheduled = 0.0
    """Binary-entropy penalty on the accumulated opacity: pushes each ray to fully opaque or empty."""
    z_variance_weight: Scheduled = 0.0
    """Weight of the depth variance along the rays with opacity > 0.5 (HiFA's z-variance loss, as threestudio applies
    it): concentrates each ray's weight in a thin shell, so surfaces become sharp instead of a soft density ramp."""
    tv_weight: Scheduled = 0.0
    """Total variation (mean squared neighbour difference) of the pre-activation density on the finest grid's nodes
    (with an MLP, its density output there)."""
    normal_smooth_weight: Scheduled = 0.0
    """Weight of the rendered normal map's roughness: the mean squared difference of neighbouring pixels of the
    opacity-weighted normals, down and across (stable-dreamfusion's `lambda_2d_normal_smooth`). Against shaded
    renders folding the surface into crumples (measured in docs/recipe.md); needs normals every step."""
    eikonal_weight: Scheduled = 0.0
    """Eikonal term mean((‖∇z‖ − 1)²) over the finest grid's nodes, z the pre-activation with the blob (central
    differences; with an MLP, its density output there): keeps an `sdf` field's z a signed distance."""
    curvature_weight: Scheduled = 0.0
    """Curvature term mean((Δz)²) over the finest grid's nodes within `curvature_band` of the surface (7-point
    Laplacian; twice the mean curvature of a distance): smooths an `sdf` field's crumpled surfaces."""
    curvature_band: float = field(default=0.1, metadata=_range(0.0, lo_open=True))
    """Nodes with |z| below this (world units) enter the curvature term."""
    sds_reduction: Literal["mean", "sum"] = "mean"
    """How the SDS term combines the views of a step: mean (threestudio, stable-dreamfusion), so regulariser
    weights mean the same at any `batch_views`; sum multiplies the SDS term by `batch_views`."""
    background_lr: float = field(default=0.1, metadata=_range(0.0))
    """Learning rate of a learned (mlp) background as a fraction of `lr`."""
    checkpoint_every: int = field(default=100, metadata=_range(1, MAX_STEPS))
    """Write a resumable checkpoint every N steps."""
    preview_every: int = field(default=0, metadata=_range(0, MAX_STEPS))
    """Save a preview render every N steps (0 = every 10 % of training)."""
    guidance_debug_every: int = field(default=0, metadata=_range(0, MAX_STEPS))
    """Every this many steps, previews/guidance-step<N>.png: the render, the noisy input and the prior's one-step
    denoised estimate at a few timesteps (pipeline/guidance_debug.py); 0 = off."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train; auto = cuda when available."""
    objects_per_job: int = field(default=1, metadata=_range(0, 64))
    """(prompt, seed) objects of a variant trained by one job, in one process sharing one batched guidance call per
    step (each keeps its own field, optimiser, random stream, checkpoints and outputs). 0 = auto: with the
    closed-form world prior, whose objects come out the same in any grouping, a variant's objects split evenly
    over Snakemake's --cores (one job a core; the jobs share the prior's pass over its bank: 2.6 object-steps/s a core
    at 4 objects against 1.6 alone); otherwise 1. How jobs are formed, not what they compute: left out of a variant's
    resolved config and digest, so changing it retrains nothing (finished objects are restored from their
    checkpoints). Set once for the whole run, not per variant."""


@dataclass
class RefineConfig:
    """The second, sharp stage (pipeline/refine.py): the first stage's density becomes a signed-distance grid (NeuS's
    logistic density, a surface sharp by construction) trained on by SDS with eikonal and curvature terms, in the
    spirit of Magic3D's and Fantasia3D's second stages. Later stages read its model when it is on."""

    enabled: bool = False
    """Run the second stage after training; mesh, views and geometry then read `<object>/refined/model.safetensors`."""
    steps: int = field(default=200, metadata=_range(1, MAX_STEPS))
    """SDS steps of the second stage."""
    lr: float = field(default=0.001, metadata=_range(0.0, lo_open=True))
    """Peak Adam learning rate: a distance grid's step (each node moves about this much a step; larger steps turn SDS
    noise into crumples on a sharp surface, docs/recipe.md)."""
    sdf_width: Scheduled = field(default_factory=lambda: [0, 0.02, 0.01, 100])
    """The logistic width, annealed from the initial distance's blur towards the world's 0.01."""
    eikonal_weight: Scheduled = 0.1
    """Keeps the grid a distance, so the width means what it says."""
    curvature_weight: Scheduled = 0.01
    """Squared Laplacian of the distance near the surface (flat faces stay flat, crumples are smoothed)."""
    render_resolution: int = field(default=0, metadata=_range(0, MAX_PIXELS))
    """Render side of the second stage (0 = render.resolution)."""
    t_max: float = field(default=0.0, metadata=_range(0.0, 1.0))
    """Upper bound of the second stage's timesteps as a fraction of T (0 = schedule.t_max): the refinement only
    sharpens, so the peers keep t low (threestudio's magic3d-refine-sd: 0.5)."""


@dataclass
class MeshConfig:
    resolution: int = field(default=0, metadata=_range(0, 512))
    """Marching-cubes grid per axis (0 = 256 on a GPU, 128 on a CPU)."""
    threshold: float = field(default=0.0, metadata=_range(0.0))
    """Density iso-level (0 = auto: ln 2 / (bound/4), a slab 1/8 of the box wide is half-opaque)."""
    min_component_fraction: float = field(default=0.05, metadata=_range(0.0, 1.0))
    """Drop connected components with fewer triangles than this fraction of the largest."""
    target_triangles: int = field(default=0, metadata=_range(0, 10_000_000))
    """Quadric decimation budget (0 = off)."""
    smooth_iterations: int = field(default=0, metadata=_range(0, 1000))
    """Taubin smoothing iterations (0 = off)."""
    texture_size: int = field(default=512, metadata=_range(0, 4096))
    """Side of the baked albedo texture of mesh.glb / mesh.obj (xatlas UVs, the field's albedo read at every texel;
    pipeline/texture.py). 0 = no texture: mesh.glb carries vertex colours, and no OBJ is written."""
    texture_bake_depth: float = field(default=0.1, metadata=_range(0.0, 1.0))
    """What a texel holds: the field's albedo composited along the surface normal over ±this distance, as the renders
    composite a soft shell (the default's textured cube agrees with the field's renders at 17.1 dB PSNR this way,
    14.1 dB with the albedo at the iso-surface point); 0 = the albedo at the point."""
    texture_padding: int = field(default=4, metadata=_range(0, 64))
    """Texels the UV charts are grown by (seam padding against bleeding under filtering)."""
    texture_triangles: int = field(default=10_000, metadata=_range(0, 10_000_000))
    """The textured export is decimated to at most this many triangles first (xatlas's unwrap costs ≈ 2 s for 10k
    triangles on a CPU core and grows faster than linearly: ≈ 7 s for 20k); 0 = unwrap the full mesh. mesh.ply keeps
    the full extraction."""


@dataclass
class ViewsConfig:
    azimuths: int = field(default=8, metadata=_range(1, 360))
    """Evaluation azimuths at the evaluation elevation."""
    resolution: int = field(default=64, metadata=_range(8, MAX_PIXELS))
    """Evaluation / turntable render size."""
    turntable_frames: int = field(default=36, metadata=_range(2, 720))
    """Frames in the turntable video."""
    samples: int = field(default=96, metadata=_range(2, MAX_SAMPLES))
    """Samples per ray for evaluation renders."""


@dataclass
class EvaluateConfig:
    clip_models: list[str] = field(default_factory=lambda: ["models/world-clip/world-clip.pt"])
    """CLIP models: clip-anytorch names (ViT-B/32, ViT-B/16, ViT-L/14) or local checkpoint paths."""
    combine: Literal["per-view", "mean-embedding"] = "per-view"
    """per-view: each view ranks the captions, hits averaged over views; mean-embedding: views averaged first."""
    clip_cache: str = ""
    """Download cache for named CLIP models (empty = clip-anytorch's default ~/.cache/clip)."""
    bootstrap: int = field(default=10_000, metadata=_range(100, 100_000))
    """Bootstrap resamples of every 95 % interval (BCa, pipeline/stats.py): the report's, the findings' and the
    numbers MLflow and DVC see are the same intervals."""


@dataclass
class WorldConfig:
    seed: int = 0
    """Seed of the procedural image bank the closed-form prior is made of."""
    images_per_caption: int = field(default=600, metadata=_range(1, 10_000))
    """Renders per caption in the bank (split by view suffix)."""
    resolution: int = field(default=32, metadata=_range(8, 256))
    """Bank render size: the world priors' working resolution. Renders of another size are resampled to it (area
    average when shrinking), as Stable Diffusion's guidance resizes renders to its VAE's input."""
    bank_modes: list[Literal["albedo", "lit", "textureless"]] = field(default_factory=lambda: ["albedo", "lit"])
    """Shading modes the bank's images are rendered in, `images_per_caption` split between them. albedo and lit: what
    the world's objects look like, so SDS on a textureless render (white, shaded) pushes its geometry towards a
    coloured image, as SD is pushed with a colour in the prompt. Adding textureless gives the prior white, shaded
    renders of each caption's shape, as a model trained on the web has seen untextured renders of objects."""
    background: Literal["fixed", "any"] = "fixed"
    """Backgrounds the closed-form prior's images come over: fixed, render.background_color only (the bank as
    rendered); any, every solid colour, the colour a latent the denoiser integrates out in closed form (Gaussian per
    channel, mean grey, the variance of a uniform colour). A prior that has only seen the fixed colour reads any other
    background as something to paint over, with density (fog); a real text-to-image model has seen objects over every
    colour, so `any` is the stand-in for it when training uses random or learned backgrounds."""


@dataclass
class TrackingConfig:
    enabled: bool = True
    """Log runs to MLflow."""
    uri: str = ""
    """Tracking URI; empty = $MLFLOW_TRACKING_URI or sqlite:///mlflow.db in the working directory."""


@dataclass
class Config:
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    """Which prompt set to run."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds per prompt (paper: 2)."""
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    """The 2D prior and how SDS uses it."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Timestep schedule."""
    camera: CameraConfig = field(default_factory=CameraConfig)
    """Random camera sampler (paper App. A.2)."""
    nerf: FieldConfig = field(default_factory=FieldConfig)
    """The 3D field (density + albedo)."""
    render: RenderConfig = field(default_factory=RenderConfig)
    """Volume rendering."""
    shading: ShadingConfig = field(default_factory=ShadingConfig)
    """Shading modes and their probabilities."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation."""
    refine: RefineConfig = field(default_factory=RefineConfig)
    """The second, sharp stage."""
    mesh: MeshConfig = field(default_factory=MeshConfig)
    """Mesh extraction."""
    views: ViewsConfig = field(default_factory=ViewsConfig)
    """Evaluation and turntable views."""
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    """CLIP R-precision."""
    world: WorldConfig = field(default_factory=WorldConfig)
    """The bundled offline world."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """MLflow."""
    study: str = ""
    """Name of this experiment (a sweep or a comparison): its report goes to reports/<study>/, so the sweeps of one
    benchmark keep separate reports while sharing the objects they have in common (a variant's results folder is
    results/<benchmark>/<variant>/). Empty = the benchmark name. Not part of a variant's resolved config."""
    tag: str = ""
    """Suffix of every variant name of this run (results/<benchmark>/<variant>-<tag>/), for presets that pin settings
    other than params.yaml's (e.g. a published sweep pinned to the recipe it was measured with): their objects must
    never share a folder with a default run's. Empty = none. Not part of the digest."""
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    """Grid of dotted keys to value lists, e.g. {guidance.scale: [10, 30]}; every combination is a variant."""
    ablation: dict[str, dict[str, Any]] = field(default_factory=dict)
    """One-at-a-time variants next to the base config: {label: {dotted.key: value, ...}}, e.g.
    {no-pyramid: {nerf.kind: grid}} adds the variant `<base>-no-pyramid`. Paired against the base in the report.
    Not combined with `sweep`."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved(self) -> dict[str, Any]:
        """The values that decide a variant's results, as its config.yaml holds them: `to_dict` without the keys
        that only say how jobs are formed (JOB_KEYS)."""
        d = self.to_dict()
        for key in JOB_KEYS:
            section, name = key.split(".")
            d[section].pop(name)
        return d

    def digest(self) -> str:
        """Short hash of the resolved values (sweep excluded): identifies what produced a result. The second stage's
        settings (`refine`) are left out: they do not change the first stage's objects, so switching the second
        stage on retrains nothing; its own config (pipeline.refine.refine_config) carries them into its field and
        optimisation, and so into its digest."""
        d = self.resolved()
        d.pop("refine")
        d.pop("sweep")
        d.pop("ablation")
        d.pop("study")
        d.pop("tag")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if tp is Scheduled:
        return "a number or [start_step, start_value, end_value, end_step]"
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        item = typing.get_args(tp)[0]
        plural = {float: "numbers", int: "integers", str: "strings", bool: "true/false values"}.get(item)
        return f"a list of {plural or 'values, each ' + _type_name(item)}"
    if origin is dict:
        return "a mapping"
    return {float: "a number", int: "an integer", str: "a string", bool: "true/false"}.get(tp, str(tp))


def _from_string(tp: Any, value: str) -> Any:
    """Snakemake hands nested `--config key={...}` values over as strings, and PyYAML reads `1e-3` as one: parse a
    string the way YAML (and Python, for floats like 1e-3) would when the field is not a string. Unparseable text is
    returned unchanged, so the caller's type error names it."""
    if tp is str or typing.get_origin(tp) is Literal:
        return value
    text = value.strip()
    if tp is bool:  # only true/false: YAML 1.1's yes/no/on/off are too easy to write by accident
        return {"true": True, "false": False}.get(text.lower(), value)
    if tp in (float, Scheduled):
        try:
            return float(text)
        except ValueError:
            pass
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        return value
    return value if isinstance(parsed, str) else parsed


def _parse_strings(tp: Any) -> Any:
    """A pydantic before-validator: strings (from `--config`) parsed as YAML would for a non-string field."""

    def parse(value: Any) -> Any:
        if isinstance(value, str):
            value = _from_string(tp, value)
        if tp is Scheduled and isinstance(value, list):
            return [_from_string(float, v) if isinstance(v, str) else v for v in value]
        return value

    return parse


def _check_schedule(value: Any) -> Any:
    from pydantic_core import PydanticCustomError

    if isinstance(value, list):
        if len(value) != 4:
            raise PydanticCustomError("schedule_shape", "a schedule is [start_step, start_value, end_value, end_step]")
        if value[3] < value[0]:
            raise PydanticCustomError("schedule_order", "a schedule needs end_step >= start_step")
    return value


def _pydantic_type(tp: Any, meta: dict[str, Any] | None = None) -> Any:
    """The pydantic type of one field: the declared type (strict: no bool for a number, no 1.5 for an integer, no
    NaN/Inf), its documented range, and `--config` strings parsed first."""
    from pydantic import AfterValidator, BeforeValidator, Field

    meta = meta or {}
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        base: Any = _pydantic_model(tp)
    elif tp is Scheduled:
        base = Annotated[Union[float, list[float]], AfterValidator(_check_schedule)]
    elif origin is list:
        base = list[_pydantic_type(typing.get_args(tp)[0])]
    elif origin is dict:
        base = dict[str, Any]  # sweep / ablation: their entries are checked as variants (from_dict)
    else:
        base = tp
    bounds: dict[str, Any] = {}
    if meta.get("min") is not None:
        bounds["gt" if meta.get("lo_open") else "ge"] = meta["min"]
    if meta.get("max") is not None:
        bounds["le"] = meta["max"]
    parse = BeforeValidator(_parse_strings(dict if dataclasses.is_dataclass(tp) else tp))
    return Annotated[base, parse, Field(**bounds)] if bounds else Annotated[base, parse]


@functools.cache
def _pydantic_model(cls: type) -> Any:
    """A pydantic model mirroring one config dataclass: unknown keys forbidden, strict types, finite numbers. Every
    field defaults to None: only the keys given are validated and passed on (the dataclass supplies the defaults)."""
    from pydantic import ConfigDict, create_model

    hints = typing.get_type_hints(cls)
    fields = {f.name: (_pydantic_type(hints[f.name], dict(f.metadata)), None) for f in dataclasses.fields(cls)}
    config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    return create_model(f"{cls.__name__}Model", __config__=config, **fields)


def _to_dataclass(cls: type, model: Any) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name in model.model_fields_set:
        value = getattr(model, name)
        kwargs[name] = _to_dataclass(hints[name], value) if dataclasses.is_dataclass(hints[name]) else value
    return cls(**kwargs)


def _locate(loc: tuple[Any, ...]) -> tuple[str, Any, type, str | None]:
    """(dotted key, its declared type, the dataclass holding it, the unknown key if any) of a pydantic error."""
    key, tp, owner = "", Config, Config
    for part in loc:
        if dataclasses.is_dataclass(tp) and isinstance(part, str):
            hints = typing.get_type_hints(tp)
            if part not in hints:
                return key, tp, tp, part
            owner, tp, key = tp, hints[part], f"{key}.{part}" if key else part
            if tp is Scheduled:
                break
        elif typing.get_origin(tp) is list and isinstance(part, int):
            tp, key = typing.get_args(tp)[0], f"{key}[{part}]"
        else:
            break  # a union member's tag or a mapping's entry: the field itself is what failed
    return key, tp, owner, None


_SPECIFIC = ("extra_forbidden", "finite_number", "greater_than", "greater_than_equal", "less_than_equal")


def _message(errors: list[dict[str, Any]], src: str) -> str:
    """One located line per failing key of a pydantic ValidationError, every key at once (in the file's order)."""
    keys: list[Any] = []
    for e in errors:
        key = _locate(e["loc"])[0]
        if key not in keys:
            keys.append(key)
    return "\n".join(_key_message([e for e in errors if _locate(e["loc"])[0] == key], src) for key in keys)


def _key_message(same: list[dict[str, Any]], src: str) -> str:
    """The one-line message of one key's errors: the most specific of them."""
    err = next((e for e in same if e["type"] in _SPECIFIC or e["type"].startswith("schedule_")), same[0])
    key, tp, owner, unknown = _locate(err["loc"])
    value, kind, ctx = err["input"], err["type"], err.get("ctx") or {}
    if unknown is not None:
        names = [f.name for f in dataclasses.fields(owner)]
        prefix = f"{key}." if key else ""
        return (
            f"{src}: unknown key {prefix}{unknown}{_did_you_mean(unknown, names, prefix)}; allowed keys under "
            f"{key or 'the top level'}: {', '.join(names)}"
        )
    if isinstance(value, str) and tp is not str and kind != "literal_error":
        value = _from_string(tp, value)
    where = key or "the top level"
    if kind == "finite_number":
        bad = next((v for v in value if not math.isfinite(v)), value) if isinstance(value, list) else value
        return f"{src}: {where} must be a finite number, got {bad!r}"
    ops = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"), "less_than_equal": ("<=", "le")}
    if kind in ops:
        op, name = ops[kind]
        return f"{src}: {where} must be {op} {ctx[name]}, got {value!r}"
    if kind == "schedule_order":
        return f"{src}: {where} schedule needs end_step >= start_step, got {value!r}"
    return f"{src}: {where} must be {'a mapping' if dataclasses.is_dataclass(tp) else _type_name(tp)}, got {value!r}"


def _validate(data: Any, src: str) -> Config:
    """params.yaml data → Config, validated by pydantic models mirroring the dataclasses; the first error becomes one
    located line (key, expected type or range, the value given, did-you-mean for unknown keys)."""
    from pydantic import ValidationError

    if isinstance(data, str):
        data = _from_string(dict, data)
    try:
        model = _pydantic_model(Config).model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_message(exc.errors(), src)) from None
    return _to_dataclass(Config, model)


def _did_you_mean(key: str, choices: Any, prefix: str = "") -> str:
    """' (did you mean guidance.scale?)' for a misspelt key, '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(key, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def _check_bounds(cfg: Config, src: str) -> None:
    """Sizes in lists, which a field's range cannot bound, and values that must never be written into a result."""
    if len(cfg.seeds) > 100 or any(k >= 2**31 for k in cfg.seeds):
        raise ConfigError(f"{src}: seeds must be at most 100 integers below 2^31, got {cfg.seeds!r}")
    if cfg.nerf.kind == "pyramid" and not all(4 <= n <= 512 for n in cfg.nerf.levels):
        raise ConfigError(
            f"{src}: nerf.levels must each lie in [4, 512] (a 512³ level is 0.5 GB a channel), got {cfg.nerf.levels!r}"
        )
    for key, pair in [("camera.distance", cfg.camera.distance), ("camera.focal", cfg.camera.focal)]:
        if pair[0] <= 0:
            raise ConfigError(f"{src}: {key} must be positive (a camera in front of the object), got {pair!r}")
    colour = cfg.render.background_color
    if len(colour) != 3 or not all(0.0 <= c <= 1.0 for c in colour):
        raise ConfigError(f"{src}: render.background_color must be 3 values in [0, 1] (RGB), got {colour!r}")
    if cfg.schedule.dreamtime_m2 > cfg.schedule.dreamtime_m1:
        raise ConfigError(
            f"{src}: schedule.dreamtime_m2 ({cfg.schedule.dreamtime_m2}) must not exceed dreamtime_m1 "
            f"({cfg.schedule.dreamtime_m1}): the time prior is flat between them"
        )
    if "@" in cfg.tracking.uri.split("://", 1)[-1].split("/", 1)[0]:
        raise ConfigError(
            f"{src}: tracking.uri must not carry a user or password (it would be written into every result); give "
            "them to MLflow as MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the environment instead"
        )


def _check_semantics(cfg: Config, src: str) -> None:
    """Cross-field rules that a type alone cannot express."""
    for key, pair in [
        ("camera.distance", cfg.camera.distance),
        ("camera.elevation", cfg.camera.elevation),
        ("camera.focal", cfg.camera.focal),
        ("camera.light_distance", cfg.camera.light_distance),
    ]:
        if len(pair) != 2 or pair[0] > pair[1]:
            raise ConfigError(f"{src}: {key} must be [low, high] with low <= high, got {pair!r}")
    _check_bounds(cfg, src)
    s = cfg.schedule
    for key, v in [("schedule.t_min", s.t_min), ("schedule.t_max", s.t_max)]:
        values = [v] if isinstance(v, float) else v[1:3]
        if not all(0.0 <= x <= 1.0 for x in values):
            raise ConfigError(f"{src}: {key} values must lie in [0, 1] (fractions of T), got {v!r}")
    if s.name in ("uniform", "step", "hifa", "dreamtime") and not (
        isinstance(s.t_min, float) and isinstance(s.t_max, float)
    ):
        raise ConfigError(f"{src}: schedule.t_min/t_max must be numbers for schedule.name={s.name}; use 'anneal'")
    if s.name == "anneal" and isinstance(s.t_min, float) and isinstance(s.t_max, float):
        raise ConfigError(
            f"{src}: schedule.name=anneal needs schedule.t_max (or t_min) as [start_step, start, end, end_step]"
        )
    lo = s.t_min if isinstance(s.t_min, float) else min(s.t_min[1:3])
    hi = s.t_max if isinstance(s.t_max, float) else max(s.t_max[1:3])
    if lo >= hi:
        raise ConfigError(f"{src}: schedule.t_min ({lo}) must be below schedule.t_max ({hi})")
    n = cfg.nerf
    if n.density_activation == "sdf" and n.blob == "linear" and (n.blob_density != n.blob_radius or n.blob_cap):
        raise ConfigError(
            f"{src}: nerf.density_activation sdf reads the pre-activation as a distance, so its linear blob must be "
            f"one: set nerf.blob_density equal to nerf.blob_radius ({n.blob_radius}, got {n.blob_density}) and "
            f"nerf.blob_cap: 0 (got {n.blob_cap})"
        )
    if cfg.nerf.mlp_hidden == 0 and cfg.nerf.features != 4:
        raise ConfigError(f"{src}: nerf.features must be 4 when nerf.mlp_hidden is 0, got {cfg.nerf.features}")
    if cfg.study and (not SAFE_NAME.fullmatch(cfg.study) or ".." in cfg.study):
        raise ConfigError(
            f"{src}: study must be a plain folder name (letters, digits, '.', '_', '-'; it names reports/<study>/), "
            f"got {cfg.study!r}"
        )
    if cfg.tag and (not SAFE_NAME.fullmatch(cfg.tag) or ".." in cfg.tag):
        raise ConfigError(
            f"{src}: tag must be a plain name (letters, digits, '.', '_', '-'; it ends every variant's folder name), "
            f"got {cfg.tag!r}"
        )
    if not SAFE_NAME.fullmatch(cfg.prompts.benchmark) or ".." in cfg.prompts.benchmark:
        raise ConfigError(
            f"{src}: prompts.benchmark must be a plain file name (letters, digits, '.', '_', '-'; it names "
            f"prompts/<benchmark>.txt and the results folder), got {cfg.prompts.benchmark!r}"
        )
    n = cfg.nerf
    if n.kind == "pyramid" and (
        not n.levels
        or any(r < 2 for r in n.levels)
        or any(b <= a for a, b in zip(n.levels, n.levels[1:], strict=False))
    ):
        raise ConfigError(f"{src}: nerf.levels must be increasing resolutions >= 2, got {n.levels!r}")
    if len(n.unlock_steps) != 2 or not 0 <= n.unlock_steps[0] <= n.unlock_steps[1]:
        raise ConfigError(
            f"{src}: nerf.unlock_steps must be [start, end] with 0 <= start <= end, got {n.unlock_steps!r}"
        )
    if len(cfg.render.background_color) != 3:
        raise ConfigError(f"{src}: render.background_color must be [r, g, b], got {cfg.render.background_color!r}")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds) or min(cfg.seeds) < 0:
        raise ConfigError(f"{src}: seeds must be a non-empty list of distinct integers >= 0, got {cfg.seeds!r}")
    if cfg.world.background != "fixed" and cfg.guidance.name != "world":
        raise ConfigError(
            f"{src}: world.background={cfg.world.background} is a setting of the closed-form world prior; "
            f"guidance.name={cfg.guidance.name} does not read it: remove world.background or set it to fixed"
        )
    if cfg.guidance.compile != "off" and cfg.guidance.name == "world":
        raise ConfigError(
            f"{src}: guidance.compile={cfg.guidance.compile} applies to U-Net priors (world-unet, stable-diffusion, "
            "deepfloyd-if); the closed-form world prior has no network to compile: set guidance.compile: off"
        )
    if not cfg.evaluate.clip_models:
        raise ConfigError(f"{src}: evaluate.clip_models must name at least one CLIP model")
    g = cfg.guidance
    if g.perp_neg and not g.view_suffix:
        raise ConfigError(
            f"{src}: guidance.perp_neg interpolates the view prompts, so it needs guidance.view_suffix: true"
        )
    if g.name == "world" and (g.perp_neg or g.negative_view_prompts):
        key = "guidance.perp_neg" if g.perp_neg else "guidance.negative_view_prompts"
        raise ConfigError(
            f"{src}: {key} needs a prior with a text encoder (world-unet, stable-diffusion, deepfloyd-if); the "
            "closed-form world prior knows only its 36 captions: use guidance.name: world-unet, or switch it off"
        )


def from_dict(data: dict[str, Any] | None, src: str = "params.yaml") -> Config:
    """Validate ``data`` (a parsed params.yaml) and return the typed :class:`Config`."""
    if data is not None and not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(f"{src}: must be a mapping of sections (prompts:, guidance:, train:, ...), got a {kind}")
    data = {} if data is None else {k: v for k, v in data.items() if k != "preset"}
    cfg = _validate(data, src)
    _check_semantics(cfg, src)
    for key, values in cfg.sweep.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{src}: sweep.{key} must be a non-empty list of values, got {values!r}")
        if key in ("sweep", "seeds", "study", "tag", "ablation") or key.startswith("prompts."):
            raise ConfigError(f"{src}: sweep.{key} cannot be swept (use seeds / prompts directly)")
        if key in JOB_KEYS:
            raise ConfigError(f"{src}: sweep.{key} cannot be swept: it forms the jobs of the whole run; set it once")
        for v in values:
            variant = _set_dotted(cfg.to_dict(), key, v, src)
            variant["sweep"] = {}
            from_dict(variant, f"{src} (sweep.{key}={v!r})")
    if cfg.ablation and cfg.sweep:
        raise ConfigError(f"{src}: use either sweep or ablation, not both")
    for label, changes in cfg.ablation.items():
        if not SAFE_NAME.fullmatch(str(label)) or not isinstance(changes, dict) or not changes:
            raise ConfigError(
                f"{src}: ablation.{label} must be a name of letters, digits, '.', '_', '-' mapping to "
                f"{{dotted.key: value}}, got {changes!r}"
            )
        variant = cfg.to_dict()
        variant["ablation"] = {}
        for key, v in changes.items():
            if key in JOB_KEYS:
                raise ConfigError(f"{src}: ablation.{label}.{key}: it forms the jobs of the whole run; set it once")
            _set_dotted(variant, key, v, f"{src} (ablation.{label})")
        from_dict(variant, f"{src} (ablation.{label})")
    return cfg


def _merged(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """`layer` over `base`, mappings merged key by key (as Snakemake merges --configfile and --config)."""
    out = dict(base)
    for k, v in layer.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def from_layers(layers: list[tuple[str, Any]], merged: dict[str, Any]) -> Config:
    """Validate the config the way Snakemake builds it: params.yaml, then each --configfile in order, then the
    --config overrides (`merged`, what Snakemake hands the workflow). Each problem is reported against the first file
    after which the config is wrong, so a bad value in a preset names the preset, not params.yaml."""
    data: dict[str, Any] = {}
    for name, layer in layers:
        if not isinstance(layer, dict | None):
            raise ConfigError(f"{name}: must be a mapping of keys to values, got {type(layer).__name__}")
        data = _merged(data, layer or {})
        from_dict(copy.deepcopy(data), name)
    return from_dict(merged, "--config overrides" if layers else "params.yaml")


def load(path: str | Path) -> Config:
    """Read and validate a YAML params file."""
    path = Path(path)
    try:
        data = yamlio.load(path)
    except yamlio.YAMLInputError as exc:
        raise ConfigError(f"{exc}; fix it there") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    return from_dict(data, str(path))


def _set_dotted(d: dict[str, Any], key: str, value: Any, src: str) -> dict[str, Any]:
    node = d
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            hint = _did_you_mean(part, node, ".".join(parts[:i]) + "." if i else "") if isinstance(node, dict) else ""
            raise ConfigError(f"{src}: sweep key {key!r} is not a params key (no {'.'.join(parts[: i + 1])!r}){hint}")
        if i == len(parts) - 1:
            node[part] = value
        else:
            node = node[part]
    return d


# --------------------------------------------------------------------------- variants

_GUIDANCE_TAG = {"world": "world", "world-unet": "worldunet", "stable-diffusion": "sd", "deepfloyd-if": "if"}


def _fmt(v: Any) -> str:
    """A value as part of a variant name: only characters safe in paths and shells (others become '_')."""
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "_".join(_fmt(x) for x in v)
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(v)).replace("..", "_")


def variant_name(cfg: Config, swept: dict[str, Any]) -> str:
    """Readable variant name, e.g. ``world-w10-uniform`` plus ``-<key><value>`` for other swept keys."""
    name = f"{_GUIDANCE_TAG[cfg.guidance.name]}-w{_fmt(cfg.guidance.scale)}-{cfg.schedule.name}"
    for key, v in swept.items():
        if key not in ("guidance.name", "guidance.scale", "schedule.name"):
            name += f"-{key.split('.')[-1].replace('_', '')}{_fmt(v)}"
    return f"{name}-{cfg.tag}" if cfg.tag else name


def variants(cfg: Config) -> dict[str, Config]:
    """Expand the sweep into {variant name: resolved Config (sweep cleared)}; no sweep gives one variant."""
    base = cfg.to_dict()
    base["sweep"] = {}
    base["study"] = ""  # the report folder, not a setting of the objects: studies share identical variants
    keys = list(cfg.sweep)
    size = math.prod(len(v) for v in cfg.sweep.values()) if keys else len(cfg.ablation) + 1
    if size > MAX_VARIANTS:
        raise ConfigError(
            f"params.yaml: sweep/ablation would make {size:,} variants (at most {MAX_VARIANTS}); every variant trains "
            "every prompt and seed: sweep fewer values or split the study"
        )
    combos: list[dict[str, Any]] = [{}]
    for key in keys:
        combos = [{**c, key: v} for c in combos for v in cfg.sweep[key]]
    out: dict[str, Config] = {}
    if cfg.ablation:
        base["ablation"] = {}
        name = variant_name(cfg, {})
        out[name] = from_dict(copy.deepcopy(base), "ablation")
        for label, changes in cfg.ablation.items():
            d = copy.deepcopy(base)
            for key, v in changes.items():
                _set_dotted(d, key, v, "ablation")
            out[f"{name}-{label}"] = from_dict(d, f"ablation.{label}")
        return out
    base["ablation"] = {}
    for combo in combos:
        d = copy.deepcopy(base)
        for key, v in combo.items():
            _set_dotted(d, key, v, "sweep")
        resolved = from_dict(d, "sweep")
        name = variant_name(resolved, combo)
        if name in out:
            raise ConfigError(f"params.yaml: sweep produces the variant name {name!r} twice; sweep distinct values")
        out[name] = resolved
    return out


def save_resolved(cfg: Config, path: str | Path) -> None:
    """Write a resolved (single-variant) config as YAML, atomically."""
    from pipeline.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.resolved(), sort_keys=False))
