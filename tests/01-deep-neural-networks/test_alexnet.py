"""Tests for 01-deep-neural-networks/03-alex-net/alexnet.py."""

import io
import pickle
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import common

alexnet = common.topic("alexnet")


# ----------------------------------------------------------------------------- LRN parity
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-4, 0.75, 2.0),   # the paper's constants
                                               (5, 0.5, 0.75, 2.0),    # strong normalisation
                                               (3, 0.2, 0.5, 1.0),
                                               (4, 0.3, 0.9, 1.5),     # even window
                                               (1, 1.0, 1.0, 1.0)])
def test_lrn_matches_torch_values_and_grads(dtype, tol, size, alpha, beta, k):
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(3, 9, 5, 4, generator=g, dtype=dtype) * 2).requires_grad_()
    a_ref = a.detach().clone().requires_grad_()
    ours = alexnet.LocalResponseNorm(size, alpha, beta, k)(a)
    # PyTorch multiplies alpha by the *mean* of the squares, the paper by their sum
    ref = nn.LocalResponseNorm(size, alpha=alpha * size, beta=beta, k=k)(a_ref)
    assert ours.shape == a.shape and ours.dtype == dtype
    assert (ours - ref).abs().max().item() < tol
    upstream = torch.randn(ours.shape, generator=g, dtype=dtype)
    (ours * upstream).sum().backward()
    (ref * upstream).sum().backward()
    assert (a.grad - a_ref.grad).abs().max().item() < tol


def test_lrn_normalises_with_the_sum_over_neighbouring_channels():
    # one pixel, channels [1, 2, 3]; n=3 so channel 0 sees channels {0, 1}
    a = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).view(1, 3, 1, 1)
    b = alexnet.local_response_norm(a, size=3, alpha=0.1, beta=0.5, k=1.0)
    expected = torch.tensor([1 / (1 + 0.1 * 5) ** 0.5, 2 / (1 + 0.1 * 14) ** 0.5, 3 / (1 + 0.1 * 13) ** 0.5],
                            dtype=torch.float64)
    torch.testing.assert_close(b.flatten(), expected, rtol=0, atol=1e-12)


def test_lrn_defaults_are_the_papers_and_rank3_input_works():
    m = alexnet.LocalResponseNorm()
    assert (m.size, m.alpha, m.beta, m.k) == (5, 1e-4, 0.75, 2.0)
    assert "size=5" in repr(m)
    a = torch.randn(2, 8, 7, dtype=torch.float64)
    ref = nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)(a)
    assert (m(a) - ref).abs().max().item() < 1e-10


def test_lrn_gradcheck():
    a = torch.randn(2, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: alexnet.local_response_norm(t, 3, 0.5, 0.75, 2.0), (a,))


def _random_lrn_cases(n_cases, seed):
    """Random shapes (rank 3-5, empty batch and zero channels included), dtypes and constants."""
    g = torch.Generator().manual_seed(seed)
    rint = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))
    cases = []
    for i in range(n_cases):
        rank = 3 + i % 3
        shape = (rint(0, 4), rint(0, 12), *[rint(1, 6) for _ in range(rank - 2)])
        dtype = (torch.float32, torch.float64)[rint(0, 2)]
        size, alpha = rint(1, 9), float(torch.rand(1, generator=g)) * 2
        beta, k = 0.25 + float(torch.rand(1, generator=g)), 0.5 + 2 * float(torch.rand(1, generator=g))
        cases.append((shape, dtype, size, alpha, beta, k))
    return cases


@pytest.mark.parametrize("shape,dtype,size,alpha,beta,k", _random_lrn_cases(24, seed=7))
def test_lrn_matches_torch_on_random_shapes(shape, dtype, size, alpha, beta, k):
    g = torch.Generator().manual_seed(hash(shape) % 2**31)
    a = (torch.randn(shape, generator=g, dtype=dtype) * 3).requires_grad_()
    a_ref = a.detach().clone().requires_grad_()
    ours = alexnet.local_response_norm(a, size, alpha, beta, k)
    ref = nn.LocalResponseNorm(size, alpha=alpha * size, beta=beta, k=k)(a_ref)
    assert ours.shape == ref.shape == a.shape and ours.dtype == dtype
    if a.numel() == 0:
        return
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(ours, ref, rtol=0, atol=tol)
    up = torch.randn(ours.shape, generator=g, dtype=dtype)
    (ours * up).sum().backward()
    (ref * up).sum().backward()
    torch.testing.assert_close(a.grad, a_ref.grad, rtol=0, atol=tol)


@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (2, 0, 3, 3), (0, 0, 3, 3), (2, 4, 0, 3), (0, 4, 5), (2, 4, 0)])
def test_lrn_empty_input_gives_empty_output_like_torch(shape):
    a = torch.randn(shape, requires_grad=True)
    ours = alexnet.LocalResponseNorm()(a)
    ref = nn.LocalResponseNorm(5, alpha=5e-4)(a)
    assert ours.shape == ref.shape == a.shape and ours.dtype == a.dtype
    ours.sum().backward()                       # still part of the autograd graph
    assert a.grad.shape == a.shape


# ----------------------------------------------------------------------------- AlexNet vs torchvision
def _shapes(model, x):
    """Output shapes of every conv, pool and linear layer, in call order."""
    shapes, hooks = [], []
    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Linear)):
            hooks.append(mod.register_forward_hook(lambda m, i, o: shapes.append((type(m).__name__, tuple(o.shape)))))
    model(x)
    for h in hooks:
        h.remove()
    return shapes


def test_alexnet_param_count_and_layer_shapes_equal_torchvision():
    with torch.device("meta"):  # no memory, no compute: shapes only
        tv = torchvision.models.alexnet(weights=None)
        ours = alexnet.AlexNet()
        x = torch.empty(2, 3, 224, 224)
        tv_shapes, our_shapes = _shapes(tv, x), _shapes(ours, x)
    n_tv = sum(p.numel() for p in tv.parameters())
    n_ours = sum(p.numel() for p in ours.parameters())
    assert n_ours == n_tv == 61_100_840
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in tv.parameters()]
    assert our_shapes == tv_shapes
    assert our_shapes[0] == ("Conv2d", (2, 64, 55, 55)) and our_shapes[-1] == ("Linear", (2, 1000))
    # LRN follows the ReLUs of conv 1 and conv 2 only (Section 3.5)
    kinds = [type(m).__name__ for m in ours.features]
    assert [i for i, t in enumerate(kinds) if t == "LocalResponseNorm"] == [2, 6]
    assert kinds[1] == kinds[5] == "ReLU" and kinds[3] == kinds[7] == "MaxPool2d"


def test_alexnet_without_lrn_equals_torchvision_with_same_weights():
    # build both without PyTorch's (slow) default init, then fill the same random weights
    with torch.device("meta"):
        tv = torchvision.models.alexnet(weights=None, num_classes=10)
        ours = alexnet.AlexNet(num_classes=10, lrn=False)
    tv, ours = tv.to_empty(device="cpu").eval(), ours.to_empty(device="cpu").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p, q in zip(ours.parameters(), tv.parameters(), strict=True):
            fan_in = q[0].numel() if q.dim() > 1 else 64
            q.copy_((torch.rand(q.shape, generator=g) * 2 - 1) * 3 / fan_in**0.5)
            p.copy_(q)
        x = torch.rand(1, 3, 224, 224, generator=g)
        ref = tv(x)
        assert ref.abs().max().item() > 1e-2  # the comparison below is not trivially small
        assert (ours(x) - ref).abs().max().item() < 1e-5
        # with LRN the network computes something else (but finite, same shape)
        ours.features[2] = alexnet.LocalResponseNorm(5, alpha=1.0)
        ours.features[6] = alexnet.LocalResponseNorm(5, alpha=1.0)
        y = ours(x)
        assert y.shape == (1, 10) and torch.isfinite(y).all() and not torch.allclose(y, ref)


def test_alexnet_smallest_input_and_dropout_modes():
    with torch.device("meta"):
        assert alexnet.AlexNet()(torch.empty(1, 3, 63, 63)).shape == (1, 1000)
        with pytest.raises(ValueError, match="at least 63x63"):
            alexnet.AlexNet()(torch.empty(1, 3, 62, 80))
        net = alexnet.AlexNet(num_classes=2)
    assert [m.p for m in net.classifier if isinstance(m, nn.Dropout)] == [0.5, 0.5]  # Section 4.2


def test_alexnet_dropout_acts_on_the_outputs_of_fc6_and_fc7():
    # Section 4.2: "setting to zero the output of each hidden neuron" of the first two FC layers
    with torch.device("meta"):
        net = alexnet.AlexNet()
    kinds = [type(m).__name__ for m in net.classifier]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    # functional check on a small stand-in of the classifier: in training mode the input of FC7 and
    # FC8 has about half of FC6's / FC7's positive outputs zeroed, the rest scaled by 1 / (1 - p)
    torch.manual_seed(0)
    net = alexnet.AlexNet(num_classes=3, lrn=False)
    fc6_out, fc7_in = [], []
    net.classifier[1].register_forward_hook(lambda m, i, o: fc6_out.append(o.detach().clone()))
    net.classifier[3].register_forward_pre_hook(lambda m, i: fc7_in.append(i[0].detach().clone()))
    net.train()
    net(torch.rand(2, 3, 67, 67))
    a, b = fc6_out[0], fc7_in[0]
    kept = (b != 0) & (a != 0)
    dropped = (b == 0) & (a != 0)
    assert 0.4 < dropped.sum() / (a != 0).sum() < 0.6
    torch.testing.assert_close(b[kept], 2 * a[kept])


@pytest.mark.parametrize("lrn", [True, False])
def test_empty_batches_give_empty_scores(lrn):
    small = alexnet.SmallAlexNet(1, 7, 28, widths=(4, 8, 8), hidden=(16,), lrn=lrn)
    assert small(torch.zeros(0, 1, 28, 28)).shape == (0, 7)
    assert alexnet.FourLayerNet(3, 5, 32)(torch.zeros(0, 3, 32, 32)).shape == (0, 5)
    with torch.device("meta"):
        assert alexnet.AlexNet(num_classes=4, lrn=lrn)(torch.empty(0, 3, 224, 224)).shape == (0, 4)
    torch.manual_seed(0)
    big = alexnet.AlexNet(num_classes=4, lrn=lrn).eval()
    with torch.no_grad():
        assert big(torch.zeros(0, 3, 63, 63)).shape == (0, 4)


# ----------------------------------------------------------------------------- SmallAlexNet
@pytest.mark.parametrize("channels,size,side", [(1, 28, 2), (3, 32, 3)])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_small_alexnet_shapes(channels, size, side, activation):
    net = alexnet.SmallAlexNet(channels, 10, size, activation=activation, widths=(8, 16, 24), hidden=(32,))
    x = torch.randn(5, channels, size, size)
    assert net.features(x).shape == (5, 24, side, side)
    assert net(x).shape == (5, 10)
    act = nn.ReLU if activation == "relu" else nn.Tanh
    assert sum(isinstance(m, act) for m in net.modules()) == 4  # 3 conv + 1 hidden FC
    assert not any(isinstance(m, (nn.ReLU, nn.Tanh)) and not isinstance(m, act) for m in net.modules())


def test_small_alexnet_default_is_the_four_layer_net_of_figure_1():
    net = alexnet.SmallAlexNet()
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [type(m).__name__ for m in layers] == ["Conv2d"] * 3 + ["Linear"]
    assert not any(isinstance(m, (nn.Dropout, alexnet.LocalResponseNorm)) for m in net.modules())
    lrn_net = alexnet.SmallAlexNet(lrn=True)
    assert sum(isinstance(m, alexnet.LocalResponseNorm) for m in lrn_net.modules()) == 2


def test_small_alexnet_dropout_only_in_training_mode():
    torch.manual_seed(0)
    net = alexnet.SmallAlexNet(widths=(4, 8, 8), hidden=(64, 64), dropout=0.5)
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.5 for m in net.modules()) == 2
    x = torch.randn(4, 1, 28, 28)
    net.train()
    assert not torch.allclose(net(x), net(x))
    net.eval()
    torch.testing.assert_close(net(x), net(x), rtol=0, atol=0)


@pytest.mark.parametrize("activation,lrn", [("relu", True), ("tanh", False)])
def test_small_alexnet_overfits_a_tiny_batch(activation, lrn):
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 28, 28), torch.arange(16) % 10
    net = alexnet.SmallAlexNet(1, 10, 28, activation=activation, widths=(8, 16, 32), hidden=(64,), lrn=lrn)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(40):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.25  # from ~2.3 (= ln 10) at the start
    assert (net(x).argmax(1) == y).all()


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_value_error():
    small = alexnet.SmallAlexNet(1, 10, 28, widths=(4, 8, 8))
    with pytest.raises(ValueError, match="expects 1 input channels, got 3"):
        small(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match="built for 28x28"):
        small(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="at least 15x15"):
        small(torch.randn(2, 1, 14, 14))
    with pytest.raises(ValueError, match=r"images \(B, 1, H, W\)"):
        small(torch.randn(1, 28, 28))
    with pytest.raises(ValueError, match="floating point"):
        small(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="image_size must be an int >= 15"):
        alexnet.SmallAlexNet(image_size=14)
    with pytest.raises(ValueError, match="activation must be one of"):
        alexnet.SmallAlexNet(activation="sigmoid")
    with pytest.raises(ValueError, match="3 conv widths"):
        alexnet.SmallAlexNet(widths=(4, 8))
    with torch.device("meta"):
        with pytest.raises(ValueError, match="expects 3 input channels, got 1"):
            alexnet.AlexNet()(torch.empty(1, 1, 224, 224))


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5, True, "0.5", float("nan")])
def test_invalid_dropout_raises(p):
    with pytest.raises(ValueError, match="dropout p must be"):
        alexnet.SmallAlexNet(dropout=p)
    with pytest.raises(ValueError, match="dropout p must be"):
        alexnet.AlexNet(dropout=p)


@pytest.mark.parametrize("kwargs,match", [(dict(widths=(0, 8, 8)), r"widths\[0\] must be an int >= 1"),
                                          (dict(widths=(4, 8, 0)), r"widths\[2\] must be an int >= 1"),
                                          (dict(widths=(4, 8.0, 8)), r"widths\[1\] must be an int"),
                                          (dict(in_channels=0), "in_channels must be an int >= 1"),
                                          (dict(num_classes=0), "num_classes must be an int >= 1"),
                                          (dict(hidden=(16, 0)), r"hidden\[1\] must be an int >= 1"),
                                          (dict(hidden=(-3,)), r"hidden\[0\] must be an int >= 1")])
def test_small_alexnet_rejects_empty_layers(kwargs, match):
    with pytest.raises(ValueError, match=match):
        alexnet.SmallAlexNet(**kwargs)
    if "hidden" not in kwargs:                  # FourLayerNet has the same checks (no hidden layers)
        with pytest.raises(ValueError, match=match):
            alexnet.FourLayerNet(**kwargs)


def test_alexnet_rejects_zero_classes_or_channels():
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        alexnet.AlexNet(num_classes=0)
    with pytest.raises(ValueError, match="in_channels must be an int >= 1"):
        alexnet.AlexNet(in_channels=0)


@pytest.mark.parametrize("kwargs,match", [(dict(size=0), "size must be an int >= 1"),
                                          (dict(size=2.5), "size must be an int"),
                                          (dict(alpha=-1.0), "alpha must be >= 0"),
                                          (dict(beta=-0.5), "beta must be >= 0"),
                                          (dict(alpha=float("nan")), "alpha must be finite"),
                                          (dict(k=0.0), "k must be > 0")])
def test_invalid_lrn_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        alexnet.LocalResponseNorm(**kwargs)
    with pytest.raises(ValueError, match=match):
        alexnet.local_response_norm(torch.randn(1, 4, 2, 2), **kwargs)


def test_lrn_rejects_bad_tensors():
    with pytest.raises(ValueError, match="rank >= 3"):
        alexnet.local_response_norm(torch.randn(4, 5))
    with pytest.raises(ValueError, match="floating point"):
        alexnet.local_response_norm(torch.ones(1, 4, 2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="must be a tensor"):
        alexnet.local_response_norm([[1.0, 2.0]])


# ----------------------------------------------------------------------------- Section 5 init
def test_paper_init_alexnet_biases_and_std():
    torch.manual_seed(0)
    with torch.device("meta"):
        net = alexnet.AlexNet()
    net = alexnet.paper_init_(net.to_empty(device="cpu"))
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    fcs = [m for m in net.classifier if isinstance(m, nn.Linear)]
    assert [m.bias.unique().tolist() for m in convs] == [[0.0], [1.0], [0.0], [1.0], [1.0]]
    assert [m.bias.unique().tolist() for m in fcs] == [[1.0], [1.0], [0.0]]
    w = fcs[1].weight  # 16.7M draws: the sample std is 0.01 to 3 digits
    assert abs(w.std().item() - 0.01) < 1e-4 and abs(w.mean().item()) < 1e-4


def test_paper_init_small_net_without_ones():
    net = alexnet.paper_init_(alexnet.SmallAlexNet(widths=(4, 8, 8), hidden=(16,)), std=0.05, ones=False)
    assert all((m.bias == 0).all() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    net = alexnet.paper_init_(net, ones=True)
    biases = [m.bias.unique().tolist() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert biases == [[0.0], [1.0], [1.0], [1.0], [0.0]]
    with pytest.raises(ValueError, match="std must be > 0"):
        alexnet.paper_init_(net, std=0.0)
    with pytest.raises(ValueError, match="expects an AlexNet or SmallAlexNet"):
        alexnet.paper_init_(nn.Linear(2, 2))


# ----------------------------------------------------------------------------- Figure 1's net
@pytest.mark.parametrize("channels,size,sides", [(3, 32, (16, 8, 4)), (1, 28, (14, 7, 3))])
def test_four_layer_net_is_cuda_convnets_example(channels, size, sides):
    net = alexnet.FourLayerNet(channels, 10, size)
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    pools = [m for m in net.features if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (channels, 32, (5, 5), (2, 2)), (32, 32, (5, 5), (2, 2)), (32, 64, (5, 5), (2, 2))]
    assert [type(p).__name__ for p in pools] == ["MaxPool2d", "AvgPool2d", "AvgPool2d"]
    assert all(p.kernel_size in (3, (3, 3)) and p.stride in (2, (2, 2)) and p.ceil_mode for p in pools)
    shapes, x = [], torch.randn(2, channels, size, size)
    for m in net.features:
        x = m(x)
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            shapes.append(x.shape[-1])
    assert tuple(shapes) == sides
    assert net.classifier.in_features == 64 * sides[-1] ** 2 and net.classifier.out_features == 10
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == 3
    assert not any(isinstance(m, (nn.Dropout, alexnet.LocalResponseNorm)) for m in net.modules())


def test_four_layer_net_init_is_per_layer_and_equal_across_activations():
    torch.manual_seed(0)
    relu = alexnet.FourLayerNet(3, 10, 32, activation="relu")
    torch.manual_seed(0)
    tanh = alexnet.FourLayerNet(3, 10, 32, activation="tanh")
    for p, q in zip(relu.parameters(), tanh.parameters(), strict=True):
        assert torch.equal(p, q)               # the activation draws no random numbers
    layers = [m for m in relu.features if isinstance(m, nn.Conv2d)] + [relu.classifier]
    stds = [m.weight.std().item() for m in layers]
    for got, want in zip(stds, (1e-4, 1e-2, 1e-2, 1e-2), strict=True):
        assert abs(got / want - 1) < 0.1
    assert all((m.bias == 0).all() for m in layers)
    assert sum(isinstance(m, nn.Tanh) for m in tanh.modules()) == 3
    assert not any(isinstance(m, nn.ReLU) for m in tanh.modules())


def test_four_layer_net_bad_input():
    net = alexnet.FourLayerNet(3, 10, 32)
    with pytest.raises(ValueError, match="built for 32x32"):
        net(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match="expects 3 input channels, got 1"):
        net(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="activation must be one of"):
        alexnet.FourLayerNet(activation="sigmoid")
    with pytest.raises(ValueError, match="3 conv widths"):
        alexnet.FourLayerNet(widths=(8, 8))


# ----------------------------------------------------------------------------- Figure 1 protocol
def test_center_pixels_subtracts_the_mean_image_from_raw_values():
    x = torch.tensor([[[[0, 255]]], [[[100, 55]]]], dtype=torch.uint8)        # (2, 1, 1, 2)
    mean = x.float().mean(0, keepdim=True)
    out = alexnet.center_pixels(x, mean)
    torch.testing.assert_close(out, torch.tensor([[[[-50.0, 100.0]]], [[[50.0, -100.0]]]]))
    assert alexnet.center_pixels(x[:0], mean).shape == (0, 1, 1, 2)
    with pytest.raises(ValueError, match="raw uint8 pixels"):
        alexnet.center_pixels(x.float(), mean)
    with pytest.raises(ValueError, match="mean must have shape"):
        alexnet.center_pixels(x, mean[:, :, :, :1])


def test_smoothed_error_and_steps_to_threshold():
    errors = [0.9, 0.7, 0.5, 0.3, 0.1, 0.1]
    steps, sm = alexnet.smoothed_error(errors, window=2)
    torch.testing.assert_close(sm, torch.tensor([0.8, 0.6, 0.4, 0.2, 0.1], dtype=torch.float64))
    torch.testing.assert_close(steps, torch.tensor([1.5, 2.5, 3.5, 4.5, 5.5], dtype=torch.float64))
    assert alexnet.steps_to_threshold(errors, [0.6, 0.25, 0.05], window=2) == [2.5, 4.5, None]
    assert alexnet.steps_to_threshold(errors, [0.9], window=1) == [1.0]
    assert alexnet.steps_to_threshold([0.1], [0.5], window=2) == [None]      # fewer errors than the window
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        alexnet.smoothed_error(errors, window=0)


def _loader(x, y, batch_size=16):
    mean = x.float().mean(0, keepdim=True)
    return common.data.TensorLoader(x, y, batch_size=batch_size, drop_last=True, seed=0,
                                    transform=lambda a, b: (alexnet.center_pixels(a, mean), b))


def test_train_sgd_records_errors_and_stops_at_the_threshold():
    x, y = common.data.synthetic_images("fashion-mnist", "train", n=256)
    torch.manual_seed(0)
    net = alexnet.FourLayerNet(1, 10, 28, widths=(8, 8, 16), activation="tanh")
    errors, status = alexnet.train_sgd(net, _loader(x, y), lr=0.064, max_steps=120, stop_below=0.3,
                                       window=10, check_every=5)
    assert status == "reached" and len(errors) < 120 and errors.dtype == torch.float32
    assert ((errors >= 0) & (errors <= 1)).all()
    (steps,) = alexnet.steps_to_threshold(errors, [0.3], window=10)
    assert steps is not None and steps <= len(errors)
    torch.manual_seed(0)
    net = alexnet.FourLayerNet(1, 10, 28, widths=(8, 8, 16))
    errors, status = alexnet.train_sgd(net, _loader(x, y), lr=1e-3, max_steps=7)
    assert status == "done" and len(errors) == 7


def test_train_sgd_reports_divergence():
    x, y = common.data.synthetic_images("fashion-mnist", "train", n=64)
    torch.manual_seed(0)
    net = alexnet.FourLayerNet(1, 10, 28, widths=(4, 4, 4))
    errors, status = alexnet.train_sgd(net, _loader(x, y), lr=1e12, max_steps=40)
    assert status == "diverged" and len(errors) < 40


def _tiny_cifar10(path, n_per_batch=8):
    """A file in the official CIFAR-10 python format (5 training batches + 1 test batch), tiny."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                     b"labels": rng.integers(0, 10, n_per_batch).tolist()}
            blob = pickle.dumps(batch)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def test_figure1_runs_on_cifar10_when_it_is_present(tmp_path, monkeypatch):
    # the CIFAR-10 path of the notebook, on a tiny archive in the official format
    (tmp_path / "cifar10").mkdir()
    _tiny_cifar10(tmp_path / "cifar10" / "cifar-10-python.tar.gz")
    monkeypatch.setenv("DLH_DATA", str(tmp_path))
    monkeypatch.delenv("DLH_DATA_MIRROR", raising=False)
    monkeypatch.setattr(common.data, "verify", lambda *args, **kwargs: None)  # not the real file's md5
    assert alexnet.figure1_dataset() == "cifar10"
    x, y = common.data.load_images("cifar10", "train", synthetic=False)
    assert x.shape == (40, 3, 32, 32) and x.dtype == torch.uint8 and y.shape == (40,)
    torch.manual_seed(0)
    net = alexnet.FourLayerNet(x.shape[1], 10, x.shape[-1])          # 3 channels, 32x32: fc on 64*4*4
    errors, status = alexnet.train_sgd(net, _loader(x, y, batch_size=8), lr=1e-3, max_steps=6)
    assert status == "done" and errors.shape == (6,)
    assert len(alexnet.steps_to_threshold(errors, [0.25, 0.1], window=2)) == 2


def test_figure1_falls_back_without_cifar10(tmp_path, monkeypatch):
    monkeypatch.setenv("DLH_DATA", str(tmp_path))                    # empty cache
    monkeypatch.delenv("DLH_DATA_MIRROR", raising=False)
    assert alexnet.figure1_dataset() == "fashion-mnist"
    assert alexnet.figure1_dataset("cifar10", "mnist") == "mnist"
