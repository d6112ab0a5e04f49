"""Weight decay from scratch: the L2-penalised step, decoupled decay, and Krogh & Hertz's linear teacher.

Krogh & Hertz, "A Simple Weight Decay Can Improve Generalization" (NIPS 1991).
Eq. (1): E(w) = E0(w) + (lambda / 2) * sum_i w_i^2, so gradient descent gains the term
-lambda * w_i of eq. (2): every step pulls each weight towards zero in proportion to its size.

Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (2017): for plain SGD adding
lambda * w to the gradient and shrinking w directly are the same step; for Adam they are not,
because the L2 gradient then passes through Adam's per-coordinate rescaling. AdamW shrinks the
weights outside the adaptive update.

Contents:
- ``SGD``: gradient descent with momentum and the L2 term in the gradient (``torch.optim.SGD``'s
  ``weight_decay``).
- ``Adam``: Adam with either the L2 term in the gradient (``decoupled=False``, ``torch.optim.Adam``)
  or decoupled decay (``decoupled=True``, ``torch.optim.AdamW``).
- The linear perceptron with a noisy teacher (Sec. 3-4): data, the fixed point of eq. (2) in closed
  form (ridge regression in the paper's scaling), the generalisation error of eq. (11), the optimum of
  eq. (17), and a batched sweep over decay and number of examples.
"""

import torch

from common import topic
from common.bench import time_optimizer_step
from common.checks import check_float, check_int, check_tensor


def _check_decay(weight_decay) -> float:
    return check_float("weight_decay", weight_decay, low=0.0)


class SGD(torch.optim.Optimizer):
    """Gradient descent on E0 + (weight_decay / 2) |w|^2 (Krogh & Hertz eq. 1-2), with optional momentum.

    Each step: g = dE0/dw + weight_decay * w (the L2 term's gradient, eq. 2); with momentum,
    b = momentum * b + g (b = g on the first step) and g = b; then w <- w - lr * g.
    This is the update ``torch.optim.SGD(lr, momentum, weight_decay)`` performs (dampening 0).
    """

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.0):
        lr = check_float("lr", lr, low=0.0, low_open=True)
        weight_decay = _check_decay(weight_decay)
        momentum = check_float("momentum", momentum, low=0.0, high=1.0, high_open=True)
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum))

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns the closure's loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                g = w.grad + wd * w  # eq. (2): the force term plus -lambda * w
                if mu > 0:
                    state = self.state[w]
                    if "buf" not in state:
                        state["buf"] = g.clone()
                    else:
                        state["buf"].mul_(mu).add_(g)
                    g = state["buf"]
                w.sub_(lr * g)
        return loss


class Adam(topic("adam").Adam):
    """Adam with L2 regularisation (``decoupled=False``) or decoupled weight decay (``decoupled=True``, AdamW).

    The optimiser is 08-adam's ``adam.Adam`` (Kingma & Ba's Algorithm 1, verified there against
    ``torch.optim.Adam``); this topic only makes decoupled decay the default. With g = dE0/dw:
      L2 (Adam + weight_decay):  g <- g + wd * w, then the Adam step on g;
      decoupled (AdamW):         w <- w * (1 - lr * wd), then the Adam step on g alone.
    In the L2 form the decay term is divided by sqrt(v) like the gradient, so weights with large
    gradients are decayed less (Loshchilov & Hutter 2017, Sec. 2); the decoupled form shrinks every
    weight by the same factor. Matches ``torch.optim.Adam`` / ``torch.optim.AdamW`` (amsgrad off).
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = True):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decoupled=decoupled)


# ---------------------------------------------------------------------------------------------
# The linear perceptron with a noisy teacher (Krogh & Hertz Sec. 3-4)
# ---------------------------------------------------------------------------------------------

def teacher_data(n: int, p: int, sigma: float, sigma_w: float = 1.0, draws: int = 1, generator=None,
                 dtype=torch.float64):
    """``draws`` independent problems: inputs xi (draws, p, n), targets y (draws, p), teacher u (draws, n).

    Eq. (5) and (12): y = N^(-1/2) u . xi + eta, with xi_i ~ N(0, 1) (so <xi_i xi_j> = delta_ij, as
    eq. 11 assumes), teacher weights u_i ~ N(0, sigma_w^2) (so N^-1 |u|^2 averages sigma_w^2) and
    target noise eta ~ N(0, sigma^2).
    """
    n, p, draws = check_int("n", n, low=1), check_int("p", p, low=0), check_int("draws", draws, low=1)
    sigma = check_float("sigma", sigma, low=0.0)
    sigma_w = check_float("sigma_w", sigma_w, low=0.0, low_open=True)
    xi = torch.randn(draws, p, n, generator=generator, dtype=dtype)
    u = sigma_w * torch.randn(draws, n, generator=generator, dtype=dtype)
    eta = sigma * torch.randn(draws, p, generator=generator, dtype=dtype)
    y = (xi @ u.unsqueeze(-1)).squeeze(-1) / n ** 0.5 + eta
    return xi, y, u


def ridge(xi: torch.Tensor, y: torch.Tensor, weight_decay) -> torch.Tensor:
    """The weights gradient descent on eq. (1) converges to (the fixed point of eq. 2), for each decay.

    E = 1/2 sum_mu (y_mu - N^-1/2 w . xi_mu)^2 + (lambda/2) |w|^2 has its minimum at
        w = (A + lambda I)^-1 N^-1/2 sum_mu y_mu xi_mu,   A = N^-1 sum_mu xi_mu xi_mu^T   (eq. 8).
    Solved in A's eigenbasis (eq. 10), so a whole vector of decays costs one eigendecomposition.
    lambda = 0 gives the smallest-norm solution (directions outside the pattern subspace, where
    A's eigenvalue is 0, are set to 0: the limit lambda -> 0+ of Sec. 3).

    xi (D, p, N) or (p, N); y (D, p) or (p,); weight_decay a number or a 1-D tensor (L,) of decays >= 0.
    Returns w (D, L, N) (leading axes dropped where the inputs had none).
    """
    xi = check_tensor("xi", xi, dim=(2, 3), floating=True, nonempty=False)
    y = check_tensor("y", y, dim=xi.dim() - 1, floating=True, nonempty=False)
    single_problem = xi.dim() == 2
    if single_problem:
        xi, y = xi.unsqueeze(0), y.unsqueeze(0)
    if y.shape != xi.shape[:2]:
        raise ValueError(f"y must have shape {tuple(xi.shape[:2])} (one target per example), got {tuple(y.shape)}")
    scalar = not isinstance(weight_decay, torch.Tensor) or weight_decay.dim() == 0
    lam = torch.as_tensor([_check_decay(weight_decay)] if scalar else weight_decay, dtype=xi.dtype)
    if lam.dim() != 1 or (lam < 0).any() or not torch.isfinite(lam).all():
        raise ValueError(f"weight_decay must be a number or a 1-D tensor of finite values >= 0, got {weight_decay!r}")
    n = xi.shape[-1]
    a = xi.transpose(1, 2) @ xi / n  # (D, N, N), eq. (8)
    b = (xi.transpose(1, 2) @ y.unsqueeze(-1)).squeeze(-1) / n ** 0.5  # (D, N)
    evals, q = torch.linalg.eigh(a)  # (D, N), (D, N, N)
    b_r = (q.transpose(1, 2) @ b.unsqueeze(-1)).squeeze(-1)  # (D, N): b in A's eigenbasis
    denom = evals.unsqueeze(1) + lam.view(1, -1, 1)  # (D, L, N): lambda_r + lambda, eq. (15)
    tol = evals.amax(-1, keepdim=True).clamp_min(1.0).unsqueeze(1) * n * torch.finfo(xi.dtype).eps
    inv = torch.where(denom > tol, 1.0 / denom.clamp_min(tol), torch.zeros_like(denom))
    w = (inv * b_r.unsqueeze(1)) @ q.transpose(1, 2)  # (D, L, N): back from the eigenbasis
    if scalar:
        w = w[:, 0]
    return w[0] if single_problem else w


def generalisation_error(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Eq. (11): the mean squared difference of student and teacher outputs over random inputs, N^-1 |u - w|^2.

    w (..., N) and u broadcastable to it; returns one error per leading index.
    """
    w, u = check_tensor("w", w, floating=True, nonempty=False), check_tensor("u", u, floating=True, nonempty=False)
    if w.shape[-1] != u.shape[-1]:
        raise ValueError(f"w and u must have the same last dimension N, got {tuple(w.shape)} and {tuple(u.shape)}")
    return ((w - u) ** 2).mean(-1)


def optimal_decay(sigma: float, sigma_w: float) -> float:
    """Eq. (17): lambda_optimal = sigma^2 / sigma_w^2 (noise variance over teacher weight variance)."""
    sigma = check_float("sigma", sigma, low=0.0)
    sigma_w = check_float("sigma_w", sigma_w, low=0.0, low_open=True)
    return sigma ** 2 / sigma_w ** 2


def error_surface(n: int, ps, decays, sigma: float, sigma_w: float = 1.0, draws: int = 100, seed: int = 0):
    """Mean generalisation error over ``draws`` random problems, for each number of examples and decay.

    Returns a float64 tensor (len(ps), len(decays)); entry [i, j] averages eq. (11) for the weights
    ``ridge`` finds with p = ps[i] examples and lambda = decays[j], over independent teachers, inputs
    and noise (a fresh draw for every p).
    """
    ps = [check_int("p", p, low=1) for p in ps]
    decays = torch.as_tensor(decays, dtype=torch.float64)
    g = torch.Generator().manual_seed(check_int("seed", seed, low=0))
    out = torch.empty(len(ps), len(decays), dtype=torch.float64)
    for i, p in enumerate(ps):
        xi, y, u = teacher_data(n, p, sigma, sigma_w, draws=draws, generator=g)
        out[i] = generalisation_error(ridge(xi, y, decays), u.unsqueeze(1)).mean(0)  # (D, L) -> (L,)
    return out


def bench_step(repeats: int = 20, sizes=((784, 512), (512,), (512, 512), (512,), (512, 10), (10,)),
               device="cpu") -> dict:
    """Time of one decoupled-decay step (``Adam`` above, 08-adam's optimiser) vs ``torch.optim.AdamW(foreach=True)``.

    Same parameters (default: a 784-512-512-10 MLP's shapes) and gradients for both
    (``common.bench.time_optimizer_step``); returns {"ours_ms", "adamw_ms", "ratio", "name"}, medians
    over ``repeats`` steps, ratio = ours / theirs. Ours loops over the tensors in Python with a few
    in-place kernels per tensor; PyTorch's foreach path updates all tensors with multi-tensor kernels,
    which pays off with many small tensors and on GPUs, where each kernel launch costs microseconds.
    """
    ours = time_optimizer_step(lambda ps: Adam(ps, lr=1e-3, weight_decay=1e-2), sizes, device, repeats)
    theirs = time_optimizer_step(lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=1e-2, foreach=True),
                                 sizes, device, repeats)
    n = sum(torch.Size(s).numel() for s in sizes)
    return {"ours_ms": ours, "adamw_ms": theirs, "ratio": ours / theirs,
            "name": f"AdamW step, {len(sizes)} tensors, {n:,} parameters"}
