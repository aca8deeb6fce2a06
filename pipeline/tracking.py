"""MLflow tracking: one experiment per benchmark, a parent run per variant, a child run per (prompt, seed).

Child runs hold the resolved params, per-step losses and timings, final metrics, previews, the turntable and the
mesh; evaluation metrics land on the child runs (per object) and on the parent (the variant's R-precision). Tags:
git SHA, params hash, variant, prompt id, seed, CFG convention.

Store: `tracking.uri`, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory (MLflow 3's
default). Parallel Snakemake jobs share the store: every write happens under an exclusive file lock next to the
SQLite file (or in the working directory), and per-step metrics are buffered and written in batches, so runs are
neither lost nor duplicated. `tracking.enabled: false` switches all of it off.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.config import Config

PARENT, CHILD = "variant", "object"


def tracking_uri(cfg: Config) -> str:
    return cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


@contextmanager
def _locked(uri: str) -> Iterator[None]:
    lock = Path(uri.removeprefix("sqlite:///") + ".lock") if uri.startswith("sqlite:///") else Path(".mlflow.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _client(cfg: Config):
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri), uri


def _experiment(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


def _find(client, exp_id: str, **tags: str):
    query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    runs = client.search_runs([exp_id], filter_string=query, max_results=2)
    return runs[0] if runs else None


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:500]
    return out


def parent_run(client, cfg: Config, variant: str) -> str:
    """Find or create the variant's parent run (call under the lock)."""
    exp_id = _experiment(client, cfg.prompts.benchmark)
    run = _find(client, exp_id, kind=PARENT, variant=variant)
    if run:
        return run.info.run_id
    run = client.create_run(
        exp_id,
        run_name=variant,
        tags={
            "kind": PARENT,
            "variant": variant,
            "params_hash": cfg.digest(),
            "cfg_convention": cfg.guidance.convention,
        },
    )
    from mlflow.entities import Param

    params = [Param(k, v) for k, v in _flatten(cfg.to_dict()).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i : i + 100])
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def child_run(client, cfg: Config, variant: str, prompt_id: str, seed: int) -> str | None:
    """The run id of an object's child run, or None if it has none."""
    exp_id = _experiment(client, cfg.prompts.benchmark)
    run = _find(client, exp_id, kind=CHILD, variant=variant, prompt_id=prompt_id, seed=str(seed))
    return run.info.run_id if run else None


@contextmanager
def tracked_training(
    cfg: Config, prompt_id: str, text: str, seed: int, out: Path
) -> Iterator[Callable[[int, dict[str, float]], None] | None]:
    """Context for one training job: yields a per-step hook (or None when tracking is off); on exit logs the
    buffered step metrics, final metrics and artifacts to the (prompt, seed) child run."""
    if not cfg.tracking.enabled:
        yield None
        return
    from mlflow.entities import Metric, Param

    from pipeline.train import git_sha

    variant = out.resolve().parents[1].name
    client, uri = _client(cfg)
    with _locked(uri):
        parent = parent_run(client, cfg, variant)
        exp_id = _experiment(client, cfg.prompts.benchmark)
        old = child_run(client, cfg, variant, prompt_id, seed)
        if old:  # a re-run replaces the earlier record of this object
            client.delete_run(old)
        run = client.create_run(
            exp_id,
            run_name=f"{prompt_id}/seed{seed}",
            tags={
                "mlflow.parentRunId": parent,
                "kind": CHILD,
                "variant": variant,
                "prompt_id": prompt_id,
                "seed": str(seed),
                "prompt": text,
                "git_sha": git_sha(),
                "params_hash": cfg.digest(),
                "cfg_convention": cfg.guidance.convention,
            },
        )
        run_id = run.info.run_id
        params = [Param(k, v) for k, v in _flatten(cfg.to_dict()).items()]
        for i in range(0, len(params), 100):
            client.log_batch(run_id, params=params[i : i + 100])
    buffer: list[Any] = []

    def hook(step: int, metrics: dict[str, float]) -> None:
        ts = int(time.time() * 1000)
        buffer.extend(Metric(k, float(v), ts, step) for k, v in metrics.items() if k != "step")

    status = "FAILED"
    try:
        yield hook
        status = "FINISHED"
    finally:
        with _locked(uri):
            for i in range(0, len(buffer), 1000):
                client.log_batch(run_id, metrics=buffer[i : i + 1000])
            mfile = out / "metrics.json"
            if mfile.exists():
                final = json.loads(mfile.read_text())
                flat = {k: v for k, v in _flatten(final).items() if _is_number(v)}
                client.log_batch(run_id, metrics=[Metric(f"final.{k}", float(v), 0, 0) for k, v in flat.items()])
                client.log_artifact(run_id, str(mfile))
            if (out / "previews").is_dir():
                client.log_artifacts(run_id, str(out / "previews"), "previews")
            client.set_terminated(run_id, status)


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def log_object_artifacts(cfg: Config, variant: str, prompt_id: str, seed: int, files: list[Path]) -> None:
    """Attach mesh / turntable / sheet files to the object's child run (no-op if tracking is off or no run)."""
    if not cfg.tracking.enabled:
        return
    client, uri = _client(cfg)
    with _locked(uri):
        run_id = child_run(client, cfg, variant, prompt_id, seed)
        if run_id:
            for f in files:
                if f.exists():
                    client.log_artifact(run_id, str(f), "object")


def log_evaluation(cfg: Config, variant: str, result: dict[str, Any]) -> None:
    """Per-object scores on the child runs; the variant's R-precision on the parent run."""
    if not cfg.tracking.enabled:
        return
    from mlflow.entities import Metric

    from pipeline.report import _short

    client, uri = _client(cfg)
    ts = int(time.time() * 1000)
    with _locked(uri):
        parent = parent_run(client, cfg, variant)
        summary = [
            Metric(f"rprecision.{_short(clip)}.{mode}", float(v["r_precision"]), ts, 0)
            for clip, modes in result["models"].items()
            for mode, v in modes.items()
        ]
        summary += [
            Metric(f"rprecision_stderr.{_short(clip)}.{mode}", float(v["stderr"]), ts, 0)
            for clip, modes in result["models"].items()
            for mode, v in modes.items()
        ]
        client.log_batch(parent, metrics=summary)
        for o in result["objects"]:
            run_id = child_run(client, cfg, variant, o["prompt_id"], o["seed"])
            if run_id:
                ms = [Metric(f"rprecision.{_short(o['clip'])}.{o['mode']}", float(o["score"]), ts, 0)]
                if "shape_score" in o:
                    ms.append(Metric(f"rprecision.{_short(o['clip'])}.geo_shape", float(o["shape_score"]), ts, 0))
                client.log_batch(run_id, metrics=ms)
