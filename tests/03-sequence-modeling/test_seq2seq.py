"""Tests for 03-sequence-modeling/05-seq2seq/seq2seq.py (Sutskever et al. 2014; Cho et al. 2014)."""

import pytest
import torch
import torch.nn.functional as F

import common

s2s = common.topic("seq2seq")

D = torch.float64


def _model(reverse=False, init=0.5, **kw):
    torch.manual_seed(0)
    args = dict(emb=6, hidden=8, layers=2, max_len=6, reverse=reverse, init=init)
    args.update(kw)
    return s2s.Seq2Seq(30, 25, **args).double().eval()


def _src(n=7, t=6, vocab=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    lengths[0] = t
    return torch.randint(4, vocab, (n, t), generator=g) * (torch.arange(t) < lengths[:, None])


@pytest.mark.parametrize("reverse", [False, True])
def test_encode_packed_equals_each_sentence_alone(reverse):
    m, src = _model(reverse), _src()
    h, c = m.encode(src)
    assert h.shape == c.shape == (2, 7, 8)
    for b in range(src.shape[0]):
        words = src[b, :int((src[b] != 0).sum())]
        x = m.src_emb((words.flip(0) if reverse else words)[None])
        _, (h1, c1) = m.encoder(x)  # nn.LSTM on the unpadded sentence, no packing
        assert (h[:, b] - h1[:, 0]).abs().max().item() < 1e-10
        assert (c[:, b] - c1[:, 0]).abs().max().item() < 1e-10


def test_teacher_forcing_equals_step_by_step_decoding_and_loss():
    m, src = _model(), _src()
    tgt = torch.tensor([[2, 5, 6, 3, 0], [2, 7, 3, 0, 0], [2, 4, 4, 9, 3]] * 3)[:7]
    logits = m(src, tgt[:, :-1])
    assert logits.shape == (7, 4, 25)
    state = m.encode(src)
    for t in range(4):
        logp, state = m.step(tgt[:, t], state)
        assert (logp - F.log_softmax(logits[:, t], -1)).abs().max().item() < 1e-10
    lp = F.log_softmax(logits, -1).gather(2, tgt[:, 1:, None])[..., 0]
    mask = tgt[:, 1:] != 0
    assert abs(m.loss(src, tgt).item() - (-(lp * mask).sum() / mask.sum()).item()) < 1e-10


@pytest.mark.parametrize("beam", [1, 2, 5])
def test_batched_beam_search_equals_per_sentence_loop(beam):
    m, src = _model(reverse=True), _src(n=9)
    a = m.beam_search(src, beam=beam)
    b = s2s.beam_search_loop(m, src, beam=beam)
    assert a.shape == (9, 7) and torch.equal(a, b)


def _logprob(m, src, ids):
    """Summed log-probability of each decoded row (words then <eos>)."""
    tgt = torch.cat([torch.full((ids.shape[0], 1), s2s.BOS), ids], 1)
    lp = F.log_softmax(m(src, tgt[:, :-1]), -1).gather(2, tgt[:, 1:, None])[..., 0]
    return (lp * (tgt[:, 1:] != 0)).sum(1)


def test_greedy_is_beam_one_and_wider_beams_score_no_lower_here():
    m, src = _model(init=1.0), _src(n=12, seed=3)
    with torch.no_grad():
        m.out.bias[s2s.EOS] += 2.0  # make sentences end within the step limit
    g, b1, b4 = m.greedy(src), m.beam_search(src, beam=1), m.beam_search(src, beam=4)
    assert torch.equal(g, b1[:, :g.shape[1]]) and (b1[:, g.shape[1]:] == 0).all()
    ended = (g == s2s.EOS).any(1) & (b4 == s2s.EOS).any(1)
    assert ended.any()
    assert (_logprob(m, src, b4)[ended] >= _logprob(m, src, g)[ended] - 1e-12).all()


def test_learns_to_reverse_short_sequences():
    torch.manual_seed(0)
    m = s2s.Seq2Seq(12, 12, emb=16, hidden=48, layers=1, max_len=4)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        src = torch.randint(4, 12, (64, 4), generator=g)
        tgt = torch.cat([torch.full((64, 1), 2), src.flip(1), torch.full((64, 1), 3)], 1)
        loss = m.loss(src, tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    src = torch.randint(4, 12, (100, 4), generator=g)
    out = m.greedy(src)
    acc = (out[:, :4] == src.flip(1)).all(1).float().mean().item()
    assert loss.item() < 0.3 and acc > 0.8


def test_bench_beam_keys():
    r = s2s.bench_beam(repeats=1, sentences=2, beam=2, vocab=50, hidden=8, layers=1)
    assert set(r) == {"ours_ms", "theirs_ms", "ratio", "same_outputs", "name"}
    assert r["ours_ms"] > 0 and r["theirs_ms"] > 0 and 0 <= r["same_outputs"] <= 1


@pytest.mark.parametrize("bad, match", [
    (torch.ones(2, 7, dtype=torch.long), "at most max_len=6"),
    (torch.ones(2, 6), "integers"),
    (torch.ones(6, dtype=torch.long), "rank 2"),
    (torch.ones(0, 6, dtype=torch.long), "empty batch"),
    (torch.full((2, 6), 30), r"\[0, 30\)"),
    (torch.tensor([[5, 0, 6, 0, 0, 0]]), "padding inside"),
    (torch.zeros(1, 6, dtype=torch.long), "at least one token"),
])
def test_bad_source_raises(bad, match):
    m = _model()
    with pytest.raises(ValueError, match=match):
        m.encode(bad)
    with pytest.raises(ValueError, match=match):
        m.beam_search(bad)


def test_bad_arguments_raise():
    m, src = _model(), _src()
    for beam in (0, -1, 2.0):
        with pytest.raises(ValueError, match="beam"):
            m.beam_search(src, beam=beam)
        with pytest.raises(ValueError, match="beam"):
            s2s.beam_search_loop(m, src, beam=beam)
    with pytest.raises(ValueError, match="max_steps"):
        m.greedy(src, max_steps=0)
    with pytest.raises(ValueError, match="same number"):
        m(src, torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="layers"):
        s2s.Seq2Seq(10, 10, layers=0)
    with pytest.raises(ValueError, match="dropout"):
        s2s.Seq2Seq(10, 10, dropout=1.0)
    with pytest.raises(ValueError, match="repeats"):
        s2s.bench_beam(repeats=0)
