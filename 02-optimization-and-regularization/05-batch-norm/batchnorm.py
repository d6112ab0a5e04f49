"""Batch normalization from scratch (Ioffe & Szegedy, 2015).

"Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate Shift"
normalises each activation x^(k) of a layer over the mini-batch B = {x_1..m} (Alg. 1):

    mu_B = (1/m) sum_i x_i,   sigma_B^2 = (1/m) sum_i (x_i - mu_B)^2,
    x_hat_i = (x_i - mu_B) / sqrt(sigma_B^2 + eps),   y_i = gamma x_hat_i + beta,

with a learned scale gamma and shift beta per activation (per channel for convolutions, Sec. 3.2,
where B holds every position of a feature map in the mini-batch). The gradients flow through
mu_B and sigma_B^2 too (the chain rule of Sec. 3, written out in ``_BatchNormTrain.backward``).
At inference the mini-batch statistics are replaced by population estimates (Alg. 2), here the
running averages PyTorch keeps: running <- (1 - momentum) running + momentum * batch statistic,
with the unbiased variance m / (m - 1) sigma_B^2 in the running estimate (Alg. 2, step 10) and the
biased sigma_B^2 in the normalisation. ``momentum=None`` gives the plain average over all batches
seen, which is what Alg. 2 describes.

Contents: ``batch_norm`` (functional, same arguments as ``torch.nn.functional.batch_norm``),
``BatchNorm`` (a module for (N, C) and (N, C, H, W) inputs, with the state-dict names of
``nn.BatchNorm1d/2d``), ``SigmoidMLP`` (the MNIST net of Sec. 4.1 with or without BN), and
``bench_batchnorm``.
"""

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from common.checks import check_float, check_int, check_tensor


def _dims(x):
    """The dimensions a channel's statistics are taken over: the batch, and the positions of a map."""
    return (0,) if x.dim() == 2 else (0, 2, 3)


def _per_channel(v, x):
    """A per-channel vector (C,) shaped to broadcast against x: (1, C) or (1, C, 1, 1)."""
    return v.view(1, -1) if x.dim() == 2 else v.view(1, -1, 1, 1)


class _BatchNormTrain(torch.autograd.Function):
    """Alg. 1 on one mini-batch; its backward is the paper's chain rule (Sec. 3), not autograd's."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        dims = _dims(x)
        mu = x.mean(dims, keepdim=True)  # (1, C[, 1, 1]) mini-batch mean
        xc = x - mu  # (N, C[, H, W])
        var = (xc * xc).mean(dims, keepdim=True)  # biased mini-batch variance sigma_B^2
        inv_std = 1.0 / torch.sqrt(var + eps)  # (1, C[, 1, 1])
        y = xc * inv_std  # x_hat
        if weight is not None:
            y = y * _per_channel(weight, x)
        if bias is not None:
            y = y + _per_channel(bias, x)
        ctx.save_for_backward(xc, inv_std, weight)
        ctx.dims = dims
        mu, var = mu.flatten(), var.flatten()  # (C,) each, handed out for the running estimates
        ctx.mark_non_differentiable(mu, var)
        return y, mu, var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, _grad_mu, _grad_var):
        xc, inv_std, weight = ctx.saved_tensors
        dims, m = ctx.dims, xc.numel() // xc.shape[1]  # m values per channel
        g = grad_y * _per_channel(weight, xc) if weight is not None else grad_y  # dl/dx_hat = dl/dy * gamma
        sum_ = lambda t: t.sum(dims, keepdim=True)
        # dl/dsigma^2 = sum_i dl/dx_hat_i (x_i - mu_B) (-1/2) (sigma_B^2 + eps)^(-3/2)
        d_var = sum_(g * xc) * (-0.5) * inv_std ** 3
        # dl/dmu_B = sum_i dl/dx_hat_i (-1 / sqrt(sigma_B^2 + eps)) + dl/dsigma^2 sum_i -2 (x_i - mu_B) / m
        d_mu = -sum_(g) * inv_std + d_var * sum_(-2 * xc) / m
        # dl/dx_i = dl/dx_hat_i / sqrt(sigma_B^2 + eps) + dl/dsigma^2 2 (x_i - mu_B) / m + dl/dmu_B / m
        dx = g * inv_std + d_var * 2 * xc / m + d_mu / m
        d_gamma = (grad_y * xc * inv_std).sum(dims) if ctx.needs_input_grad[1] else None  # sum_i dl/dy_i x_hat_i
        d_beta = grad_y.sum(dims) if ctx.needs_input_grad[2] else None  # sum_i dl/dy_i
        return dx, d_gamma, d_beta, None


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Batch-normalise x (N, C) or (N, C, H, W) per channel; the arguments of ``F.batch_norm``.

    ``training=True``: normalise with the mini-batch mean and biased variance over N (and H, W)
    (Alg. 1), and, when ``running_mean`` / ``running_var`` (C,) are given, update them in place:
    running = (1 - momentum) running + momentum * statistic, with the unbiased variance
    m / (m - 1) sigma_B^2, m = N H W (Alg. 2, step 10). Needs m > 1, as PyTorch does.
    ``training=False``: the inference transform of Alg. 2 (step 11) with the running estimates.
    ``weight`` (gamma) and ``bias`` (beta) are (C,) or None. Returns a tensor shaped like x.
    """
    check_tensor("batch_norm input (N, C) or (N, C, H, W)", x, dim=(2, 4), floating=True)
    c = x.shape[1]
    if c == 0:
        raise ValueError(f"batch_norm expects at least one channel, got shape {tuple(x.shape)}")
    for name, v in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        if v is not None and (not isinstance(v, torch.Tensor) or v.shape != (c,)):
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"batch_norm: {name} must be a tensor of shape ({c},) for {c} channels, got {got}")
    eps = check_float("eps", eps, low=0.0, low_open=True)
    momentum = check_float("momentum", momentum, low=0.0, high=1.0)
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm in eval mode (training=False) needs running_mean and running_var")
        # Alg. 2, step 11: y = gamma / sqrt(Var[x] + eps) * x + (beta - gamma E[x] / sqrt(Var[x] + eps))
        y = (x - _per_channel(running_mean, x)) / torch.sqrt(_per_channel(running_var, x) + eps)
        if weight is not None:
            y = y * _per_channel(weight, x)
        return y + _per_channel(bias, x) if bias is not None else y
    m = x.numel() // c
    if m <= 1:
        raise ValueError(f"batch_norm in training mode expects more than 1 value per channel, got input of shape "
                         f"{tuple(x.shape)}: the batch variance of a single value is 0")
    y, mu, var = _BatchNormTrain.apply(x, weight, bias, eps)
    with torch.no_grad():
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(momentum * mu)
        if running_var is not None:
            running_var.mul_(1 - momentum).add_(momentum * var * (m / (m - 1)))  # unbiased in the estimate
    return y


class BatchNorm(nn.Module):
    """Batch normalisation of (N, C) or (N, C, H, W) inputs with C = ``num_features`` (Alg. 1 and 2).

    Learned gamma (``weight``, ones) and beta (``bias``, zeros) per channel when ``affine``; buffers
    ``running_mean`` (zeros), ``running_var`` (ones) and ``num_batches_tracked``, named as in
    ``nn.BatchNorm1d/2d`` so their state dicts load into each other. ``train()`` normalises with
    the mini-batch statistics and updates the running ones; ``eval()`` uses the running ones.
    ``momentum=None``: the running estimates are the plain average over all training batches seen.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True):
        super().__init__()
        self.num_features = check_int("num_features", num_features, low=1)
        self.eps = check_float("eps", eps, low=0.0, low_open=True)
        self.momentum = None if momentum is None else check_float("momentum", momentum, low=0.0, high=1.0)
        if not isinstance(affine, bool):
            raise ValueError(f"affine must be a bool, got {type(affine).__name__} {affine!r}")
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x):
        """Normalise x (N, C) or (N, C, H, W) per channel; returns the same shape."""
        check_tensor(f"BatchNorm({self.num_features}) input (N, C) or (N, C, H, W)", x, dim=(2, 4), floating=True)
        if x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm({self.num_features}) expects {self.num_features} channels in dim 1, "
                             f"got {x.shape[1]} (input shape {tuple(x.shape)})")
        factor = self.momentum
        if self.training:
            if x.numel() // x.shape[1] <= 1:  # checked before the counter moves
                raise ValueError(f"BatchNorm in training mode expects more than 1 value per channel, got input "
                                 f"of shape {tuple(x.shape)}; use eval() for single examples")
            self.num_batches_tracked.add_(1)
            if factor is None:  # cumulative average: the k-th batch gets weight 1/k
                factor = 1.0 / float(self.num_batches_tracked)
        return batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                          0.0 if factor is None else factor, self.eps)

    def extra_repr(self):
        """``num_features, eps, momentum, affine`` as in PyTorch's repr."""
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


class SigmoidMLP(nn.Module):
    """The MNIST net of Sec. 4.1: hidden layers of sigmoid units, then a linear layer to the classes.

    Without BN each hidden layer computes z = sigmoid(W u + b); with ``batch_norm=True`` it computes
    z = sigmoid(BN(W u)) (Sec. 3.2: the bias is dropped, beta takes its role). Weights start as small
    Gaussians N(0, ``init_std``^2), biases at 0. ``forward(x)`` returns logits (B, num_classes);
    ``forward(x, return_inputs=True)`` also returns the sigmoid inputs of every hidden layer, a list
    of (B, width) tensors: the quantity of the paper's Fig. 1(b, c).
    """

    def __init__(self, hidden=(100, 100, 100), batch_norm=False, in_features=784, num_classes=10,
                 init_std=0.1):
        super().__init__()
        if not isinstance(hidden, (list, tuple)) or not hidden:
            raise ValueError(f"hidden must be a non-empty list of layer widths, got {hidden!r}")
        widths = [check_int("hidden width", w, low=1) for w in hidden]
        check_int("in_features", in_features, low=1)
        check_int("num_classes", num_classes, low=2)
        init_std = check_float("init_std", init_std, low=0.0, low_open=True)
        if not isinstance(batch_norm, bool):
            raise ValueError(f"batch_norm must be a bool, got {type(batch_norm).__name__} {batch_norm!r}")
        self.batch_norm, self.in_features = batch_norm, in_features
        sizes = [in_features, *widths]
        self.linears = nn.ModuleList(nn.Linear(a, b, bias=not batch_norm) for a, b in zip(sizes[:-1], sizes[1:]))
        self.norms = nn.ModuleList(BatchNorm(w) for w in widths) if batch_norm else None
        self.out = nn.Linear(widths[-1], num_classes)
        for layer in [*self.linears, self.out]:
            nn.init.normal_(layer.weight, 0.0, init_std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def forward(self, x, return_inputs=False):
        """Logits (B, num_classes) for x (B, ...) flattened to (B, in_features); optionally the sigmoid inputs."""
        check_tensor("SigmoidMLP input", x, floating=True)
        h = x.flatten(1)  # (B, in_features)
        if h.shape[1] != self.in_features:
            raise ValueError(f"SigmoidMLP expects {self.in_features} input features, got {h.shape[1]}")
        inputs = []
        for i, linear in enumerate(self.linears):
            a = linear(h)  # (B, width): W u (+ b)
            if self.norms is not None:
                a = self.norms[i](a)  # BN(W u)
            inputs.append(a)
            h = torch.sigmoid(a)
        logits = self.out(h)
        return (logits, inputs) if return_inputs else logits


def bench_batchnorm(device="cpu", repeats=10, shape=(64, 64, 32, 32)):
    """Forward + backward time of ``BatchNorm`` (this file) vs ``nn.BatchNorm2d`` in training mode.

    Same input (default (64, 64, 32, 32)) and upstream gradient for both; returns
    {"ours_ms", "theirs_ms", "ratio", "name"}, medians over ``repeats`` timed runs after 2 warm-ups,
    alternating the two sides (:func:`common.bench.time_forward_backward`), ratio = ours / theirs. Ours is slower: it runs each step of Alg. 1 and of the paper's chain rule
    as a separate elementwise or reduction op, so the activation tensor is read and a full-size
    temporary written about a dozen times, while PyTorch's native kernel computes the statistics in
    one fused pass and the normalisation (and its gradient) in one more.
    """
    from common.bench import time_forward_backward

    check_int("repeats", repeats, low=1)
    if not isinstance(shape, (list, tuple)) or len(shape) != 4:
        raise ValueError(f"shape must be (N, C, H, W), got {shape!r}")
    shape = tuple(check_int("shape entry", s, low=1) for s in shape)
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(shape, generator=g).to(device)
    gy = torch.randn(shape, generator=g).to(device)
    ours, theirs = time_forward_backward(BatchNorm(shape[1]).to(device).train(),
                                         nn.BatchNorm2d(shape[1]).to(device).train(), x0, grad_out=gy,
                                         device=device, repeats=repeats, warmup=2)
    return {"ours_ms": ours, "theirs_ms": theirs, "ratio": ours / theirs,
            "name": f"batch norm fwd+bwd, train mode, {shape}"}
