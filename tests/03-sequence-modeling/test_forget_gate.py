"""Tests for 03-sequence-modeling/03-learning-to-forget/forget_gate.py (Gers, Schmidhuber & Cummins 2000)."""

import re

import pytest
import torch
import torch.nn as nn

import common

fg = common.topic("forget_gate")

# The Reber grammar of Fig. 3 (left) written independently of the module's table, as a regular expression:
# after B, either T S* X or P T* V; from the "X" node: (X T* V P)* then S or X T* V V; from the "V" node: V or P ...
_R = "(TS*X(XT*VP)*(S|XT*VV)|PT*V(V|P(XT*VP)*(S|XT*VV)))"
REBER = re.compile(f"B{_R}E")
EMBEDDED = re.compile(f"B(TB{_R}ET|PB{_R}EP)E")


def _strings(n=3000, seed=0):
    sym, states, lengths = fg.sample_strings(n, torch.Generator().manual_seed(seed))
    return [fg.decode(row) for row in sym], sym, states, lengths


def test_regex_itself_knows_reber_strings():
    for s in ("BTSSXSE", "BPVVE", "BTXSE", "BPTVPSE", "BTXXVVE", "BPTTVPXTVVE"):
        assert REBER.fullmatch(s), s
    for s in ("BTSE", "BPVE", "BTXXSE", "BPSE"):
        assert not REBER.fullmatch(s), s


def test_every_generated_string_is_accepted():
    strings, sym, states, lengths = _strings()
    assert all(EMBEDDED.fullmatch(s) for s in strings)  # independent check
    assert all(fg.accepts(s) for s in strings)  # the module's acceptor on its own table
    assert [len(s) for s in strings] == lengths.tolist()
    assert int(lengths.min()) >= 9  # the minimal ERG string (Sec. 4.1)
    assert (states[sym >= 0] >= 0).all() and (states[sym < 0] == -1).all()
    assert (states.gather(1, (lengths - 1)[:, None]) == 0).all()  # every string ends back at the start state
    assert len({s[1] for s in strings}) == 2 and len(set(strings)) > 300  # both branches, many strings


def test_mean_string_length_is_about_12():
    _, _, _, lengths = _strings(20000, seed=1)
    assert 11.5 < lengths.float().mean().item() < 12.5  # "the average ERG string size of 12" (Sec. 4.1)


def test_acceptor_rejects_non_strings():
    assert fg.accepts("BTBTSSXSETE") and fg.accepts("BPBPVVEPE")
    for s in ("", "BTBTSSXSEPE", "BPBPVVETE", "BTBTSSXSET", "BTBTSSXSETEB", "BTBTSSXSETEBTBTXSETE", "BTBTSSQSETE",
              "TBTSSXSETE"):
        assert not fg.accepts(s), s


def test_continual_stream_next_symbol_sets():
    g = torch.Generator().manual_seed(2)
    sym, states = fg.continual_streams(3, 3000, g)
    assert sym.shape == states.shape == (3, 3000)
    targets = fg.NEXT_SETS[states]  # (3, 3000, 7)
    # the symbol that actually comes next is always one of the targets; there are one or two of them
    nxt = sym[:, 1:]
    assert targets[:, :-1].gather(2, nxt[..., None]).squeeze(2).eq(1).all()
    assert set(targets.sum(2).unique().tolist()) == {1.0, 2.0}
    # every allowed symbol is seen after each state (each branch has probability 0.5), and nothing else
    for q in states[:, :-1].unique().tolist():
        seen = set(nxt[states[:, :-1] == q].tolist())
        assert seen == set(torch.nonzero(fg.NEXT_SETS[q]).flatten().tolist()), q
    B, E = fg.SYMBOLS.index("B"), fg.SYMBOLS.index("E")
    final_e = states == 0  # the E that ends a string (an inner Reber string's E leads elsewhere)
    assert (sym[final_e] == E).all() and final_e.sum() > 3 * 3000 / 14
    assert (targets[final_e] == torch.eye(7)[B]).all()  # after it only a new string's B can come


def test_continual_stream_is_strings_with_the_embedded_structure():
    sym, states = fg.continual_streams(2, 2000, torch.Generator().manual_seed(3))
    targets = fg.NEXT_SETS[states]
    for row, st, tg in zip(sym, states, targets):
        text = fg.decode(row)
        ends = (st == 0).nonzero().flatten().tolist()  # the last symbol of each complete string
        begin = 0
        for end in ends:
            s = text[begin:end + 1]
            assert EMBEDDED.fullmatch(s), s
            assert s[1] == s[-2]  # the second symbol comes back before the final E
            # the one long-lag prediction: before the second-to-last symbol only the stored T or P is possible
            assert tg[end - 2].tolist() == torch.eye(7)[fg.SYMBOLS.index(s[1])].tolist()
            begin = end + 1
        assert begin > 1500  # the stream is whole strings back to back (the rest is a cut-off string)


def _copy_to_torch(net, ref, forget=True):
    """nn.LSTM weights equal to a one-net ExtendedLSTM: c_torch = s / 2 and g's weights halved, because
    g(x) = 4 sigmoid(x) - 2 = 2 tanh(x / 2) and h(x) = 2 sigmoid(x) - 1 = tanh(x / 2)."""
    B, S, I = net.B, net.S, net.n_in
    W = net.W.detach()[0]
    rows = lambda k: W[k * B:(k + 1) * B].repeat_interleave(S, 0)  # a block's gate, once per cell
    i, f, o, c = rows(0), rows(1), rows(2), W[3 * B:] / 2
    if not forget:
        f = torch.zeros_like(f)
        f[:, -1] = 1e4  # sigmoid(1e4) == 1.0 exactly in float64: the gate is stuck open
    gates = torch.cat([i, f, c, o])  # PyTorch's order: i, f, g, o
    with torch.no_grad():
        ref.weight_ih_l0.copy_(gates[:, :I])
        ref.weight_hh_l0.copy_(gates[:, I:I + B * S])
        ref.bias_ih_l0.copy_(gates[:, -1])
        ref.bias_hh_l0.zero_()


@pytest.mark.parametrize("S", [1, 2])
@pytest.mark.parametrize("forget", [True, False])
def test_cell_equals_nn_lstm_after_change_of_variables(S, forget):
    g = torch.Generator().manual_seed(0)
    net = fg.ExtendedLSTM(1, 3, S, n_in=5, n_out=4, forget=forget, generator=g).double()
    with torch.no_grad():
        net.W.mul_(5)  # larger weights than the init, so every nonlinearity is exercised
    ref = nn.LSTM(5, 3 * S, dtype=torch.float64)
    _copy_to_torch(net, ref, forget)
    xs = torch.randn(20, 1, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)  # (T, N, M, I)
    out, trace, final = net(xs)
    s = trace["s"]
    y_ref, (h_ref, c_ref) = ref(xs[:, 0])
    assert out.shape == (20, 1, 6, 4) and s.shape == (20, 1, 6, 3 * S)
    assert (final["y"][0] - h_ref[0]).abs().max() < 1e-10
    assert (s[:, 0] / 2 - torch.stack([c for c in _cell_states(ref, xs[:, 0])])).abs().max() < 1e-10
    # gradients of a loss on the cell outputs, for the inputs and the input-gate weights
    gy = torch.randn(20, 6, 3 * S, generator=g, dtype=torch.float64)
    ys = trace["y"][:, 0]
    ga = torch.autograd.grad((ys * gy).sum(), [xs, net.W])
    gb = torch.autograd.grad((y_ref * gy).sum(), [xs, ref.weight_ih_l0])
    assert (ga[0] - gb[0]).abs().max() < 1e-10
    gi = gb[1][:3 * S].unflatten(0, (3, S)).sum(1)  # the cells of a block share their input gate
    assert (ga[1][0, :3, :5] - gi).abs().max() < 1e-10


def _cell_states(ref, xs):
    h = c = torch.zeros(1, xs.shape[1], ref.hidden_size, dtype=xs.dtype)
    for x in xs:
        _, (h, c) = ref(x[None], (h, c))
        yield c[0]


@pytest.mark.parametrize("shortcut", [True, False])
def test_rtrl_gradient_equals_autograd_on_the_truncated_graph(shortcut):
    g = torch.Generator().manual_seed(1)
    net = fg.ExtendedLSTM(3, 2, 2, forget=torch.tensor([True, False, True]), shortcut=shortcut, generator=g).double()
    with torch.no_grad():
        net.W.mul_(4)
    xs = torch.eye(7, dtype=torch.float64)[torch.randint(0, 7, (15, 3, 2), generator=g)]
    tg = torch.rand(15, 3, 2, 7, generator=g, dtype=torch.float64)
    state = None
    for t in range(15):
        y, state, grads = net.rtrl_step(xs[t], tg[t], state)
        out = net(xs[:t + 1], truncate=True)[0]
        loss = 0.5 * ((tg[t] - out[-1]) ** 2).sum()  # eq. (12), summed over nets and streams
        gW, gO = torch.autograd.grad(loss, [net.W, net.W_out])
        gW, gO = gW * net.W_mask, gO * net.W_out_mask  # weights the nets do not have get no update
        assert (y - out[-1]).abs().max() < 1e-12
        assert (grads["W"] - gW).abs().max() < 1e-10 and (grads["W_out"] - gO).abs().max() < 1e-10
    assert (grads["W"][1, 2:4] == 0).all() and (net.W[1, 2:4] == 0).all()  # standard LSTM: no forget gate
    assert (grads["W"][:, 6:, -1] == 0).all() and (net.W[:, 6:, -1] == 0).all()  # cells have no bias
    assert (grads["W_out"][:, :, 4:11] == 0).all() == (not shortcut)


def test_rtrl_gradient_at_the_first_step_is_the_full_gradient():
    g = torch.Generator().manual_seed(2)
    net = fg.ExtendedLSTM(2, generator=g).double()
    x = torch.eye(7, dtype=torch.float64)[torch.tensor([[0], [3]])]
    tg = torch.rand(2, 1, 7, generator=g, dtype=torch.float64)
    _, _, grads = net.rtrl_step(x, tg)
    out = net(x[None])[0]  # from a reset state nothing is cut off at t = 1
    gW = torch.autograd.grad(0.5 * ((tg - out[0]) ** 2).sum(), net.W)[0] * net.W_mask
    assert (grads["W"] - gW).abs().max() < 1e-12


def test_paper_initialisation_and_weight_count():
    net = fg.ExtendedLSTM(5, generator=torch.Generator().manual_seed(0))
    W, ramp = net.W.detach(), torch.tensor([0.5, 1.0, 1.5, 2.0])
    assert torch.equal(W[:, 0:4, -1], -ramp.expand(5, 4))  # input gates
    assert torch.equal(W[:, 4:8, -1], ramp.expand(5, 4))  # forget gates
    assert torch.equal(W[:, 8:12, -1], -ramp.expand(5, 4))  # output gates
    others = torch.cat([W[:, :12, :-1].flatten(), W[:, 12:, :-1].flatten(), net.W_out.detach().flatten()])
    assert others.abs().max() <= 0.2 and others.std() > 0.05
    assert (W[:, 12:, -1] == 0).all()  # "all gates and output units are biased": the cells are not
    assert net.n_weights() == 424
    assert fg.ExtendedLSTM(1, shortcut=False).n_weights() == 375  # the paper's count (Sec. 4.2)
    assert fg.ExtendedLSTM(1, shortcut=False, forget=False).n_weights() == 375 - 4 * 16
    assert (fg.ExtendedLSTM(1, shortcut=False).W_out[:, :, 8:15] == 0).all()


def test_standard_lstm_state_only_accumulates():
    net = fg.ExtendedLSTM(2, forget=torch.tensor([False, True]), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        net.W[:, 0:4, -1] = 10.0  # input gates open, cell input fixed positive
        net.W[:, 12:, :] = 0.0
        net.W[:, 12:, -1] = 3.0
        net.W[1, 4:8, -1] = -10.0  # the second net forgets everything at every step
    xs = torch.zeros(50, 2, 1, 7)
    _, trace, _ = net(xs)
    s, phi = trace["s"], trace["phi"]
    grow = s[:, 0, 0, 0]
    assert torch.allclose(grow, grow[0] * torch.arange(1, 51).float(), rtol=1e-4)  # eq. (6): linear growth
    assert s[:, 1].abs().max() < 2.0  # eq. (11) with y_phi ~ 0: bounded by the input term
    assert (phi[:, 0] == 1).all() and (phi[:, 1] < 1e-4).all()


def test_online_step_changes_weights_by_lr_times_gradient():
    g = torch.Generator().manual_seed(3)
    net = fg.ExtendedLSTM(2, generator=g).double()
    x = torch.eye(7, dtype=torch.float64)[torch.tensor([[1], [2]])]
    tg = torch.rand(2, 1, 7, generator=g, dtype=torch.float64)
    W0 = net.W.detach().clone()
    _, _, grads = net.rtrl_step(x, tg)
    net.online_step(x, tg, None, torch.tensor([0.5, 0.0], dtype=torch.float64))
    assert torch.allclose(net.W[0], W0[0] - 0.5 * grads["W"][0]) and torch.equal(net.W[1], W0[1])


def test_error_free_length_matches_a_direct_count():
    g = torch.Generator().manual_seed(4)
    net = fg.ExtendedLSTM(3, generator=g)
    sym, states = fg.continual_streams(4, 60, g)
    targets = fg.NEXT_SETS[states]
    lengths = fg.error_free_length(net, sym, targets)
    assert lengths.shape == (3, 4)
    out, trace, _ = net(torch.eye(7)[sym].transpose(0, 1)[:, None].expand(60, 3, 4, 7))
    ok = fg.correct(out, targets.transpose(0, 1)[:, None])  # (60, 3, 4)
    direct = ok.long().cumprod(0).sum(0)
    assert torch.equal(lengths, direct)
    assert fg.correct(torch.tensor([0.69, 0.31]), torch.tensor([1.0, 0.0])).item() is True  # 0.31^2 < 0.49
    assert fg.correct(torch.tensor([0.29, 0.0]), torch.tensor([1.0, 0.0])).item() is False


def test_trainer_protocol_streams_end_at_errors_and_restart_at_a_string():
    g = torch.Generator().manual_seed(5)
    net = fg.ExtendedLSTM(2, generator=g)
    sym, states = fg.continual_streams(2, 500, g)
    tr = fg.OnlineTrainer(net, sym, states, lr=0.5, gamma=torch.tensor([1.0, 0.99]), max_stream=30)
    tr.run(400)
    assert tr.step == 400 and len(tr.ended) > 10
    assert all(0 <= length <= 30 for _, _, length in tr.ended)
    starts = torch.cat([torch.ones(2, 1, dtype=torch.bool), states[:, :-1] == 0], 1)
    for n in range(2):
        assert bool(starts[n, tr.pos[n]]) or tr.run_len[n] > 0  # a new stream always begins at a string start
    frozen_W = net.W.detach().clone()
    tr.run(50, frozen=torch.tensor([True, True]))
    assert torch.equal(net.W, frozen_W)


def test_learning_sanity_seeded():
    """A few thousand online steps teach the short-lag transitions: the squared error on a held-out
    stream falls well below the untrained net's."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(6)
    net = fg.ExtendedLSTM(1, generator=g)
    sym, states = fg.continual_streams(1, 5000, g)
    test_sym, test_states = fg.continual_streams(1, 300, g)
    xs = torch.eye(7)[test_sym].transpose(0, 1)[:, None]  # (300, 1, 1, 7)
    tg = fg.NEXT_SETS[test_states].transpose(0, 1)[:, None]

    def error():
        with torch.no_grad():
            return ((net(xs)[0] - tg) ** 2).mean().item()

    before = error()
    fg.OnlineTrainer(net, sym, states, lr=0.5).run(3000)
    assert error() < 0.7 * before


def test_bad_inputs_raise_value_error():
    net = fg.ExtendedLSTM(2, 2, 2)
    with pytest.raises(ValueError, match="rank 4"):
        net(torch.randn(5, 2, 7))  # (T, N, M, I) expected
    with pytest.raises(ValueError, match="empty"):
        net(torch.randn(0, 2, 1, 7))
    with pytest.raises(ValueError, match=r"\(2, M, 7\)"):
        net(torch.randn(5, 3, 1, 7))  # wrong number of nets
    with pytest.raises(ValueError, match=r"\(2, M, 7\)"):
        net(torch.randn(5, 2, 1, 6))
    with pytest.raises(ValueError, match="state s must have shape"):
        net(torch.randn(5, 2, 1, 7), {"s": torch.zeros(2, 1, 5), "y": torch.zeros(2, 1, 5)})  # 4 cells, not 5
    with pytest.raises(ValueError, match="state s must have shape"):
        net.rtrl_step(torch.randn(2, 1, 7), torch.rand(2, 1, 7), (torch.zeros(2, 1, 4),))
    with pytest.raises(ValueError, match="target must have shape"):
        net.rtrl_step(torch.randn(2, 1, 7), torch.rand(2, 7))
    with pytest.raises(ValueError, match="floating"):
        net(torch.zeros(5, 2, 1, 7, dtype=torch.long))
    for bad in (dict(n_nets=0), dict(n_blocks=0), dict(cells_per_block=1.5), dict(n_in=0), dict(init_range=-1.0),
                dict(forget=torch.tensor([True, False, True])), dict(forget="yes")):
        with pytest.raises(ValueError):
            fg.ExtendedLSTM(**{"n_nets": 2, **bad})
    for bad in (0, -3, 2.0):
        with pytest.raises(ValueError):
            fg.sample_strings(bad)
        with pytest.raises(ValueError):
            fg.continual_streams(2, bad)
        with pytest.raises(ValueError):
            fg.continual_streams(bad, 10)
    sym, states = fg.continual_streams(2, 50)
    with pytest.raises(ValueError, match="rank 2"):
        fg.error_free_length(net, sym[0], fg.NEXT_SETS[states[0]])
    with pytest.raises(ValueError, match="targets must have shape"):
        fg.error_free_length(net, sym, fg.NEXT_SETS[states][:, :40])
    with pytest.raises(ValueError, match="expected symbols and states"):
        fg.OnlineTrainer(net, sym, states[:, :40], lr=0.5)
    with pytest.raises(ValueError, match="expected symbols and states"):
        fg.OnlineTrainer(fg.ExtendedLSTM(3), sym, states, lr=0.5)
    with pytest.raises(ValueError):
        fg.OnlineTrainer(net, sym, states, lr=-0.5)
    with pytest.raises(ValueError):
        fg.OnlineTrainer(net, sym, states, lr=0.5).run(-1)
    with pytest.raises(ValueError):
        net.zero_state(0)


def test_bench_cell_returns_times_and_ratio():
    r = fg.bench_cell(repeats=1, T=5, batch=2, n_in=3, blocks=4)
    assert set(r) == {"ours_ms", "theirs_ms", "ratio", "name"}
    assert r["ours_ms"] > 0 and r["theirs_ms"] > 0 and r["ratio"] == pytest.approx(r["ours_ms"] / r["theirs_ms"])
