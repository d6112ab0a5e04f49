"""AlexNet: Krizhevsky, Sutskever, Hinton, "ImageNet Classification with Deep
Convolutional Neural Networks" (NeurIPS 2012).

What is new here, and written from scratch:

* ``local_response_norm`` / ``LocalResponseNorm``: the brightness normalisation of
  Section 3.3, across neighbouring channels ("kernel maps") at each pixel.
* ``AlexNet``: the 5-conv + 3-FC network of Section 3.5 (Figure 2) in the one-GPU
  layout that ``torchvision.models.alexnet`` uses, with ReLUs (Section 3.1), LRN after
  the first two conv layers, overlapping 3x3 / stride-2 max-pooling (Section 3.4) and
  dropout 0.5 on the outputs of the first two fully connected layers (Section 4.2).
* ``FourLayerNet``: a four-layer CIFAR-10 net for the experiment of Figure 1. The paper
  gives no architecture for it; this is the four-layer example net of cuda-convnet
  (Krizhevsky's public code, the paper's footnote 1), with its per-layer Gaussian init.
* ``SmallAlexNet``: AlexNet's recipe scaled down to 28x28 / 32x32 images, with a
  selectable activation (ReLU or tanh), optional LRN and dropout, for the toy experiments.
* Figure 1's protocol: ``figure1_dataset`` (CIFAR-10 when present), ``center_pixels``
  (Section 2: raw pixels minus the mean training image), ``train_sgd`` (plain SGD with
  momentum, recording each minibatch's training error as it is trained on) and
  ``steps_to_threshold`` (when the smoothed training error first reaches each threshold).

Convolutions, pooling and linear layers come from PyTorch (``nn.Conv2d``,
``nn.MaxPool2d``, ``nn.Linear``): the CNN topic already checked its own versions against them.
Empty batches pass through every model and LRN like PyTorch's own layers (empty in, empty out).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common import data
from common.checks import check_choice, check_float, check_images, check_int, check_probability, check_tensor
from common.train import NonFiniteLossError, fit

__all__ = ["local_response_norm", "LocalResponseNorm", "AlexNet", "FourLayerNet", "SmallAlexNet", "paper_init_",
           "figure1_dataset", "center_pixels", "train_sgd", "smoothed_error", "steps_to_threshold"]

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
        a: activities ``(B, C, *spatial)``, floating point, at least 3-D. Like
            ``nn.LocalResponseNorm``, an empty tensor (``B``, ``C`` or a spatial size 0)
            comes back empty, with the same shape.
        size: ``n``, the number of adjacent channels in the window (>= 1).
        alpha, beta, k: the constants of the formula (``alpha, beta >= 0``; ``k > 0``).
    Returns:
        ``b``, same shape and dtype as ``a``.
    """
    check_tensor("local_response_norm input", a, floating=True, nonempty=False)
    if a.dim() < 3:
        raise ValueError(f"local_response_norm expects a tensor (B, C, *spatial) of rank >= 3, "
                         f"got shape {tuple(a.shape)}")
    _check_lrn_params(size, alpha, beta, k)
    if a.numel() == 0:                                                # nothing to normalise
        return a.clone()
    B, C = a.shape[:2]
    sq = a.reshape(B, C, -1).pow(2)                                   # (B, C, L), L = H*W
    sq = F.pad(sq, (0, 0, size // 2, (size - 1) // 2))               # (B, C + n - 1, L): zero channels
    window_sum = sq.unfold(1, size, 1).sum(-1)                       # (B, C, L): sum over the n neighbours
    denom = (k + alpha * window_sum).pow(beta)                       # (B, C, L)
    return (a.reshape(B, C, -1) / denom).reshape(a.shape)            # (B, C, *spatial)


def _check_lrn_params(size, alpha, beta, k) -> None:
    check_int("LRN size", size, low=1)
    check_float("LRN alpha", alpha, low=0.0)
    check_float("LRN beta", beta, low=0.0)
    check_float("LRN k", k)
    if k <= 0 and beta > 0:   # the paper's k keeps the denominator away from zero
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
    classifier: FC6 4096 -> ReLU -> dropout -> FC7 4096 -> ReLU -> dropout -> FC8 classes

    Dropout sits on the *outputs* of FC6 and FC7 as in Section 4.2 ("setting to zero the
    output of each hidden neuron"); torchvision puts it on their inputs instead. In
    evaluation mode both compute the same function. LRN has no parameters, so the
    parameter count equals torchvision's 61,100,840. Inputs must be at least 63x63
    (smaller maps vanish in the third max-pool); an empty batch gives ``(0, num_classes)``.
    """

    MIN_SIZE = 63

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5, lrn: bool = True):
        super().__init__()
        check_int("num_classes", num_classes, low=1)
        check_int("in_channels", in_channels, low=1)
        check_probability("dropout p", dropout)
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
            nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),   # FC6
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),          # FC7
            nn.Linear(4096, num_classes),                                               # FC8
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores ``(B, num_classes)`` for images ``(B, in_channels, H, W)``."""
        check_images("AlexNet", x, channels=self.in_channels, min_size=self.MIN_SIZE, nonempty=False)
        h = self.features(x)                       # (B, 256, 6, 6) at 224x224
        h = self.avgpool(h).flatten(1)             # (B, 9216)
        return self.classifier(h)                  # (B, num_classes)


# ----------------------------------------------------------------------------- Figure 1's net
class FourLayerNet(nn.Module):
    """A four-layer net for Figure 1: the four-layer CIFAR-10 example net of cuda-convnet.

    The paper names no architecture for Figure 1; Krizhevsky's public cuda-convnet code
    (footnote 1) ships this one among its CIFAR-10 examples::

        conv 5x5 pad 2, 32  -> act -> max-pool 3/2     32x32 -> 16x16   (28x28 -> 14x14)
        conv 5x5 pad 2, 32  -> act -> avg-pool 3/2     16x16 -> 8x8     (14x14 -> 7x7)
        conv 5x5 pad 2, 64  -> act -> avg-pool 3/2     8x8   -> 4x4     (7x7   -> 3x3)
        fc 10 (softmax in the loss)

    Pooling windows are 3x3 with stride 2 and no padding; the output side rounds *up*, as
    cuda-convnet's does (``ceil_mode=True``), and an average over a window that overhangs
    the edge counts only the pixels inside. Initialisation (cuda-convnet's ``initW``):
    weights from ``N(0, 1e-4^2)`` in conv 1 and ``N(0, 0.01^2)`` in the other layers,
    biases 0. ``activation`` is ``"relu"`` or ``"tanh"``; nothing else changes with it.
    An empty batch gives ``(0, num_classes)``.
    """

    INIT_STD = (1e-4, 1e-2, 1e-2, 1e-2)   # conv1, conv2, conv3, fc

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32,
                 activation: str = "relu", widths=(32, 32, 64)):
        super().__init__()
        check_int("in_channels", in_channels, low=1)
        check_int("num_classes", num_classes, low=1)
        check_int("image_size", image_size, low=1)
        check_choice("activation", activation, sorted(ACTIVATIONS))
        widths = tuple(widths)
        if len(widths) != 3:
            raise ValueError(f"widths must hold 3 conv widths, got {widths!r}")
        for i, w in enumerate(widths):
            check_int(f"widths[{i}]", w, low=1)
        self.in_channels, self.image_size, self.activation = in_channels, image_size, activation
        act = ACTIVATIONS[activation]
        w1, w2, w3 = widths
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w1, 5, padding=2), act(), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(w1, w2, 5, padding=2), act(), nn.AvgPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(w2, w3, 5, padding=2), act(), nn.AvgPool2d(3, 2, ceil_mode=True),
        )
        side = image_size
        for _ in range(3):
            side = -(-max(side - 3, 0) // 2) + 1          # ceil((side - 3) / 2) + 1
        self.classifier = nn.Linear(w3 * side * side, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """cuda-convnet's initialisation: Gaussian weights with the per-layer ``INIT_STD``, zero biases."""
        layers = [m for m in self.features if isinstance(m, nn.Conv2d)] + [self.classifier]
        with torch.no_grad():
            for m, std in zip(layers, self.INIT_STD, strict=True):
                m.weight.normal_(0.0, std)
                m.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores ``(B, num_classes)`` for images ``(B, in_channels, S, S)``, S = image_size."""
        check_images("FourLayerNet", x, channels=self.in_channels, nonempty=False)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"FourLayerNet was built for {self.image_size}x{self.image_size} images, "
                             f"got {tuple(x.shape[-2:])}")
        return self.classifier(self.features(x).flatten(1))   # (B, num_classes)


# ----------------------------------------------------------------------------- small AlexNet
class SmallAlexNet(nn.Module):
    """AlexNet's recipe scaled down to small images (28x28 Fashion-MNIST, 32x32 CIFAR-10).

    Three conv layers (5x5, 5x5, 3x3, "same" padding), each followed by the activation
    and an overlapping 3/2 max-pool (Section 3.4), optional LRN after the first two
    (Section 3.3), then ``len(hidden)`` fully connected hidden layers (the analogues of
    FC6 and FC7) whose outputs go through dropout (Section 4.2), then the output layer::

        28x28 -> 13x13 -> 6x6 -> 2x2        32x32 -> 15x15 -> 7x7 -> 3x3

    Args:
        in_channels: 1 (grey) or 3 (colour); >= 1.
        num_classes: output classes; >= 1.
        image_size: side of the (square) input; fixes the flattened size; >= 15.
        activation: ``"relu"`` (Section 3.1) or ``"tanh"`` (the saturating baseline).
        dropout: dropout probability in ``[0, 1)`` on the output of each hidden FC layer.
        widths: channels of the three conv layers (each >= 1).
        hidden: widths of the hidden FC layers (each >= 1; may be empty).
        lrn: insert LocalResponseNorm after conv 1 and conv 2.

    An empty batch gives ``(0, num_classes)``.
    """

    MIN_SIZE = 15

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 activation: str = "relu", dropout: float = 0.0, widths=(32, 64, 128),
                 hidden=(), lrn: bool = False):
        super().__init__()
        check_int("in_channels", in_channels, low=1)
        check_int("num_classes", num_classes, low=1)
        check_int("image_size", image_size, low=self.MIN_SIZE)
        check_choice("activation", activation, sorted(ACTIVATIONS))
        check_probability("dropout p", dropout)
        widths, hidden = tuple(widths), tuple(hidden)
        if len(widths) != 3:
            raise ValueError(f"widths must hold 3 conv widths, got {widths!r}")
        for i, w in enumerate(widths):
            check_int(f"widths[{i}]", w, low=1)
        for i, h in enumerate(hidden):
            check_int(f"hidden[{i}]", h, low=1)
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
            layers += [nn.Linear(width, h), act(), nn.Dropout(dropout)]   # dropout on the layer's output
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores ``(B, num_classes)`` for images ``(B, in_channels, S, S)``, S = image_size."""
        check_images("SmallAlexNet", x, channels=self.in_channels, min_size=self.MIN_SIZE, nonempty=False)
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
    2nd, 4th and 5th conv layers and the hidden FC layers of AlexNet ("providing the
    ReLUs with positive inputs"); in a ``SmallAlexNet`` the analogues are conv 2, conv 3
    and the hidden FC layers. Use ``ones=False`` to compare activations fairly (a bias of 1
    would push tanh units towards saturation).
    """
    check_float("paper_init_ std", std, low=0.0, low_open=True)
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


# ----------------------------------------------------------------------------- Figure 1 protocol
def figure1_dataset(preferred: str = "cifar10", fallback: str = "fashion-mnist") -> str:
    """The dataset for Figure 1: CIFAR-10 (the paper's) when it is available offline, else ``fallback``."""
    return preferred if data.available(preferred) else fallback


def center_pixels(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Section 2's only preprocessing: raw pixel values (uint8, 0-255) minus the mean training image.

    ``x`` is ``(B, C, H, W)`` uint8, ``mean`` a float ``(1, C, H, W)`` (e.g. ``x_train.float().mean(0,
    keepdim=True)``); returns float32 ``(B, C, H, W)``.
    """
    check_tensor("center_pixels x", x, dim=4, nonempty=False)
    if x.dtype != torch.uint8:
        raise ValueError(f"center_pixels expects raw uint8 pixels, got {x.dtype}")
    check_tensor("center_pixels mean", mean, dim=4, floating=True)
    if mean.shape[0] != 1 or mean.shape[1:] != x.shape[1:]:
        raise ValueError(f"center_pixels: mean must have shape (1, {', '.join(map(str, x.shape[1:]))}), "
                         f"got {tuple(mean.shape)}")
    return x.float() - mean


def smoothed_error(errors, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred moving average of per-step training errors over ``window`` steps.

    Returns ``(steps, smoothed)``: ``smoothed[i]`` is the mean of ``errors[i : i + window]`` and
    ``steps[i] = i + (window + 1) / 2`` the step at the window's centre (steps count from 1).
    Fewer errors than ``window`` give two empty tensors.
    """
    check_int("window", window, low=1)
    e = torch.as_tensor(errors, dtype=torch.float64).flatten()
    if e.numel() < window:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    c = torch.cat([torch.zeros(1, dtype=torch.float64), e.cumsum(0)])
    sm = (c[window:] - c[:-window]) / window
    return torch.arange(sm.numel(), dtype=torch.float64) + (window + 1) / 2, sm


def steps_to_threshold(errors, thresholds, window: int) -> list[float | None]:
    """For each threshold, the first (centre) step at which the smoothed training error is at or
    below it (:func:`smoothed_error`; ties within 1e-12 count, against rounding); ``None`` where it
    never gets there."""
    steps, sm = smoothed_error(errors, window)
    out = []
    for t in thresholds:
        hit = torch.nonzero(sm <= check_float("threshold", t) + 1e-12).flatten()
        out.append(float(steps[hit[0]]) if hit.numel() else None)
    return out


class _Reached(Exception):
    """Raised from inside the loss to end a run once its smoothed error reached ``stop_below``."""


def train_sgd(net: nn.Module, loader, *, lr: float, max_steps: int, momentum: float = 0.9,
              stop_below: float | None = None, window: int = 50, check_every: int = 25
              ) -> tuple[torch.Tensor, str]:
    """Train ``net`` with SGD on cross-entropy for at most ``max_steps`` minibatches; no weight decay.

    Each minibatch's error is recorded as it is trained on, before the update (the training
    error cuda-convnet reports, at no extra cost). With ``stop_below``, the run ends as soon as
    the error smoothed over ``window`` steps (checked every ``check_every`` steps) reaches it.

    Returns ``(errors, status)``: the per-step errors (float32, CPU) and ``"done"`` (ran
    ``max_steps``), ``"reached"`` (stopped at ``stop_below``) or ``"diverged"`` (non-finite loss).
    """
    check_float("lr", lr, low=0.0, low_open=True)
    check_int("max_steps", max_steps, low=1)
    check_int("check_every", check_every, low=1)
    errors: list[torch.Tensor] = []

    def loss_fn(logits, y):
        if torch.is_grad_enabled():
            errors.append((logits.argmax(1) != y).float().mean().detach())
            if stop_below is not None and len(errors) % check_every == 0:
                _, sm = smoothed_error(torch.stack(errors).cpu(), window)
                if sm.numel() and sm.min().item() <= stop_below + 1e-12:
                    raise _Reached
        return F.cross_entropy(logits, y)

    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    status = "done"
    try:
        fit(net, loader, optimizer=opt, loss_fn=loss_fn, epochs=-(-max_steps // len(loader)),
            max_steps=max_steps, amp=False, progress_bar=False, eval_each_epoch=False)
    except _Reached:
        status = "reached"
    except NonFiniteLossError:
        status = "diverged"
    errs = torch.stack(errors).float().cpu() if errors else torch.zeros(0)
    return errs, status
