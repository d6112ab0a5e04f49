"""Tests for 04-transformers/03-t5 (t5.py): bucket table, relative bias, blocks vs PyTorch, span corruption."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import topic

t5 = topic("t5")


def test_bucket_bidirectional_matches_hand_worked_table():
    # 32 buckets, max distance 128: 16 per direction, offsets 0..7 exact, then
    # 8 + floor(log(d / 8) / log(16) * 8): d=12 -> 9, 16 -> 10, 32 -> 12, 64 -> 14, 127 -> 15, >= 128 -> 15.
    # Keys after the query (offset > 0) use the upper 16 buckets.
    table = {-200: 15, -128: 15, -127: 15, -64: 14, -32: 12, -16: 10, -12: 9, -8: 8, -7: 7, -1: 1, 0: 0,
             1: 17, 7: 23, 8: 24, 12: 25, 16: 26, 32: 28, 64: 30, 127: 31, 128: 31, 200: 31}
    rel = torch.tensor(list(table))
    assert t5.relative_position_bucket(rel).tolist() == list(table.values())


def test_bucket_causal_matches_hand_worked_table():
    # causal: all 32 buckets for offsets <= 0, 0..15 exact, then 16 + floor(log(d / 16) / log(8) * 16)
    table = {-200: 31, -128: 31, -64: 26, -32: 21, -16: 16, -15: 15, -1: 1, 0: 0, 1: 0, 50: 0}
    rel = torch.tensor(list(table))
    assert t5.relative_position_bucket(rel, bidirectional=False).tolist() == list(table.values())


def test_relative_bias_shape_and_lookup():
    torch.manual_seed(0)
    rb = t5.RelativePositionBias(heads=3)
    b = rb(5, 7)
    assert b.shape == (1, 3, 5, 7)
    rel = torch.arange(7)[None] - torch.arange(5)[:, None]
    want = rb.table.weight[t5.relative_position_bucket(rel)].permute(2, 0, 1)
    assert torch.equal(b[0], want)
    # depends only on the offset: shifting query and key together leaves it unchanged
    assert torch.equal(b[0, :, 1:, 1:], b[0, :, :-1, :-1])


def test_encoder_block_equals_pytorch_pre_norm_layer_float64():
    torch.manual_seed(0)
    theirs = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=True).double()
    ours = t5.EncoderBlock(16, 4, 32, dropout=0.0).double()
    ours.norm1, ours.norm2 = nn.LayerNorm(16).double(), nn.LayerNorm(16).double()  # PyTorch's norm for parity
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 6, 16, dtype=torch.float64)
    real = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4]).bool()
    diff = (ours(x, real) - theirs(x, src_key_padding_mask=~real)).abs().max().item()
    assert diff < 1e-10


def test_attention_with_position_bias_equals_pytorch_float64():
    torch.manual_seed(0)
    B, T, d, h = 2, 5, 8, 2
    ours = t5.MultiHeadAttention(d, h).double()
    theirs = nn.MultiheadAttention(d, h, batch_first=True).double()
    theirs.load_state_dict(ours.state_dict())
    bias = t5.RelativePositionBias(h).double()(T, T)  # (1, h, T, T)
    x = torch.randn(B, T, d, dtype=torch.float64)
    mask3 = bias.expand(B, h, T, T).reshape(B * h, T, T)
    diff = (ours(x, attn_mask=bias) - theirs(x, x, x, attn_mask=mask3, need_weights=False)[0]).abs().max()
    assert diff.item() < 1e-10


def test_model_shapes_and_generate():
    torch.manual_seed(0)
    m = t5.T5(50, d_model=16, heads=2, layers=1, d_ff=32, dropout=0.0, max_len=20)
    src = torch.randint(2, 50, (3, 9))
    y_in = torch.randint(2, 50, (3, 4))
    assert m(src, y_in).shape == (3, 4, 50)
    out = m.generate(src, 6)
    assert out.shape[0] == 3 and 1 <= out.shape[1] <= 6


def test_span_noise_mask_density_and_span_count():
    g = torch.Generator().manual_seed(0)
    for length in (20, 64, 100, 500):
        for _ in range(20):
            m = t5.span_noise_mask(length, 0.15, 3.0, generator=g)
            n_noise, starts = int(m.sum()), m & ~F.pad(m, (1, 0))[:-1]
            assert m.shape == (length,) and m.dtype == torch.bool
            assert n_noise == round(0.15 * length)
            assert int(starts.sum()) == max(round(n_noise / 3), 1)
            assert not m[0]  # runs start with kept tokens
    m = t5.span_noise_mask(500, generator=torch.Generator().manual_seed(1))  # the paper's example: 75 in 25
    assert int(m.sum()) == 75 and int((m & ~F.pad(m, (1, 0))[:-1]).sum()) == 25


def test_iid_noise_density():
    m = t5.iid_noise_mask(200_000, 0.15, generator=torch.Generator().manual_seed(0))
    assert abs(m.float().mean().item() - 0.15) < 0.003


def test_corrupt_reproduces_figure_2_and_lengths():
    # "Thank you for inviting me to your party last week ." with for, inviting, last corrupted
    words = "Thank you for inviting me to your party last week .".split()
    toks = torch.arange(len(words)) + 10
    mask = torch.tensor([w in ("for", "inviting", "last") for w in words])
    inp, tgt = t5.corrupt(toks, mask, first_sentinel=100, num_sentinels=10)
    assert inp.tolist() == [10, 11, 100, 14, 15, 16, 17, 101, 19, 20]
    assert tgt.tolist() == [100, 12, 13, 101, 18, 102]
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        m = t5.span_noise_mask(64, generator=g)
        toks = torch.randint(2, 90, (64,), generator=g)
        runs = int((m & ~F.pad(m, (1, 0))[:-1]).sum())
        inp, tgt = t5.corrupt(toks, m, 100, 30)
        assert len(tgt) == int(m.sum()) + runs + 1
        assert len(inp) == 64 - int(m.sum()) + runs


def test_task_input():
    assert t5.task_input("reverse", "abc") == ("reverse: abc", "cba")
    assert t5.task_input("sort", "cab") == ("sort: cab", "abc")
    assert t5.task_input("swapcase", "aB") == ("swap case: aB", "Ab")


def test_learning_sanity_overfits_tiny_batch():
    torch.manual_seed(0)
    m = t5.T5(12, d_model=32, heads=2, layers=1, d_ff=64, dropout=0.0, max_len=10)
    src = torch.randint(2, 12, (8, 6))
    tgt = torch.cat([src.flip(1), torch.full((8, 1), t5.EOS)], 1)  # reverse
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = m.loss(src, tgt).item()
    for _ in range(300):
        loss = m.loss(src, tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
    assert torch.equal(m.eval().generate(src, 7), tgt)


def test_bench_encoder_layer_keys():
    r = t5.bench_encoder_layer(repeats=1, batch=2, length=8, d_model=16, heads=2, d_ff=32)
    assert set(r) == {"ours_ms", "theirs_ms", "ratio", "name"} and r["ratio"] > 0


@pytest.mark.parametrize("call, match", [
    (lambda: t5.span_noise_mask(20, density=1.5), "density"),
    (lambda: t5.span_noise_mask(20, density=-0.1), "density"),
    (lambda: t5.iid_noise_mask(20, density=1.2), "density"),
    (lambda: t5.span_noise_mask(20, mean_span=0.5), "mean_span"),
    (lambda: t5.span_noise_mask(1), "length"),
    (lambda: t5.task_input("translate", "abc"), "unknown task prefix"),
    (lambda: t5.task_input("sort", ""), "non-empty"),
    (lambda: t5.relative_position_bucket(torch.zeros(3)), "integers"),
    (lambda: t5.relative_position_bucket(torch.zeros(3, dtype=torch.long), num_buckets=2), "num_buckets"),
    (lambda: t5.RelativePositionBias(0), "heads"),
    (lambda: t5.corrupt(torch.arange(5), torch.ones(4, dtype=torch.bool), 100, 5), "shaped like"),
    (lambda: t5.corrupt(torch.arange(5), torch.tensor([1, 0, 1, 0, 1]).bool(), 100, 3), "sentinels"),
    (lambda: t5.EncoderBlock(16, 4, 0), "d_ff"),
    (lambda: t5.T5(1), "vocab"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_model_inputs():
    m = t5.T5(20, d_model=16, heads=2, layers=1, d_ff=32, max_len=8)
    ok = torch.randint(2, 20, (2, 5))
    with pytest.raises(ValueError, match="max_len=8"):
        m(torch.randint(2, 20, (2, 9)), ok)  # longer than the model accepts
    with pytest.raises(ValueError, match="rank 2"):
        m(torch.randint(2, 20, (5,)), ok)
    with pytest.raises(ValueError, match="integers"):
        m(torch.rand(2, 5), ok)
    with pytest.raises(ValueError, match="all-padding"):
        m(torch.zeros(2, 5, dtype=torch.long), ok)
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        m(torch.full((2, 5), 25), ok)
    with pytest.raises(ValueError, match="same batch size"):
        m.loss(ok, torch.randint(2, 20, (3, 4)))
    with pytest.raises(ValueError, match="max_steps"):
        m.generate(ok, 9)


def test_bench_encoder_layer_inference_mode_times_the_forward_alone():
    r = t5.bench_encoder_layer(repeats=1, batch=2, length=8, d_model=16, heads=2, d_ff=32, inference=True)
    assert r["ours_ms"] > 0 and r["theirs_ms"] > 0 and r["ratio"] > 0 and "inference" in r["name"]
