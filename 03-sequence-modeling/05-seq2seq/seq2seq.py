"""Sequence to sequence learning: a deep LSTM encoder-decoder (Sutskever, Vinyals, Le 2014; Cho et al. 2014).

- :class:`Seq2Seq`: an encoder LSTM reads the source (optionally reversed, Sec. 3.3 of Sutskever et al.)
  into its final states; a second LSTM, started from them, models p(y_t | y_<t, x) (eq. 1) and is trained
  with teacher forcing (the true previous word as input) on the log probability of the translation (Sec. 3.2).
- :meth:`Seq2Seq.greedy` and :meth:`Seq2Seq.beam_search`: the paper's left-to-right beam search (Sec. 3.2),
  batched over sentences and beams; :func:`beam_search_loop` is the same search one sentence at a time.
- :func:`bench_beam`: batched beam search against the per-sentence loop.

The recurrent layers are ``nn.LSTM``: 02-lstm showed our own LSTM equals it.
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.checks import check_float, check_int, check_tensor

PAD, UNK, BOS, EOS = 0, 1, 2, 3  # the ids of common.translation


class Seq2Seq(nn.Module):
    """A ``layers``-deep LSTM encoder and decoder (separate weights, Sec. 2), word embeddings of size ``emb``.

    The decoder starts from the encoder's final (h, c) of every layer: the whole source is summarised in
    ``2 * layers * hidden`` numbers (the paper's 8000 for 4 layers of 1000 cells). ``reverse=True`` feeds the
    source words last to first (padding stays out of it: sequences are packed by length). ``max_len`` is the
    longest source the model accepts.
    """

    def __init__(self, src_vocab, tgt_vocab, emb=64, hidden=128, layers=2, max_len=10, reverse=False,
                 dropout=0.0, init=0.08):
        super().__init__()
        for name, v in (("src_vocab", src_vocab), ("tgt_vocab", tgt_vocab), ("emb", emb), ("hidden", hidden),
                        ("layers", layers), ("max_len", max_len)):
            check_int(name, v, low=1)
        check_float("dropout", dropout, 0.0, 1.0, high_open=True)
        self.max_len, self.reverse, self.src_vocab, self.tgt_vocab = max_len, bool(reverse), src_vocab, tgt_vocab
        self.src_emb = nn.Embedding(src_vocab, emb)
        self.tgt_emb = nn.Embedding(tgt_vocab, emb)
        self.encoder = nn.LSTM(emb, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.decoder = nn.LSTM(emb, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, tgt_vocab)
        if init:
            for p in self.parameters():  # uniform in [-0.08, 0.08] (Sec. 3.4)
                nn.init.uniform_(p, -init, init)

    def check_source(self, src):
        """Validate ``src`` (B, T): integer ids, T <= max_len, each row >= 1 word then only PAD; returns lengths (B,)."""
        check_tensor("src (B, T)", src, dim=2, integer=True)
        if src.shape[1] > self.max_len:
            raise ValueError(f"source sentences may have at most max_len={self.max_len} tokens, got a (B, T) "
                             f"tensor with T={src.shape[1]}")
        if int(src.min()) < 0 or int(src.max()) >= self.src_vocab:
            raise ValueError(f"src ids must lie in [0, {self.src_vocab}), got [{int(src.min())}, {int(src.max())}]")
        real = src != PAD
        lengths = real.sum(1)  # (B,)
        if int(lengths.min()) < 1:
            raise ValueError("every source sentence needs at least one token; got an all-padding row")
        pos = torch.arange(src.shape[1], device=src.device)
        if bool((real != (pos < lengths[:, None])).any()):
            raise ValueError("src rows must be words followed by PAD (0) padding, got padding inside a sentence")
        return lengths

    def encode(self, src):
        """Read src (B, T) (words then PAD) and return the final (h, c), each (layers, B, hidden)."""
        lengths = self.check_source(src)
        if self.reverse:  # the words of each row in reverse order, padding still at the end
            pos = torch.arange(src.shape[1], device=src.device)
            idx = (lengths[:, None] - 1 - pos).clamp(min=0)  # (B, T)
            src = torch.where(pos < lengths[:, None], src.gather(1, idx), src)
        x = self.drop(self.src_emb(src))  # (B, T, E)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, state = self.encoder(packed)
        return state

    def forward(self, src, tgt_in):
        """Teacher forcing: logits (B, L, V) for the next word after each of tgt_in (B, L) (<bos> y1 ... )."""
        check_tensor("tgt_in (B, L)", tgt_in, dim=2, integer=True)
        if tgt_in.shape[0] != src.shape[0]:
            raise ValueError(f"src and tgt_in must hold the same number of sentences, got {src.shape[0]} and "
                             f"{tgt_in.shape[0]}")
        state = self.encode(src)
        y, _ = self.decoder(self.drop(self.tgt_emb(tgt_in)), state)  # (B, L, H)
        return self.out(self.drop(y))

    def loss(self, src, tgt):
        """Mean negative log likelihood per target word (eq. 1-2; <eos> counted, PAD ignored) of tgt (B, L)
        = <bos> y1 ... yn <eos> PAD ...; exp(loss) is the per-word perplexity."""
        check_tensor("tgt (B, L)", tgt, dim=2, integer=True)
        if tgt.shape[0] != src.shape[0] or tgt.shape[1] < 2:
            raise ValueError(f"tgt must be (B={src.shape[0]}, L >= 2) starting with <bos>, got {tuple(tgt.shape)}")
        y, _ = self.decoder(self.drop(self.tgt_emb(tgt[:, :-1])), self.encode(src))  # (B, L-1, H)
        keep = tgt[:, 1:] != PAD  # the softmax only where there is a word to predict (saves the padding)
        return F.cross_entropy(self.out(self.drop(y[keep])), tgt[:, 1:][keep])

    def step(self, tokens, state):
        """One decoder step: tokens (N,) and state -> log-probabilities (N, V) of the next word, new state."""
        y, state = self.decoder(self.tgt_emb(tokens)[:, None], state)  # (N, 1, H)
        return F.log_softmax(self.out(y[:, 0]), dim=-1), state

    @torch.no_grad()
    def greedy(self, src, max_steps=None):
        """The most probable word at each step (beam width 1): ids (B, max_steps), PAD after <eos>."""
        max_steps = self.max_len + 1 if max_steps is None else check_int("max_steps", max_steps, low=1)
        state = self.encode(src)
        tok = torch.full((src.shape[0],), BOS, dtype=torch.long, device=src.device)
        out, done = [], torch.zeros_like(tok, dtype=torch.bool)
        for _ in range(max_steps):
            logp, state = self.step(tok, state)
            tok = logp.argmax(-1).masked_fill(done, PAD)
            out.append(tok)
            done |= tok == EOS
            if bool(done.all()):
                break
        return torch.stack(out, 1)

    @torch.no_grad()
    def beam_search(self, src, beam=4, max_steps=None):
        """The paper's left-to-right beam search (Sec. 3.2), batched over sentences and beams.

        Keeps ``beam`` partial translations per sentence, scored by their summed log-probability (no length
        normalisation). Each step extends every one by every word and keeps the ``beam`` best; a candidate
        among them that ends in <eos> leaves the beam and joins the complete hypotheses, and the beam is
        refilled with the next best candidates that do not end. A sentence is finished once its best complete
        hypothesis scores at least its best partial one (log-probabilities only fall as words are added, so no
        partial one can overtake it); after ``max_steps`` (default max_len + 1) an unfinished sentence takes its
        best partial hypothesis. Returns ids (B, max_steps) with <eos> then PAD after the words.
        """
        k = check_int("beam", beam, low=1)
        max_steps = self.max_len + 1 if max_steps is None else check_int("max_steps", max_steps, low=1)
        h, c = self.encode(src)  # (layers, B, H)
        B, dev = src.shape[0], src.device
        h, c = h.repeat_interleave(k, 1), c.repeat_interleave(k, 1)  # (layers, B*k, H)
        tok = torch.full((B * k,), BOS, dtype=torch.long, device=dev)
        score = torch.full((B, k), float("-inf"), device=dev, dtype=h.dtype)
        score[:, 0] = 0.0  # one live hypothesis at the start
        seqs = torch.zeros(B, k, 0, dtype=torch.long, device=dev)
        best = torch.full((B,), float("-inf"), device=dev, dtype=h.dtype)
        best_seq = torch.full((B, max_steps), PAD, dtype=torch.long, device=dev)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        rows = torch.arange(B, device=dev)
        for t in range(max_steps):
            logp, (h, c) = self.step(tok, (h, c))  # (B*k, V)
            V = logp.shape[-1]
            cand = (score[:, :, None] + logp.view(B, k, V)).view(B, k * V)  # (B, k*V)
            top, idx = cand.topk(min(2 * k, k * V), dim=1)  # (B, 2k): at most k of them end in <eos>
            src_beam, word = idx // V, idx % V
            is_eos = (word == EOS) & torch.isfinite(top)
            # complete hypotheses: <eos> candidates ranked within the top k
            fin = torch.where(is_eos[:, :k], top[:, :k], torch.full_like(top[:, :k], float("-inf")))
            fin_score, fin_j = fin.max(1)  # (B,)
            better = (fin_score > best) & ~done
            if bool(better.any()):
                parent = src_beam[rows, fin_j]  # (B,)
                prefix = seqs[rows, parent]  # (B, t)
                new = torch.full((B, max_steps), PAD, dtype=torch.long, device=dev)
                new[:, :t] = prefix
                new[:, t] = EOS
                best_seq = torch.where(better[:, None], new, best_seq)
                best = torch.where(better, fin_score, best)
            # the live beam: the k best candidates that do not end here
            live_rank = torch.where(is_eos, torch.full_like(top, float("inf")), torch.arange(
                top.shape[1], device=dev, dtype=top.dtype).expand_as(top))
            keep = live_rank.argsort(dim=1, stable=True)[:, :k]  # (B, k) positions within the top 2k
            score = top.gather(1, keep)
            parent = src_beam.gather(1, keep)  # (B, k)
            word_k = word.gather(1, keep)
            seqs = torch.cat([seqs.gather(1, parent[:, :, None].expand(-1, -1, t)), word_k[:, :, None]], 2)
            flat = (parent + rows[:, None] * k).view(-1)  # (B*k,) rows of the new beams' parents
            h, c, tok = h[:, flat], c[:, flat], word_k.view(-1)
            done |= best >= score[:, 0]
            if bool(done.all()):
                break
        # sentences with no complete hypothesis: their best partial one
        none = torch.isinf(best) & (best < 0)
        if bool(none.any()):
            part = torch.full((B, max_steps), PAD, dtype=torch.long, device=dev)
            part[:, :seqs.shape[2]] = seqs[:, 0]
            best_seq = torch.where(none[:, None], part, best_seq)
        return best_seq


@torch.no_grad()
def beam_search_loop(model, src, beam=4, max_steps=None):
    """The same beam search, one sentence at a time with Python lists of hypotheses (the reference and
    the baseline of :func:`bench_beam`). Returns ids (B, max_steps) like :meth:`Seq2Seq.beam_search`."""
    k = check_int("beam", beam, low=1)
    max_steps = model.max_len + 1 if max_steps is None else check_int("max_steps", max_steps, low=1)
    model.check_source(src)
    out = torch.full((src.shape[0], max_steps), PAD, dtype=torch.long, device=src.device)
    for b in range(src.shape[0]):
        row = src[b:b + 1, :int((src[b] != PAD).sum())]
        state = model.encode(row)
        live = [(0.0, [], state)]  # (log-probability, words, decoder state)
        best, best_words = float("-inf"), None
        for _ in range(max_steps):
            tok = torch.tensor([w[-1] if w else BOS for _, w, _ in live], device=src.device)
            h = torch.cat([s[0] for _, _, s in live], 1)
            c = torch.cat([s[1] for _, _, s in live], 1)
            logp, (h, c) = model.step(tok, (h, c))  # (n, V)
            cands = []
            for i, (s, _, _) in enumerate(live):
                vals = (torch.tensor(s, dtype=logp.dtype, device=logp.device) + logp[i]).tolist()
                cands += [(v, i, w) for w, v in enumerate(vals)]
            cands.sort(key=lambda x: -x[0])  # stable: ties keep (beam, word) order, as topk on the flat row
            cands = cands[:2 * k]
            for v, i, w in cands[:k]:
                if w == EOS and v > best:
                    best, best_words = v, live[i][1] + [EOS]
            nxt = [(v, live[i][1] + [w], (h[:, i:i + 1], c[:, i:i + 1])) for v, i, w in cands if w != EOS][:k]
            live = nxt
            if best >= live[0][0]:
                break
        words = best_words if best_words is not None else live[0][1]
        out[b, :len(words)] = torch.tensor(words, device=src.device)
    return out


def bench_beam(device="cpu", repeats=3, sentences=32, beam=4, vocab=1000, hidden=128, layers=2):
    """Batched :meth:`Seq2Seq.beam_search` against :func:`beam_search_loop` on the same random model and
    sentences. Returns {"ours_ms", "theirs_ms", "ratio", "same_outputs", "name"}: medians over ``repeats``
    (in ABBA order) after one warm-up call of each, ratio = ours / theirs, and the share of sentences both
    decode alike (float32 sums over different batch sizes may round apart; the tests assert equality in
    float64)."""
    for name, v in (("repeats", repeats), ("sentences", sentences), ("beam", beam)):
        check_int(name, v, low=1)
    device = torch.device(device)
    torch.manual_seed(0)
    model = Seq2Seq(vocab, vocab, emb=64, hidden=hidden, layers=layers, max_len=10).to(device).eval()
    lengths = torch.randint(3, 11, (sentences,))
    src = torch.randint(4, vocab, (sentences, 10)) * (torch.arange(10) < lengths[:, None])
    src = src.to(device)

    def once(fn):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        res = fn(model, src, beam)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0, res

    fns = (Seq2Seq.beam_search, beam_search_loop)
    outs = [once(fn)[1] for fn in fns]  # warm up both first: oneDNN sets up its kernels on the first calls
    times = ([], [])
    for i in range(repeats):  # alternate the two, ABBA, so drifts in machine load hit both alike
        for j in ((0, 1) if i % 2 == 0 else (1, 0)):
            times[j].append(once(fns[j])[0])
    t_ours, t_theirs = (1000.0 * sorted(t)[len(t) // 2] for t in times)
    a, b = outs
    return {"ours_ms": t_ours, "theirs_ms": t_theirs, "ratio": t_ours / t_theirs,
            "same_outputs": float((a == b).all(1).float().mean()),
            "name": f"beam search (width {beam}), {sentences} sentences, {layers}x{hidden} LSTM, vocab {vocab}"}
