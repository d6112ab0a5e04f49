"""Tests for 04-transformers/07-vision-transformer/vit.py (Dosovitskiy et al. 2020)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import VisionTransformer
from torchvision.models import vit_b_16 as tv_vit_b_16

import common

vit = common.topic("vit")


def _small(**kw):
    args = dict(image_size=28, patch_size=7, in_channels=1, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64)
    args.update(kw)
    return vit.ViT(**args)


def _randomise(model, seed=0):
    """Random values everywhere (the zero-initialised head and class token too), so parity is not trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _torchvision_twin(model):
    tv = VisionTransformer(model.image_size, model.patch_size, len(model.layers), model.layers[0].self_attn.heads,
                           model.pos_embedding.shape[-1], model.layers[0].linear1.out_features,
                           num_classes=model.head.out_features)
    d = model.pos_embedding.shape[-1]
    tv.conv_proj = nn.Conv2d(model.in_channels, d, model.patch_size, model.patch_size)  # torchvision assumes RGB
    tv = tv.to(model.pos_embedding.dtype)
    tv.load_state_dict(vit.torchvision_state_dict(model))
    return tv


def test_patchify_order_and_shape():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    p = vit.patchify(x, 2)
    assert p.shape == (2, 6, 12)  # (4/2)(6/2) = 6 patches of 3*2*2 numbers
    # patch 4 = row 1, column 1 -> pixels [2:4, 2:4] of every channel, channel first
    assert torch.equal(p[1, 4], x[1, :, 2:4, 2:4].reshape(-1))
    # the same as a stride-P unfold
    assert torch.equal(p, F.unfold(x, 2, stride=2).transpose(1, 2))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_vit_matches_torchvision_with_copied_weights(dtype, tol):
    torch.manual_seed(0)
    model = _randomise(_small()).to(dtype).eval()
    tv = _torchvision_twin(model).eval()
    x = torch.rand(5, 1, 28, 28, dtype=dtype, generator=torch.Generator().manual_seed(1))
    assert (model(x) - tv(x)).abs().max().item() <= tol


def test_encoder_block_matches_transformer_encoder_layer_float64():
    torch.manual_seed(0)
    ours = _randomise(vit.EncoderBlock(16, 4, 32)).double()
    theirs = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, activation="gelu", layer_norm_eps=1e-6,
                                        batch_first=True, norm_first=True).double()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 9, 16, dtype=torch.float64, requires_grad=True)
    y_ours, w = ours(x, need_weights=True)
    assert w.shape == (3, 4, 9, 9)
    x2 = x.detach().clone().requires_grad_()
    y_theirs = theirs(x2)
    assert (y_ours - y_theirs).abs().max().item() <= 1e-10
    g = torch.randn(y_ours.shape, dtype=torch.float64)
    (gx,), (gx2,) = torch.autograd.grad(y_ours, x, g), torch.autograd.grad(y_theirs, x2, g)
    assert (gx - gx2).abs().max().item() <= 1e-10


def test_vit_b_16_parameter_count_and_output_shape_match_torchvision():
    ours = vit.vit_b_16()
    n_ours = sum(p.numel() for p in ours.parameters())
    with torch.device("meta"):
        theirs = tv_vit_b_16()
    assert n_ours == sum(p.numel() for p in theirs.parameters()) == 86_567_656
    with torch.device("meta"):
        out_theirs = theirs(torch.empty(1, 3, 224, 224))
    with torch.no_grad():
        out_ours = ours(torch.zeros(1, 3, 224, 224))
    assert out_ours.shape == out_theirs.shape == (1, 1000)


def test_shapes_weights_and_sequence_length():
    model = _small(patch_size=4)
    logits, ws = model(torch.rand(3, 1, 28, 28), need_weights=True)
    assert logits.shape == (3, 10) and len(ws) == 2
    assert all(w.shape == (3, 4, 50, 50) for w in ws)  # 7 x 7 patches + [class]
    assert torch.allclose(ws[0].sum(-1), torch.ones(3, 4, 50))
    assert model.embed(torch.rand(3, 1, 28, 28)).shape == (3, 50, 32)


def test_zero_head_gives_uniform_logits_at_init():
    logits = _small()(torch.rand(4, 1, 28, 28))
    assert torch.equal(logits, torch.zeros(4, 10))


def test_position_similarity_shape_and_diagonal():
    model = _randomise(_small(patch_size=4))
    s = vit.position_similarity(model)
    assert s.shape == (7, 7, 7, 7)
    assert torch.allclose(s.reshape(49, 49).diagonal(), torch.ones(49), atol=1e-6)
    assert torch.allclose(s.reshape(49, 49), s.reshape(49, 49).T, atol=1e-6)


def test_attention_rollout_by_hand():
    # one layer, one head, 3 tokens: A + I renormalised, row of the [class] token
    a = torch.tensor([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])[None, None]
    r = vit.attention_rollout([a])
    assert torch.allclose(r, torch.tensor([[0.125, 0.125]]))
    # two identical layers: rows of (A + I) / 2 multiplied
    m = (a[0, 0] + torch.eye(3)) / 2
    assert torch.allclose(vit.attention_rollout([a, a]), (m @ m)[0, 1:][None])


def test_attention_rollout_on_model_is_a_distribution():
    model = _randomise(_small())
    _, ws = model(torch.rand(2, 1, 28, 28), need_weights=True)
    r = vit.attention_rollout(ws)
    assert r.shape == (2, 16) and (r >= 0).all() and (r.sum(-1) <= 1 + 1e-6).all()


def test_torchvision_state_dict_shapes():
    sd = vit.torchvision_state_dict(_small())
    assert sd["conv_proj.weight"].shape == (32, 1, 7, 7)
    assert "encoder.layers.encoder_layer_1.mlp.3.weight" in sd


def test_learns_a_tiny_batch():
    common.seed_everything(0)
    x, y = common.data.synthetic_images("mnist", "train", n=64)
    x = common.data.to_float(x)
    model = _small()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (model(x).argmax(1) == y).float().mean().item() >= 0.95


def test_bench_encoder_layer_keys():
    r = vit.bench_encoder_layer(repeats=1, batch=2, tokens=5, dim=8, heads=2, mlp_dim=16)
    assert set(r) == {"ours_ms", "theirs_ms", "ratio", "name"} and r["ratio"] > 0


@pytest.mark.parametrize("call,match", [
    (lambda: vit.ViT(image_size=28, patch_size=5), "divisible"),
    (lambda: _small()(torch.rand(2, 1, 30, 30)), "divisible"),
    (lambda: _small()(torch.rand(2, 1, 35, 35)), "position table"),
    (lambda: _small()(torch.rand(2, 3, 28, 28)), "channels"),
    (lambda: _small()(torch.rand(28, 28)), "images"),
    (lambda: _small()(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)), "floating"),
    (lambda: _small()(torch.rand(0, 1, 28, 28)), "empty"),
    (lambda: vit.patchify(torch.rand(1, 1, 28, 27), 7), "divisible"),
    (lambda: vit.patchify(torch.rand(1, 1, 28, 28), 0), "patch_size"),
    (lambda: _small(dropout=1.5), "dropout"),
    (lambda: _small(dim=30, heads=4), "divisible by heads"),
    (lambda: _small(depth=0), "depth"),
    (lambda: _small(num_classes=1), "num_classes"),
    (lambda: vit.EncoderBlock(16, 4, 0), "mlp_dim"),
    (lambda: vit.torchvision_state_dict(nn.Linear(2, 2)), "ViT"),
    (lambda: vit.position_similarity(nn.Linear(2, 2)), "ViT"),
    (lambda: vit.attention_rollout([]), "non-empty"),
    (lambda: vit.attention_rollout([torch.rand(1, 2, 3, 4)]), "one shape"),
    (lambda: vit.attention_rollout([torch.rand(1, 2, 3, 3), torch.rand(1, 2, 4, 4)]), "one shape"),
    (lambda: vit.bench_encoder_layer(repeats=0), "repeats"),
])
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bench_encoder_layer_inference_mode_times_the_forward_alone():
    r = vit.bench_encoder_layer(repeats=1, batch=2, tokens=5, dim=8, heads=2, mlp_dim=16, inference=True)
    assert r["ours_ms"] > 0 and r["theirs_ms"] > 0 and r["ratio"] > 0 and "inference" in r["name"]
