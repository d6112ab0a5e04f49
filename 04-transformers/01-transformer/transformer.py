"""The Transformer (Vaswani et al. 2017, "Attention Is All You Need"), from tensor operations.

Contents, in the paper's order:
- :func:`scaled_dot_product_attention`: softmax(Q K^T / sqrt(d_k)) V (Eq. 1, Sec. 3.2.1) with masks.
  Mask convention, the same as ``F.scaled_dot_product_attention``'s: a **bool mask is True where a query
  may attend** (False -> score -inf); a float mask is **added** to the scores; ``causal=True`` lets
  query i see keys j <= i. Key-padding masks of the layers below follow the same rule (True = a real
  token), the opposite of ``nn.MultiheadAttention``'s ``key_padding_mask`` (True = ignore).
- :class:`MultiHeadAttention` (Sec. 3.2.2): h heads of size d_model / h, with ``nn.MultiheadAttention``'s
  parameter names and layout (``in_proj_weight`` = [W^Q; W^K; W^V] stacked, ``out_proj`` = W^O), so
  ``load_state_dict`` copies weights either way.
- :func:`sinusoidal_positions` (Sec. 3.5); :class:`EncoderLayer` / :class:`DecoderLayer`, post-norm
  x = LayerNorm(x + Dropout(Sublayer(x))) with a ReLU FFN (Eq. 2, Sec. 3.1, 3.3, 5.4), parameter names as
  ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer``.
- :class:`Transformer`: the encoder-decoder for translation, embeddings scaled by sqrt(d_model) (Sec. 3.4);
  the target embedding is shared with the pre-softmax linear layer (source and target have separate word
  vocabularies here, so the source embedding is not shared); greedy decoding and batched beam search with
  the length penalty of Wu et al. (2016), lp(Y) = ((5 + |Y|) / 6)^alpha (Sec. 6.1: beam 4, alpha 0.6).
- :func:`label_smoothed_loss` (Sec. 5.4, eps_ls = 0.1), :func:`warmup_schedule` (Eq. 3) and
  :func:`average_checkpoints` (Sec. 6.1: the reported models average their last checkpoints).
- :func:`bench_mha`: our multi-head attention against ``nn.MultiheadAttention``, forward + backward.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.bench import time_forward_backward
from common.checks import check_float, check_int, check_probability, check_tensor
from common.translation import BOS, EOS, PAD


def scaled_dot_product_attention(q, k, v, mask=None, causal=False, dropout=0.0, need_weights=False):
    """Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V (Eq. 1) on (..., Tq, d_k), (..., Tk, d_k), (..., Tk, d_v).

    ``mask`` broadcasts to (..., Tq, Tk): bool (True = attend) or float (added to the scores). ``causal``
    masks keys j > i (illegal connections set to -inf, Sec. 3.2.3). A query row with every key masked gives
    NaN, as the softmax of all -inf does. Returns (..., Tq, d_v), and the weights (..., Tq, Tk) if asked.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(f"{name} (..., T, d)", t, dim=tuple(range(2, 9)), floating=True)
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"expected q (..., Tq, d_k), k (..., Tk, d_k), v (..., Tk, d_v); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., Tq, Tk)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or not (mask.dtype == torch.bool or mask.is_floating_point()):
            raise ValueError(f"mask must be a bool or float tensor, got {type(mask).__name__} "
                             f"{getattr(mask, 'dtype', '')}")
        try:
            if torch.broadcast_shapes(mask.shape, scores.shape) != scores.shape:
                raise RuntimeError
        except RuntimeError:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' shape "
                             f"{tuple(scores.shape)} (..., Tq, Tk)") from None
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    if causal:
        tq, tk = scores.shape[-2:]
        keep = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril()  # key j <= query i
        scores = scores.masked_fill(~keep, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # (..., Tq, Tk)
    out = F.dropout(weights, dropout) @ v if dropout > 0 else weights @ v  # (..., Tq, d_v)
    return (out, weights) if need_weights else out


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1..head_h) W^O, head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V) (Sec. 3.2.2).

    d_k = d_v = d_model / h. Parameters are laid out as ``nn.MultiheadAttention``'s (``in_proj_weight``
    (3 d_model, d_model), ``in_proj_bias``, ``out_proj``); ``dropout`` acts on the attention weights in
    training, as PyTorch's does.
    """

    def __init__(self, d_model, heads, dropout=0.0):
        super().__init__()
        check_int("d_model", d_model, low=1)
        check_int("heads", heads, low=1)
        if d_model % heads:
            raise ValueError(f"d_model must be divisible by heads (d_k = d_model / h), got {d_model} and {heads}")
        self.d_model, self.heads, self.dropout = d_model, heads, check_probability("dropout", dropout)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)  # PyTorch's initialisation
        nn.init.zeros_(self.out_proj.bias)

    def _split(self, x, i):
        """Project x (B, T, d_model) with block i of in_proj (0: Q, 1: K, 2: V) and split heads: (B, h, T, d_k)."""
        d = self.d_model
        y = F.linear(x, self.in_proj_weight[i * d:(i + 1) * d], self.in_proj_bias[i * d:(i + 1) * d])
        return y.unflatten(-1, (self.heads, d // self.heads)).transpose(1, 2)

    def project_kv(self, key, value):
        """K W^K and V W^V split into heads, (B, h, Tk, d_k) each: what a decoder caches (Sec. 3.2.3)."""
        return self._split(key, 1), self._split(value, 2)

    def forward(self, query, key=None, value=None, key_mask=None, attn_mask=None, causal=False,
                need_weights=False, kv=None):
        """query (B, Tq, d_model), key / value (B, Tk, d_model) (default: the query, self-attention).

        ``key_mask`` (B, Tk) bool, True at real tokens; ``attn_mask`` (Tq, Tk) or (B, h, Tq, Tk), bool (True =
        attend) or float (added); ``kv`` = already projected (K, V) from :meth:`project_kv`, used instead of
        key and value. Returns (B, Tq, d_model), and the weights (B, h, Tq, Tk) with ``need_weights``.
        """
        check_tensor("query (B, Tq, d_model)", query, dim=3, floating=True)
        if query.shape[-1] != self.d_model:
            raise ValueError(f"query must have {self.d_model} features, got shape {tuple(query.shape)}")
        if kv is None:
            key = query if key is None else key
            value = key if value is None else value
            check_tensor("key (B, Tk, d_model)", key, dim=3, floating=True)
            if key.shape[0] != query.shape[0] or key.shape[-1] != self.d_model or key.shape != value.shape:
                raise ValueError(f"key and value must be (B={query.shape[0]}, Tk, {self.d_model}), got "
                                 f"{tuple(key.shape)} and {tuple(value.shape)}")
            kv = self.project_kv(key, value)
        k, v = kv  # (B, h, Tk, d_k)
        mask = None
        if key_mask is not None:
            if key_mask.dtype != torch.bool or key_mask.shape != (query.shape[0], k.shape[2]):
                raise ValueError(f"key_mask must be a bool (B, Tk) = {(query.shape[0], k.shape[2])} tensor, True "
                                 f"at real tokens; got {key_mask.dtype} {tuple(key_mask.shape)}")
            mask = key_mask[:, None, None, :]  # (B, 1, 1, Tk)
        if attn_mask is not None:
            if mask is None or attn_mask.dtype == torch.bool:
                mask = attn_mask if mask is None else mask & attn_mask
            else:  # float attn_mask: the key mask becomes 0 / -inf and the two are added
                mask = torch.zeros(mask.shape, dtype=attn_mask.dtype, device=mask.device).masked_fill(
                    ~mask, float("-inf")) + attn_mask
        q = self._split(query, 0)  # (B, h, Tq, d_k)
        out, w = scaled_dot_product_attention(q, k, v, mask, causal, self.dropout if self.training else 0.0, True)
        out = self.out_proj(out.transpose(1, 2).flatten(2))  # concat heads, then W^O: (B, Tq, d_model)
        return (out, w) if need_weights else out


def sinusoidal_positions(length, d_model):
    """PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(...) (Sec. 3.5): (length, d_model)."""
    check_int("length", length, low=1)
    check_int("d_model", d_model, low=2)
    if d_model % 2:
        raise ValueError(f"d_model must be even for sine/cosine pairs, got {d_model}")
    pos = torch.arange(length, dtype=torch.float64)[:, None]  # (T, 1)
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (d/2,)
    pe = torch.zeros(length, d_model, dtype=torch.float64)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return pe.float()


class EncoderLayer(nn.Module):
    """Self-attention then FFN, each as x = LayerNorm(x + Dropout(Sublayer(x))) (Sec. 3.1, 5.4); post-norm."""

    def __init__(self, d_model, heads, d_ff, dropout=0.1):
        super().__init__()
        check_int("d_ff", d_ff, low=1)
        self.self_attn = MultiHeadAttention(d_model, heads, dropout)
        self.linear1, self.linear2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)  # W_1, W_2 (Eq. 2)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def ffn(self, x):
        """Eq. (2), position-wise: (B, T, d_model) -> (B, T, d_model)."""
        return self.linear2(self.drop(F.relu(self.linear1(x))))

    def forward(self, x, key_mask=None, need_weights=False):
        """x (B, T, d_model), key_mask (B, T) True at real tokens -> (B, T, d_model) [, weights (B, h, T, T)]."""
        a, w = self.self_attn(x, key_mask=key_mask, need_weights=True)
        x = self.norm1(x + self.drop(a))
        x = self.norm2(x + self.drop(self.ffn(x)))
        return (x, w) if need_weights else x


class DecoderLayer(EncoderLayer):
    """Masked self-attention, encoder-decoder attention, FFN, each post-norm (Sec. 3.1, 3.2.3)."""

    def __init__(self, d_model, heads, d_ff, dropout=0.1):
        super().__init__(d_model, heads, d_ff, dropout)
        self.multihead_attn = MultiHeadAttention(d_model, heads, dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, y, memory, memory_mask=None, need_weights=False, cache=None):
        """y (B, Ty, d_model) target states, memory (B, Tx, d_model), memory_mask (B, Tx) True at real words.

        Without ``cache``: teacher forcing, causal self-attention over all Ty positions. With ``cache`` (a
        dict, filled on the first call): y is the next position(s) only; their keys and values are appended
        to the cached ones and the memory's are projected once. Returns (B, Ty, d_model) [, cross weights
        (B, h, Ty, Tx)].
        """
        if cache is None:
            a = self.self_attn(y, causal=True)
        else:
            k, v = self.self_attn.project_kv(y, y)  # (B, h, Ty, d_k)
            if "self" in cache:
                k, v = torch.cat([cache["self"][0], k], 2), torch.cat([cache["self"][1], v], 2)
            cache["self"] = (k, v)
            past = k.shape[2] - y.shape[1]  # query i sits at absolute position past + i
            mask = torch.ones(y.shape[1], k.shape[2], dtype=torch.bool, device=y.device).tril(past)
            a = self.self_attn(y, attn_mask=mask, kv=(k, v))
        y = self.norm1(y + self.drop(a))
        kv = None
        if cache is not None:
            kv = cache.setdefault("cross", self.multihead_attn.project_kv(memory, memory))
        c, w = self.multihead_attn(y, memory, memory, key_mask=memory_mask, need_weights=True, kv=kv)
        y = self.norm2(y + self.drop(c))
        y = self.norm3(y + self.drop(self.ffn(y)))
        return (y, w) if need_weights else y


class Transformer(nn.Module):
    """Encoder-decoder Transformer for translation (Fig. 1). ``max_len``: the longest source it accepts.

    Embeddings are multiplied by sqrt(d_model) and summed with the sinusoids, then dropped out (Sec. 3.4,
    3.5, 5.4). Embeddings start as N(0, 1/d_model), so the scaled ones have unit variance; the target
    embedding doubles as the pre-softmax linear map (tied, Sec. 3.4). Targets may be up to max_len + 1
    tokens (<bos> and max_len words); the position table also covers the paper's max output of
    input length + 50 (Sec. 6.1).
    """

    def __init__(self, src_vocab, tgt_vocab, d_model=128, heads=4, layers=2, d_ff=512, dropout=0.1, max_len=20):
        super().__init__()
        for name, val in (("src_vocab", src_vocab), ("tgt_vocab", tgt_vocab), ("layers", layers),
                          ("max_len", max_len)):
            check_int(name, val, low=1)
        self.d_model, self.max_len = d_model, max_len
        self.src_emb, self.tgt_emb = nn.Embedding(src_vocab, d_model), nn.Embedding(tgt_vocab, d_model)
        for e in (self.src_emb, self.tgt_emb):
            nn.init.normal_(e.weight, std=d_model ** -0.5)
        self.register_buffer("pe", sinusoidal_positions(max_len + 52, d_model), persistent=False)
        self.encoder = nn.ModuleList(EncoderLayer(d_model, heads, d_ff, dropout) for _ in range(layers))
        self.decoder = nn.ModuleList(DecoderLayer(d_model, heads, d_ff, dropout) for _ in range(layers))
        self.drop = nn.Dropout(dropout)

    def embed(self, emb, ids, start=0):
        """emb(ids) * sqrt(d_model) + PE[start:start+T], dropped out: ids (B, T) -> (B, T, d_model)."""
        x = emb(ids) * math.sqrt(self.d_model) + self.pe[start:start + ids.shape[1]].to(emb.weight.dtype)
        return self.drop(x)

    def check_src(self, src):
        """``src`` (B, Tx) token ids, 1 <= Tx <= max_len, no all-padding row; returns the mask (B, Tx)."""
        check_tensor("src (B, Tx) token ids", src, dim=2, integer=True)
        if not 1 <= src.shape[1] <= self.max_len:
            raise ValueError(f"source sentences may have at most max_len={self.max_len} tokens, got a batch "
                             f"padded to {src.shape[1]}")
        mask = src != PAD
        if not mask.any(1).all():
            raise ValueError("every source sentence needs at least one token; got an all-padding row")
        return mask

    def encode(self, src, need_weights=False):
        """The encoder stack: memory (B, Tx, d_model) and mask (B, Tx) [, per-layer weights (B, h, Tx, Tx)]."""
        mask = self.check_src(src)
        x, ws = self.embed(self.src_emb, src), []
        for layer in self.encoder:
            x, w = layer(x, mask, need_weights=True)
            ws.append(w)
        return (x, mask, ws) if need_weights else (x, mask)

    def decode(self, y_in, memory, memory_mask, need_weights=False):
        """Teacher-forced decoder over y_in (B, Ty): states (B, Ty, d_model) [, cross weights per layer]."""
        check_tensor("y_in (B, Ty) token ids", y_in, dim=2, integer=True)
        if y_in.shape[0] != memory.shape[0] or not 1 <= y_in.shape[1] <= self.pe.shape[0]:
            raise ValueError(f"y_in must be (B={memory.shape[0]}, 1..{self.pe.shape[0]}), got {tuple(y_in.shape)}")
        y, ws = self.embed(self.tgt_emb, y_in), []
        for layer in self.decoder:
            y, w = layer(y, memory, memory_mask, need_weights=True)
            ws.append(w)
        return (y, ws) if need_weights else y

    def logits(self, y):
        """Pre-softmax linear map, tied to the target embedding (Sec. 3.4): (..., d_model) -> (..., V)."""
        return y @ self.tgt_emb.weight.T

    def forward(self, src, y_in):
        """Teacher forcing: logits (B, Ty, V) of the word after each of y_in (B, Ty) given src (B, Tx)."""
        memory, mask = self.encode(src)
        return self.logits(self.decode(y_in, memory, mask))

    def attention_maps(self, src, y_in):
        """Encoder self-attention and encoder-decoder attention weights, one (B, h, T, Tx) per layer each."""
        memory, mask, enc_w = self.encode(src, need_weights=True)
        return {"encoder": enc_w, "cross": self.decode(y_in, memory, mask, need_weights=True)[1]}

    def loss(self, src, tgt, eps=0.1):
        """Label-smoothed cross-entropy per target token; tgt (B, Ty+1) reads <bos> ... <eos> pad (Sec. 5.4)."""
        check_tensor("tgt (B, Ty) token ids", tgt, dim=2, integer=True)
        if tgt.shape[0] != src.shape[0] or tgt.shape[1] < 2:
            raise ValueError(f"tgt must be (B={src.shape[0]}, >= 2), got {tuple(tgt.shape)}")
        memory, mask = self.encode(src)
        y = self.decode(tgt[:, :-1], memory, mask)
        keep = tgt[:, 1:] != PAD  # the vocabulary projection only where there is a word to predict
        return label_smoothed_loss(self.logits(y[keep]), tgt[:, 1:][keep], eps)

    def step(self, tokens, t, memory, memory_mask, caches):
        """One decoding step at position t: tokens (N,) -> log-probabilities (N, V); caches (one dict per layer)."""
        y = self.embed(self.tgt_emb, tokens[:, None], start=t)  # (N, 1, d_model)
        for layer, cache in zip(self.decoder, caches):
            y = layer(y, memory, memory_mask, cache=cache)
        return F.log_softmax(self.logits(y[:, 0]), -1)

    def _max_steps(self, max_steps):
        if max_steps is None:
            return self.max_len + 1
        return check_int("max_steps", max_steps, low=1, high=self.pe.shape[0])

    @torch.no_grad()
    def greedy(self, src, max_steps=None):
        """The most probable word at each step, with cached keys/values: ids (B, T) without <bos>, PAD after
        <eos>; stops at ``max_steps`` (default max_len + 1). Call ``model.eval()`` first to switch off dropout."""
        max_steps = self._max_steps(max_steps)
        memory, mask = self.encode(src)
        caches = [{} for _ in self.decoder]
        tok = torch.full((src.shape[0],), BOS, dtype=torch.long, device=src.device)
        out, done = [], torch.zeros_like(tok, dtype=torch.bool)
        for t in range(max_steps):
            tok = self.step(tok, t, memory, mask, caches).argmax(-1).masked_fill(done, PAD)
            out.append(tok)
            done |= tok == EOS
            if bool(done.all()):
                break
        return torch.stack(out, 1)

    @torch.no_grad()
    def beam_search(self, src, beam=4, alpha=0.6, max_steps=None):
        """Beam search with length penalty (Sec. 6.1), batched over sentences and beams: ids (B, max_steps).

        A hypothesis Y is scored by log P(Y | X) / lp(Y), lp(Y) = ((5 + |Y|) / 6)^alpha (Wu et al. 2016; |Y|
        counts <eos>). Each step extends the ``beam`` live hypotheses by every word and takes the 2 x beam
        best: those ending in <eos> compete for the sentence's best complete hypothesis, the best ``beam``
        others stay live. A sentence stops when no live one can still win: its log-probability can only fall
        and lp is at most lp(max_steps). With no complete hypothesis by ``max_steps`` the best live one is
        returned.
        """
        k, alpha, max_steps = check_int("beam", beam, low=1), check_float("alpha", alpha, 0.0), self._max_steps(
            max_steps)
        memory, mask = self.encode(src)
        B, dev = src.shape[0], src.device
        memory, mask = memory.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)  # (B*k, Tx, d)
        caches = [{} for _ in self.decoder]
        tok = torch.full((B * k,), BOS, dtype=torch.long, device=dev)
        score = torch.full((B, k), float("-inf"), dtype=memory.dtype, device=dev)
        score[:, 0] = 0.0  # one live hypothesis at first
        seqs = torch.zeros(B, k, 0, dtype=torch.long, device=dev)
        best = torch.full((B,), float("-inf"), dtype=memory.dtype, device=dev)
        best_seq = torch.full((B, max_steps), PAD, dtype=torch.long, device=dev)
        rows = torch.arange(B, device=dev)

        def lp(n):
            return ((5 + n) / 6) ** alpha

        for t in range(max_steps):
            logp = self.step(tok, t, memory, mask, caches)  # (B*k, V)
            V = logp.shape[-1]
            top, idx = (score[:, :, None] + logp.view(B, k, V)).view(B, k * V).topk(min(2 * k, k * V), 1)
            parent, word = idx // V, idx % V  # (B, 2k)
            ends = word == EOS
            fin = torch.where(ends, top / lp(t + 1), torch.full_like(top, float("-inf")))
            fin_score, j = fin.max(1)  # the best hypothesis completed at this step, (B,)
            better = fin_score > best
            new = best_seq.clone()
            new[:, :t], new[:, t] = seqs[rows, parent[rows, j]], EOS
            best_seq, best = torch.where(better[:, None], new, best_seq), torch.where(better, fin_score, best)
            live = torch.where(ends, torch.full_like(top, float("-inf")), top).topk(k, 1)  # (B, k)
            score, parent, word = live.values, parent.gather(1, live.indices), word.gather(1, live.indices)
            seqs = torch.cat([seqs.gather(1, parent[:, :, None].expand(-1, -1, t)), word[:, :, None]], 2)
            flat = (parent + rows[:, None] * k).view(-1)  # (B*k,) each new hypothesis's parent row
            for cache in caches:
                cache["self"] = tuple(c[flat] for c in cache["self"])
            tok = word.view(-1)
            if bool((best >= score[:, 0] / lp(max_steps)).all()):
                break
        unfinished = torch.isneginf(best)
        best_seq[unfinished, :seqs.shape[2]] = seqs[unfinished, 0]
        return best_seq


def label_smoothed_loss(logits, target, eps=0.1, ignore_index=PAD):
    """Cross-entropy against (1 - eps) one-hot + eps / K uniform (Sec. 5.4; Szegedy et al. 2016).

    logits (N, K) or (B, T, K), target (N,) or (B, T); positions whose target is ``ignore_index`` are left
    out; mean over the others. Equals ``F.cross_entropy(..., label_smoothing=eps, ignore_index=...)``.
    """
    check_tensor("logits (N, K)", logits, dim=(2, 3), floating=True)
    check_tensor("target (N,)", target, dim=(1, 2), integer=True)
    if logits.shape[:-1] != target.shape:
        raise ValueError(f"target must have shape {tuple(logits.shape[:-1])}, got {tuple(target.shape)}")
    eps = check_probability("eps", eps)
    logp = F.log_softmax(logits.reshape(-1, logits.shape[-1]), -1)  # (N, K)
    target = target.reshape(-1)
    keep = target != ignore_index
    logp, target = logp[keep], target[keep]
    nll = -logp.gather(1, target[:, None]).squeeze(1)  # (N,)
    smooth = -logp.mean(1)  # cross-entropy against the uniform distribution
    return ((1 - eps) * nll + eps * smooth).mean()


def warmup_schedule(d_model, warmup=4000, scale=1.0):
    """Eq. (3) as a function for ``LambdaLR`` (base lr 1.0): step -> scale * d_model^-0.5 * min(n^-0.5, n w^-1.5).

    n = step + 1 (LambdaLR counts from 0): linear warm-up for ``warmup`` steps, then 1/sqrt(n) decay.
    """
    check_int("d_model", d_model, low=1)
    check_int("warmup", warmup, low=1)
    scale = check_float("scale", scale, 0.0, low_open=True)

    def lr(step):
        n = step + 1
        return scale * d_model ** -0.5 * min(n ** -0.5, n * warmup ** -1.5)

    return lr


def average_checkpoints(states):
    """The element-wise mean of several state dicts of one model (Sec. 6.1: the base models' reported
    scores come from the average of their last 5 checkpoints, written 10 minutes apart).

    Floating-point tensors are averaged (in float64, returned in their own dtype); any other entry (an integer
    buffer, say) must be equal in every state and is copied. Returns a new state dict.
    """
    if not isinstance(states, (list, tuple)) or not states or not all(isinstance(s, dict) for s in states):
        raise ValueError(f"expected a non-empty list of state dicts, got {type(states).__name__} "
                         f"of length {len(states) if isinstance(states, (list, tuple)) else '-'}")
    keys = list(states[0])
    out = {}
    for i, s in enumerate(states[1:], 1):
        if list(s) != keys:
            raise ValueError(f"state {i} has other keys than state 0: {sorted(set(s) ^ set(keys))[:4]}")
    for k in keys:
        ts = [s[k] for s in states]
        if any(t.shape != ts[0].shape for t in ts):
            raise ValueError(f"{k} has different shapes across states: {[tuple(t.shape) for t in ts]}")
        if ts[0].is_floating_point():
            out[k] = torch.stack([t.double() for t in ts]).mean(0).to(ts[0].dtype)
        elif all(torch.equal(t, ts[0]) for t in ts):
            out[k] = ts[0].clone()
        else:
            raise ValueError(f"{k} is not floating point and differs across states: it cannot be averaged")
    return out


def bench_mha(device="cpu", repeats=20, batch=64, length=20, d_model=256, heads=4):
    """Forward + backward of :class:`MultiHeadAttention` against ``nn.MultiheadAttention`` (same weights).

    Self-attention with a key-padding mask on (batch, length, d_model). Returns {"ours_ms", "theirs_ms",
    "ratio", "name"}, ratio = ours / theirs (medians, ABBA order, common.bench).
    """
    for name, val in (("repeats", repeats), ("batch", batch), ("length", length), ("d_model", d_model)):
        check_int(name, val, low=1)
    torch.manual_seed(0)
    ours = MultiHeadAttention(d_model, heads).to(device)
    theirs = nn.MultiheadAttention(d_model, heads, batch_first=True).to(device)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(batch, length, d_model)
    real = (torch.arange(length)[None] < torch.randint(length // 2, length + 1, (batch,))[:, None]).to(device)
    t_ours, t_theirs = time_forward_backward(
        lambda a: ours(a, key_mask=real), lambda a: theirs(a, a, a, key_padding_mask=~real, need_weights=False)[0],
        (x,), device=device, repeats=repeats)
    return {"ours_ms": t_ours, "theirs_ms": t_theirs, "ratio": t_ours / t_theirs,
            "name": f"multi-head attention fwd+bwd, batch {batch} x {length}, d {d_model}, {heads} heads"}

