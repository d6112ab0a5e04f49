"""Tests for 01-deep-neural-networks/02-cnn/cnn.py (LeCun et al. 1989, 1998)."""

import pytest
import torch
import torch.nn.functional as F

import common

cnn = common.topic("cnn")

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def _close(a, r, dtype):
    """Max abs difference within TOL, relative to the reference's scale once entries exceed 1
    (float32 carries ~7 significant digits: a gradient of 40 cannot agree to 1e-5 absolutely)."""
    return (a - r).abs().max().item() <= TOL[dtype] * max(1.0, r.abs().max().item())


def _grads(y, inputs, g):
    return torch.autograd.grad(y, inputs, g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "stride,padding,c_in,c_out,kh,kw,bias",
    [
        (1, 0, 1, 6, 5, 5, True),
        (1, 2, 3, 4, 3, 3, True),
        (2, 1, 2, 5, 3, 3, False),
        (3, 2, 4, 3, 5, 5, True),
        (2, 0, 3, 2, 2, 4, True),  # rectangular kernel
    ],
)
def test_conv2d_matches_torch_values_and_grads(dtype, stride, padding, c_in, c_out, kh, kw, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, c_in, 9, 11, generator=g, dtype=dtype).requires_grad_()
    w = (0.3 * torch.randn(c_out, c_in, kh, kw, generator=g, dtype=dtype)).requires_grad_()
    b = torch.randn(c_out, generator=g, dtype=dtype).requires_grad_() if bias else None
    inputs = (x, w) + ((b,) if bias else ())
    y = cnn.conv2d(x, w, b, stride=stride, padding=padding)
    ref = F.conv2d(x, w, b, stride=stride, padding=padding)
    assert y.shape == ref.shape
    assert _close(y, ref, dtype)
    gy = torch.randn(ref.shape, generator=g, dtype=dtype)
    for a, r in zip(_grads(y, inputs, gy), _grads(ref, inputs, gy)):
        assert _close(a, r, dtype)


def test_conv2d_module_matches_torch_with_same_weights():
    torch.manual_seed(0)
    mine = cnn.Conv2d(3, 5, 3, stride=2, padding=1)
    ref = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1)
    with torch.no_grad():
        ref.weight.copy_(mine.weight)
        ref.bias.copy_(mine.bias)
    x = torch.randn(2, 3, 10, 10)
    assert torch.allclose(mine(x), ref(x), atol=1e-5)
    mine.impl = "torch"
    assert torch.allclose(mine(x), ref(x), atol=1e-6)


def test_connection_table_zeroes_unconnected_kernels():
    torch.manual_seed(0)
    c3 = cnn.Conv2d(6, 16, 5, connections=cnn.C3_TABLE)
    assert sum(len(c) for c in cnn.C3_TABLE) == 60
    assert c3.n_params() == 1516  # the paper's count for C3
    x = torch.randn(1, 6, 10, 10)
    x2 = x.clone()
    x2[:, 5] = torch.randn(10, 10)  # map 5 does not feed C3 map 0 (it sees 0, 1, 2)
    assert torch.equal(c3(x)[:, 0], c3(x2)[:, 0])
    assert not torch.equal(c3(x)[:, 15], c3(x2)[:, 15])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("k,stride,padding", [(2, None, 0), (3, 2, 1), (3, 1, 0), (2, 1, 1)])
def test_pooling_matches_torch_values_and_grads(dtype, kind, k, stride, padding):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 9, 8, generator=g, dtype=dtype).requires_grad_()
    mine = {"avg": cnn.avg_pool2d, "max": cnn.max_pool2d}[kind](x, k, stride, padding)
    ref = {"avg": F.avg_pool2d, "max": F.max_pool2d}[kind](x, k, stride, padding)
    assert mine.shape == ref.shape
    assert (mine - ref).abs().max().item() <= TOL[dtype]
    gy = torch.randn(ref.shape, generator=g, dtype=dtype)
    (a,), (r,) = _grads(mine, (x,), gy), _grads(ref, (x,), gy)
    assert (a - r).abs().max().item() <= TOL[dtype]


def test_pool_modules():
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(cnn.AvgPool2d(2)(x), cnn.avg_pool2d(x, 2))
    assert torch.equal(cnn.MaxPool2d(3, 2, 1)(x), cnn.max_pool2d(x, 3, 2, 1))


def test_subsampling_starts_as_average_and_has_two_params_per_map():
    s = cnn.Subsampling(6)
    assert sum(p.numel() for p in s.parameters()) == 12  # the paper's count for S2
    x = torch.randn(2, 6, 8, 8)
    assert torch.allclose(s(x), F.avg_pool2d(x, 2), atol=1e-6)


def test_scaled_tanh_maps_one_to_one():
    y = cnn.ScaledTanh()(torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(y, torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64), atol=1e-4)


def test_lenet5_shapes_and_parameter_count():
    torch.manual_seed(0)
    net = cnn.LeNet5()
    x = torch.randn(3, 1, 28, 28)
    assert net(x).shape == (3, 10)
    # C1 156 + S2 12 + C3 1516 + S4 32 + C5 48120 + F6 10164 + output 850 (linear, not RBF)
    assert net.n_params() == 60850
    assert cnn.LeNet5(c3_table=False, pool="avg").n_params() == 156 + 2416 + 48120 + 10164 + 850
    # the F.conv2d path gives the same logits
    assert torch.allclose(net(x), net.set_impl("torch")(x), atol=1e-5)


def test_matched_mlp_has_about_the_same_parameters():
    n = cnn.LeNet5().n_params()
    mlp = cnn.MLP(hidden=(cnn.matched_hidden(n),))
    assert abs(mlp.n_params() - n) / n < 0.02
    assert mlp(torch.randn(4, 1, 28, 28)).shape == (4, 10)


def test_lenet5_overfits_a_tiny_batch():
    torch.manual_seed(0)
    x = torch.randn(16, 1, 28, 28)
    y = torch.arange(16) % 10
    net = cnn.LeNet5()  # the unfold convolution, trained end to end
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(25):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.02
    assert (net(x).argmax(1) == y).all()


def test_translate_shifts_and_fills_with_zeros():
    x = torch.arange(1, 17, dtype=torch.float32).reshape(1, 1, 4, 4).repeat(2, 1, 1, 1)
    out = cnn.translate(x, torch.tensor([1, 0]), torch.tensor([0, -2]))
    assert torch.equal(out[0, 0, :, 1:], x[0, 0, :, :3]) and (out[0, 0, :, 0] == 0).all()
    assert torch.equal(out[1, 0, :2], x[1, 0, 2:]) and (out[1, 0, 2:] == 0).all()


def test_bench_conv_returns_times():
    r = cnn.bench_conv(repeats=1, batch=2, size=8)
    assert set(r) == {"unfold_ms", "conv2d_ms", "ratio", "name"}
    assert r["unfold_ms"] > 0 and r["conv2d_ms"] > 0
    assert r["ratio"] == pytest.approx(r["unfold_ms"] / r["conv2d_ms"])


def test_bad_inputs_raise_value_error():
    w = torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match="3 channels"):
        cnn.conv2d(torch.randn(1, 2, 8, 8), w)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        cnn.conv2d(torch.randn(3, 8, 8), w)
    with pytest.raises(ValueError, match="rank 4"):
        cnn.conv2d(torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3))
    with pytest.raises(ValueError, match="stride"):
        cnn.conv2d(torch.randn(1, 3, 8, 8), w, stride=0)
    with pytest.raises(ValueError, match="at least 3x3"):
        cnn.conv2d(torch.randn(1, 3, 2, 2), w)
    with pytest.raises(ValueError, match="bias"):
        cnn.conv2d(torch.randn(1, 3, 8, 8), w, torch.randn(3))
    with pytest.raises(ValueError, match="floating point"):
        cnn.conv2d(torch.ones(1, 3, 8, 8, dtype=torch.long), w)
    with pytest.raises(ValueError, match="dtype"):
        cnn.conv2d(torch.randn(1, 3, 8, 8, dtype=torch.float64), w)
    with pytest.raises(ValueError, match="square windows"):
        cnn.max_pool2d(torch.randn(1, 1, 8, 8), (2, 3))
    with pytest.raises(ValueError, match="padding <= kernel_size // 2"):
        cnn.avg_pool2d(torch.randn(1, 1, 8, 8), 2, padding=2)
    with pytest.raises(ValueError, match="impl"):
        cnn.Conv2d(1, 2, 3, impl="cuda")
    with pytest.raises(ValueError, match="3 input channels"):
        cnn.Conv2d(3, 2, 3, impl="torch")(torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        cnn.LeNet5()(torch.randn(2, 1, 16, 16))  # too small for C5
    with pytest.raises(ValueError, match="1 input channels"):
        cnn.LeNet5()(torch.randn(2, 3, 28, 28))  # wrong channel count
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        cnn.LeNet5()(torch.randn(1, 28, 28))  # wrong rank
    with pytest.raises(ValueError, match="784 features"):
        cnn.MLP()(torch.randn(2, 1, 20, 20))
    with pytest.raises(ValueError, match="784 features"):
        cnn.MLP()(torch.randn(784))  # one example without its batch axis
    with pytest.raises(ValueError, match="pool"):
        cnn.LeNet5(pool="median")
    with pytest.raises(ValueError, match="channels"):
        cnn.Subsampling(0)


def test_subsampling_rejects_wrong_channel_count():
    # issue 7: used to broadcast (or fail inside torch) instead of naming the mismatch
    with pytest.raises(ValueError, match="6 input channels, got 5"):
        cnn.Subsampling(6)(torch.randn(2, 5, 8, 8))
    with pytest.raises(ValueError, match="6 input channels, got 1"):
        cnn.Subsampling(6)(torch.randn(2, 1, 8, 8))  # would broadcast silently without the check


def test_empty_batches_give_empty_outputs_like_pytorch():
    # issue 7: MLP crashed inside torch on an empty batch; every entry point now returns empty
    assert cnn.MLP()(torch.randn(0, 1, 28, 28)).shape == (0, 10)
    assert cnn.MLP()(torch.randn(0, 784)).shape == (0, 10)
    assert cnn.LeNet5()(torch.randn(0, 1, 28, 28)).shape == (0, 10)
    x, w = torch.randn(0, 3, 9, 8), torch.randn(4, 3, 3, 3)
    assert cnn.conv2d(x, w, stride=2, padding=1).shape == F.conv2d(x, w, stride=2, padding=1).shape
    assert cnn.max_pool2d(x, 3, 2, 1).shape == F.max_pool2d(x, 3, 2, 1).shape
    assert cnn.avg_pool2d(x, 2).shape == F.avg_pool2d(x, 2).shape
    assert cnn.Subsampling(3)(x).shape == (0, 3, 4, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k,stride,padding", [(3, 2, 1), (2, 1, 1), (3, 1, 1), (4, 3, 2)])
def test_max_pool_gradient_of_all_minus_inf_window_goes_to_the_input(dtype, k, stride, padding):
    # issue 7: where a window's real pixels are -inf like its padding, the arg-max was a padded
    # cell and the gradient was lost; F.max_pool2d sends it to the window's first real pixel.
    x = torch.full((1, 2, 5, 6), float("-inf"), dtype=dtype)
    x[0, 0, 2, 3] = 1.0
    x[0, 1, 4, 0] = -2.0
    x.requires_grad_()
    mine, ref = cnn.max_pool2d(x, k, stride, padding), F.max_pool2d(x, k, stride, padding)
    assert torch.equal(mine, ref)
    gy = torch.arange(1.0, ref.numel() + 1, dtype=dtype).reshape(ref.shape)
    (a,), (r,) = _grads(mine, (x,), gy), _grads(ref, (x,), gy)
    assert torch.equal(a, r)
    assert a.sum() == gy.sum()  # no gradient is lost to the padding


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_max_pool_ties_route_the_gradient_like_pytorch(dtype):
    # integer-valued inputs (and ReLU-like zeros) tie often: the first maximum in raster order wins
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 3, (2, 3, 7, 6), generator=g).to(dtype).requires_grad_()
    for k, stride, padding in [(3, 2, 1), (2, 2, 0), (3, 1, 1), (2, 1, 0)]:
        mine, ref = cnn.max_pool2d(x, k, stride, padding), F.max_pool2d(x, k, stride, padding)
        assert torch.equal(mine, ref)
        gy = torch.randn(ref.shape, generator=g, dtype=dtype)
        (a,), (r,) = _grads(mine, (x,), gy), _grads(ref, (x,), gy)
        assert _close(a, r, dtype)


def _random_conv_case(g):
    """One random convolution: shapes, stride, padding, kernel (rectangular allowed), bias or not."""
    r = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    kh, kw = r(1, 5), r(1, 5)
    padding, stride = r(0, 2), r(1, 3)
    h, w = r(max(1, kh - 2 * padding), 13), r(max(1, kw - 2 * padding), 13)
    return dict(b=r(1, 3), c_in=r(1, 4), c_out=r(1, 5), h=h, w=w, kh=kh, kw=kw, stride=stride,
                padding=padding, bias=bool(r(0, 1)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(8))
def test_conv2d_random_shapes_match_torch(dtype, seed):
    g = torch.Generator().manual_seed(100 + seed)
    c = _random_conv_case(g)
    x = torch.randn(c["b"], c["c_in"], c["h"], c["w"], generator=g, dtype=dtype).requires_grad_()
    w = torch.randn(c["c_out"], c["c_in"], c["kh"], c["kw"], generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(c["c_out"], generator=g, dtype=dtype).requires_grad_() if c["bias"] else None
    inputs = (x, w) + ((b,) if b is not None else ())
    mine = cnn.conv2d(x, w, b, stride=c["stride"], padding=c["padding"])
    ref = F.conv2d(x, w, b, stride=c["stride"], padding=c["padding"])
    assert mine.shape == ref.shape, c
    assert _close(mine, ref, dtype), c
    gy = torch.randn(ref.shape, generator=g, dtype=dtype)
    for a, r in zip(_grads(mine, inputs, gy), _grads(ref, inputs, gy)):
        assert _close(a, r, dtype), c


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("seed", range(8))
def test_pooling_random_shapes_match_torch(dtype, kind, seed):
    g = torch.Generator().manual_seed(200 + seed)
    r = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    k = r(1, 4)
    padding = r(0, k // 2)
    stride = None if r(0, 1) else r(1, 3)
    h, w = r(max(1, k - 2 * padding), 12), r(max(1, k - 2 * padding), 12)
    x = torch.randn(r(1, 3), r(1, 4), h, w, generator=g, dtype=dtype).requires_grad_()
    mine = {"avg": cnn.avg_pool2d, "max": cnn.max_pool2d}[kind](x, k, stride, padding)
    ref = {"avg": F.avg_pool2d, "max": F.max_pool2d}[kind](x, k, stride, padding)
    case = dict(shape=tuple(x.shape), k=k, stride=stride, padding=padding)
    assert mine.shape == ref.shape, case
    assert _close(mine, ref, dtype), case
    gy = torch.randn(ref.shape, generator=g, dtype=dtype)
    (a,), (rg,) = _grads(mine, (x,), gy), _grads(ref, (x,), gy)
    assert _close(a, rg, dtype), case
