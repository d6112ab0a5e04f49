"""Convolutional networks from scratch: im2col convolution, pooling, LeNet-5.

LeCun et al., "Backpropagation Applied to Handwritten Zip Code Recognition" (1989):
local receptive fields and shared weights ("feature maps") trained by backprop.
LeCun, Bottou, Bengio, Haffner, "Gradient-Based Learning Applied to Document
Recognition" (1998), Section II: the convolutional network LeNet-5.

A convolution is written as one matrix product: every receptive field of the input
is copied into a column ("im2col", here with `Tensor.unfold`, a strided view), and
the shared kernel, flattened to a row, multiplies all columns at once. Autograd
differentiates the product and the view, so no backward is written by hand.
"""

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.checks import check_choice, check_images, check_int, check_tensor

# Table I of the 1998 paper: which S2 maps (rows 0..5) feed each C3 map (0..15).
# Maps 0-5 see 3 contiguous S2 maps, 6-11 see 4 contiguous, 12-14 four
# non-contiguous, 15 all six: 60 of the 96 possible pairs.
C3_TABLE = (
    [[j % 6, (j + 1) % 6, (j + 2) % 6] for j in range(6)]
    + [[j % 6, (j + 1) % 6, (j + 2) % 6, (j + 3) % 6] for j in range(6)]
    + [[0, 1, 3, 4], [1, 2, 4, 5], [0, 2, 3, 5], [0, 1, 2, 3, 4, 5]]
)


def im2col(x, kh, kw, stride=1, padding=0, pad_value=0.0):
    """All kh x kw receptive fields of x as a strided view (the "im2col" step).

    x (B, C, H, W) -> (B, C, Ho, Wo, kh, kw) with Ho = (H + 2*padding - kh) // stride + 1.
    Each output position (i, j) owns the window whose top-left corner is
    (i*stride, j*stride) of the padded input: the paper's local receptive field.
    """
    if padding > 0:
        x = F.pad(x, (padding,) * 4, value=pad_value)  # (B, C, H+2p, W+2p)
    return x.unfold(2, kh, stride).unfold(3, kw, stride)  # (B, C, Ho, Wo, kh, kw)


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """2-D convolution (cross-correlation, as in PyTorch) by im2col + one matmul.

    A unit of feature map o at position (i, j) computes (1998 paper, Sec. II-A)
        y[o, i, j] = b[o] + sum_{c, u, v} w[o, c, u, v] * x[c, i*s + u, j*s + v]
    with the same weights w[o] at every (i, j): weight sharing.
    x (B, C, H, W), weight (O, C, kh, kw) (rectangular kernels allowed), bias (O,).
    Returns (B, O, Ho, Wo); an empty batch (B = 0) gives an empty result, as F.conv2d does.
    """
    check_images("conv2d input", x, nonempty=False)
    check_tensor("conv2d weight (O, C, kh, kw)", weight, dim=4, floating=True, nonempty=False)
    check_int("stride", stride, low=1)
    check_int("padding", padding, low=0)
    if weight.dtype != x.dtype:
        raise ValueError(f"expected weight of the input's dtype {x.dtype}, got {weight.dtype}")
    B, C, H, W = x.shape
    O, Cw, kh, kw = weight.shape
    if C != Cw:
        raise ValueError(f"expected input with {Cw} channels (weight is {tuple(weight.shape)}), got {C}")
    if H + 2 * padding < kh or W + 2 * padding < kw:
        raise ValueError(f"expected padded input of at least {kh}x{kw}, got {H + 2 * padding}x{W + 2 * padding}")
    if bias is not None and tuple(bias.shape) != (O,):
        raise ValueError(f"expected bias of shape ({O},), got {tuple(bias.shape)}")
    cols = im2col(x, kh, kw, stride, padding)  # (B, C, Ho, Wo, kh, kw), a view
    Ho, Wo = cols.shape[2], cols.shape[3]
    # X_col: one column per output position, C*kh*kw rows; this reshape is the copy.
    cols = cols.permute(0, 1, 4, 5, 2, 3).reshape(B, C * kh * kw, Ho * Wo)  # (B, C*kh*kw, L)
    out = weight.reshape(O, C * kh * kw) @ cols  # (B, O, L): A = W X_col for every image
    if bias is not None:
        out = out + bias[:, None]
    return out.reshape(B, O, Ho, Wo)  # (B, O, Ho, Wo)


def _pool_windows(x, kernel_size, stride, padding, pad_value):
    check_images("pooling input", x, nonempty=False)
    if isinstance(kernel_size, (tuple, list)):
        raise ValueError(f"expected an int kernel_size (square windows only), got {kernel_size!r}")
    check_int("kernel_size", kernel_size, low=1)
    stride = kernel_size if stride is None else stride
    check_int("stride", stride, low=1)
    check_int("padding", padding, low=0)
    if padding > kernel_size // 2:
        raise ValueError(f"expected padding <= kernel_size // 2 = {kernel_size // 2}, got {padding}")
    H, W = x.shape[2:]
    if min(H, W) + 2 * padding < kernel_size:
        raise ValueError(
            f"expected padded input of at least {kernel_size}x{kernel_size}, got {H}x{W} + {padding} padding"
        )
    win = im2col(x, kernel_size, kernel_size, stride, padding, pad_value)  # (B, C, Ho, Wo, k, k)
    return win.reshape(*win.shape[:4], kernel_size * kernel_size), stride  # (B, C, Ho, Wo, k*k)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Average of each k x k window (zero padding counted, like F.avg_pool2d's default).

    x (B, C, H, W) -> (B, C, Ho, Wo); stride defaults to kernel_size. Empty batch in, empty out.
    """
    return _pool_windows(x, kernel_size, stride, padding, 0.0)[0].mean(-1)


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Maximum of each k x k window; padding is -inf, so it never wins a value.

    x (B, C, H, W) -> (B, C, Ho, Wo); empty batch in, empty out. The gradient flows to one
    input per window, chosen as F.max_pool2d chooses it: the first maximum in raster order
    among the window's real (unpadded) pixels. (A plain `.max(-1)` would hand the gradient
    to a padded -inf when a window's real pixels are all -inf too: that gradient is lost.)
    """
    win, stride = _pool_windows(x, kernel_size, stride, padding, float("-inf"))  # (B, C, Ho, Wo, k*k)
    H, W = x.shape[2:]
    real = torch.ones(1, 1, H, W, device=x.device)
    real = _pool_windows(real, kernel_size, stride, padding, 0.0)[0] > 0  # (1, 1, Ho, Wo, k*k): not padding
    top = win.amax(-1, keepdim=True)  # (B, C, Ho, Wo, 1); NaN if the window holds one
    hit = ((win == top) | win.isnan()) & real  # candidates: maxima (or NaNs) on real pixels
    idx = hit.to(torch.uint8).argmax(-1, keepdim=True)  # first candidate in raster order
    return win.gather(-1, idx).squeeze(-1)  # (B, C, Ho, Wo); gather routes the gradient to idx


class Conv2d(nn.Module):
    """A layer of `out_channels` feature maps with shared k x k kernels.

    impl="unfold" uses this file's `conv2d`; impl="torch" swaps in F.conv2d (same
    weights, same result as the Check shows) for fast training runs. An optional
    `connections` list (one list of input channels per output map, e.g. C3_TABLE)
    keeps only those kernels, as in the 1998 paper's C3 (Table I).
    """

    def __init__(
        self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, impl="unfold", connections=None
    ):
        super().__init__()
        for name, v in dict(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size).items():
            check_int(name, v, low=1)
        check_int("stride", stride, low=1)
        check_int("padding", padding, low=0)
        self.stride, self.padding, self.impl = stride, padding, check_choice("impl", impl, ("unfold", "torch"))
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        if connections is None:
            self.mask = None
        else:
            if len(connections) != out_channels or any(not 0 <= c < in_channels for cs in connections for c in cs):
                raise ValueError(
                    f"expected {out_channels} lists of input channels in [0, {in_channels}), got {connections}"
                )
            mask = torch.zeros(out_channels, in_channels, 1, 1)
            for o, cs in enumerate(connections):
                mask[o, cs] = 1.0
            self.register_buffer("mask", mask)
        # Weights uniform in +-1/sqrt(F_i), F_i = the unit's fan-in (PyTorch's default scale).
        # Appendix A's +-2.4/F_i trained more slowly with Adam in our runs.
        fan_in = kernel_size**2 * (in_channels if self.mask is None else self.mask.sum((1, 2, 3), keepdim=True))
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0).mul_(fan_in**-0.5)

    def n_params(self):
        """Trainable parameters actually used (kernels outside `connections` excluded)."""
        w = self.weight.numel() if self.mask is None else int(self.mask.sum()) * self.weight[0, 0].numel()
        return w + (0 if self.bias is None else self.bias.numel())

    def forward(self, x):
        """(B, in_channels, H, W) -> (B, out_channels, Ho, Wo)."""
        w = self.weight if self.mask is None else self.weight * self.mask  # (O, C, k, k)
        if self.impl == "torch":
            check_images("Conv2d input", x, channels=w.shape[1], nonempty=False)
            return F.conv2d(x, w, self.bias, self.stride, self.padding)
        return conv2d(x, w, self.bias, self.stride, self.padding)


class AvgPool2d(nn.Module):
    """Module form of `avg_pool2d`."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.args = (kernel_size, stride, padding)

    def forward(self, x):
        """(B, C, H, W) -> (B, C, Ho, Wo)."""
        return avg_pool2d(x, *self.args)


class MaxPool2d(AvgPool2d):
    """Module form of `max_pool2d`."""

    def forward(self, x):
        """(B, C, H, W) -> (B, C, Ho, Wo)."""
        return max_pool2d(x, *self.args)


class Subsampling(nn.Module):
    """The 1998 paper's S2/S4 layers (Sec. II-B): the 4 inputs of each 2x2 window are
    added, multiplied by one trainable coefficient per map, plus one trainable bias
    (2 parameters per map). The squashing function is applied by the network.
    (B, C, H, W) -> (B, C, H/2, W/2); C must equal `channels`; empty batch in, empty out.
    """

    def __init__(self, channels):
        super().__init__()
        self.channels = check_int("channels", channels, low=1)
        self.coef = nn.Parameter(torch.full((channels,), 0.25))  # 0.25 * sum = plain average
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        """beta * (sum of each 2x2 window) + b, per map."""
        check_images("Subsampling input", x, channels=self.channels, min_size=2, nonempty=False)
        s = 4.0 * avg_pool2d(x, 2)  # (B, C, H/2, W/2): the sum of each window
        return s * self.coef[:, None, None] + self.bias[:, None, None]


class ScaledTanh(nn.Module):
    """f(a) = A tanh(S a), A = 1.7159, S = 2/3 (1998 paper, Sec. II-B and Appendix A):
    f(1) = 1, f(-1) = -1 and the gain is largest around the targets."""

    def forward(self, a):
        """Elementwise A tanh(S a)."""
        return 1.7159 * torch.tanh(a * (2.0 / 3.0))


class LeNet5(nn.Module):
    """LeNet-5 (1998 paper, Sec. II-B, Fig. 2): C1-S2-C3-S4-C5-F6-output.

    Input (B, 1, 28, 28) MNIST; C1 pads by 2, the same as the paper's centring of the
    28x28 digit in a 32x32 field. C1: 6 maps 28x28; S2: 6 maps 14x14; C3: 16 maps 10x10
    connected by Table I (`c3_table=True`) or fully; S4: 16 maps 5x5; C5: 120 maps 1x1;
    F6: 84 units; output: `num_classes` logits. Simplifications: a linear output layer
    with cross-entropy replaces the paper's Euclidean RBF units, and `pool="avg"`
    replaces the trainable subsampling by plain average pooling.
    """

    def __init__(self, num_classes=10, impl="unfold", c3_table=True, pool="trainable"):
        super().__init__()
        check_choice("pool", pool, ("trainable", "avg", "max"))
        check_int("num_classes", num_classes, low=2)

        def sub(c):  # S2 / S4
            if pool == "trainable":
                return Subsampling(c)
            return AvgPool2d(2) if pool == "avg" else MaxPool2d(2)

        self.c1 = Conv2d(1, 6, 5, padding=2, impl=impl)
        self.s2 = sub(6)
        self.c3 = Conv2d(6, 16, 5, impl=impl, connections=C3_TABLE if c3_table else None)
        self.s4 = sub(16)
        self.c5 = Conv2d(16, 120, 5, impl=impl)
        self.f6 = nn.Linear(120, 84)
        self.out = nn.Linear(84, num_classes)
        self.act = ScaledTanh()

    def set_impl(self, impl):
        """Switch every convolution between this file's "unfold" and F.conv2d ("torch")."""
        check_choice("impl", impl, ("unfold", "torch"))
        for m in self.modules():
            if isinstance(m, Conv2d):
                m.impl = impl
        return self

    def n_params(self):
        """Trainable parameters in use (C3's unconnected kernels excluded): 60,850 with Table I."""
        return sum(
            m.n_params() if isinstance(m, Conv2d) else sum(p.numel() for p in m.parameters(recurse=False))
            for m in self.modules()
        )

    def forward(self, x):
        """(B, 1, 28, 28) digits -> (B, num_classes) logits; empty batch in, empty out."""
        check_images("LeNet5", x, channels=1, nonempty=False)
        if tuple(x.shape[2:]) != (28, 28):
            raise ValueError(f"LeNet5 expects images of shape (B, 1, 28, 28), got {tuple(x.shape)}")
        h = self.act(self.s2(self.act(self.c1(x))))  # (B, 6, 14, 14)
        h = self.act(self.s4(self.act(self.c3(h))))  # (B, 16, 5, 5)
        h = self.act(self.c5(h)).flatten(1)  # (B, 120)
        return self.out(self.act(self.f6(h)))  # (B, num_classes)


class MLP(nn.Module):
    """A fully connected net with the same squashing function: the baseline the paper
    compares against (Sec. III). in_features -> hidden... -> num_classes; the default
    784-77-10 has about as many parameters as LeNet5 (61,225 vs 60,850)."""

    def __init__(self, in_features=784, hidden=(77,), num_classes=10):
        super().__init__()
        sizes = [in_features, *hidden, num_classes]
        for s in sizes:
            check_int("layer size", s, low=1)
        self.in_features = in_features
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = ScaledTanh()

    def n_params(self):
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, x):
        """(B, ...) with in_features values per example -> (B, num_classes) logits.

        An empty batch (B = 0) gives an empty (0, num_classes) result, as nn.Linear does.
        """
        check_tensor("MLP input", x, floating=True, nonempty=False)
        if x.dim() < 2 or x.shape[1:].numel() != self.in_features:
            raise ValueError(f"MLP expects (B, ...) with {self.in_features} features per example, "
                             f"got shape {tuple(x.shape)}")
        h = x.flatten(1)  # (B, in_features)
        for layer in self.layers[:-1]:
            h = self.act(layer(h))
        return self.layers[-1](h)  # (B, num_classes)


def matched_hidden(n_params, in_features=784, num_classes=10):
    """Width h of a one-hidden-layer MLP whose (in+1)*h + (h+1)*classes parameters come
    closest to n_params."""
    check_int("n_params", n_params, low=1)
    return max(1, round((n_params - num_classes) / (in_features + 1 + num_classes)))


def translate(x, dx, dy):
    """Shift each image by integer (dx[b], dy[b]) pixels (right, down), filling with zeros.

    x (B, C, H, W); dx, dy int tensors (B,). Pixels pushed outside are lost.
    """
    check_images("translate input", x, nonempty=False)
    B, C, H, W = x.shape
    if dx.shape != (B,) or dy.shape != (B,):
        raise ValueError(f"expected dx and dy of shape ({B},), got {tuple(dx.shape)} and {tuple(dy.shape)}")
    rows = torch.arange(H, device=x.device) - dy[:, None].to(x.device)  # (B, H) source rows
    cols = torch.arange(W, device=x.device) - dx[:, None].to(x.device)  # (B, W) source cols
    valid = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]  # (B, H, W)
    b = torch.arange(B, device=x.device)[:, None, None]
    out = x[b, :, rows.clamp(0, H - 1)[:, :, None], cols.clamp(0, W - 1)[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2) * valid[:, None].to(x.dtype)  # (B, C, H, W)


def bench_conv(device="cpu", repeats=20, batch=64, in_channels=6, out_channels=16, size=28, kernel=5):
    """Forward+backward time of this file's unfold conv2d vs F.conv2d on the same shapes
    (default: a LeNet-like layer, batch 64, 6->16 maps, 5x5, 28x28, padding 2).

    Returns {"unfold_ms", "conv2d_ms", "ratio", "name"} with medians over `repeats` runs;
    ratio = unfold_ms / conv2d_ms.
    """
    check_int("repeats", repeats, low=1)
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, in_channels, size, size, generator=g).to(device).requires_grad_()
    w = torch.randn(out_channels, in_channels, kernel, kernel, generator=g).to(device).requires_grad_()
    b = torch.randn(out_channels, generator=g).to(device).requires_grad_()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(fn):
        times = []
        for i in range(repeats + 3):  # 3 warm-up runs
            sync()
            t = time.perf_counter()
            fn(x, w, b, stride=1, padding=kernel // 2).square().sum().backward()
            sync()
            if i >= 3:
                times.append(time.perf_counter() - t)
            x.grad = w.grad = b.grad = None
        return 1000.0 * sorted(times)[len(times) // 2]

    unfold_ms, conv2d_ms = timed(conv2d), timed(F.conv2d)
    name = f"conv fwd+bwd {batch}x{in_channels}x{size}x{size} -> {out_channels} maps, {kernel}x{kernel}"
    return {"unfold_ms": unfold_ms, "conv2d_ms": conv2d_ms, "ratio": unfold_ms / conv2d_ms, "name": name}
