"""Adam from scratch (Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015).

Algorithm 1 keeps two exponential moving averages per parameter, of the gradient g_t and of its
elementwise square, and divides one by the square root of the other:

    m_t = beta1 * m_{t-1} + (1 - beta1) * g_t            (first moment, biased towards 0)
    v_t = beta2 * v_{t-1} + (1 - beta2) * g_t^2          (second raw moment, biased towards 0)
    m^_t = m_t / (1 - beta1^t),  v^_t = v_t / (1 - beta2^t)         (bias correction, Sec. 3)
    theta_t = theta_{t-1} - alpha * m^_t / (sqrt(v^_t) + eps)

Both averages start at 0, so early on they are too small by the factor (1 - beta^t) of eq. (4);
dividing by that factor is the paper's *initialisation bias correction*. Without it the update is
(1 - beta1^t) / sqrt(1 - beta2^t) times the corrected one (``bias_factor``), which for beta2 near 1
makes the first steps many times too large (Sec. 5, Sec. 6.4, Fig. 4).

Contents:
- ``Adam``: Algorithm 1 as a ``torch.optim.Optimizer``, with the flags
  ``weight_decay`` + ``decoupled`` (L2 term in the gradient as ``torch.optim.Adam``, or decoupled
  decay as ``torch.optim.AdamW``: Loshchilov & Hutter, 2017), ``amsgrad`` (the running maximum of
  v_t in the denominator, Reddi et al., 2018, in PyTorch's form) and ``bias_correction`` (off: the
  update of RMSProp with momentum that Sec. 5 and 6.4 compare against).
- ``bias_factor``: the size of the uncorrected step relative to the corrected one.
- ``make_model`` / ``make_optimizer``: the models (Sec. 6.1-6.2) and the four optimisers compared in
  the notebook's experiment.
- ``bench_adam_step``: one step of ours against ``torch.optim.Adam``'s multi-tensor paths.
"""

import torch
import torch.nn as nn

from common.bench import time_optimizer_step
from common.checks import check_choice, check_float, check_int, check_probability

OPTIMIZERS = ("adam", "sgd_nesterov", "adagrad", "rmsprop")


def _check_flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool (True or False), got {type(value).__name__} {value!r}")
    return value


def _check_betas(betas) -> tuple:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), each in [0, 1); got {betas!r}")
    out = []
    for i, b in enumerate(betas):
        try:
            out.append(check_float(f"beta{i + 1}", b, low=0.0, high=1.0, high_open=True))
        except ValueError as exc:
            raise ValueError(f"betas[{i}] (beta{i + 1}) must be a number in [0, 1), got {b!r} ({exc})") from None
    return tuple(out)


class Adam(torch.optim.Optimizer):
    """Adam (Algorithm 1), optionally with L2 or decoupled weight decay, AMSGrad, or no bias correction.

    Arguments (the paper's names in brackets): ``lr`` (alpha, >= 0), ``betas`` (beta1, beta2, each
    in [0, 1)), ``eps`` (epsilon, > 0), ``weight_decay`` (>= 0), ``decoupled`` (False: L2, the term
    weight_decay * theta is added to g_t before the moments, as ``torch.optim.Adam``; True: theta is
    shrunk by (1 - lr * weight_decay) outside the adaptive step, as ``torch.optim.AdamW``),
    ``amsgrad`` (divide by the running maximum of v_t instead of v_t) and ``bias_correction``
    (True: Algorithm 1; False: m_t and v_t are used as they are). With the defaults this is
    ``torch.optim.Adam()``; the tests and the notebook check 100-step trajectories against it.

    Per parameter the state holds ``step`` (t), ``exp_avg`` (m_t), ``exp_avg_sq`` (v_t) and, with
    ``amsgrad``, ``max_exp_avg_sq``; all have the parameter's shape.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 decoupled: bool = False, amsgrad: bool = False, bias_correction: bool = True):
        lr = check_float("lr", lr, low=0.0)
        betas = _check_betas(betas)
        eps = check_float("eps", eps, low=0.0, low_open=True)
        weight_decay = check_float("weight_decay", weight_decay, low=0.0)
        flags = {k: _check_flag(k, v) for k, v in
                 dict(decoupled=decoupled, amsgrad=amsgrad, bias_correction=bias_correction).items()}
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **flags))

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient (the loop body of Algorithm 1).

        Returns the loss the ``closure`` (re-evaluating the model) gives, if one is passed.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for theta in group["params"]:
                if theta.grad is None:
                    continue
                g = theta.grad  # same shape as theta
                if g.is_sparse:
                    raise ValueError("Adam got a sparse gradient; expected dense gradients (use torch.optim.SparseAdam)")
                state = self.state[theta]
                if not state:  # m_0 = 0, v_0 = 0, t = 0
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(theta, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(theta, memory_format=torch.preserve_format)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(theta, memory_format=torch.preserve_format)
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                if wd != 0:
                    if group["decoupled"]:
                        theta.mul_(1 - lr * wd)  # AdamW: decay outside the adaptive step
                    else:
                        g = g.add(theta, alpha=wd)  # L2: the decay's gradient joins g_t
                m.lerp_(g, 1 - beta1)  # m_t = beta1 m_{t-1} + (1 - beta1) g_t
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)  # v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
                if group["amsgrad"]:
                    torch.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
                    v = state["max_exp_avg_sq"]  # the largest v seen so far takes v_t's place
                if group["bias_correction"]:
                    c1, c2 = 1 - beta1 ** t, (1 - beta2 ** t) ** 0.5  # eq. (4): E[v_t] = E[g^2] (1 - beta2^t)
                else:
                    c1, c2 = 1.0, 1.0
                denom = (v.sqrt() / c2).add_(eps)  # sqrt(v^_t) + eps
                theta.addcdiv_(m, denom, value=-lr / c1)  # theta_t = theta_{t-1} - alpha m^_t / denom
        return loss


def bias_factor(t, betas=(0.9, 0.999)) -> torch.Tensor:
    """How many times larger the uncorrected step is than the corrected one at step t: (1 - b1^t) / sqrt(1 - b2^t).

    Without correction the update is alpha m_t / sqrt(v_t); with it, alpha m^_t / sqrt(v^_t) (eps
    ignored). Their ratio is this factor (Sec. 3): at t = 1 it is (1 - b1) / sqrt(1 - b2) (10 for the
    betas (0.9, 0.9999)), and it tends to 1 as t grows. ``t`` is an int >= 1 or an integer tensor of
    steps; returns a float64 tensor of the same shape.
    """
    betas = _check_betas(betas)
    t = torch.as_tensor(t)
    if t.is_floating_point() or t.dtype == torch.bool or (t < 1).any():
        raise ValueError(f"t must be an integer step (or tensor of steps) >= 1, got {t!r}")
    t = t.to(torch.float64)
    return (1 - betas[0] ** t) / (1 - betas[1] ** t).sqrt()


# ---------------------------------------------------------------------------------------------
# The experiment's models and optimisers (Sec. 6.1 and 6.2)
# ---------------------------------------------------------------------------------------------

def make_model(kind: str, in_features: int = 784, num_classes: int = 10, hidden=(1000, 1000),
               dropout: float = 0.5) -> nn.Module:
    """The paper's models: ``"logreg"`` (multi-class logistic regression on the pixels, Sec. 6.1) or
    ``"mlp"`` (fully connected ReLU layers of ``hidden`` units with dropout ``dropout`` after each,
    Sec. 6.2: two layers of 1000 in the paper). Input (B, in_features) or images (B, C, H, W); output
    logits (B, num_classes). PyTorch's default initialisation (the paper uses one initialisation for
    every optimiser; seed before calling to get the same one).
    """
    check_choice("kind", kind, ("logreg", "mlp"))
    check_int("in_features", in_features, low=1)
    check_int("num_classes", num_classes, low=2)
    if kind == "logreg":
        return nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))
    if not isinstance(hidden, (tuple, list)) or not hidden:
        raise ValueError(f"hidden must be a non-empty sequence of layer widths, got {hidden!r}")
    widths = [in_features] + [check_int("hidden width", h, low=1) for h in hidden]
    p = check_probability("dropout", dropout)
    layers = [nn.Flatten()]
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()] + ([nn.Dropout(p)] if p > 0 else [])
    return nn.Sequential(*layers, nn.Linear(widths[-1], num_classes))


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0, **adam_kwargs):
    """One of the four optimisers of Figs. 1-2, all with the L2 term ``weight_decay`` in the gradient.

    ``"adam"``: ours (betas (0.9, 0.999), eps 1e-8, the paper's defaults; ``adam_kwargs`` override);
    ``"sgd_nesterov"``: ``torch.optim.SGD`` with Nesterov momentum 0.9; ``"adagrad"``:
    ``torch.optim.Adagrad``; ``"rmsprop"``: ``torch.optim.RMSprop`` (decay 0.99, no momentum).
    Only the learning rate ``lr`` is tuned in the experiment; the rest is fixed here.
    """
    check_choice("optimizer name", name, OPTIMIZERS)
    lr = check_float("lr", lr, low=0.0)
    weight_decay = check_float("weight_decay", weight_decay, low=0.0)
    if name != "adam" and adam_kwargs:
        raise ValueError(f"extra arguments {sorted(adam_kwargs)} only apply to 'adam', got them for {name!r}")
    if name == "adam":
        return Adam(params, lr=lr, weight_decay=weight_decay, **adam_kwargs)
    if name == "sgd_nesterov":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.RMSprop(params, lr=lr, alpha=0.99, weight_decay=weight_decay)


def bench_adam_step(device="cpu", repeats: int = 20,
                    sizes=((1000, 784), (1000,), (1000, 1000), (1000,), (10, 1000), (10,))) -> dict:
    """Time of one ``Adam.step`` (ours) vs ``torch.optim.Adam(foreach=True)`` and, where supported, ``fused=True``.

    Same parameter shapes (default: the paper's 784-1000-1000-10 MLP) and gradients for every side;
    medians over ``repeats`` steps after 3 warm-up steps. Returns {"ours_ms", "theirs_ms" (foreach),
    "fused_ms" (None where the fused kernel is not available on ``device``), "ratio" (ours / foreach),
    "name"}. Ours is slower because it walks the tensors in a Python loop and launches several
    elementwise kernels per tensor, each reading and writing the whole tensor and allocating the
    temporary ``denom``; the foreach path batches every tensor into a few multi-tensor kernels and the
    fused path does the whole update in one pass over memory.
    """
    check_int("repeats", repeats, low=1)

    def timed(make_opt):
        return time_optimizer_step(make_opt, sizes, device, repeats)

    ours = timed(lambda ps: Adam(ps, lr=1e-3))
    theirs = timed(lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True))
    try:
        fused = timed(lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True))
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
        fused = None
    n = sum(torch.Size(tuple(s)).numel() for s in sizes)
    return {"ours_ms": ours, "theirs_ms": theirs, "fused_ms": fused, "ratio": ours / theirs,
            "name": f"Adam step, {len(sizes)} tensors, {n:,} parameters"}
