"""Shared utilities for the deep-learning history notebooks. No paper's method lives here.

The names most notebooks need are re-exported: ``import common`` then ``common.setup()``,
``common.pick(...)``, ``common.topic("cnn")``, ``common.record(...)``.
"""

from . import checks, data, plot, train
from .notebooks import run_notebook, show_source, source_of
from .progress import progress
from .results import fmt_stats, record, seed_stats
from .runtime import Timer, device, pick, scale, seed_everything, set_threads, setup, threads
from .topics import topic

plot.style()

__all__ = ["checks", "data", "plot", "train", "run_notebook", "show_source", "source_of", "progress", "record",
           "seed_stats", "fmt_stats", "Timer", "device", "pick", "scale", "seed_everything", "set_threads",
           "threads", "setup", "topic"]
__version__ = "0.1.0"
