"""Tests for 03-sequence-modeling/06-attention/attention.py (Bahdanau, Cho & Bengio 2014)."""

import pytest
import torch

import common

attention = common.topic("attention")

D = torch.float64


def _direct(att, s, h, mask):
    """e_ij, alpha_ij and c_i by explicit loops over i and j (App. A.1.2, Eqs. 5-6)."""
    W, U, Ub, v = att.W.weight, att.U.weight, att.U.bias, att.v.weight[0]
    B, Ty, _ = s.shape
    Tx = h.shape[1]
    c = torch.zeros(B, Ty, h.shape[2], dtype=D)
    alpha = torch.zeros(B, Ty, Tx, dtype=D)
    for b in range(B):
        for i in range(Ty):
            e = torch.stack([v @ torch.tanh(W @ s[b, i] + U @ h[b, j] + Ub) for j in range(Tx)])
            e = torch.where(mask[b], e, torch.tensor(float("-inf"), dtype=D))
            a = torch.exp(e - e.max()) / torch.exp(e - e.max()).sum()
            alpha[b, i] = a
            c[b, i] = (a[:, None] * h[b]).sum(0)
    return c, alpha


def test_additive_attention_matches_direct_computation_and_masks_padding():
    torch.manual_seed(0)
    att = attention.AdditiveAttention(5, 6, 4).double()
    s, h = torch.randn(3, 4, 5, dtype=D), torch.randn(3, 7, 6, dtype=D)
    mask = torch.arange(7)[None] < torch.tensor([7, 3, 1])[:, None]
    c, alpha = att(s, h, mask)
    c_ref, a_ref = _direct(att, s, h, mask)
    assert c.shape == (3, 4, 6) and alpha.shape == (3, 4, 7)
    assert (c - c_ref).abs().max().item() < 1e-10 and (alpha - a_ref).abs().max().item() < 1e-10
    assert torch.all(alpha[~mask[:, None].expand_as(alpha)] == 0)  # exactly zero on padding
    assert torch.allclose(alpha.sum(-1), torch.ones(3, 4, dtype=D))
    c1, a1 = att(s[:, 1], h, mask, att.project(h))  # a single query step, precomputed U_a h
    assert c1.shape == (3, 6) and (c1 - c[:, 1]).abs().max().item() < 1e-12 and torch.equal(a1 == 0, a_ref[:, 1] == 0)


def test_additive_attention_gradcheck():
    torch.manual_seed(0)
    att = attention.AdditiveAttention(3, 4, 2).double()
    s = torch.randn(2, 3, 3, dtype=D, requires_grad=True)
    h = torch.randn(2, 5, 4, dtype=D, requires_grad=True)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    assert torch.autograd.gradcheck(lambda s, h: att(s, h, mask)[0], (s, h))


def test_rnnsearch_shapes_padding_invariance_and_decode():
    torch.manual_seed(0)
    m = attention.RNNsearch(11, 13, emb=4, hidden=6, attn=5, maxout=3, max_len=6).double()
    src = torch.tensor([[5, 6, 7, 0, 0], [4, 8, 9, 10, 5]])
    y_in = torch.tensor([[2, 5, 6], [2, 7, 8]])
    logp, alpha = m(src, y_in)
    assert logp.shape == (2, 3, 13) and torch.allclose(logp.exp().sum(-1), torch.ones(2, 3, dtype=D))
    assert alpha.shape == (2, 3, 5) and torch.all(alpha[0, :, 3:] == 0)
    longer = torch.cat([src, torch.zeros(2, 1, dtype=torch.long)], 1)  # more padding: same outputs
    assert (m(longer, y_in)[0] - logp).abs().max().item() < 1e-12
    # teacher-forced positions equal the step-by-step decoder on the same inputs
    enc = m.encode(src)
    s = enc[-1]
    for i in range(3):
        lp, s, a = m.step(y_in[:, i], s, enc)
        assert (lp - logp[:, i]).abs().max().item() < 1e-10 and (a - alpha[:, i]).abs().max().item() < 1e-12
    # the loss (output layer on non-padding positions only) equals the mean NLL over the full log-probs
    tgt = torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]])
    lp = m(src, tgt[:, :-1])[0]
    keep = tgt[:, 1:] != 0
    ref = -lp.gather(-1, tgt[:, 1:, None])[..., 0][keep].mean()
    assert abs(m.loss(src, tgt).item() - ref.item()) < 1e-12
    ids, a = m.greedy(src, max_steps=4, alignments=True)
    assert ids.shape[0] == 2 and 1 <= ids.shape[1] <= 4 and a.shape == (2, ids.shape[1], 5)
    assert torch.equal(m.greedy(src, max_steps=4), ids)


def test_learning_sanity_copies_a_tiny_batch():
    torch.manual_seed(0)
    m = attention.RNNsearch(12, 12, emb=16, hidden=32, attn=16, maxout=16, max_len=5)
    src = torch.randint(4, 12, (8, 5))
    tgt = torch.cat([torch.full((8, 1), 2), src.flip(1), torch.full((8, 1), 3)], 1)  # reverse the sentence
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    first = m.loss(src, tgt).item()
    for _ in range(150):
        loss = m.loss(src, tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first
    assert torch.equal(m.greedy(src)[:, :5], src.flip(1))


def test_bad_inputs():
    m = attention.RNNsearch(10, 10, emb=4, hidden=4, attn=4, maxout=2, max_len=4)
    y = torch.tensor([[2, 5]])
    with pytest.raises(ValueError, match="at most 4 tokens"):
        m(torch.randint(4, 10, (1, 5)), y)  # longer than the model's limit
    with pytest.raises(ValueError, match="all-padding"):
        m(torch.zeros(1, 3, dtype=torch.long), y)
    with pytest.raises(ValueError, match="integers"):
        m(torch.rand(1, 3), y)
    with pytest.raises(ValueError, match="empty batch"):
        m(torch.zeros(0, 3, dtype=torch.long), y)
    with pytest.raises(ValueError, match="same number of sentences"):
        m(torch.tensor([[5, 6]]), torch.tensor([[2, 5], [2, 6]]))
    with pytest.raises(ValueError, match="tgt must be"):
        m.loss(torch.tensor([[5, 6]]), torch.tensor([[2]]))
    with pytest.raises(ValueError, match="max_steps"):
        m.greedy(torch.tensor([[5]]), max_steps=0)
    with pytest.raises(ValueError, match="hidden"):
        attention.RNNsearch(10, 10, hidden=0)
    att = attention.AdditiveAttention(3, 4, 2)
    with pytest.raises(ValueError, match="expected s"):
        att(torch.randn(2, 5), torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="rank 3"):
        att(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="mask must be"):
        att(torch.randn(2, 3), torch.randn(2, 5, 4), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_size"):
        attention.AdditiveAttention(3, 4, 0)
    with pytest.raises(ValueError, match="repeats"):
        attention.bench_attention(repeats=0)


def test_bench_attention_keys():
    r = attention.bench_attention(repeats=1, batch=2, tx=3, ty=2, size=4)
    assert set(r) == {"ours_ms", "theirs_ms", "ratio", "name"} and r["ours_ms"] > 0 and r["theirs_ms"] > 0
