"""Generative adversarial nets from scratch (Goodfellow et al., 2014).

A generator G maps noise z ~ p_z to data space; a discriminator D outputs the probability that its
input came from the data rather than from G. They play the two-player game of eq. (1):

    min_G max_D V(D, G) = E_x~p_data[log D(x)] + E_z~p_z[log(1 - D(G(z)))].

Algorithm 1 alternates k ascent steps on D (the paper used k = 1) with one descent step on G.
Sec. 3 notes that log(1 - D(G(z))) saturates early in training, when D rejects G's samples with
confidence, and proposes to let G maximise log D(G(z)) instead (the "non-saturating" loss): same
fixed point, stronger gradients. Working with D's logit l = log D / (1 - D) makes this exact:

    d/dl log(1 - sigmoid(l)) = -D        -> 0 as D(G(z)) -> 0  (minimax: the gradient vanishes)
    d/dl -log sigmoid(l)     = -(1 - D)  -> -1 as D(G(z)) -> 0  (non-saturating: it does not)

Contents: ``Generator`` (ReLU MLP, as in Sec. 5), ``Discriminator`` (maxout MLP with dropout, Sec. 5),
the losses, ``gan_step`` (Algorithm 1), ``generator_grad_norm`` (the Sec. 3 argument, measured),
the ring of 8 Gaussians with its mode-coverage score, and the Parzen-window log-likelihood the paper
reports in Table 1.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.checks import check_choice, check_float, check_int, check_tensor

LOSSES = ("minimax", "non_saturating")


class Generator(nn.Module):
    """G(z): an MLP with ReLU hidden layers from noise (B, z_dim) to data (B, *out_shape).

    ``output`` is ``"linear"`` (real-valued data, e.g. 2-D points) or ``"sigmoid"`` (pixels in [0, 1]);
    the paper's generators mix rectifiers and sigmoids (Sec. 5). ``batchnorm=True`` puts batch
    normalisation (Ioffe & Szegedy, 2015: later than the paper, as DCGAN did) before each ReLU.
    """

    def __init__(self, z_dim, out_shape, hidden=(128, 128), output="linear", batchnorm=False):
        super().__init__()
        self.z_dim = check_int("z_dim", z_dim, low=1)
        self.out_shape = tuple(out_shape) if isinstance(out_shape, (tuple, list)) else (out_shape,)
        for s in self.out_shape:
            check_int("out_shape entry", s, low=1)
        self.output = check_choice("output", output, ("linear", "sigmoid"))
        sizes = [z_dim, *[check_int("hidden width", h, low=1) for h in hidden]]
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), *([nn.BatchNorm1d(b)] if batchnorm else []), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(sizes[-1], math.prod(self.out_shape)))

    def forward(self, z):
        """Samples (B, *out_shape) for noise z (B, z_dim)."""
        check_tensor("generator noise z (B, z_dim)", z, dim=2, floating=True)
        if z.shape[1] != self.z_dim:
            raise ValueError(f"generator expects noise of width z_dim={self.z_dim}, got shape {tuple(z.shape)}")
        x = self.net(z)  # (B, prod(out_shape))
        x = torch.sigmoid(x) if self.output == "sigmoid" else x
        return x.view(len(z), *self.out_shape)

    def sample(self, n, generator=None):
        """n samples G(z) with z ~ N(0, I) drawn on the model's device (optionally from a torch.Generator)."""
        check_int("n", n, low=1)
        dev = next(self.parameters()).device
        z = torch.randn(n, self.z_dim, generator=generator, device=dev if generator is None else "cpu")
        return self(z.to(dev))


class Maxout(nn.Module):
    """Maxout layer (Goodfellow et al., 2013): ``pieces`` affine maps, elementwise max. (B, in) -> (B, out)."""

    def __init__(self, in_features, out_features, pieces=2):
        super().__init__()
        self.out_features = check_int("out_features", out_features, low=1)
        self.pieces = check_int("pieces", pieces, low=1)
        self.linear = nn.Linear(check_int("in_features", in_features, low=1), out_features * pieces)

    def forward(self, x):
        """max over pieces of the affine maps of x (B, in) -> (B, out)."""
        return self.linear(x).view(len(x), self.out_features, self.pieces).amax(-1)


class Discriminator(nn.Module):
    """D(x) as a logit: a maxout MLP with dropout on its hidden layers (Sec. 5); D(x) = sigmoid(logit).

    Input (B, *in_shape), flattened; output logits (B,). Returning the logit keeps the losses stable.
    """

    def __init__(self, in_features, hidden=(128, 128), pieces=2, dropout=0.0):
        super().__init__()
        self.in_features = check_int("in_features", in_features, low=1)
        p = check_float("dropout", dropout, 0.0, 1.0, high_open=True)
        sizes = [in_features, *[check_int("hidden width", h, low=1) for h in hidden]]
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [Maxout(a, b, pieces), nn.Dropout(p)]
        self.net = nn.Sequential(*layers, nn.Linear(sizes[-1], 1))

    def forward(self, x):
        """Logits (B,) of D for inputs x (B, ...)."""
        check_tensor("discriminator input", x, floating=True)
        h = x.reshape(len(x), -1)  # (B, in_features)
        if h.shape[1] != self.in_features:
            raise ValueError(f"discriminator expects {self.in_features} input features, got {h.shape[1]}")
        return self.net(h).squeeze(1)


def _check_logits(name, logits):
    return check_tensor(name, logits, dim=1, floating=True)


def discriminator_loss(real_logits, fake_logits):
    """-V(D, G) per minibatch (eq. 1, Algorithm 1's D step as a loss to minimise):

    -(1/m) sum log D(x) - (1/m) sum log(1 - D(G(z))),  with log D = -softplus(-l), log(1 - D) = -softplus(l).
    """
    _check_logits("real_logits (m,)", real_logits)
    _check_logits("fake_logits (m,)", fake_logits)
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits, kind="non_saturating"):
    """The generator's loss on D's logits for G(z) (m,).

    ``"minimax"``: (1/m) sum log(1 - D(G(z))), eq. (1) as G descends it (Algorithm 1);
    ``"non_saturating"``: -(1/m) sum log D(G(z)), Sec. 3's alternative with the same fixed point.
    """
    _check_logits("fake_logits (m,)", fake_logits)
    check_choice("kind", kind, LOSSES)
    if kind == "minimax":
        return -F.softplus(fake_logits).mean()  # log(1 - sigmoid(l)) = -softplus(l)
    return F.softplus(-fake_logits).mean()  # -log sigmoid(l) = softplus(-l)


def gan_step(G, D, opt_g, opt_d, real, loss="non_saturating"):
    """One iteration of Algorithm 1: k discriminator steps, then one generator step.

    ``real`` is a minibatch (m, ...) of data (k = 1, the paper's choice) or a list of k minibatches,
    one per discriminator step. Each step draws fresh noise z ~ N(0, I) of the same size m.
    Returns floats: ``d_loss``, ``g_loss`` (the chosen generator loss), ``d_real`` = mean D(x) and
    ``d_fake`` = mean D(G(z)) on the generator step's noise (before its update).
    """
    check_choice("loss", loss, LOSSES)
    batches = [real] if isinstance(real, torch.Tensor) else list(real)
    if not batches:
        raise ValueError("gan_step: real must be a minibatch tensor or a non-empty list of k minibatches")
    for i, x in enumerate(batches):
        check_tensor(f"real minibatch {i}", x, floating=True)
    dev = next(G.parameters()).device
    for x in batches:  # k steps on D, G fixed (its samples detached)
        z = torch.randn(len(x), G.z_dim, device=dev)
        d_loss = discriminator_loss(D(x), D(G(z).detach()))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
    z = torch.randn(len(batches[-1]), G.z_dim, device=dev)  # one step on G through D (D's grads discarded)
    fake_logits = D(G(z))
    g_loss = generator_loss(fake_logits, loss)
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    with torch.no_grad():
        d_real = torch.sigmoid(D(batches[-1])).mean()
    return {"d_loss": d_loss.item(), "g_loss": g_loss.item(), "d_real": d_real.item(),
            "d_fake": torch.sigmoid(fake_logits.detach()).mean().item()}


def generator_grad_norm(G, D, z, kind):
    """L2 norm of the gradient of ``generator_loss(D(G(z)), kind)`` w.r.t. all of G's parameters.

    Leaves no gradients behind in G or D. This is the quantity Sec. 3's argument is about: with D
    confident (D(G(z)) near 0) the minimax loss's gradient is about D/(1 - D) times the other's.
    """
    check_tensor("z (m, z_dim)", z, dim=2, floating=True)
    params = [p for p in G.parameters() if p.requires_grad]
    grads = torch.autograd.grad(generator_loss(D(G(z)), kind), params)
    return torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item()


def ring_centres(modes=8, radius=2.0):
    """Centres (modes, 2) of the ring mixture: equally spaced on a circle of ``radius``."""
    check_int("modes", modes, low=1)
    check_float("radius", radius, low=0.0, low_open=True)
    angle = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    return (radius * torch.stack([angle.cos(), angle.sin()], 1)).float()


def ring_of_gaussians(n, modes=8, radius=2.0, std=0.05, generator=None):
    """n points (n, 2) from an equal mixture of ``modes`` isotropic Gaussians (std ``std``) on a ring."""
    check_int("n", n, low=1)
    check_float("std", std, low=0.0, low_open=True)
    centres = ring_centres(modes, radius)
    k = torch.randint(0, modes, (n,), generator=generator)
    return centres[k] + std * torch.randn(n, 2, generator=generator)


def mode_coverage(samples, centres, std, quality_std=3.0, min_share=0.1):
    """Score 2-D samples (n, 2) against the mixture's centres (modes, 2) and component std.

    - high-quality sample: within ``quality_std`` standard deviations (Euclidean distance
      <= quality_std * std) of its nearest centre;
    - a mode is covered when it is the nearest centre of at least ``min_share`` of its fair share
      (n / modes) of high-quality samples.
    Returns dict(high_quality = share of high-quality samples, covered = number of covered modes,
    counts = high-quality samples per mode (list)).
    """
    check_tensor("samples (n, 2)", samples, dim=2, floating=True)
    check_tensor("centres (modes, 2)", centres, dim=2, floating=True)
    if samples.shape[1] != 2 or centres.shape[1] != 2:
        raise ValueError(f"expected 2-D points, got samples {tuple(samples.shape)} and centres {tuple(centres.shape)}")
    check_float("std", std, low=0.0, low_open=True)
    check_float("quality_std", quality_std, low=0.0, low_open=True)
    check_float("min_share", min_share, low=0.0, high=1.0)
    dist = torch.cdist(samples.double(), centres.double().to(samples.device))  # (n, modes)
    d, nearest = dist.min(1)
    good = d <= quality_std * std
    counts = torch.bincount(nearest[good], minlength=len(centres)).cpu()
    need = min_share * len(samples) / len(centres)
    return {"high_quality": good.double().mean().item(), "covered": int((counts >= max(need, 1)).sum()),
            "counts": counts.tolist()}


@torch.no_grad()
def parzen_log_likelihood(samples, x, sigma, batch_size=500):
    """Mean log-likelihood of x (N, ...) under a Gaussian Parzen window on ``samples`` (S, ...) (Sec. 5, Table 1).

    log p(x) = logsumexp_i [-|x - g_i|^2 / (2 sigma^2)] - log S - (d/2) log(2 pi sigma^2), d = dimension.
    Returns (mean, standard error of the mean over x), as the paper reports it on MNIST.
    """
    check_tensor("samples", samples, floating=True)
    check_tensor("x", x, floating=True)
    sigma = check_float("sigma", sigma, low=0.0, low_open=True)
    g, xs = samples.reshape(len(samples), -1).double(), x.reshape(len(x), -1).double()
    if g.shape[1] != xs.shape[1]:
        raise ValueError(f"samples and x must have the same dimension, got {g.shape[1]} and {xs.shape[1]}")
    d = g.shape[1]
    const = math.log(len(g)) + 0.5 * d * math.log(2 * math.pi * sigma ** 2)
    out = torch.cat([torch.logsumexp(-torch.cdist(b, g).square() / (2 * sigma ** 2), 1) - const
                     for b in xs.split(batch_size)])  # (N,)
    return out.mean().item(), (out.std() / math.sqrt(len(out))).item() if len(out) > 1 else 0.0
