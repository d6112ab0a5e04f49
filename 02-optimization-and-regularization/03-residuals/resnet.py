"""Residual networks from scratch (He, Zhang, Ren & Sun, 2015), CIFAR-style.

"Deep Residual Learning for Image Recognition" lets a few stacked layers learn a residual
F(x) := H(x) - x instead of the wanted mapping H(x) itself, and adds the input back through a
shortcut (Sec. 3.1-3.2):

    y = F(x, {W_i}) + x          (Eq. 1: identity shortcut, no extra parameter)
    y = F(x, {W_i}) + W_s x      (Eq. 2: projection shortcut, to match dimensions)

with F = BN(conv(ReLU(BN(conv(x))))) for the two-layer "basic" block of Fig. 2/Fig. 5 (left), and
the second ReLU applied after the addition. Where a block changes the number of channels (and halves
the feature map), the paper has two options (Sec. 3.3): (A) the identity with extra channels filled
with zeros, parameter-free; (B) a 1x1 projection, stride 2. The CIFAR-10 nets of Sec. 4.2 use A.

The CIFAR-10 architecture (Sec. 4.2): a 3x3 conv, then 3 stages of n blocks (2n layers each) on
feature maps of 32, 16, 8 pixels with 16, 32, 64 filters, downsampling by stride-2 convolutions,
global average pooling and a 10-way fully-connected layer: 6n + 2 weighted layers. The "plain"
counterpart is the same stack without shortcuts. Weights start as in He et al. (2015, "Delving
deep into rectifiers"): normal, std sqrt(2 / n), n = k * k * c_in inputs per unit.

Later topics reach these blocks and nets through ``common.topic("resnet")``.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.checks import check_choice, check_images, check_int

SHORTCUTS = ("A", "B")


def _conv3x3(c_in, c_out, stride=1):
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def pad_shortcut(x, out_channels, stride=1):
    """Option A (Sec. 3.3): identity with zero channels appended, subsampled by ``stride``.

    x (B, C, H, W) -> (B, out_channels, ceil(H / stride), ceil(W / stride)): the first C channels
    are x[:, :, ::stride, ::stride] (what a 1x1 conv with stride 2 would see), the rest are zeros.
    No parameters, so a ResNet with option A has exactly the parameters of its plain twin.
    """
    check_images("pad_shortcut input", x)
    check_int("stride", stride, low=1)
    if check_int("out_channels", out_channels, low=1) < x.shape[1]:
        raise ValueError(f"option A can only add channels: out_channels must be >= {x.shape[1]}, got {out_channels}")
    x = x[:, :, ::stride, ::stride]  # (B, C, H', W')
    return F.pad(x, (0, 0, 0, 0, 0, out_channels - x.shape[1]))  # zeros after the C channels


class BasicBlock(nn.Module):
    """Two 3x3 conv layers with BN (Fig. 2, Fig. 5 left), with or without the shortcut.

    residual=True:  y = ReLU(BN2(conv2(ReLU(BN1(conv1(x))))) + s(x))   (Eq. 1 / Eq. 2)
    residual=False: y = ReLU(BN2(conv2(ReLU(BN1(conv1(x))))))           (the plain block)
    s(x) is x when shape is kept; else option "A" (``pad_shortcut``) or "B" (1x1 conv, stride, + BN).
    x (B, in_channels, H, W) -> y (B, out_channels, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_channels, out_channels, stride=1, shortcut="A", residual=True):
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, low=1)
        self.out_channels = check_int("out_channels", out_channels, low=1)
        self.stride = check_int("stride", stride, low=1)
        self.residual = bool(residual)
        self.option = check_choice("shortcut", shortcut, SHORTCUTS) if residual else None
        self.conv1, self.bn1 = _conv3x3(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels)
        self.conv2, self.bn2 = _conv3x3(out_channels, out_channels), nn.BatchNorm2d(out_channels)
        self.changes_shape = stride != 1 or in_channels != out_channels
        self.projection = None  # option B's W_s (Eq. 2), only where the shape changes
        if residual and self.changes_shape:
            if shortcut == "A" and out_channels < in_channels:
                raise ValueError(f"shortcut 'A' pads with zeros, so out_channels ({out_channels}) must be >= "
                                 f"in_channels ({in_channels}); use shortcut 'B'")
            if shortcut == "B":
                self.projection = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                                nn.BatchNorm2d(out_channels))

    def residual_branch(self, x):
        """F(x) of Eq. (1): BN2(conv2(ReLU(BN1(conv1(x))))), before the addition and the last ReLU."""
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def shortcut(self, x):
        """The shortcut's output s(x) (identity, option A's zero padding or option B's projection)."""
        if not self.residual:
            raise ValueError("a plain block (residual=False) has no shortcut")
        if not self.changes_shape:
            return x
        if self.projection is not None:
            return self.projection(x)
        return pad_shortcut(x, self.out_channels, self.stride)

    def forward(self, x):
        """y = ReLU(F(x) + s(x)) (residual) or ReLU(F(x)) (plain); x (B, in_channels, H, W)."""
        check_images("BasicBlock input", x, channels=self.in_channels)
        out = self.residual_branch(x)  # (B, out_channels, H', W')
        if self.residual:
            out = out + self.shortcut(x)
        return F.relu(out)


def check_depth(depth):
    """``depth`` must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...); returns n (blocks per stage)."""
    check_int("depth", depth, low=1)
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 (e.g. 20, 32, 44, 56, 110), got {depth}")
    return (depth - 2) // 6


def he_init_(model):
    """He et al. (2015) initialisation in place: conv weights ~ N(0, 2 / (k * k * c_in)); BN weight 1, bias 0.

    The final fully-connected layer keeps PyTorch's default initialisation. Returns ``model``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"he_init_ expects an nn.Module, got {type(model).__name__}")
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            with torch.no_grad():
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_in))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


class ResNet(nn.Module):
    """The CIFAR-10 network of Sec. 4.2: 6n + 2 weighted layers, residual or plain.

    conv3x3(in_channels -> w0) + BN + ReLU, then three stages of n ``BasicBlock``s with widths
    ``widths`` = (w0, w1, w2) (paper: 16, 32, 64); the first block of stages 2 and 3 has stride 2.
    Global average pooling and a linear layer give the logits. x (B, in_channels, H, W) with any
    H, W (32 for CIFAR-10, 28 for (Fashion-)MNIST) -> logits (B, num_classes).
    """

    def __init__(self, depth, num_classes=10, in_channels=3, widths=(16, 32, 64), shortcut="A", residual=True):
        super().__init__()
        n = check_depth(depth)
        self.depth = depth
        self.in_channels = check_int("in_channels", in_channels, low=1)
        check_int("num_classes", num_classes, low=2)
        widths = tuple(widths) if isinstance(widths, (tuple, list)) else widths
        if not isinstance(widths, tuple) or len(widths) != 3:
            raise ValueError(f"widths must be 3 channel counts, one per stage (paper: (16, 32, 64)), got {widths!r}")
        self.widths = tuple(check_int(f"widths[{i}]", w, low=1) for i, w in enumerate(widths))
        self.residual = bool(residual)
        self.shortcut = check_choice("shortcut", shortcut, SHORTCUTS) if residual else None
        self.conv1, self.bn1 = _conv3x3(in_channels, widths[0]), nn.BatchNorm2d(widths[0])
        stages, c = [], widths[0]
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(c, w, stride=2 if i > 0 and j == 0 else 1, shortcut=shortcut,
                                         residual=residual))
                c = w
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(widths[-1], num_classes)
        he_init_(self)

    def features(self, x):
        """Pooled features (B, widths[-1]): everything but the final linear layer."""
        check_images("ResNet input", x, channels=self.in_channels)
        h = F.relu(self.bn1(self.conv1(x)))  # (B, w0, H, W)
        for stage in self.stages:
            h = stage(h)  # (B, w_i, H / 2^i, W / 2^i)
        return h.mean(dim=(2, 3))  # global average pooling -> (B, w2)

    def forward(self, x):
        """Logits (B, num_classes) for images x (B, in_channels, H, W)."""
        return self.fc(self.features(x))


def resnet(depth, **kwargs):
    """ResNet-``depth`` (identity shortcuts, option A by default); keyword arguments as in ``ResNet``."""
    return ResNet(depth, residual=True, **kwargs)


def plain(depth, **kwargs):
    """Plain-``depth``: the same stack as ``resnet(depth)`` without any shortcut."""
    kwargs.pop("shortcut", None)  # no shortcut to choose
    return ResNet(depth, residual=False, **kwargs)


def count_parameters(model):
    """Number of trainable parameters (conv, BN and linear weights and biases) of ``model``."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"count_parameters expects an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def response_stds(model, x):
    """Std of each 3x3 layer's response, after BN and before ReLU/addition (the paper's Fig. 7).

    Returns a list of 6n + 1 floats, in layer order (the first conv, then two per block), computed
    on the batch x in eval mode (the model's mode is restored). For a residual block the second
    response is the residual function F(x) itself.
    """
    if not isinstance(model, ResNet):
        raise ValueError(f"response_stds expects a ResNet, got {type(model).__name__}")
    check_images("response_stds input", x, channels=model.in_channels)
    bns = [model.bn1] + [bn for stage in model.stages for b in stage for bn in (b.bn1, b.bn2)]
    stds = []
    hooks = [bn.register_forward_hook(lambda m, i, out: stds.append(out.float().std().item())) for bn in bns]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return stds


def bench_block(device="cpu", repeats=20, batch=64, channels=32, size=16):
    """Forward+backward time of one ``BasicBlock`` vs torchvision's ``BasicBlock`` with copied weights.

    Both compute ReLU(BN(conv(ReLU(BN(conv(x))))) + x) on x (batch, channels, size, size), in train
    mode, with the same weights. Returns {"ours_ms", "torchvision_ms", "ratio", "name"}: medians over
    ``repeats`` timed passes after 3 warm-up passes, alternating the two sides
    (:func:`common.bench.time_forward_backward`); ratio = ours / theirs.
    """
    from torchvision.models.resnet import BasicBlock as TVBlock

    from common.bench import time_forward_backward

    check_int("repeats", repeats, low=1)
    for name, v in (("batch", batch), ("channels", channels), ("size", size)):
        check_int(name, v, low=1)
    device = torch.device(device)
    torch.manual_seed(0)
    ours = BasicBlock(channels, channels).to(device)
    theirs = TVBlock(channels, channels).to(device)
    theirs.load_state_dict(ours.state_dict())  # same parameter names: conv1, bn1, conv2, bn2
    x = torch.randn(batch, channels, size, size, device=device)
    ours_ms, theirs_ms = time_forward_backward(ours, theirs, x, device=device, repeats=repeats)
    return {"ours_ms": ours_ms, "torchvision_ms": theirs_ms, "ratio": ours_ms / theirs_ms,
            "name": f"BasicBlock fwd+bwd, x {batch}x{channels}x{size}x{size}"}
