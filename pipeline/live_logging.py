"""Live MLflow logging from a training job, for a tracking server only (the `track` rule logs everything else).

Kept apart from `pipeline.tracking` so that training imports only this: editing how results are logged after the
fact re-runs the `track` rule, never a training job. Credentials never leave memory: a URI is written and shown with
its user and password removed (give them to MLflow through MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, as
its documentation recommends), and an unreachable server fails within seconds, not minutes.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pipeline.config import Config
from pipeline.io import atomic_write_json
from pipeline.provenance import git_sha

CHILD = "object"
LIVE_RECORD = "tracking.json"
"""Written by a training job that logged live to a server: {"run_id": ..., "uri": ...}."""


def redact_text(text: str) -> str:
    """Any text (an exception message quoting a URL) with the user:password@ of its URLs removed."""
    return re.sub(r"(?<=//)[^/@\s]+@", "", text)


def redact_uri(uri: str) -> str:
    """The URI with any user:password@ removed (what may be written to a file, a log or a page)."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def tracking_uri(cfg: Config) -> str:
    return cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def is_server(uri: str) -> bool:
    """A tracking server serialises writes itself, so jobs may log to it while they run."""
    return uri.startswith(("http://", "https://", "databricks"))


HTTP_TIMEOUT_S = "5"
HTTP_RETRIES = "1"


def new_client(uri: str):
    """An MlflowClient that gives up on an unreachable server within seconds (a few retries of 5 s at most)."""
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", HTTP_TIMEOUT_S)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", HTTP_RETRIES)
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


def log_metrics(client, run_id: str, metrics: list) -> None:
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])


def object_tags(cfg: Config, variant: str, prompt_id: str, seed: int, text: str, folder: Path) -> dict[str, str]:
    return {
        "kind": CHILD,
        "variant": variant,
        "prompt_id": prompt_id,
        "seed": str(seed),
        "prompt": text,
        "git_sha": git_sha(),
        "params_hash": cfg.digest(),
        "cfg_convention": cfg.guidance.convention,
        "results_dir": str(folder.resolve()),
    }


# --------------------------------------------------------------------------- live logging (server only)


@contextmanager
def live_training(
    cfg: Config, prompt_id: str, text: str, seed: int, out: Path
) -> Iterator[Callable[[int, dict[str, float]], None] | None]:
    """For a tracking server only: a per-step hook that logs losses live to the object's child run (flushed in
    batches); the run id goes to `out/tracking.json` for :func:`log_benchmark`. Yields None otherwise. Errors are
    warnings: tracking never fails a training job."""
    uri = tracking_uri(cfg)
    (out / LIVE_RECORD).unlink(missing_ok=True)  # a record from an earlier run of this object is stale
    if not (cfg.tracking.enabled and is_server(uri)):
        yield None
        return
    try:
        from mlflow.entities import Metric

        client = new_client(uri)
        exp_id = experiment_id(client, cfg.prompts.benchmark)
        variant = out.resolve().parents[1].name
        tags = object_tags(cfg, variant, prompt_id, seed, text, out) | {"live": "true"}
        run_id = client.create_run(exp_id, run_name=f"{prompt_id}/seed{seed}", tags=tags).info.run_id
        atomic_write_json(out / LIVE_RECORD, {"run_id": run_id, "uri": redact_uri(uri)})
    except Exception as exc:  # tracking must never fail training
        warnings.warn(f"live MLflow logging to {redact_uri(uri)} disabled: {redact_text(str(exc))}", stacklevel=2)
        yield None
        return
    buffer: list[Any] = []

    def flush() -> None:
        try:
            log_metrics(client, run_id, buffer)
        except Exception as exc:  # a lost live batch is logged again by `track`
            warnings.warn(
                f"MLflow: could not log {len(buffer)} step metrics live ({redact_text(str(exc))})", stacklevel=2
            )
        buffer.clear()

    def hook(step: int, metrics: dict[str, float]) -> None:
        ts = int(metrics.get("time", time.time()) * 1000)
        buffer.extend(Metric(k, float(v), ts, step) for k, v in metrics.items() if k not in ("step", "time"))
        if len(buffer) >= 1000:
            flush()

    yield hook
    flush()
