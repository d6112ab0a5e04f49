"""Tests for 02-optimization-and-regularization/05-batch-norm/batchnorm.py (Ioffe & Szegedy 2015)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import common

bn = common.topic("batchnorm")

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
REF = {2: nn.BatchNorm1d, 4: nn.BatchNorm2d}


def _pair(shape, dtype=torch.float64, momentum=0.1, affine=True):
    """Our BatchNorm and PyTorch's with the same (random) gamma and beta."""
    ref = REF[len(shape)](shape[1], momentum=momentum, affine=affine).to(dtype)
    if affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-1.0, 1.0)
    ours = bn.BatchNorm(shape[1], momentum=momentum, affine=affine).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
@pytest.mark.parametrize("shape", [(16, 7), (5, 3, 4, 6)])
def test_matches_torch_in_train_then_eval_mode(shape, momentum, affine, dtype):
    torch.manual_seed(0)
    ours, ref = _pair(shape, dtype, momentum, affine)
    tol = TOL[dtype]
    for step in range(4):  # train: outputs, gradients and running statistics after every step
        x = (3 * torch.randn(shape, dtype=dtype) + 2).requires_grad_()
        x_ref = x.detach().clone().requires_grad_()
        y, y_ref = ours(x), ref(x_ref)
        gy = torch.randn(shape, dtype=dtype)
        y.backward(gy)
        y_ref.backward(gy)
        assert y.shape == shape and y.dtype == dtype
        assert _max_diff(y, y_ref) <= tol
        assert _max_diff(x.grad, x_ref.grad) <= tol
        assert _max_diff(ours.running_mean, ref.running_mean) <= tol
        assert _max_diff(ours.running_var, ref.running_var) <= tol
        assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == step + 1
        if affine:
            assert _max_diff(ours.weight.grad, ref.weight.grad) <= tol * 10
            assert _max_diff(ours.bias.grad, ref.bias.grad) <= tol * 10
    ours.eval()
    ref.eval()
    for n in (1, 4):  # eval works at batch size 1, with the running estimates
        x = torch.randn((n, *shape[1:]), dtype=dtype, requires_grad=True)
        x_ref = x.detach().clone().requires_grad_()
        y, y_ref = ours(x), ref(x_ref)
        assert _max_diff(y, y_ref) <= tol
        y.sum().backward()
        y_ref.sum().backward()
        assert _max_diff(x.grad, x_ref.grad) <= tol


def test_running_variance_is_unbiased_and_normalisation_biased():
    layer = bn.BatchNorm(1, momentum=1.0, affine=False)  # momentum 1: the running values are this batch's
    x = torch.tensor([[1.0], [2.0], [3.0], [6.0]], dtype=torch.float64)
    y = layer(x)
    assert layer.running_mean.item() == pytest.approx(3.0)
    assert layer.running_var.item() == pytest.approx(14 / 3)  # sum of squares 14 over m - 1 = 3
    assert y.squeeze().tolist() == pytest.approx(((x - 3) / (3.5 + 1e-5) ** 0.5).squeeze().tolist())  # 14 / 4


def test_momentum_none_is_the_plain_average_of_alg2():
    torch.manual_seed(0)
    layer = bn.BatchNorm(3, momentum=None)
    batches = [torch.randn(8, 3) * (k + 1) + k for k in range(5)]
    for x in batches:
        layer(x)
    assert torch.allclose(layer.running_mean, torch.stack([x.mean(0) for x in batches]).mean(0), atol=1e-6)
    assert torch.allclose(layer.running_var, torch.stack([x.var(0) for x in batches]).mean(0), atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 5), (1, 3, 1, 1)])
def test_one_value_per_channel_in_training_raises_like_torch(shape):
    ours, ref = _pair(shape)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ours(torch.randn(shape, dtype=torch.float64))
    with pytest.raises(ValueError):
        ref(torch.randn(shape, dtype=torch.float64))
    assert int(ours.num_batches_tracked) == 0
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn.batch_norm(torch.randn(shape), training=True)
    ours.eval()
    assert ours(torch.randn(shape, dtype=torch.float64)).shape == shape  # fine in eval mode


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(9, 4), (3, 4, 2, 5)])
def test_functional_matches_torch(shape, training):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 - 1
    w, b = torch.rand(4, generator=g, dtype=torch.float64) + 0.5, torch.randn(4, generator=g, dtype=torch.float64)
    rm, rv = torch.randn(4, generator=g, dtype=torch.float64), torch.rand(4, generator=g, dtype=torch.float64) + 0.5
    rm2, rv2 = rm.clone(), rv.clone()
    y = bn.batch_norm(x, rm, rv, w, b, training, 0.2, 1e-3)
    y_ref = F.batch_norm(x, rm2, rv2, w, b, training, 0.2, 1e-3)
    assert _max_diff(y, y_ref) <= 1e-10
    assert _max_diff(rm, rm2) <= 1e-10 and _max_diff(rv, rv2) <= 1e-10
    if training:
        y0 = bn.batch_norm(x, None, None, None, None, True)  # no running buffers, no affine
        assert _max_diff(y0, F.batch_norm(x, None, None, training=True)) <= 1e-10


def test_alg1_output_has_zero_mean_unit_variance_per_channel():
    x = torch.randn(32, 6, 3, 3, dtype=torch.float64) * 5 + 7
    y = bn.batch_norm(x, training=True, eps=1e-12)
    assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(6, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(y.var((0, 2, 3), unbiased=False), torch.ones(6, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("shape", [(6, 3), (3, 2, 2, 3)])
def test_handwritten_backward_gradcheck(shape):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(shape[1], generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: bn.batch_norm(x, None, None, w, b, True), (x, w, b))
    assert torch.autograd.gradcheck(lambda x: bn.batch_norm(x, None, None, None, None, True), (x,))


def test_sec33_scale_invariance():
    # BN(a W u) = BN(W u), d/du the same, d/dW scaled by 1/a (Sec. 3.3)
    torch.manual_seed(0)
    u = torch.randn(20, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(20, 5, dtype=torch.float64)
    y1 = bn.batch_norm(u @ w, training=True, eps=1e-300)  # eps -> 0: the identity is exact
    gu1, gw1 = torch.autograd.grad(y1, (u, w), gy)
    w2 = (7.0 * w).detach().requires_grad_()
    y2 = bn.batch_norm(u @ w2, training=True, eps=1e-300)
    gu2, gw2 = torch.autograd.grad(y2, (u, w2), gy)
    assert _max_diff(y1, y2) < 1e-10 and _max_diff(gu1, gu2) < 1e-10
    assert _max_diff(gw1 / 7.0, gw2) < 1e-10


def test_state_dict_names_match_torch():
    assert set(bn.BatchNorm(4).state_dict()) == set(nn.BatchNorm2d(4).state_dict())
    assert set(bn.BatchNorm(4, affine=False).state_dict()) == set(nn.BatchNorm1d(4, affine=False).state_dict())
    assert "momentum=None" in repr(bn.BatchNorm(4, momentum=None))


@pytest.mark.parametrize("bad", [torch.randn(4), torch.randn(4, 3, 5), torch.randn(2, 3, 4, 4, 1), None,
                                 [[1.0, 2.0]], torch.zeros(4, 3, dtype=torch.long), torch.randn(0, 3)])
def test_module_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        bn.BatchNorm(3)(bad)


def test_wrong_channel_count_names_what_was_expected():
    with pytest.raises(ValueError, match="expects 3 channels"):
        bn.BatchNorm(3)(torch.randn(4, 5))
    with pytest.raises(ValueError, match="expects 3 channels"):
        bn.BatchNorm(3)(torch.randn(4, 5, 2, 2))
    with pytest.raises(ValueError, match="rank 2 or 4"):
        bn.BatchNorm(3)(torch.randn(4, 3, 5))


@pytest.mark.parametrize("kwargs", [dict(num_features=0), dict(num_features=2.0), dict(num_features=3, eps=0.0),
                                    dict(num_features=3, eps=-1e-5), dict(num_features=3, momentum=1.5),
                                    dict(num_features=3, momentum=-0.1), dict(num_features=3, affine="yes")])
def test_module_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        bn.BatchNorm(**kwargs)


def test_functional_rejects_bad_arguments():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"running_mean must be a tensor of shape \(3,\)"):
        bn.batch_norm(x, torch.zeros(4), torch.ones(3), training=True)
    with pytest.raises(ValueError, match="weight"):
        bn.batch_norm(x, weight=[1.0, 1.0, 1.0], training=True)
    with pytest.raises(ValueError, match="needs running_mean and running_var"):
        bn.batch_norm(x, training=False)
    with pytest.raises(ValueError):
        bn.batch_norm(x, training=True, eps=0.0)
    with pytest.raises(ValueError):
        bn.batch_norm(x, training=True, momentum=2.0)
    with pytest.raises(ValueError):
        bn.batch_norm(torch.randn(4, 0), training=True)
    with pytest.raises(ValueError):
        bn.batch_norm(torch.randn(2, 3, 4), training=True)


@pytest.mark.parametrize("use_bn", [False, True])
def test_sigmoid_mlp_shapes_init_and_inputs(use_bn):
    torch.manual_seed(0)
    net = bn.SigmoidMLP((50, 40, 30), batch_norm=use_bn, in_features=12, num_classes=5, init_std=0.05)
    assert all((lin.bias is None) == use_bn for lin in net.linears)  # BN drops the bias (Sec. 3.2)
    assert (net.norms is not None) == use_bn
    assert abs(net.linears[0].weight.std().item() - 0.05) < 0.005
    logits, inputs = net(torch.randn(64, 3, 4), return_inputs=True)
    assert logits.shape == (64, 5) and [a.shape for a in inputs] == [(64, 50), (64, 40), (64, 30)]
    if use_bn:  # at init gamma = 1, beta = 0: every sigmoid input is standardised over the batch
        for a in inputs:
            assert torch.allclose(a.mean(0), torch.zeros(a.shape[1]), atol=1e-5)
            v = a.var(0, unbiased=False)  # 1 up to eps: var / (var + eps) with small pre-BN variances
            assert ((v > 0.95) & (v <= 1.0 + 1e-5)).all()
    else:  # small weights: the deeper sigmoid inputs are squeezed near 0
        assert inputs[-1].std().item() < 0.5


@pytest.mark.parametrize("kwargs", [dict(hidden=()), dict(hidden=(10, 0)), dict(hidden=10), dict(batch_norm=1),
                                    dict(init_std=0.0), dict(num_classes=1), dict(in_features=0)])
def test_sigmoid_mlp_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        bn.SigmoidMLP(**kwargs)


def test_sigmoid_mlp_rejects_bad_input():
    net = bn.SigmoidMLP((8,), in_features=4)
    with pytest.raises(ValueError, match="expects 4 input features"):
        net(torch.randn(3, 5))
    with pytest.raises(ValueError):
        net(torch.zeros(3, 4, dtype=torch.long))


def test_batch_normalised_mlp_learns_a_toy_problem():
    with common.threads(1):
        torch.manual_seed(0)
        x = torch.randn(256, 10)
        y = (x[:, 0] * x[:, 1] > 0).long()
        net = bn.SigmoidMLP((32, 32), batch_norm=True, in_features=10, num_classes=2, init_std=0.1)
        opt = torch.optim.SGD(net.parameters(), lr=1.0)
        for _ in range(300):
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        assert (net(x).argmax(1) == y).float().mean() > 0.95


def test_bench_batchnorm_returns_times():
    r = bn.bench_batchnorm(repeats=1, shape=(4, 3, 5, 5))
    assert set(r) == {"ours_ms", "theirs_ms", "ratio", "name"}
    assert r["ours_ms"] > 0 and r["theirs_ms"] > 0
    assert r["ratio"] == pytest.approx(r["ours_ms"] / r["theirs_ms"])
    with pytest.raises(ValueError):
        bn.bench_batchnorm(repeats=0)
    with pytest.raises(ValueError):
        bn.bench_batchnorm(shape=(4, 3))
