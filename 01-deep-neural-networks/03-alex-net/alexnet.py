"""AlexNet: Krizhevsky, Sutskever, Hinton, "ImageNet Classification with Deep
Convolutional Neural Networks" (NeurIPS 2012).

What is new here, and written from scratch:

* ``local_response_norm`` / ``LocalResponseNorm``: the brightness normalisation of
  Section 3.3, across neighbouring channels ("kernel maps") at each pixel.
* ``AlexNet``: the 5-conv + 3-FC network of Section 3.5 (Figure 2) in the one-GPU
  layout that ``torchvision.models.alexnet`` uses, with ReLUs (Section 3.1), LRN after
  the first two conv layers, overlapping 3x3 / stride-2 max-pooling (Section 3.4) and
  dropout 0.5 in the first two fully connected layers (Section 4.2).
* ``SmallAlexNet``: the same recipe scaled down to 28x28 / 32x32 images, with a
  selectable activation (ReLU or tanh) and optional dropout, for the toy experiments.

Convolutions and linear layers come from PyTorch (``nn.Conv2d``, ``nn.Linear``): the CNN
topic already checked its own convolution against them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["local_response_norm", "LocalResponseNorm", "AlexNet", "SmallAlexNet", "paper_init_"]

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


# ----------------------------------------------------------------------------- LRN
def local_response_norm(a: torch.Tensor, size: int = 5, alpha: float = 1e-4,
                        beta: float = 0.75, k: float = 2.0) -> torch.Tensor:
    r"""Local response normalisation across channels, Section 3.3 of the paper:

    .. math::
        b^i_{x,y} = a^i_{x,y} \Big/ \Big(k + \alpha \sum_{j=\max(0,\,i-n/2)}^{\min(N-1,\,i+n/2)}
        (a^j_{x,y})^2\Big)^{\beta}

    with the paper's constants ``k=2, n=5, alpha=1e-4, beta=0.75`` as defaults. Channels
    beyond the edges count as zero. For an even ``size`` the window holds ``size // 2``
    channels before ``i`` and ``(size - 1) // 2`` after it (PyTorch's convention).

    Note on ``alpha``: the paper multiplies the *sum* of squares by ``alpha``;
    ``torch.nn.LocalResponseNorm`` multiplies their *mean* (it divides by ``size``), so
    ``local_response_norm(a, n, alpha)`` equals ``nn.LocalResponseNorm(n, alpha * n)(a)``.

    Args:
        a: activities ``(B, C, *spatial)``, floating point, at least 3-D.
        size: ``n``, the number of adjacent channels in the window (>= 1).
        alpha, beta, k: the constants of the formula (``alpha, beta >= 0``).
    Returns:
        ``b``, same shape and dtype as ``a``.
    """
    if not isinstance(a, torch.Tensor) or a.dim() < 3:
        got = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
        raise ValueError(f"local_response_norm expects a tensor (B, C, *spatial) of rank >= 3, got {got}")
    if not a.is_floating_point():
        raise ValueError(f"local_response_norm expects a floating-point tensor, got {a.dtype}")
    _check_lrn_params(size, alpha, beta, k)
    B, C = a.shape[:2]
    sq = a.reshape(B, C, -1).pow(2)                                   # (B, C, L), L = H*W
    sq = F.pad(sq, (0, 0, size // 2, (size - 1) // 2))               # (B, C + n - 1, L): zero channels
    window_sum = sq.unfold(1, size, 1).sum(-1)                       # (B, C, L): sum over the n neighbours
    denom = (k + alpha * window_sum).pow(beta)                       # (B, C, L)
    return (a.reshape(B, C, -1) / denom).reshape(a.shape)            # (B, C, *spatial)


def _check_lrn_params(size, alpha, beta, k) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"LRN size must be an integer >= 1, got {size!r}")
    if alpha < 0 or beta < 0:
        raise ValueError(f"LRN alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
    if k <= 0 and beta > 0:
        raise ValueError(f"LRN k must be > 0 (it keeps the denominator away from zero), got {k}")


class LocalResponseNorm(nn.Module):
    """Module form of :func:`local_response_norm` (paper Section 3.3, paper's constants
    ``size=5, alpha=1e-4, beta=0.75, k=2`` by default; no learnable parameters)."""

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        super().__init__()
        _check_lrn_params(size, alpha, beta, k)
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        """Normalise ``a`` of shape ``(B, C, *spatial)`` across channels."""
        return local_response_norm(a, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        """The hyper-parameters, shown when the module is printed."""
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


# ----------------------------------------------------------------------------- helpers
def _check_dropout(p) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"dropout p must be a number in [0, 1), got {p!r}")


def _check_images(x, channels: int, min_size: int, name: str) -> None:
    """Raise ValueError unless ``x`` is a float ``(B, channels, H, W)`` with ``H, W >= min_size``."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} expects images (B, {channels}, H, W), got shape {got}")
    if not x.is_floating_point():
        raise ValueError(f"{name} expects floating-point images, got {x.dtype}")
    if x.shape[1] != channels:
        raise ValueError(f"{name} expects {channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if min(x.shape[-2:]) < min_size:
        raise ValueError(f"{name} needs images of at least {min_size}x{min_size}, got {tuple(x.shape[-2:])}")


def _pool(h: int) -> int:
    """Output side of an overlapping 3x3, stride-2 max-pool (Section 3.4: z=3, s=2)."""
    return (h - 3) // 2 + 1


# ----------------------------------------------------------------------------- AlexNet
class AlexNet(nn.Module):
    """AlexNet (Section 3.5, Figure 2) in torchvision's one-GPU layout.

    features (conv widths 64-192-384-256-256, torchvision's; the paper's two-GPU net
    has 96-256-384-384-256 split in halves across GPUs)::

        conv 11x11/4 pad 2 -> ReLU -> LRN -> maxpool 3/2      (B, 64, 27, 27)
        conv 5x5 pad 2     -> ReLU -> LRN -> maxpool 3/2      (B, 192, 13, 13)
        conv 3x3 pad 1     -> ReLU                            (B, 384, 13, 13)
        conv 3x3 pad 1     -> ReLU                            (B, 256, 13, 13)
        conv 3x3 pad 1     -> ReLU -> maxpool 3/2             (B, 256, 6, 6)
    adaptive average pool to 6x6 (identity at 224x224; torchvision's, not the paper's)
    classifier: dropout -> FC 4096 -> ReLU -> dropout -> FC 4096 -> ReLU -> FC classes

    LRN has no parameters, so the parameter count equals torchvision's 61,100,840.
    Inputs must be at least 63x63 (smaller maps vanish in the third max-pool).
    """

    MIN_SIZE = 63

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5, lrn: bool = True):
        super().__init__()
        _check_dropout(dropout)
        self.in_channels = in_channels
        norm = (lambda: LocalResponseNorm()) if lrn else (lambda: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), norm(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), norm(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores ``(B, num_classes)`` for images ``(B, in_channels, H, W)``."""
        _check_images(x, self.in_channels, self.MIN_SIZE, "AlexNet")
        h = self.features(x)                       # (B, 256, 6, 6) at 224x224
        h = self.avgpool(h).flatten(1)             # (B, 9216)
        return self.classifier(h)                  # (B, num_classes)


class SmallAlexNet(nn.Module):
    """AlexNet's recipe scaled down to small images (28x28 Fashion-MNIST, 32x32 CIFAR-10).

    Three conv layers (5x5, 5x5, 3x3, "same" padding), each followed by the activation
    and an overlapping 3/2 max-pool (Section 3.4), optional LRN after the first two
    (Section 3.3), then ``len(hidden)`` fully connected hidden layers each preceded by
    dropout (Section 4.2: dropout in the first FC layers), then the output layer::

        28x28 -> 13x13 -> 6x6 -> 2x2        32x32 -> 15x15 -> 7x7 -> 3x3

    With ``hidden=()`` it is the "four-layer" net of Figure 1 (3 conv + 1 FC).

    Args:
        in_channels: 1 (grey) or 3 (colour).
        num_classes: output classes.
        image_size: side of the (square) input; fixes the flattened size; >= 15.
        activation: ``"relu"`` (Section 3.1) or ``"tanh"`` (the saturating baseline).
        dropout: dropout probability in ``[0, 1)`` before each hidden FC layer.
        widths: channels of the three conv layers.
        hidden: widths of the hidden FC layers.
        lrn: insert LocalResponseNorm after conv 1 and conv 2.
    """

    MIN_SIZE = 15

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 activation: str = "relu", dropout: float = 0.0, widths=(32, 64, 128),
                 hidden=(), lrn: bool = False):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        _check_dropout(dropout)
        if image_size < self.MIN_SIZE:
            raise ValueError(f"SmallAlexNet needs image_size >= {self.MIN_SIZE}, got {image_size}")
        if len(widths) != 3:
            raise ValueError(f"widths must hold 3 conv widths, got {widths!r}")
        self.in_channels, self.image_size, self.activation = in_channels, image_size, activation
        act = ACTIVATIONS[activation]
        norm = (lambda: LocalResponseNorm()) if lrn else (lambda: nn.Identity())
        w1, w2, w3 = widths
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w1, 5, padding=2), act(), norm(), nn.MaxPool2d(3, 2),
            nn.Conv2d(w1, w2, 5, padding=2), act(), norm(), nn.MaxPool2d(3, 2),
            nn.Conv2d(w2, w3, 3, padding=1), act(), nn.MaxPool2d(3, 2),
        )
        side = _pool(_pool(_pool(image_size)))
        layers, width = [], w3 * side * side
        for h in hidden:
            layers += [nn.Dropout(dropout), nn.Linear(width, h), act()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores ``(B, num_classes)`` for images ``(B, in_channels, S, S)``, S = image_size."""
        _check_images(x, self.in_channels, self.MIN_SIZE, "SmallAlexNet")
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"SmallAlexNet was built for {self.image_size}x{self.image_size} images, "
                             f"got {tuple(x.shape[-2:])}")
        h = self.features(x).flatten(1)            # (B, w3 * side * side)
        return self.classifier(h)                  # (B, num_classes)


# ----------------------------------------------------------------------------- Section 5 init
def paper_init_(model: nn.Module, std: float = 0.01, ones: bool = True) -> nn.Module:
    """Initialise like Section 5 of the paper, in place; returns ``model``.

    Every conv / linear weight is drawn from ``N(0, std^2)`` (the paper: ``std=0.01``).
    Biases are 0, except (with ``ones=True``) the constant 1 that the paper puts in the
    2nd, 4th and 5th conv layers and the hidden FC layers of AlexNet "to provide the
    ReLUs with positive inputs"; in a ``SmallAlexNet`` the analogues are conv 2, conv 3
    and the hidden FC layers. Use ``ones=False`` to compare activations fairly (a bias of 1
    would push tanh units towards saturation).
    """
    if not std > 0:
        raise ValueError(f"paper_init_ needs std > 0, got {std!r}")
    if not isinstance(model, (AlexNet, SmallAlexNet)):
        raise ValueError(f"paper_init_ expects an AlexNet or SmallAlexNet, got {type(model).__name__}")
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    fcs = [m for m in model.classifier if isinstance(m, nn.Linear)]
    conv_ones = {1, 3, 4} if isinstance(model, AlexNet) else {1, 2}   # 0-based conv indices
    with torch.no_grad():
        for i, m in enumerate(convs + fcs):
            m.weight.normal_(0.0, std)
            hidden_fc = m in fcs[:-1]
            m.bias.fill_(1.0 if ones and (i in conv_ones and i < len(convs) or hidden_fc) else 0.0)
    return model
