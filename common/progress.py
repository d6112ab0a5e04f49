"""Progress bars that read well in a terminal, in Jupyter, and in a committed notebook.

Plain-text tqdm (no widgets, which GitHub cannot show). In a notebook kernel the bar refreshes
at most every few seconds; :mod:`common.notebooks` collapses carriage returns when it saves a
notebook, so the committed output keeps one final line per bar.
"""

from __future__ import annotations

import sys

from tqdm.std import tqdm

from .runtime import in_notebook


def progress(iterable=None, total: int | None = None, desc: str | None = None, **kwargs) -> tqdm:
    """A text progress bar around ``iterable`` (or a manual one with ``total``); tqdm's options pass through."""
    notebook = in_notebook()
    kwargs.setdefault("mininterval", 2.0 if notebook else 0.2)
    kwargs.setdefault("ncols", 100)
    kwargs.setdefault("ascii", notebook or None)
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", False)
    return tqdm(iterable, total=total, desc=desc, **kwargs)
