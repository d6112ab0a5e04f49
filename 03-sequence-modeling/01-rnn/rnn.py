"""Recurrent networks and real-time recurrent learning (Williams & Zipser, Neural Computation 1, 1989).

A recurrent net keeps a state and updates it from the previous state and the new input at every
step. Williams and Zipser's network (Sec. 2.1) has n units and m input lines (one of them fixed at 1,
the bias); z(t) = [y(t); x(t)] (eq. 1) and

    s_k(t) = sum_l w_kl z_l(t)     (eq. 2),       y_k(t + 1) = f_k(s_k(t))     (eq. 3)

with one weight matrix W of shape (n, n + m). The paper's contribution is *real-time recurrent
learning* (RTRL): instead of unrolling the net and backpropagating through time (BPTT), it carries
forward the sensitivities p^k_ij(t) = dy_k(t) / dw_ij of every unit to every weight (eq. 12-14):

    p^k_ij(t + 1) = f'_k(s_k(t)) [ sum_{l in U} w_kl p^l_ij(t) + delta_ik z_j(t) ],    p^k_ij(t0) = 0

so the error gradient is available at each step as sum_k e_k(t) p^k_ij(t) (eq. 15), with no stored
history. The price: n^3 + m n^2 sensitivities (Sec. 2.4), each updated by a sum over n units, which is
O(n^4) operations per step for a fully connected net.

Contents:
- ``ElmanRNN``: the modern form of the same recurrence, h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),
  equal to a one-layer ``nn.RNN(batch_first=True)`` (same parameter names, so either loads the other's
  weights). Autograd through its Python loop is BPTT.
- ``CharRNN``: embedding -> Elman RNN -> linear, a character-level language model, with ``sample``.
- ``lag_gradient_norms``: |dL_T / dh_{T-k}| against the lag k (the vanishing gradient).
- ``run_net``, ``rtrl``, ``bptt_grad``: the paper's fully recurrent logistic net, its RTRL gradient (also
  online, Sec. 2.2, and teacher-forced, Sec. 2.3) and the same gradient by autograd (BPTT).
- ``bench_rnn``: forward+backward of our Python loop against ``nn.RNN``.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.checks import check_choice, check_float, check_int, check_tensor


def _check_state(name, h, batch, hidden):
    check_tensor(name, h, dim=2, floating=True)
    if tuple(h.shape) != (batch, hidden):
        raise ValueError(f"{name} must have shape (batch, hidden_size) = {(batch, hidden)}, got {tuple(h.shape)}")
    return h


class ElmanRNN(nn.Module):
    """A one-layer Elman RNN, h_t = f(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), f = tanh (or relu).

    This is eq. (2)-(3) with the weight matrix split into its input part W_ih and recurrent part W_hh,
    and the output taken at the same step (the paper's y(t + 1) is our h_t). Parameters are named and
    initialised as ``nn.RNN``'s (``weight_ih_l0`` ..., U(-1/sqrt(H), 1/sqrt(H))).
    """

    def __init__(self, input_size, hidden_size, nonlinearity="tanh"):
        super().__init__()
        self.input_size = check_int("input_size", input_size, low=1)
        self.hidden_size = H = check_int("hidden_size", hidden_size, low=1)
        self.nonlinearity = check_choice("nonlinearity", nonlinearity, ("tanh", "relu"))
        self.weight_ih_l0 = nn.Parameter(torch.empty(H, input_size))  # W_ih (H, I)
        self.weight_hh_l0 = nn.Parameter(torch.empty(H, H))  # W_hh (H, H)
        self.bias_ih_l0 = nn.Parameter(torch.empty(H))
        self.bias_hh_l0 = nn.Parameter(torch.empty(H))
        bound = 1 / math.sqrt(H)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def step(self, x_t, h):
        """One step: x_t (B, I), h (B, H) -> h_next (B, H)."""
        s = x_t @ self.weight_ih_l0.T + self.bias_ih_l0 + h @ self.weight_hh_l0.T + self.bias_hh_l0  # (B, H)
        return torch.tanh(s) if self.nonlinearity == "tanh" else torch.relu(s)

    def forward(self, x, h0=None):
        """Run over x (B, T, input_size) from h0 (B, H) or zeros; returns (outputs (B, T, H), h_T (B, H))."""
        check_tensor("ElmanRNN input (B, T, input_size)", x, dim=3, floating=True)
        B, T, size = x.shape
        if T < 1 or size != self.input_size:
            raise ValueError(f"ElmanRNN expected input (B, T >= 1, {self.input_size}), got {tuple(x.shape)}")
        h = x.new_zeros(B, self.hidden_size) if h0 is None else _check_state("h0", h0, B, self.hidden_size)
        outs = []
        for t in range(T):  # the same weights at every step; autograd through this loop is BPTT
            h = self.step(x[:, t], h)
            outs.append(h)
        return torch.stack(outs, 1), h


class CharRNN(nn.Module):
    """A character-level language model: embedding (V, E) -> Elman RNN (E -> H) -> linear (H -> V).

    ``core="torch"`` runs the recurrence with ``nn.RNN`` (fused, fast), ``core="ours"`` with
    ``ElmanRNN``; both have the same parameter names, so a state dict moves between them unchanged.
    """

    def __init__(self, vocab_size, embed_size, hidden_size, core="torch"):
        super().__init__()
        self.vocab_size = check_int("vocab_size", vocab_size, low=2)
        check_int("embed_size", embed_size, low=1)
        check_int("hidden_size", hidden_size, low=1)
        self.core = check_choice("core", core, ("torch", "ours"))
        self.emb = nn.Embedding(vocab_size, embed_size)
        self.rnn = (nn.RNN(embed_size, hidden_size, batch_first=True) if core == "torch"
                    else ElmanRNN(embed_size, hidden_size))
        self.out = nn.Linear(hidden_size, vocab_size)

    def forward(self, idx, h0=None):
        """Token ids idx (B, T) -> (logits (B, T, V) for the next token at every step, h_T (B, H))."""
        check_tensor("CharRNN input ids (B, T)", idx, dim=2, integer=True)
        if idx.shape[1] < 1:
            raise ValueError(f"CharRNN expected at least one step, got ids of shape {tuple(idx.shape)}")
        if int(idx.min()) < 0 or int(idx.max()) >= self.vocab_size:
            raise ValueError(f"CharRNN expected ids in [0, {self.vocab_size}), got {int(idx.min())}..{int(idx.max())}")
        H = self.rnn.hidden_size
        if h0 is not None:
            _check_state("h0", h0, idx.shape[0], H)
        e = self.emb(idx)  # (B, T, E)
        if self.core == "torch":
            out, h = self.rnn(e, None if h0 is None else h0.unsqueeze(0).contiguous())
            h = h[0]
        else:
            out, h = self.rnn(e, h0)
        return self.out(out), h  # (B, T, V), (B, H)

    @torch.no_grad()
    def sample(self, n, start_id=0, end_id=0, max_len=30, generator=None):
        """Draw n sequences token by token, each starting from ``start_id``, until ``end_id`` or ``max_len``.

        Returns a list of n lists of ids (without the start and end tokens).
        """
        check_int("n", n, low=1)
        check_int("max_len", max_len, low=1)
        dev = self.out.weight.device
        tok = torch.full((n, 1), start_id, dtype=torch.long, device=dev)
        h, seqs, done = None, [[] for _ in range(n)], [False] * n
        for _ in range(max_len):
            logits, h = self(tok, h)
            probs = F.softmax(logits[:, -1], dim=-1)  # (n, V)
            tok = torch.multinomial(probs.cpu(), 1, generator=generator).to(dev)  # (n, 1)
            for i, t in enumerate(tok[:, 0].tolist()):
                if not done[i]:
                    done[i] = t == end_id
                    if not done[i]:
                        seqs[i].append(t)
            if all(done):
                break
        return seqs


def lag_gradient_norms(model, idx):
    """|dL / dh_{T-1-k}| for k = 0 .. T-1, L = the cross-entropy at the last step of idx (B, T + 1).

    idx[:, :T] is read and idx[:, T] is the target of the last step. The net is unrolled with our loop on
    the model's own weights, so every h_t is a node whose total gradient (through all later steps) can be
    read. Returns a tensor (T,) of the mean over the batch of the Euclidean norm of that gradient.
    """
    if not isinstance(model, CharRNN):
        raise ValueError(f"lag_gradient_norms expects a CharRNN, got {type(model).__name__}")
    check_tensor("idx (B, T + 1)", idx, dim=2, integer=True)
    if idx.shape[1] < 2:
        raise ValueError(f"idx needs at least 2 tokens per row (inputs and a target), got shape {tuple(idx.shape)}")
    core = ElmanRNN(model.emb.embedding_dim, model.rnn.hidden_size).to(model.out.weight)
    core.load_state_dict({k: v for k, v in model.rnn.state_dict().items()})
    x, target = model.emb(idx[:, :-1]).detach(), idx[:, -1]  # (B, T, E), (B,)
    h, hs = x.new_zeros(x.shape[0], core.hidden_size), []
    for t in range(x.shape[1]):
        h = core.step(x[:, t], h)
        h.retain_grad()  # keep dL/dh_t: the total gradient through every later step
        hs.append(h)
    F.cross_entropy(model.out(h), target).backward()
    return torch.stack([hs[-1 - k].grad.norm(dim=1).mean() for k in range(len(hs))]).detach()


# ----------------------------------------------------------------------------- Williams & Zipser's net


def _check_net(W, x, d=None, mask=None):
    check_tensor("W (n, n + m)", W, dim=2, floating=True)
    check_tensor("x (B, T, m)", x, dim=3, floating=True)
    n, m = W.shape[0], x.shape[2]
    if W.shape[1] != n + m or x.shape[1] < 1:
        raise ValueError(f"W must have shape (n, n + m) = ({n}, {n + m}) for x with m = {m} input lines and "
                         f"T >= 1 steps, got W {tuple(W.shape)} and x {tuple(x.shape)}")
    for name, t in (("d", d), ("mask", mask)):
        if t is not None and (not isinstance(t, torch.Tensor) or tuple(t.shape) != (x.shape[0], x.shape[1], n)):
            raise ValueError(f"{name} must have shape (B, T, n) = {(x.shape[0], x.shape[1], n)}, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if mask is not None and mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True where a unit has a target), got {mask.dtype}")
    if d is not None:
        check_tensor("d (B, T, n)", d, floating=True)
    return n


def run_net(W, x, d=None, mask=None, teacher_forcing=False):
    """Outputs y(1..T) (B, T, n) of the logistic net of eq. (1)-(3), from y(0) = 0, for inputs x (B, T, m).

    x holds the m input lines at t = 0 .. T-1 (a bias line of ones is the caller's, as in the paper).
    With ``teacher_forcing``, the units with a target (``mask`` True) feed the target d(t) into the next
    step instead of their own output (eq. 17). Differentiable in W: autograd through it is BPTT.
    """
    n = _check_net(W, x, d, mask)
    if teacher_forcing and (d is None or mask is None):
        raise ValueError("teacher forcing needs the targets d and their mask (B, T, n), got None")
    y, ys = x.new_zeros(x.shape[0], n), []
    for t in range(x.shape[1]):
        y = torch.sigmoid(torch.cat([y, x[:, t]], 1) @ W.T)  # eq. (2)-(3): y(t + 1) = f(W z(t))
        ys.append(y)
        if teacher_forcing:
            y = torch.where(mask[:, t], d[:, t], y)  # eq. (17): z_k = d_k(t) for k in T(t)
    return torch.stack(ys, 1)


def bptt_grad(W, x, d, mask, teacher_forcing=False):
    """dJ_total / dW by autograd through ``run_net`` (BPTT), J_total = sum over t, batch of 1/2 |e(t)|^2 (eq. 4-6)."""
    _check_net(W, x, d, mask)
    W = W.detach().requires_grad_()
    e = torch.where(mask, d - run_net(W, x, d, mask, teacher_forcing), 0.0)  # eq. (4)
    loss = 0.5 * (e ** 2).sum()
    (grad,) = torch.autograd.grad(loss, W)
    return grad


def rtrl(W, x, d, mask, lr=0.0, teacher_forcing=False):
    """Real-time recurrent learning on the net of ``run_net``: forward-mode sensitivities, eq. (12)-(16).

    Carries p (B, n, n, n + m), p[b, k, i, j] = dy_k / dw_ij, forward in time from p = 0 (eq. 13). At each
    step the error e(t) of the units with targets (``mask``) gives -dJ(t)/dw_ij = sum_k e_k p^k_ij (eq. 15).
    With ``lr = 0`` the weights stay fixed and ``grad`` is the exact dJ_total / dW (equal to BPTT's);
    with ``lr > 0`` each step's change lr * sum_k e_k p^k_ij (summed over the batch) is applied at once, the
    real-time algorithm of Sec. 2.2. ``teacher_forcing`` uses eq. (17) and (19): forced units feed d(t)
    and their sensitivities are reset to 0 after use.
    Returns {"grad": dJ_total/dW accumulated along the run, "loss": J_total, "W": final weights, "y": (B, T, n)}.
    """
    n = _check_net(W, x, d, mask)
    lr = check_float("lr", lr, low=0.0)
    B, T, m = x.shape
    W = W.detach().clone()
    eye = torch.eye(n, dtype=W.dtype, device=W.device)  # delta_ik
    y = x.new_zeros(B, n)
    p = x.new_zeros(B, n, n, n + m)  # n^3 + m n^2 numbers per sequence (Sec. 2.4)
    grad, loss, ys = torch.zeros_like(W), x.new_zeros(()), []
    for t in range(T):
        z = torch.cat([y, x[:, t]], 1)  # (B, n + m), eq. (1)
        y = torch.sigmoid(z @ W.T)  # (B, n), y(t + 1) = f(s(t))
        fprime = y * (1 - y)  # eq. (16), logistic units
        # eq. (12): sum_l w_kl p^l_ij is O(n^4) per step; delta_ik z_j adds z at row i of unit k = i
        p = fprime[:, :, None, None] * (torch.einsum("kl,blij->bkij", W[:, :n], p)
                                        + eye[None, :, :, None] * z[:, None, None, :])
        e = torch.where(mask[:, t], d[:, t] - y, 0.0)  # (B, n), eq. (4)
        loss = loss + 0.5 * (e ** 2).sum()
        step = torch.einsum("bk,bkij->ij", e, p)  # eq. (15) / alpha: sum_k e_k p^k_ij = -dJ(t)/dW
        grad -= step
        if lr > 0:
            W += lr * step  # Sec. 2.2: change the weights while the net runs
        ys.append(y)
        if teacher_forcing:
            y = torch.where(mask[:, t], d[:, t], y)  # eq. (17)
            p = p * (~mask[:, t]).to(p.dtype)[:, :, None, None]  # eq. (19): p^l_ij = 0 for l in T(t)
    return {"grad": grad, "loss": loss, "W": W, "y": torch.stack(ys, 1)}


def bench_rnn(device="cpu", repeats=20, batch=64, steps=32, input_size=32, hidden_size=128) -> dict:
    """Forward + backward of ``ElmanRNN`` (our Python loop) vs ``nn.RNN`` on x (batch, steps, input_size).

    Returns {"ours_ms", "theirs_ms", "ratio", "name"}: medians over ``repeats`` (ABBA order, after warm-up,
    :func:`common.bench.time_forward_backward`), ratio = ours / theirs. Ours launches a few small ops per
    step from Python in both directions; ``nn.RNN`` runs the whole sequence in one C++/oneDNN (cuDNN on
    CUDA) call, computing the input projections for all steps in one matrix product.
    """
    from common.bench import time_forward_backward

    check_int("repeats", repeats, low=1)
    for name, v in (("batch", batch), ("steps", steps), ("input_size", input_size), ("hidden_size", hidden_size)):
        check_int(name, v, low=1)
    device = torch.device(device)
    torch.manual_seed(0)
    theirs = nn.RNN(input_size, hidden_size, batch_first=True).to(device)
    ours = ElmanRNN(input_size, hidden_size).to(device)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(batch, steps, input_size, generator=torch.Generator().manual_seed(0))
    ours_ms, theirs_ms = time_forward_backward(lambda v: ours(v)[0], lambda v: theirs(v)[0], x, device=device,
                                               repeats=repeats)
    return {"ours_ms": ours_ms, "theirs_ms": theirs_ms, "ratio": ours_ms / theirs_ms,
            "name": f"Elman RNN fwd+bwd, B {batch}, T {steps}, {input_size}->{hidden_size}"}
