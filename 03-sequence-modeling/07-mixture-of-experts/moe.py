"""The sparsely-gated mixture-of-experts layer (Shazeer et al. 2017), from scratch.

- :class:`NoisyTopKGate`: noisy top-k gating, eq. 3-5, and the smooth load estimator of Appendix A, eq. 8-10.
- :func:`cv_squared`: the squared coefficient of variation used by both balancing losses, eq. 7 and 11.
- :class:`Experts`: ``n`` feed-forward experts with one ReLU hidden layer, their weights stacked.
- :func:`sparse_moe`: eq. 1 computed sparsely: gather the tokens each expert gets, run only those,
  scatter-add the gate-weighted outputs back. :func:`dense_moe` computes every expert on every token and
  masks with the same gates: the reference the sparse version must equal.
- :class:`MoE`: gate + experts + the two auxiliary losses; :class:`DenseFFN`: the dense baseline of equal
  active compute; :class:`CharLM`: the small character language model the notes train.
- :func:`bench_moe`: sparse dispatch against the dense reference, forward + backward.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.checks import check_float, check_int, check_tensor


def cv_squared(v: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared coefficient of variation of a vector, ``var(v) / mean(v)^2`` (population variance).

    This is ``CV(.)^2`` of eq. 7 (``Importance``) and eq. 11 (``Load``); ``eps`` keeps an all-zero vector finite.
    """
    check_tensor("v", v, dim=1, floating=True)
    if v.numel() < 2:
        return v.new_zeros(())
    return v.var(unbiased=False) / (v.mean() ** 2 + eps)


class NoisyTopKGate(nn.Module):
    """Noisy top-k gating (Sec. 2.1): ``G(x) = Softmax(KeepTopK(H(x), k))`` (eq. 3) with

    ``H(x)_i = (x W_g)_i + StandardNormal() * Softplus((x W_noise)_i)`` (eq. 4); KeepTopK (eq. 5) sets all but
    the k largest entries to -inf, so their gates are exactly 0. Both matrices start at zero (Appendix A,
    "Initial Load Imbalance"): no signal, some noise, so the first batches are spread evenly.
    """

    def __init__(self, dim: int, num_experts: int, k: int):
        super().__init__()
        check_int("dim", dim, low=1)
        check_int("num_experts", num_experts, low=1)
        check_int("k", k, low=1, high=num_experts)
        self.num_experts, self.k = num_experts, k
        self.w_gate = nn.Parameter(torch.zeros(dim, num_experts))
        self.w_noise = nn.Parameter(torch.zeros(dim, num_experts))

    def forward(self, x: torch.Tensor, noise: bool | None = None):
        """Gates for a batch of tokens ``x`` (N, dim).

        Returns ``(gates (N, n), load (n,))``. ``noise`` defaults to ``self.training``. With noise, ``load`` is
        the smooth estimator of Appendix A, ``Load(X)_i = sum_x P(x, i)`` (eq. 10) with
        ``P(x, i) = Phi(((x W_g)_i - kth_excluding(H(x), k, i)) / Softplus((x W_noise)_i))`` (eq. 9); without
        noise it is the hard count of tokens each expert receives (no gradient).
        """
        check_tensor("x", x, dim=2, floating=True)
        noise = self.training if noise is None else noise
        n, k = self.num_experts, self.k
        clean = x @ self.w_gate                                      # (N, n)
        if noise:
            std = F.softplus(x @ self.w_noise)                       # (N, n), > 0
            h = clean + torch.randn_like(clean) * std                # eq. 4
        else:
            h = clean
        top_v, top_i = h.topk(min(k + 1, n), dim=1)                  # (N, k+1) sorted, largest first
        gates = torch.zeros_like(h).scatter(1, top_i[:, :k], F.softmax(top_v[:, :k], dim=1))  # eq. 3, 5
        if noise and k < n:
            # kth_excluding(H, k, i): for an expert inside the top k it is the (k+1)-th largest of H,
            # for one outside it is the k-th largest.
            inside = h >= top_v[:, k - 1:k]                          # (N, n)
            threshold = torch.where(inside, top_v[:, k:k + 1], top_v[:, k - 1:k])
            p = torch.distributions.Normal(0.0, 1.0).cdf((clean - threshold) / std)  # eq. 9
            load = p.sum(0)                                          # eq. 10
        else:
            load = (gates > 0).sum(0).to(x.dtype)
        return gates, load


class Experts(nn.Module):
    """``n`` experts ``E_i(x) = relu(x W1_i + b1_i) W2_i + b2_i`` (one hidden layer, as in Sec. 3.2), stacked."""

    def __init__(self, num_experts: int, dim: int, hidden: int):
        super().__init__()
        for name, v in (("num_experts", num_experts), ("dim", dim), ("hidden", hidden)):
            check_int(name, v, low=1)
        s1, s2 = dim ** -0.5, hidden ** -0.5
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden).uniform_(-s1, s1))
        self.b1 = nn.Parameter(torch.zeros(num_experts, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, dim).uniform_(-s2, s2))
        self.b2 = nn.Parameter(torch.zeros(num_experts, dim))

    def forward(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Expert ``i`` on the tokens ``x`` (M, dim) -> (M, dim)."""
        return F.relu(x @ self.w1[i] + self.b1[i]) @ self.w2[i] + self.b2[i]


def sparse_moe(x: torch.Tensor, gates: torch.Tensor, experts: Experts) -> torch.Tensor:
    """Eq. 1, ``y = sum_i G(x)_i E_i(x)``, evaluating expert i only where ``G(x)_i != 0``.

    Dispatch: the indices of the tokens routed to expert i, gather those rows; combine: scale each output by
    its gate and ``index_add`` it into its token's row. x (N, d), gates (N, n) -> y (N, d).
    """
    check_tensor("x", x, dim=2, floating=True)
    check_tensor("gates", gates, dim=2, floating=True)
    if gates.shape != (x.shape[0], experts.w1.shape[0]):
        raise ValueError(f"gates must have shape {(x.shape[0], experts.w1.shape[0])} (tokens, experts), "
                         f"got {tuple(gates.shape)}")
    y = torch.zeros_like(x)
    tok, exp = gates.nonzero(as_tuple=True)                          # (M,) pairs (token, expert), M = N k
    for i in exp.unique().tolist():
        rows = tok[exp == i]                                         # tokens routed to expert i
        out = experts(x[rows], i)                                    # (m_i, d): only these tokens
        y = y.index_add(0, rows, gates[rows, i, None] * out)
    return y


def dense_moe(x: torch.Tensor, gates: torch.Tensor, experts: Experts) -> torch.Tensor:
    """The reference for :func:`sparse_moe`: every expert on every token, outputs weighted by the same gates
    (zero gates mask the unchosen experts). x (N, d), gates (N, n) -> y (N, d)."""
    check_tensor("x", x, dim=2, floating=True)
    hid = F.relu(torch.einsum("nd,edh->enh", x, experts.w1) + experts.b1[:, None])   # (n, N, hidden)
    out = torch.einsum("enh,ehd->end", hid, experts.w2) + experts.b2[:, None]       # (n, N, d)
    return torch.einsum("ne,end->nd", gates, out)


class MoE(nn.Module):
    """A sparsely-gated MoE layer: noisy top-k gate, ``num_experts`` experts, and the balancing losses.

    ``forward`` returns ``(y, aux)``; ``aux`` holds ``importance`` (eq. 6), ``load`` (eq. 10), ``counts`` (tokens
    routed to each expert) and ``loss`` =
    ``w_importance * CV(Importance)^2 + w_load * CV(Load)^2`` (eq. 7 + eq. 11), to be added to the task loss.
    """

    def __init__(self, dim: int, num_experts: int, hidden: int, k: int = 2, w_importance: float = 0.0,
                 w_load: float = 0.0):
        super().__init__()
        check_int("num_experts", num_experts, low=1)
        check_int("k", k, low=1, high=num_experts)
        self.w_importance = check_float("w_importance", w_importance, low=0.0)
        self.w_load = check_float("w_load", w_load, low=0.0)
        self.gate = NoisyTopKGate(dim, num_experts, k)
        self.experts = Experts(num_experts, dim, hidden)

    def forward(self, x: torch.Tensor, dense: bool = False):
        """x (N, dim) or (B, T, dim) -> ``(y, aux)``, y shaped like x. ``dense=True`` uses :func:`dense_moe`."""
        check_tensor("x", x, dim=(2, 3), floating=True)
        if x.shape[-1] != self.gate.w_gate.shape[0]:
            raise ValueError(f"x must have {self.gate.w_gate.shape[0]} features in its last dim, got {x.shape[-1]}")
        flat = x.reshape(-1, x.shape[-1])                            # (N, d)
        gates, load = self.gate(flat)
        y = (dense_moe if dense else sparse_moe)(flat, gates, self.experts)
        importance = gates.sum(0)                                    # eq. 6, (n,)
        loss = self.w_importance * cv_squared(importance) + self.w_load * cv_squared(load)
        counts = (gates > 0).sum(0)                                  # (n,) tokens per expert
        return y.reshape(x.shape), {"importance": importance, "load": load, "counts": counts, "loss": loss}


class DenseFFN(nn.Module):
    """The baseline: one feed-forward block ``relu(x W1 + b1) W2 + b2``; with ``hidden = k * h`` it costs the
    same multiply-adds per token as an MoE whose k active experts each have ``h`` hidden units."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor):
        """x (..., dim) -> ``(y, aux)`` with the same ``aux`` keys as :class:`MoE` (loss 0, no routing)."""
        check_tensor("x", x, dim=(2, 3), floating=True)
        return self.net(x), {"loss": x.new_zeros(())}


class CharLM(nn.Module):
    """A small next-character model: the embeddings of the last ``context`` characters, a tanh layer of width
    ``dim``, one residual feed-forward block (``ffn``: :class:`MoE` or :class:`DenseFFN`), then the logits."""

    def __init__(self, vocab: int, context: int, emb: int, dim: int, ffn: nn.Module):
        super().__init__()
        for name, v in (("vocab", vocab), ("context", context), ("emb", emb), ("dim", dim)):
            check_int(name, v, low=1)
        self.context = context
        self.embed = nn.Embedding(vocab, emb)
        self.inp = nn.Linear(context * emb, dim)
        self.norm = nn.LayerNorm(dim)
        self.ffn = ffn
        self.out = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor):
        """idx (B, context) int64 -> ``(logits (B, vocab), aux)`` where ``aux`` comes from the block."""
        check_tensor("idx", idx, dim=2, integer=True)
        if idx.shape[1] != self.context:
            raise ValueError(f"idx must hold {self.context} characters per row, got {idx.shape[1]}")
        h = torch.tanh(self.inp(self.embed(idx).flatten(1)))         # (B, dim)
        f, aux = self.ffn(self.norm(h))
        return self.out(h + f), aux


def bench_moe(num_experts: int = 8, device: str = "cpu", tokens: int = 4096, dim: int = 128, hidden: int = 256,
              k: int = 2, repeats: int = 10) -> dict:
    """Forward + backward of :func:`sparse_moe` against :func:`dense_moe` (same gates, top-``k``).

    Returns ``{"ours_ms", "theirs_ms", "ratio", "name"}`` plus tokens per second of each; prints the latter.
    """
    from common.bench import time_forward_backward

    check_int("num_experts", num_experts, low=2)
    torch.manual_seed(0)
    layer = MoE(dim, num_experts, hidden, k=k).to(device)
    nn.init.normal_(layer.gate.w_gate, std=0.1)
    x = torch.randn(tokens, dim, device=device)
    with torch.no_grad():
        gates, _ = layer.gate(x, noise=False)
    ours_ms, theirs_ms = time_forward_backward(lambda t: sparse_moe(t, gates, layer.experts),
                                               lambda t: dense_moe(t, gates, layer.experts), x, device=device,
                                               repeats=repeats)
    res = {"ours_ms": ours_ms, "theirs_ms": theirs_ms, "ratio": ours_ms / theirs_ms,
           "name": f"MoE top-{k} of {num_experts}, {tokens} tokens (fwd+bwd)",
           "ours_tokens_per_s": tokens / ours_ms * 1e3, "theirs_tokens_per_s": tokens / theirs_ms * 1e3}
    print(f"{res['name']}: sparse {res['ours_tokens_per_s']:,.0f} tokens/s, "
          f"dense reference {res['theirs_tokens_per_s']:,.0f} tokens/s")
    return res
