"""Tests for 02-optimization-and-regularization/03-residuals/resnet.py (He, Zhang, Ren & Sun 2015)."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock as TVBlock

import common

resnet = common.topic("resnet")


def _randomize_bn(module, seed=0):
    """Give every BN layer non-trivial affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


# ---------------------------------------------------------------- parameter counts (Table 6)

@pytest.mark.parametrize("depth,exact,paper", [(20, 269_722, 0.27e6), (56, 853_018, 0.85e6), (110, 1_727_962, 1.7e6)])
def test_parameter_counts_match_table_6(depth, exact, paper):
    net = resnet.resnet(depth)  # full width 16/32/64, option A, CIFAR-10 input
    n = resnet.count_parameters(net)
    assert n == exact
    digits = 2 if paper < 1e6 else 1  # the paper rounds to 0.27M, 0.85M, 1.7M
    assert round(n / 1e6, digits) == round(paper / 1e6, digits)
    assert resnet.count_parameters(resnet.plain(depth)) == n  # option A adds no parameter (Sec. 3.3)


def test_option_b_adds_two_projections():
    a, b = resnet.resnet(20), resnet.resnet(20, shortcut="B")
    # two 1x1 convs with BN: 16 -> 32 and 32 -> 64
    assert resnet.count_parameters(b) - resnet.count_parameters(a) == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


def test_count_parameters_ignores_frozen_and_rejects_non_modules():
    lin = torch.nn.Linear(3, 2)
    assert resnet.count_parameters(lin) == 8
    lin.bias.requires_grad_(False)
    assert resnet.count_parameters(lin) == 6
    with pytest.raises(ValueError):
        resnet.count_parameters("net")


# ---------------------------------------------------------------- the block


@pytest.mark.parametrize("stride,c_in,c_out", [(1, 8, 8), (2, 8, 16)])
@pytest.mark.parametrize("train", [True, False])
def test_block_matches_torchvision_float64(stride, c_in, c_out, train):
    torch.manual_seed(0)
    ours = resnet.BasicBlock(c_in, c_out, stride=stride, shortcut="B").double()
    _randomize_bn(ours)
    down = None
    if stride != 1 or c_in != c_out:
        down = torch.nn.Sequential(torch.nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                   torch.nn.BatchNorm2d(c_out))
    theirs = TVBlock(c_in, c_out, stride=stride, downsample=down).double()
    state = {k.replace("projection", "downsample"): v for k, v in ours.state_dict().items()}
    theirs.load_state_dict(state)
    ours.train(train), theirs.train(train)
    x = torch.randn(4, c_in, 9, 9, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = ours(x1), theirs(x2)
    assert y1.shape == y2.shape == (4, c_out, 9 // stride + 9 % stride, 9 // stride + 9 % stride)
    assert (y1 - y2).abs().max() < 1e-10
    gy = torch.randn(y1.shape, dtype=torch.float64)
    y1.backward(gy), y2.backward(gy)
    assert (x1.grad - x2.grad).abs().max() < 1e-10
    for (name, p1), p2 in zip(ours.named_parameters(), theirs.parameters()):
        assert (p1.grad - p2.grad).abs().max() < 1e-10, name


def test_block_gradcheck_float64():
    torch.manual_seed(0)
    block = resnet.BasicBlock(2, 4, stride=2, shortcut="A").double().eval()
    _randomize_bn(block)
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_zero_last_bn_block_is_identity(train, shortcut):
    torch.manual_seed(0)
    block = resnet.BasicBlock(6, 6, shortcut=shortcut)
    _randomize_bn(block)  # random running statistics too: with weight 0 and bias 0 they do not matter
    torch.nn.init.zeros_(block.bn2.weight)
    torch.nn.init.zeros_(block.bn2.bias)
    block.train(train)
    x = torch.rand(3, 6, 7, 7)  # a block's input is a ReLU output: non-negative
    assert torch.equal(block.residual_branch(x), torch.zeros_like(x))
    assert torch.equal(block(x), x)
    xn = torch.randn(3, 6, 7, 7)
    assert torch.equal(block(xn), F.relu(xn))  # on signed inputs the ReLU after the addition remains


def test_zero_last_bn_downsampling_block_is_the_shortcut_not_identity():
    torch.manual_seed(0)
    x = torch.rand(2, 4, 8, 8)
    for shortcut in ("A", "B"):
        block = resnet.BasicBlock(4, 8, stride=2, shortcut=shortcut).eval()
        torch.nn.init.zeros_(block.bn2.weight)
        y = block(x)
        assert y.shape == (2, 8, 4, 4)
        assert torch.equal(y, F.relu(block.shortcut(x)))
        if shortcut == "A":  # subsampled input in the first 4 channels, zeros in the other 4
            assert torch.equal(y[:, :4], x[:, :, ::2, ::2]) and torch.equal(y[:, 4:], torch.zeros(2, 4, 4, 4))


def test_pad_shortcut_values():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    y = resnet.pad_shortcut(x, 7, stride=2)
    assert y.shape == (2, 7, 3, 3)
    assert torch.equal(y[:, :3], x[:, :, ::2, ::2])
    assert y[:, 3:].abs().sum() == 0
    assert torch.equal(resnet.pad_shortcut(x, 3, stride=1), x)
    with pytest.raises(ValueError):
        resnet.pad_shortcut(x, 2)  # option A cannot drop channels
    with pytest.raises(ValueError):
        resnet.pad_shortcut(x, 7, stride=0)
    with pytest.raises(ValueError):
        resnet.pad_shortcut(torch.randn(3, 5, 5), 7)


def test_option_b_projection_is_strided_1x1_conv_plus_bn():
    torch.manual_seed(0)
    block = resnet.BasicBlock(4, 8, stride=2, shortcut="B").eval()
    _randomize_bn(block)
    conv, bn = block.projection
    assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and conv.bias is None
    x = torch.randn(2, 4, 8, 8)
    w = conv.weight[:, :, 0, 0]  # (8, 4)
    z = torch.einsum("oc,bchw->bohw", w, x[:, :, ::2, ::2])  # W_s x of Eq. (2), stride 2
    ref = (z - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    ref = ref * bn.weight[:, None, None] + bn.bias[:, None, None]
    assert torch.allclose(block.shortcut(x), ref, atol=1e-5)
    same = resnet.BasicBlock(8, 8, shortcut="B")  # B projects only where the shape changes
    assert same.projection is None
    assert torch.equal(same.shortcut(torch.ones(1, 8, 3, 3)), torch.ones(1, 8, 3, 3))


def test_plain_block_and_net_have_no_shortcut():
    block = resnet.BasicBlock(4, 4, residual=False)
    assert block.projection is None and block.option is None
    with pytest.raises(ValueError):
        block.shortcut(torch.randn(1, 4, 3, 3))
    torch.nn.init.zeros_(block.bn2.weight)
    assert torch.equal(block(torch.rand(1, 4, 3, 3)), torch.zeros(1, 4, 3, 3))  # F(x) = 0 and nothing added
    net = resnet.plain(20, shortcut="B")  # the option is ignored for a plain net
    blocks = [b for stage in net.stages for b in stage]
    assert len(blocks) == 9 and all(not b.residual and b.projection is None for b in blocks)
    assert not any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) for m in net.modules())


def test_block_rejects_bad_arguments_and_input():
    with pytest.raises(ValueError, match="shortcut"):
        resnet.BasicBlock(4, 4, shortcut="C")
    with pytest.raises(ValueError, match="shortcut"):
        resnet.BasicBlock(8, 4, stride=2, shortcut="A")  # cannot zero-pad down to fewer channels
    with pytest.raises(ValueError):
        resnet.BasicBlock(0, 4)
    with pytest.raises(ValueError):
        resnet.BasicBlock(4, 4, stride=0)
    block = resnet.BasicBlock(4, 4)
    for bad in (torch.randn(1, 3, 5, 5), torch.randn(4, 5, 5), torch.zeros(1, 4, 5, 5, dtype=torch.long),
                torch.randn(0, 4, 5, 5)):
        with pytest.raises(ValueError):
            block(bad)
    assert resnet.BasicBlock(8, 4, stride=2, shortcut="B")(torch.randn(1, 8, 6, 6)).shape == (1, 4, 3, 3)


# ---------------------------------------------------------------- the network


@pytest.mark.parametrize("size,maps", [(32, (32, 16, 8)), (28, (28, 14, 7))])
@pytest.mark.parametrize("residual", [True, False])
def test_network_shapes_and_layer_count(size, maps, residual):
    net = resnet.ResNet(20, num_classes=7, in_channels=1, widths=(4, 8, 16), residual=residual)
    seen = []
    hooks = [s.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape))) for s in net.stages]
    x = torch.randn(2, 1, size, size)
    assert net(x).shape == (2, 7)
    assert seen == [(2, 4, maps[0], maps[0]), (2, 8, maps[1], maps[1]), (2, 16, maps[2], maps[2])]
    for h in hooks:
        h.remove()
    assert net.features(x).shape == (2, 16)
    weighted = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(weighted) == 20  # 6n + 2 weighted layers, n = 3 (option A: no 1x1 conv)


def test_he_initialisation():
    torch.manual_seed(0)
    net = resnet.resnet(20, widths=(32, 64, 128))
    conv = net.stages[2][1].conv1  # 128 -> 128, 3x3: fan_in = 1152
    assert abs(conv.weight.std().item() - (2 / 1152) ** 0.5) < 0.02 * (2 / 1152) ** 0.5
    assert abs(conv.weight.mean().item()) < 1e-3
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))
               for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with pytest.raises(ValueError):
        resnet.he_init_(None)


def test_same_seed_same_weights_for_plain_and_residual():
    torch.manual_seed(3)
    a = resnet.resnet(14)
    torch.manual_seed(3)
    b = resnet.plain(14)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("depth", [0, 5, 19, 21, 57, 2.0, "20", True])
def test_bad_depth(depth):
    with pytest.raises(ValueError, match="depth"):
        resnet.ResNet(depth)


def test_check_depth_blocks_per_stage():
    assert [resnet.check_depth(d) for d in (8, 20, 32, 44, 56, 110)] == [1, 3, 5, 7, 9, 18]


@pytest.mark.parametrize("kwargs", [dict(shortcut="C"), dict(shortcut="a"), dict(widths=(16, 32)),
                                    dict(widths=(16, 0, 64)), dict(widths=16), dict(num_classes=1),
                                    dict(in_channels=0)])
def test_network_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        resnet.ResNet(20, **kwargs)


def test_network_rejects_bad_input():
    net = resnet.resnet(8, in_channels=3, widths=(2, 4, 8))
    for bad in (torch.randn(2, 1, 32, 32), torch.randn(3, 32, 32), torch.zeros(2, 3, 8, 8, dtype=torch.uint8)):
        with pytest.raises(ValueError, match="ResNet input"):
            net(bad)


def test_response_stds_shape_and_residual_response():
    torch.manual_seed(0)
    net = resnet.resnet(8, in_channels=1, widths=(2, 4, 8)).train()
    x = torch.randn(4, 1, 12, 12)
    stds = resnet.response_stds(net, x)
    assert len(stds) == 7 and all(s > 0 for s in stds) and net.training
    block = net.stages[1][0]
    torch.nn.init.zeros_(block.bn2.weight)  # this block's residual response F(x) is then exactly 0
    assert resnet.response_stds(net, x)[4] == 0.0
    with pytest.raises(ValueError):
        resnet.response_stds(torch.nn.Linear(2, 2), x)
    with pytest.raises(ValueError):
        resnet.response_stds(net, torch.randn(4, 3, 12, 12))


def test_resnet_overfits_a_tiny_batch():
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 12, 12), torch.arange(16) % 4
    net = resnet.resnet(14, num_classes=4, in_channels=1, widths=(4, 8, 8))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    first = F.cross_entropy(net(x), y).item()
    for _ in range(60):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first
    assert (net.eval()(x).argmax(1) == y).all()


def test_bench_block_keys():
    out = resnet.bench_block(repeats=1, batch=2, channels=4, size=6)
    assert set(out) == {"ours_ms", "torchvision_ms", "ratio", "name"}
    assert out["ours_ms"] > 0 and out["torchvision_ms"] > 0
    with pytest.raises(ValueError):
        resnet.bench_block(repeats=0)
