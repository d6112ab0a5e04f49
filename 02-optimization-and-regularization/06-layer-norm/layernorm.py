"""Layer normalization from scratch (Ba, Kiros & Hinton, 2016), for feed-forward and recurrent nets.

Batch normalization standardises each summed input a_i over the *mini-batch* (the paper's eq. 2),
so its statistics depend on the batch size and, in a recurrent net, on the time step. Layer
normalization computes them over the H summed inputs of one layer, *for one training case* (eq. 3):

    mu = (1/H) sum_i a_i,    sigma = sqrt((1/H) sum_i (a_i - mu)^2),    a_bar_i = g_i (a_i - mu) / sigma + b_i

so it behaves the same at training and test time, at any batch size (even 1), at every time step.

Contents:
- ``layer_norm`` / ``LayerNorm``: eq. (3) and (15)-(16) with a hand-written backward pass; equal to
  ``F.layer_norm`` / ``nn.LayerNorm`` (one or more trailing dims, affine gain and bias optional).
- ``LNLSTMCell``: the LSTM of the supplementary material, eq. (17)-(19), and its layer-normalised
  version, eq. (20)-(22); ``layer_norm=False`` is the plain cell (equal to ``nn.LSTMCell``).
- ``LSTMClassifier``: a cell run over a sequence, classifying from its last hidden state.
- ``NormMLP``: a ReLU MLP whose hidden summed inputs are normalised by nothing, batch norm
  (``nn.BatchNorm1d``) or layer norm (Sec. 6.6: LN on the hidden layers, not on the softmax layer).
- ``bench_layernorm``: forward + backward time of ours against ``nn.LayerNorm``.
"""

import math

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from common.checks import check_choice, check_float, check_int, check_tensor


def _as_shape(normalized_shape) -> tuple:
    if isinstance(normalized_shape, int) and not isinstance(normalized_shape, bool):
        normalized_shape = (normalized_shape,)
    if isinstance(normalized_shape, torch.Size):
        normalized_shape = tuple(normalized_shape)
    if not isinstance(normalized_shape, (tuple, list)) or not normalized_shape:
        raise ValueError(f"normalized_shape must be a positive int or a non-empty tuple of them, "
                         f"got {normalized_shape!r}")
    for d in normalized_shape:
        check_int("each size in normalized_shape", d, low=1)
    return tuple(normalized_shape)


class _LayerNorm(torch.autograd.Function):
    """x_hat = (x - mu) / sqrt(var + eps) over the last k dims; y = x_hat * weight + bias.

    Backward, with n = number of normalised elements, g = dL/dy * weight and means over those elements:
        dL/dx = (g - mean(g) - x_hat * mean(g * x_hat)) / sqrt(var + eps)
    (mu and sigma depend on every x_i, which gives the two subtracted means);
        dL/dweight = sum over the leading dims of dL/dy * x_hat,   dL/dbias = sum of dL/dy.
    """

    @staticmethod
    def forward(ctx, x, k, weight, bias, eps):
        dims = tuple(range(-k, 0))
        mu = x.mean(dims, keepdim=True)  # (..., 1, ..., 1): one mean per training case (eq. 3)
        xc = x - mu
        rstd = torch.rsqrt((xc * xc).mean(dims, keepdim=True) + eps)  # 1 / sigma, biased variance (1/H)
        x_hat = xc * rstd
        ctx.save_for_backward(x_hat, rstd, weight)
        ctx.k, ctx.has_bias = k, bias is not None
        y = x_hat if weight is None else x_hat * weight
        return y if bias is None else y + bias

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x_hat, rstd, weight = ctx.saved_tensors
        dims = tuple(range(-ctx.k, 0))
        lead = tuple(range(grad.dim() - ctx.k))  # the dims the gain and bias are shared over
        g = grad if weight is None else grad * weight
        dx = (g - g.mean(dims, keepdim=True) - x_hat * (g * x_hat).mean(dims, keepdim=True)) * rstd
        dw = (grad * x_hat).sum(lead) if weight is not None and ctx.needs_input_grad[2] else None
        db = grad.sum(lead) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return dx, None, dw, db, None


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Layer normalization (eq. 3 and 15-16) of ``x`` over its trailing ``normalized_shape`` dims.

    x (..., *normalized_shape) floating; weight (gain g, the paper's alpha in eq. 15) and bias (b, beta)
    of shape ``normalized_shape`` or None; ``eps`` is added to the variance before the square root (the
    paper has none; PyTorch's default 1e-5). Returns a tensor shaped like x; equals ``F.layer_norm``.
    """
    check_tensor("layer_norm input", x, floating=True)
    shape = _as_shape(normalized_shape)
    eps = check_float("eps", eps, low=0.0)
    k = len(shape)
    if x.dim() < k or tuple(x.shape[-k:]) != shape:
        raise ValueError(f"layer_norm expected an input whose last {k} dim(s) are {shape} (normalized_shape), "
                         f"got shape {tuple(x.shape)}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None:
            check_tensor(f"layer_norm {name}", p, floating=True)
            if tuple(p.shape) != shape:
                raise ValueError(f"layer_norm {name} must have shape {shape} (normalized_shape), "
                                 f"got {tuple(p.shape)}")
    return _LayerNorm.apply(x, k, weight, bias, eps)


class LayerNorm(nn.Module):
    """``layer_norm`` as a module with a learned per-unit gain (init 1) and bias (init 0), as in Sec. 6.

    Same arguments, parameter names and state dict as ``nn.LayerNorm(normalized_shape, eps,
    elementwise_affine, bias)``: either module loads the other's weights.
    """

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True):
        super().__init__()
        self.normalized_shape = _as_shape(normalized_shape)
        self.eps = check_float("eps", eps, low=0.0)
        if not isinstance(elementwise_affine, bool) or not isinstance(bias, bool):
            raise ValueError(f"elementwise_affine and bias must be bools, got {elementwise_affine!r}, {bias!r}")
        self.elementwise_affine = elementwise_affine
        affine_bias = elementwise_affine and bias
        self.weight = nn.Parameter(torch.ones(self.normalized_shape)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(self.normalized_shape)) if affine_bias else None

    def forward(self, x):
        """Normalise x (..., *normalized_shape) over its trailing dims; same shape out."""
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        """The arguments, as nn.LayerNorm prints them."""
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class LNLSTMCell(nn.Module):
    """One LSTM step; with ``layer_norm=True`` the layer-normalised LSTM of the supplementary material.

    Plain (eq. 17-19):   [i, f, g, o] = W_x x_t + W_h h_{t-1} + b
    LN    (eq. 20-22):   [i, f, g, o] = LN(W_x x_t; g2, b2) + LN(W_h h_{t-1}; g1, b1) + b
    then  c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
          h_t = sigmoid(o) * tanh(c_t)            (plain)
          h_t = sigmoid(o) * tanh(LN(c_t; g3, b3))  (LN)
    Each LN normalises over all 4H gate pre-activations of its term (one mean and sigma per case and
    step), the input and recurrent terms separately; the cell state over its H units. Gates are stored
    in PyTorch's order (i, f, g, o; the paper writes f, i, o, g) and initialised as ``nn.LSTMCell``'s,
    U(-1/sqrt(H), 1/sqrt(H)); the single bias b is ``nn.LSTMCell``'s bias_ih + bias_hh.
    """

    def __init__(self, input_size, hidden_size, layer_norm=True):
        super().__init__()
        self.input_size = check_int("input_size", input_size, low=1)
        self.hidden_size = H = check_int("hidden_size", hidden_size, low=1)
        if not isinstance(layer_norm, bool):
            raise ValueError(f"layer_norm must be a bool, got {layer_norm!r}")
        self.layer_norm = layer_norm
        self.weight_ih = nn.Parameter(torch.empty(4 * H, input_size))  # W_x (4H, I)
        self.weight_hh = nn.Parameter(torch.empty(4 * H, H))  # W_h (4H, H)
        self.bias = nn.Parameter(torch.empty(4 * H))  # b (4H,)
        bound = 1 / math.sqrt(H)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)
        if layer_norm:
            self.ln_ih, self.ln_hh, self.ln_c = LayerNorm(4 * H), LayerNorm(4 * H), LayerNorm(H)

    def forward(self, x, state=None):
        """One step: x (B, input_size), state (h, c) each (B, hidden_size) or None (zeros) -> (h, c)."""
        check_tensor("LNLSTMCell input (B, input_size)", x, dim=2, floating=True)
        B, H = x.shape[0], self.hidden_size
        if x.shape[1] != self.input_size:
            raise ValueError(f"LNLSTMCell expected {self.input_size} input features, got shape {tuple(x.shape)}")
        if state is None:
            h = c = x.new_zeros(B, H)
        else:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise ValueError(f"state must be a pair (h, c), got {type(state).__name__}")
            h, c = state
            for name, t in (("h", h), ("c", c)):
                check_tensor(f"state {name}", t, dim=2, floating=True)
                if tuple(t.shape) != (B, H):
                    raise ValueError(f"state {name} must have shape {(B, H)}, got {tuple(t.shape)}")
        wx, wh = x @ self.weight_ih.T, h @ self.weight_hh.T  # (B, 4H) each
        if self.layer_norm:
            wx, wh = self.ln_ih(wx), self.ln_hh(wh)  # eq. (20): each term normalised on its own
        i, f, g, o = (wx + wh + self.bias).chunk(4, dim=1)  # (B, H) each
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # eq. (18) / (21)
        h = torch.sigmoid(o) * torch.tanh(self.ln_c(c) if self.layer_norm else c)  # eq. (19) / (22)
        return h, c


class LSTMClassifier(nn.Module):
    """An ``LNLSTMCell`` run over x (B, T, input_size) from a zero state; logits from the last h_T.

    Returns logits (B, num_classes). Used on MNIST read row by row (T = 28 rows of 28 pixels).
    """

    def __init__(self, input_size, hidden_size, num_classes, layer_norm=True):
        super().__init__()
        check_int("num_classes", num_classes, low=2)
        self.cell = LNLSTMCell(input_size, hidden_size, layer_norm)
        self.out = nn.Linear(hidden_size, num_classes)

    def forward(self, x):
        """Logits (B, num_classes) for sequences x (B, T, input_size), T >= 1."""
        check_tensor("LSTMClassifier input (B, T, input_size)", x, dim=3, floating=True)
        if x.shape[1] < 1 or x.shape[2] != self.cell.input_size:
            raise ValueError(f"LSTMClassifier expected (B, T >= 1, {self.cell.input_size}), got {tuple(x.shape)}")
        state = None
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)  # the same weights (and LN gains) at every step
        return self.out(state[0])


class NormMLP(nn.Module):
    """ReLU MLP in_features -> hidden... -> num_classes; each hidden summed input a is normalised.

    h = relu(N(W h_prev + b)), N = identity (``"none"``), ``nn.BatchNorm1d`` (``"batch"``: statistics
    over the mini-batch, running averages at eval) or our ``LayerNorm`` (``"layer"``: over the layer's
    units, per case). The output (softmax) layer is never normalised (Sec. 6.6). Returns logits.
    """

    def __init__(self, norm="layer", hidden=(256, 256), in_features=784, num_classes=10):
        super().__init__()
        self.norm = check_choice("norm", norm, ("none", "batch", "layer"))
        if not isinstance(hidden, (tuple, list)) or not hidden:
            raise ValueError(f"hidden must be a non-empty list of layer widths, got {hidden!r}")
        sizes = [check_int("in_features", in_features, low=1)] + [check_int("hidden width", w, low=1) for w in hidden]
        check_int("num_classes", num_classes, low=2)
        make = {"none": lambda w: nn.Identity(), "batch": nn.BatchNorm1d, "layer": LayerNorm}[norm]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.norms = nn.ModuleList(make(w) for w in sizes[1:])
        self.out = nn.Linear(sizes[-1], num_classes)

    def forward(self, x):
        """Logits (B, num_classes) for x (B, ...) flattened to (B, in_features)."""
        check_tensor("NormMLP input", x, floating=True)
        h = x.flatten(1)
        if h.shape[1] != self.layers[0].in_features:
            raise ValueError(f"NormMLP expected {self.layers[0].in_features} input features, got {h.shape[1]}")
        for layer, norm in zip(self.layers, self.norms):
            h = torch.relu(norm(layer(h)))
        return self.out(h)


def bench_layernorm(device="cpu", repeats=20, shape=(64, 128, 512)) -> dict:
    """Forward + backward time of ``LayerNorm`` (ours) vs ``nn.LayerNorm`` on x of ``shape``, last dim normalised.

    Returns {"ours_ms", "theirs_ms", "ratio", "name"}: medians over ``repeats`` (after 3 warm-ups),
    alternating the two sides (:func:`common.bench.time_forward_backward`), ratio = ours / theirs. Ours is slower because each line of the forward and backward is its own
    kernel making its own pass over memory (a mean, a subtraction, a square, another mean, ...) and
    keeps x_hat for the backward; PyTorch's layer norm computes the statistics and the output in one
    fused kernel per pass, saving only the per-row mean and 1/sigma.
    """
    from common.bench import time_forward_backward

    check_int("repeats", repeats, low=1)
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tuple(shape), generator=g).to(device)
    gy = torch.randn(tuple(shape), generator=g).to(device)
    ours, theirs = time_forward_backward(LayerNorm(shape[-1]).to(device), nn.LayerNorm(shape[-1]).to(device), x,
                                         grad_out=gy, device=device, repeats=repeats)
    return {"ours_ms": ours, "theirs_ms": theirs, "ratio": ours / theirs,
            "name": f"LayerNorm forward+backward, x {tuple(shape)}"}
