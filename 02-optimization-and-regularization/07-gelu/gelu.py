"""The Gaussian Error Linear Unit from scratch (Hendrycks & Gimpel, 2016).

"Gaussian Error Linear Units (GELUs)", Sec. 2: multiply a unit's input x by a random mask
m ~ Bernoulli(Phi(x)), where Phi is the standard normal CDF, so that an input is more likely to be
"dropped" the smaller it is. The expected output of that stochastic unit is the deterministic GELU:

    GELU(x) = E[m x] = Phi(x) * x + (1 - Phi(x)) * 0 = x Phi(x) = x * (1/2) [1 + erf(x / sqrt(2))],

and the paper's faster approximation (Sec. 2; used in all of the paper's experiments, Sec. 4):

    GELU(x) ~ 0.5 x (1 + tanh[sqrt(2/pi) (x + 0.044715 x^3)]).

Both are ``torch.autograd.Function``s with their derivatives written out (the tests compare values
and gradients with ``F.gelu(approximate="none" | "tanh")`` and run ``gradcheck``):

    d/dx x Phi(x) = Phi(x) + x phi(x),            phi(x) = exp(-x^2 / 2) / sqrt(2 pi);
    d/dx tanh form = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2),   t = tanh(...).

Also here: ``stochastic_gelu`` (the random mask itself, whose mean is the GELU), ``MLP`` (the paper's
Sec. 3.1 MNIST classifier: 8 hidden layers of 128 units, unit-norm-row initialisation, optional dropout
after every hidden layer) and ``bench_gelu`` (ours against ``F.gelu``). ReLU and ELU, the baselines,
are taken from PyTorch: the ReLU topic verified ``F.relu``, and the ELU is not this paper's method.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.checks import check_choice, check_int, check_probability, check_tensor

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
CUBIC = 0.044715  # the coefficient of x^3 in the tanh approximation (Sec. 2)
APPROXIMATIONS = ("none", "tanh")  # the names F.gelu uses


def normal_cdf(x):
    """Phi(x) = P(X <= x), X ~ N(0, 1), elementwise, as (1/2) erfc(-x / sqrt(2)).

    Algebraically (1/2)(1 + erf(x / sqrt(2))); the erfc form keeps relative accuracy in the left tail,
    where 1 + erf(...) cancels to 0 (e.g. Phi(-10) ~ 7.6e-24, which erfc returns and 1 + erf rounds to 0).
    """
    check_tensor("normal_cdf input", x, floating=True, nonempty=False)
    return 0.5 * torch.erfc(-x * (0.5 ** 0.5))


class _GELUExact(torch.autograd.Function):
    """x Phi(x); derivative Phi(x) + x phi(x) with phi the standard normal density."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * (0.5 * torch.erfc(-x * (0.5 ** 0.5)))  # x Phi(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        cdf = 0.5 * torch.erfc(-x * (0.5 ** 0.5))
        pdf = torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        return grad * (cdf + x * pdf)


class _GELUTanh(torch.autograd.Function):
    """0.5 x (1 + tanh u), u = sqrt(2/pi)(x + c x^3); derivative 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)  # t is recomputed in backward, so the backward stays differentiable in x
        return 0.5 * x * (1 + torch.tanh(SQRT_2_OVER_PI * (x + CUBIC * x * x * x)))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        t = torch.tanh(SQRT_2_OVER_PI * (x + CUBIC * x * x * x))
        du_dx = SQRT_2_OVER_PI * (1 + 3 * CUBIC * x * x)
        # where t = +-1 exactly the second term is 0; computing it there could give 0 * inf = nan for huge |x|
        tail = torch.where(t.abs() < 1, 0.5 * x * (1 - t * t) * du_dx, torch.zeros((), dtype=x.dtype, device=x.device))
        return grad * (0.5 * (1 + t) + tail)


def _check_approximate(approximate):
    if not isinstance(approximate, str):
        raise ValueError(f"approximate must be one of {', '.join(map(repr, APPROXIMATIONS))}; got {approximate!r}")
    return check_choice("approximate", approximate, APPROXIMATIONS)


def gelu(x, approximate="none"):
    """GELU(x) = x Phi(x) elementwise (Sec. 2); ``approximate="tanh"`` uses the paper's tanh formula.

    Same arguments and results as ``F.gelu(x, approximate=...)``; ``approximate`` must be ``"none"`` or
    ``"tanh"`` (anything else raises ``ValueError``), ``x`` a floating tensor of any shape.
    """
    check_tensor("gelu input", x, floating=True, nonempty=False)
    fn = _GELUExact if _check_approximate(approximate) == "none" else _GELUTanh
    return fn.apply(x)


class GELU(nn.Module):
    """``gelu`` as a layer: ``GELU(approximate="none" | "tanh")(x)`` (like ``nn.GELU``)."""

    def __init__(self, approximate="none"):
        super().__init__()
        self.approximate = _check_approximate(approximate)

    def forward(self, x):
        """GELU of x, elementwise, any shape."""
        return gelu(x, self.approximate)

    def extra_repr(self):
        """Shown by ``repr``: which form is used."""
        return f"approximate={self.approximate!r}"


def stochastic_gelu(x, generator=None):
    """The stochastic regulariser behind the GELU (Sec. 2): x * m with m ~ Bernoulli(Phi(x)), elementwise.

    Each entry is kept (m = 1) with probability Phi(x) and zeroed otherwise, so E[x m] = x Phi(x) = GELU(x).
    A fresh mask is drawn on each call (from ``generator`` if given). Not differentiable through the mask.
    """
    check_tensor("stochastic_gelu input", x, floating=True, nonempty=False)
    keep = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) < normal_cdf(x)  # P = Phi(x)
    return x * keep.to(x.dtype)


def unit_norm_rows_(weight):
    """Sec. 3.1's initialisation, in place: Gaussian rows rescaled to unit L2 norm.

    ``weight`` is a Linear weight (fan_out, fan_in); each unit's incoming weight vector gets norm 1.
    """
    check_tensor("weight (fan_out, fan_in)", weight, dim=2, floating=True)
    with torch.no_grad():
        weight.normal_()
        return weight.div_(weight.norm(dim=1, keepdim=True))


ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "elu")


def make_activation(name):
    """A fresh activation layer by name: ours for ``"gelu"`` (exact) and ``"gelu_tanh"``; PyTorch's
    ``nn.ReLU`` and ``nn.ELU(alpha=1)`` (the paper's alpha, Sec. 3.1) for the baselines."""
    check_choice("activation", name, ACTIVATIONS)
    return {"gelu": lambda: GELU("none"), "gelu_tanh": lambda: GELU("tanh"), "relu": nn.ReLU,
            "elu": lambda: nn.ELU(alpha=1.0)}[name]()


class MLP(nn.Module):
    """Sec. 3.1's MNIST classifier: ``depth`` hidden layers of ``width`` units, each followed by the
    activation and (when ``dropout`` > 0) dropout with drop probability ``dropout``, then a linear output.

    Default 784 -> 128 (x8) -> 10. Weights get unit-norm rows (``unit_norm_rows_``), biases 0, whatever the
    activation. ``forward(x)``: x (B, ...) flattened to (B, in_features) -> logits (B, num_classes).
    """

    def __init__(self, depth=8, width=128, activation="gelu", dropout=0.0, in_features=784, num_classes=10):
        super().__init__()
        self.depth = check_int("depth", depth, low=1)
        self.width = check_int("width", width, low=1)
        check_int("in_features", in_features, low=1)
        check_int("num_classes", num_classes, low=2)
        self.activation = check_choice("activation", activation, ACTIVATIONS)
        self.dropout = check_probability("dropout", dropout)
        sizes = [in_features] + [width] * depth
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), make_activation(activation)]
            if self.dropout > 0:
                layers.append(nn.Dropout(self.dropout))
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Linear):
                unit_norm_rows_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        """Logits (B, num_classes) for inputs x (B, ...) with in_features values per example."""
        check_tensor("MLP input", x, floating=True)
        h = x.flatten(1)  # (B, in_features)
        if h.shape[1] != self.net[0].in_features:
            raise ValueError(f"expected {self.net[0].in_features} input features, got {h.shape[1]}")
        return self.net(h)


def bench_gelu(device="cpu", repeats=20, shape=(256, 4096), approximate="none"):
    """Forward + backward time of ``gelu`` (this file) vs ``F.gelu`` on one float32 tensor.

    Returns {"ours_ms", "theirs_ms", "ratio", "name"}: medians over ``repeats`` timed calls (after 3
    warm-up calls), alternating the two sides (:func:`common.bench.time_forward_backward`), ratio = ours / theirs. Ours is slower because it is a chain of separate elementwise
    kernels (erfc, multiplies, and in the backward exp, erfc and more multiplies), each reading and writing
    the whole tensor and allocating a temporary, whereas PyTorch computes the GELU and its derivative in one
    fused, vectorised kernel each.
    """
    from common.bench import time_forward_backward

    check_int("repeats", repeats, low=1)
    _check_approximate(approximate)
    device = torch.device(device)
    x = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(0)).to(device)
    ours, theirs = time_forward_backward(lambda t: gelu(t, approximate=approximate),
                                         lambda t: F.gelu(t, approximate=approximate), x, device=device,
                                         repeats=repeats)
    return {"ours_ms": ours, "theirs_ms": theirs, "ratio": ours / theirs,
            "name": f"GELU ({approximate}) fwd+bwd {tuple(shape)}"}
