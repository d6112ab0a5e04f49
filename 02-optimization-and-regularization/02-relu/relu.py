"""Rectifier networks from scratch (Glorot, Bordes & Bengio, 2011).

"Deep Sparse Rectifier Neural Networks" compared hidden units computing
    rectifier  max(0, x),   tanh(x),   softplus log(1 + e^x)
(and, in this repository, the logistic sigmoid 1 / (1 + e^-x) of the 1980s nets) and found
that deep rectifier nets train well from random initialisation, without unsupervised
pre-training, and that their hidden codes are *exactly* sparse: many units output a true 0.

Each activation is a ``torch.autograd.Function`` with its forward and backward written out
here (the tests compare values and gradients with ``F.relu``, ``torch.sigmoid``,
``torch.tanh`` and ``F.softplus``). ``DeepMLP`` stacks ``depth`` hidden layers of one
activation with the same (Glorot-Bengio 2010 "normalised") initialisation for every
activation, and ``activation_stats`` measures the share of exactly-zero hidden activations
and the number of dead units (units that output 0 for every example seen).
"""

import torch
import torch.nn as nn

from common.checks import check_choice, check_int, check_tensor


class _ReLU(torch.autograd.Function):
    """max(0, x); derivative 1 where x > 0 and 0 elsewhere, including x = 0 (PyTorch's convention)."""

    @staticmethod
    def forward(ctx, x):
        pos = x > 0
        ctx.save_for_backward(pos)
        return torch.where(pos, x, torch.zeros((), dtype=x.dtype, device=x.device))

    @staticmethod
    def backward(ctx, grad):
        (pos,) = ctx.saved_tensors
        return grad * pos.to(grad.dtype)


class _Sigmoid(torch.autograd.Function):
    """1 / (1 + e^-x), computed without overflow; derivative y (1 - y) from the output y."""

    @staticmethod
    def forward(ctx, x):
        e = torch.exp(-x.abs())  # in (0, 1]: never overflows
        y = torch.where(x >= 0, 1 / (1 + e), e / (1 + e))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * y * (1 - y)


class _Tanh(torch.autograd.Function):
    """(e^x - e^-x) / (e^x + e^-x) = sign(x) (1 - e^-2|x|) / (1 + e^-2|x|); derivative 1 - y^2."""

    @staticmethod
    def forward(ctx, x):
        e = torch.exp(-2 * x.abs())
        y = torch.sign(x) * (1 - e) / (1 + e)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


class _Softplus(torch.autograd.Function):
    """log(1 + e^x) = max(x, 0) + log(1 + e^-|x|); derivative sigmoid(x)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0) + torch.log1p(torch.exp(-x.abs()))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * _Sigmoid.apply(x)


def relu(x):
    """Rectifier max(0, x), elementwise; gradient 0 at x = 0 as in ``F.relu``."""
    check_tensor("relu input", x, floating=True, nonempty=False)
    return _ReLU.apply(x)


def sigmoid(x):
    """Logistic sigmoid 1 / (1 + e^-x), elementwise (stable for large |x|)."""
    check_tensor("sigmoid input", x, floating=True, nonempty=False)
    return _Sigmoid.apply(x)


def tanh(x):
    """Hyperbolic tangent, elementwise (stable for large |x|)."""
    check_tensor("tanh input", x, floating=True, nonempty=False)
    return _Tanh.apply(x)


def softplus(x):
    """Softplus log(1 + e^x), the rectifier's smooth counterpart in the paper, elementwise."""
    check_tensor("softplus input", x, floating=True, nonempty=False)
    return _Softplus.apply(x)


ACTIVATIONS = {"relu": relu, "sigmoid": sigmoid, "tanh": tanh, "softplus": softplus}


def glorot_uniform_(weight):
    """Glorot & Bengio (2010) normalised initialisation, in place: U(-a, a), a = sqrt(6 / (fan_in + fan_out)).

    ``weight`` is a Linear weight (fan_out, fan_in). The same rule is used for every activation.
    """
    check_tensor("weight (fan_out, fan_in)", weight, dim=2, floating=True)
    fan_out, fan_in = weight.shape
    a = (6.0 / (fan_in + fan_out)) ** 0.5
    with torch.no_grad():
        return weight.uniform_(-a, a)


class DeepMLP(nn.Module):
    """``depth`` hidden layers of ``width`` units of one activation, then a linear softmax layer.

    in_features -> width -> ... -> width -> num_classes; every Linear weight is Glorot-uniform
    initialised and every bias starts at 0, whatever the activation. ``forward(x)`` returns
    logits (B, num_classes); ``forward(x, return_hidden=True)`` returns (logits, [h_1, ..., h_depth]),
    each h_i of shape (B, width), the post-activation hidden codes.
    """

    def __init__(self, depth, width=256, activation="relu", in_features=784, num_classes=10):
        super().__init__()
        self.depth = check_int("depth", depth, low=1)
        self.width = check_int("width", width, low=1)
        check_int("in_features", in_features, low=1)
        check_int("num_classes", num_classes, low=2)
        self.activation = check_choice("activation", activation, tuple(ACTIVATIONS))
        self.act = ACTIVATIONS[activation]
        sizes = [in_features] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = nn.Linear(width, num_classes)
        for layer in [*self.hidden, self.out]:
            glorot_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x, return_hidden=False):
        """Logits (B, num_classes) for x (B, ...) flattened to (B, in_features); optionally the hidden codes."""
        check_tensor("DeepMLP input", x, floating=True)
        h = x.flatten(1)
        if h.shape[1] != self.hidden[0].in_features:
            raise ValueError(f"expected {self.hidden[0].in_features} input features, got {h.shape[1]}")
        codes = []
        for layer in self.hidden:
            h = self.act(layer(h))
            codes.append(h)
        logits = self.out(h)
        return (logits, codes) if return_hidden else logits


def sparsity(h):
    """Share of exactly-zero entries in a hidden code (tensor) or in a list of codes (all entries pooled)."""
    hs = [h] if isinstance(h, torch.Tensor) else list(h)
    if not hs:
        raise ValueError("expected a tensor or a non-empty list of tensors, got an empty list")
    for i, t in enumerate(hs):
        check_tensor(f"hidden code {i}", t)
    zeros = sum(int((t == 0).sum()) for t in hs)
    return zeros / sum(t.numel() for t in hs)


def dead_units(h):
    """Boolean mask (units,) of the units of a code h (N, units) that are exactly 0 for all N examples."""
    check_tensor("hidden code (N, units)", h, dim=2)
    return (h == 0).all(0)


@torch.no_grad()
def activation_stats(model, x, batch_size=1000):
    """Per-layer exact sparsity and dead-unit counts of a ``DeepMLP`` over inputs x (N, ...).

    Returns dict(sparsity=[share of zeros in layer i], dead=[number of units of layer i that are 0
    on every one of the N inputs], overall_sparsity=share of zeros over all layers, dead_total).
    The model is run in eval mode (restored afterwards).
    """
    if not isinstance(model, DeepMLP):
        raise ValueError(f"expected a DeepMLP, got {type(model).__name__}")
    check_tensor("inputs", x, floating=True)
    check_int("batch_size", batch_size, low=1)
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    zeros = torch.zeros(model.depth, dtype=torch.long)
    alive = torch.zeros(model.depth, model.width, dtype=torch.bool)
    for start in range(0, len(x), batch_size):
        _, codes = model(x[start:start + batch_size].to(dev), return_hidden=True)
        for i, h in enumerate(codes):
            zeros[i] += int((h == 0).sum())
            alive[i] |= ~dead_units(h).cpu()
    model.train(was_training)
    n = len(x) * model.width
    return dict(sparsity=(zeros / n).tolist(), dead=(~alive).sum(1).tolist(),
                overall_sparsity=zeros.sum().item() / (n * model.depth), dead_total=int((~alive).sum()))
