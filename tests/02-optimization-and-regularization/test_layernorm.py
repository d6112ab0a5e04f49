"""Tests for 02-optimization-and-regularization/06-layer-norm/layernorm.py (Ba, Kiros & Hinton 2016)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import common

layernorm = common.topic("layernorm")

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def _pair(shape, affine, bias, dtype, seed=0):
    """Our LayerNorm and nn.LayerNorm with the same random gain and bias."""
    torch.manual_seed(seed)
    ref = nn.LayerNorm(shape, elementwise_affine=affine, bias=bias, dtype=dtype)
    ours = layernorm.LayerNorm(shape, elementwise_affine=affine, bias=bias).to(dtype)
    if affine:
        with torch.no_grad():
            for p in ref.parameters():
                p.normal_()
        ours.load_state_dict(ref.state_dict())
    return ours, ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(7,), 7, (3, 5), (2, 3, 4)])
@pytest.mark.parametrize("affine,bias", [(True, True), (True, False), (False, True)])
def test_layernorm_matches_torch_values_and_grads(shape, affine, bias, dtype):
    ours, ref = _pair(shape, affine, bias, dtype)
    trailing = (shape,) if isinstance(shape, int) else shape
    g = torch.Generator().manual_seed(1)
    x = (3 * torch.randn(4, 6, *trailing, generator=g, dtype=dtype) + 2).requires_grad_()
    gy = torch.randn(x.shape, generator=g, dtype=dtype)
    y_ours, y_ref = ours(x), ref(x)
    assert y_ours.shape == x.shape and y_ours.dtype == dtype
    assert (y_ours - y_ref).abs().max().item() <= TOL[dtype]
    inputs_ours, inputs_ref = [x, *ours.parameters()], [x, *ref.parameters()]
    assert len(inputs_ours) == len(inputs_ref) == 1 + (affine + (affine and bias))
    for a, b in zip(torch.autograd.grad(y_ours, inputs_ours, gy), torch.autograd.grad(y_ref, inputs_ref, gy)):
        assert a.shape == b.shape and (a - b).abs().max().item() <= TOL[dtype] * max(1.0, b.abs().max().item())


def test_layer_norm_function_matches_f_layer_norm():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 8, generator=g, dtype=torch.float64)
    w, b = torch.randn(3, 8, generator=g, dtype=torch.float64), torch.randn(3, 8, generator=g, dtype=torch.float64)
    for eps in (1e-5, 0.1, 0.0):
        ref = F.layer_norm(x, (3, 8), w, b, eps)
        assert (layernorm.layer_norm(x, (3, 8), w, b, eps) - ref).abs().max() < 1e-10
    assert (layernorm.layer_norm(x, 8) - F.layer_norm(x, (8,))).abs().max() < 1e-10


def test_layer_norm_statistics_per_case_and_batch_independence():
    g = torch.Generator().manual_seed(0)
    x = 5 * torch.randn(6, 32, generator=g, dtype=torch.float64) - 3
    y = layernorm.layer_norm(x, 32, eps=0.0)
    assert torch.allclose(y.mean(1), torch.zeros(6, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(y.pow(2).mean(1), torch.ones(6, dtype=torch.float64), atol=1e-12)  # biased variance 1
    one = layernorm.layer_norm(x[2:3], 32, eps=0.0)  # a batch of one gives the same answer: no batch statistics
    assert torch.allclose(one, y[2:3], atol=1e-14)


def test_layer_norm_invariances_eq_6_and_7():
    g = torch.Generator().manual_seed(0)
    W, x = torch.randn(16, 10, generator=g, dtype=torch.float64), torch.randn(4, 10, generator=g, dtype=torch.float64)
    gamma = torch.randn(10, generator=g, dtype=torch.float64)
    base = layernorm.layer_norm(x @ W.T, 16, eps=0.0)
    W2 = 2.5 * W + torch.ones(16, 1, dtype=torch.float64) * gamma  # W' = delta W + 1 gamma^T (eq. 6)
    assert torch.allclose(layernorm.layer_norm(x @ W2.T, 16, eps=0.0), base, atol=1e-10)
    scale = torch.tensor([[0.3], [2.0], [7.0], [1.0]], dtype=torch.float64)  # each case re-scaled (eq. 7)
    assert torch.allclose(layernorm.layer_norm((scale * x) @ W.T, 16, eps=0.0), base, atol=1e-10)


def test_layer_norm_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: layernorm.layer_norm(x, (2, 5), w, b), (x, w, b))
    assert torch.autograd.gradcheck(lambda x: layernorm.layer_norm(x, 5, eps=1e-3), (x,))


@pytest.mark.parametrize("bad_shape", [(4,), (5, 3), 6, (2, 3, 5, 5)])
def test_layer_norm_rejects_mismatched_normalized_shape(bad_shape):
    x = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="expected an input whose last"):
        layernorm.layer_norm(x, bad_shape)
    with pytest.raises(ValueError, match=r"\(2, 3, 5\)"):  # the message names what came
        layernorm.LayerNorm(bad_shape)(x)


@pytest.mark.parametrize("bad", [0, -3, (), (4, 0), 2.0, "4", None, (True,)])
def test_layer_norm_rejects_bad_normalized_shape(bad):
    with pytest.raises(ValueError):
        layernorm.LayerNorm(bad)
    with pytest.raises(ValueError):
        layernorm.layer_norm(torch.randn(2, 4), bad)


def test_layer_norm_rejects_bad_inputs_and_parameters():
    x = torch.randn(2, 4)
    with pytest.raises(ValueError):
        layernorm.layer_norm(torch.ones(2, 4, dtype=torch.long), 4)
    with pytest.raises(ValueError):
        layernorm.layer_norm([1.0, 2.0], 2)
    with pytest.raises(ValueError):
        layernorm.layer_norm(torch.randn(0, 4), 4)
    with pytest.raises(ValueError, match="weight must have shape"):
        layernorm.layer_norm(x, 4, weight=torch.ones(3))
    with pytest.raises(ValueError, match="bias must have shape"):
        layernorm.layer_norm(x, 4, bias=torch.ones(2, 4))
    for eps in (-1e-5, float("nan"), "0.1"):
        with pytest.raises(ValueError):
            layernorm.layer_norm(x, 4, eps=eps)
    with pytest.raises(ValueError):
        layernorm.LayerNorm(4, elementwise_affine="yes")


def test_layernorm_module_init_and_repr():
    m = layernorm.LayerNorm((2, 3))
    assert torch.equal(m.weight, torch.ones(2, 3)) and torch.equal(m.bias, torch.zeros(2, 3))  # Sec. 6 default
    assert layernorm.LayerNorm(3, elementwise_affine=False).weight is None
    assert layernorm.LayerNorm(3, bias=False).bias is None
    assert "(2, 3)" in repr(m)
    assert set(m.state_dict()) == set(nn.LayerNorm((2, 3)).state_dict())


def _copy_from_torch(cell, ref):
    with torch.no_grad():
        cell.weight_ih.copy_(ref.weight_ih)
        cell.weight_hh.copy_(ref.weight_hh)
        cell.bias.copy_(ref.bias_ih + ref.bias_hh)


def test_plain_cell_matches_nn_lstmcell_values_and_grads():
    torch.manual_seed(0)
    ref = nn.LSTMCell(6, 9, dtype=torch.float64)
    cell = layernorm.LNLSTMCell(6, 9, layer_norm=False).double()
    _copy_from_torch(cell, ref)
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(5, 4, 6, generator=g, dtype=torch.float64)
    s_ours = s_ref = (torch.randn(4, 9, generator=g, dtype=torch.float64), torch.randn(4, 9, generator=g, dtype=torch.float64))
    for t in range(5):  # unrolled over time, so the recurrence is compared too
        s_ours, s_ref = cell(xs[t], s_ours), ref(xs[t], s_ref)
        for a, b in zip(s_ours, s_ref):
            assert (a - b).abs().max().item() < 1e-10
    loss_ours, loss_ref = (s_ours[0] ** 2).sum() + s_ours[1].sum(), (s_ref[0] ** 2).sum() + s_ref[1].sum()
    g_ours = torch.autograd.grad(loss_ours, [cell.weight_ih, cell.weight_hh, cell.bias])
    g_ref = torch.autograd.grad(loss_ref, [ref.weight_ih, ref.weight_hh, ref.bias_ih])
    for a, b in zip(g_ours, g_ref):
        assert (a - b).abs().max().item() < 1e-10
    zero = cell(xs[0])  # no state means zeros, as in nn.LSTMCell
    assert all((a - b).abs().max() < 1e-12 for a, b in zip(zero, ref(xs[0])))


def test_ln_cell_follows_the_supplementary_equations():
    torch.manual_seed(0)
    cell = layernorm.LNLSTMCell(3, 4, layer_norm=True).double()
    with torch.no_grad():
        for p in (cell.ln_ih.weight, cell.ln_ih.bias, cell.ln_hh.weight, cell.ln_hh.bias, cell.ln_c.weight, cell.ln_c.bias):
            p.normal_()
    g = torch.Generator().manual_seed(1)
    x, h, c = (torch.randn(2, n, generator=g, dtype=torch.float64) for n in (3, 4, 4))

    def ln(z, m):  # eq. (15)-(16) written out
        mu, sigma = z.mean(-1, keepdim=True), z.var(-1, unbiased=False, keepdim=True).add(1e-5).sqrt()
        return (z - mu) / sigma * m.weight + m.bias

    pre = ln(x @ cell.weight_ih.T, cell.ln_ih) + ln(h @ cell.weight_hh.T, cell.ln_hh) + cell.bias  # eq. (20)
    i, f, gg, o = pre.chunk(4, 1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)  # eq. (21)
    h_new = torch.sigmoid(o) * torch.tanh(ln(c_new, cell.ln_c))  # eq. (22)
    h_ours, c_ours = cell(x, (h, c))
    assert torch.allclose(h_ours, h_new, atol=1e-12) and torch.allclose(c_ours, c_new, atol=1e-12)


def test_ln_cell_shapes_params_gradcheck():
    torch.manual_seed(0)
    cell = layernorm.LNLSTMCell(3, 4).double()
    names = {n for n, _ in cell.named_parameters()}
    assert {"ln_ih.weight", "ln_hh.bias", "ln_c.weight"} <= names
    assert cell.ln_ih.normalized_shape == (16,) and cell.ln_c.normalized_shape == (4,)
    assert not any(n.startswith("ln_") for n, _ in layernorm.LNLSTMCell(3, 4, layer_norm=False).named_parameters())
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h, c: cell(x, (h, c)), (x, h, c))
    h1, c1 = cell(x)
    assert h1.shape == c1.shape == (2, 4)


def test_ln_cell_is_invariant_to_rescaling_its_input():
    torch.manual_seed(0)
    cell = layernorm.LNLSTMCell(5, 6).double()
    x = torch.randn(3, 5, dtype=torch.float64)
    state = (torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64))
    a, b = cell(x, state), cell(40.0 * x, state)  # W_x x is normalised on its own (eq. 20)
    assert all(torch.allclose(u, v, atol=1e-4) for u, v in zip(a, b))  # up to eps = 1e-5 in the variance
    plain = layernorm.LNLSTMCell(5, 6, layer_norm=False).double()
    assert not torch.allclose(plain(x, state)[0], plain(40.0 * x, state)[0], atol=1e-2)


def test_ln_cell_rejects_bad_input():
    cell = layernorm.LNLSTMCell(3, 4)
    for bad in (torch.randn(2, 5), torch.randn(2, 3, 1), torch.ones(2, 3, dtype=torch.long), torch.randn(0, 3), "x"):
        with pytest.raises(ValueError):
            cell(bad)
    x = torch.randn(2, 3)
    for state in ((torch.zeros(2, 4),), (torch.zeros(2, 5), torch.zeros(2, 4)), (torch.zeros(3, 4), torch.zeros(3, 4)),
                  torch.zeros(2, 4)):
        with pytest.raises(ValueError):
            cell(x, state)
    for kwargs in (dict(input_size=0, hidden_size=4), dict(input_size=3, hidden_size=0),
                   dict(input_size=3, hidden_size=4, layer_norm=1), dict(input_size=3.0, hidden_size=4)):
        with pytest.raises(ValueError):
            layernorm.LNLSTMCell(**kwargs)


def test_lstm_classifier_shapes_and_bad_input():
    torch.manual_seed(0)
    for ln in (True, False):
        net = layernorm.LSTMClassifier(7, 12, 10, layer_norm=ln)
        assert net(torch.randn(5, 9, 7)).shape == (5, 10)
    net = layernorm.LSTMClassifier(7, 12, 10)
    for bad in (torch.randn(5, 9, 6), torch.randn(5, 0, 7), torch.randn(5, 7), torch.randn(0, 3, 7)):
        with pytest.raises(ValueError):
            net(bad)
    with pytest.raises(ValueError):
        layernorm.LSTMClassifier(7, 12, 1)


def test_lstm_classifier_runs_the_cell_over_time():
    torch.manual_seed(0)
    net = layernorm.LSTMClassifier(2, 3, 4).double()
    x = torch.randn(2, 5, 2, dtype=torch.float64)
    state = None
    for t in range(5):
        state = net.cell(x[:, t], state)
    assert torch.allclose(net(x), net.out(state[0]))


@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
def test_norm_mlp_shapes_and_normalisation(norm):
    torch.manual_seed(0)
    net = layernorm.NormMLP(norm, hidden=(16, 8), in_features=12, num_classes=5)
    assert net(torch.randn(6, 3, 4)).shape == (6, 5)
    kinds = {"none": nn.Identity, "batch": nn.BatchNorm1d, "layer": layernorm.LayerNorm}
    assert all(isinstance(m, kinds[norm]) for m in net.norms) and len(net.norms) == 2
    assert not isinstance(net.out, (nn.BatchNorm1d, layernorm.LayerNorm))  # the softmax layer is not normalised


def test_norm_mlp_layer_norm_is_independent_of_the_batch_but_batch_norm_is_not():
    torch.manual_seed(0)
    x = torch.randn(8, 12)
    ln, bn = layernorm.NormMLP("layer", (16,), 12, 3), layernorm.NormMLP("batch", (16,), 12, 3)
    assert torch.allclose(ln(x)[:4], ln(x[:4]), atol=1e-6)  # train mode, another batch: same outputs
    assert not torch.allclose(bn(x)[:4], bn(x[:4]), atol=1e-3)


@pytest.mark.parametrize("kwargs", [dict(norm="group"), dict(norm=None), dict(hidden=()), dict(hidden=(4, 0)),
                                    dict(in_features=0), dict(num_classes=1), dict(hidden=8)])
def test_norm_mlp_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        layernorm.NormMLP(**kwargs)


def test_norm_mlp_rejects_bad_input():
    net = layernorm.NormMLP("layer", (8,), in_features=4)
    for bad in (torch.randn(3, 5), torch.zeros(3, 4, dtype=torch.long), torch.randn(0, 4)):
        with pytest.raises(ValueError):
            net(bad)


def test_ln_lstm_learns_a_toy_sequence_task():
    torch.manual_seed(0)
    x = torch.randn(64, 5, 3)
    y = (x[:, 0, 0] > 0).long()  # the label is the sign of the first step's first input: needs memory
    net = layernorm.LSTMClassifier(3, 16, 2, layer_norm=True)
    opt = torch.optim.Adam(net.parameters(), lr=0.03)
    for _ in range(80):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (net(x).argmax(1) == y).float().mean() > 0.95


def test_ln_mlp_learns_a_toy_problem_at_batch_size_one():
    torch.manual_seed(0)
    x = torch.randn(64, 10)
    y = (x[:, 0] * x[:, 1] > 0).long()
    net = layernorm.NormMLP("layer", (32, 32), in_features=10, num_classes=2)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(15):
        for i in torch.randperm(64, generator=g):  # batch size 1: batch norm could not even run
            loss = F.cross_entropy(net(x[i:i + 1]), y[i:i + 1])
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert (net(x).argmax(1) == y).float().mean() > 0.95


def test_bench_layernorm_returns_the_documented_keys():
    r = layernorm.bench_layernorm(repeats=1, shape=(2, 3, 16))
    assert set(r) == {"ours_ms", "theirs_ms", "ratio", "name"}
    assert r["ours_ms"] > 0 and r["theirs_ms"] > 0 and abs(r["ratio"] - r["ours_ms"] / r["theirs_ms"]) < 1e-9
    with pytest.raises(ValueError):
        layernorm.bench_layernorm(repeats=0)
