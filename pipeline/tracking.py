"""MLflow tracking that cannot race: jobs write files, one local process logs them.

Design (why): MLflow's SQLite store runs its schema migrations the first time a process opens a new database; two
processes doing so at once leave it half-migrated for good, and SQLite with `fcntl` locks is unsafe on a cluster's
shared filesystem. So no training, mesh, views or evaluation job ever opens the store. They write their records as
files (`metrics.json`, `log.jsonl`, `previews/`, `mesh.*`, `turntable.*`, `sheet.png`, `rprecision.json`), and the
`track` rule (a Snakemake *localrule*: one job, on the submitting machine, before the report, whose object cards
link to the runs) logs them with
:func:`log_benchmark`. A failure there cannot touch a training result: the files stay, and a rerun only re-runs
`track`. A new SQLite store is created in a temporary file and renamed into place, so a kill mid-creation leaves
nothing behind; every write is also under a file lock, for two workflows sharing one store on one machine.

Live logging: when `tracking.uri` (or $MLFLOW_TRACKING_URI) is a server (http/https), a training job also creates
its child run and logs per-step losses while it trains (a server serialises its own writes); it records the run id
in `tracking.json` and `track` completes that run instead of making another. Any tracking error in a job is a
warning, never a failed job.

Layout: one experiment per benchmark, a parent run per variant (resolved params, R-precision), a child run per
(prompt, seed) (params, per-step losses, timings, final metrics, previews, turntable, mesh, per-object scores).
Per-object constants (seed, guidance scale, convention, device) are params or tags, not metrics. Tags: git SHA,
params hash, variant, prompt id, seed, CFG convention, and `results_dir`, the object's folder.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.config import load as load_config
from pipeline.io import atomic_write_json, current_umask, fsync_dir
from pipeline.live_logging import (
    CHILD,
    LIVE_RECORD,
    experiment_id,
    log_metrics,
    new_client,
    object_tags,
    redact_text,
    redact_uri,
    tracking_uri,
)
from pipeline.metrics import GEOMETRY
from pipeline.prompts import read_prompts_json
from pipeline.records import RecordError, read_geometry, read_json, read_rprecision

PARENT = "variant"


class TrackingError(RuntimeError):
    """The tracking store could not be written; the results on disk are untouched."""


OBJECT_ARTIFACTS = (
    "turntable.mp4",
    "turntable.gif",
    "sheet.png",
    "mesh.glb",
    "mesh.ply",
    "mesh.obj",
    "mesh.mtl",
    "texture.png",
    "mesh.json",
    "views.json",
)
PARAM_KEYS = ("seed", "guidance_scale", "cfg_convention", "device", "steps", "resumed_from", "config_digest")
"""metrics.json entries that are per-object constants: logged as params, never as metrics."""


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


@contextmanager
def _locked(uri: str) -> Iterator[None]:
    db = _sqlite_path(uri)
    lock = db.with_name(db.name + ".lock") if db else Path(tempfile.gettempdir()) / "dreamfusion-mlflow.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_store(uri: str) -> None:
    """Create a missing SQLite store atomically (migrated in a temp file, then renamed); call under the lock."""
    db = _sqlite_path(uri)
    if db is None or db.exists():
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{db.name}.", suffix=".creating", dir=db.parent)
    os.close(fd)
    os.unlink(tmp)  # MLflow must create the file itself
    try:
        client = new_client(f"sqlite:///{tmp}")
        client.search_experiments()  # runs the migrations
        client._tracking_client.store.engine.dispose()
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, db)
        fsync_dir(db.parent)
    finally:
        Path(tmp).unlink(missing_ok=True)


def client_for(cfg: Config):
    """(MlflowClient, uri) with the store guaranteed to exist; call under :func:`_locked`."""
    uri = tracking_uri(cfg)
    ensure_store(uri)
    return new_client(uri), uri


def _find_all(client, exp_id: str, results_dir: Path, **tags: str) -> list:
    """Runs with these tags that this checkout made: those whose `results_dir` tag is `results_dir`. Another clone
    sharing the store tracks runs of the same names from another folder, and those are never touched."""
    query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    runs = client.search_runs([exp_id], filter_string=query, max_results=1000)
    where = str(results_dir.resolve())
    return [r for r in runs if r.data.tags.get("results_dir") == where]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:500]
    return out


def _log_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# --------------------------------------------------------------------------- logging the records (track rule)


TIMES = ("started_at", "finished_at")
"""metrics.json's wall-clock start and end of training (unix seconds): the runs' own start and end times."""


def _times(folder: Path) -> tuple[int | None, int | None]:
    """(start, end) of the object's training in ms since the epoch, from its metrics.json (None if unknown)."""
    try:
        record = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return None, None
    start, end = (int(float(record[k]) * 1000) if _number(record.get(k)) else None for k in TIMES)
    return start, end


def _object_run(client, exp_id: str, parent: str, cfg: Config, variant: str, folder: Path, text: str) -> str:
    """The object's child run: the live run recorded in tracking.json, else a new one (replacing older records)."""
    prompt_id, seed = folder.parent.name, int(folder.name.removeprefix("seed"))
    live = folder / LIVE_RECORD
    old = _find_all(client, exp_id, folder, kind=CHILD, variant=variant, prompt_id=prompt_id, seed=str(seed))
    keep = json.loads(live.read_text())["run_id"] if live.exists() else None
    for run in old:
        if run.info.run_id != keep:
            client.delete_run(run.info.run_id)
    if keep and any(r.info.run_id == keep for r in old):
        client.set_tag(keep, "mlflow.parentRunId", parent)
        client.set_tag(keep, "results_dir", str(folder.resolve()))
        return keep
    tags = object_tags(cfg, variant, prompt_id, seed, text, folder) | {"mlflow.parentRunId": parent}
    start, _ = _times(folder)
    run_id = client.create_run(exp_id, run_name=f"{prompt_id}/seed{seed}", start_time=start, tags=tags).info.run_id
    _log_params(client, run_id, _flatten(cfg.to_dict()))
    return run_id


def _log_object(client, run_id: str, folder: Path, live: bool) -> None:
    from mlflow.entities import Metric

    record = read_json(folder / "metrics.json")
    ts = int(time.time() * 1000)
    if not live and (folder / "log.jsonl").exists():
        steps = _log_lines(folder / "log.jsonl")
        history = [
            Metric(k, float(v), int(s["time"] * 1000) if _number(s.get("time")) else ts, s["step"])
            for s in steps
            for k, v in s.items()
            if k not in ("step", "time") and _number(v)
        ]
        log_metrics(client, run_id, history)
    _log_params(client, run_id, {f"object.{k}": str(record[k]) for k in PARAM_KEYS if k in record})
    measured = _flatten({k: v for k, v in record.items() if k not in PARAM_KEYS and k not in TIMES})
    final = [Metric(f"final.{k}", float(v), ts, 0) for k, v in measured.items() if _float(v) is not None]
    log_metrics(client, run_id, final)
    geometry = folder / "geometry.json"
    if geometry.exists():
        g = read_geometry(geometry)
        log_metrics(
            client, run_id, [Metric(f"geometry.{k}", float(g[k]), ts, 0) for k in GEOMETRY if _number(g.get(k))]
        )
    views = folder / "views.json"
    if views.exists():  # the exported mesh against the field (every benchmark, not only the world)
        v = json.loads(views.read_text())
        agreement = ("mesh_silhouette_iou", "mesh_colour_psnr", "vertex_colour_psnr")
        log_metrics(client, run_id, [Metric(f"views.{k}", float(v[k]), ts, 0) for k in agreement if _number(v.get(k))])
    client.log_artifact(run_id, str(folder / "metrics.json"))
    if (folder / "previews").is_dir():
        client.log_artifacts(run_id, str(folder / "previews"), "previews")
    for name in OBJECT_ARTIFACTS:
        if (folder / name).exists():
            client.log_artifact(run_id, str(folder / name), "object")


def _log_lines(path: Path) -> list[dict[str, Any]]:
    """log.jsonl's step records; a torn line (a job killed mid-write) is skipped with a warning, not a traceback."""
    steps = []
    for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            record = None
            warnings.warn(f"{path}:{i}: not a JSON line; skipped", stacklevel=2)
        if isinstance(record, dict) and "step" in record:
            steps.append(record)
    return steps


def _float(v: str) -> float | None:
    try:
        return float(v)
    except ValueError:
        return None


def _log_evaluation(client, parent: str, runs: dict[tuple[str, int], str], result: dict[str, Any]) -> None:
    from mlflow.entities import Metric

    from pipeline.metrics import clip_short_name as _short

    ts = int(time.time() * 1000)
    summary = []
    for clip, modes in result["models"].items():
        for mode, v in modes.items():
            summary.append(Metric(f"rprecision.{_short(clip)}.{mode}", float(v["r_precision"]), ts, 0))
            summary.append(Metric(f"rprecision_stderr.{_short(clip)}.{mode}", float(v["stderr"]), ts, 0))
    for k, v in result.get("geometry", {}).get("summary", {}).items():
        if isinstance(v, dict):  # a second stage's run: the first stage's means as geometry.first_stage.<measure>
            summary += [Metric(f"geometry.{k}.{m}", float(x), ts, 0) for m, x in v.items() if x is not None]
        elif v is not None:
            summary.append(Metric(f"geometry.{k}", float(v), ts, 0))
    log_metrics(client, parent, summary)
    per_run: dict[str, list] = {}
    for o in result["objects"]:
        run_id = runs.get((o["prompt_id"], o["seed"]))
        if run_id is None:
            continue
        ms = per_run.setdefault(run_id, [])
        ms.append(Metric(f"rprecision.{_short(o['clip'])}.{o['mode']}", float(o["score"]), ts, 0))
        if "shape_score" in o:
            ms.append(Metric(f"rprecision.{_short(o['clip'])}.geo_shape", float(o["shape_score"]), ts, 0))
    for run_id, ms in per_run.items():
        log_metrics(client, run_id, ms)


def log_variant(client, cfg: Config, variant_dir: Path, texts: dict[str, str]) -> dict[str, Any]:
    """Log one variant's records (its config.yaml, objects and rprecision.json); return {parent, objects}."""
    from mlflow.entities import RunStatus

    variant = variant_dir.name
    exp_id = experiment_id(client, cfg.prompts.benchmark)
    parents = _find_all(client, exp_id, variant_dir, kind=PARENT, variant=variant)
    for run in parents:
        client.delete_run(run.info.run_id)
    tags = {
        "kind": PARENT,
        "variant": variant,
        "params_hash": cfg.digest(),
        "cfg_convention": cfg.guidance.convention,
        "results_dir": str(variant_dir.resolve()),
    }
    objects = sorted(m.parent for m in variant_dir.glob("*/seed*/metrics.json"))
    times = [_times(folder) for folder in objects]
    starts, ends = [t[0] for t in times if t[0]], [t[1] for t in times if t[1]]
    parent = client.create_run(exp_id, run_name=variant, start_time=min(starts, default=None), tags=tags).info.run_id
    _log_params(client, parent, _flatten(cfg.to_dict()))
    runs: dict[tuple[str, int], str] = {}
    for folder, (_, end) in zip(objects, times, strict=True):
        key = (folder.parent.name, int(folder.name.removeprefix("seed")))
        run_id = _object_run(client, exp_id, parent, cfg, variant, folder, texts.get(key[0], ""))
        _log_object(client, run_id, folder, live=(folder / LIVE_RECORD).exists())
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED), end_time=end)
        runs[key] = run_id
    rp = variant_dir / "rprecision.json"
    if rp.exists():
        _log_evaluation(client, parent, runs, read_rprecision(rp))
    client.set_terminated(parent, "FINISHED", end_time=max(ends, default=None))
    return {"parent": parent, "objects": {f"{p}/seed{s}": r for (p, s), r in runs.items()}}


def log_benchmark(variant_dirs: list[Path], prompts: Path, out: Path) -> dict[str, Any]:
    """The `track` rule: log every variant's records to MLflow in this one process; write {variant: run ids}."""
    texts = {p["id"]: p["text"] for p in read_prompts_json(prompts)["prompts"]}
    record: dict[str, Any] = {"variants": {}}
    cfgs = {d: load_config(d / "config.yaml") for d in variant_dirs}
    enabled = [d for d, c in cfgs.items() if c.tracking.enabled]
    if enabled:
        cfg0 = cfgs[enabled[0]]
        uri = tracking_uri(cfg0)
        try:
            with _locked(uri):
                client, uri = client_for(cfg0)
                record["uri"] = redact_uri(uri)
                record["experiment"] = cfg0.prompts.benchmark
                record["experiment_id"] = experiment_id(client, cfg0.prompts.benchmark)
                for d in enabled:
                    record["variants"][d.name] = log_variant(client, cfgs[d], d, texts)
        except RecordError:
            raise
        except Exception as exc:  # the store refused (not a database, read-only, unreachable): one line
            first = (redact_text(str(exc)).strip().splitlines() or [""])[0][:300]
            raise TrackingError(
                f"MLflow tracking to {redact_uri(uri)} failed ({type(exc).__name__}: {first}); the results are "
                "untouched: fix the store (tracking.uri) and re-run, and only `track` runs again"
            ) from None
    atomic_write_json(out, record)
    return record


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Log a benchmark's result files to MLflow (the `track` rule).")
    ap.add_argument("--variants", nargs="+", required=True, help="results/<bench>/<variant> folders")
    ap.add_argument("--prompts", required=True, help="prompts.json")
    ap.add_argument("--out", required=True, help="JSON record of the run ids written")
    args = ap.parse_args(argv)
    try:
        record = log_benchmark([Path(v) for v in args.variants], Path(args.prompts), Path(args.out))
    except RecordError as exc:
        raise SystemExit(f"error: {exc}") from None
    except TrackingError as exc:
        raise SystemExit(f"error: {exc}") from None
    n = sum(len(v["objects"]) for v in record["variants"].values())
    print(f"logged {len(record['variants'])} variants, {n} objects to {record.get('uri', '(tracking disabled)')}")


if __name__ == "__main__":
    sys.exit(main())
