"""Tests for 05-image-generation/04-clip/clip.py (Radford et al. 2021)."""

import math

import pytest
import torch

import common

clip = common.topic("clip")


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _small(**kw):
    torch.manual_seed(0)
    return clip.CLIP(embed_dim=16, channels=4, width=32, text_width=16, text_layers=1, text_heads=2, **kw)


def _images(n, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_contrastive_loss_matches_direct_computation_float64():
    n, d, s = 6, 5, 7.3
    img = torch.nn.functional.normalize(_rand(n, d), dim=-1)
    txt = torch.nn.functional.normalize(_rand(n, d, seed=1), dim=-1)
    loss_i, loss_t = 0.0, 0.0
    for i in range(n):  # -log softmax of the matching pair, row by row and column by column
        row = [s * float(img[i] @ txt[j]) for j in range(n)]
        col = [s * float(img[j] @ txt[i]) for j in range(n)]
        loss_i += math.log(sum(math.exp(v) for v in row)) - row[i]
        loss_t += math.log(sum(math.exp(v) for v in col)) - col[i]
    ref = 0.5 * (loss_i / n + loss_t / n)
    assert abs(clip.contrastive_loss(img, txt, s).item() - ref) <= 1e-10
    # perfectly aligned, well separated pairs with a large scale give a loss near 0
    eye = torch.eye(4, dtype=torch.float64)
    assert clip.contrastive_loss(eye, eye, 100.0).item() < 1e-10


def test_contrastive_loss_gradcheck_and_symmetry():
    img, txt = _rand(4, 3).requires_grad_(), _rand(4, 3, seed=1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: clip.contrastive_loss(a, b, 2.0), (img, txt))
    a, b = img.detach(), txt.detach()
    assert abs(clip.contrastive_loss(a, b, 3.0) - clip.contrastive_loss(b, a, 3.0)) <= 1e-12  # image <-> text swap


def test_contrastive_loss_rejects_bad_input():
    with pytest.raises(ValueError):
        clip.contrastive_loss(torch.zeros(3, 4), torch.zeros(2, 4), 1.0)
    with pytest.raises(ValueError):
        clip.contrastive_loss(torch.zeros(3), torch.zeros(3), 1.0)
    with pytest.raises(ValueError):
        clip.contrastive_loss(torch.zeros(0, 4), torch.zeros(0, 4), 1.0)


def test_caption_and_templates():
    assert clip.caption(7, "a photo of the digit {name}") == "a photo of the digit seven"
    assert clip.caption(7, "a handwritten {digit}") == "a handwritten 7"
    assert clip.caption(7, "a photo of a {style} {name}") == "a photo of a seven"  # no style: the slot drops out
    assert clip.caption(7, "a photo of a {style} {name}", "small") == "a photo of a small seven"
    assert clip.caption(3, "a {style} handwritten {digit}", "inverted") == "an inverted handwritten 3"
    assert not set(clip.TEMPLATES) & set(clip.HELD_OUT_TEMPLATES) and len(clip.TEMPLATES) >= 4
    assert all("{style}" in t for t in clip.TEMPLATES + clip.HELD_OUT_TEMPLATES)
    for t in clip.prompts(clip.TEMPLATES + clip.HELD_OUT_TEMPLATES):  # every caption fits context and vocabulary
        assert clip.tokenize([clip.caption(c, t) for c in range(10)]).shape == (10, clip.CONTEXT)
    for bad in [(10, "a {name}"), (-1, "a {name}"), (3, "no slot"), (3, None), (True, "a {name}"),
                (3, "a {style} {name}", "huge")]:
        with pytest.raises(ValueError):
            clip.caption(*bad)


def test_prompts_fill_every_style_of_every_template():
    p = clip.prompts(["a {style} {name}", "the {style} number {digit}"], ["", "thick"])
    assert p == ["a {name}", "a thick {name}", "the number {digit}", "the thick number {digit}"]
    assert len(clip.prompts()) == len(clip.HELD_OUT_TEMPLATES) * len(clip.STYLES)
    for bad in [([], clip.STYLES), (clip.TEMPLATES, []), ("a {style} {name}", clip.STYLES), (clip.TEMPLATES, ["huge"])]:
        with pytest.raises(ValueError):
            clip.prompts(*bad)


def test_stylise_draws_each_style():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(4, 1, 28, 28)
    x[:, :, 8:20, 12:16] = torch.rand(4, 1, 12, 4, generator=g) * 0.5 + 0.5  # a bar in the middle
    out = clip.stylise(x, torch.tensor([0, 1, 2, 3]))
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.equal(out[0], x[0])  # as drawn
    assert out[1, :, :6].abs().sum() == 0 and out[1, :, :, :6].abs().sum() == 0  # shrunk into the centre 16x16
    assert 0 < out[1].sum() < x[1].sum()
    assert torch.equal(out[2], torch.nn.functional.max_pool2d(x[2:3], 3, 1, 1)[0]) and out[2].sum() > x[2].sum()
    assert torch.equal(out[3], 1 - x[3])
    for bad in [(x, torch.tensor([0, 1, 2])), (x, torch.tensor([0, 1, 2, 4])), (x, torch.tensor([0.0, 1, 2, 3])),
                (x[:, :, :20], torch.tensor([0, 1, 2, 3])), (x * 2, torch.tensor([0, 1, 2, 3]))]:
        with pytest.raises(ValueError):
            clip.stylise(*bad)


def test_tokenize_layout_and_errors():
    t = clip.tokenize(["A photo of the digit SEVEN.", "a handwritten 7"], context=10)
    assert t.dtype == torch.long and t.shape == (2, 10)
    words = ["a", "photo", "of", "the", "digit", "seven"]
    assert t[0].tolist() == [clip.SOT, *(clip.VOCAB.index(w) for w in words), clip.EOT, clip.PAD, clip.PAD]
    assert t[1, :5].tolist() == [clip.SOT, clip.VOCAB.index("a"), clip.VOCAB.index("handwritten"),
                                 clip.VOCAB.index("7"), clip.EOT]
    for bad in [[""], ["  ...  "], ["a photo of the digit seven"] * 1 + ["seven " * 11], ["a photo of a cat"],
                [], "a handwritten 7", [3], None]:
        with pytest.raises(ValueError):
            clip.tokenize(bad)
    with pytest.raises(ValueError, match="longer than the text context"):
        clip.tokenize(["a photo of the digit seven"], context=7)
    with pytest.raises(ValueError):
        clip.tokenize(["seven"], context=2)


def test_encoders_shapes_norms_and_forward():
    model = _small().double()
    x = _images(5).double()
    tokens = clip.tokenize([clip.caption(c, clip.TEMPLATES[c % 3]) for c in range(5)])
    i, t = model.encode_image(x), model.encode_text(tokens)
    assert i.shape == t.shape == (5, 16)
    assert torch.allclose(i.norm(dim=-1), torch.ones(5, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(t.norm(dim=-1), torch.ones(5, dtype=torch.float64), atol=1e-12)
    assert model.image_features(x).shape == (5, 32)
    logits = model(x, tokens[:3])
    assert logits.shape == (5, 3) and torch.allclose(logits, model.scale() * i @ t[:3].T, atol=1e-12)
    assert abs(model.loss(x, tokens).item() - clip.contrastive_loss(i, t, model.scale()).item()) <= 1e-12


def test_text_encoder_reads_the_eot_token_and_ignores_padding():
    model = _small().double()
    t = clip.tokenize(["a handwritten 7", "a handwritten 7"])
    t[1, 5:] = clip.VOCAB.index("nine")  # garbage after <eot> (position 4): causal attention never sees it
    e = model.encode_text(t)
    assert torch.allclose(e[0], e[1], atol=1e-12)
    assert not torch.allclose(e[0], model.encode_text(clip.tokenize(["a handwritten 1"]))[0], atol=1e-3)


def test_temperature_initialised_at_0_07_and_clipped_at_100():
    model = _small()
    assert abs(model.scale().item() - 1 / 0.07) < 1e-4
    assert abs(model.logit_scale.item() - math.log(1 / 0.07)) < 1e-6
    with torch.no_grad():
        model.logit_scale.fill_(math.log(500.0))
    assert model.scale().item() == pytest.approx(100.0)
    x, tokens = _images(3), clip.tokenize(["the number 1", "a handwritten 2", "a drawing of a 3"])
    model.loss(x, tokens).backward()
    assert model.logit_scale.grad.item() == 0.0  # clipped: the temperature gets no gradient
    assert _small(init_temperature=0.5).scale().item() == pytest.approx(2.0)


def test_clip_rejects_bad_input():
    for kw in [dict(init_temperature=0.0), dict(init_temperature=-0.07), dict(init_temperature=float("nan")),
               dict(max_scale=0.0), dict(context=2)]:
        with pytest.raises(ValueError):
            _small(**kw)
    with pytest.raises(ValueError):
        clip.CLIP(embed_dim=0)
    model = _small()
    tokens = clip.tokenize(["the number 1", "the number 2"])
    for bad in [torch.rand(2, 28, 28), torch.rand(2, 3, 28, 28), torch.rand(2, 1, 32, 32), torch.rand(0, 1, 28, 28),
                2 * torch.ones(2, 1, 28, 28), torch.zeros(2, 1, 28, 28, dtype=torch.uint8)]:
        with pytest.raises(ValueError):
            model.encode_image(bad)
    no_eot = tokens.clone()
    no_eot[no_eot == clip.EOT] = clip.PAD
    out_of_range = tokens.clone()
    out_of_range[0, 1] = len(clip.VOCAB)
    for bad in [tokens[:, :5], tokens.float(), tokens[0], no_eot, out_of_range, tokens[:0]]:
        with pytest.raises(ValueError):
            model.encode_text(bad)
    with pytest.raises(ValueError):
        model.loss(_images(3), tokens)  # 3 images, 2 captions


def test_score_is_cosine_similarity_and_checks_input():
    model = _small().eval()
    x, caps = _images(3), ["the number 1", "a handwritten 2", "a drawing of a 3"]
    s = clip.score(model, x, caps)
    ref = (model.encode_image(x) * model.encode_text(clip.tokenize(caps))).sum(-1)
    assert s.shape == (3,) and torch.allclose(s, ref, atol=1e-6) and (s.abs() <= 1 + 1e-6).all()
    for bad_caps in [caps[:2], caps[:2] + [""], "the number 1"]:
        with pytest.raises(ValueError):
            clip.score(model, x, bad_caps)
    with pytest.raises(ValueError):
        clip.score(torch.nn.Linear(2, 2), x, caps)
    with pytest.raises(ValueError):
        clip.score(model, x[:, 0], caps)


def test_class_embeddings_ensemble_in_embedding_space():
    model = _small().eval()
    w = clip.class_embeddings(model, clip.TEMPLATES[:3])
    assert w.shape == (10, 16) and torch.allclose(w.norm(dim=-1), torch.ones(10), atol=1e-6)
    per = [model.encode_text(clip.tokenize([clip.caption(c, t) for c in range(10)])) for t in clip.TEMPLATES[:3]]
    assert torch.allclose(w, torch.nn.functional.normalize(sum(per) / 3, dim=-1), atol=1e-6)
    assert torch.allclose(clip.class_embeddings(model, clip.TEMPLATES[:1]), per[0], atol=1e-6)  # one prompt
    with pytest.raises(ValueError):
        clip.class_embeddings(model, [])
    with pytest.raises(ValueError):
        clip.caption_tokens("a handwritten {digit}")


def test_training_learns_zero_shot_classification_on_synthetic_digits():
    x, y = common.data.synthetic_images("mnist", "train", n=512)
    xt, yt = common.data.synthetic_images("mnist", "test", n=256)
    model = _small()
    before = clip.zero_shot_accuracy(model, xt, yt)
    hist = clip.train(model, x, y, styles=[""], epochs=10, batch_size=32, lr=2e-3, seed=0, show=False)
    assert len(hist["loss"]) == len(hist["scale"]) == 10 * 16 and not model.training
    assert sum(hist["loss"][-16:]) / 16 < sum(hist["loss"][:16]) / 16 - 1.0
    seen = clip.zero_shot_accuracy(model, xt, yt)
    held_out = clip.zero_shot_accuracy(model, xt, yt, clip.prompts(clip.HELD_OUT_TEMPLATES, [""]))
    assert before < 0.3 and seen > 0.75 and held_out > 0.75, (before, seen, held_out)
    emb, feats = clip.embed_images(model, xt)
    assert emb.shape == (256, 16) and feats.shape == (256, 32)


def test_train_rejects_bad_input():
    x, y = common.data.synthetic_images("mnist", "train", n=64)
    model = _small()
    for args, kw in [((x.float(), y), {}), ((x, y[:10]), {}), ((x, y + 10), {}), ((x, y), dict(epochs=0)),
                     ((x, y), dict(lr=0.0)), ((x, y), dict(templates=[])), ((x, y), dict(styles=["huge"])), ((x[:, 0], y), {})]:
        with pytest.raises(ValueError):
            clip.train(model, *args, show=False, **kw)
    with pytest.raises(ValueError):
        clip.train(torch.nn.Linear(2, 2), x, y, show=False)


def test_linear_probe_fits_separable_features_and_checks_input():
    g = torch.Generator().manual_seed(0)
    centers = 5 * torch.randn(10, 8, generator=g)
    y = torch.arange(300) % 10
    x = centers[y] + torch.randn(300, 8, generator=g)
    pred = clip.linear_probe(x[:200], y[:200], x[200:])
    assert pred.shape == (100,) and (pred == y[200:]).float().mean() > 0.95
    with pytest.raises(ValueError):
        clip.linear_probe(x[:200], y[:100], x[200:])
    with pytest.raises(ValueError):
        clip.linear_probe(x[:200], y[:200], x[200:, :3])
    with pytest.raises(ValueError):
        clip.linear_probe(x[:200], y[:200], x[200:], weight_decay=-1.0)


def test_pretrained_trains_once_caches_and_reloads(tmp_path, monkeypatch):
    monkeypatch.setattr(clip, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(clip, "_CACHE", {})
    real = clip.train_pretrained
    monkeypatch.setattr(clip, "train_pretrained", lambda dataset, smoke: real(dataset, smoke, epochs=1))
    state = torch.get_rng_state()
    model = clip.pretrained()
    assert torch.equal(state, torch.get_rng_state())  # the caller's random state is untouched
    path = tmp_path / "checkpoints" / "clip-mnist-smoke.pt"
    assert path.exists() and clip.checkpoint_path() == path
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert clip.pretrained() is model
    monkeypatch.setattr(clip, "_CACHE", {})
    again = clip.pretrained()  # loaded from the file
    assert again is not model and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                                           again.state_dict().values()))
    with pytest.raises(ValueError):
        clip.pretrained("cifar10")
    assert clip.checkpoint_path("mnist", smoke=False).name == "clip-mnist.pt"


def test_embed_images_and_zero_shot_accuracy_check_input():
    model = _small().eval()
    x, y = common.data.synthetic_images("mnist", "test", n=20)
    emb, feats = clip.embed_images(model, x, batch_size=7)  # uint8 is converted, batches are joined
    ref = model.encode_image(common.data.to_float(x))
    assert torch.allclose(emb, ref, atol=1e-6) and feats.shape == (20, 32)
    assert 0.0 <= clip.zero_shot_accuracy(model, x, y, ["{name}"]) <= 1.0
    with pytest.raises(ValueError):
        clip.embed_images(model, x[:, 0])
    with pytest.raises(ValueError):
        clip.zero_shot_accuracy(model, x, y[:5])
