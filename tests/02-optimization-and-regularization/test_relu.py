"""Tests for 02-optimization-and-regularization/02-relu/relu.py (Glorot, Bordes & Bengio 2011)."""

import pytest
import torch
import torch.nn.functional as F

import common

relu = common.topic("relu")

TOL = {torch.float32: 1e-6, torch.float64: 1e-12}
REFERENCE = {
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softplus": lambda x: torch.logaddexp(x, torch.zeros_like(x)),  # log(e^x + e^0), no linear cut-off
}


def _inputs(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.cat([4 * torch.randn(200, generator=g, dtype=dtype),
                   torch.tensor([0.0, -0.0, 1e-30, -1e-30, 30.0, -30.0, 80.0, -80.0, 200.0, -200.0], dtype=dtype)])
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(REFERENCE))
def test_activation_matches_torch_values_and_grads(name, dtype):
    x = _inputs(dtype).requires_grad_()
    ours, ref = relu.ACTIVATIONS[name](x), REFERENCE[name](x)
    assert ours.dtype == dtype and ours.shape == x.shape
    scale = max(1.0, ref.abs().max().item())
    assert (ours - ref).abs().max().item() <= TOL[dtype] * scale
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    (g_ours,), (g_ref,) = torch.autograd.grad(ours, x, gy), torch.autograd.grad(ref, x, gy)
    assert (g_ours - g_ref).abs().max().item() <= TOL[dtype] * max(1.0, g_ref.abs().max().item())


@pytest.mark.parametrize("name", list(REFERENCE))
def test_activation_finite_at_extremes(name):
    x = torch.tensor([-1e4, -100.0, 100.0, 1e4], requires_grad=True)
    y = relu.ACTIVATIONS[name](x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


def test_relu_gradient_at_zero_is_pytorchs():
    x = torch.tensor([-1.0, 0.0, -0.0, 1.0], requires_grad=True)
    relu.relu(x).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    F.relu(x_ref).sum().backward()
    assert x.grad.tolist() == x_ref.grad.tolist() == [0.0, 0.0, 0.0, 1.0]


def test_relu_output_is_exactly_zero_for_nonpositive_inputs():
    y = relu.relu(torch.tensor([-3.0, -1e-30, 0.0, 2.0]))
    assert y.tolist() == [0.0, 0.0, 0.0, 2.0]


def test_activations_gradcheck_float64():
    x = (torch.randn(20, dtype=torch.float64) + 0.1).requires_grad_()  # away from relu's kink w.p. 1
    for name in REFERENCE:
        assert torch.autograd.gradcheck(relu.ACTIVATIONS[name], (x,))


@pytest.mark.parametrize("bad", [torch.tensor([1, 2, 3]), [0.0, 1.0], None])
def test_activation_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        relu.relu(bad)


def test_glorot_uniform_bound_and_variance():
    w = torch.empty(300, 500)
    relu.glorot_uniform_(w)
    a = (6 / 800) ** 0.5
    assert w.abs().max() <= a
    assert abs(w.var().item() - 2 / 800) < 0.05 * 2 / 800
    with pytest.raises(ValueError):
        relu.glorot_uniform_(torch.empty(3))


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "softplus"])
@pytest.mark.parametrize("depth", [1, 3, 6])
def test_deep_mlp_shapes_and_same_init(activation, depth):
    torch.manual_seed(0)
    net = relu.DeepMLP(depth, width=16, activation=activation, in_features=12, num_classes=5)
    torch.manual_seed(0)
    other = relu.DeepMLP(depth, width=16, activation="relu", in_features=12, num_classes=5)
    for p, q in zip(net.parameters(), other.parameters()):  # same init rule whatever the activation
        assert torch.equal(p, q)
    assert len(net.hidden) == depth
    logits, codes = net(torch.randn(7, 3, 4), return_hidden=True)
    assert logits.shape == (7, 5) and len(codes) == depth
    assert all(h.shape == (7, 16) for h in codes)
    assert all(torch.equal(layer.bias, torch.zeros(layer.bias.shape)) for layer in [*net.hidden, net.out])


def test_deep_mlp_uses_the_from_scratch_activation():
    torch.manual_seed(0)
    net = relu.DeepMLP(2, width=8, activation="tanh", in_features=4)
    x = torch.randn(5, 4)
    h = torch.tanh(net.hidden[1](torch.tanh(net.hidden[0](x))))
    assert torch.allclose(net(x), net.out(h), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [dict(depth=0), dict(depth=-2), dict(depth=2.5), dict(depth=3, activation="gelu"), dict(depth=3, activation=None),
     dict(depth=3, width=0), dict(depth=3, num_classes=1), dict(depth=3, in_features=0)],
)
def test_deep_mlp_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        relu.DeepMLP(**kwargs)


def test_deep_mlp_rejects_bad_input():
    net = relu.DeepMLP(2, width=8, in_features=4)
    with pytest.raises(ValueError):
        net(torch.randn(3, 5))
    with pytest.raises(ValueError):
        net(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError):
        net(torch.randn(0, 4))


def test_sparsity_hand_made():
    h = torch.tensor([[0.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 3.0]])
    assert relu.sparsity(h) == 5 / 8
    assert relu.sparsity([h, torch.ones(2, 2)]) == 5 / 12
    assert relu.sparsity(torch.tensor([1e-30, -1e-30])) == 0.0  # exactly zero only
    assert relu.sparsity(torch.zeros(3, 3)) == 1.0
    with pytest.raises(ValueError):
        relu.sparsity([])
    with pytest.raises(ValueError):
        relu.sparsity([h, "x"])


def test_dead_units_hand_made():
    h = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert relu.dead_units(h).tolist() == [True, False, False, True]
    assert relu.dead_units(torch.ones(2, 3)).sum() == 0
    with pytest.raises(ValueError):
        relu.dead_units(torch.zeros(4))


def test_activation_stats_hand_made_net():
    net = relu.DeepMLP(2, width=3, activation="relu", in_features=2)
    with torch.no_grad():
        net.hidden[0].weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]]))
        net.hidden[0].bias.zero_()
        net.hidden[1].weight.copy_(torch.eye(3))
        net.hidden[1].bias.copy_(torch.tensor([0.0, 0.0, -1.0]))
    x = torch.tensor([[2.0, 1.0], [-1.0, 5.0], [3.0, -1.0], [0.0, 0.0]])
    # layer 1 codes: [2,0,0], [0,1,0], [3,0,0], [0,0,0] -> 9 zeros of 12; unit 3 dead
    # layer 2 codes: the same, unit 3's bias -1 keeps it at 0 -> 9 zeros; unit 3 dead
    stats = relu.activation_stats(net, x, batch_size=3)  # two batches: the dead mask spans both
    assert stats["sparsity"] == [0.75, 0.75]
    assert stats["dead"] == [1, 1]
    assert stats["overall_sparsity"] == 0.75 and stats["dead_total"] == 2
    assert net.training  # mode restored
    with pytest.raises(ValueError):
        relu.activation_stats(torch.nn.Linear(2, 2), x)
    with pytest.raises(ValueError):
        relu.activation_stats(net, x, batch_size=0)


def test_sigmoid_and_tanh_nets_have_no_exact_zeros_but_relu_does():
    torch.manual_seed(0)
    x = torch.randn(64, 20)
    s = {a: relu.activation_stats(relu.DeepMLP(4, 32, a, in_features=20), x)["overall_sparsity"]
         for a in ("relu", "sigmoid")}
    assert s["sigmoid"] == 0.0
    assert 0.3 < s["relu"] < 0.7  # about half the units are off at a symmetric random init


def test_relu_net_learns_a_toy_problem():
    torch.manual_seed(0)
    x = torch.randn(256, 10)
    y = (x[:, 0] * x[:, 1] > 0).long()
    net = relu.DeepMLP(3, 32, "relu", in_features=10, num_classes=2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(300):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (net(x).argmax(1) == y).float().mean() > 0.95
