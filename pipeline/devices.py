"""Which device a training job runs on: CUDA when visible, a free GPU of several claimed by lock file, and a clear
stop when a GPU prior finds no GPU."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pipeline.config import Config
from pipeline.guidance import needs_gpu

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
        if needs_gpu(cfg.guidance.name):
            raise NoGPU(
                f"guidance.name={cfg.guidance.name} needs a CUDA GPU and none is visible (torch.cuda.is_available() "
                "is False). Run on a GPU machine, or set train.device: cpu to train on the CPU anyway (very slow)"
            )
        return torch.device("cpu")
    n = torch.cuda.device_count()
    if n > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:
        return torch.device(f"cuda:{claim_gpu_slot(n)}")
    return torch.device("cuda")
