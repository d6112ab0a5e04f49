"""BERT (Devlin et al. 2018) and RoBERTa's training changes (Liu et al. 2019), on 4.1's encoder layers.

Contents, in the paper's order:
- :class:`EncoderLayer`: 4.1's verified post-norm layer (``common.topic("transformer").EncoderLayer``) with
  BERT's GELU in the feed-forward net instead of the ReLU (Sec. 3, "Model Architecture"); its parameters
  are named as ``nn.TransformerEncoderLayer(activation="gelu")``'s, so weights copy either way.
- :class:`Bert`: the input representation of Sec. 3 / Fig. 2, the sum of token, learned position and segment
  (sentence A / B) embeddings, layer-normalised, then a stack of encoder layers; the masked-LM head (a
  GELU transform, then the output layer tied to the token embeddings) and the pooled [CLS] vector.
- :func:`mask_tokens`: the masked-LM corruption of Sec. 3.1, Task #1: 15% of the tokens are chosen; of
  those, 80% become [MASK], 10% a random token and 10% stay unchanged; the model predicts all of them.
  Called on every batch, it is RoBERTa's *dynamic* masking (Sec. 4.1 of Liu et al.).
- :class:`BertClassifier`: the fine-tuning head of Sec. 3.2: a linear layer on the final [CLS] state.
- :func:`bench_encoder_layer`: our encoder layer against ``nn.TransformerEncoderLayer``, forward + backward.

Token ids: :data:`SPECIALS` come first (PAD 0, UNK 1, CLS 2, SEP 3, MASK 4); key masks are True at real
(non-PAD) tokens, 4.1's convention.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

import common
from common.bench import time_forward_backward
from common.checks import check_int, check_probability, check_tensor

tr = common.topic("transformer")

SPECIALS = ("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]")
PAD, UNK, CLS, SEP, MASK = range(len(SPECIALS))
IGNORE = -100  # the label of positions the masked LM does not predict (F.cross_entropy's ignore_index)


class EncoderLayer(tr.EncoderLayer):
    """4.1's post-norm layer x = LayerNorm(x + Sublayer(x)), with FFN(x) = GELU(x W_1 + b_1) W_2 + b_2 (Sec. 3)."""

    def ffn(self, x):
        """The position-wise feed-forward net with BERT's GELU: (B, T, d_model) -> (B, T, d_model)."""
        return self.linear2(self.drop(F.gelu(self.linear1(x))))


class Bert(nn.Module):
    """BERT's encoder: token + position + segment embeddings (Fig. 2), LayerNorm, dropout, ``layers`` layers.

    BERT-Base is layers=12, d_model=768, heads=12, d_ff=3072, max_len=512 (Sec. 3); the defaults here are a
    toy size. The masked-LM output layer shares its weights with the token embedding, with its own bias.
    """

    def __init__(self, vocab_size, d_model=128, heads=4, layers=2, d_ff=512, max_len=32, segments=2, dropout=0.1):
        super().__init__()
        check_int("vocab_size", vocab_size, low=len(SPECIALS) + 1)
        check_int("layers", layers, low=1)
        self.max_len = check_int("max_len", max_len, low=1)
        self.segments = check_int("segments", segments, low=1)
        self.tok_emb = nn.Embedding(vocab_size, d_model, padding_idx=PAD)
        self.pos_emb = nn.Embedding(max_len, d_model)  # learned positions, unlike 4.1's sinusoids
        self.seg_emb = nn.Embedding(segments, d_model)  # E_A, E_B
        self.norm = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(check_probability("dropout", dropout))
        self.layers = nn.ModuleList(EncoderLayer(d_model, heads, d_ff, dropout) for _ in range(layers))
        self.mlm_dense, self.mlm_norm = nn.Linear(d_model, d_model), nn.LayerNorm(d_model)
        self.mlm_bias = nn.Parameter(torch.zeros(vocab_size))
        self.pool = nn.Linear(d_model, d_model)  # the pooled [CLS] vector, tanh(W h_[CLS] + b)
        for emb in (self.tok_emb, self.pos_emb, self.seg_emb):  # BERT's N(0, 0.02^2) initialisation
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.tok_emb.weight[PAD].zero_()

    def forward(self, ids, segments=None, need_weights=False):
        """ids (B, T) token ids, T <= max_len; segments (B, T) in [0, segments) (default all 0, sentence A).

        Returns the final hidden states (B, T, d_model) [, one attention map (B, h, T, T) per layer].
        """
        check_tensor("ids (B, T) token ids", ids, dim=2, integer=True)
        B, T = ids.shape
        if T > self.max_len:
            raise ValueError(f"sequences may have at most max_len={self.max_len} tokens (the position table), "
                             f"got {T}")
        if int(ids.min()) < 0 or int(ids.max()) >= self.tok_emb.num_embeddings:
            raise ValueError(f"token ids must lie in [0, {self.tok_emb.num_embeddings}), got "
                             f"{int(ids.min())}..{int(ids.max())}")
        if segments is None:
            segments = torch.zeros_like(ids)
        check_tensor("segments (B, T)", segments, dim=2, integer=True)
        if segments.shape != ids.shape or int(segments.min()) < 0 or int(segments.max()) >= self.segments:
            raise ValueError(f"segments must be ids.shape={tuple(ids.shape)} with values in [0, {self.segments}), "
                             f"got shape {tuple(segments.shape)}, values {int(segments.min())}..{int(segments.max())}")
        pos = torch.arange(T, device=ids.device)
        x = self.tok_emb(ids) + self.pos_emb(pos)[None] + self.seg_emb(segments)  # (B, T, d): Fig. 2's sum
        x = self.drop(self.norm(x))
        real, ws = ids != PAD, []  # (B, T), True at real tokens
        for layer in self.layers:
            x, w = layer(x, real, need_weights=True)
            ws.append(w)
        return (x, ws) if need_weights else x

    def mlm_logits(self, h):
        """Masked-LM scores over the vocabulary: GELU dense + LayerNorm, then E^T (tied) + bias; (..., d) -> (..., V)."""
        return F.linear(self.mlm_norm(F.gelu(self.mlm_dense(h))), self.tok_emb.weight, self.mlm_bias)

    def mlm_loss(self, inputs, labels, segments=None):
        """Cross-entropy of the masked LM at the positions whose label is not ``IGNORE`` (Sec. 3.1, Task #1)."""
        check_tensor("labels (B, T)", labels, dim=2, integer=True)
        if labels.shape != inputs.shape:
            raise ValueError(f"labels must have the inputs' shape {tuple(inputs.shape)}, got {tuple(labels.shape)}")
        h = self(inputs, segments)
        keep = labels != IGNORE  # only the chosen ~15% reach the output layer
        return F.cross_entropy(self.mlm_logits(h[keep]), labels[keep])

    def pooled(self, ids, segments=None):
        """tanh(W h_[CLS] + b) of the first position: (B, T) -> (B, d_model), the sequence's summary (Sec. 3)."""
        return torch.tanh(self.pool(self(ids, segments)[:, 0]))


def mask_tokens(ids, vocab_size, p=0.15, rule=(0.8, 0.1, 0.1), generator=None):
    """The masked-LM corruption (Sec. 3.1, Task #1; Appendix A.1): (inputs, labels), both (B, T).

    Each non-special token (id >= len(SPECIALS)) is chosen with probability ``p``; a chosen token becomes
    [MASK] with probability rule[0], a random non-special token with rule[1], and stays itself with
    rule[2]. ``labels`` holds the original id at chosen positions and ``IGNORE`` elsewhere. A fresh call
    per batch gives RoBERTa's dynamic masking; BERT's original data was masked once (10 copies, Sec. 4.1
    of Liu et al.).
    """
    check_tensor("ids (B, T) token ids", ids, dim=2, integer=True)
    check_int("vocab_size", vocab_size, low=len(SPECIALS) + 1)
    p = check_probability("p", p, allow_one=True)
    if not isinstance(rule, (tuple, list)) or len(rule) != 3:
        raise ValueError(f"rule must be three probabilities (mask, random, keep), got {rule!r}")
    rule = [check_probability(f"rule[{i}]", r, allow_one=True) for i, r in enumerate(rule)]
    if abs(sum(rule) - 1.0) > 1e-9:
        raise ValueError(f"rule (mask, random, keep) must sum to 1, got {rule} (sum {sum(rule)})")
    dev = ids.device

    def u():
        return torch.rand(ids.shape, generator=generator, device=dev)

    chosen = (ids >= len(SPECIALS)) & (u() < p)  # (B, T)
    r = u()
    to_mask, to_random = chosen & (r < rule[0]), chosen & (r >= rule[0]) & (r < rule[0] + rule[1])
    random_ids = torch.randint(len(SPECIALS), vocab_size, ids.shape, generator=generator, device=dev)
    inputs = torch.where(to_mask, torch.full_like(ids, MASK), torch.where(to_random, random_ids, ids))
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    return inputs, labels


class BertClassifier(nn.Module):
    """Fine-tuning for a sequence label (Sec. 3.2, 4.1): scores = W tanh-pooled h_[CLS] after dropout."""

    def __init__(self, bert, num_classes, dropout=0.1):
        super().__init__()
        if not isinstance(bert, Bert):
            raise ValueError(f"bert must be a Bert, got {type(bert).__name__}")
        self.bert = bert
        self.num_classes = check_int("num_classes", num_classes, low=2)
        self.drop = nn.Dropout(check_probability("dropout", dropout))
        self.head = nn.Linear(bert.tok_emb.embedding_dim, num_classes)

    def forward(self, ids, segments=None):
        """ids (B, T) starting with [CLS] -> class scores (B, num_classes)."""
        return self.head(self.drop(self.bert.pooled(ids, segments)))


def encode_batch(vocab, sentences, max_len, pair_with=None):
    """[CLS] A [SEP] (or [CLS] A [SEP] B [SEP] with ``pair_with``) as padded ids and segments, (N, max_len) each.

    ``vocab`` is a ``common.text.WordVocab`` built with :data:`SPECIALS`; sentences are token lists, cut so
    that the whole sequence fits ``max_len`` (Sec. 3's input representation, Fig. 2).
    """
    check_int("max_len", max_len, low=3)
    if list(getattr(vocab, "itos", [])[:len(SPECIALS)]) != list(SPECIALS):
        raise ValueError(f"vocab must start with the specials {SPECIALS}")
    if pair_with is not None and len(pair_with) != len(sentences):
        raise ValueError(f"pair_with must hold one sentence per sentence: {len(pair_with)} vs {len(sentences)}")
    if not len(sentences):
        raise ValueError("encode_batch got no sentences")
    ids = torch.full((len(sentences), max_len), PAD, dtype=torch.long)
    segs = torch.zeros_like(ids)
    for i, a in enumerate(sentences):
        b = pair_with[i] if pair_with is not None else None
        room = max_len - (3 if b is not None else 2)
        a = list(a)[:room if b is None else max(room - len(b), room // 2)]  # a pair: each keeps >= half
        row = [CLS] + vocab.encode(a).tolist() + [SEP]
        if b is not None:
            b = list(b)[:room - len(a)]
            segs[i, len(row):len(row) + len(b) + 1] = 1
            row += vocab.encode(b).tolist() + [SEP]
        ids[i, :len(row)] = torch.tensor(row)
    return ids, segs


def bench_encoder_layer(device="cpu", repeats=20, batch=128, length=24, d_model=128, heads=4, d_ff=512,
                        inference=False):
    """Forward + backward of our :class:`EncoderLayer` against ``nn.TransformerEncoderLayer`` (same weights).

    Post-norm, GELU, batch-first, with a key-padding mask, at the notebook's pre-training sizes. PyTorch's
    inference fast path does not apply in training (it needs no grad), so both run their ordinary kernels;
    ``inference=True`` times the forward alone, both layers in eval mode under ``torch.inference_mode``,
    where PyTorch's layer takes its fused fast path.
    Returns {"ours_ms", "theirs_ms", "ratio", "name"}, ratio = ours / theirs (medians, ABBA order).
    """
    for name, val in (("repeats", repeats), ("batch", batch), ("length", length), ("d_model", d_model)):
        check_int(name, val, low=1)
    torch.manual_seed(0)
    ours = EncoderLayer(d_model, heads, d_ff, dropout=0.0).to(device)
    theirs = nn.TransformerEncoderLayer(d_model, heads, d_ff, dropout=0.0, activation="gelu",
                                        batch_first=True).to(device)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(batch, length, d_model)
    real = (torch.arange(length)[None] < torch.randint(length // 2, length + 1, (batch,))[:, None]).to(device)
    if inference:
        ours.eval(), theirs.eval()
    t_ours, t_theirs = time_forward_backward(lambda a: ours(a, real), lambda a: theirs(a, src_key_padding_mask=~real),
                                             (x,), device=device, repeats=repeats, backward=not inference)
    return {"ours_ms": t_ours, "theirs_ms": t_theirs, "ratio": t_ours / t_theirs,
            "name": f"BERT encoder layer {'inference' if inference else 'fwd+bwd'}, batch {batch} x {length}, "
                    f"d {d_model}, {heads} heads, ff {d_ff}"}


def masked_predictions(model, vocab, sentence, position, k=3):
    """The model's top-``k`` words for one masked position of a token list: [(word, probability), ...]."""
    check_int("k", k, low=1)
    check_int("position", position, low=0, high=len(sentence) - 1)
    ids, _ = encode_batch(vocab, [sentence], min(model.max_len, len(sentence) + 2))
    ids[0, position + 1] = MASK  # +1 for [CLS]
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(model.mlm_logits(model(ids.to(model.tok_emb.weight.device))[0, position + 1]), -1)
    top = probs.topk(k)
    return [(vocab.itos[i], float(pv)) for pv, i in zip(top.values, top.indices)]

