"""Tests for 01-deep-neural-networks/01-dnn/dnn.py (Rumelhart, Hinton & Williams, 1986)."""

import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import common

dnn = common.topic("dnn")
Value = dnn.Value

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


# ---------------------------------------------------------------- the scalar engine


def _pair(x):
    return Value(x), torch.tensor(x, dtype=torch.float64, requires_grad=True)


# Each entry builds the same node in both worlds; inputs are kept in safe ranges by composing
# with tanh / squares, which also exercises those primitives.
UNARY = {
    "neg": (lambda v: -v, lambda t: -t),
    "tanh": (lambda v: v.tanh(), torch.tanh),
    "sigmoid": (lambda v: v.sigmoid(), torch.sigmoid),
    "relu": (lambda v: v.relu(), torch.relu),
    "exp_tanh": (lambda v: v.tanh().exp(), lambda t: torch.tanh(t).exp()),
    "log_sq": (lambda v: (v * v + 0.5).log(), lambda t: torch.log(t * t + 0.5)),
    "pow3": (lambda v: v**3, lambda t: t**3),
    "sqrt_sq": (lambda v: (v * v + 1) ** 0.5, lambda t: (t * t + 1) ** 0.5),
    "rsub": (lambda v: 2.0 - v, lambda t: 2.0 - t),
    "rdiv": (lambda v: 3.0 / (v * v + 1), lambda t: 3.0 / (t * t + 1)),
    "scale": (lambda v: 1.5 * v + 0.25, lambda t: 1.5 * t + 0.25),
}
BINARY = {
    "add": (lambda a, b: a + b, lambda a, b: a + b),
    "sub": (lambda a, b: a - b, lambda a, b: a - b),
    "mul": (lambda a, b: a * b, lambda a, b: a * b),
    "div": (lambda a, b: a / (b * b + 1), lambda a, b: a / (b * b + 1)),
}


@pytest.mark.parametrize("seed", range(25))
def test_value_random_expressions_match_torch_autograd(seed):
    rng = random.Random(seed)
    leaves = [_pair(rng.uniform(-2, 2)) for _ in range(4)]
    pool = list(leaves)
    for _ in range(30):  # 30 random ops; nodes are reused, so gradients must accumulate
        if rng.random() < 0.5:
            fv, ft = UNARY[rng.choice(sorted(UNARY))]
            v, t = rng.choice(pool)
            pool.append((fv(v), ft(t)))
        else:
            fv, ft = BINARY[rng.choice(sorted(BINARY))]
            (va, ta), (vb, tb) = rng.choice(pool), rng.choice(pool)
            pool.append((fv(va, vb), ft(ta, tb)))
    out_v = sum((v for v, _ in pool[-5:]), Value(0.0)).tanh()
    out_t = torch.tanh(sum(t for _, t in pool[-5:]))
    assert abs(out_v.data - out_t.item()) <= 1e-10
    out_v.backward()
    grads_t = torch.autograd.grad(out_t, [t for _, t in leaves], allow_unused=True)
    for (v, _), g in zip(leaves, grads_t):
        assert abs(v.grad - (0.0 if g is None else g.item())) <= 1e-10


@pytest.mark.parametrize("name", sorted(UNARY) + sorted(BINARY))
def test_each_value_op_matches_torch(name):
    (va, ta), (vb, tb) = _pair(0.7), _pair(-1.3)
    if name in UNARY:
        out_v, out_t = UNARY[name][0](va), UNARY[name][1](ta)
    else:
        out_v, out_t = BINARY[name][0](va, vb), BINARY[name][1](ta, tb)
    out_v.backward()
    out_t.backward()
    assert abs(out_v.data - out_t.item()) <= 1e-12
    assert abs(va.grad - ta.grad.item()) <= 1e-12
    if name in BINARY:
        assert abs(vb.grad - tb.grad.item()) <= 1e-12


def test_value_shared_node_accumulates_gradient():
    x = Value(3.0)
    y = x * x + x  # dy/dx = 2x + 1 = 7
    y.backward()
    assert y.data == 12.0 and x.grad == 7.0


def test_value_backward_on_a_deep_graph_has_no_recursion_limit():
    x, y = Value(0.5), Value(0.0)
    for _ in range(5000):
        y = y + x
    y.backward()
    assert x.grad == 5000.0


def test_sigmoid_is_stable_for_large_inputs():
    assert Value(-1000.0).sigmoid().data == 0.0
    assert Value(1000.0).sigmoid().data == 1.0


# ---------------------------------------------------------------- networks


def _torch_forward(weights, X, act, bypass=False):
    """Reference forward pass with torch ops on the same weights."""
    f = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "linear": lambda t: t}[act]
    h = X
    for i, (W, b) in enumerate(weights):
        inp = torch.cat([h, X], 1) if bypass and i == 1 else h
        h = f(inp @ W.T + b)
    return h


def _flat_grads(weights):
    """Torch grads in MLP.parameters() order: per layer, per neuron, weights then bias."""
    return torch.cat([torch.cat([W.grad, b.grad[:, None]], 1).flatten() for W, b in weights])


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu", "linear"])
@pytest.mark.parametrize("sizes,bypass", [([4, 3, 2], False), ([3, 1], True), ([1], False)])
def test_mlp_gradients_match_torch_autograd(act, sizes, bypass):
    g = torch.Generator().manual_seed(1)
    net = dnn.MLP(3, sizes, act=act, init_range=0.8, seed=2, bypass=bypass)
    X = torch.randn(5, 3, generator=g, dtype=torch.float64)
    T = torch.rand(5, sizes[-1], generator=g, dtype=torch.float64)
    E, out, grads = net.loss_and_grads(X, T)
    weights = [(W.requires_grad_(), b.requires_grad_()) for W, b in net.weights()]
    y = _torch_forward(weights, X, act, bypass)
    ref = 0.5 * ((y - T) ** 2).sum()
    ref.backward()
    assert (out - y.detach()).abs().max().item() <= 1e-10
    assert abs(E - ref.item()) <= 1e-10
    assert (torch.tensor(grads, dtype=torch.float64) - _flat_grads(weights)).abs().max().item() <= 1e-10


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu", "linear"])
@pytest.mark.parametrize("out,reduction", [("sigmoid", "sum"), ("sigmoid", "mean"), ("softmax", "mean"),
                                           ("softmax", "sum")])
def test_tensor_mlp_hand_written_backward_matches_autograd(dtype, act, out, reduction):
    g = torch.Generator().manual_seed(3)
    net = dnn.TensorMLP([6, 5, 4, 3], act=act, out=out, seed=4, dtype=dtype)
    x = torch.randn(7, 6, generator=g, dtype=dtype)
    if out == "sigmoid":
        target = torch.rand(7, 3, generator=g, dtype=dtype)
    else:
        target = torch.randint(0, 3, (7,), generator=g)
    loss, y, grads = net.loss_and_grads(x, target, reduction=reduction)
    params = [p.clone().requires_grad_() for p in net.parameters()]
    h = x
    for i in range(0, len(params), 2):
        z = h @ params[i].T + params[i + 1]
        h = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "linear": lambda t: t}[act](z) \
            if i < len(params) - 2 else z
    if out == "sigmoid":
        ref_y = torch.sigmoid(h)
        ref = 0.5 * ((ref_y - target) ** 2).sum(1)
        ref = ref.sum() if reduction == "sum" else ref.mean()
    else:
        ref_y = torch.softmax(h, 1)
        ref = F.cross_entropy(h, target, reduction=reduction)
    ref_grads = torch.autograd.grad(ref, params)
    assert (y - ref_y).abs().max().item() <= TOL[dtype]
    assert abs(loss.item() - ref.item()) <= TOL[dtype] * max(1.0, abs(ref.item()))
    for a, b in zip(grads, ref_grads):
        assert a.shape == b.shape and a.dtype == dtype
        assert (a - b).abs().max().item() <= TOL[dtype]


def test_tensor_mlp_output_shapes():
    net = dnn.TensorMLP([10, 8, 4], out="softmax")
    acts = net.forward(torch.rand(3, 10))
    assert [tuple(a.shape) for a in acts] == [(3, 10), (3, 8), (3, 4)]
    assert torch.allclose(acts[-1].sum(1), torch.ones(3))


def test_tensor_mlp_trains_exactly_like_the_value_mlp():
    """Same initial weights, same XOR sweeps: the two implementations stay equal to 1e-10."""
    X, T = dnn.xor()
    scalar = dnn.MLP(2, [2, 1], seed=5)
    tensor = dnn.TensorMLP([2, 2, 1], dtype=torch.float64)
    tensor.set_weights(scalar.weights())
    rs = dnn.train_patterns(scalar, X, T, eta=0.5, alpha=0.9, max_sweeps=60, stop_tol=0.0)
    rt = dnn.train_patterns(tensor, X, T, eta=0.5, alpha=0.9, max_sweeps=60, stop_tol=0.0)
    assert max(abs(a - b) for a, b in zip(rs["losses"], rt["losses"])) <= 1e-10
    for (W, b), (W2, b2) in zip(scalar.weights(), zip(tensor.params[::2], tensor.params[1::2])):
        assert (W - W2).abs().max() <= 1e-10 and (b - b2).abs().max() <= 1e-10


# ---------------------------------------------------------------- learning


def test_delta_rule_momentum_update():
    p = torch.zeros(2, dtype=torch.float64)
    opt = dnn.DeltaRule(eta=0.5, alpha=0.9)
    opt.step([p], [torch.tensor([1.0, -2.0], dtype=torch.float64)])  # dw(1) = -0.5 g
    assert torch.equal(p, torch.tensor([-0.5, 1.0], dtype=torch.float64))
    opt.step([p], [torch.tensor([1.0, 0.0], dtype=torch.float64)])  # dw(2) = -0.5 g + 0.9 dw(1)
    assert torch.allclose(p, torch.tensor([-0.5 - 0.5 - 0.45, 1.0 + 0.9], dtype=torch.float64))
    v = Value(1.0)
    dnn.DeltaRule(eta=0.1).step([v], [2.0])
    assert abs(v.data - 0.8) < 1e-15


def test_xor_is_learned_within_a_fixed_number_of_sweeps():
    X, T = dnn.xor()
    net = dnn.MLP(2, [2, 1], seed=0)
    r = dnn.train_patterns(net, X, T, eta=0.5, alpha=0.9, max_sweeps=1000)
    assert r["solved_at"] is not None and r["solved_at"] <= 1000
    assert torch.equal((r["outputs"] > 0.5).to(T.dtype), T)
    assert r["losses"][-1] < r["losses"][0]


def test_a_net_without_hidden_units_cannot_learn_xor():
    X, T = dnn.xor()
    net = dnn.TensorMLP([2, 1], init_range=0.3, dtype=torch.float64)
    r = dnn.train_patterns(net, X, T, eta=0.5, alpha=0.9, max_sweeps=2000)
    assert r["solved_at"] is None
    assert r["losses"][-1] > 0.49  # the best a linear separator with logistic output can do is E = 0.5


def test_encoder_learns_a_distinct_code_in_its_hidden_units():
    X, T = dnn.encoder(8)
    net = dnn.TensorMLP([8, 3, 8], init_range=0.3, dtype=torch.float64)
    r = dnn.train_patterns(net, X, T, eta=0.1, alpha=0.9, max_sweeps=3000)
    assert r["solved_at"] is not None
    codes = (net.forward(X)[1] > 0.5).int()  # (8, 3) thresholded hidden states
    assert len({tuple(c.tolist()) for c in codes}) == 8


def test_tensor_mlp_overfits_a_tiny_batch():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 20, generator=g), torch.randint(0, 10, (32,), generator=g)
    net = dnn.TensorMLP([20, 64, 10], out="softmax", seed=0)
    opt = dnn.DeltaRule(eta=0.5, alpha=0.9)
    for _ in range(200):
        loss, _, grads = net.loss_and_grads(x, y, reduction="mean")
        opt.step(net.parameters(), grads)
    assert (net(x).argmax(1) == y).all() and loss.item() < 0.05


def test_datasets():
    X, T = dnn.xor()
    assert X.shape == (4, 2) and T.flatten().tolist() == [0, 1, 1, 0]
    X, T = dnn.encoder(8)
    assert torch.equal(X, torch.eye(8, dtype=torch.float64)) and torch.equal(X, T)
    X, T = dnn.mirror_symmetry(6)
    assert X.shape == (64, 6) and len({tuple(r) for r in X.tolist()}) == 64
    assert int(T.sum()) == 8  # 2^3 patterns are palindromes
    assert all((r == r[::-1]) == bool(t) for r, t in zip(X.tolist(), T.flatten().tolist()))


# ---------------------------------------------------------------- parity with PyTorch on random shapes


_TORCH_ACT = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU, "linear": nn.Identity}


@pytest.mark.parametrize("case", range(8))
def test_tensor_mlp_matches_a_pytorch_twin_on_random_shapes(case):
    """A few random depths, widths, batch sizes, dtypes and heads against nn.Linear + autograd."""
    g = torch.Generator().manual_seed(100 + case)
    pick = lambda n: int(torch.randint(0, n, (1,), generator=g))  # noqa: E731
    dtype = (torch.float32, torch.float64)[pick(2)]
    act, out = dnn.ACTIVATIONS[pick(4)], ("sigmoid", "softmax")[pick(2)]
    sizes = [1 + pick(9) for _ in range(2 + pick(3))]  # 1 to 3 weight layers, widths 1-9
    batch, reduction = 1 + pick(8), ("sum", "mean")[pick(2)]
    net = dnn.TensorMLP(sizes, act=act, out=out, seed=case, dtype=dtype)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(n_in, n_out, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(net.params[2 * i])
            lin.bias.copy_(net.params[2 * i + 1])
        layers += [lin, _TORCH_ACT[act]()] if i < len(sizes) - 2 else [lin]
    twin = nn.Sequential(*layers)
    x = torch.randn(batch, sizes[0], generator=g, dtype=dtype)
    if out == "sigmoid":
        target = torch.rand(batch, sizes[-1], generator=g, dtype=dtype)
        y_ref = torch.sigmoid(twin(x))
        ref = F.mse_loss(y_ref, target, reduction="sum") / 2 / (batch if reduction == "mean" else 1)
    else:
        target = torch.randint(0, sizes[-1], (batch,), generator=g)
        logits = twin(x)
        y_ref, ref = torch.softmax(logits, 1), F.cross_entropy(logits, target, reduction=reduction)
    loss, y, grads = net.loss_and_grads(x, target, reduction=reduction)
    ref_grads = [t for lin in twin if isinstance(lin, nn.Linear)
                 for t in torch.autograd.grad(ref, [lin.weight, lin.bias], retain_graph=True)]
    tol = TOL[dtype] * 10
    assert (y - y_ref).abs().max().item() <= tol
    assert abs(loss.item() - ref.item()) <= tol * max(1.0, abs(ref.item()))
    for a, b in zip(grads, ref_grads):
        assert a.shape == b.shape and (a - b).abs().max().item() <= tol


# ---------------------------------------------------------------- hardening (issue 7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_loss_is_finite_when_logits_are_far_apart(dtype):
    """Logits 60 and -60: softmax gives exp(-120), which is 0 in float32; the loss must still be 120."""
    net = dnn.TensorMLP([1, 2], out="softmax", dtype=dtype)
    net.set_weights([(torch.tensor([[60.0], [-60.0]], dtype=dtype), torch.zeros(2, dtype=dtype))])
    x, target = torch.ones(2, 1, dtype=dtype), torch.tensor([1, 0])
    logits = torch.tensor([[60.0, -60.0]] * 2, dtype=dtype)
    for reduction in ("sum", "mean"):
        loss, _, grads = net.loss_and_grads(x, target, reduction=reduction)
        ref = F.cross_entropy(logits, target, reduction=reduction)
        assert torch.isfinite(loss) and abs(loss.item() - ref.item()) <= TOL[dtype] * ref.item()
        assert all(torch.isfinite(g).all() for g in grads)
    assert net.loss(logits, target, "sum").item() == pytest.approx(120.0, rel=1e-6)
    big = torch.tensor([[1e4, -1e4, 0.0]], dtype=dtype)  # far beyond exp's float range
    loss3 = dnn.TensorMLP([1, 3], out="softmax", dtype=dtype).loss(big, torch.tensor([2]), "sum")
    assert loss3.item() == pytest.approx(F.cross_entropy(big, torch.tensor([2])).item())


def test_class_targets_are_checked_before_they_index():
    net = dnn.TensorMLP([4, 3], out="softmax")
    x = torch.zeros(2, 4)
    for bad in (torch.tensor([0, 3]), torch.tensor([-1, 0])):
        with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
            net.loss_and_grads(x, bad)
        acts = net.forward(x)
        with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
            net.backward(acts, bad)
        with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
            net.loss(torch.zeros(2, 3), bad)
    with pytest.raises(ValueError, match="must hold integers"):
        net.loss_and_grads(x, torch.zeros(2))
    with pytest.raises(ValueError, match="must hold 2 labels"):
        net.loss_and_grads(x, torch.tensor([0, 1, 2]))
    # any integer dtype is read as class indices (a uint8 index tensor would otherwise act as a mask)
    ref = net.loss_and_grads(x, torch.tensor([2, 0]))
    for dt in (torch.int32, torch.uint8):
        got = net.loss_and_grads(x, torch.tensor([2, 0], dtype=dt))
        assert torch.equal(got[0], ref[0]) and all(torch.equal(a, b) for a, b in zip(got[2], ref[2]))


@pytest.mark.parametrize("bad", [0, 0.0, -0.3, float("nan"), float("inf"), "0.3"])
def test_init_range_must_be_a_positive_number(bad):
    with pytest.raises(ValueError, match="init_range"):
        dnn.TensorMLP([2, 2, 1], init_range=bad)
    with pytest.raises(ValueError, match="init_range"):
        dnn.MLP(2, [2, 1], init_range=bad)


def test_reduction_must_be_sum_or_mean_everywhere():
    net = dnn.TensorMLP([4, 3, 2])
    x, t = torch.zeros(2, 4), torch.zeros(2, 2)
    acts = net.forward(x)
    with pytest.raises(ValueError, match="reduction must be one of 'sum', 'mean'; got 'avg'"):
        net.backward(acts, t, reduction="avg")
    with pytest.raises(ValueError, match="reduction"):
        net.loss(torch.zeros(2, 2), t, reduction="avg")
    with pytest.raises(ValueError, match="reduction"):
        net.loss_and_grads(x, t, reduction="max")
    with pytest.raises(ValueError, match="list of 3 activations"):
        net.backward(acts[:2], t)


def test_delta_rule_needs_one_grad_per_parameter():
    opt = dnn.DeltaRule(eta=0.1)
    p = [torch.zeros(2), torch.zeros(3)]
    with pytest.raises(ValueError, match=r"equal length, got lengths \[2, 1\]"):
        opt.step(p, [torch.ones(2)])
    with pytest.raises(ValueError, match="equal length"):
        opt.step([Value(1.0)], [1.0, 2.0])
    opt.step(p, [torch.ones(2), torch.ones(3)])
    with pytest.raises(ValueError, match="earlier steps had 2"):
        opt.step(p[:1], [torch.ones(2)])
    assert torch.equal(p[0], torch.full((2,), -0.1))  # the failed calls changed nothing


def test_empty_batches_raise_a_clear_error():
    net = dnn.TensorMLP([4, 3, 2], out="softmax")
    empty = torch.zeros(0, 4)
    with pytest.raises(ValueError, match="empty batch"):
        net(empty)
    with pytest.raises(ValueError, match="empty batch"):
        net.loss_and_grads(empty, torch.zeros(0, dtype=torch.int64), reduction="mean")
    with pytest.raises(ValueError, match="empty batch"):
        net.loss(torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="empty set of patterns"):
        dnn.MLP(4, [2]).loss_and_grads(torch.zeros(0, 4), torch.zeros(0, 2))
    with pytest.raises(ValueError, match="empty"):
        dnn.train_patterns(dnn.MLP(4, [2]), torch.zeros(0, 4), torch.zeros(0, 2), 0.1, 0.9, max_sweeps=3)


# ---------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="real number"):
        Value("1.0")
    with pytest.raises(ValueError, match="real number"):
        Value(True)
    with pytest.raises(ValueError, match="constant real exponent"):
        Value(2.0) ** Value(2.0)
    with pytest.raises(ValueError, match="positive argument"):
        Value(-1.0).log()
    with pytest.raises(ValueError, match="non-zero base"):
        Value(0.0) ** -1
    with pytest.raises(ValueError, match="expects 2 inputs, got 3"):
        dnn.MLP(2, [2, 1])([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"sizes\[1\] must be an int >= 1, got 0"):
        dnn.MLP(2, [2, 0])
    with pytest.raises(ValueError, match="n_in must be an int >= 1"):
        dnn.MLP(0, [1])
    with pytest.raises(ValueError, match="at least 1 layer size"):
        dnn.MLP(2, [])
    with pytest.raises(ValueError, match="activation must be one of"):
        dnn.MLP(2, [1], act="gelu")
    with pytest.raises(ValueError, match="activation must be one of"):
        dnn.Neuron(2, act="gelu")
    with pytest.raises(ValueError, match="one hidden layer"):
        dnn.MLP(2, [2, 2, 1], bypass=True)
    with pytest.raises(ValueError, match=r"T of shape \(4, 1\)"):
        dnn.MLP(2, [2, 1]).loss_and_grads(torch.zeros(4, 2), torch.zeros(4, 2))
    net = dnn.TensorMLP([4, 3, 2])
    with pytest.raises(ValueError, match=r"shape \(B, 4\), got \(5, 3\)"):
        net(torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"x must have rank 2, got shape \(4,\)"):
        net(torch.zeros(4))
    with pytest.raises(ValueError, match="x must be floating point"):
        net(torch.zeros(2, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="x must be a tensor"):
        net([[0.0] * 4])
    with pytest.raises(ValueError, match="dtype torch.float32, got torch.float64"):
        net(torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="float target"):
        net.loss_and_grads(torch.zeros(2, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"z of shape \(B, 2\)"):
        net.loss(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"sizes\[1\] must be an int >= 1, got -1"):
        dnn.TensorMLP([4, -1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        dnn.TensorMLP([4])
    with pytest.raises(ValueError, match="out must be one of"):
        dnn.TensorMLP([4, 2], out="tanh")
    with pytest.raises(ValueError, match="dtype must be one of"):
        dnn.TensorMLP([4, 2], dtype=torch.int64)
    with pytest.raises(ValueError, match="seed must be an int"):
        dnn.TensorMLP([4, 2], seed=0.5)
    with pytest.raises(ValueError, match="expected shapes"):
        net.set_weights([(torch.zeros(3, 4), torch.zeros(3))])
    with pytest.raises(ValueError, match="eta must be > 0"):
        dnn.DeltaRule(eta=0.0)
    with pytest.raises(ValueError, match="eta must be finite"):
        dnn.DeltaRule(eta=float("nan"))
    with pytest.raises(ValueError, match="alpha must be < 1"):
        dnn.DeltaRule(eta=0.1, alpha=1.0)
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        dnn.DeltaRule(eta=0.1, alpha=-0.1)
    with pytest.raises(ValueError, match="max_sweeps must be an int >= 0"):
        dnn.train_patterns(net, torch.zeros(1, 4), torch.zeros(1, 2), 0.1, 0.9, max_sweeps=-1)
    with pytest.raises(ValueError, match="max_sweeps must be an int"):
        dnn.train_patterns(net, torch.zeros(1, 4), torch.zeros(1, 2), 0.1, 0.9, max_sweeps=10.0)
    with pytest.raises(ValueError, match="stop_tol must be >= 0"):
        dnn.train_patterns(net, torch.zeros(1, 4), torch.zeros(1, 2), 0.1, 0.9, max_sweeps=1, stop_tol=-1)
    with pytest.raises(ValueError, match="n must be an int >= 2"):
        dnn.mirror_symmetry(1)
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        dnn.encoder(0)
