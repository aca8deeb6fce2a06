"""Training progress on the workflow's console: which objects are training, at which step, how fast, and when they
will be done.

Snakemake's own console counts jobs ("5 of 16 steps (31%) done"); a training job's progress bar with its ETA is in
that job's log file. This module reads what the training jobs already write, each object's `log.jsonl` (one line a
step, with its wall time), from the Snakemake process, and prints a short block when something moved:

    training: 3 of 8 objects done, 4 running, 1 waiting, 0 failed; all done in ≈ 4m10s
      a-red-cube/seed0         120/400  3.1 steps/s  ETA 1m30s
      a-blue-sphere/seed0       80/400  2.9 steps/s  ETA 1m50s

It works with any `--logger` (the lines go through Snakemake's logger) and any executor whose results folder this
machine sees (local, SLURM on a shared file system). The Snakefile starts it in `onstart`, which dry runs never
reach; `LAB_PROGRESS_EVERY` sets the seconds between blocks (default 30; 0 switches it off).

When a run fails, `failures` gives each failed job's own error in one line, from the job logs written since the run
started (each stage ends a located error with a line `error: <file>: <what and the fix>`):

    failed: views/world-w10-uniform/a-red-cube-97fc58e3-seed0: results/…/mesh.ply: not a mesh.ply written by …
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ENV = "LAB_PROGRESS_EVERY"
DEFAULT_EVERY = 30.0
MAX_LINES = 12
"""Running objects listed one line each; more are summed up in one line ("… and 20 more")."""
TAIL_BYTES = 16_384
"""How much of the end of a log.jsonl is read per look: enough lines to measure the speed, never the whole file."""
RATE_WINDOW = 20
"""The speed is measured over the last this-many logged steps."""

State = Literal["waiting", "training", "done", "failed"]


@dataclass(frozen=True)
class ObjectProgress:
    name: str
    state: State
    step: int  # steps done
    steps: int  # steps in the run
    rate: float | None = None  # steps per second, over the last RATE_WINDOW logged steps

    @property
    def eta(self) -> float | None:
        """Seconds until this object's training is done (None while unknown)."""
        if self.state != "training" or not self.rate:
            return None
        return (self.steps - self.step) / self.rate


def _tail(path: Path) -> list[dict]:
    """The last step records of a log.jsonl (a torn or foreign line is skipped: a job may be writing it now)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - TAIL_BYTES))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    records = []
    for line in text.splitlines()[1 if size > TAIL_BYTES else 0 :]:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict) and isinstance(r.get("step"), int) and isinstance(r.get("time"), int | float):
            records.append(r)
    return records


def object_progress(folder: Path, steps: int, name: str) -> ObjectProgress:
    """Where one object's training stands, from the files its training job writes in `folder`."""
    if (folder / "diverged.json").exists():
        return ObjectProgress(name, "failed", 0, steps)
    if (folder / "metrics.json").exists() and (folder / "model.safetensors").exists():
        return ObjectProgress(name, "done", steps, steps)
    records = _tail(folder / "log.jsonl")
    if not records:
        return ObjectProgress(name, "waiting", 0, steps)
    last = records[-1]
    first = records[max(0, len(records) - 1 - RATE_WINDOW)]
    span = last["time"] - first["time"]
    rate = (last["step"] - first["step"]) / span if span > 0 and last["step"] > first["step"] else None
    return ObjectProgress(name, "training", min(last["step"] + 1, steps), steps, rate)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def render(progress: list[ObjectProgress]) -> list[str]:
    """The console block for a list of objects: a summary line, then one line per running object."""
    count = {s: sum(p.state == s for p in progress) for s in ("done", "training", "waiting", "failed")}
    running = [p for p in progress if p.state == "training"]
    head = (
        f"training: {count['done']} of {len(progress)} objects done, {count['training']} running, "
        f"{count['waiting']} waiting, {count['failed']} failed"
    )
    rates = [p.rate for p in running if p.rate]
    if running and len(rates) == len(running):  # every running object measured
        # the remaining steps at today's total speed, but never before the slowest running object is done (objects
        # trained together in one job move in lockstep: their speeds do not add up to finish any one sooner)
        left = sum(p.steps - p.step for p in running) + sum(p.steps for p in progress if p.state == "waiting")
        head += f"; all done in ≈ {_duration(max(left / sum(rates), max(p.eta or 0.0 for p in running)))}"
    width = max((len(p.name) for p in running[:MAX_LINES]), default=0)
    lines = [head]
    for p in running[:MAX_LINES]:
        speed = f"{p.rate:.1f} steps/s  ETA {_duration(p.eta)}" if p.eta is not None else "measuring speed"
        lines.append(f"  {p.name:<{width}}  {p.step:>{len(str(p.steps))}}/{p.steps}  {speed}")
    if len(running) > MAX_LINES:
        lines.append(f"  … and {len(running) - MAX_LINES} more")
    lines += [f"  failed: {p.name} diverged (its diverged.json says why)" for p in progress if p.state == "failed"]
    return lines


def failures(log_dirs: list[str | Path], since: float) -> list[str]:
    """One line per job log under `log_dirs` written since `since` (unix time) that ends in an error: the stage's
    located `error: …` line, else a traceback's last line."""
    found = []
    for root in map(Path, log_dirs):
        for log in sorted(root.rglob("*.log")) if root.is_dir() else []:
            try:
                if log.stat().st_mtime < since:
                    continue
                with open(log, "rb") as fh:
                    fh.seek(max(0, log.stat().st_size - TAIL_BYTES))
                    lines = [ln.strip() for ln in fh.read().decode("utf-8", "replace").splitlines() if ln.strip()]
            except OSError:
                continue
            located = [ln.removeprefix("error: ") for ln in lines if ln.startswith("error: ")]
            crashed = any(ln.startswith("Traceback (most recent call last)") for ln in lines)
            if located or crashed:
                found.append(
                    f"failed: {log.relative_to(root).with_suffix('')}: {located[-1] if located else lines[-1]}"
                )
    return found


class Watcher(threading.Thread):
    """Prints `render` of the given objects every `every` seconds while any of them moved since the last block."""

    def __init__(self, objects: Mapping[str, tuple[str | Path, int]], every: float, emit: Callable[[str], None]):
        super().__init__(name="training-progress", daemon=True)
        self.objects = {name: (Path(folder), steps) for name, (folder, steps) in objects.items()}
        self.every, self.emit = every, emit
        self._stop = threading.Event()
        self._last: list[tuple[str, int]] | None = None

    def look(self) -> list[str] | None:
        """The block to print now, or None if no object moved since the last one."""
        progress = [object_progress(folder, steps, name) for name, (folder, steps) in self.objects.items()]
        key = [(p.state, p.step) for p in progress]
        first = self._last is None
        moved, self._last = key != self._last, key
        if first or not moved or not any(p.state == "training" for p in progress):
            return None  # the state at start is not news, and a finished run says so itself
        return render(progress)

    def run(self) -> None:
        while not self._stop.wait(self.every):
            block = self.look()
            if block:
                self.emit("\n".join(block))

    def stop(self) -> None:
        self._stop.set()


def start(objects: Mapping[str, tuple[str | Path, int]], logger: logging.Logger) -> Watcher | None:
    """Start the watcher for `objects` ({name: (folder, steps)}) unless LAB_PROGRESS_EVERY is 0; None if off."""
    try:
        every = float(os.environ.get(ENV, "") or DEFAULT_EVERY)
    except ValueError:
        bad = os.environ[ENV]
        logger.warning(f"{ENV}={bad!r} is not a number of seconds; training progress every {DEFAULT_EVERY:g} s")
        every = DEFAULT_EVERY
    if every <= 0 or not objects:
        return None
    watcher = Watcher(objects, every, logger.info)
    watcher.look()  # remember the state at start
    watcher.start()
    return watcher
