"""Additive attention (Bahdanau, Cho & Bengio 2014) and the RNNsearch model, from tensor ops.

The paper's decoder no longer reads one fixed vector c summarising the source sentence. At every
target position i it scores each source annotation h_j against its previous state s_{i-1},

    e_ij = v_a^T tanh(W_a s_{i-1} + U_a h_j)            (alignment model, App. A.1.2)
    alpha_ij = exp(e_ij) / sum_k exp(e_ik)              (Eq. 6)
    c_i = sum_j alpha_ij h_j                            (Eq. 5)

and the annotations h_j = [h_fwd_j ; h_bwd_j] come from a bidirectional RNN (Sec. 3.2, Eq. 7).

Contents:
- ``AdditiveAttention``: the alignment model, with padded source positions masked out (weight exactly 0).
- ``RNNsearch``: a bidirectional GRU encoder and a GRU decoder fed [E y_{i-1}; c_i] (App. A.2), the
  paper's own recurrent unit; a deep output with one maxout layer (App. A.2.2); batched greedy decoding
  that also returns the attention weights.
- ``bench_attention``: our additive attention against ``F.scaled_dot_product_attention`` as a cost reference.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.bench import time_forward_backward
from common.checks import check_int, check_tensor
from common.translation import BOS, EOS, PAD


class AdditiveAttention(nn.Module):
    """The alignment model a(s_{i-1}, h_j) = v_a^T tanh(W_a s_{i-1} + U_a h_j) and Eqs. (5)-(6).

    ``query_size`` is n (decoder state), ``key_size`` is 2n (annotations), ``attn_size`` is n' (App. A.2.2).
    U_a h_j does not depend on i, so :meth:`project` computes it once per sentence (App. A.1.2).
    """

    def __init__(self, query_size, key_size, attn_size):
        super().__init__()
        for name, v in (("query_size", query_size), ("key_size", key_size), ("attn_size", attn_size)):
            check_int(name, v, low=1)
        self.W = nn.Linear(query_size, attn_size, bias=False)  # W_a
        self.U = nn.Linear(key_size, attn_size)  # U_a (its bias stands for the omitted biases)
        self.v = nn.Linear(attn_size, 1, bias=False)  # v_a

    def project(self, h):
        """U_a h_j for every j: h (B, Tx, 2n) -> (B, Tx, n')."""
        check_tensor("annotations h (B, Tx, key_size)", h, dim=3, floating=True)
        return self.U(h)

    def forward(self, s, h, mask=None, uh=None):
        """Context and weights for query states ``s`` (B, n) or (B, Ty, n) over annotations ``h`` (B, Tx, 2n).

        ``mask`` (B, Tx) bool is True at real source words; padded positions get e = -inf, so alpha = 0
        there exactly. ``uh`` is :meth:`project`'s output, if already computed. Returns (c, alpha):
        c (B, 2n) and alpha (B, Tx), or (B, Ty, 2n) and (B, Ty, Tx) for a (B, Ty, n) query.
        """
        check_tensor("query s (B, n) or (B, Ty, n)", s, dim=(2, 3), floating=True)
        check_tensor("annotations h (B, Tx, key_size)", h, dim=3, floating=True)
        if s.shape[0] != h.shape[0] or s.shape[-1] != self.W.in_features or h.shape[2] != self.U.in_features:
            raise ValueError(f"expected s (B, [Ty,] {self.W.in_features}) and h (B, Tx, {self.U.in_features}), "
                             f"got {tuple(s.shape)} and {tuple(h.shape)}")
        single = s.dim() == 2
        q = s[:, None] if single else s  # (B, Ty, n)
        uh = self.U(h) if uh is None else uh  # (B, Tx, n')
        e = self.v(torch.tanh(self.W(q)[:, :, None] + uh[:, None])).squeeze(-1)  # (B, Ty, Tx) energies
        if mask is not None:
            if mask.shape != h.shape[:2] or mask.dtype != torch.bool:
                raise ValueError(f"mask must be a bool tensor of shape {tuple(h.shape[:2])}, got "
                                 f"{mask.dtype} {tuple(mask.shape)}")
            e = e.masked_fill(~mask[:, None], float("-inf"))
        alpha = torch.softmax(e, dim=-1)  # (B, Ty, Tx), Eq. (6)
        c = alpha @ h  # (B, Ty, 2n), Eq. (5)
        return (c[:, 0], alpha[:, 0]) if single else (c, alpha)


class RNNsearch(nn.Module):
    """Bahdanau et al.'s model: bidirectional GRU encoder + attentive GRU decoder (Sec. 3, App. A.2).

    Decoder step (App. A.2.2): c_i from s_{i-1} by the attention, then s_i = GRU(s_{i-1}, [E y_{i-1}; c_i])
    (a GRU cell fed the concatenation has exactly the paper's W E y + C c terms in each gate), s_0 =
    tanh(W_s h_bwd_1), and a deep output with one maxout layer reads (s_i, y_{i-1}, c_i).
    forward(src (B, Tx), y_in (B, Ty)) -> (log-probs (B, Ty, K), alpha (B, Ty, Tx)).
    """

    def __init__(self, src_vocab, tgt_vocab, emb=64, hidden=128, attn=128, maxout=64, max_len=20):
        super().__init__()
        for name, v in (("src_vocab", src_vocab), ("tgt_vocab", tgt_vocab), ("emb", emb), ("hidden", hidden),
                        ("attn", attn), ("maxout", maxout), ("max_len", max_len)):
            check_int(name, v, low=1)
        self.max_len, self.hidden = max_len, hidden
        self.src_emb = nn.Embedding(src_vocab, emb, padding_idx=PAD)  # E (source)
        self.tgt_emb = nn.Embedding(tgt_vocab, emb, padding_idx=PAD)  # E (target)
        self.encoder = nn.GRU(emb, hidden, batch_first=True, bidirectional=True)
        self.attention = AdditiveAttention(hidden, 2 * hidden, attn)
        self.init = nn.Linear(hidden, hidden)  # W_s
        self.cell = nn.GRUCell(emb + 2 * hidden, hidden)
        self.t_out = nn.Linear(hidden + emb + 2 * hidden, 2 * maxout)  # t~ = U_o s + V_o E y + C_o c
        self.W_o = nn.Linear(maxout, tgt_vocab)  # W_o

    def check_src(self, src):
        """``src`` must be a (B, Tx) integer batch with 1 <= Tx <= max_len, each row starting with a word."""
        check_tensor("src (B, Tx) token ids", src, dim=2, integer=True)
        if not 1 <= src.shape[1] <= self.max_len:
            raise ValueError(f"source sentences may have at most {self.max_len} tokens (the model's limit), "
                             f"got a batch padded to {src.shape[1]}")
        lengths = (src != PAD).sum(1)
        if (lengths == 0).any():
            raise ValueError("every source sentence needs at least one token; got an all-padding row")
        return src != PAD, lengths  # (B, Tx) mask, (B,)

    def encode(self, src):
        """Annotations h (B, Tx, 2n) (Eq. 7), mask (B, Tx), U_a h (B, Tx, n') and s_0 (B, n)."""
        mask, lengths = self.check_src(src)
        packed = nn.utils.rnn.pack_padded_sequence(self.src_emb(src), lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.encoder(packed)
        h = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])[0]
        s0 = torch.tanh(self.init(h[:, 0, self.hidden:]))  # from the backward state at word 1
        return h, mask, self.attention.project(h), s0

    def logits(self, s, y_prev, c):
        """The deep output (App. A.2.2): a maxout over pairs of t~ then W_o; (..., n) -> scores (..., K_y)."""
        t = self.t_out(torch.cat([s, self.tgt_emb(y_prev), c], -1))  # (..., 2l)
        return self.W_o(t.unflatten(-1, (-1, 2)).amax(-1))  # t_i = max(t~_{2j-1}, t~_{2j}), (..., l)

    def step(self, y_prev, s, enc):
        """One decoder step from y_{i-1} (B,) and s_{i-1} (B, n): returns (log-probs (B, K), s_i, alpha_i)."""
        h, mask, uh, _ = enc
        c, alpha = self.attention(s, h, mask, uh)  # (B, 2n), (B, Tx)
        s = self.cell(torch.cat([self.tgt_emb(y_prev), c], -1), s)  # (B, n)
        return F.log_softmax(self.logits(s, y_prev, c), -1), s, alpha

    def states(self, src, y_in):
        """Teacher-forced decoder states s_i (B, Ty, n), contexts c_i (B, Ty, 2n) and alpha (B, Ty, Tx).

        The context of step i depends on s_{i-1}, so this is a loop over target positions; the output layer,
        which needs no recurrence, runs afterwards on all positions at once.
        """
        h, mask, uh, s = self.encode(src)
        check_tensor("y_in (B, Ty) token ids", y_in, dim=2, integer=True)
        if y_in.shape[0] != src.shape[0]:
            raise ValueError(f"src and y_in must hold the same number of sentences, got {src.shape[0]} and "
                             f"{y_in.shape[0]}")
        emb = self.tgt_emb(y_in)  # (B, Ty, E)
        ss, cs, alphas = [], [], []
        for i in range(y_in.shape[1]):
            c, a = self.attention(s, h, mask, uh)
            s = self.cell(torch.cat([emb[:, i], c], -1), s)
            ss.append(s)
            cs.append(c)
            alphas.append(a)
        return torch.stack(ss, 1), torch.stack(cs, 1), torch.stack(alphas, 1)

    def forward(self, src, y_in):
        """Teacher forcing: (log-probs (B, Ty, K) of the word after each of y_in, alpha (B, Ty, Tx))."""
        s, c, alpha = self.states(src, y_in)
        return F.log_softmax(self.logits(s, y_in, c), -1), alpha

    def loss(self, src, tgt):
        """Mean token negative log-likelihood with teacher forcing; tgt (B, Ty+1) reads <bos> ... <eos> pad.

        The output layer runs only where there is a word to predict (padding skipped)."""
        check_tensor("tgt (B, Ty) token ids", tgt, dim=2, integer=True)
        if tgt.shape[0] != src.shape[0] or tgt.shape[1] < 2:
            raise ValueError(f"tgt must be (B={src.shape[0]}, >= 2), got {tuple(tgt.shape)}")
        s, c, _ = self.states(src, tgt[:, :-1])
        keep = tgt[:, 1:] != PAD  # (B, Ty)
        return F.cross_entropy(self.logits(s[keep], tgt[:, :-1][keep], c[keep]), tgt[:, 1:][keep])

    @torch.no_grad()
    def greedy(self, src, max_steps=None, alignments=False):
        """Greedy translation of a batch: the most likely word at each step, until <eos> or ``max_steps``
        (default ``max_len + 1``). Returns ids (B, T) without <bos>, PAD after <eos>; with
        ``alignments=True`` also the weights alpha (B, T, Tx) of every step."""
        max_steps = self.max_len + 1 if max_steps is None else check_int("max_steps", max_steps, low=1)
        enc = self.encode(src)
        s = enc[-1]
        y = torch.full((src.shape[0],), BOS, dtype=torch.long, device=src.device)
        done = torch.zeros_like(y, dtype=torch.bool)
        ids, alphas = [], []
        for _ in range(max_steps):
            logp, s, a = self.step(y, s, enc)
            y = logp.argmax(-1).masked_fill(done, PAD)  # (B,)
            ids.append(y)
            alphas.append(a)
            done |= y == EOS
            if done.all():
                break
        ids = torch.stack(ids, 1)
        return (ids, torch.stack(alphas, 1)) if alignments else ids


def bench_attention(device="cpu", repeats=20, batch=64, tx=20, ty=20, size=128):
    """Forward + backward time of :class:`AdditiveAttention` against ``F.scaled_dot_product_attention``.

    Both attend from ``ty`` queries (B, ty, size) over ``tx`` keys/values (B, tx, 2 size): ours scores with
    the alignment MLP (a (B, ty, tx, n') tanh tensor), SDPA with dot products after one key projection; SDPA
    is a cost reference (what the Transformer later used), not the same function. Returns {"ours_ms",
    "theirs_ms", "ratio", "name"}, ratio = ours / theirs (medians, ABBA order, common.bench).
    """
    for name, v in (("repeats", repeats), ("batch", batch), ("tx", tx), ("ty", ty), ("size", size)):
        check_int(name, v, low=1)
    torch.manual_seed(0)
    ours = AdditiveAttention(size, 2 * size, size).to(device)
    proj = nn.Linear(2 * size, size).to(device)
    s, h = torch.randn(batch, ty, size), torch.randn(batch, tx, 2 * size)

    def dot(q, k):
        return F.scaled_dot_product_attention(q, proj(k), k)

    t_ours, t_theirs = time_forward_backward(lambda q, k: ours(q, k)[0], dot, (s, h), device=device,
                                             repeats=repeats)
    return {"ours_ms": t_ours, "theirs_ms": t_theirs, "ratio": t_ours / t_theirs,
            "name": f"additive attention fwd+bwd, {ty} queries x {tx} keys, batch {batch}, size {size}"}
