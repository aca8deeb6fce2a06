"""SDS-NeRF training of one or several (prompt, seed) objects of one variant: DreamFusion's optimisation loop.

Each step: sample `batch_views` paper cameras and shading modes, render, add the view suffix to the prompt, take the
SDS gradient from the guidance model, add the orientation and opacity regularisers, and take an Adam step with
warm-up and cosine decay. All randomness of step k comes from a generator seeded with (seed, k), so a run resumed
from a checkpoint reaches exactly the weights of an uninterrupted run on a CPU.

Outputs in --out: model.safetensors (field + background, with the resolved config in its metadata), metrics.json,
log.jsonl (one line a step), previews/ (a render every 10 %), checkpoint/ (resumable; when done it keeps only hard
links to the final model and metrics, so a finished object that Snakemake discards as incomplete after an interrupt
is restored at once on the next run instead of retrained). SIGINT/SIGTERM stop after the current step with a
checkpoint there (exit 130/143); the next run resumes from it.

Several objects in one job (`train.objects_per_job`, repeated --prompt-id/--seed/--out): each keeps all of the above
to itself (its outputs in its own --out, its random stream, its resume point) and they share one batched call of the
guidance model per step, which is where a GPU waits; an object that diverges stops alone.

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
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from pipeline import losses
from pipeline.checkpoint import (
    CheckpointError,
    CheckpointMismatch,
    checkpoint_step,
    identity,
    keep_final,
    load_checkpoint,
    restore_final,
    save_checkpoint,
)
from pipeline.config import Config
from pipeline.config import load as load_config
from pipeline.devices import NoGPU, pick_device
from pipeline.guidance import Guidance, GuidanceLoadError, build_guidance
from pipeline.guidance.prompting import ViewPrompter
from pipeline.io import atomic_write, atomic_write_json, atomic_write_text, remove_stale_temps
from pipeline.nerf.cameras import orbit_cameras, sample_cameras
from pipeline.nerf.field import require_analytic_normals
from pipeline.nerf.model import Model, initial_model, save_model
from pipeline.nerf.renderer import RenderOutput, Shading, render, sample_shading
from pipeline.prompts import PromptFileError, read_prompts_json
from pipeline.provenance import git_sha, module_sources
from pipeline.sds import TimestepSchedule, sds_from_x


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


def code_digest() -> str:
    """Hash of the source files training runs (the same set Snakemake watches): a kept final model is only reused
    by the code that made it."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted(module_sources("pipeline.train", root)):
        h.update(f.encode() + b"\0" + (root / f).read_bytes())
    return h.hexdigest()[:16]


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


def _require_writable(out: Path) -> None:
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


def _open_log(out: Path, start: int) -> tuple[Path, float]:
    """log.jsonl as a resume at `start` continues it (new when starting, cut back to the steps before `start`), and
    when the run started (the wall-clock time of its first step, for a resumed run the first run's)."""
    log_path = out / "log.jsonl"
    if start == 0:
        log_path.unlink(missing_ok=True)
        return log_path, time.time()
    _truncate_log(log_path, start)
    first = log_path.read_text(encoding="utf-8").split("\n", 1)[0] if log_path.exists() else ""
    try:
        return log_path, float(json.loads(first)["time"])
    except (ValueError, KeyError, TypeError):
        return log_path, time.time()


@dataclass
class Target:
    """One object of a training job: a (prompt, seed) and its output folder."""

    prompt_id: str
    text: str
    seed: int
    out: Path
    init: Callable[[], Model] | None = None
    """The model training starts from (default: `initial_model` of the seed), e.g. the first stage's object."""
    init_digest: str = ""
    """What `init` starts from (a file's sha256), part of the checkpoint identity: a checkpoint started from another
    first stage is not resumed."""


@dataclass
class Run:
    """What one object's optimisation holds between steps (the guidance model is shared by a job's objects)."""

    cfg: Config
    model: Model
    opt: torch.optim.Optimizer
    prompter: ViewPrompter
    schedule: TimestepSchedule
    device: torch.device
    target: Target
    ident: dict[str, Any]
    start: int = 0
    restart: int = 0
    on_step: Callable[[int, dict[str, float]], None] | None = None
    last: dict[str, float] = field(default_factory=dict)
    failed: TrainingDiverged | None = None
    timings: dict[str, float] = field(
        default_factory=lambda: {"render": 0.0, "guidance": 0.0, "backward": 0.0, "optimiser": 0.0}
    )

    @property
    def ckpt_dir(self) -> Path:
        return self.target.out / "checkpoint"


@dataclass
class _Rendered:
    """One object's half of a step before the shared guidance call."""

    res: RenderOutput
    cond: Any
    t: Tensor
    weights: dict[str, float]


def _render(run: Run, step: int, g: torch.Generator) -> _Rendered:
    """Cameras, shading, the render and the step's conditioning and timesteps of one object (in this order from its
    own generator, so an object draws the same numbers whichever job it shares)."""
    cfg, model = run.cfg, run.model
    for group in run.opt.param_groups:
        group["lr"] = learning_rate(cfg, step) * group["lr_scale"]
    model.field.set_step(step)
    cams = sample_cameras(cfg.camera, cfg.train.batch_views, g).to(run.device)
    shading = sample_shading(cfg.shading, step, cfg.train.batch_views, g)
    w = losses.weights(cfg.train, step)
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
        need_normals=shading.needs_normals or w["orientation"] > 0 or w["normal_smoothness"] > 0,
    )
    c = run.prompter(cams.elevation.tolist(), cams.azimuth.tolist())
    return _Rendered(res, c, run.schedule(step, cfg.train.batch_views, g), w)


def _cat(parts: list[Tensor | None]) -> Tensor | None:
    return None if parts[0] is None else torch.cat(parts)


def sds_step(
    runs: list[Run], guidance: Guidance, step: int, gens: list[torch.Generator]
) -> list[tuple[dict[str, float], RenderOutput, Any] | None]:
    """One optimisation step of a job's objects: each renders its own views, then one batched guidance call (VAE
    encode, U-Net) takes the SDS gradient of all of them, then each adds its regularisers and takes its own Adam step.
    Returns per object its log record, render and conditioning, or None where it diverged at this step (its
    `failed` is set; the others go on). The objects share no parameter, so the backward of their summed losses gives
    each exactly its own gradient."""
    cfg = runs[0].cfg
    parts = []
    for run, g in zip(runs, gens, strict=True):
        r0 = time.perf_counter()
        parts.append(_render(run, step, g))
        run.timings["render"] += time.perf_counter() - r0
    t1 = time.perf_counter()
    x = guidance.encode(torch.cat([p.res.rgb for p in parts]))
    b = cfg.train.batch_views
    spans = [slice(i * b, (i + 1) * b) for i in range(len(runs))]
    noise = torch.cat(
        [torch.randn(x[sl].shape, generator=g, dtype=torch.float32) for sl, g in zip(spans, gens, strict=True)]
    )
    s = sds_from_x(
        guidance,
        x,
        torch.cat([p.cond.cond for p in parts]),
        torch.cat([p.cond.uncond for p in parts]),
        torch.cat([p.t for p in parts]),
        noise.to(x.device),
        cfg.guidance,
        step,
        _cat([p.cond.negatives for p in parts]),
        _cat([p.cond.neg_weights for p in parts]),
    )
    target = (x - s.grad).detach()
    t2 = time.perf_counter()
    total, results, ok = None, [], []
    for run, part, sl in zip(runs, parts, spans, strict=True):
        sds_loss = 0.5 * ((x[sl] - target[sl]) ** 2).sum()
        sds_term = sds_loss / b if cfg.train.sds_reduction == "mean" else sds_loss
        loss = losses.add_regularisers(sds_term, run.model, part.res, cfg.train, part.weights)
        try:
            _check_finite(step, "loss", loss.detach(), run.ckpt_dir)
        except TrainingDiverged as exc:
            run.failed = exc
            results.append(None)
            continue
        total = loss if total is None else total + loss
        ok.append(run)
        results.append(
            {
                "step": step,
                "loss": float(loss.detach()),
                "sds": float(sds_loss.detach()),
                "orientation": float(part.res.orientation.detach()),
                "opacity": float(part.res.opacity.detach().mean()),
                "t_mean": float(s.t[sl].float().mean()),
                "score_norm": float(s.score_norm[sl].mean()),
                "sds_nonfinite": int(s.nonfinite[sl].sum()),
                "lr": learning_rate(cfg, step),
            }
        )
    for run in runs:
        run.opt.zero_grad(set_to_none=True)
    if total is not None:
        total.backward()
    t3 = time.perf_counter()
    for run in ok:
        o0 = time.perf_counter()
        run.opt.step()
        try:
            for p in run.model.parameters():
                _check_finite(step, "a parameter", p.detach(), run.ckpt_dir)
        except TrainingDiverged as exc:
            run.failed = exc
        run.timings["optimiser"] += time.perf_counter() - o0
    n = len(runs)
    for run in runs:  # the shared calls, split evenly
        run.timings["guidance"] += (t2 - t1) / n
        run.timings["backward"] += (t3 - t2) / n
    now = round(time.time(), 3)
    out = []
    for run, part, rec in zip(runs, parts, results, strict=True):
        if rec is None or run.failed is not None:
            out.append(None)
            continue
        out.append(({**rec, "time": now}, part.res, part.cond))
    return out


def _write_previews(run: Run, guidance: Guidance, done: int, res: RenderOutput, c: Any) -> None:
    """previews/step<N>.png every `preview_every` steps and at the end; the guidance strip when asked for."""
    cfg, out = run.cfg, run.target.out
    every_preview = cfg.train.preview_every or max(1, cfg.train.steps // 10)
    if done % every_preview == 0 or done == cfg.train.steps:
        from torchvision.utils import save_image

        img = preview(run.model, cfg, run.device)
        atomic_write(
            out / "previews" / f"step{done:06d}.png",
            lambda p, img=img: save_image(img, str(p), nrow=4, format="png"),
        )
    debug_every = cfg.train.guidance_debug_every
    if debug_every and (done % debug_every == 0 or done == cfg.train.steps):
        _guidance_strip(guidance, res.rgb[:1].detach(), c.cond[:1], c.uncond[:1], cfg, run.target.seed, done, out)


def _final_metrics(run: Run, wall: float, objects: int) -> dict[str, Any]:
    cfg = run.cfg
    ran = cfg.train.steps - run.start
    return {
        **run.ident,
        "steps": cfg.train.steps,
        "resumed_from": run.start,
        "divergence_restarts": run.restart,
        "final_loss": run.last.get("loss"),
        "final_opacity": run.last.get("opacity"),
        "wall_seconds": wall,
        "steps_per_second": ran / wall if wall > 0 else None,
        "seconds_per_step": {k: v / max(ran, 1) for k, v in run.timings.items()},
        "objects_in_job": objects,
        "device": str(run.device),
        "cfg_convention": cfg.guidance.convention,
        "guidance_scale": cfg.guidance.scale,
        "git_sha": git_sha(),
    }


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
    target = Target(prompt_id, text, seed, Path(out))
    return train_many(cfg, [target], guidance, [on_step], stop_after, device)[0]


def _final_record(cfg: Config, ident: dict[str, Any]) -> dict[str, Any]:
    """What a kept final model must match to be restored instead of retrained: the run's identity and the code."""
    return {**ident, "steps": cfg.train.steps, "code_digest": code_digest()}


def _start_run(cfg: Config, target: Target, guidance: Guidance, device: torch.device) -> Run | dict[str, Any]:
    """One object's optimiser state, resumed from its checkpoint; or its metrics when it had already finished (its
    final outputs restored from the checkpoint folder)."""
    _require_writable(target.out)
    ident = identity(cfg, target.prompt_id, target.text, target.seed)
    if target.init_digest:
        ident["init"] = target.init_digest
    ckpt_dir = target.out / "checkpoint"
    for folder in (target.out, ckpt_dir, target.out / "previews"):
        remove_stale_temps(folder)  # left by a job killed mid-write; this job is the folder's only writer
    restored = restore_final(ckpt_dir, target.out, _final_record(cfg, ident))
    if restored is not None:
        return restored
    torch.manual_seed(target.seed)
    model = (target.init() if target.init else initial_model(cfg, target.seed)).to(device)
    opt = optimizer(cfg, model)
    start = load_checkpoint(ckpt_dir, model, opt, ident, cfg.train.steps)
    schedule = TimestepSchedule(cfg.schedule, guidance.alphas_cumprod, cfg.train.steps)
    prompter = ViewPrompter(guidance, target.text, cfg.guidance)
    return Run(cfg, model, opt, prompter, schedule, device, target, ident, start, _restarts(ckpt_dir))


def _finish(run: Run, wall: float, objects: int, started_at: float) -> dict[str, Any]:
    """Write the object's model and metrics and keep them in its checkpoint folder."""
    out = run.target.out
    run.model.field.set_step(None)  # the saved object is the fully unlocked field
    metrics = _final_metrics(run, wall, objects)
    metrics |= {"started_at": round(started_at, 3), "finished_at": round(time.time(), 3)}
    save_model(out / "model.safetensors", run.model, run.cfg, run.ident)
    atomic_write_json(out / "metrics.json", metrics)
    keep_final(run.ckpt_dir, out, _final_record(run.cfg, run.ident))
    return metrics


def train_many(
    cfg: Config,
    targets: list[Target],
    guidance: Guidance | None = None,
    on_step: list[Callable[[int, dict[str, float]], None] | None] | None = None,
    stop_after: int | None = None,
    device: torch.device | None = None,
) -> list[dict[str, Any]]:
    """Optimise several objects of one config in one process (`train.objects_per_job`), sharing one batched guidance
    call per step; each keeps its own field, optimiser, random stream, log, checkpoints and outputs, resumes on its
    own, and one that diverges stops alone: the others finish, then TrainingDiverged names it. Returns each object's
    final metrics, in the order of `targets`."""
    if len({(t.prompt_id, t.seed) for t in targets}) != len(targets) or len({t.out for t in targets}) != len(targets):
        raise ValueError("train_many: each (prompt, seed) and output folder may appear once in a job")
    device = device or pick_device(cfg)
    hooks = on_step or [None] * len(targets)
    guidance = guidance or build_guidance(cfg, device)
    if cfg.nerf.normals == "analytic" and cfg.nerf.lookup == "grid_sample":
        require_analytic_normals(device)
    results: dict[int, dict[str, Any]] = {}
    runs: list[tuple[int, Run]] = []
    for i, target in enumerate(targets):
        started = _start_run(cfg, target, guidance, device)
        if isinstance(started, dict):
            results[i] = started
        else:
            started.on_step = hooks[i]
            runs.append((i, started))
    if runs:
        for _, run in runs:
            guidance.embed(run.prompter.texts())
        guidance.release_text_encoder()  # every text this job needs is cached
        results |= _loop([r for _, r in runs], [i for i, _ in runs], guidance, stop_after)
    failed = [r.failed for _, r in runs if r.failed is not None]
    if len(failed) == 1 and len(targets) == 1:
        raise failed[0]
    if failed:
        names = "; ".join(f"{r.target.prompt_id}/seed{r.target.seed}: {r.failed}" for _, r in runs if r.failed)
        raise TrainingDiverged(f"{len(failed)} of {len(targets)} objects diverged (the others finished): {names}")
    return [results[i] for i in range(len(targets))]


def _loop(runs: list[Run], index: list[int], guidance: Guidance, stop_after: int | None) -> dict[int, dict[str, Any]]:
    """The step loop over a job's unfinished objects, from the earliest resume point; each object joins at its own."""
    cfg = runs[0].cfg
    first = min(r.start for r in runs)
    starts = {id(r): _open_log(r.target.out, r.start) for r in runs}
    t_start = time.perf_counter()
    bar = tqdm(
        range(first, cfg.train.steps),
        initial=first,
        total=cfg.train.steps,
        desc=runs[0].target.prompt_id if len(runs) == 1 else f"{len(runs)} objects",
        leave=False,
        disable=os.environ.get("TQDM_DISABLE") == "1",
    )
    results: dict[int, dict[str, Any]] = {}
    with ExitStack() as stack, _StopRequests() as stop:
        logs = {id(r): stack.enter_context(open(starts[id(r)][0], "a", encoding="utf-8")) for r in runs}
        for step in bar:
            active = [r for r in runs if r.failed is None and r.start <= step]
            if not active:
                break
            done = step + 1
            stepped = sds_step(active, guidance, step, [step_generator(r.target.seed, step, r.restart) for r in active])
            for run, result in zip(active, stepped, strict=True):
                if result is None:
                    continue
                run.last, res, c = result
                logs[id(run)].write(json.dumps(run.last) + "\n")
                if run.on_step:
                    run.on_step(step, run.last)
                _write_previews(run, guidance, done, res, c)
            bar.set_postfix(loss=f"{sum(r.last.get('loss', 0.0) for r in active) / len(active):.3g}")
            stopped = stop_after is not None and done >= stop_after
            interrupted = stop.signum is not None and done < cfg.train.steps
            if stopped or interrupted or (done % cfg.train.checkpoint_every == 0 and done < cfg.train.steps):
                for run in active:
                    if run.failed is None:
                        logs[id(run)].flush()
                        save_checkpoint(run.ckpt_dir, run.model, run.opt, done, run.ident)
            if stopped:
                return {i: {"stopped_at": done} for i in index}
            if interrupted:
                where = runs[0].ckpt_dir if len(runs) == 1 else "each object's checkpoint folder"
                raise Interrupted(
                    f"{signal.Signals(stop.signum).name} after step {done} of {cfg.train.steps}: checkpoint saved in "
                    f"{where}; run again to resume",
                    stop.signum,
                )
    wall = time.perf_counter() - t_start
    for i, run in zip(index, runs, strict=True):
        if run.failed is None:
            results[i] = _finish(run, wall, len(runs), starts[id(run)][1])
    return results


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


def _log_step(line: str) -> int | None:
    """The step of one log.jsonl line; None for a line a kill or a full disk cut short."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _truncate_log(path: Path, step: int) -> None:
    """Keep only log lines of steps before `step` (a resumed run rewrites the rest). A partial line (the job died
    mid-write, or the disk was full) is dropped, as a journal drops a torn record; the step it described is re-run."""
    if not path.exists():
        return
    keep = []
    for ln in path.read_text(encoding="utf-8", errors="replace").splitlines():
        k = _log_step(ln) if ln.strip() else None
        if k is not None and k < step:
            keep.append(ln)
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def _targets(args: argparse.Namespace) -> list[Target]:
    """The job's objects from --prompt-id/--seed/--out (one each, or one per object)."""
    try:
        prompts = {p["id"]: p for p in read_prompts_json(args.prompts)["prompts"]}
    except PromptFileError as exc:
        raise SystemExit(f"error: {exc}") from None
    n = len(args.prompt_id)
    if len(args.seed) != n or len(args.out) != n:
        raise SystemExit(
            f"error: {n} --prompt-id, {len(args.seed)} --seed and {len(args.out)} --out given; give one of each per "
            "object, in the same order"
        )
    for pid in args.prompt_id:
        if pid not in prompts:
            raise SystemExit(f"error: {args.prompts}: no prompt with id {pid!r}")
    return [
        Target(pid, prompts[pid]["text"], seed, Path(out))
        for pid, seed, out in zip(args.prompt_id, args.seed, args.out, strict=True)
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", required=True, help="resolved variant config (YAML)")
    ap.add_argument("--prompts", required=True, help="prompts.json from the prepare stage")
    ap.add_argument("--prompt-id", required=True, nargs="+", help="one per object the job trains")
    ap.add_argument("--seed", type=int, required=True, nargs="+", help="one per object, in the same order")
    ap.add_argument("--out", required=True, nargs="+", help="one output folder per object, in the same order")
    ap.add_argument("--world-bank", default=None, help="bank .safetensors for guidance.name=world")
    args = ap.parse_args(argv)
    cfg = load_config(args.params)
    targets = _targets(args)
    try:
        device = pick_device(cfg)
    except NoGPU as exc:
        raise SystemExit(f"error: {args.params}: {exc}") from None
    try:
        guidance = build_guidance(cfg, device, args.world_bank)
    except GuidanceLoadError as exc:
        raise SystemExit(f"error: {exc}") from None
    from pipeline.live_logging import live_training

    try:
        with ExitStack() as stack:
            hooks = [stack.enter_context(live_training(cfg, t.prompt_id, t.text, t.seed, t.out)) for t in targets]
            metrics = train_many(cfg, targets, guidance, hooks, device=device)
    except Interrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        raise SystemExit(128 + exc.signum) from None
    except (CheckpointError, CheckpointMismatch, TrainingDiverged) as exc:
        raise SystemExit(f"error: {exc}") from None
    except OSError as exc:  # a full disk, a read-only folder: the last checkpoint is intact, a re-run resumes there
        where = f"{exc.filename}: " if exc.filename else ""
        raise SystemExit(
            f"error: {where}{exc.strerror or exc}; free space or fix the folder's permissions and run again: training "
            "resumes from each object's last checkpoint (<out>/checkpoint)"
        ) from None
    for m in metrics:
        print(json.dumps({k: m[k] for k in ("prompt", "final_loss", "wall_seconds", "steps_per_second")}))


if __name__ == "__main__":
    main()
