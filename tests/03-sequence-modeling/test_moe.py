"""Tests for 03-sequence-modeling/07-mixture-of-experts/moe.py (Shazeer et al. 2017)."""

import math

import pytest
import torch
import torch.nn.functional as F

import common

moe = common.topic("moe")

D = torch.float64


def _layer(n=6, k=2, d=5, h=7, seed=0, **kw):
    torch.manual_seed(seed)
    layer = moe.MoE(d, n, h, k=k, **kw).double()
    torch.nn.init.normal_(layer.gate.w_gate, std=0.5)
    torch.nn.init.normal_(layer.gate.w_noise, std=0.5)
    return layer


@pytest.mark.parametrize("n,k", [(6, 1), (6, 2), (8, 3), (4, 4)])
def test_sparse_equals_dense_reference_outputs_and_grads(n, k):
    layer = _layer(n=n, k=k)
    x = torch.randn(40, 5, dtype=D, requires_grad=True)
    gates, _ = layer.gate(x, noise=False)
    assert ((gates > 0).sum(1) == k).all()
    ys = moe.sparse_moe(x, gates, layer.experts)
    yd = moe.dense_moe(x, gates, layer.experts)
    assert ys.shape == yd.shape == (40, 5)
    assert (ys - yd).abs().max().item() < 1e-12
    w = torch.randn(40, 5, dtype=D)
    leaves = [x, *layer.parameters()]
    gs = torch.autograd.grad((ys * w).sum(), leaves, allow_unused=True, retain_graph=True)
    gd = torch.autograd.grad((yd * w).sum(), leaves, allow_unused=True)
    for a, b in zip(gs, gd):
        if a is None or b is None:
            assert a is None and b is None or (a if a is not None else b).abs().max() == 0
            continue
        assert (a - b).abs().max().item() < 1e-12


def test_gates_are_softmax_over_top_k_of_h():
    layer = _layer(n=6, k=2)
    x = torch.randn(10, 5, dtype=D)
    gates, load = layer.gate(x, noise=False)
    h = x @ layer.gate.w_gate
    keep = torch.full_like(h, -math.inf)
    top = h.topk(2, dim=1).indices
    keep.scatter_(1, top, h.gather(1, top))
    assert torch.allclose(gates, F.softmax(keep, dim=1), atol=1e-15)
    assert torch.allclose(gates.sum(1), torch.ones(10, dtype=D))
    assert torch.equal(load, (gates > 0).sum(0).to(D))  # without noise: the hard counts


def test_smooth_load_matches_monte_carlo_probability():
    """P(x, i) of eq. 9 is the chance that expert i is chosen when only its own noise is redrawn."""
    torch.manual_seed(3)
    layer = _layer(n=5, k=2)
    x = torch.randn(1, 5, dtype=D)
    clean = x @ layer.gate.w_gate
    std = F.softplus(x @ layer.gate.w_noise)
    torch.manual_seed(7)
    _, load = layer.gate(x, noise=True)
    torch.manual_seed(7)
    h = clean + torch.randn_like(clean) * std  # the same draw as inside the gate
    draws = 200_000
    for i in range(5):
        hi = clean[0, i] + torch.randn(draws, dtype=D) * std[0, i]
        others = torch.cat([h[0, :i], h[0, i + 1:]])
        kth = others.topk(2).values[-1]  # kth_excluding(H, k=2, i)
        assert abs((hi > kth).double().mean().item() - load[i].item()) < 0.01


def test_load_estimator_has_gradient_and_zero_init_is_uniform():
    torch.manual_seed(0)
    layer = moe.MoE(4, 8, 6, k=2, w_importance=0.1, w_load=0.1)
    x = torch.randn(500, 4)
    _, aux = layer(x)
    assert aux["importance"].shape == aux["load"].shape == (8,)
    assert torch.allclose(aux["importance"].sum(), torch.tensor(500.0), atol=1e-3)
    # zero-initialised W_g, W_noise: only noise, so the routing starts balanced (Appendix A)
    assert (aux["importance"].std() / aux["importance"].mean()).item() < 0.2
    aux["loss"].backward()
    assert layer.gate.w_noise.grad.abs().sum() > 0 and layer.gate.w_gate.grad.abs().sum() > 0


def test_cv_squared():
    v = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert torch.isclose(moe.cv_squared(v), v.var(unbiased=False) / v.mean() ** 2)
    assert moe.cv_squared(torch.ones(5)).item() == 0.0
    assert math.isclose(moe.cv_squared(torch.tensor([4.0, 0, 0, 0])).item(), 3.0, rel_tol=1e-6)  # sqrt(n-1)^2


def test_moe_shapes_rank3_and_dense_baseline():
    layer = moe.MoE(6, 4, 5, k=2)
    y, aux = layer(torch.randn(3, 7, 6))
    assert y.shape == (3, 7, 6) and aux["loss"].shape == ()
    assert aux["counts"].shape == (4,) and aux["counts"].sum().item() == 21 * 2  # every token goes to k experts
    y2, aux2 = moe.DenseFFN(6, 10)(torch.randn(3, 7, 6))
    assert y2.shape == (3, 7, 6) and aux2["loss"].item() == 0.0
    lm = moe.CharLM(11, 4, 3, 6, layer)
    logits, _ = lm(torch.randint(0, 11, (9, 4)))
    assert logits.shape == (9, 11)


def test_learning_sanity_moe_lm_fits_a_pattern():
    torch.manual_seed(0)
    seq = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7] * 40)
    lm = moe.CharLM(8, 3, 4, 16, moe.MoE(16, 4, 8, k=2, w_importance=0.1, w_load=0.1))
    opt = torch.optim.Adam(lm.parameters(), 1e-2)
    x = seq.unfold(0, 3, 1)[:-1]
    y = seq[3:]
    for _ in range(150):
        logits, aux = lm(x)
        loss = F.cross_entropy(logits, y) + aux["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    lm.eval()
    assert F.cross_entropy(lm(x)[0], y).item() < 0.05


def test_bench_moe_keys():
    r = moe.bench_moe(num_experts=4, tokens=64, dim=8, hidden=8, repeats=1)
    assert {"ours_ms", "theirs_ms", "ratio", "name"} <= set(r)
    assert r["ratio"] > 0 and math.isclose(r["ratio"], r["ours_ms"] / r["theirs_ms"])


def test_bad_input():
    with pytest.raises(ValueError, match="k must be an int <= 4"):
        moe.MoE(6, 4, 5, k=5)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        moe.MoE(6, 4, 5, k=0)
    with pytest.raises(ValueError, match="k must be an int <= 3"):
        moe.NoisyTopKGate(6, 3, 4)
    layer = moe.MoE(6, 4, 5, k=2)
    with pytest.raises(ValueError, match="rank 2 or 3"):
        layer(torch.randn(6))
    with pytest.raises(ValueError, match="rank 2 or 3"):
        layer(torch.randn(2, 3, 4, 6))
    with pytest.raises(ValueError, match="6 features"):
        layer(torch.randn(3, 5))
    with pytest.raises(ValueError, match="floating point"):
        layer(torch.ones(3, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="empty batch"):
        layer(torch.randn(0, 6))
    with pytest.raises(ValueError, match="rank 2"):
        layer.gate(torch.randn(2, 3, 6))
    with pytest.raises(ValueError, match="gates must have shape"):
        moe.sparse_moe(torch.randn(3, 6), torch.rand(3, 5), layer.experts)
    with pytest.raises(ValueError, match="w_load must be >= 0"):
        moe.MoE(6, 4, 5, w_load=-1.0)
    with pytest.raises(ValueError, match="rank 1"):
        moe.cv_squared(torch.ones(2, 2))
    with pytest.raises(ValueError, match="rank 2"):
        moe.DenseFFN(6, 8)(torch.randn(6))
    lm = moe.CharLM(11, 4, 3, 6, layer)
    with pytest.raises(ValueError, match="4 characters per row"):
        lm(torch.randint(0, 11, (2, 5)))
    with pytest.raises(ValueError, match="hold integers"):
        lm(torch.randn(2, 4))
    with pytest.raises(ValueError, match="num_experts must be an int >= 2"):
        moe.bench_moe(num_experts=1)
