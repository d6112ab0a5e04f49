"""Argument checks shared by every topic module: one clear ``ValueError`` per kind of bad input.

A topic module validates what its public entry points receive with these, so a wrong rank,
shape, dtype, an empty batch or an invalid hyper-parameter fails with a message that says
what was expected and what came, instead of deep inside PyTorch. Each check returns the
value it accepted (converted where that is harmless, e.g. an int given as a float is not).

    from common.checks import check_int, check_images
    check_int("stride", stride, low=1)
    check_images("LeNet5", x, channels=1, min_size=28)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"{type(x).__name__} {x!r}"


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """``value`` must be an ``int`` (not a bool) with ``low <= value <= high`` (either bound optional)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {_describe(value)}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be an int <= {high}, got {value}")
    return value


def check_float(name: str, value, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False) -> float:
    """``value`` must be a finite real number within the bounds; ``low_open`` / ``high_open`` exclude them."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not (
            isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex):
        raise ValueError(f"{name} must be a real number, got {_describe(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def check_probability(name: str, p, *, allow_one: bool = False) -> float:
    """``p`` must be a probability in ``[0, 1)`` (``[0, 1]`` with ``allow_one``), e.g. a dropout rate."""
    return check_float(name, p, 0.0, 1.0, high_open=not allow_one)


def check_tensor(name: str, x, *, dim: int | Sequence[int] | None = None, floating: bool = False,
                 integer: bool = False, nonempty: bool = True) -> torch.Tensor:
    """``x`` must be a tensor of rank ``dim`` (an int or a set of ranks), floating or integer if asked,
    and (with ``nonempty``) hold at least one row: an empty batch is reported, not passed on."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {_describe(x)}")
    if dim is not None:
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
        if x.dim() not in dims:
            want = " or ".join(str(d) for d in dims)
            raise ValueError(f"{name} must have rank {want}, got shape {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {x.dtype}")
    if integer and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        raise ValueError(f"{name} must hold integers, got dtype {x.dtype}")
    if nonempty and x.dim() > 0 and x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}); expected at least one example")
    return x


def check_images(name: str, x, *, channels: int | None = None, min_size: int = 1,
                 nonempty: bool = True) -> torch.Tensor:
    """``x`` must be a floating ``(B, C, H, W)`` batch with ``C == channels`` (if given) and ``H, W >= min_size``."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} expects images (B, {channels if channels is not None else 'C'}, H, W), got {got}")
    check_tensor(name, x, floating=True, nonempty=nonempty)
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} expects {channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if x.shape[1] == 0:
        raise ValueError(f"{name} got images with zero channels (shape {tuple(x.shape)})")
    if min(x.shape[-2:]) < min_size:
        raise ValueError(f"{name} needs images of at least {min_size}x{min_size}, got {tuple(x.shape[-2:])}")
    return x


def check_labels(name: str, y, num_classes: int, *, n: int | None = None) -> torch.Tensor:
    """``y`` must be a 1-D integer tensor of class indices in ``[0, num_classes)`` (``n`` of them if given)."""
    check_tensor(name, y, dim=1, integer=True, nonempty=False)
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{name} must hold {n} labels (one per example), got {y.shape[0]}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"{name} must lie in [0, {num_classes}), got values from {int(y.min())} to {int(y.max())}")
    return y


def check_choice(name: str, value, choices: Sequence) -> object:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_same_length(name: str, *seqs: Sequence) -> int:
    """All of ``seqs`` must have the same length; returns it."""
    lengths = [len(s) for s in seqs]
    if len(set(lengths)) > 1:
        raise ValueError(f"{name}: expected sequences of equal length, got lengths {lengths}")
    return lengths[0] if lengths else 0
