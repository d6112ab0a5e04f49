"""Skip-gram with negative sampling from scratch (Mikolov et al. 2013a, "Efficient Estimation of Word
Representations in Vector Space"; Mikolov et al. 2013b, "Distributed Representations of Words and
Phrases and their Compositionality").

The skip-gram (2013a, Sec. 3.2) gives every word w an input vector v_w and an output vector v'_w and
asks each word to predict the words around it, up to R positions away, with R drawn from 1..C per
centre word so that near words are used more often than far ones. 2013b replaces the softmax over
the whole vocabulary (eq. 2) by negative sampling, eq. (4): for a (centre w_I, context w_O) pair,

    log sigma(v'_{w_O} . v_{w_I}) + sum_{i=1..k} E_{w_i ~ P_n(w)} log sigma(-v'_{w_i} . v_{w_I})

with the noise P_n(w) = U(w)^{3/4} / Z (Sec. 2.2), and discards each occurrence of a word w_i before
training with probability P(w_i) = 1 - sqrt(t / f(w_i)), eq. (5) (Sec. 2.3). Analogies are answered
by the vector offset vec(b) - vec(a) + vec(c), nearest by cosine, question words excluded (2013a Sec. 4).

Contents:
- ``ANALOGY_PAIRS`` / ``analogy_questions``: the fixed analogy set (family, pronouns, tenses, plurals).
- ``sentences_from_text`` / ``text8_sentences`` / ``encode_corpus``: corpus to flat id tensors.
- ``keep_probability`` (eq. 5, or the C tool's variant), ``noise_distribution`` (U^{3/4}),
  ``skipgram_pairs`` (dynamic window), ``sgns_grads`` (eq. 4 and its hand-written gradient),
  ``SGNSLoss`` (the same as an autograd Function), ``train_sgns`` (batched sparse SGD).
- ``ppmi_svd``: the count-based baseline; ``nearest`` and ``analogy_accuracy`` (3CosAdd, exact match).
- ``bench_sgns_step``: our hand-written step against an autograd + sparse-embedding SGD step.
"""

import itertools
import math

import torch
import torch.nn.functional as F

from common.checks import check_choice, check_float, check_int, check_tensor
from common.progress import progress
from common.text import words
from common.train import NonFiniteLossError

# The analogy set: written here before any training, every word seen >= 5 times in the English side
# of tatoeba-fra-eng. A question a:b :: c:d joins two pairs of one category (2013a Sec. 4.1).
ANALOGY_PAIRS = {
    "family": [("man", "woman"), ("boy", "girl"), ("father", "mother"), ("brother", "sister"),
               ("son", "daughter"), ("husband", "wife"), ("uncle", "aunt"), ("king", "queen"),
               ("grandfather", "grandmother"), ("dad", "mom"), ("boys", "girls"), ("men", "women")],
    "pronoun-object": [("i", "me"), ("he", "him"), ("she", "her"), ("we", "us"), ("they", "them")],
    "pronoun-possessive": [("i", "my"), ("he", "his"), ("she", "her"), ("we", "our"), ("they", "their"),
                           ("you", "your")],
    "pronoun-reflexive": [("i", "myself"), ("he", "himself"), ("she", "herself"), ("we", "ourselves"),
                          ("they", "themselves")],
    "past-tense": [("go", "went"), ("see", "saw"), ("eat", "ate"), ("come", "came"), ("take", "took"),
                   ("give", "gave"), ("know", "knew"), ("write", "wrote"), ("buy", "bought"), ("find", "found"),
                   ("tell", "told"), ("think", "thought"), ("make", "made"), ("get", "got"), ("want", "wanted"),
                   ("live", "lived")],
    "present-participle": [("go", "going"), ("eat", "eating"), ("see", "seeing"), ("run", "running"),
                           ("come", "coming"), ("take", "taking"), ("write", "writing"), ("play", "playing"),
                           ("walk", "walking"), ("work", "working")],
    "plural": [("dog", "dogs"), ("cat", "cats"), ("book", "books"), ("car", "cars"), ("child", "children"),
               ("friend", "friends"), ("apple", "apples"), ("student", "students"), ("tree", "trees"),
               ("day", "days"), ("year", "years"), ("hand", "hands"), ("question", "questions"), ("word", "words")],
}


def analogy_questions(pairs: dict = ANALOGY_PAIRS) -> list[tuple[str, str, str, str, str]]:
    """Every ordered pair of distinct word pairs within a category: (a, b, c, d, category), a:b :: c:d."""
    return [(a, b, c, d, cat) for cat, ps in pairs.items()
            for (a, b), (c, d) in itertools.permutations(ps, 2)]


def sentences_from_text(lines) -> list[list[str]]:
    """Deduplicated lines to token lists via ``common.text.words``, keeping words and numbers (no punctuation)."""
    lines = list(dict.fromkeys(lines))
    out = [[t for t in words(s) if t[0].isalnum()] for s in lines]
    out = [s for s in out if s]
    if not out:
        raise ValueError("expected a non-empty corpus: no sentence holds a word")
    return out


def text8_sentences(text: str, chunk: int = 1000, max_words: int | None = None) -> list[list[str]]:
    """text8 (one line of lower-case words) cut into pseudo-sentences of ``chunk`` words, at most ``max_words``."""
    check_int("chunk", chunk, low=1)
    toks = text.split()[:max_words]
    if not toks:
        raise ValueError("expected a non-empty corpus: the text holds no words")
    return [toks[i:i + chunk] for i in range(0, len(toks), chunk)]


def encode_corpus(sentences, vocab) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists to flat (ids, sentence ids), int64 of shape (N,), words outside ``vocab`` dropped (as in C)."""
    ids, sid = [], []
    for j, s in enumerate(sentences):
        e = [vocab.stoi[w] for w in s if w in vocab.stoi and vocab.stoi[w] != vocab.unk_id]
        ids += e
        sid += [j] * len(e)
    if not ids:
        raise ValueError("expected a non-empty corpus: no token of it is in the vocabulary")
    return torch.tensor(ids), torch.tensor(sid)


def keep_probability(counts: torch.Tensor, t: float, variant: str = "paper") -> torch.Tensor:
    """Probability of keeping each occurrence of each word, f = count / total (2013b Sec. 2.3).

    ``"paper"``: 1 - P(w) with eq. (5), min(1, sqrt(t / f)). ``"c"``: the released C tool (and gensim),
    min(1, (sqrt(f / t) + 1) t / f), which keeps a little more of the words near the threshold.
    """
    check_tensor("counts", counts, dim=1)
    check_float("t", t, low=0.0, low_open=True)
    check_choice("variant", variant, ("paper", "c"))
    f = counts.double() / counts.sum()
    r = t / f.clamp_min(1e-300)
    keep = r.sqrt() if variant == "paper" else (1 / r).sqrt() * r + r
    return keep.clamp(max=1.0).to(torch.float32)


def noise_distribution(counts: torch.Tensor, power: float = 0.75) -> torch.Tensor:
    """P_n(w) = U(w)^power / Z (2013b Sec. 2.2: power 3/4 beat the unigram and the uniform)."""
    check_tensor("counts", counts, dim=1)
    p = counts.double().pow(check_float("power", power, low=0.0))
    if p.sum() <= 0:
        raise ValueError("counts must hold at least one positive count")
    return (p / p.sum()).to(torch.float32)


def skipgram_pairs(ids: torch.Tensor, sent: torch.Tensor, window: int, generator=None):
    """All (centre, context) id pairs within one sentence and R positions, R ~ U{1..window} per centre.

    The dynamic window of 2013a Sec. 3.2: a word d positions away is used with probability
    (window - d + 1) / window. Returns two int64 tensors of shape (P,).
    """
    check_int("window", window, low=1)
    check_tensor("ids", ids, dim=1, integer=True)
    r = torch.randint(1, window + 1, ids.shape, generator=generator)  # (N,) R per centre word
    centres, contexts = [], []
    for d in range(1, window + 1):
        i = torch.arange(ids.numel() - d)
        ok = sent[i] == sent[i + d]
        for c, o in ((i, i + d), (i + d, i)):  # context to the right, then to the left
            m = ok & (r[c] >= d)
            centres.append(ids[c[m]])
            contexts.append(ids[o[m]])
    return torch.cat(centres), torch.cat(contexts)


def sgns_grads(w_in, w_out, center, context, negatives):
    """Loss (minus eq. 4, summed over the batch) and its gradients, written by hand.

    Shapes: w_in, w_out (V, D); center, context (B,); negatives (B, k). With u = [v'_{w_O}, v'_{w_1..k}]
    (B, 1+k, D), s = u . v_{w_I} and labels y = [1, 0..0], the loss is -sum log sigma((2y - 1) s), and
    dL/ds = sigma(s) - y; then dL/dv_{w_I} = sum_j dL/ds_j u_j and dL/du_j = dL/ds_j v_{w_I}.
    Returns (loss, g_in (B, D) for rows ``center``, g_out (B, 1+k, D) for rows [context, negatives]).
    """
    v = w_in[center]  # (B, D)
    out_ids = torch.cat([context[:, None], negatives], 1)  # (B, 1+k)
    u = w_out[out_ids]  # (B, 1+k, D)
    s = torch.einsum("bkd,bd->bk", u, v)  # (B, 1+k)
    s[:, 1:].neg_()  # sign: +s for the true context, -s for noise words
    loss = -F.logsigmoid(s).sum()
    g = -torch.sigmoid(-s)  # dL/d(signed s)
    g[:, 1:].neg_()  # back to dL/ds: sigma(s) - y
    g_in = torch.einsum("bk,bkd->bd", g, u)  # (B, D)
    g_out = g[:, :, None] * v[:, None, :]  # (B, 1+k, D)
    return loss, g_in, g_out


class SGNSLoss(torch.autograd.Function):
    """``SGNSLoss.apply(w_in, w_out, center, context, negatives)``: ``sgns_grads``'s loss, backward by hand."""

    @staticmethod
    def forward(ctx, w_in, w_out, center, context, negatives):
        """The summed loss of the batch; keeps the per-pair gradients ``sgns_grads`` computed alongside it."""
        loss, g_in, g_out = sgns_grads(w_in, w_out, center, context, negatives)
        ctx.save_for_backward(center, context, negatives, g_in, g_out)
        ctx.shapes = (w_in.shape, w_out.shape)
        return loss

    @staticmethod
    def backward(ctx, grad):
        """Scatter-add the saved per-pair gradients into the rows of the two tables (eq. above, by hand)."""
        center, context, negatives, g_in, g_out = ctx.saved_tensors
        d_in = g_in.new_zeros(ctx.shapes[0]).index_add_(0, center, g_in)  # (V, D), repeated ids summed
        out_ids = torch.cat([context[:, None], negatives], 1).reshape(-1)
        d_out = g_out.new_zeros(ctx.shapes[1]).index_add_(0, out_ids, g_out.reshape(len(out_ids), -1))
        return grad * d_in, grad * d_out, None, None, None


def _check_sgns(ids, sent, counts, dim, window, negatives):
    check_tensor("ids", ids, dim=1, integer=True, nonempty=False)
    if ids.numel() == 0:
        raise ValueError("expected a non-empty corpus (ids of at least one token), got none")
    check_tensor("sentence ids", sent, dim=1, integer=True)
    if sent.shape != ids.shape:
        raise ValueError(f"expected one sentence id per token, got {tuple(sent.shape)} for {tuple(ids.shape)}")
    check_int("window", window, low=1)
    check_int("negatives", negatives, low=1)
    check_int("dim", dim, low=1)
    check_tensor("counts", counts, dim=1)
    if int(ids.max()) >= len(counts) or int(ids.min()) < 0:
        raise ValueError(f"ids must lie in [0, {len(counts)}) (one count per word), got {int(ids.max())}")


def train_sgns(ids, sent, counts, dim=100, window=5, negatives=5, epochs=5, lr=0.025, t=1e-3,
               variant="paper", batch_size=1024, seed=0, show_progress=True):
    """Train skip-gram with negative sampling by batched SGD with hand-written sparse updates.

    ``ids``/``sent``: the corpus as flat ids and sentence ids (``encode_corpus``); ``counts``: word counts
    (V,). Each epoch subsamples the corpus afresh (eq. 5, ``keep_probability``), forms the dynamic-window
    pairs, shuffles them, draws ``negatives`` noise words per pair from U^{3/4} and steps on batches of
    ``batch_size`` pairs: rows get ``-lr * gradient`` via ``index_add_`` (repeated ids summed), lr
    decaying linearly to ~0 as in 2013a Sec. 4.2. Init as the C tool: v uniform in +-0.5/dim, v' zero.
    A non-finite loss stops the run (``NonFiniteLossError``) naming the pair count and learning rate.
    Returns (w_in (V, D), w_out (V, D), losses: mean loss per pair for each epoch).
    """
    _check_sgns(ids, sent, counts, dim, window, negatives)
    check_int("epochs", epochs, low=1)
    check_int("batch_size", batch_size, low=1)
    lr = check_float("lr", lr, low=0.0, low_open=True)
    g = torch.Generator().manual_seed(seed)
    V = len(counts)
    w_in = (torch.rand(V, dim, generator=g) - 0.5) / dim
    w_out = torch.zeros(V, dim)
    keep, noise = keep_probability(counts, t, variant), noise_distribution(counts)
    losses = []
    n_total = None
    step = 0
    bar = progress(total=epochs, desc="SGNS epochs") if show_progress else None
    for _ in range(epochs):
        m = torch.rand(ids.shape, generator=g) < keep[ids]  # subsampling, eq. (5)
        c, o = skipgram_pairs(ids[m], sent[m], window, g)
        perm = torch.randperm(len(c), generator=g)
        c, o = c[perm], o[perm]
        neg = torch.multinomial(noise, len(c) * negatives, replacement=True, generator=g).view(-1, negatives)
        n_total = n_total or len(c) * epochs  # planned pairs, for the linear decay
        total = 0.0
        for i in range(0, len(c), batch_size):
            cb, ob, nb = c[i:i + batch_size], o[i:i + batch_size], neg[i:i + batch_size]
            a = lr * max(1e-4, 1 - step / n_total)
            loss, g_in, g_out = sgns_grads(w_in, w_out, cb, ob, nb)
            w_in.index_add_(0, cb, g_in, alpha=-a)
            w_out.index_add_(0, torch.cat([ob[:, None], nb], 1).reshape(-1), g_out.reshape(-1, dim), alpha=-a)
            total += float(loss)
            if not math.isfinite(total):
                raise NonFiniteLossError(f"non-finite SGNS loss at pair {step} (learning rate {a:.4g}); lower lr "
                                         f"or batch_size (the gradients of a batch are summed)")
            step += len(cb)
        losses.append(total / max(1, len(c)))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    if bar is not None:
        bar.close()
    return w_in, w_out, losses


def ppmi_svd(ids, sent, vocab_size, window=5, dim=100, alpha=0.75, seed=0):
    """Count-based vectors: PPMI of window co-occurrences, then a rank-``dim`` SVD, rows U * sqrt(S).

    Co-occurrences within ``window`` words in a sentence, weighted (window - d + 1) / window like the
    dynamic window; context counts smoothed by ^alpha (Levy, Goldberg & Dagan 2015). Returns (V, dim).
    """
    check_int("window", window, low=1)
    check_int("dim", dim, low=1, high=vocab_size)
    check_tensor("ids", ids, dim=1, integer=True)
    flat = torch.zeros(vocab_size * vocab_size, dtype=torch.float64)
    for d in range(1, window + 1):
        i = torch.arange(ids.numel() - d)
        i = i[sent[i] == sent[i + d]]
        a, b = ids[i], ids[i + d]
        w = torch.full((len(i),), (window - d + 1) / window, dtype=torch.float64)
        flat.index_add_(0, a * vocab_size + b, w).index_add_(0, b * vocab_size + a, w)
    n = flat.view(vocab_size, vocab_size)  # (V, V) symmetric counts
    pc = n.sum(0).pow(alpha)
    ratio = n * pc.sum() / (n.sum(1, keepdim=True) * pc[None, :]).clamp_min(1e-300)
    ppmi = torch.where(n > 0, ratio.clamp_min(1e-300).log(), 0).clamp_min(0).float()  # (V, V); 0 where unseen
    torch.manual_seed(seed)
    u, s, _ = torch.svd_lowrank(ppmi, q=dim + 10, niter=4)
    return u[:, :dim] * s[:dim].sqrt()


def _unit(emb):
    check_tensor("embeddings", emb, dim=2, floating=True)
    return F.normalize(emb.float(), dim=1)


def nearest(emb, query: torch.Tensor, k=5):
    """Ids (Q, k) of the k nearest words by cosine to each query id (itself excluded)."""
    e = _unit(emb)
    sim = e[query] @ e.T  # (Q, V)
    sim[torch.arange(len(query)), query] = -2
    return sim.topk(k, dim=1).indices


def analogy_accuracy(emb, questions: torch.Tensor, batch_size=512):
    """3CosAdd (2013a Sec. 4): share of rows (a, b, c, d) of ``questions`` (Q, 4) whose nearest word by
    cosine to b - a + c, a, b and c excluded, is exactly d. Returns (accuracy, predicted ids (Q,))."""
    check_tensor("questions", questions, dim=2, integer=True)
    if questions.shape[1] != 4:
        raise ValueError(f"questions must be (Q, 4) ids a, b, c, d; got shape {tuple(questions.shape)}")
    e = _unit(emb)
    preds = []
    for q in questions.split(batch_size):
        x = e[q[:, 1]] - e[q[:, 0]] + e[q[:, 2]]  # (Q, D)
        sim = x @ e.T
        sim.scatter_(1, q[:, :3], -math.inf)
        preds.append(sim.argmax(1))
    pred = torch.cat(preds)
    return (pred == questions[:, 3]).double().mean().item(), pred


def bench_sgns_step(device="cpu", vocab=5000, dim=100, batch=1024, k=5, repeats=20) -> dict:
    """One SGNS step on the same batch: ours (hand-written gradient + ``index_add_``) against autograd
    through two ``nn.Embedding(sparse=True)`` tables stepped by ``torch.optim.SGD``. Medians over
    ``repeats`` after 3 warm-ups. Returns {"ours_ms", "theirs_ms", "ratio" (ours / theirs), "name"}."""
    import statistics
    import time

    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    w_in, w_out = torch.randn(vocab, dim, generator=g).div_(dim).to(dev), torch.zeros(vocab, dim, device=dev)
    c, o = torch.randint(vocab, (batch,), generator=g).to(dev), torch.randint(vocab, (batch,), generator=g).to(dev)
    n = torch.randint(vocab, (batch, k), generator=g).to(dev)
    emb_in = torch.nn.Embedding.from_pretrained(w_in.clone(), freeze=False, sparse=True)
    emb_out = torch.nn.Embedding.from_pretrained(w_out.clone(), freeze=False, sparse=True)
    opt = torch.optim.SGD([*emb_in.parameters(), *emb_out.parameters()], lr=0.025)

    def ours():
        _, g_in, g_out = sgns_grads(w_in, w_out, c, o, n)
        w_in.index_add_(0, c, g_in, alpha=-0.025)
        w_out.index_add_(0, torch.cat([o[:, None], n], 1).reshape(-1), g_out.reshape(-1, dim), alpha=-0.025)

    def theirs():
        v, u = emb_in(c), emb_out(torch.cat([o[:, None], n], 1))
        s = torch.einsum("bkd,bd->bk", u, v)
        loss = -(F.logsigmoid(s[:, 0]).sum() + F.logsigmoid(-s[:, 1:]).sum())
        opt.zero_grad()
        loss.backward()
        opt.step()

    def timed(fn):
        for _ in range(3):
            fn()
        ts = []
        for _ in range(repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            ts.append(time.perf_counter() - t0)
        return 1000 * statistics.median(ts)

    ours_ms, theirs_ms = timed(ours), timed(theirs)
    return {"ours_ms": ours_ms, "theirs_ms": theirs_ms, "ratio": ours_ms / theirs_ms,
            "name": f"SGNS step, batch {batch}, k={k}, {vocab}x{dim} tables"}
