"""Tests for 03-sequence-modeling/04-word2vec/word2vec.py (Mikolov et al. 2013a, 2013b)."""

import math

import pytest
import torch
import torch.nn.functional as F

import common
from common.data import WordVocab

w2v = common.topic("word2vec")


def _batch(V=7, D=4, B=9, k=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    w_in, w_out = torch.randn(V, D, generator=g, dtype=dtype), torch.randn(V, D, generator=g, dtype=dtype)
    c, o = torch.randint(V, (B,), generator=g), torch.randint(V, (B,), generator=g)
    n = torch.randint(V, (B, k), generator=g)
    c[:3] = 2  # repeated ids must be summed
    n[0, :] = o[0]
    return w_in, w_out, c, o, n


def _reference_loss(w_in, w_out, c, o, n):
    """Minus eq. (4) of 2013b summed over the batch, left to autograd."""
    v, u_o, u_n = w_in[c], w_out[o], w_out[n]
    return -(F.logsigmoid((u_o * v).sum(1)).sum() + F.logsigmoid(-(u_n @ v[:, :, None]).squeeze(2)).sum())


def test_hand_written_gradient_equals_autograd_float64():
    w_in, w_out, c, o, n = _batch()
    loss, g_in, g_out = w2v.sgns_grads(w_in, w_out, c, o, n)
    a, b = w_in.clone().requires_grad_(), w_out.clone().requires_grad_()
    ref = _reference_loss(a, b, c, o, n)
    ref.backward()
    assert abs(loss.item() - ref.item()) < 1e-10
    d_in = torch.zeros_like(w_in).index_add_(0, c, g_in)
    d_out = torch.zeros_like(w_out).index_add_(0, torch.cat([o[:, None], n], 1).reshape(-1), g_out.reshape(-1, 4))
    assert (d_in - a.grad).abs().max() < 1e-10 and (d_out - b.grad).abs().max() < 1e-10
    assert g_in.shape == (9, 4) and g_out.shape == (9, 4, 4)


def test_sgns_loss_function_gradcheck_and_parity():
    w_in, w_out, c, o, n = _batch(V=5, D=3, B=6, k=2, seed=1)
    a, b = w_in.requires_grad_(), w_out.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: w2v.SGNSLoss.apply(x, y, c, o, n), (a, b))
    ga = torch.autograd.grad(w2v.SGNSLoss.apply(a, b, c, o, n), (a, b))
    gb = torch.autograd.grad(_reference_loss(a, b, c, o, n), (a, b))
    assert all((x - y).abs().max() < 1e-10 for x, y in zip(ga, gb))


def test_keep_probability_follows_eq5_and_the_c_variant():
    counts = torch.tensor([1, 4, 95])  # f = 0.01, 0.04, 0.95
    keep = w2v.keep_probability(counts, t=0.01)
    assert torch.allclose(keep, torch.tensor([1.0, 0.5, math.sqrt(0.01 / 0.95)]))  # 1 - P(w) = sqrt(t / f)
    kc = w2v.keep_probability(counts, t=0.01, variant="c")
    assert torch.allclose(kc[1], torch.tensor((math.sqrt(4) + 1) / 4)) and kc[0] == 1.0
    assert (kc >= keep).all() and (keep.diff() <= 0).all()  # C keeps more; ranking preserved


def test_noise_distribution_is_unigram_to_three_quarters():
    p = w2v.noise_distribution(torch.tensor([1, 16, 0]))
    assert torch.allclose(p, torch.tensor([1 / 9, 8 / 9, 0.0]))
    assert torch.allclose(w2v.noise_distribution(torch.tensor([1, 3]), power=1.0), torch.tensor([0.25, 0.75]))


def test_skipgram_pairs_stay_in_sentence_and_window():
    ids = torch.tensor([10, 11, 12, 20, 21])
    sent = torch.tensor([0, 0, 0, 1, 1])
    c, o = w2v.skipgram_pairs(ids, sent, 1)
    assert sorted(zip(c.tolist(), o.tolist())) == [(10, 11), (11, 10), (11, 12), (12, 11), (20, 21), (21, 20)]
    g = torch.Generator().manual_seed(0)
    ids = torch.arange(400)
    sent = ids // 8
    c, o = w2v.skipgram_pairs(ids, sent, 3, g)
    dist = (c - o).abs()
    assert (sent[c] == sent[o]).all() and dist.min() >= 1 and dist.max() <= 3
    n1, n3 = (dist == 1).sum().item(), (dist == 3).sum().item()
    assert 0.2 < n3 / n1 * (7 / 5) < 0.5  # distance 3 used with probability 1/3 of distance 1 (per slot)


def test_corpus_helpers_text8_and_sentences():
    sents = w2v.sentences_from_text(["Tom ate.", "Tom ate.", "I saw a cat!", "?"])
    assert sents == [["tom", "ate"], ["i", "saw", "a", "cat"]]
    chunks = w2v.text8_sentences(" anarchism originated as a term of abuse first used ", chunk=4, max_words=9)
    assert chunks == [["anarchism", "originated", "as", "a"], ["term", "of", "abuse", "first"], ["used"]]
    vocab = WordVocab(sents + [["tom", "ate"]], min_count=2)
    ids, sid = w2v.encode_corpus(sents, vocab)
    assert ids.tolist() == [vocab.stoi["tom"], vocab.stoi["ate"]] and sid.tolist() == [0, 0]


def test_analogy_set_is_fixed_and_large_enough():
    qs = w2v.analogy_questions()
    assert len(qs) == sum(len(p) * (len(p) - 1) for p in w2v.ANALOGY_PAIRS.values()) >= 100
    assert {q[4] for q in qs} >= {"family", "past-tense", "plural", "pronoun-object"}
    assert all(q[0] != q[2] and q[1] != q[3] for q in qs)


def test_analogy_accuracy_3cosadd_excludes_question_words():
    # a=0, b=1, c=2, d=3 with b - a + c pointing exactly at d; word 4 sits on c, which must not win either
    emb = torch.tensor([[1.0, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1], [0, 0.1, 1]])
    acc, pred = w2v.analogy_accuracy(emb, torch.tensor([[0, 1, 2, 3], [0, 1, 2, 4]]))
    assert pred.tolist() == [3, 3] and acc == 0.5
    emb2 = torch.tensor([[1.0, 0], [0, 1], [1, 0.1], [0.1, 1]])
    assert w2v.nearest(emb2, torch.tensor([0, 1]), k=1).tolist() == [[2], [3]]


def test_ppmi_svd_groups_words_with_shared_contexts():
    # "cat" and "dog" (ids 1, 2) share contexts; "sun" and "moon" (3, 4) share others
    sents = [[0, 1, 5], [0, 2, 5], [6, 3, 7], [6, 4, 7]] * 5
    ids = torch.tensor([w for s in sents for w in s])
    sid = torch.tensor([j for j, s in enumerate(sents) for _ in s])
    e = F.normalize(w2v.ppmi_svd(ids, sid, 8, window=1, dim=4), dim=1)
    assert e.shape == (8, 4)
    assert e[1] @ e[2] > 0.9 and e[3] @ e[4] > 0.9 and abs(e[1] @ e[3]) < 0.3


def test_train_sgns_learns_on_a_tiny_corpus():
    g = torch.Generator().manual_seed(0)
    # two topics: words 0-4 co-occur, words 5-9 co-occur; sentences of 6 words
    topic = torch.randint(2, (300,), generator=g)
    ids = (torch.randint(5, (300, 6), generator=g) + 5 * topic[:, None]).reshape(-1)
    sid = torch.arange(300).repeat_interleave(6)
    counts = torch.bincount(ids, minlength=10)
    w_in, w_out, losses = w2v.train_sgns(ids, sid, counts, dim=8, window=2, negatives=3, epochs=8, lr=0.05,
                                         t=1.0, batch_size=64, seed=0, show_progress=False)
    assert w_in.shape == w_out.shape == (10, 8) and len(losses) == 8
    assert losses[-1] < 0.9 * losses[0]
    e = F.normalize(w_in, dim=1)
    sim = e @ e.T
    same = sim[:5, :5].sum() - 5 + sim[5:, 5:].sum() - 5
    assert same / 40 > sim[:5, 5:].mean() + 0.5


def test_train_sgns_stops_on_a_non_finite_loss():
    ids = torch.randint(10, (600,), generator=torch.Generator().manual_seed(0))
    sid = torch.arange(600) // 6
    with pytest.raises(common.train.NonFiniteLossError, match="learning rate"):
        w2v.train_sgns(ids, sid, torch.bincount(ids, minlength=10), dim=8, lr=1e6, t=1.0, batch_size=512,
                       epochs=2, show_progress=False)


def test_bench_returns_times_and_ratio():
    r = w2v.bench_sgns_step(vocab=50, dim=8, batch=16, k=2, repeats=2)
    assert set(r) == {"ours_ms", "theirs_ms", "ratio", "name"} and r["ours_ms"] > 0 and r["ratio"] > 0


def test_bad_input_raises_value_error():
    ids, sid, counts = torch.tensor([1, 2, 1]), torch.tensor([0, 0, 0]), torch.tensor([0, 2, 1])
    with pytest.raises(ValueError, match="non-empty corpus"):
        w2v.train_sgns(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), counts)
    with pytest.raises(ValueError, match="non-empty corpus"):
        w2v.sentences_from_text(["", "!?"])
    with pytest.raises(ValueError, match="non-empty corpus"):
        w2v.text8_sentences("   ")
    with pytest.raises(ValueError, match="non-empty corpus"):
        w2v.encode_corpus([["zzz"]], WordVocab([["a", "b"]]))
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        w2v.train_sgns(ids, sid, counts, window=0)
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        w2v.skipgram_pairs(ids, sid, 0)
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        w2v.ppmi_svd(ids, sid, 3, window=0, dim=2)
    with pytest.raises(ValueError, match="negatives must be an int >= 1"):
        w2v.train_sgns(ids, sid, counts, negatives=0)
    with pytest.raises(ValueError, match="one sentence id per token"):
        w2v.train_sgns(ids, sid[:2], counts)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 3\)"):
        w2v.train_sgns(torch.tensor([5]), torch.tensor([0]), counts)
    with pytest.raises(ValueError, match="t must be > 0"):
        w2v.keep_probability(counts, t=0.0)
    with pytest.raises(ValueError, match="variant must be one of"):
        w2v.keep_probability(counts, t=1e-3, variant="gensim")
    with pytest.raises(ValueError, match="at least one positive count"):
        w2v.noise_distribution(torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=r"questions must be \(Q, 4\)"):
        w2v.analogy_accuracy(torch.randn(5, 2), torch.tensor([[0, 1, 2]]))
