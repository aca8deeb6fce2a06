"""SDS-NeRF training for one (variant, prompt, seed): DreamFusion's optimisation loop.

Each step: sample `batch_views` paper cameras and shading modes, render, add the view suffix to the prompt, take the
SDS gradient from the guidance model, add the orientation and opacity regularisers, and take an Adam step with
warm-up and cosine decay. All randomness of step k comes from a generator seeded with (seed, k), so a run resumed
from a checkpoint reaches exactly the weights of an uninterrupted run on a CPU.

Outputs in --out: model.safetensors (field + background, with the resolved config in its metadata), metrics.json,
log.jsonl (one line a step), previews/ (a render every 10 %), checkpoint/ (resumable; when done it keeps only hard
links to the final model and metrics, so a finished object that Snakemake discards as incomplete after an interrupt
is restored at once on the next run instead of retrained). SIGINT/SIGTERM stop after the current step with a
checkpoint there (exit 130/143); the next run resumes from it.

    python -m pipeline.train --params results/primitives/world-w10-uniform/config.yaml \
        --prompts results/primitives/prompts.json --prompt-id a-red-cube-1234abcd --seed 0 --out out/
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm

from pipeline.config import Config, scheduled
from pipeline.config import load as load_config
from pipeline.guidance import Guidance, build_guidance
from pipeline.guidance.prompting import ViewPrompter
from pipeline.io import atomic_write, atomic_write_json, remove_stale_temps
from pipeline.nerf.cameras import orbit_cameras, sample_cameras
from pipeline.nerf.field import build_field, require_analytic_normals
from pipeline.nerf.renderer import Background, Shading, normal_roughness, render, sample_shading
from pipeline.prompts import PromptFileError, read_prompts_json
from pipeline.sds import TimestepSchedule, sds


class TrainingDiverged(RuntimeError):
    """Loss or parameters became NaN/Inf; the message names the step and the last good checkpoint."""


class Interrupted(RuntimeError):
    """SIGINT/SIGTERM: the run stopped between two steps and saved a checkpoint there."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class _StopRequests:
    """SIGINT/SIGTERM handlers that only note the signal; the loop stops between steps (a step cut halfway, with
    half the parameters updated, would resume to other weights). A second signal stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.getsignal(sig)
                signal.signal(sig, self._note)
        return self

    def _note(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class CheckpointMismatch(RuntimeError):
    """A checkpoint from another config, prompt or seed; refused rather than silently loaded."""


class Model(nn.Module):
    """What SDS optimises: the field and the background."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.field = build_field(cfg.nerf)
        self.background = Background(cfg.render)


def initial_model(cfg: Config, seed: int) -> Model:
    """The model as training starts it: drawn from the object's seed alone (not from whatever loading the guidance
    drew before it), so the untrained init can be rebuilt and scored (pipeline.geometry's iou_gain)."""
    torch.manual_seed(seed)
    return Model(cfg)


_GPU_LOCK = None


def claim_gpu_slot(n_devices: int, lock_dir: str | Path | None = None) -> int:
    """Pin this process to the first GPU no other local job holds (an exclusive lock file per GPU, released when the
    process exits), so parallel local jobs spread over the cards. Raises if all are held."""
    import fcntl
    import tempfile

    global _GPU_LOCK
    lock_dir = Path(lock_dir or os.environ.get("DREAMFUSION_GPU_LOCKS", tempfile.gettempdir()))
    for i in range(n_devices):
        fh = open(lock_dir / f"dreamfusion-gpu{i}.lock", "w")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        _GPU_LOCK = fh
        return i
    raise RuntimeError(f"all {n_devices} GPUs are held by other jobs; lower the `gpu` resource (profiles/default)")


class NoGPU(RuntimeError):
    """A run that needs CUDA found none; raised before any model is loaded."""


GPU_GUIDANCE = ("stable-diffusion", "deepfloyd-if")
"""Priors that are only practical on a GPU: with train.device auto and no CUDA, training stops at once."""


def pick_device(cfg: Config) -> torch.device:
    """auto = CUDA when visible; a GPU prior (SD, IF) with no CUDA visible is an error unless train.device is cpu.
    With several visible GPUs and no scheduler pinning (CUDA_VISIBLE_DEVICES unset), a free one is claimed by lock
    file."""
    name = cfg.train.device
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if name == "cuda":
            raise NoGPU("train.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
        if cfg.guidance.name in GPU_GUIDANCE:
            raise NoGPU(
                f"guidance.name={cfg.guidance.name} needs a CUDA GPU and none is visible (torch.cuda.is_available() "
                "is False). Run on a GPU machine, or set train.device: cpu to train on the CPU anyway (very slow)"
            )
        return torch.device("cpu")
    n = torch.cuda.device_count()
    if n > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:
        return torch.device(f"cuda:{claim_gpu_slot(n)}")
    return torch.device("cuda")


def step_generator(seed: int, step: int, restart: int = 0) -> torch.Generator:
    """The only source of randomness of a step (cameras, shading, t, ε, strata). `restart` counts divergences of this
    object: a retry after one draws other cameras and noise from the last good checkpoint on, instead of walking
    into the same NaN again (0 = the normal stream)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step + restart * 7_919_000_017)


DIVERGED = "diverged.json"
"""checkpoint/diverged.json: how often this object diverged and where (the retries' random streams follow it)."""


def _restarts(ckpt_dir: Path) -> int:
    try:
        return int(json.loads((ckpt_dir / DIVERGED).read_text())["count"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def learning_rate(cfg: Config, step: int) -> float:
    """Linear warm-up from lr·1e-3, then cosine decay to lr·final_lr_ratio at the last step."""
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (1e-3 + (1 - 1e-3) * step / max(t.warmup_steps, 1))
    p = (step - t.warmup_steps) / max(t.steps - t.warmup_steps - 1, 1)
    ratio = t.final_lr_ratio + (1 - t.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))
    return t.lr * ratio


def git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def identity(cfg: Config, prompt_id: str, text: str, seed: int) -> dict[str, Any]:
    """What a checkpoint must match to be resumed."""
    return {"config_digest": cfg.digest(), "prompt_id": prompt_id, "prompt": text, "seed": seed}


# --------------------------------------------------------------------------- checkpoints


CHECKPOINT = "checkpoint.safetensors"
"""One file per checkpoint: weights, Adam moments, and in its metadata the step, the run's identity and Adam's
scalars. Written by one atomic rename, so weights and step can never disagree after a kill."""


class ModelFileError(ValueError):
    """A model.safetensors that cannot be read back (truncated, foreign, or weights that do not fit its config)."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed (corrupt, from another run, out of range or non-finite)."""


def save_checkpoint(directory: Path, model: Model, opt: torch.optim.Optimizer, step: int, ident: dict) -> None:
    """Atomically write weights + Adam moments + step + identity as one safetensors file (never a non-finite one)."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    state = opt.state_dict()
    scalars: dict[str, Any] = {}
    for idx, s in state["state"].items():
        for k, v in s.items():
            if torch.is_tensor(v) and v.ndim > 0:
                tensors[f"opt.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = float(v)
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{directory}: refusing to checkpoint non-finite {bad[0]} at step {step}")
    meta = {"step": str(step), "identity": json.dumps(ident, sort_keys=True), "opt_scalars": json.dumps(scalars)}
    atomic_write(directory / CHECKPOINT, lambda p: save_file(tensors, str(p), metadata=meta))


def checkpoint_step(directory: Path) -> int | None:
    """The step of the checkpoint in `directory` (None if there is none)."""
    from safetensors import safe_open

    path = directory / CHECKPOINT
    if not path.exists():
        return None
    with safe_open(str(path), "pt") as fh:
        return int((fh.metadata() or {})["step"])


def load_checkpoint(directory: Path, model: Model, opt: torch.optim.Optimizer, ident: dict, total_steps: int) -> int:
    """Restore a checkpoint; return the next step (0 if none). Refuses one from another config/prompt/seed, one
    whose step is not inside this run, and a corrupt or non-finite one, each with the fix in the message."""
    from safetensors import safe_open

    path = directory / CHECKPOINT
    if not path.exists():
        return 0
    fix = f"delete {directory} to start this object over"
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        step, saved = int(meta["step"]), json.loads(meta["identity"])
        opt_scalars = json.loads(meta["opt_scalars"])
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a truncated or foreign file
        raise CheckpointError(
            f"{path}: not a readable training checkpoint ({type(exc).__name__}: {exc}); {fix}"
        ) from None
    if saved != ident:
        diff = [k for k in ident if saved.get(k) != ident[k]]
        raise CheckpointMismatch(
            f"{directory}: checkpoint was written for a different {', '.join(diff)} ({saved}); {fix}"
        )
    if not 0 < step < total_steps:
        raise CheckpointError(f"{path}: step {step} is outside this run's 1..{total_steps - 1}; {fix}")
    if any(v.is_floating_point() and not torch.isfinite(v).all() for v in tensors.values()):
        raise CheckpointError(f"{path}: holds NaN/Inf values; {fix}")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[str, Any] = {"state": {}, "param_groups": opt.state_dict()["param_groups"]}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state["state"].setdefault(int(idx), {})[name] = v
    for key, v in opt_scalars.items():
        idx, name = key.split(".", 1)
        state["state"].setdefault(int(idx), {})[name] = torch.tensor(v)
    opt.load_state_dict(state)
    return step


FINAL = ("model.safetensors", "metrics.json")
"""A finished run's outputs, kept as hard links in checkpoint/final-<name> (no extra disk space)."""


def code_digest() -> str:
    """Hash of the source files training runs (the same set Snakemake watches): a kept final model is only reused
    by the code that made it."""
    from pipeline.provenance import module_sources

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted(module_sources("pipeline.train", root)):
        h.update(f.encode() + b"\0" + (root / f).read_bytes())
    return h.hexdigest()[:16]


def _link_replace(src: Path, dst: Path) -> None:
    """dst becomes a hard link to src, atomically (a copy where the filesystem has no hard links)."""
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        tmp.write_bytes(src.read_bytes())
    os.replace(tmp, dst)


def keep_final(ckpt_dir: Path, out: Path, record: dict) -> None:
    """After the outputs are written: link them into ckpt_dir with the run's identity and code, drop the resumable
    checkpoint (its Adam state is no longer needed)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for name in FINAL:
        _link_replace(out / name, ckpt_dir / f"final-{name}")
    atomic_write_json(ckpt_dir / "final.json", record)
    (ckpt_dir / CHECKPOINT).unlink(missing_ok=True)


def restore_final(ckpt_dir: Path, out: Path, record: dict) -> dict[str, Any] | None:
    """A finished run of the same identity and code whose outputs were discarded (e.g. by Snakemake after an
    interrupt): put them back and return its metrics; None (and the stale record removed) otherwise."""
    rec = ckpt_dir / "final.json"
    if not rec.exists():
        return None
    try:
        same = json.loads(rec.read_text()) == record and all((ckpt_dir / f"final-{n}").exists() for n in FINAL)
    except (OSError, json.JSONDecodeError):
        same = False
    if not same:
        for name in ("final.json", *(f"final-{n}" for n in FINAL)):
            (ckpt_dir / name).unlink(missing_ok=True)
        return None
    for name in FINAL:
        _link_replace(ckpt_dir / f"final-{name}", out / name)
    return json.loads((out / "metrics.json").read_text())


def save_model(path: Path, model: Model, cfg: Config, ident: dict) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"config": json.dumps(cfg.to_dict()), "identity": json.dumps(ident), "git_sha": git_sha()}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[Model, Config, dict]:
    """A trained model.safetensors → (Model, its Config, its identity)."""
    from safetensors import safe_open

    from pipeline.config import from_dict

    fix = "delete it and run the workflow again (its training job writes it anew)"
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a truncated or foreign file
        raise ModelFileError(f"{path}: not a readable model ({type(exc).__name__}: {exc}); {fix}") from None
    if "config" not in meta or "identity" not in meta:
        raise ModelFileError(f"{path}: not a model written by pipeline.train (no config metadata); {fix}")
    cfg = from_dict(json.loads(meta["config"]), f"{path} (metadata)")
    model = Model(cfg)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise ModelFileError(f"{path}: weights do not fit its own config ({first}); {fix}") from None
    return model.to(device).eval(), cfg, json.loads(meta["identity"])


# --------------------------------------------------------------------------- the loop


def _check_finite(step: int, what: str, value: Tensor, ckpt_dir: Path) -> None:
    if not torch.isfinite(value).all():
        last = checkpoint_step(ckpt_dir)
        where = f"step {last} in {ckpt_dir}" if last is not None else "none yet"
        count = _restarts(ckpt_dir) + 1
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(ckpt_dir / DIVERGED, {"count": count, "step": step, "what": what})
        raise TrainingDiverged(
            f"step {step}: {what} is NaN/Inf; stopped. Last good checkpoint: {where}; a retry resumes there with "
            f"another random stream (divergence {count} of this object). If it recurs, lower train.lr or "
            "guidance.scale, or enable guidance.score_clip"
        )


def preview(model: Model, cfg: Config, device: torch.device) -> Tensor:
    """Four lit views at the evaluation elevation [4, 3, H, W]."""
    cams = orbit_cameras(cfg.camera, [0.0, 90.0, 180.0, 270.0]).to(device)
    with torch.no_grad():
        return render(
            model.field,
            cams,
            cfg.render.resolution,
            cfg.render.samples,
            Shading.lit(4, cfg.shading),
            model.background,
            normal_eps=cfg.render.normal_eps,
        ).rgb.cpu()


def optimizer(cfg: Config, model: Model) -> torch.optim.Adam:
    """Adam over the field (lr) and the background (lr × train.background_lr), as training checkpoints it."""
    groups = [{"params": list(model.field.parameters()), "lr_scale": 1.0}]
    if list(model.background.parameters()):
        groups.append({"params": list(model.background.parameters()), "lr_scale": cfg.train.background_lr})
    return torch.optim.Adam(
        groups,
        lr=cfg.train.lr,
        betas=(0.9, 0.99),
        eps=1e-15,
        weight_decay=cfg.train.weight_decay,
        foreach=False,
    )


def checkpoint_model(cfg: Config, out: str | Path, prompt_id: str, text: str, seed: int) -> tuple[Model, int]:
    """The model of an unfinished run as its checkpoint in out/checkpoint holds it, and the step it reached; the
    field is set to that step (the levels training had unlocked), as its renders looked then. The checkpoint is
    validated as a resume would (same config, prompt and seed). For scoring a run part-way (recipe probes)."""
    model = initial_model(cfg, seed)
    step = load_checkpoint(
        Path(out) / "checkpoint", model, optimizer(cfg, model), identity(cfg, prompt_id, text, seed), cfg.train.steps
    )
    if step == 0:
        raise CheckpointError(f"{Path(out) / 'checkpoint'}: no checkpoint to score; train with stop_after first")
    model.field.set_step(step)
    return model, step


def train(
    cfg: Config,
    prompt_id: str,
    text: str,
    seed: int,
    out: str | Path,
    guidance: Guidance | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    stop_after: int | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Optimise one object; resumes from out/checkpoint if present. Returns the final metrics.

    `stop_after` ends the process-equivalent early (after that many steps, with a checkpoint) for tests of resume.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OSError(
            f"{out}: output folder is not writable ({exc.strerror}); fix its permissions or choose "
            "another results folder"
        ) from None
    device = device or pick_device(cfg)
    torch.manual_seed(seed)
    ident = identity(cfg, prompt_id, text, seed)
    ckpt_dir = out / "checkpoint"
    for folder in (out, ckpt_dir, out / "previews"):
        remove_stale_temps(folder)  # left by a job killed mid-write; this job is the folder's only writer
    final_record = {**ident, "steps": cfg.train.steps, "code_digest": code_digest()}
    restored = restore_final(ckpt_dir, out, final_record)
    if restored is not None:
        return restored
    guidance = guidance or build_guidance(cfg, device)
    model = initial_model(cfg, seed).to(device)
    if cfg.nerf.normals == "analytic" and cfg.nerf.lookup == "grid_sample":
        require_analytic_normals(device)
    opt = optimizer(cfg, model)
    start = load_checkpoint(ckpt_dir, model, opt, ident, cfg.train.steps)
    schedule = TimestepSchedule(cfg.schedule, guidance.alphas_cumprod, cfg.train.steps)
    prompter = ViewPrompter(guidance, text, cfg.guidance)
    guidance.embed(prompter.texts())
    guidance.release_text_encoder()  # every text this run needs is cached
    every_preview = cfg.train.preview_every or max(1, cfg.train.steps // 10)
    log_path = out / "log.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    if start == 0:
        log_path.unlink(missing_ok=True)
    else:
        _truncate_log(log_path, start)
    timings = {"render": 0.0, "guidance": 0.0, "backward": 0.0, "optimiser": 0.0}
    t_start = time.perf_counter()
    bar = tqdm(
        range(start, cfg.train.steps),
        initial=start,
        total=cfg.train.steps,
        desc=prompt_id,
        leave=False,
        disable=os.environ.get("TQDM_DISABLE") == "1",
    )
    last: dict[str, float] = {}
    with open(log_path, "a", encoding="utf-8") as log, _StopRequests() as stop:
        restart = _restarts(ckpt_dir)
        for step in bar:
            g = step_generator(seed, step, restart)
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, step) * group["lr_scale"]
            model.field.set_step(step)
            t0 = time.perf_counter()
            cams = sample_cameras(cfg.camera, cfg.train.batch_views, g).to(device)
            shading = sample_shading(cfg.shading, step, cfg.train.batch_views, g)
            orient_w = scheduled(cfg.train.orientation_weight, step)
            smooth_w = scheduled(cfg.train.normal_smooth_weight, step)
            res = render(
                model.field,
                cams,
                cfg.render.resolution,
                cfg.render.samples,
                shading,
                model.background,
                normal_eps=cfg.render.normal_eps,
                generator=g,
                training=True,
                need_normals=shading.needs_normals or orient_w > 0 or smooth_w > 0,
            )
            t1 = time.perf_counter()
            c = prompter(cams.elevation.tolist(), cams.azimuth.tolist())
            t = schedule(step, cfg.train.batch_views, g)
            s = sds(guidance, res.rgb, c.cond, c.uncond, t, cfg.guidance, step, g, c.negatives, c.neg_weights)
            t2 = time.perf_counter()
            sds_term = s.loss / cfg.train.batch_views if cfg.train.sds_reduction == "mean" else s.loss
            opacity_pen = torch.sqrt(res.opacity**2 + 0.01).mean()
            loss = sds_term + orient_w * res.orientation + scheduled(cfg.train.opacity_weight, step) * opacity_pen
            entropy_w, tv_w = scheduled(cfg.train.entropy_weight, step), scheduled(cfg.train.tv_weight, step)
            if entropy_w > 0:
                a = res.opacity.clamp(1e-5, 1 - 1e-5)
                loss = loss + entropy_w * (-(a * a.log() + (1 - a) * (1 - a).log())).mean()
            if tv_w > 0:
                loss = loss + tv_w * model.field.total_variation()
            if smooth_w > 0:
                loss = loss + smooth_w * normal_roughness(res.normal)
            eik_w = scheduled(cfg.train.eikonal_weight, step)
            if eik_w > 0:
                loss = loss + eik_w * model.field.eikonal()
            curv_w = scheduled(cfg.train.curvature_weight, step)
            if curv_w > 0:
                loss = loss + curv_w * model.field.curvature(cfg.train.curvature_band)
            z_w = scheduled(cfg.train.z_variance_weight, step)
            if z_w > 0:
                opaque = res.opacity.detach() > 0.5
                if opaque.any():
                    loss = loss + z_w * res.z_variance[opaque].mean()
            _check_finite(step, "loss", loss.detach(), ckpt_dir)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t3 = time.perf_counter()
            opt.step()
            for p in model.parameters():
                _check_finite(step, "a parameter", p.detach(), ckpt_dir)
            t4 = time.perf_counter()
            for k, dt in zip(timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                timings[k] += dt
            last = {
                "step": step,
                "loss": float(loss.detach()),
                "sds": float(s.loss.detach()),
                "orientation": float(res.orientation.detach()),
                "opacity": float(res.opacity.detach().mean()),
                "t_mean": float(s.t.float().mean()),
                "score_norm": float(s.score_norm.mean()),
                "sds_nonfinite": int(s.nonfinite),
                "lr": learning_rate(cfg, step),
            }
            log.write(json.dumps(last) + "\n")
            bar.set_postfix(loss=f"{last['loss']:.3g}", t=int(last["t_mean"]))
            if on_step:
                on_step(step, last)
            done = step + 1
            if done % every_preview == 0 or done == cfg.train.steps:
                from torchvision.utils import save_image

                img = preview(model, cfg, device)
                atomic_write(
                    out / "previews" / f"step{done:06d}.png",
                    lambda p, img=img: save_image(img, str(p), nrow=4, format="png"),
                )
            debug_every = cfg.train.guidance_debug_every
            if debug_every and (done % debug_every == 0 or done == cfg.train.steps):
                _guidance_strip(guidance, res.rgb[:1].detach(), c.cond[:1], c.uncond[:1], cfg, seed, done, out)
            if done % cfg.train.checkpoint_every == 0 and done < cfg.train.steps:
                log.flush()
                save_checkpoint(ckpt_dir, model, opt, done, ident)
            if stop_after is not None and done >= stop_after:
                log.flush()
                save_checkpoint(ckpt_dir, model, opt, done, ident)
                return {"stopped_at": done}
            if stop.signum is not None and done < cfg.train.steps:
                log.flush()
                save_checkpoint(ckpt_dir, model, opt, done, ident)
                raise Interrupted(
                    f"{signal.Signals(stop.signum).name} after step {done} of {cfg.train.steps}: checkpoint saved in "
                    f"{ckpt_dir}; run again to resume",
                    stop.signum,
                )
    model.field.set_step(None)  # the saved object is the fully unlocked field
    wall = time.perf_counter() - t_start
    ran = cfg.train.steps - start
    metrics = {
        **ident,
        "steps": cfg.train.steps,
        "resumed_from": start,
        "divergence_restarts": restart,
        "final_loss": last.get("loss"),
        "final_opacity": last.get("opacity"),
        "wall_seconds": wall,
        "steps_per_second": ran / wall if wall > 0 else None,
        "seconds_per_step": {k: v / max(ran, 1) for k, v in timings.items()},
        "device": str(device),
        "cfg_convention": cfg.guidance.convention,
        "guidance_scale": cfg.guidance.scale,
        "git_sha": git_sha(),
    }
    save_model(out / "model.safetensors", model, cfg, ident)
    atomic_write_json(out / "metrics.json", metrics)
    keep_final(ckpt_dir, out, final_record)
    return metrics


def _guidance_strip(
    guidance: Guidance, render: Tensor, cond: Tensor, uncond: Tensor, cfg: Config, seed: int, done: int, out: Path
):
    """previews/guidance-step<N>.png: what the prior makes of this step's first view (pipeline/guidance_debug.py),
    under that view's embeddings (plain CFG, also with Perp-Neg); its noise comes from its own seeded generator, so
    the training's random stream is untouched."""
    from torchvision.utils import save_image

    from pipeline.guidance_debug import strip

    g = torch.Generator().manual_seed(seed * 1_000_003 + done)
    img = strip(guidance, render, cond, uncond, cfg.guidance, g)
    atomic_write(out / "previews" / f"guidance-step{done:06d}.png", lambda p: save_image(img, str(p), format="png"))


def _truncate_log(path: Path, step: int) -> None:
    """Keep only log lines of steps before `step` (a resumed run rewrites the rest)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] < step]
    path.write_text("".join(ln + "\n" for ln in keep))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", required=True, help="resolved variant config (YAML)")
    ap.add_argument("--prompts", required=True, help="prompts.json from the prepare stage")
    ap.add_argument("--prompt-id", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--world-bank", default=None, help="bank .safetensors for guidance.name=world")
    args = ap.parse_args(argv)
    cfg = load_config(args.params)
    try:
        prompts = {p["id"]: p for p in read_prompts_json(args.prompts)["prompts"]}
    except PromptFileError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.prompt_id not in prompts:
        raise SystemExit(f"error: {args.prompts}: no prompt with id {args.prompt_id!r}")
    try:
        device = pick_device(cfg)
    except NoGPU as exc:
        raise SystemExit(f"error: {args.params}: {exc}") from None
    guidance = build_guidance(cfg, device, args.world_bank)
    from pipeline.tracking import live_training

    try:
        with live_training(cfg, args.prompt_id, prompts[args.prompt_id]["text"], args.seed, Path(args.out)) as hook:
            metrics = train(
                cfg,
                args.prompt_id,
                prompts[args.prompt_id]["text"],
                args.seed,
                args.out,
                guidance,
                on_step=hook,
                device=device,
            )
    except Interrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        raise SystemExit(128 + exc.signum) from None
    print(json.dumps({k: metrics[k] for k in ("prompt", "final_loss", "wall_seconds", "steps_per_second")}))


if __name__ == "__main__":
    main()
