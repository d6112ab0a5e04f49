"""Tests for 04-transformers/01-transformer/transformer.py (Vaswani et al. 2017)."""

import itertools
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
from common.translation import BOS, EOS, PAD

tr = common.topic("transformer")

D = torch.float64
TOL = 1e-10


def _max_diff(a, b):
    return (a - b).abs().max().item()


def _grads_match(ours, theirs, inputs_ours, inputs_theirs, out_ours, out_theirs):
    g = torch.randn(out_ours.shape, dtype=D, generator=torch.Generator().manual_seed(7))
    (out_ours * g).sum().backward()
    (out_theirs * g).sum().backward()
    for a, b in zip(inputs_ours, inputs_theirs):
        assert _max_diff(a.grad, b.grad) < TOL
    named = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert _max_diff(p.grad, named[name].grad) < TOL, name


@pytest.mark.parametrize("case", ["none", "causal", "bool", "float", "padding"])
def test_attention_matches_torch_sdpa(case):
    torch.manual_seed(0)
    q = torch.randn(2, 3, 5, 4, dtype=D, requires_grad=True)
    k = torch.randn(2, 3, 5, 4, dtype=D, requires_grad=True)
    v = torch.randn(2, 3, 5, 6, dtype=D, requires_grad=True)
    mask, causal = None, case == "causal"
    if case == "bool":
        mask = torch.rand(2, 1, 5, 5) > 0.4
        mask[..., 0] = True  # no query row fully masked
    elif case == "float":
        mask = torch.randn(5, 5, dtype=D)
    elif case == "padding":
        mask = (torch.arange(5)[None] < torch.tensor([5, 2])[:, None])[:, None, None, :]  # (B, 1, 1, Tk)
    ours = tr.scaled_dot_product_attention(q, k, v, mask, causal)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    assert ours.shape == (2, 3, 5, 6) and _max_diff(ours, ref) < TOL
    g = torch.randn(ours.shape, dtype=D)
    ga = torch.autograd.grad(ours, (q, k, v), g)
    gb = torch.autograd.grad(ref, (q, k, v), g)
    assert all(_max_diff(a, b) < TOL for a, b in zip(ga, gb))


def test_attention_weights_zero_on_masked_keys_and_gradcheck():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 3, dtype=D, requires_grad=True) for _ in range(3))
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])[:, None, :]
    _, w = tr.scaled_dot_product_attention(q, k, v, mask, need_weights=True)
    assert torch.all(w[0, :, 2:] == 0) and torch.allclose(w.sum(-1), torch.ones(2, 4, dtype=D))
    _, w = tr.scaled_dot_product_attention(q, k, v, causal=True, need_weights=True)
    assert torch.all(w.triu(1) == 0)
    assert torch.autograd.gradcheck(lambda a, b, c: tr.scaled_dot_product_attention(a, b, c, mask), (q, k, v))


def _mha_pair(d=8, h=2):
    torch.manual_seed(0)
    ours = tr.MultiHeadAttention(d, h).double()
    theirs = nn.MultiheadAttention(d, h, batch_first=True).double()
    theirs.load_state_dict(ours.state_dict())  # same names and layout
    return ours, theirs


@pytest.mark.parametrize("cross", [False, True])
def test_mha_matches_nn_multihead_attention_outputs_and_gradients(cross):
    ours, theirs = _mha_pair()
    x = torch.randn(3, 5, 8, dtype=D)
    m = torch.randn(3, 6, 8, dtype=D) if cross else x
    real = torch.arange(m.shape[1])[None] < torch.tensor([m.shape[1], 3, 1])[:, None]  # True = real token
    xa, ma = x.clone().requires_grad_(), m.clone().requires_grad_()
    xb, mb = x.clone().requires_grad_(), m.clone().requires_grad_()
    a, wa = ours(xa, ma, ma, key_mask=real, need_weights=True)
    b, wb = theirs(xb, mb, mb, key_padding_mask=~real, average_attn_weights=False)
    assert a.shape == (3, 5, 8) and wa.shape == (3, 2, 5, m.shape[1])
    assert _max_diff(a, b) < TOL and _max_diff(wa, wb) < TOL
    _grads_match(ours, theirs, (xa, ma), (xb, mb), a, b)
    ours2 = tr.MultiHeadAttention(8, 2).double()
    ours2.load_state_dict(theirs.state_dict())  # and the other way round
    assert _max_diff(ours2(x, m, m), theirs(x, m, m)[0]) < TOL


def test_mha_causal_and_float_mask_match():
    ours, theirs = _mha_pair()
    x = torch.randn(2, 5, 8, dtype=D)
    causal = nn.Transformer.generate_square_subsequent_mask(5, dtype=D)
    assert _max_diff(ours(x, causal=True), theirs(x, x, x, attn_mask=causal)[0]) < TOL
    real = torch.tensor([[True] * 5, [True, True, True, False, False]])
    pad = torch.zeros(2, 5, dtype=D).masked_fill(~real, float("-inf"))  # PyTorch's additive padding mask
    ref = theirs(x, x, x, attn_mask=causal, key_padding_mask=pad)[0]
    assert _max_diff(ours(x, key_mask=real, attn_mask=causal), ref) < TOL
    assert _max_diff(ours(x, key_mask=real, attn_mask=causal.isfinite()), ref) < TOL


def _layer_inputs():
    torch.manual_seed(1)
    x = torch.randn(3, 5, 8, dtype=D)
    real = torch.arange(5)[None] < torch.tensor([5, 4, 2])[:, None]
    return x, real


def test_encoder_layer_matches_nn_transformer_encoder_layer():
    torch.manual_seed(0)
    ours = tr.EncoderLayer(8, 2, 16, dropout=0.0).double()
    theirs = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).double()  # post-norm, relu
    theirs.load_state_dict(ours.state_dict())
    x, real = _layer_inputs()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    a, b = ours(xa, real), theirs(xb, src_key_padding_mask=~real)
    assert a.shape == x.shape and _max_diff(a, b) < TOL
    _grads_match(ours, theirs, (xa,), (xb,), a, b)


def test_decoder_layer_matches_nn_transformer_decoder_layer():
    torch.manual_seed(0)
    ours = tr.DecoderLayer(8, 2, 16, dropout=0.0).double()
    theirs = nn.TransformerDecoderLayer(8, 2, 16, dropout=0.0, batch_first=True).double()
    theirs.load_state_dict(ours.state_dict())
    mem, real = _layer_inputs()
    y = torch.randn(3, 4, 8, dtype=D)
    ya, yb, ma, mb = (t.clone().requires_grad_() for t in (y, y, mem, mem))
    causal = nn.Transformer.generate_square_subsequent_mask(4, dtype=D)
    a = ours(ya, ma, real)
    b = theirs(yb, mb, tgt_mask=causal, memory_key_padding_mask=~real, tgt_is_causal=True)
    assert a.shape == y.shape and _max_diff(a, b) < TOL
    _grads_match(ours, theirs, (ya, ma), (yb, mb), a, b)


def test_sinusoidal_positions_formula():
    pe = tr.sinusoidal_positions(50, 16)
    assert pe.shape == (50, 16)
    pos, i = 7, 3
    assert abs(pe[pos, 2 * i].item() - math.sin(pos / 10000 ** (2 * i / 16))) < 1e-6
    assert abs(pe[pos, 2 * i + 1].item() - math.cos(pos / 10000 ** (2 * i / 16))) < 1e-6
    assert torch.equal(pe[0, 0::2], torch.zeros(8)) and torch.equal(pe[0, 1::2], torch.ones(8))


def _model(dropout=0.0, max_len=6, **kw):
    torch.manual_seed(0)
    return tr.Transformer(13, 11, d_model=8, heads=2, layers=2, d_ff=16, dropout=dropout, max_len=max_len,
                          **kw).double()


SRC = torch.tensor([[5, 6, 7, 0, 0], [4, 8, 9, 10, 5], [12, 0, 0, 0, 0]])
Y_IN = torch.tensor([[BOS, 5, 6, 7], [BOS, 7, 8, EOS], [BOS, 9, EOS, PAD]])


def test_transformer_shapes_tied_output_and_padding_invariance():
    m = _model().eval()
    logits = m(SRC, Y_IN)
    assert logits.shape == (3, 4, 11)
    assert torch.equal(m.logits(torch.eye(8, dtype=D)), m.tgt_emb.weight.T)  # tied to the target embedding
    shorter = m(SRC[:, :3][:1], Y_IN[:1])  # the same sentence without its padding columns
    assert _max_diff(shorter, logits[:1]) < 1e-12
    m(SRC, Y_IN).sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_cached_step_decoding_equals_teacher_forced_logits():
    m = _model().eval()
    ref = F.log_softmax(m(SRC, Y_IN), -1)
    memory, mask = m.encode(SRC)
    caches = [{} for _ in m.decoder]
    steps = torch.stack([m.step(Y_IN[:, t], t, memory, mask, caches) for t in range(Y_IN.shape[1])], 1)
    assert _max_diff(steps, ref) < TOL


def test_greedy_matches_argmax_of_teacher_forcing():
    m = _model().eval()
    ids = m.greedy(SRC, max_steps=5)
    assert ids.shape[0] == 3 and ids.shape[1] <= 5
    y = torch.cat([torch.full((3, 1), BOS), ids], 1)
    arg = m(SRC, y[:, :-1]).argmax(-1)
    for b in range(3):  # up to and including its first <eos>
        row = ids[b].tolist()
        n = row.index(EOS) + 1 if EOS in row else len(row)
        assert arg[b, :n].tolist() == row[:n] and all(t == PAD for t in row[n:])


def _seq_score(m, src, seq, alpha):
    """log P(seq | src) / lp(seq) for a hypothesis ending in <eos>."""
    y = torch.tensor([[BOS] + seq])
    logp = F.log_softmax(m(src, y[:, :-1]), -1)[0]
    return logp.gather(1, y[0, 1:, None]).sum().item() / ((5 + len(seq)) / 6) ** alpha


def test_beam_search_batched_equals_per_sentence_and_finds_exact_best_on_tiny_vocab():
    torch.manual_seed(0)
    m = tr.Transformer(7, 5, d_model=8, heads=2, layers=1, d_ff=16, dropout=0.0, max_len=6).double().eval()
    with torch.no_grad():
        m.tgt_emb.weight.mul_(6)  # sharper distributions, so beams differ from greedy
    src = torch.tensor([[4, 5, 6, 0], [5, 4, 0, 0], [6, 6, 4, 5]])
    batched = m.beam_search(src, beam=3, max_steps=4)
    single = torch.cat([m.beam_search(src[b:b + 1, :int((src[b] != PAD).sum())], beam=3, max_steps=4)
                        for b in range(3)])
    assert torch.equal(batched, single)
    # a beam wide enough to keep every hypothesis finds the exact best of all 85 <eos>-terminated sequences
    words = [w for w in range(5) if w != EOS]
    for b in range(3):
        s = src[b:b + 1, :int((src[b] != PAD).sum())]
        cands = [list(w) + [EOS] for n in range(4) for w in itertools.product(words, repeat=n)]
        best = max(cands, key=lambda c: _seq_score(m, s, c, 0.6))
        wide = m.beam_search(s, beam=64, max_steps=4)[0].tolist()
        assert wide[:wide.index(EOS) + 1] == best


def test_label_smoothing_equals_torch_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 9, dtype=D, requires_grad=True)
    target = torch.randint(0, 9, (4, 6))
    target[0, 3:] = PAD
    for eps in (0.0, 0.1, 0.3):
        ours = tr.label_smoothed_loss(logits, target, eps)
        ref = F.cross_entropy(logits.flatten(0, 1), target.flatten(), label_smoothing=eps, ignore_index=PAD)
        assert abs(ours.item() - ref.item()) < TOL
        ga, gb = torch.autograd.grad(ours, logits), torch.autograd.grad(ref, logits)
        assert _max_diff(ga[0], gb[0]) < TOL


def test_warmup_schedule_values_and_lambda_lr():
    f = tr.warmup_schedule(512, warmup=4000)
    assert abs(f(0) - 512 ** -0.5 * 4000 ** -1.5) < 1e-15  # step_num = 1
    assert abs(f(3999) - 512 ** -0.5 * 4000 ** -0.5) < 1e-15  # the peak at step_num = warmup
    assert abs(f(15999) - 512 ** -0.5 * 16000 ** -0.5) < 1e-15  # inverse square root afterwards
    assert f(3999) > f(3998) and f(3999) > f(4000)
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, tr.warmup_schedule(64, warmup=10, scale=2.0))
    for step in range(1, 5):
        opt.step()
        sched.step()
        assert abs(opt.param_groups[0]["lr"] - 2 * 64 ** -0.5 * (step + 1) * 10 ** -1.5) < 1e-15


def test_average_checkpoints_is_the_elementwise_mean():
    torch.manual_seed(0)
    models = [tr.Transformer(9, 7, d_model=8, heads=2, layers=1, d_ff=16, dropout=0.0, max_len=4) for _ in range(3)]
    states = [m.state_dict() for m in models]
    avg = tr.average_checkpoints(states)
    assert list(avg) == list(states[0])
    for k in avg:
        assert avg[k].dtype == states[0][k].dtype
        assert torch.allclose(avg[k], (states[0][k] + states[1][k] + states[2][k]) / 3, atol=1e-6)
    assert torch.equal(tr.average_checkpoints(states[:1])["tgt_emb.weight"], states[0]["tgt_emb.weight"])
    # the average loads back into the model; the inputs are left untouched
    before = states[0]["tgt_emb.weight"].clone()
    models[0].load_state_dict(avg)
    assert torch.equal(states[1]["tgt_emb.weight"], models[1].state_dict()["tgt_emb.weight"])
    assert not torch.equal(before, models[0].state_dict()["tgt_emb.weight"])
    ints = [{"n": torch.tensor([1, 2])}, {"n": torch.tensor([1, 2])}]
    assert torch.equal(tr.average_checkpoints(ints)["n"], torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="non-empty list"):
        tr.average_checkpoints([])
    with pytest.raises(ValueError, match="other keys"):
        tr.average_checkpoints([states[0], {"x": torch.zeros(1)}])
    with pytest.raises(ValueError, match="different shapes"):
        tr.average_checkpoints([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])
    with pytest.raises(ValueError, match="cannot be averaged"):
        tr.average_checkpoints([{"n": torch.tensor([1])}, {"n": torch.tensor([2])}])


def test_learns_to_reverse_a_tiny_batch():
    torch.manual_seed(0)
    src = torch.randint(4, 10, (16, 5))
    tgt = torch.cat([torch.full((16, 1), BOS), src.flip(1), torch.full((16, 1), EOS)], 1)
    m = tr.Transformer(10, 10, d_model=32, heads=4, layers=1, d_ff=64, dropout=0.0, max_len=5)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = m.loss(src, tgt, eps=0.0).item()
    for _ in range(150):
        loss = m.loss(src, tgt, eps=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
    assert torch.equal(m.eval().greedy(src)[:, :6], tgt[:, 1:])


def test_bench_mha_returns_its_keys():
    r = tr.bench_mha(repeats=1, batch=2, length=4, d_model=8, heads=2)
    assert set(r) == {"ours_ms", "theirs_ms", "ratio", "name"} and r["ratio"] > 0


def test_bad_inputs_raise_value_error():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="divisible"):
        tr.MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="divisible"):
        tr.Transformer(5, 5, d_model=10, heads=4)
    with pytest.raises(ValueError, match="broadcast"):
        tr.scaled_dot_product_attention(x, x, x, torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool or float"):
        tr.scaled_dot_product_attention(x, x, x, torch.ones(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="d_k"):
        tr.scaled_dot_product_attention(x, torch.randn(2, 3, 5), x)
    with pytest.raises(ValueError, match="rank"):
        tr.scaled_dot_product_attention(torch.randn(4), x, x)
    mha = tr.MultiHeadAttention(4, 2)
    with pytest.raises(ValueError, match="key_mask"):
        mha(x, key_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="key_mask"):
        mha(x, key_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="features"):
        mha(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="key and value"):
        mha(x, torch.randn(2, 3, 4), torch.randn(2, 4, 4))
    m = _model(max_len=4)
    with pytest.raises(ValueError, match="max_len=4"):
        m(torch.ones(1, 5, dtype=torch.long), Y_IN[:1])
    with pytest.raises(ValueError, match="all-padding"):
        m.greedy(torch.tensor([[4, 5], [0, 0]]))
    with pytest.raises(ValueError, match="integers"):
        m.greedy(torch.ones(1, 3))
    with pytest.raises(ValueError, match="beam"):
        m.beam_search(SRC[:, :4], beam=0)
    with pytest.raises(ValueError, match="alpha"):
        m.beam_search(SRC[:, :4], alpha=-1.0)
    with pytest.raises(ValueError, match="max_steps"):
        m.greedy(SRC[:, :4], max_steps=0)
    with pytest.raises(ValueError, match="tgt"):
        m.loss(SRC[:, :4], torch.ones(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="y_in"):
        m(SRC[:, :4], Y_IN[:2])
    with pytest.raises(ValueError, match="even"):
        tr.sinusoidal_positions(5, 7)
    with pytest.raises(ValueError, match="dropout"):
        tr.EncoderLayer(8, 2, 16, dropout=1.0)
    with pytest.raises(ValueError, match="target must have shape"):
        tr.label_smoothed_loss(torch.randn(3, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="eps"):
        tr.label_smoothed_loss(torch.randn(3, 5), torch.zeros(3, dtype=torch.long), eps=1.5)
    with pytest.raises(ValueError, match="warmup"):
        tr.warmup_schedule(512, warmup=0)
    with pytest.raises(ValueError, match="scale"):
        tr.warmup_schedule(512, scale=0.0)
