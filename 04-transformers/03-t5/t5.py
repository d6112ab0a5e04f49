"""T5 (Raffel et al. 2019, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer").

What the paper adds to 4.1's Transformer, from tensor operations:
- :func:`relative_position_bucket` and :class:`RelativePositionBias` (Sec. 2.1): each attention logit gets a
  learned scalar per head that depends only on the key-query offset, looked up in 32 buckets whose ranges grow
  logarithmically up to an offset of 128; one table for the encoder, one for the decoder, shared by all layers.
- :class:`EncoderBlock` / :class:`DecoderBlock` and :class:`T5` (Sec. 2.1): pre-norm blocks
  x + Dropout(Sublayer(Norm(x))) with a norm that only rescales (no mean, no bias: ``nn.RMSNorm``), a final
  norm after each stack, no absolute positions, one embedding shared by encoder, decoder and output layer.
  Attention is 4.1's verified :class:`MultiHeadAttention` (``common.topic("transformer")``), with the position
  bias passed in as an additive float mask.
- :func:`span_noise_mask`, :func:`iid_noise_mask`, :func:`corrupt` (Sec. 3.1.4, 3.3.4, Fig. 2): the
  denoising objective. Corrupted tokens are dropped, each consecutive run replaced by one sentinel unique in
  the example; the target lists the runs, each after its sentinel, and ends with one more sentinel.
- :data:`TASKS` and :func:`task_input` (Sec. 2.4): every task is text-to-text, told apart by a text prefix.
- :func:`bench_encoder_layer`: our encoder block against ``nn.TransformerEncoderLayer``, forward + backward.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.bench import time_forward_backward
from common.checks import check_float, check_int, check_probability, check_tensor
from common.topics import topic

_tr = topic("transformer")
MultiHeadAttention = _tr.MultiHeadAttention

PAD, EOS = 0, 1  # PAD also starts every decoder input, as in T5


def relative_position_bucket(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    """Bucket of each key-query offset (key position - query position), an integer tensor -> same shape.

    Bidirectional (encoder): half the buckets for offsets <= 0, half (shifted by num_buckets / 2) for > 0.
    Causal (decoder): only offsets <= 0 matter, all buckets for them. Within a half of n buckets, |offset| <
    n / 2 gets its own bucket; larger ones share buckets spaced logarithmically up to ``max_distance``, and
    everything beyond falls into the last bucket (Sec. 2.1: 32 buckets, offset 128).
    """
    check_tensor("relative_position", relative_position, integer=True, nonempty=False)
    check_int("num_buckets", num_buckets, low=2 if not bidirectional else 4)
    n = num_buckets // 2 if bidirectional else num_buckets
    check_int("max_distance", max_distance, low=n // 2 + 1)
    rel = relative_position.long()
    if bidirectional:
        ret = (rel > 0).long() * n
        dist = rel.abs()
    else:
        ret = torch.zeros_like(rel)
        dist = (-rel).clamp(min=0)
    exact = n // 2
    far = exact + (torch.log(dist.clamp(min=1).double() / exact) / math.log(max_distance / exact)
                   * (n - exact)).long()  # log-spaced buckets for exact <= dist
    far = far.clamp(max=n - 1)
    return ret + torch.where(dist < exact, dist, far)


class RelativePositionBias(nn.Module):
    """A learned scalar per (bucket, head), added to the attention logits (Sec. 2.1): (1, h, Tq, Tk)."""

    def __init__(self, heads, bidirectional=True, num_buckets=32, max_distance=128):
        super().__init__()
        check_int("heads", heads, low=1)
        relative_position_bucket(torch.zeros(1, dtype=torch.long), bidirectional, num_buckets, max_distance)
        self.bidirectional, self.num_buckets, self.max_distance = bidirectional, num_buckets, max_distance
        self.table = nn.Embedding(num_buckets, heads)  # (buckets, h)

    def forward(self, tq, tk):
        """Bias for tq queries and tk keys: (1, h, tq, tk)."""
        check_int("tq", tq, low=1)
        check_int("tk", tk, low=1)
        dev = self.table.weight.device
        rel = torch.arange(tk, device=dev)[None, :] - torch.arange(tq, device=dev)[:, None]  # (tq, tk) key - query
        b = relative_position_bucket(rel, self.bidirectional, self.num_buckets, self.max_distance)
        return self.table(b).permute(2, 0, 1)[None]  # (1, h, tq, tk)


class EncoderBlock(nn.Module):
    """x + Dropout(SelfAttn(Norm(x)) + bias), then x + Dropout(FFN(Norm(x))) (Sec. 2.1): pre-norm, ReLU FFN."""

    def __init__(self, d_model, heads, d_ff, dropout=0.1):
        super().__init__()
        check_int("d_ff", d_ff, low=1)
        self.self_attn = MultiHeadAttention(d_model, heads, dropout)
        self.linear1, self.linear2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.norm1, self.norm2 = nn.RMSNorm(d_model, eps=1e-6), nn.RMSNorm(d_model, eps=1e-6)  # rescale only
        self.drop = nn.Dropout(dropout)

    def ffn(self, x):
        """Position-wise ReLU feed-forward network, dropout inside (Sec. 2.1): (B, T, d) -> (B, T, d)."""
        return self.linear2(self.drop(F.relu(self.linear1(x))))

    def forward(self, x, key_mask=None, bias=None):
        """x (B, T, d), key_mask (B, T) True at real tokens, bias (1, h, T, T) or None -> (B, T, d)."""
        x = x + self.drop(self.self_attn(self.norm1(x), key_mask=key_mask, attn_mask=bias))
        return x + self.drop(self.ffn(self.norm2(x)))


class DecoderBlock(EncoderBlock):
    """Causal self-attention (with the decoder's bias), attention to the encoder, FFN; each pre-norm."""

    def __init__(self, d_model, heads, d_ff, dropout=0.1):
        super().__init__(d_model, heads, d_ff, dropout)
        self.cross_attn = MultiHeadAttention(d_model, heads, dropout)
        self.norm3 = nn.RMSNorm(d_model, eps=1e-6)

    def forward(self, y, memory, memory_mask, bias):
        """y (B, Ty, d), memory (B, Tx, d), memory_mask (B, Tx) True at real tokens, bias (1, h, Ty, Ty)."""
        y = y + self.drop(self.self_attn(self.norm1(y), attn_mask=bias, causal=True))
        y = y + self.drop(self.cross_attn(self.norm3(y), memory, memory, key_mask=memory_mask))
        return y + self.drop(self.ffn(self.norm2(y)))


class T5(nn.Module):
    """The text-to-text encoder-decoder (Sec. 2.1). Token ids: PAD = 0 (also the decoder's start), EOS = 1.

    ``max_len`` bounds the inputs and targets it accepts (relative positions have no table, but the buckets
    were fitted to it and a longer sequence is almost surely a bug). The output layer is the shared embedding,
    its input rescaled by d_model^-0.5 as in T5's code.
    """

    def __init__(self, vocab, d_model=128, heads=4, layers=2, d_ff=512, dropout=0.1, max_len=128,
                 num_buckets=32, max_distance=128):
        super().__init__()
        for name, val in (("vocab", vocab), ("layers", layers), ("max_len", max_len)):
            check_int(name, val, low=2 if name == "vocab" else 1)
        self.d_model, self.max_len, self.vocab = d_model, max_len, vocab
        self.embed = nn.Embedding(vocab, d_model)
        nn.init.normal_(self.embed.weight, std=1.0)
        self.enc_bias = RelativePositionBias(heads, True, num_buckets, max_distance)
        self.dec_bias = RelativePositionBias(heads, False, num_buckets, max_distance)
        self.encoder = nn.ModuleList(EncoderBlock(d_model, heads, d_ff, dropout) for _ in range(layers))
        self.decoder = nn.ModuleList(DecoderBlock(d_model, heads, d_ff, dropout) for _ in range(layers))
        self.enc_norm, self.dec_norm = nn.RMSNorm(d_model, eps=1e-6), nn.RMSNorm(d_model, eps=1e-6)
        self.drop = nn.Dropout(dropout)

    def _ids(self, name, ids):
        check_tensor(f"{name} (B, T) token ids", ids, dim=2, integer=True)
        if not 1 <= ids.shape[1] <= self.max_len:
            raise ValueError(f"{name} may have at most max_len={self.max_len} tokens, got length {ids.shape[1]}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab):
            raise ValueError(f"{name} ids must lie in [0, {self.vocab}), got {int(ids.min())}..{int(ids.max())}")
        return ids

    def encode(self, src):
        """src (B, Tx) -> memory (B, Tx, d) and its mask (B, Tx), True at real tokens."""
        mask = self._ids("src", src) != PAD
        if not mask.any(1).all():
            raise ValueError("every input needs at least one token; got an all-padding row")
        x, bias = self.drop(self.embed(src)), self.enc_bias(src.shape[1], src.shape[1])
        for block in self.encoder:
            x = block(x, mask, bias)
        return self.drop(self.enc_norm(x)), mask

    def decode(self, y_in, memory, mask):
        """Teacher-forced decoder: y_in (B, Ty) -> logits (B, Ty, V)."""
        self._ids("y_in", y_in)
        y, bias = self.drop(self.embed(y_in)), self.dec_bias(y_in.shape[1], y_in.shape[1])
        for block in self.decoder:
            y = block(y, memory, mask, bias)
        y = self.drop(self.dec_norm(y)) * self.d_model ** -0.5
        return y @ self.embed.weight.T

    def forward(self, src, y_in):
        """Logits (B, Ty, V) of each next target token given src (B, Tx) and the shifted target y_in (B, Ty)."""
        return self.decode(y_in, *self.encode(src))

    def loss(self, src, tgt):
        """Mean cross-entropy over the real tokens of tgt (B, Ty) (its last real token is EOS, then PAD)."""
        self._ids("tgt", tgt)
        if tgt.shape[0] != src.shape[0]:
            raise ValueError(f"src and tgt must have the same batch size, got {src.shape[0]} and {tgt.shape[0]}")
        y_in = F.pad(tgt[:, :-1], (1, 0), value=PAD)  # shift right, PAD starts
        logits = self(src, y_in)
        return F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=PAD)

    @torch.no_grad()
    def generate(self, src, max_steps):
        """Greedy decoding (no cache: targets are short here): ids (B, <= max_steps), PAD after EOS."""
        check_int("max_steps", max_steps, low=1, high=self.max_len)
        memory, mask = self.encode(src)
        out = torch.full((src.shape[0], 1), PAD, dtype=torch.long, device=src.device)
        done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
        for _ in range(max_steps):
            nxt = self.decode(out, memory, mask)[:, -1].argmax(-1).masked_fill(done, PAD)
            out = torch.cat([out, nxt[:, None]], 1)
            done |= nxt == EOS
            if bool(done.all()):
                break
        return out[:, 1:]


def span_noise_mask(length, density=0.15, mean_span=3.0, generator=None):
    """Which of ``length`` tokens to corrupt, in contiguous spans (Sec. 3.3.4): a bool (length,) tensor.

    round(length x density) tokens (at least 1, at most length - 1) are corrupted, in round(noise / mean_span)
    spans (at least 1); noise and kept tokens are each split into that many non-empty runs at random, and the
    runs alternate, starting with kept tokens. E.g. 500 tokens, 15%, mean 3: 75 tokens in 25 spans.
    """
    check_int("length", length, low=2)
    density = check_probability("density", density, allow_one=True)
    mean_span = check_float("mean_span", mean_span, 1.0)
    n_noise = min(max(round(length * density), 1), length - 1)
    n_spans = max(min(round(n_noise / mean_span), n_noise, length - n_noise), 1)

    def split(total):  # total tokens into n_spans non-empty runs, uniformly over the compositions
        cuts = torch.randperm(total - 1, generator=generator)[:n_spans - 1].sort().values + 1
        edges = torch.cat([torch.zeros(1, dtype=torch.long), cuts, torch.tensor([total])])
        return edges.diff()

    noise, keep = split(n_noise), split(length - n_noise)
    runs = torch.stack([keep, noise], 1).flatten()  # keep, noise, keep, noise, ...
    flags = torch.tensor([False, True]).repeat(n_spans)
    return flags.repeat_interleave(runs)


def iid_noise_mask(length, density=0.15, generator=None):
    """Each of ``length`` tokens corrupted independently with probability ``density`` (Sec. 3.1.4): bool (length,)."""
    check_int("length", length, low=1)
    density = check_probability("density", density, allow_one=True)
    return torch.rand(length, generator=generator) < density


def corrupt(tokens, mask, first_sentinel, num_sentinels):
    """Fig. 2's transformation: (inputs, targets), two 1-D LongTensors (no EOS, no padding).

    tokens (T,) ids, mask (T,) bool. Each run of masked tokens becomes sentinel k (id first_sentinel + k, k =
    0, 1, ... in order) in the input; the target is sentinel 0, run 0, sentinel 1, run 1, ..., and a final
    sentinel. Target length = masked tokens + runs + 1; input length = kept tokens + runs.
    """
    check_tensor("tokens (T,)", tokens, dim=1, integer=True)
    check_tensor("mask (T,)", mask, dim=1)
    if mask.dtype != torch.bool or mask.shape != tokens.shape:
        raise ValueError(f"mask must be a bool tensor shaped like tokens {tuple(tokens.shape)}, got {mask.dtype} "
                         f"{tuple(mask.shape)}")
    starts = mask & ~F.pad(mask, (1, 0))[:-1]  # first token of each run
    run_id = starts.long().cumsum(0) - 1  # (T,) index of the run a masked token belongs to
    n_runs = int(starts.sum())
    if n_runs + 1 > num_sentinels:
        raise ValueError(f"{n_runs} corrupted spans need {n_runs + 1} sentinels, only {num_sentinels} available")
    sentinel = first_sentinel + run_id
    inputs = torch.where(starts, sentinel, tokens)[~mask | starts]
    tgt_tok = torch.stack([sentinel, tokens], 1)  # (T, 2): sentinel before the first token of a run
    keep = torch.stack([starts, mask], 1)
    targets = torch.cat([tgt_tok[keep], torch.tensor([first_sentinel + n_runs])])
    return inputs, targets


TASKS = {"reverse": "reverse: ", "sort": "sort: ", "swapcase": "swap case: "}


def task_input(task, text):
    """The prefixed input of a task (Sec. 2.4) and its target text: (prefix + text, answer)."""
    if task not in TASKS:
        raise ValueError(f"unknown task prefix {task!r}; expected one of {', '.join(map(repr, TASKS))}")
    if not isinstance(text, str) or not text:
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    answer = {"reverse": text[::-1], "sort": "".join(sorted(text)), "swapcase": text.swapcase()}[task]
    return TASKS[task] + text, answer


def bench_encoder_layer(device="cpu", repeats=20, batch=32, length=48, d_model=64, heads=4, d_ff=128,
                        inference=False):
    """Forward + backward of :class:`EncoderBlock` (with a relative position bias) against
    ``nn.TransformerEncoderLayer(norm_first=True)``, with a key-padding mask; the defaults are the notebook's
    cpu sizes (pre-training batches of 32 windows of 48 characters, d_model 64, 4 heads, d_ff 128).

    Returns {"ours_ms", "theirs_ms", "ratio", "name"}, ratio = ours / theirs (medians, ABBA order). In training
    mode PyTorch's layer takes its ordinary path (the fused fast path is for inference only);
    ``inference=True`` times the forward alone, both in eval mode under ``torch.inference_mode``, where
    PyTorch's layer takes that fast path.
    """
    for name, val in (("repeats", repeats), ("batch", batch), ("length", length)):
        check_int(name, val, low=1)
    torch.manual_seed(0)
    ours = EncoderBlock(d_model, heads, d_ff, dropout=0.0).to(device)
    bias = RelativePositionBias(heads).to(device)
    theirs = nn.TransformerEncoderLayer(d_model, heads, d_ff, dropout=0.0, batch_first=True,
                                        norm_first=True).to(device)
    if inference:
        ours.eval(), bias.eval(), theirs.eval()
    x = torch.randn(batch, length, d_model)
    real = (torch.arange(length)[None] < torch.randint(length // 2, length + 1, (batch,))[:, None]).to(device)
    t_ours, t_theirs = time_forward_backward(
        lambda a: ours(a, real, bias(length, length)), lambda a: theirs(a, src_key_padding_mask=~real),
        (x,), device=device, repeats=repeats, backward=not inference)
    return {"ours_ms": t_ours, "theirs_ms": t_theirs, "ratio": t_ours / t_theirs,
            "name": f"T5 encoder block {'inference' if inference else 'fwd+bwd'}, batch {batch} x {length}, "
                    f"d {d_model}, {heads} heads"}
