"""Plots in one house style: loss/metric curves, image grids and heatmaps."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]

STYLE = {
    "figure.figsize": (6.4, 3.6),
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "image.cmap": "viridis",
}


def style() -> None:
    """Apply the house style to matplotlib (called on import of ``common``)."""
    plt.rcParams.update(STYLE)


def subplots(nrows: int = 1, ncols: int = 1, width: float = 4.2, height: float = 3.2, **kwargs):
    """``plt.subplots`` sized per panel (``width`` x ``height`` inches each), constrained layout."""
    kwargs.setdefault("layout", "constrained")
    kwargs.setdefault("squeeze", True)
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), **kwargs)


def _np(v):
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    return np.asarray(v)


def curves(series: dict, xlabel: str = "step", ylabel: str = "", title: str | None = None,
           logy: bool = False, logx: bool = False, ax=None, hline: float | None = None, **plot_kw):
    """Line plot of ``{label: (xs, ys)}`` (or ``{label: ys}``) on one axes; returns the axes.

    ``hline`` draws a dashed reference line (a threshold or a paper's number).
    """
    if not isinstance(series, dict) or not series:
        raise ValueError("curves expects a non-empty dict {label: (xs, ys)}")
    if ax is None:
        _, ax = subplots()
    for label, data in series.items():
        if isinstance(data, tuple) and len(data) == 2:
            xs, ys = _np(data[0]), _np(data[1])
        else:
            ys = _np(data)
            xs = np.arange(len(ys))
        ax.plot(xs, ys, label=str(label), **plot_kw)
    if hline is not None:
        ax.axhline(hline, color="k", ls="--", lw=1)
    if logy:
        ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if len(series) > 1 or hline is not None:
        ax.legend()
    return ax


def image_grid(images, nrow: int = 8, title: str | None = None, ax=None, labels=None,
               cmap: str = "gray", pad: int = 1):
    """Show ``(N, C, H, W)`` or ``(N, H, W)`` images (uint8 or float in [0, 1]) as one grid.

    ``labels`` (one string per image) are written under the grid's rows when given.
    """
    x = _np(images)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"image_grid expects (N, C, H, W) with C in (1, 3) or (N, H, W), got {x.shape}")
    x = x.astype(np.float32) / (255.0 if x.dtype == np.uint8 or x.max() > 1.5 else 1.0)
    n, c, h, w = x.shape
    ncol = min(nrow, n)
    nrows = -(-n // ncol)
    grid = np.ones((c, nrows * (h + pad) + pad, ncol * (w + pad) + pad), dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, ncol)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = x[i]
    if ax is None:
        _, ax = plt.subplots(figsize=(min(1.0 * ncol, 12), min(1.0 * nrows, 12) + 0.3), layout="constrained")
    ax.imshow(grid[0] if c == 1 else grid.transpose(1, 2, 0), cmap=cmap, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    if labels is not None:
        for i, lab in enumerate(labels[:n]):
            r, col = divmod(i, ncol)
            ax.text(pad + col * (w + pad) + w / 2, pad + r * (h + pad) + h - 1, str(lab), color="yellow",
                    ha="center", va="bottom", fontsize=7)
    if title:
        ax.set_title(title)
    return ax


def heatmap(matrix, xticklabels=None, yticklabels=None, title: str | None = None, ax=None,
            cmap: str = "viridis", annotate: bool = False, fmt: str = "{:.2f}", colorbar: bool = True,
            xlabel: str = "", ylabel: str = "", **imshow_kw):
    """A labelled heatmap of a 2-D array (attention, confusion, hidden codes); returns the axes."""
    m = _np(matrix)
    if m.ndim != 2:
        raise ValueError(f"heatmap expects a 2-D matrix, got shape {m.shape}")
    if ax is None:
        _, ax = subplots(width=max(3.0, 0.45 * m.shape[1] + 1.5), height=max(2.5, 0.35 * m.shape[0] + 1.0))
    im = ax.imshow(m, cmap=cmap, aspect="auto", **imshow_kw)
    ax.grid(False)
    if xticklabels is not None:
        ax.set_xticks(range(len(xticklabels)), [str(t) for t in xticklabels], rotation=90 if
                      max(len(str(t)) for t in xticklabels) > 3 else 0)
    if yticklabels is not None:
        ax.set_yticks(range(len(yticklabels)), [str(t) for t in yticklabels])
    if annotate:
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7,
                    color="w" if v < (m.max() + m.min()) / 2 else "k")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, shrink=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return ax
