"""Denoising diffusion (Ho, Jain & Abbeel 2020), with DDIM sampling and classifier-free guidance.

Contents, in the order of the papers:
- :func:`linear_betas` (DDPM Sec. 4: beta from 1e-4 to 0.02 over T = 1000 steps) and :func:`cosine_betas`
  (Improved DDPM, Nichol & Dhariwal 2021, Eq. 17); :class:`Schedule` holds alpha_t = 1 - beta_t and
  alpha_bar_t = prod_{s <= t} alpha_s and gives the forward process in closed form (DDPM Eq. 4) and the
  posterior q(x_{t-1} | x_t, x_0) (Eqs. 6-7).
- :func:`loss_simple`: the epsilon-prediction loss L_simple (Eq. 14, Algorithm 1), with the class label
  dropped to the null label with probability ``p_uncond`` (classifier-free guidance, Ho & Salimans).
- :class:`DiffusionUNet`: a small U-Net (1.4's contracting/expanding path with skips) whose blocks are
  2.3's ``BasicBlock`` (BatchNorm swapped for GroupNorm), conditioned on a sinusoidal time embedding
  and a class embedding.
- :func:`guided_eps` (CFG: (1 + w) eps(x, c) - w eps(x, null)), :func:`ddpm_step` / :func:`ddpm_sample`
  (Algorithm 2, the ancestral sampler) and :func:`ddim_step` / :func:`ddim_sample` (Song, Meng & Ermon
  2021, Eq. 12: a deterministic sampler on a subsequence of the steps).
- :func:`fit`: Adam on L_simple with an exponential moving average of the weights (DDPM Sec. 4).
- :func:`bench_sampling`, :func:`bench_compile`: ``make bench`` rows.

Index convention: the paper's steps t = 1..T are the indices 0..T-1 here; index t holds beta_{t+1}.
Images live in [-1, 1] (DDPM Sec. 3.3). Argument checks come from :mod:`common.checks`.
"""

from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

import common
from common.checks import check_choice, check_float, check_images, check_int, check_labels, check_tensor


# ----------------------------------------------------------------------------- schedules and the forward process
def linear_betas(T: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02) -> torch.Tensor:
    """DDPM's schedule (Sec. 4): beta_t rising linearly from ``beta_1`` to ``beta_T``; float64 ``(T,)``."""
    check_int("T", T, low=1)
    check_float("beta_1", beta_1, 0.0, 1.0, low_open=True, high_open=True)
    check_float("beta_T", beta_T, 0.0, 1.0, low_open=True, high_open=True)
    return torch.linspace(beta_1, beta_T, T, dtype=torch.float64)


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Improved DDPM's schedule (Eq. 17): alpha_bar_t = f(t) / f(0), f(t) = cos^2((t/T + s)/(1 + s) * pi/2),
    beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}, clipped to ``max_beta`` so the last steps stay finite; float64 ``(T,)``."""
    check_int("T", T, low=1)
    check_float("s", s, low=0.0)
    check_float("max_beta", max_beta, 0.0, 1.0, low_open=True, high_open=True)
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2  # (T+1,)
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


class Schedule:
    """The noise schedule and everything derived from it, in float64 on ``device``.

    ``betas`` float ``(T,)`` with every beta in (0, 1) (ValueError otherwise). Tensors: ``betas``,
    ``alphas`` = 1 - beta, ``alpha_bars`` = cumulative product, ``alpha_bars_prev`` (1 before step 0).
    """

    def __init__(self, betas: torch.Tensor, device: torch.device | str | None = None):
        check_tensor("betas", betas, dim=1, floating=True)
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"every beta must lie in (0, 1), got values from {betas.min().item():.3g} "
                             f"to {betas.max().item():.3g}")
        self.betas = betas.detach().to(device or betas.device, torch.float64)
        self.T = len(betas)
        self.alphas = 1 - self.betas
        self.alpha_bars = torch.cumprod(self.alphas, 0)  # (T,)
        self.alpha_bars_prev = torch.cat([self.alpha_bars.new_ones(1), self.alpha_bars[:-1]])

    def check_t(self, t: torch.Tensor, n: int | None = None) -> torch.Tensor:
        """``t`` must be a 1-D integer tensor of step indices in [0, T) (``n`` of them if given)."""
        return check_labels("t (diffusion step)", t, self.T, n=n)

    def _at(self, v: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return v.to(like.device)[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))  # (B, 1, 1, 1)

    def q_stats(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) (Eq. 4).
        x0 ``(B, ...)``, t ``(B,)``; returns the mean ``(B, ...)`` and the variance ``(B, 1, ...)``."""
        check_tensor("x0", x0, floating=True)
        self.check_t(t, n=x0.shape[0])
        ab = self._at(self.alpha_bars, t, x0)
        return ab.sqrt() * x0, 1 - ab

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps: a draw of q(x_t | x_0) in one step."""
        mean, var = self.q_stats(x0, t)
        if noise.shape != x0.shape:
            raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
        return mean + var.sqrt() * noise

    def posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x_0) (Eqs. 6-7):
        mu = sqrt(ab_{t-1}) beta_t / (1 - ab_t) x_0 + sqrt(alpha_t) (1 - ab_{t-1}) / (1 - ab_t) x_t,
        var = (1 - ab_{t-1}) / (1 - ab_t) beta_t (0 at the first step)."""
        self.check_t(t, n=x0.shape[0])
        ab, abp = self._at(self.alpha_bars, t, xt), self._at(self.alpha_bars_prev, t, xt)
        b, a = self._at(self.betas, t, xt), self._at(self.alphas, t, xt)
        mean = abp.sqrt() * b / (1 - ab) * x0 + a.sqrt() * (1 - abp) / (1 - ab) * xt
        return mean, (1 - abp) / (1 - ab) * b


# ----------------------------------------------------------------------------- the network
def _group_norm_(module: nn.Module, groups: int = 8) -> nn.Module:
    """Replace every BatchNorm2d inside ``module`` by a GroupNorm with the same channels, in place
    (DDPM's U-Net uses group normalisation; a batch statistic mixes images of different noise levels)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.GroupNorm(math.gcd(groups, child.num_features), child.num_features))
        else:
            _group_norm_(child, groups)
    return module


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """The Transformer's sinusoidal position embedding of the step index (DDPM Appendix B): t ``(B,)`` ->
    ``(B, dim)`` = [sin(t w_k), cos(t w_k)] with w_k = 10000^(-k / (dim/2)), dim even."""
    half = dim // 2
    w = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    arg = t.float()[:, None] * w[None]  # (B, dim/2)
    return torch.cat([arg.sin(), arg.cos()], 1)


class TimeBlock(nn.Module):
    """2.3's residual ``BasicBlock`` (GroupNorm instead of BatchNorm, projection shortcut where the width
    changes) fed the input plus a per-channel projection of the time/class embedding ``e``.
    x ``(B, c_in, H, W)``, e ``(B, emb_dim)`` -> ``(B, c_out, H, W)``."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int):
        super().__init__()
        resnet = common.topic("resnet")
        self.block = _group_norm_(resnet.BasicBlock(c_in, c_out, shortcut="B"))
        self.emb = nn.Linear(emb_dim, c_in)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """BasicBlock(x + W e): the embedding enters as a per-channel shift of the block's input."""
        return self.block(x + self.emb(e)[:, :, None, None])


class DiffusionUNet(nn.Module):
    """epsilon_theta(x_t, t, y): a U-Net (1.4) of ``TimeBlock`` s with time and class embeddings.

    With ``patch`` = p > 1 the image is first folded into p*p times more channels at 1/p the size
    (``pixel_unshuffle``, lossless) and unfolded at the end, which cuts the convolutions' cost by ~p^2 on a
    CPU (our change, not the paper's). A stem of 1.4's double 3x3 convolution; then for each width of ``widths`` a block whose output is
    kept as a skip, and a 2x2 max-pool (none after the last width); a middle block; then the expanding
    path: 2x2 transposed convolution, concatenation with the skip, a block; a zero-initialised 3x3
    output convolution (so epsilon starts at 0). The embedding is an MLP of the sinusoidal step
    embedding plus a learned embedding of the label y in [0, num_classes], where ``num_classes`` is the
    null label of classifier-free guidance. x ``(B, C, H, W)`` with H, W divisible by patch * 2**(len(widths)-1),
    t int ``(B,)`` in [0, T), y int ``(B,)`` or None (all null) -> eps ``(B, C, H, W)``.
    """

    def __init__(self, in_channels: int = 1, widths=(32, 64, 64), num_classes: int = 10, T: int = 1000,
                 emb_dim: int = 128, patch: int = 1):
        super().__init__()
        unet = common.topic("unet")
        check_int("in_channels", in_channels, low=1)
        check_int("num_classes", num_classes, low=1)
        check_int("emb_dim", emb_dim, low=2)
        self.patch = check_int("patch", patch, low=1)
        if emb_dim % 2:
            raise ValueError(f"emb_dim must be even (sin and cos halves), got {emb_dim}")
        widths = tuple(check_int(f"widths[{i}]", w, low=1) for i, w in enumerate(widths))
        if not widths:
            raise ValueError("widths must name at least one level's channel count")
        self.in_channels, self.widths, self.num_classes, self.T, self.emb_dim = in_channels, widths, num_classes, T, emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim)  # index num_classes = no label
        self.stem = unet._double_conv(in_channels * patch**2, widths[0], batch_norm=False)
        self.down = nn.ModuleList(TimeBlock(widths[max(i - 1, 0)], w, emb_dim) for i, w in enumerate(widths))
        self.mid = TimeBlock(widths[-1], widths[-1], emb_dim)
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                for i in reversed(range(len(widths) - 1)))
        self.dec = nn.ModuleList(TimeBlock(2 * w, w, emb_dim) for w in reversed(widths))
        self.head = nn.Conv2d(widths[0], in_channels * patch**2, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted noise ``(B, C, H, W)``; ValueError on bad images, steps or labels."""
        m = self.patch * 2 ** (len(self.widths) - 1)
        check_images("DiffusionUNet", x, channels=self.in_channels, min_size=m)
        if x.shape[2] % m or x.shape[3] % m:
            raise ValueError(f"DiffusionUNet: H and W must be divisible by {m}, got {x.shape[2]}x{x.shape[3]}")
        check_labels("t (diffusion step)", t, self.T, n=x.shape[0])
        if y is None:
            y = torch.full_like(t, self.num_classes)
        check_labels("y (class, num_classes = no label)", y, self.num_classes + 1, n=x.shape[0])
        e = self.time_mlp(timestep_embedding(t, self.emb_dim)) + self.label_emb(y)  # (B, emb_dim)
        h, skips = self.stem(F.pixel_unshuffle(x, self.patch)), []  # (B, w0, H / p, W / p)
        for i, block in enumerate(self.down):
            h = block(h, e)  # (B, w_i, H / (p 2^i), W / (p 2^i))
            skips.append(h)
            if i < len(self.down) - 1:
                h = F.max_pool2d(h, 2)
        h = self.mid(h, e)
        for i, block in enumerate(self.dec):
            if i > 0:
                h = self.up[i - 1](h)  # (B, w_i, 2 H_i, 2 W_i)
            h = block(torch.cat([skips.pop(), h], 1), e)
        return F.pixel_shuffle(self.head(h), self.patch)  # (B, C, H, W)


# ----------------------------------------------------------------------------- training
def loss_simple(model: nn.Module, sched: Schedule, x0: torch.Tensor, y: torch.Tensor | None = None,
                p_uncond: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """L_simple = E_{t, x_0, eps} || eps - eps_theta(sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps, t) ||^2 (Eq. 14,
    Algorithm 1), t uniform over the T steps. With labels ``y``, each is replaced by the null label with
    probability ``p_uncond``, so one network learns eps(x, c) and eps(x) (CFG training). x0 ``(B, C, H, W)``."""
    check_images("loss_simple x0", x0)
    check_float("p_uncond", p_uncond, 0.0, 1.0)
    B, dev = x0.shape[0], x0.device
    t = torch.randint(0, sched.T, (B,), device=dev, generator=generator)
    eps = torch.randn(x0.shape, device=dev, generator=generator)
    if y is not None and p_uncond > 0:
        drop = torch.rand(B, device=dev, generator=generator) < p_uncond
        y = torch.where(drop, torch.full_like(y, model.num_classes), y)
    return F.mse_loss(model(sched.q_sample(x0, t, eps), t, y), eps)


class EMA:
    """Exponential moving average of a model's weights (DDPM Sec. 4 uses decay 0.9999): ``self.model``."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = check_float("decay", decay, 0.0, 1.0)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """theta_ema <- decay theta_ema + (1 - decay) theta (buffers copied)."""
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1 - self.decay)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)


def fit(model: nn.Module, sched: Schedule, x: torch.Tensor, y: torch.Tensor | None, *, steps: int,
        batch_size: int = 128, lr: float = 2e-4, p_uncond: float = 0.1, ema_decay: float = 0.999,
        warmup: int = 100, seed: int = 0, log_every: int = 50) -> tuple[EMA, common.train.History]:
    """Algorithm 1: ``steps`` Adam steps on :func:`loss_simple` over images ``x`` ``(N, C, H, W)`` in [-1, 1]
    (on the model's device), learning rate warmed up linearly over ``warmup`` steps, gradient norm clipped
    to 1 (as DDPM's code does), an EMA of the weights. Returns (ema, history of the running loss)."""
    check_int("steps", steps, low=1)
    check_int("batch_size", batch_size, low=1)
    check_float("lr", lr, 0.0, low_open=True)
    loader = common.data.TensorLoader(*((x,) if y is None else (x, y)), batch_size=batch_size, drop_last=True,
                                      seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sch = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / max(1, warmup)))
    ema, hist = EMA(model, ema_decay), common.train.History()
    gen = torch.Generator(x.device).manual_seed(seed)
    amp = torch.autocast("cuda", torch.bfloat16) if x.device.type == "cuda" else torch.autocast("cpu", enabled=False)
    model.train()
    losses, step, bar = [], 0, common.progress(total=steps, desc="diffusion training")
    while step < steps:
        for batch in loader:
            with amp:
                loss = loss_simple(model, sched, batch[0], batch[1] if y is not None else None, p_uncond, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sch.step()
            ema.update(model)
            losses.append(loss.detach())
            step += 1
            bar.update(1)
            if step % log_every == 0 or step == steps:
                chunk = torch.stack(losses)
                common.train.check_finite(chunk, step - len(losses), opt)
                hist.log(step=step, loss=chunk.float().mean())
                bar.set_postfix(loss=f"{hist.last('loss'):.4f}")
                losses = []
            if step == steps:
                break
    bar.close()
    return ema, hist


# ----------------------------------------------------------------------------- sampling
def guided_eps(model: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, w: float = 0.0) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans): eps~ = (1 + w) eps(x, t, y) - w eps(x, t, null), w >= 0.
    w = 0 is the plain conditional model (one forward pass); otherwise both passes run as one batch."""
    check_float("guidance weight w", w, low=0.0)
    if y is None or w == 0:
        return model(x, t, y)
    null = torch.full_like(y, model.num_classes)
    cond, uncond = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
    return (1 + w) * cond - w * uncond


def ddpm_step(sched: Schedule, x: torch.Tensor, t: int, eps: torch.Tensor, noise: torch.Tensor,
              variance: str = "beta") -> torch.Tensor:
    """One ancestral step (Algorithm 2, line 4): x_{t-1} = (x_t - beta_t / sqrt(1 - ab_t) eps) / sqrt(alpha_t)
    + sigma_t z, with sigma_t^2 = beta_t (``"beta"``) or the posterior's beta~_t (``"posterior"``), and no
    noise at the last step (t = 0)."""
    check_choice("variance", variance, ("beta", "posterior"))
    check_int("t", t, 0, sched.T - 1)
    b, a, ab = (float(v[t]) for v in (sched.betas, sched.alphas, sched.alpha_bars))
    mean = (x - b / math.sqrt(1 - ab) * eps) / math.sqrt(a)
    if t == 0:
        return mean
    var = b if variance == "beta" else (1 - float(sched.alpha_bars_prev[t])) / (1 - ab) * b
    return mean + math.sqrt(var) * noise


def ddim_step(sched: Schedule, x: torch.Tensor, t: int, t_prev: int, eps: torch.Tensor, eta: float = 0.0,
              noise: torch.Tensor | None = None, clip: bool = False) -> torch.Tensor:
    """DDIM's update (Song et al. 2021, Eq. 12, in DDPM's alpha_bar): from step t to t_prev < t (-1: to x_0),
    x0^ = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t);
    x_prev = sqrt(ab_prev) x0^ + sqrt(1 - ab_prev - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev). eta = 0: deterministic; eta = 1
    with t_prev = t - 1: DDPM's ancestral step with the posterior variance. ``clip`` clamps x0^ to [-1, 1]."""
    check_int("t", t, 0, sched.T - 1)
    check_int("t_prev", t_prev, -1, t - 1)
    check_float("eta", eta, low=0.0)
    ab = float(sched.alpha_bars[t])
    ab_prev = float(sched.alpha_bars[t_prev]) if t_prev >= 0 else 1.0
    x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
    sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
    out = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
    return out + sigma * noise if sigma > 0 else out


def _start(model, sched, n, y, shape, generator, device):
    check_int("n", n, low=1)
    if y is not None:
        check_labels("y", y, model.num_classes, n=n)
        y = y.to(device)
    return torch.randn((n, *shape), generator=generator, device=device), y


@torch.no_grad()
def ddpm_sample(model: nn.Module, sched: Schedule, n: int, y: torch.Tensor | None = None, w: float = 0.0,
                shape=(1, 28, 28), variance: str = "beta", generator: torch.Generator | None = None,
                progress_bar: bool = False) -> torch.Tensor:
    """Algorithm 2: x_T ~ N(0, I), then T ancestral steps; ``n`` images ``(n, *shape)`` clamped to [-1, 1].
    ``y`` ``(n,)`` labels in [0, num_classes) (None: unconditional), ``w`` the guidance weight."""
    check_float("guidance weight w", w, low=0.0)
    dev = next(model.parameters()).device
    x, y = _start(model, sched, n, y, shape, generator, dev)
    steps = range(sched.T - 1, -1, -1)
    for t in (common.progress(steps, desc="DDPM sampling") if progress_bar else steps):
        tt = torch.full((n,), t, device=dev, dtype=torch.long)
        z = torch.randn(x.shape, generator=generator, device=dev) if t > 0 else None
        x = ddpm_step(sched, x, t, guided_eps(model, x, tt, y, w), z, variance)
    return x.clamp(-1, 1)


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """``steps`` step indices spread evenly over [0, T) from T - 1 down to 0 (DDIM's subsequence tau)."""
    check_int("steps", steps, 1, T)
    return sorted({round(v) for v in torch.linspace(0, T - 1, steps).tolist()}, reverse=True)


@torch.no_grad()
def ddim_sample(model: nn.Module, sched: Schedule, n: int, y: torch.Tensor | None = None, w: float = 0.0,
                steps: int = 50, eta: float = 0.0, shape=(1, 28, 28), clip: bool = True,
                generator: torch.Generator | None = None, progress_bar: bool = False) -> torch.Tensor:
    """DDIM sampling on ``steps`` of the T steps (:func:`ddim_timesteps`); otherwise as :func:`ddpm_sample`."""
    check_float("guidance weight w", w, low=0.0)
    dev = next(model.parameters()).device
    x, y = _start(model, sched, n, y, shape, generator, dev)
    taus = ddim_timesteps(sched.T, steps)
    pairs = list(zip(taus, taus[1:] + [-1]))
    for t, t_prev in (common.progress(pairs, desc=f"DDIM sampling, {steps} steps") if progress_bar else pairs):
        tt = torch.full((n,), t, device=dev, dtype=torch.long)
        z = torch.randn(x.shape, generator=generator, device=dev) if eta > 0 and t_prev >= 0 else None
        x = ddim_step(sched, x, t, t_prev, guided_eps(model, x, tt, y, w), eta, z, clip)
    return x.clamp(-1, 1)


# ----------------------------------------------------------------------------- benchmarks
def bench_sampling(device="cpu", widths=(32, 64), patch: int = 2, batch: int = 16, probe_steps: int = 5) -> dict:
    """Sampling throughput, DDIM 50 steps vs DDPM's 1000 ancestral steps, at the notebook's cpu network size.

    Each sampler's per-step cost (network pass + update, unguided, a batch of ``batch`` images) is the
    median over ``probe_steps`` timed steps after one warm-up step; a whole run is extrapolated as
    steps x per-step time (the cost of a step does not depend on t). Returns {"ours_ms": one DDIM batch,
    "theirs_ms": one DDPM batch, "ratio": ours / theirs, "ddim_images_per_s", "ddpm_images_per_s", "name"}.
    """
    check_int("batch", batch, low=1)
    check_int("probe_steps", probe_steps, low=1)
    dev = torch.device(device)
    torch.manual_seed(0)
    model = DiffusionUNet(widths=widths, patch=patch).to(dev).eval()
    sched = Schedule(linear_betas(), dev)
    x = torch.randn(batch, 1, 28, 28, device=dev)
    y = torch.arange(batch, device=dev) % 10

    def per_step(update) -> float:
        times = []
        for i in range(probe_steps + 1):
            t = sched.T - 1 - 20 * i
            tt = torch.full((batch,), t, device=dev, dtype=torch.long)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            with torch.no_grad():
                update(x, t, model(x, tt, y))
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - t0)
        return sorted(times[1:])[len(times[1:]) // 2]

    ddpm = per_step(lambda x, t, e: ddpm_step(sched, x, t, e, torch.randn_like(x))) * sched.T
    ddim = per_step(lambda x, t, e: ddim_step(sched, x, t, t - 20, e, clip=True)) * 50
    return {"ours_ms": 1000 * ddim, "theirs_ms": 1000 * ddpm, "ratio": ddim / ddpm,
            "ddim_images_per_s": batch / ddim, "ddpm_images_per_s": batch / ddpm,
            "name": f"sampling {batch} MNIST images, U-Net {'-'.join(map(str, widths))} (extrapolated per step)"}


def bench_compile(device="cpu", widths=(32, 64), patch: int = 2, batch: int = 128, repeats: int = 5) -> dict:
    """Forward+backward of the U-Net at the notebook's size (a training batch), eager vs ``torch.compile``.

    Same weights and inputs (:func:`common.bench.time_forward_backward`, medians over ``repeats`` passes after
    2 warm-ups, which include the compilation). Returns {"ours_ms": eager, "theirs_ms": compiled,
    "ratio": eager / compiled, "name"}; when compilation fails, "theirs_ms" and "ratio" are NaN and
    "compile_error" says why.
    """
    from common.bench import time_forward_backward

    check_int("batch", batch, low=1)
    check_int("repeats", repeats, low=1)
    dev = torch.device(device)
    torch.manual_seed(0)
    model = DiffusionUNet(widths=widths, patch=patch).to(dev)
    nn.init.normal_(model.head.weight, std=0.01)  # non-zero, so gradients reach every layer
    inputs = (torch.randn(batch, 1, 28, 28, device=dev), torch.randint(0, 1000, (batch,), device=dev),
              torch.randint(0, 11, (batch,), device=dev))
    name = f"U-Net {'-'.join(map(str, widths))} fwd+bwd, batch {batch}: eager vs torch.compile"
    try:
        compiled = torch.compile(model)
        eager_ms, compiled_ms = time_forward_backward(model, compiled, inputs, device=dev, repeats=repeats, warmup=2)
    except Exception as exc:  # a missing compiler or an unsupported op: report it, keep the eager time
        eager_ms, _ = time_forward_backward(model, model, inputs, device=dev, repeats=repeats, warmup=1)
        return {"ours_ms": eager_ms, "theirs_ms": float("nan"), "ratio": float("nan"), "name": name,
                "compile_error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
    return {"ours_ms": eager_ms, "theirs_ms": compiled_ms, "ratio": eager_ms / compiled_ms, "name": name}
