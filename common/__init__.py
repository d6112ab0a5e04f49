"""Shared utilities for the deep-learning history notebooks. No paper's method lives here.

The names most notebooks need are re-exported: ``import common`` then ``common.setup()``,
``common.pick(...)``, ``common.topic("cnn")``, ``common.record(...)``.
"""

from . import data, plot, train
from .notebooks import run_notebook, show_source
from .progress import progress
from .results import record
from .runtime import Timer, device, pick, scale, seed_everything, setup
from .topics import topic

plot.style()

__all__ = ["data", "plot", "train", "run_notebook", "show_source", "progress", "record", "Timer",
           "device", "pick", "scale", "seed_everything", "setup", "topic"]
__version__ = "0.1.0"
