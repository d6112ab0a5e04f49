"""Tests for 05-image-generation/05-dall-e/dalle.py (Ramesh et al. 2021)."""

import pytest
import torch
import torch.nn.functional as F

import common

dalle = common.topic("dalle")
gpt = common.topic("gpt")


def _model(seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    args = dict(text_vocab=7, text_len=3, image_vocab=5, image_len=4, n_layer=2, n_head=2, n_embd=16)
    return dalle.DALLE(**{**args, **kw}).to(dtype).eval()


def _data(m, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, m.text_vocab, (b, m.text_len), generator=g)
    return text, torch.randint(0, m.image_vocab, (b, m.image_len), generator=g)


def test_sample_next_top_k_and_temperature():
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0], [3.0, 0.0, 0.0, 2.5]])
    assert torch.equal(dalle.sample_next(logits, top_k=1), logits.argmax(1))
    assert torch.equal(dalle.sample_next(logits, temperature=1e-4), logits.argmax(1))
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([dalle.sample_next(logits, top_k=2, generator=g) for _ in range(500)])  # (500, 2)
    assert set(draws[:, 0].tolist()) == {1, 2} and set(draws[:, 1].tolist()) == {0, 3}
    # without top-k the frequencies follow softmax(logits / T)
    big = logits[:1].expand(20000, 4)
    freq = torch.bincount(dalle.sample_next(big, temperature=2.0, generator=g), minlength=4) / 20000
    assert (freq - F.softmax(logits[0] / 2.0, 0)).abs().max() < 0.02


@pytest.mark.parametrize("kw", [dict(temperature=0.0), dict(temperature=-1.0), dict(top_k=0), dict(top_k=5)])
def test_sample_next_rejects_bad_arguments(kw):
    with pytest.raises(ValueError):
        dalle.sample_next(torch.zeros(2, 4), **kw)
    with pytest.raises(ValueError):
        dalle.sample_next(torch.zeros(4))


def test_forward_shapes_and_the_gpt_stream():
    m = _model()
    text, image = _data(m)
    tl, il = m(text, image)
    assert tl.shape == (4, m.text_len - 1, m.text_vocab) and il.shape == (4, m.image_len, m.image_vocab)
    stream = torch.cat([text, image + m.text_vocab], 1)
    full, _ = m.transformer(stream[:, :-1])  # the same GPT over the one stream, sliced by kind
    assert torch.equal(il, full[:, m.text_len - 1:, m.text_vocab:])
    assert torch.equal(m(text, image.view(4, 2, 2))[1], il)  # a (B, h, w) grid is read in raster order


def test_loss_matches_direct_computation_float64():
    m = _model()
    text, image = _data(m)
    stream = torch.cat([text, image + m.text_vocab], 1)
    logits, _ = m.transformer(stream[:, :-1])
    t_terms, i_terms = [], []
    for b in range(4):
        for p in range(stream.shape[1] - 1):
            target = int(stream[b, p + 1])
            if p + 1 < m.text_len:
                t_terms.append(-torch.log_softmax(logits[b, p, :m.text_vocab], 0)[target])
            else:
                i_terms.append(-torch.log_softmax(logits[b, p, m.text_vocab:], 0)[target - m.text_vocab])
    want = torch.stack(t_terms).mean() / 8 + 7 * torch.stack(i_terms).mean() / 8
    assert abs(m.loss(text, image).item() - want.item()) <= 1e-10
    assert abs(m.loss(text, image, text_weight=0.0).item() - torch.stack(i_terms).mean().item()) <= 1e-10


def test_causality_and_text_conditioning():
    m = _model()
    text, image = _data(m)
    il = m(text, image)[1]
    changed = image.clone()
    changed[:, 2] = (changed[:, 2] + 1) % m.image_vocab
    il2 = m(text, changed)[1]
    assert torch.equal(il[:, :3], il2[:, :3]) and not torch.allclose(il[:, 3], il2[:, 3])  # token 2 informs 3 only
    other = (text + 1) % m.text_vocab
    assert not torch.allclose(m(other, image)[1], il)  # every image logit sees the caption


def test_generate_cache_matches_uncached_and_gives_valid_tokens():
    m = _model()
    text, _ = _data(m, b=6)
    a = m.generate(text, top_k=3, use_cache=True, generator=torch.Generator().manual_seed(1))
    b = m.generate(text, top_k=3, use_cache=False, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert a.shape == (6, m.image_len) and a.dtype == torch.int64 and 0 <= int(a.min()) and int(a.max()) < 5


def test_bad_input_raises_clear_errors():
    m = _model()
    text, image = _data(m)
    bad = [
        lambda: m(text[:, :0], image),  # an empty caption
        lambda: m(torch.zeros(4, m.text_len + 1, dtype=torch.long), image),  # longer than the text context
        lambda: m(text.float(), image),
        lambda: m(text + m.text_vocab, image),
        lambda: m(text, image[:, :3]),
        lambda: m(text, image + m.image_vocab),
        lambda: m.generate(text, temperature=0.0),
        lambda: m.generate(text, temperature=-0.5),
        lambda: m.generate(text, top_k=m.image_vocab + 1),
        lambda: m.generate(torch.zeros(0, m.text_len, dtype=torch.long)),
        lambda: m.loss(text, image, text_weight=1.5),
        lambda: dalle.DALLE(text_vocab=0, text_len=3),
        lambda: dalle.DALLE(text_vocab=5, text_len=3, n_embd=10, n_head=4),
        lambda: dalle.train(m, text, image, steps=0),
        lambda: dalle.train(torch.nn.Linear(2, 2), text, image, steps=1),
    ]
    for f in bad:
        with pytest.raises(ValueError):
            f()


def test_rerank():
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]])
    assert rerank_list(scores, 1) == [[1], [0]]
    assert rerank_list(scores, 3) == [[1, 2, 0], [0, 1, 2]]
    for bad in (lambda: dalle.rerank(torch.zeros(2, 0)), lambda: dalle.rerank(scores, keep=4),
                lambda: dalle.rerank(scores, keep=0), lambda: dalle.rerank(torch.zeros(3))):
        with pytest.raises(ValueError):
            bad()


def rerank_list(scores, keep):
    return dalle.rerank(scores, keep).tolist()


def test_best_of_n_keeps_the_highest_score():
    m = _model()
    text, _ = _data(m, b=3)

    def decode(tok):  # tokens (M, 4) -> "images" (M, 1, 2, 2)
        return tok.double().view(-1, 1, 2, 2)

    def score(img, rows):  # prefers bright images; rows must name each candidate's caption
        assert rows.tolist() == sorted(rows.tolist())
        return img.flatten(1).sum(1)

    out = dalle.best_of_n(m, text, 5, decode, score, top_k=4, batch_size=4, generator=torch.Generator().manual_seed(0))
    assert out["scores"].shape == (3, 5) and out["tokens"].shape == (3, 5, 4) and out["best"].shape == (3, 1, 2, 2)
    assert torch.equal(out["best"].flatten(1).sum(1), out["scores"].max(1).values)
    assert torch.equal(out["first"], decode(out["tokens"][:, 0]))
    with pytest.raises(ValueError):
        dalle.best_of_n(m, text, 0, decode, score)  # N < 1
    with pytest.raises(ValueError):
        dalle.best_of_n(m, text, 2, decode, lambda img, rows: torch.zeros(1))


def test_learns_caption_to_image_mapping():
    torch.manual_seed(0)
    m = dalle.DALLE(text_vocab=4, text_len=2, image_vocab=6, image_len=4, n_layer=1, n_head=2, n_embd=32)
    cls = torch.arange(4).repeat(16)  # (64,): caption "<class> <class>" -> a fixed image per class
    text = torch.stack([cls, cls], 1)
    table = torch.tensor([[0, 1, 2, 3], [5, 4, 3, 2], [1, 1, 5, 5], [3, 0, 3, 0]])
    losses = dalle.train(m, text, table[cls], steps=150, batch_size=32, lr=1e-2, seed=0, show=False)
    assert losses[-1] < 0.1 * losses[0]
    out = m.generate(torch.stack([torch.arange(4)] * 2, 1), top_k=1)
    assert torch.equal(out, table)


def test_bench_generate_keys():
    r = dalle.bench_generate(batch=2, text_len=2, repeats=1, n_layer=1, n_head=2, n_embd=16)
    assert {"name", "ours_ms", "theirs_ms", "ratio", "ours_tokens_per_s", "theirs_tokens_per_s"} <= set(r)
    assert r["ours_ms"] > 0 and r["theirs_ms"] > 0 and r["ratio"] == r["ours_ms"] / r["theirs_ms"]


def test_train_with_fewer_pairs_than_a_batch():
    m = _model(dtype=torch.float32)
    text, image = _data(m, b=3)
    losses = dalle.train(m, text, image, steps=4, batch_size=64, show=False)
    assert len(losses) == 4 and all(isinstance(v, float) for v in losses) and not m.training
