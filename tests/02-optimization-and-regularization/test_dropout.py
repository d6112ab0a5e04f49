"""Tests for 02-optimization-and-regularization/04-dropout/dropout.py (Srivastava et al. 2014)."""

import math

import pytest
import torch
import torch.nn.functional as F

import common

D = common.topic("dropout")

N = 200_000  # entries in the statistics tests: binomial std of the kept fraction ~ 1e-3


def _binomial_tol(keep, n=N, sigmas=5):
    return sigmas * math.sqrt(keep * (1 - keep) / n)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_keep_rate_and_scaling_match_f_dropout(p):
    x = torch.ones(N, dtype=torch.float64)
    ours = D.dropout(x, p, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    ref = F.dropout(x, p, training=True)
    keep, tol = 1 - p, _binomial_tol(1 - p)
    for out in (ours, ref):
        kept = out != 0
        assert abs(kept.double().mean().item() - keep) <= tol  # fraction kept ~ Binomial(N, keep) / N
        assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / keep), rtol=0, atol=1e-12)  # 1 / (1 - p)
        assert abs(out.mean().item() - 1.0) <= tol / keep  # E[output] = input
    assert abs((ours != 0).double().mean() - (ref != 0).double().mean()).item() <= 2 * tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_seed_gives_f_dropouts_exact_output_and_gradient_on_cpu(dtype):
    # on the CPU PyTorch builds F.dropout from the same ops (bernoulli_ mask, divide, multiply)
    x = torch.randn(300, 40, dtype=dtype, requires_grad=True)
    gy = torch.randn(300, 40, dtype=dtype)
    torch.manual_seed(0)
    ours = D.dropout(x, 0.3)
    torch.manual_seed(0)
    ref = F.dropout(x, 0.3, training=True)
    assert (ours - ref).abs().max().item() <= 1e-10
    (g_ours,), (g_ref,) = torch.autograd.grad(ours, x, gy), torch.autograd.grad(ref, x, gy)
    assert (g_ours - g_ref).abs().max().item() <= 1e-10


def test_mask_is_random_and_seeded():
    x = torch.ones(1000)
    a = D.dropout(x, 0.5, generator=torch.Generator().manual_seed(1))
    b = D.dropout(x, 0.5, generator=torch.Generator().manual_seed(1))
    c = D.dropout(x, 0.5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(D.dropout(x, 0.5), D.dropout(x, 0.5))  # fresh mask each call


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eval_mode_and_p_zero_are_the_identity(dtype):
    x = torch.randn(7, 5, 3, dtype=dtype)
    assert torch.equal(D.dropout(x, 0.5, training=False), x)
    assert torch.equal(D.dropout(x, 0.0, training=True), x)
    assert torch.equal(D.dropout(x, 0.5, training=False), F.dropout(x, 0.5, training=False))
    layer = D.Dropout(0.3).eval()
    assert torch.equal(layer(x), x)
    assert D.dropout(x, 0.5).shape == x.shape and D.dropout(x, 0.5).dtype == dtype


def test_gradient_equals_mask_times_scale():
    x = torch.randn(64, 32, dtype=torch.float64, requires_grad=True)
    y = D.dropout(x, 0.4, generator=torch.Generator().manual_seed(0))
    gy = torch.randn(64, 32, dtype=torch.float64)
    (gx,) = torch.autograd.grad(y, x, gy)
    scale = (y.detach() / x.detach())  # the mask times 1 / keep, read off the forward pass
    assert set(torch.unique(scale.round(decimals=10)).tolist()) <= {0.0, round(1 / 0.6, 10)}
    assert (gx - gy * scale).abs().max().item() <= 1e-12


def test_gradcheck_with_a_fixed_mask():
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    # the same generator state for every evaluation: the mask is a fixed function of the seed
    assert torch.autograd.gradcheck(lambda t: D.dropout(t, 0.5, generator=torch.Generator().manual_seed(3)), (x,))


def test_layer_matches_nn_dropout_statistics_in_train_mode():
    layer = D.Dropout(0.5).train()
    ref = torch.nn.Dropout(0.5).train()
    x = torch.ones(N)
    assert abs((layer(x) != 0).float().mean().item() - (ref(x) != 0).float().mean().item()) <= 2 * _binomial_tol(0.5)
    assert "p=0.5" in repr(layer)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan"), "0.5", None, True])
def test_bad_p_raises(p):
    with pytest.raises(ValueError, match="p"):
        D.dropout(torch.ones(3), p)
    with pytest.raises(ValueError):
        D.Dropout(p)
    with pytest.raises(ValueError):
        D.DropoutMLP(p_hidden=p)
    with pytest.raises(ValueError):
        D.DropoutMLP(p_input=p)


@pytest.mark.parametrize("bad", [torch.tensor([1, 2, 3]), [0.0, 1.0], None])
def test_dropout_rejects_non_float_tensors(bad):
    with pytest.raises(ValueError):
        D.dropout(bad, 0.5)


def test_max_norm_clips_only_long_rows_and_matches_torch_renorm():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(50, 30, generator=g, dtype=torch.float64) * torch.linspace(0.01, 1.0, 50, dtype=torch.float64)[:, None]
    before = w.clone()
    out = D.max_norm_(w, 2.0)
    assert out is w  # in place, returns it
    norms, old = w.norm(dim=1), before.norm(dim=1)
    assert (norms <= 2.0 + 1e-12).all()
    assert torch.allclose(norms[old > 2.0], torch.full_like(norms[old > 2.0], 2.0), atol=1e-12)  # onto the sphere
    assert torch.equal(w[old <= 2.0], before[old <= 2.0])  # inside the ball: untouched
    assert (old > 2.0).any() and (old <= 2.0).any()
    cos = (w * before).sum(1) / (norms * old)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-12)  # direction kept
    assert (w - torch.renorm(before, 2, 0, 2.0)).abs().max().item() <= 1e-6


def test_max_norm_conv_weight_and_zero_rows():
    w = torch.randn(4, 3, 5, 5) * 3
    w[1] = 0
    D.max_norm_(w, 1.5)
    assert torch.allclose(w.flatten(1).norm(dim=1)[[0, 2, 3]], torch.full((3,), 1.5), atol=1e-5)
    assert (w[1] == 0).all() and torch.isfinite(w).all()


@pytest.mark.parametrize("c", [0, 0.0, -1.0, float("inf"), "2"])
def test_max_norm_bad_c_raises(c):
    with pytest.raises(ValueError, match="c"):
        D.max_norm_(torch.ones(3, 3), c)
    with pytest.raises(ValueError):
        D.DropoutMLP().max_norm_(c)


def test_max_norm_bad_weight_raises():
    with pytest.raises(ValueError):
        D.max_norm_(torch.ones(3), 1.0)
    with pytest.raises(ValueError):
        D.max_norm_(torch.ones(3, 3, dtype=torch.long), 1.0)


def test_model_max_norm_uses_the_papers_units():
    torch.manual_seed(0)
    net = D.DropoutMLP(in_features=8, hidden=(16, 16), num_classes=3, p_input=0.2, p_hidden=0.5)
    with torch.no_grad():
        for layer in net.layers:
            layer.weight.mul_(100)
    bounds = net.max_norm_(2.0)
    assert bounds == pytest.approx([1.6, 1.0, 1.0])  # keep * c: inverted dropout trains keep * W
    for layer, b in zip(net.layers, bounds):
        assert torch.allclose(layer.weight.norm(dim=1), torch.full((layer.out_features,), b), atol=1e-5)
    plain = D.DropoutMLP(in_features=8, hidden=(16,), num_classes=3, p_input=0.0, p_hidden=0.0)
    assert plain.max_norm_(3.0) == [3.0, 3.0]


@pytest.mark.parametrize("hidden", [(16,), (16, 8), (4, 4, 4)])
def test_mlp_shapes_and_modes(hidden):
    torch.manual_seed(0)
    net = D.DropoutMLP(in_features=12, hidden=hidden, num_classes=5)
    x = torch.randn(9, 3, 4)
    assert net(x).shape == (9, 5)
    assert len(net.layers) == len(hidden) + 1 and [d.p for d in net.drops] == [0.2] + [0.5] * len(hidden)
    net.eval()
    assert torch.equal(net(x), net(x))  # deterministic in eval mode
    net.train()
    assert not torch.equal(net(x), net(x))  # thinned nets in training mode


def test_mlp_without_dropout_is_the_standard_net():
    torch.manual_seed(0)
    net = D.DropoutMLP(in_features=6, hidden=(8,), num_classes=3, p_input=0.0, p_hidden=0.0).train()
    x = torch.randn(5, 6)
    ref = net.layers[1](F.relu(net.layers[0](x)))
    assert torch.equal(net(x), ref)


@pytest.mark.parametrize("kwargs", [dict(hidden=()), dict(hidden=(8, 0)), dict(hidden=8), dict(in_features=0),
                                    dict(num_classes=1), dict(hidden=(8.5,))])
def test_mlp_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        D.DropoutMLP(**kwargs)


def test_mlp_rejects_bad_input():
    net = D.DropoutMLP(in_features=4, hidden=(8,))
    for bad in (torch.randn(3, 5), torch.zeros(3, 4, dtype=torch.long), torch.randn(0, 4)):
        with pytest.raises(ValueError):
            net(bad)


def test_weight_scaling_is_eval_mode_and_exact_for_one_linear_softmax_layer():
    # dropout on the inputs of one softmax layer: the normalised geometric mean over all 2^n masks
    # (weighted by their probabilities) equals the eval-mode net exactly
    torch.manual_seed(0)
    n, keep = 8, 0.7
    net = D.DropoutMLP(in_features=n, hidden=(4,), num_classes=3, p_input=1 - keep, p_hidden=0.0).double()
    layer = torch.nn.Linear(n, 3).double()
    x = torch.randn(5, n, dtype=torch.float64)
    masks = torch.tensor([[(m >> i) & 1 for i in range(n)] for m in range(2 ** n)], dtype=torch.float64)
    prob = (keep ** masks.sum(1)) * ((1 - keep) ** (n - masks.sum(1)))  # (2^n,)
    with torch.no_grad():
        logp = layer(x[None] * masks[:, None] / keep).log_softmax(-1)  # (2^n, 5, 3)
        geo = (prob[:, None, None] * logp).sum(0).softmax(-1)  # normalised weighted geometric mean
        assert (geo - layer(x).softmax(-1)).abs().max().item() <= 1e-12
    probs = D.weight_scaling_predict(net, x, batch_size=2)
    assert net.training  # mode restored
    net.eval()
    assert torch.allclose(probs, net(x).softmax(-1), atol=1e-12, rtol=0)
    assert torch.allclose(probs.sum(1), torch.ones(5, dtype=torch.float64))


def test_mc_predict_restores_mode_and_approaches_weight_scaling():
    torch.manual_seed(0)
    net = D.DropoutMLP(in_features=10, hidden=(32,), num_classes=4, p_input=0.0, p_hidden=0.5).double().eval()
    x = torch.randn(50, 10, dtype=torch.float64)
    torch.manual_seed(1)
    mc = D.mc_predict(net, x, samples=2000, batch_size=16)
    assert not net.training  # mode restored
    ws = D.weight_scaling_predict(net, x)
    assert mc.shape == ws.shape == (50, 4)
    assert torch.allclose(mc.sum(1), torch.ones(50, dtype=torch.float64))
    one = D.mc_predict(net, x, samples=1)
    # averaging many thinned nets lands much closer to the weight-scaled net than a single thinned net
    assert (mc - ws).abs().mean() < 0.5 * (one - ws).abs().mean()
    assert (mc - ws).abs().max().item() < 0.1


def test_mc_probs_are_running_averages_of_one_sequence():
    torch.manual_seed(0)
    net = D.DropoutMLP(in_features=6, hidden=(8,), num_classes=3).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    torch.manual_seed(5)
    p1, p3 = D.mc_probs(net, x, [1, 3])
    torch.manual_seed(5)
    passes = [D.mc_predict(net, x, 1) for _ in range(3)]
    assert torch.allclose(p1, passes[0], atol=1e-12) and torch.allclose(p3, sum(passes) / 3, atol=1e-12)
    with pytest.raises(ValueError):
        D.mc_probs(net, x, [3, 1])
    with pytest.raises(ValueError):
        D.mc_probs(net, x, [])


def test_mc_error_curve_counts_errors():
    torch.manual_seed(0)
    net = D.DropoutMLP(in_features=6, hidden=(8,), num_classes=3, p_input=0.0, p_hidden=0.0)
    x = torch.randn(40, 6)
    y = net(x).argmax(1)  # without dropout every pass is the same net: 0% error on its own labels
    curve = D.mc_error_curve(net, x, y, [1, 4])
    assert curve == {1: 0.0, 4: 0.0}
    assert D.mc_error_curve(net, x, (y + 1) % 3, [2]) == {2: 100.0}
    with pytest.raises(ValueError):
        D.mc_error_curve(net, x, y[:-1], [1])
    with pytest.raises(ValueError):
        D.mc_error_curve(net, x, y.float(), [1])


@pytest.mark.parametrize("kwargs", [dict(samples=0), dict(samples=2.5), dict(samples=3, batch_size=0)])
def test_mc_predict_bad_arguments(kwargs):
    net = D.DropoutMLP(in_features=4, hidden=(8,))
    with pytest.raises(ValueError):
        D.mc_predict(net, torch.randn(3, 4), **kwargs)
    with pytest.raises(ValueError):
        D.mc_predict(net, torch.zeros(3, 4, dtype=torch.long), 2)
    with pytest.raises(ValueError):
        D.weight_scaling_predict(net, torch.randn(3, 4), batch_size=0)


def test_dropout_net_learns_with_max_norm():
    torch.manual_seed(0)
    x = torch.randn(256, 10)
    y = (x[:, 0] * x[:, 1] > 0).long()
    net = D.DropoutMLP(in_features=10, hidden=(64, 64), num_classes=2, p_input=0.0, p_hidden=0.5)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(300):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        net.max_norm_(3.0)
    assert all((layer.weight.norm(dim=1) <= b + 1e-5).all() for layer, b in zip(net.layers, [3.0, 1.5, 1.5]))
    net.eval()
    assert (net(x).argmax(1) == y).float().mean() > 0.95


def test_bench_dropout_returns_times():
    r = D.bench_dropout(repeats=2, shape=(8, 16))
    assert set(r) == {"ours_ms", "theirs_ms", "ratio", "name"}
    assert r["ours_ms"] > 0 and r["theirs_ms"] > 0 and r["ratio"] == pytest.approx(r["ours_ms"] / r["theirs_ms"])
    with pytest.raises(ValueError):
        D.bench_dropout(repeats=0)
