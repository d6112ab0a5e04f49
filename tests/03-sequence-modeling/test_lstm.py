"""Tests for 03-sequence-modeling/02-lstm/lstm.py (Hochreiter & Schmidhuber 1997; the GRU of Cho et al. 2014)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import common

lstm = common.topic("lstm")

D = torch.float64


def _grads(out, state, inputs, seed=1):
    """Gradients of a random linear function of the outputs and final states w.r.t. ``inputs``."""
    g = torch.Generator().manual_seed(seed)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
    for s in state:
        loss = loss + (s * torch.randn(s.shape, generator=g, dtype=s.dtype)).sum()
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("with_state", [True, False])
def test_lstm_matches_nn_lstm_outputs_states_grads(with_state):
    torch.manual_seed(0)
    ref = nn.LSTM(4, 6, batch_first=True, dtype=D)
    ours = lstm.LSTM(4, 6).double()
    ours.load_state_dict(ref.state_dict())  # same parameter names: weights copy one-to-one
    x = torch.randn(3, 9, 4, dtype=D, requires_grad=True)
    h0, c0 = (torch.randn(3, 6, dtype=D, requires_grad=True) for _ in range(2))
    out_o, (h_o, c_o) = ours(x, (h0, c0) if with_state else None)
    out_r, (h_r, c_r) = ref(x, (h0[None], c0[None]) if with_state else None)
    assert out_o.shape == (3, 9, 6) and h_o.shape == c_o.shape == (3, 6)
    for a, b in ((out_o, out_r), (h_o, h_r[0]), (c_o, c_r[0])):
        assert (a - b).abs().max().item() < 1e-10
    leaves = [x, h0, c0] if with_state else [x]
    g_o = _grads(out_o, (h_o, c_o), leaves + list(ours.parameters()))
    g_r = _grads(out_r, (h_r[0], c_r[0]), leaves + list(ref.parameters()))
    for a, b in zip(g_o, g_r):
        assert a.shape == b.shape and (a - b).abs().max().item() < 1e-10


def test_gru_matches_nn_gru_outputs_states_grads():
    torch.manual_seed(0)
    ref = nn.GRU(4, 5, batch_first=True, dtype=D)
    ours = lstm.GRU(4, 5).double()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 8, 4, dtype=D, requires_grad=True)
    h0 = torch.randn(3, 5, dtype=D, requires_grad=True)
    out_o, h_o = ours(x, h0)
    out_r, h_r = ref(x, h0[None])
    assert out_o.shape == (3, 8, 5) and h_o.shape == (3, 5)
    assert (out_o - out_r).abs().max().item() < 1e-10 and (h_o - h_r[0]).abs().max().item() < 1e-10
    g_o = _grads(out_o, (h_o,), [x, h0, *ours.parameters()])
    g_r = _grads(out_r, (h_r[0],), [x, h0, *ref.parameters()])
    for a, b in zip(g_o, g_r):
        assert (a - b).abs().max().item() < 1e-10
    assert torch.equal(ours(x)[1], ours(x, torch.zeros(3, 5, dtype=D))[1])  # no state means zeros


def test_gru_reset_before_is_cho_eq_8():
    torch.manual_seed(0)
    gru = lstm.GRU(3, 4, reset_after=False).double()
    x, h = torch.randn(2, 1, 3, dtype=D), torch.randn(2, 4, dtype=D)
    W, U, b, c = gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0
    pre_x = x[:, 0] @ W.T + b
    r = torch.sigmoid(pre_x[:, :4] + h @ U[:4].T + c[:4])  # eq. (5)
    z = torch.sigmoid(pre_x[:, 4:8] + h @ U[4:8].T + c[4:8])  # eq. (6)
    h_tilde = torch.tanh(pre_x[:, 8:] + (r * h) @ U[8:].T + c[8:])  # eq. (8): reset before the product
    expected = z * h + (1 - z) * h_tilde  # eq. (7)
    assert torch.allclose(gru(x, h)[1], expected, atol=1e-12)
    after = lstm.GRU(3, 4, reset_after=True).double()
    after.load_state_dict(gru.state_dict())
    assert not torch.allclose(after(x, h)[1], expected, atol=1e-6)  # PyTorch's form is a different function


def test_lstm1997_follows_equations_a5_to_a7_unit_by_unit():
    torch.manual_seed(0)
    cell = lstm.LSTM1997(2, n_blocks=2, block_size=2).double()
    with torch.no_grad():
        cell.weight.normal_()
        cell.bias.normal_()
    x = torch.randn(1, 4, 2, dtype=D)
    out, (u_T, s_T) = cell(x)
    sig = lambda v: 1 / (1 + torch.exp(-v))  # noqa: E731  (A.1)
    W, b = cell.weight, cell.bias
    prev = [0.0] * 8  # activations of cells 0-3, input gates 0-1, output gates 0-1 at t - 1
    s = [0.0] * 4
    for t in range(4):
        inp = [x[0, t, 0], x[0, t, 1]] + prev
        net = [b[k] + sum(W[k, m] * inp[m] for m in range(10)) for k in range(8)]  # rows: in1 in2 out1 out2 c1..c4
        y_in, y_out = [sig(net[0]), sig(net[1])], [sig(net[2]), sig(net[3])]
        y_c = []
        for v in range(4):
            j = v // 2  # block of cell v
            s[v] = s[v] + y_in[j] * (4 * sig(net[4 + v]) - 2)  # CEC with g in [-2, 2] (A.3)
            y_c.append(y_out[j] * (2 * sig(s[v]) - 1))  # h in [-1, 1] (A.2)
        assert torch.allclose(out[0, t], torch.stack(y_c), atol=1e-12)
        prev = y_c + y_in + y_out
    assert torch.allclose(s_T[0], torch.stack(s), atol=1e-12)
    assert torch.allclose(u_T[0], torch.stack(prev), atol=1e-12)


def test_lstm1997_paper_architecture_and_initialisation():
    torch.manual_seed(0)
    net = lstm.make_model("lstm1997", 2, block_size=2)  # Experiment 4: 2 blocks of size 2, 93 weights (Table 7)
    assert sum(p.numel() for p in net.parameters()) == 93
    cell = net.core
    assert cell.n_cells == 4 and cell.n_units == 8 and cell.weight.shape == (8, 10)
    assert cell.bias[:2].tolist() == [-3.0, -6.0]  # input gate biases (Sec. 5.4.3)
    assert cell.weight.abs().max() <= 0.1 and cell.bias[2:].abs().max() <= 0.1
    assert lstm.LSTM1997(3, 2, input_gate_bias=(-1.0, -2.0)).bias[:2].tolist() == [-1.0, -2.0]


def test_squashing_functions_ranges():
    v = torch.linspace(-40, 40, 1001, dtype=D)
    g, h = lstm.squash_g(v), lstm.squash_h(v)
    assert g.min() >= -2 and g.max() <= 2 and g.min() < -1.99 and g.max() > 1.99
    assert h.min() >= -1 and h.max() <= 1 and h.min() < -0.99 and h.max() > 0.99
    zero = torch.zeros(1, dtype=D)
    assert lstm.squash_g(zero).item() == 0.0 and lstm.squash_h(zero).item() == 0.0


def test_truncated_gradient_keeps_the_carousel_and_only_the_carousel():
    torch.manual_seed(0)
    x = lstm.adding_problem(2, 200, torch.Generator().manual_seed(0))[0].double()
    full = lstm.LSTM1997(2, 2, block_size=2).double()
    trunc = lstm.LSTM1997(2, 2, block_size=2, truncated=True).double()
    trunc.load_state_dict(full.state_dict())
    s0 = torch.zeros(2, 4, dtype=D, requires_grad=True)
    u0 = torch.zeros(2, 8, dtype=D)
    out_t, (_, s_t) = trunc(x, (u0, s0))
    out_f, _ = full(x, (u0, s0))
    assert torch.equal(out_t, out_f)  # the same forward pass
    jac = torch.stack([torch.autograd.grad(s_t[:, k].sum(), s0, retain_graph=True)[0] for k in range(4)], 1)
    assert torch.equal(jac, torch.eye(4, dtype=D).expand(2, 4, 4))  # d s(T) / d s(0) = I exactly: the CEC
    g_t = torch.autograd.grad(out_t[:, -1].sum(), trunc.weight)[0]
    g_f = torch.autograd.grad(out_f[:, -1].sum(), full.weight)[0]
    assert not torch.allclose(g_t, g_f)  # truncation changes the gradient


def test_adding_problem_follows_experiment_4():
    T = 40
    x, lengths, y = lstm.adding_problem(500, T, torch.Generator().manual_seed(0))
    assert x.shape == (500, 44, 2) and lengths.dtype == torch.int64 and y.shape == (500,)
    assert lengths.min() >= T and lengths.max() <= T + T // 10
    values, marker = x[..., 0], x[..., 1]
    assert values.abs().max() <= 1
    for i in range(500):
        n = lengths[i].item()
        marks = (marker[i] == 1).nonzero().flatten().tolist()
        assert len(marks) == 2 and min(marks) < 10  # one of the two among the first 10 pairs
        assert max(marks) <= T // 2 - 1  # the other among the first T/2 - 1 still unmarked pairs
        assert marker[i, n - 1] == -1 and (marker[i, 0] == -1 or 0 in marks)
        assert set(marker[i, :n].tolist()) <= {-1.0, 0.0, 1.0} and (marker[i] == -1).sum() == 2 - (0 in marks)
        assert torch.all(x[i, n:] == 0)  # padding after the end
        if 0 in marks:
            assert values[i, 0] == 0  # a marked first pair counts zero
        assert torch.isclose(y[i], 0.5 + values[i, marks].sum() / 4, atol=1e-6)
    assert 0 <= y.min() and y.max() <= 1
    again = lstm.adding_problem(500, T, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], x) and torch.equal(again[2], y)


def test_last_step_regressor_reads_each_sequence_at_its_end():
    torch.manual_seed(0)
    net = lstm.make_model("lstm", 5, fast=False).double()
    assert isinstance(net.core, lstm.LSTM)
    x = torch.randn(3, 7, 2, dtype=D)
    lengths = torch.tensor([7, 4, 1])
    pred = net(x, lengths)
    assert pred.shape == (3,)
    x2 = x.clone()
    x2[1, 4:] = 99.0  # whatever follows a sequence's end is never read
    assert torch.allclose(net(x2, lengths), pred)
    out, _ = net.core(x[1:2, :4])
    assert torch.allclose(pred[1], net.head(out[0, -1]).squeeze())


@pytest.mark.parametrize("kind,cls", [("rnn", nn.RNN), ("lstm", nn.LSTM), ("gru", nn.GRU), ("lstm1997", None)])
def test_make_model_kinds(kind, cls):
    net = lstm.make_model(kind, 3)
    if cls is not None:
        assert isinstance(net.core, cls) and net.core.batch_first
    assert net(torch.randn(2, 5, 2), torch.tensor([5, 3])).shape == (2,)
    assert isinstance(lstm.make_model("gru", 3, fast=False).core, lstm.GRU)


def test_bad_sequences_and_states_raise_value_errors():
    cores = {"LSTM": lstm.LSTM(3, 4), "GRU": lstm.GRU(3, 4), "LSTM1997": lstm.LSTM1997(3, 2)}
    for name, core in cores.items():
        for bad in (torch.randn(2, 3), torch.randn(2, 5, 3, 1), torch.randn(2, 5, 4), torch.randn(2, 0, 3),
                    torch.randn(0, 5, 3), torch.ones(2, 5, 3, dtype=torch.long), "x"):
            with pytest.raises(ValueError):
                core(bad)
        with pytest.raises(ValueError, match=rf"{name} expected a sequence \(B, T >= 1, 3\), got \(2, 5, 4\)"):
            core(torch.randn(2, 5, 4))
    x = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match=r"expected a state of shape \(2, 4\).*got \(2, 5\)"):
        lstm.LSTM(3, 4)(x, (torch.zeros(2, 5), torch.zeros(2, 4)))
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        lstm.GRU(3, 4)(x, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="tuple of 2"):
        lstm.LSTM(3, 4)(x, torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\(2, 6\)"):  # LSTM1997(3, 2): u holds 2 cells + 4 gates
        lstm.LSTM1997(3, 2)(x, (torch.zeros(2, 5), torch.zeros(2, 2)))
    with pytest.raises(ValueError):
        lstm.LSTM1997(3, 2)(x, (torch.zeros(2, 6), torch.zeros(2, 3)))


@pytest.mark.parametrize("make", [
    lambda: lstm.LSTM(0, 4), lambda: lstm.LSTM(3, 0), lambda: lstm.LSTM(3.0, 4), lambda: lstm.GRU(3, 4, reset_after=1),
    lambda: lstm.LSTM1997(3, 0), lambda: lstm.LSTM1997(3, 2, block_size=0), lambda: lstm.LSTM1997(3, 2, truncated="no"),
    lambda: lstm.LSTM1997(3, 2, init_range=-0.1), lambda: lstm.LSTM1997(3, 2, input_gate_bias=(-3.0,)),
    lambda: lstm.LSTM1997(3, 1, input_gate_bias=(float("nan"),)), lambda: lstm.make_model("transformer", 4),
    lambda: lstm.make_model("lstm", 0), lambda: lstm.adding_problem(0, 50), lambda: lstm.adding_problem(4, 21),
    lambda: lstm.adding_problem(4, 50.0), lambda: lstm.bench_lstm(repeats=0), lambda: lstm.bench_lstm(hidden_size=0),
])
def test_bad_arguments_raise_value_errors(make):
    with pytest.raises(ValueError):
        make()


def test_regressor_rejects_bad_lengths():
    net = lstm.make_model("lstm", 3)
    x = torch.randn(2, 5, 2)
    for bad in (torch.tensor([5, 6]), torch.tensor([0, 3]), torch.tensor([5]), torch.tensor([5.0, 3.0]),
                torch.tensor([[5, 3]])):
        with pytest.raises(ValueError):
            net(x, bad)
    with pytest.raises(ValueError):
        net(torch.randn(2, 5), torch.tensor([5, 3]))


STEPS = 300  # about 10,000 sequences of length 22 to 24


def test_lstm1997_learns_the_short_adding_problem():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x_val, len_val, y_val = lstm.adding_problem(256, 22, torch.Generator().manual_seed(1))
    net = lstm.make_model("lstm1997", 2, block_size=2)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    baseline = F.mse_loss(torch.full_like(y_val, 0.5), y_val).item()
    with common.threads(1):
        for _ in range(STEPS):
            x, lengths, y = lstm.adding_problem(32, 22, gen)
            loss = F.mse_loss(net(x, lengths), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            val = F.mse_loss(net(x_val, len_val), y_val).item()
    assert val < 0.25 * baseline



def test_bench_lstm_returns_the_documented_keys():
    r = lstm.bench_lstm(repeats=1, batch=2, steps=3, input_size=4, hidden_size=5)
    assert set(r) == {"ours_ms", "theirs_ms", "ratio", "name"}
    assert r["ours_ms"] > 0 and r["theirs_ms"] > 0 and abs(r["ratio"] - r["ours_ms"] / r["theirs_ms"]) < 1e-9
