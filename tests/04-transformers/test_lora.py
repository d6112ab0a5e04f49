"""Tests for 04-transformers/05-lora/lora.py (Hu et al. 2021, LoRA)."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import common

lora = common.topic("lora")
gpt = common.topic("gpt")


def _gpt(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return gpt.GPT(gpt.GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=16)).to(dtype)


def _randomize_B(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora.lora_layers(model):
            for b in m.lora_B.values():
                b.copy_(0.1 * torch.randn(b.shape, generator=g, dtype=b.dtype))


def _idx(b=3, t=16, seed=2):
    return torch.randint(0, 65, (b, t), generator=torch.Generator().manual_seed(seed))


def test_shapes_init_and_frozen_base():
    torch.manual_seed(0)
    base = nn.Linear(12, 24)
    m = lora.LoRALinear(base, r=2, alpha=4.0, blocks=3, adapt=(0, 2))
    assert set(m.lora_A) == set(m.lora_B) == {"0", "2"}
    assert all(a.shape == (2, 12) for a in m.lora_A.values()) and all(b.shape == (8, 2) for b in m.lora_B.values())
    assert all(torch.equal(b, torch.zeros(8, 2)) for b in m.lora_B.values())  # B = 0: Delta W = 0 at the start
    assert all(a.abs().sum() > 0 for a in m.lora_A.values())  # A random
    assert m.scale == 2.0 and not base.weight.requires_grad and not base.bias.requires_grad
    assert m(torch.randn(5, 7, 12)).shape == (5, 7, 24)


def test_init_A_is_gaussian_with_variance_one_over_in():
    torch.manual_seed(0)
    m = lora.LoRALinear(nn.Linear(400, 64), r=64, alpha=1.0)
    a = m.lora_A["0"]
    assert abs(a.mean().item()) < 0.005 and abs(a.var().item() * 400 - 1) < 0.05


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_forward_is_eq3_and_merged_equals_adapter(dtype, tol):
    torch.manual_seed(0)
    base = nn.Linear(16, 48).to(dtype)
    nn.init.normal_(base.weight, 0.0, 0.02)
    w0 = base.weight.detach().clone()
    m = lora.LoRALinear(base, r=3, alpha=6.0, blocks=3, adapt=(0, 2))
    with torch.no_grad():
        for b in m.lora_B.values():
            b.normal_(0.0, 0.1)
    x = torch.randn(4, 5, 16, dtype=dtype)
    delta = torch.zeros_like(w0)
    for i in (0, 2):
        delta[16 * i:16 * (i + 1)] = 2.0 * m.lora_B[str(i)] @ m.lora_A[str(i)]
    explicit = F.linear(x, w0 + delta, base.bias)  # eq. (3): W0 x + (alpha / r) B A x
    y = m(x)
    assert (y - explicit).abs().max().item() <= tol
    m.merge()
    assert m.merged and (m(x) - y).abs().max().item() <= tol
    m.unmerge()
    assert not m.merged and (base.weight - w0).abs().max().item() <= tol
    assert (m(x) - y).abs().max().item() <= tol


def test_q_and_v_adapted_k_untouched():
    model = lora.apply_lora(_gpt(), r=2, alpha=2.0)
    _randomize_B(model)
    C = 16
    for block in model.h:
        layer = block.attn.c_attn
        assert isinstance(layer, lora.LoRALinear) and layer.adapt == (0, 2) and set(layer.lora_A) == {"0", "2"}
        d = layer.delta_weight()
        assert d[:C].abs().sum() > 0 and d[2 * C:].abs().sum() > 0
        assert torch.equal(d[C:2 * C], torch.zeros(C, C))
        w_before = layer.base.weight.detach().clone()
        layer.merge()
        assert torch.equal(layer.base.weight[C:2 * C], w_before[C:2 * C])  # W_k's rows exactly as they were
        assert not torch.equal(layer.base.weight[:C], w_before[:C])
        assert not isinstance(block.attn.c_proj, lora.LoRALinear)


def test_other_targets():
    model = lora.apply_lora(_gpt(), r=1, alpha=1.0, targets=("k", "o"))
    assert model.h[0].attn.c_attn.adapt == (1,) and isinstance(model.h[0].attn.c_proj, lora.LoRALinear)
    assert lora.count_trainable(model) == 2 * (2 * 1 * 16 * 2)  # 2 layers x 2 adapters x (A + B)
    model = lora.apply_lora(_gpt(), r=1, alpha=1.0, targets=("o",))
    assert not isinstance(model.h[0].attn.c_attn, lora.LoRALinear)


def test_zero_B_means_adapted_model_equals_base():
    base = _gpt()
    adapted = lora.apply_lora(copy.deepcopy(base), r=4, alpha=4.0)
    idx = _idx()
    assert torch.equal(adapted(idx)[0], base(idx)[0])


def test_only_A_and_B_receive_gradients():
    model = lora.apply_lora(_gpt(), r=2, alpha=2.0)
    _randomize_B(model)
    idx = _idx()
    _, loss = model(idx, _idx(seed=3))
    loss.backward()
    for name, p in model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


def test_count_trainable_matches_formula():
    model = lora.apply_lora(_gpt(), r=3, alpha=3.0)
    assert lora.count_trainable(model) == 2 * 2 * 3 * (16 + 16)  # layers x (q, v) x r (in + out)
    full = _gpt()
    assert lora.count_trainable(full) == sum(p.numel() for p in full.parameters())


def test_whole_model_merge_unmerge():
    model = lora.apply_lora(_gpt(), r=2, alpha=2.0)
    _randomize_B(model)
    idx = _idx()
    weights = [m.base.weight.detach().clone() for m in lora.lora_layers(model)]
    ref = model(idx)[0]
    lora.merge_lora(model)
    assert all(m.merged for m in lora.lora_layers(model))
    assert (model(idx)[0] - ref).abs().max().item() <= 1e-6
    lora.unmerge_lora(model)
    assert all((m.base.weight - w).abs().max().item() <= 1e-7 for m, w in zip(lora.lora_layers(model), weights))
    assert (model(idx)[0] - ref).abs().max().item() <= 1e-6


def test_state_dict_is_tiny_and_loads_onto_a_fresh_base(tmp_path):
    base = _gpt()
    adapted = lora.apply_lora(copy.deepcopy(base), r=2, alpha=4.0)
    _randomize_B(adapted)
    state = lora.lora_state_dict(adapted)
    assert all(".lora_A." in k or ".lora_B." in k for k in state)
    assert sum(v.numel() for v in state.values()) == lora.count_trainable(adapted)
    assert lora.state_bytes(state) < 0.05 * lora.state_bytes(base.state_dict())
    torch.save(state, tmp_path / "adapter.pt")
    fresh = lora.load_lora(copy.deepcopy(base), torch.load(tmp_path / "adapter.pt", weights_only=True), r=2, alpha=4.0)
    idx = _idx()
    assert torch.equal(fresh(idx)[0], adapted(idx)[0])
    assert not torch.equal(fresh(idx)[0], base(idx)[0])


def test_load_lora_rejects_mismatched_state():
    adapted = lora.apply_lora(_gpt(), r=2, alpha=2.0)
    state = lora.lora_state_dict(adapted)
    with pytest.raises(ValueError, match="r=3"):
        lora.load_lora(_gpt(), state, r=3, alpha=2.0)
    with pytest.raises(ValueError, match="missing"):
        lora.load_lora(_gpt(), state, r=2, alpha=2.0, targets=("q", "k", "v"))
    with pytest.raises(ValueError):
        lora.load_lora(_gpt(), {}, r=2, alpha=2.0)


def test_state_bytes_hand_made():
    s = {"a": torch.zeros(3, 4), "b": [torch.zeros(2, dtype=torch.float64), 7], "c": {"d": torch.zeros(5, 1)}}
    assert lora.state_bytes(s) == 12 * 4 + 2 * 8 + 5 * 4


def test_adapted_gpt_generates_with_and_without_cache():
    model = lora.apply_lora(_gpt(), r=2, alpha=2.0).eval()
    _randomize_B(model)
    prompt = _idx(1, 3)
    a = model.generate(prompt, 20, generator=torch.Generator().manual_seed(0), return_logits=True)[1]
    b = model.generate(prompt, 20, generator=torch.Generator().manual_seed(0), use_cache=False, return_logits=True)[1]
    assert (a - b).abs().max().item() < 1e-5


def test_lora_learns_a_tiny_batch_with_the_base_frozen():
    model = lora.apply_lora(_gpt(seed=0), r=2, alpha=2.0)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    idx = _idx(4, 16, seed=5)
    tgt = torch.full_like(idx, 7)  # a new "text": always the same next character
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    losses = []
    for _ in range(40):
        _, loss = model(idx, tgt)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] - 0.3
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())


@pytest.mark.parametrize("kwargs", [dict(r=0), dict(r=-1), dict(r=1.5), dict(r=True), dict(r=13),
                                    dict(alpha=0.0), dict(alpha=-1.0), dict(alpha=float("nan")), dict(alpha="1"),
                                    dict(blocks=5), dict(blocks=0), dict(adapt=()), dict(adapt=(3,)),
                                    dict(adapt=(0, 0))])
def test_lora_linear_rejects_bad_arguments(kwargs):
    args = dict(r=2, alpha=1.0, blocks=3, adapt=None) | kwargs
    with pytest.raises(ValueError):
        lora.LoRALinear(nn.Linear(12, 24), **args)


@pytest.mark.parametrize("module", [nn.Conv1d(4, 4, 1), nn.Embedding(5, 4), nn.Sequential(nn.Linear(4, 4)), "W"])
def test_lora_wraps_only_linear(module):
    with pytest.raises(ValueError, match="nn.Linear"):
        lora.LoRALinear(module, r=1, alpha=1.0)


def test_lora_linear_does_not_wrap_itself_and_checks_inputs():
    m = lora.LoRALinear(nn.Linear(4, 4), r=1, alpha=1.0)
    with pytest.raises(ValueError, match="nn.Linear"):
        lora.LoRALinear(m, r=1, alpha=1.0)
    with pytest.raises(ValueError):
        m(torch.randn(2, 5))
    with pytest.raises(ValueError):
        m(torch.ones(2, 4, dtype=torch.long))


def test_merge_twice_and_unmerge_unmerged_raise():
    m = lora.LoRALinear(nn.Linear(4, 4), r=1, alpha=1.0)
    with pytest.raises(ValueError, match="not merged"):
        m.unmerge()
    m.merge()
    with pytest.raises(ValueError, match="already merged"):
        m.merge()
    model = lora.apply_lora(_gpt(), r=1, alpha=1.0)
    lora.merge_lora(model)
    with pytest.raises(ValueError):
        lora.merge_lora(model)


@pytest.mark.parametrize("kwargs", [dict(r=0), dict(alpha=0.0), dict(alpha=-2.0), dict(targets=()),
                                    dict(targets=("q", "x")), dict(targets=("q", "q")), dict(targets=("mlp",))])
def test_apply_lora_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        lora.apply_lora(_gpt(), **(dict(r=2, alpha=2.0) | kwargs))


def test_apply_lora_rejects_twice_and_non_gpt_and_no_adapters():
    model = lora.apply_lora(_gpt(), r=1, alpha=1.0)
    with pytest.raises(ValueError, match="already"):
        lora.apply_lora(model, r=1, alpha=1.0)
    with pytest.raises(ValueError, match="c_attn"):
        lora.apply_lora(nn.Sequential(nn.Linear(4, 4)), r=1, alpha=1.0)
    for fn in (lora.merge_lora, lora.unmerge_lora, lora.lora_state_dict):
        with pytest.raises(ValueError, match="no LoRA"):
            fn(_gpt())


def test_bench_lora_step_keys():
    out = lora.bench_lora_step(repeats=1, batch=1)
    for k in ("name", "ours_ms", "theirs_ms", "ratio", "lora_optim_bytes", "full_optim_bytes", "lora_trainable",
              "full_trainable", "optim_bytes_ratio"):
        assert k in out
    assert out["ours_ms"] > 0 and out["theirs_ms"] > 0
    assert out["lora_trainable"] == 4 * 2 * 4 * (96 + 96)  # 4 layers x (q, v) x r = 4 x (in + out)
    assert out["lora_optim_bytes"] < 0.05 * out["full_optim_bytes"]
