"""Tests for 01-deep-neural-networks/03-alex-net/alexnet.py."""

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
    with pytest.raises(ValueError, match="floating-point"):
        small(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="image_size >= 15"):
        alexnet.SmallAlexNet(image_size=14)
    with pytest.raises(ValueError, match="activation must be one of"):
        alexnet.SmallAlexNet(activation="sigmoid")
    with pytest.raises(ValueError, match="3 conv widths"):
        alexnet.SmallAlexNet(widths=(4, 8))
    with torch.device("meta"):
        with pytest.raises(ValueError, match="expects 3 input channels, got 1"):
            alexnet.AlexNet()(torch.empty(1, 1, 224, 224))


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5, True, "0.5"])
def test_invalid_dropout_raises(p):
    with pytest.raises(ValueError, match=r"dropout p must be a number in \[0, 1\)"):
        alexnet.SmallAlexNet(dropout=p)
    with pytest.raises(ValueError, match=r"dropout p must be a number in \[0, 1\)"):
        alexnet.AlexNet(dropout=p)


@pytest.mark.parametrize("kwargs,match", [(dict(size=0), "size must be an integer >= 1"),
                                          (dict(size=2.5), "size must be an integer >= 1"),
                                          (dict(alpha=-1.0), "alpha and beta must be >= 0"),
                                          (dict(k=0.0), "k must be > 0")])
def test_invalid_lrn_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        alexnet.LocalResponseNorm(**kwargs)
    with pytest.raises(ValueError, match=match):
        alexnet.local_response_norm(torch.randn(1, 4, 2, 2), **kwargs)


def test_lrn_rejects_bad_tensors():
    with pytest.raises(ValueError, match="rank >= 3"):
        alexnet.local_response_norm(torch.randn(4, 5))
    with pytest.raises(ValueError, match="floating-point"):
        alexnet.local_response_norm(torch.ones(1, 4, 2, 2, dtype=torch.int64))


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
    with pytest.raises(ValueError, match="std > 0"):
        alexnet.paper_init_(net, std=0.0)
    with pytest.raises(ValueError, match="expects an AlexNet or SmallAlexNet"):
        alexnet.paper_init_(nn.Linear(2, 2))
