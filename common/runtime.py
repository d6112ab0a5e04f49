"""Runtime helpers: seeding, device choice, the three scales, the run header and a timer."""

from __future__ import annotations

import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

SCALES = ("smoke", "cpu", "gpu")
REPO_ROOT = Path(__file__).resolve().parent.parent

_START: float | None = None  # set by setup(); record() measures the wall time from here


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's generators (all devices) with ``seed``."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def device() -> torch.device:
    """The best available device: CUDA, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def scale() -> str:
    """The run's scale: ``$DLH_SCALE`` if set, else ``"gpu"`` with CUDA, else ``"cpu"``.

    Raises ``ValueError`` naming the valid scales when ``DLH_SCALE`` holds anything else.
    """
    value = os.environ.get("DLH_SCALE", "").strip().lower()
    if not value:
        return "gpu" if torch.cuda.is_available() else "cpu"
    if value not in SCALES:
        raise ValueError(f"DLH_SCALE={value!r} is not a scale; expected one of {', '.join(SCALES)}")
    return value


def pick(*, smoke, cpu, gpu=None):
    """Return the argument named by the current :func:`scale` (``gpu`` defaults to ``cpu``'s)."""
    return {"smoke": smoke, "cpu": cpu, "gpu": cpu if gpu is None else gpu}[scale()]


def git_commit(short: bool = True) -> str:
    """The repository's current commit hash, with ``+uncommitted changes`` when the tree differs from it
    (``"unknown"`` outside a git checkout). The exact code behind a result is ``source_sha256``."""
    args = ["git", "rev-parse", "--short" if short else "--verify", "HEAD"]
    try:
        out = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("+uncommitted changes" if dirty.stdout.strip() else "")


def device_description(dev: torch.device | None = None) -> str:
    """A short human description of a device, e.g. ``"cpu x2"`` or ``"cuda NVIDIA H100"``."""
    dev = dev or device()
    if dev.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(dev)}"
    if dev.type == "cpu":
        return f"cpu x{torch.get_num_threads()}"
    return dev.type


def setup(seed: int = 0, datasets: tuple[str, ...] | list[str] = ()) -> torch.device:
    """Start a run: seed everything, use every CPU core, print the run header, return the device.

    The header names the scale, device, library versions, commit and where each dataset in
    ``datasets`` comes from, so a committed notebook says how its outputs were produced.
    """
    global _START
    _START = time.perf_counter()
    seed_everything(seed)
    set_threads()
    dev = device()
    from . import data  # local import: data imports runtime

    lines = [
        f"scale   : {scale()}",
        f"device  : {device_description(dev)}",
        f"torch   : {torch.__version__} | numpy {np.__version__} | python {platform.python_version()}",
        f"commit  : {git_commit()} | seed {seed}",
    ]
    if (Path.cwd() / "notes.ipynb").exists() and any(Path.cwd().glob("*.py")):
        from .results import source_sha256

        lines.append(f"code    : source_sha256 {source_sha256(Path.cwd())[:16]} (topic module + notebook code)")
    for name in datasets:
        lines.append(f"data    : {name}: {data.source(name)}")
    print("\n".join(lines))
    return dev


def set_threads(n: int | None = None) -> int:
    """Set PyTorch's CPU thread count (default: every core) and return the previous count.

    Small tensors (toy problems of a few units) often run faster on one thread than on several,
    because each op is too small to split; notebooks call ``set_threads(1)`` around such work and
    ``set_threads()`` after it. :class:`threads` does the same as a ``with`` block.
    """
    if n is None:
        n = max(1, os.cpu_count() or 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_threads: n must be a positive int, got {n!r}")
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    return old


class threads:
    """``with threads(1): ...`` runs the block on ``n`` CPU threads and restores the count after it."""

    def __init__(self, n: int):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"threads: n must be a positive int, got {n!r}")
        self.n, self._old = n, None

    def __enter__(self) -> threads:
        self._old = set_threads(self.n)
        return self

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self._old)


def elapsed() -> float | None:
    """Seconds since :func:`setup` was last called (``None`` if it never was)."""
    return None if _START is None else time.perf_counter() - _START


class Timer:
    """Context manager measuring wall time: ``with Timer() as t: ...; t.seconds``.

    On CUDA it synchronises before reading the clock so queued kernels are counted.
    """

    def __init__(self, sync_cuda: bool = True):
        self.sync_cuda = sync_cuda
        self.seconds = 0.0
        self._t0 = 0.0

    def _sync(self) -> None:
        if self.sync_cuda and torch.cuda.is_available():
            torch.cuda.synchronize()

    def __enter__(self) -> Timer:
        self._sync()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self._t0


def in_notebook() -> bool:
    """Whether the code runs inside a Jupyter kernel."""
    return "ipykernel" in sys.modules and not sys.stderr.isatty()
