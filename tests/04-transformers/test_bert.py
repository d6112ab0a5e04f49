"""Tests for 04-transformers/02-bert/bert.py (Devlin et al. 2018; Liu et al. 2019)."""

import pytest
import torch
import torch.nn as nn

import common
from common.text import WordVocab

bert = common.topic("bert")


def _vocab():
    words = "the cat sat on a mat do you like dogs ? . i am here".split()
    return WordVocab([words], specials=bert.SPECIALS, unk="<unk>")


def _ids(B=4, T=10, V=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(bert.SPECIALS), V, (B, T), generator=g)
    ids[:, 0] = bert.CLS
    ids[-1, 6:] = bert.PAD  # one padded row
    return ids


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_encoder_layer_matches_torch_gelu_post_norm(dtype, tol):
    torch.manual_seed(0)
    ours = bert.EncoderLayer(16, 4, 32, dropout=0.0).to(dtype).eval()
    ref = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, activation="gelu", batch_first=True).to(dtype).eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 7, 16, dtype=dtype, requires_grad=True)
    real = torch.ones(3, 7, dtype=torch.bool)
    real[0, 5:] = False
    a, b = ours(x, real), ref(x, src_key_padding_mask=~real)
    assert a.shape == (3, 7, 16)
    keep = real[..., None].expand_as(a)  # PyTorch's fast path may zero padded rows; compare real tokens
    assert (a - b)[keep].abs().max().item() < tol
    (ga,) = torch.autograd.grad(a[keep].sum(), x)
    x2 = x.detach().clone().requires_grad_()
    with torch.enable_grad():
        ref.train()  # the slow path, so gradients flow
        (gb,) = torch.autograd.grad(ref(x2, src_key_padding_mask=~real)[keep].sum(), x2)
    assert (ga - gb).abs().max().item() < tol


def test_bert_shapes_segments_and_attention_maps():
    torch.manual_seed(0)
    m = bert.Bert(30, d_model=16, heads=2, layers=3, d_ff=32, max_len=12).eval()
    ids = _ids()
    segs = torch.zeros_like(ids)
    segs[:, 5:] = 1
    h, ws = m(ids, segs, need_weights=True)
    assert h.shape == (4, 10, 16) and len(ws) == 3 and ws[0].shape == (4, 2, 10, 10)
    assert ws[0][3, :, :, 6:].abs().max().item() == 0.0  # nobody attends to padding
    assert not torch.allclose(h, m(ids))  # segment embeddings change the output
    assert m.mlm_logits(h).shape == (4, 10, 30)
    assert m.pooled(ids).shape == (4, 16) and m.pooled(ids).abs().max() <= 1
    assert m.mlm_logits(h).data_ptr() != m.tok_emb.weight.data_ptr()
    assert torch.equal(m.mlm_logits(h[0, 0]) - m.mlm_bias,  # tied: the output layer is E
                       m.mlm_norm(torch.nn.functional.gelu(m.mlm_dense(h[0, 0]))) @ m.tok_emb.weight.T)
    c = bert.BertClassifier(m, 3).eval()
    assert c(ids, segs).shape == (4, 3)


def test_position_embedding_is_learned_and_order_matters():
    torch.manual_seed(0)
    m = bert.Bert(30, d_model=16, heads=2, layers=1, d_ff=32, max_len=12).eval()
    ids = _ids(B=1)
    h1, h2 = m(ids), m(ids.flip(1))
    assert not torch.allclose(h1, h2.flip(1))
    assert m.pos_emb.weight.requires_grad


def test_mask_tokens_80_10_10_statistics():
    g = torch.Generator().manual_seed(0)
    V = 50
    ids = torch.randint(len(bert.SPECIALS), V, (400, 250), generator=g)
    ids[:, 0], ids[:, -20:] = bert.CLS, bert.PAD
    inputs, labels = bert.mask_tokens(ids, V, generator=g)
    chosen = labels != bert.IGNORE
    n_real = (ids >= len(bert.SPECIALS)).sum().item()
    assert abs(chosen.sum().item() / n_real - 0.15) < 0.005
    assert not chosen[:, 0].any() and not chosen[:, -20:].any()  # specials never chosen
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(inputs[~chosen], ids[~chosen])
    c = inputs[chosen]
    masked, same = (c == bert.MASK).float().mean().item(), (c == ids[chosen]).float().mean().item()
    # a random replacement equals the original with probability 1 / (V - specials)
    p_rand_same = 0.1 / (V - len(bert.SPECIALS))
    assert abs(masked - 0.8) < 0.01 and abs(same - (0.1 + p_rand_same)) < 0.01
    other = c[(c != bert.MASK) & (c != ids[chosen])]
    assert abs(other.numel() / c.numel() - (0.1 - p_rand_same)) < 0.01
    assert other.min() >= len(bert.SPECIALS) and other.max() < V


def test_mask_tokens_edge_probabilities_and_dynamic():
    ids = _ids(T=20)
    inp, lab = bert.mask_tokens(ids, 30, p=0.0)
    assert torch.equal(inp, ids) and (lab == bert.IGNORE).all()
    inp, lab = bert.mask_tokens(ids, 30, p=1.0, rule=(1.0, 0.0, 0.0))
    real = ids >= len(bert.SPECIALS)
    assert (inp[real] == bert.MASK).all() and torch.equal(lab[real], ids[real])
    g = torch.Generator().manual_seed(0)
    a, b = bert.mask_tokens(ids, 30, generator=g)[1], bert.mask_tokens(ids, 30, generator=g)[1]
    assert not torch.equal(a, b)  # a fresh mask on every call: dynamic masking


@pytest.mark.parametrize("kwargs,match", [
    ({"p": -0.1}, "p must be"), ({"p": 1.5}, "p must be"), ({"rule": (0.8, 0.1)}, "three probabilities"),
    ({"rule": (0.8, 0.1, 0.2)}, "sum to 1"), ({"rule": (1.2, -0.1, -0.1)}, r"rule\[0\]"),
    ({"vocab_size": 3}, "vocab_size")])
def test_mask_tokens_bad_input(kwargs, match):
    args = {"vocab_size": 30, **kwargs}
    with pytest.raises(ValueError, match=match):
        bert.mask_tokens(_ids(), **args)


def test_bad_inputs_to_model():
    m = bert.Bert(30, d_model=16, heads=2, layers=1, d_ff=32, max_len=8)
    with pytest.raises(ValueError, match="max_len=8"):
        m(_ids(T=10))
    with pytest.raises(ValueError, match="must hold integers"):
        m(torch.randn(2, 5))
    with pytest.raises(ValueError, match="rank 2"):
        m(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"lie in \[0, 30\)"):
        m(torch.full((2, 5), 31))
    with pytest.raises(ValueError, match="segments must be"):
        m(_ids(T=6), torch.full((4, 6), 2))
    with pytest.raises(ValueError, match="labels must have"):
        m.mlm_loss(_ids(T=6), _ids(T=5))
    with pytest.raises(ValueError, match="dropout"):
        bert.Bert(30, dropout=1.0)
    with pytest.raises(ValueError, match="vocab_size"):
        bert.Bert(4)
    with pytest.raises(ValueError, match="num_classes"):
        bert.BertClassifier(m, 1)
    with pytest.raises(ValueError, match="must be a Bert"):
        bert.BertClassifier(nn.Linear(2, 2), 2)


def test_encode_batch_single_and_pair():
    v = _vocab()
    ids, segs = bert.encode_batch(v, [["the", "cat", "sat"]], 7)
    assert v.decode(ids[0]) == ["[CLS]", "the", "cat", "sat", "[SEP]", "<pad>", "<pad>"]
    assert segs.sum() == 0
    ids, segs = bert.encode_batch(v, [["the", "cat", "sat", "on", "a", "mat"]], 9, pair_with=[["do", "you", "?"]])
    assert v.decode(ids[0]) == ["[CLS]", "the", "cat", "sat", "[SEP]", "do", "you", "?", "[SEP]"]
    assert segs[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="specials"):
        bert.encode_batch(WordVocab([["a", "b"]]), [["a"]], 5)
    with pytest.raises(ValueError, match="one sentence per"):
        bert.encode_batch(v, [["a"]], 5, pair_with=[])
    with pytest.raises(ValueError, match="no sentences"):
        bert.encode_batch(v, [], 5)


def test_masked_predictions_returns_top_k():
    torch.manual_seed(0)
    v = _vocab()
    m = bert.Bert(len(v), d_model=16, heads=2, layers=1, d_ff=32, max_len=8)
    top = bert.masked_predictions(m, v, ["do", "you", "like", "dogs", "?"], 4, k=3)
    assert len(top) == 3 and all(w in v.itos for w, _ in top)
    assert top[0][1] >= top[1][1] >= top[2][1]
    with pytest.raises(ValueError, match="position"):
        bert.masked_predictions(m, v, ["do", "you"], 2)


def test_mlm_learns_a_tiny_corpus():
    torch.manual_seed(0)
    v = _vocab()
    sents = [["the", "cat", "sat", "on", "a", "mat", "."], ["do", "you", "like", "dogs", "?"]] * 8
    ids, segs = bert.encode_batch(v, sents, 9)
    m = bert.Bert(len(v), d_model=32, heads=2, layers=2, d_ff=64, max_len=9, dropout=0.0)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(150):
        inp, lab = bert.mask_tokens(ids, len(v), p=0.3, generator=g)
        loss = m.mlm_loss(inp, lab, segs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[:10]) / 10 > 2.0 and sum(losses[-10:]) / 10 < 0.5
    assert bert.masked_predictions(m, v, ["do", "you", "like", "dogs", "?"], 4)[0][0] == "?"


def test_classifier_fine_tunes():
    torch.manual_seed(0)
    v = _vocab()
    ids, _ = bert.encode_batch(v, [["the", "cat", "sat"], ["do", "you", "like"]] * 4, 6)
    y = torch.tensor([0, 1] * 4)
    c = bert.BertClassifier(bert.Bert(len(v), d_model=16, heads=2, layers=1, d_ff=32, max_len=6), 2)
    opt = torch.optim.Adam(c.parameters(), lr=1e-2)
    for _ in range(40):
        loss = nn.functional.cross_entropy(c(ids), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    c.eval()
    assert (c(ids).argmax(1) == y).all()


def test_bench_encoder_layer_keys():
    out = bert.bench_encoder_layer(repeats=1, batch=2, length=4, d_model=8, heads=2, d_ff=16)
    assert set(out) == {"ours_ms", "theirs_ms", "ratio", "name"} and out["ours_ms"] > 0 and out["ratio"] > 0
    with pytest.raises(ValueError, match="repeats"):
        bert.bench_encoder_layer(repeats=0)


def test_bench_encoder_layer_inference_mode_times_the_forward_alone():
    r = bert.bench_encoder_layer(repeats=1, batch=2, length=4, d_model=8, heads=2, d_ff=16, inference=True)
    assert r["ours_ms"] > 0 and r["theirs_ms"] > 0 and r["ratio"] > 0 and "inference" in r["name"]
