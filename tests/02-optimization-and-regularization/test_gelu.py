"""Tests for 02-optimization-and-regularization/07-gelu/gelu.py (Hendrycks & Gimpel 2016)."""

import math

import pytest
import torch
import torch.nn.functional as F

import common

gelu = common.topic("gelu")

# Elementwise, relative to max(1, |reference value|) and, for gradients, to max(1, |upstream gradient|). float32:
# 2e-6, because near saturation (x ~ -5) tanh(u) rounds to ~-1 and both ours and PyTorch's fused kernel are then
# about 1e-6 (per unit upstream gradient) from the float64 answer, in different directions.
TOL = {torch.float32: 2e-6, torch.float64: 1e-10}


def _inputs(dtype):
    g = torch.Generator().manual_seed(0)
    extremes = [0.0, -0.0, 1e-30, -1e-30, 3.0, -3.0, 6.0, -6.0, 30.0, -30.0, 200.0, -200.0, 1e4, -1e4]
    return torch.cat([4 * torch.randn(20_000, generator=g, dtype=dtype), torch.tensor(extremes, dtype=dtype)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_torch_values_and_grads(approximate, dtype):
    x = _inputs(dtype).requires_grad_()
    ours, ref = gelu.gelu(x, approximate), F.gelu(x, approximate=approximate)
    assert ours.dtype == dtype and ours.shape == x.shape
    assert ((ours - ref).abs() <= TOL[dtype] * ref.abs().clamp_min(1.0)).all()
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    (g_ours,), (g_ref,) = torch.autograd.grad(ours, x, gy), torch.autograd.grad(ref, x, gy)
    assert ((g_ours - g_ref).abs() <= TOL[dtype] * torch.maximum(g_ref.abs(), gy.abs()).clamp_min(1.0)).all()


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_gradcheck_float64(approximate):
    x = (3 * torch.randn(30, dtype=torch.float64, generator=torch.Generator().manual_seed(2))).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: gelu.gelu(t, approximate), (x,))
    assert torch.autograd.gradgradcheck(lambda t: gelu.gelu(t, approximate), (x,))  # the backward is differentiable


def test_gelu_gradients_by_hand():
    # d/dx x Phi(x) at 0 is Phi(0) = 1/2; at 1 it is Phi(1) + phi(1)
    x = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    gelu.gelu(x).sum().backward()
    phi1 = math.exp(-0.5) / math.sqrt(2 * math.pi)
    cdf1 = 0.5 * math.erfc(-1 / math.sqrt(2))
    assert x.grad.tolist() == pytest.approx([0.5, cdf1 + phi1], abs=1e-15)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_finite_at_extremes_and_relu_like_tails(approximate):
    x = torch.tensor([-1e30, -1e4, -40.0, 40.0, 1e4, 1e30], requires_grad=True)
    y = gelu.gelu(x, approximate)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert torch.equal(y, torch.tensor([0.0, 0.0, 0.0, 40.0, 1e4, 1e30]))
    assert x.grad.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def test_normal_cdf_matches_erf_and_keeps_the_left_tail():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    assert torch.allclose(gelu.normal_cdf(x), 0.5 * (1 + torch.erf(x / math.sqrt(2))), atol=1e-15)
    tail = gelu.normal_cdf(torch.tensor([-10.0], dtype=torch.float64)).item()
    assert tail == pytest.approx(7.619853024160527e-24, rel=1e-12)  # 1 + erf would round this to 0


def test_module_and_approximation_are_close():
    x = torch.linspace(-6, 6, 2001, dtype=torch.float64)
    assert torch.equal(gelu.GELU("tanh")(x), gelu.gelu(x, "tanh"))
    assert torch.equal(gelu.GELU()(x), gelu.gelu(x))
    gap = (gelu.gelu(x) - gelu.gelu(x, "tanh")).abs().max().item()
    assert 1e-4 < gap < 1e-3  # the tanh form is an approximation, a good one
    assert "tanh" in repr(gelu.GELU("tanh"))


@pytest.mark.parametrize("bad", ["sigmoid", "erf", "None", None, 1, "TANH"])
def test_unknown_approximation_is_rejected_naming_the_choices(bad):
    with pytest.raises(ValueError, match="'none', 'tanh'"):
        gelu.gelu(torch.zeros(3), bad)
    with pytest.raises(ValueError, match="'none', 'tanh'"):
        gelu.GELU(bad)


@pytest.mark.parametrize("bad", [torch.tensor([1, 2, 3]), [0.0, 1.0], None])
def test_gelu_rejects_non_float_tensors(bad):
    with pytest.raises(ValueError):
        gelu.gelu(bad)
    with pytest.raises(ValueError):
        gelu.stochastic_gelu(bad)
    with pytest.raises(ValueError):
        gelu.normal_cdf(bad)


def test_stochastic_gelu_is_a_mask_whose_mean_is_the_gelu():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.7, 2.5], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    n = 40_000
    draws = torch.stack([gelu.stochastic_gelu(x, generator=g) for _ in range(n)])  # (n, 5)
    assert ((draws == 0) | (draws == x)).all()  # each entry is kept whole or zeroed
    keep = (draws != 0).double().mean(0)[[0, 1, 3, 4]]
    phi = gelu.normal_cdf(x)[[0, 1, 3, 4]]
    se = (phi * (1 - phi) / n).sqrt()
    assert ((keep - phi).abs() < 5 * se).all()  # keep rate Phi(x), within 5 standard errors
    assert ((draws.mean(0) - gelu.gelu(x)).abs() < 5 * x.abs() * 0.5 / n ** 0.5 + 1e-12).all()


def test_unit_norm_rows():
    w = torch.empty(64, 300)
    gelu.unit_norm_rows_(w)
    assert torch.allclose(w.norm(dim=1), torch.ones(64), atol=1e-6)
    assert w.std() > 0 and abs(w.mean().item()) < 0.01
    with pytest.raises(ValueError):
        gelu.unit_norm_rows_(torch.empty(3))


@pytest.mark.parametrize("activation", list(gelu.ACTIVATIONS))
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_mlp_shapes_init_and_layers(activation, dropout):
    torch.manual_seed(0)
    net = gelu.MLP(depth=3, width=16, activation=activation, dropout=dropout, in_features=12, num_classes=5)
    linears = [m for m in net.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(12, 16), (16, 16), (16, 16), (16, 5)]
    for m in linears:
        assert torch.allclose(m.weight.norm(dim=1), torch.ones(m.out_features), atol=1e-6)
        assert torch.equal(m.bias, torch.zeros(m.out_features))
    n_drop = sum(isinstance(m, torch.nn.Dropout) for m in net.net)
    assert n_drop == (3 if dropout else 0)
    assert net(torch.randn(7, 3, 4)).shape == (7, 5)


def test_mlp_default_is_the_papers_net_and_uses_our_gelu():
    net = gelu.MLP()
    assert sum(isinstance(m, torch.nn.Linear) for m in net.net) == 9  # 8 hidden layers + output
    assert all(m.approximate == "none" for m in net.net if isinstance(m, gelu.GELU))
    torch.manual_seed(0)
    small = gelu.MLP(depth=2, width=8, activation="gelu_tanh", in_features=4)
    x = torch.randn(5, 4)
    lin = [m for m in small.net if isinstance(m, torch.nn.Linear)]
    h = F.gelu(lin[1](F.gelu(lin[0](x), approximate="tanh")), approximate="tanh")
    assert torch.allclose(small(x), lin[2](h), atol=1e-6)


def test_mlp_dropout_only_in_training_mode():
    torch.manual_seed(0)
    net = gelu.MLP(depth=2, width=32, dropout=0.5, in_features=6)
    x = torch.randn(4, 6)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    assert not torch.equal(net(x), net(x))


@pytest.mark.parametrize(
    "kwargs",
    [dict(depth=0), dict(depth=2.5), dict(width=0), dict(activation="swish"), dict(activation=None),
     dict(dropout=1.0), dict(dropout=-0.1), dict(dropout="0.5"), dict(num_classes=1), dict(in_features=0)],
)
def test_mlp_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        gelu.MLP(**kwargs)


def test_mlp_rejects_bad_input():
    net = gelu.MLP(depth=2, width=8, in_features=4)
    for bad in (torch.randn(3, 5), torch.zeros(3, 4, dtype=torch.long), torch.randn(0, 4)):
        with pytest.raises(ValueError):
            net(bad)


def test_make_activation():
    assert isinstance(gelu.make_activation("relu"), torch.nn.ReLU)
    assert gelu.make_activation("elu").alpha == 1.0
    assert gelu.make_activation("gelu_tanh").approximate == "tanh"
    with pytest.raises(ValueError):
        gelu.make_activation("silu")


def test_gelu_net_learns_a_toy_problem():
    torch.manual_seed(0)
    x = torch.randn(256, 10)
    y = (x[:, 0] * x[:, 1] > 0).long()
    net = gelu.MLP(depth=3, width=32, activation="gelu", in_features=10, num_classes=2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(200):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (net(x).argmax(1) == y).float().mean() > 0.95


def test_bench_gelu_returns_its_keys():
    r = gelu.bench_gelu(repeats=1, shape=(8, 16))
    assert set(r) == {"ours_ms", "theirs_ms", "ratio", "name"}
    assert r["ours_ms"] > 0 and r["theirs_ms"] > 0 and r["ratio"] == pytest.approx(r["ours_ms"] / r["theirs_ms"])
    with pytest.raises(ValueError):
        gelu.bench_gelu(repeats=0)
    with pytest.raises(ValueError):
        gelu.bench_gelu(approximate="fast")
