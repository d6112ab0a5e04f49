"""Tests for 03-sequence-modeling/01-rnn/rnn.py (Williams & Zipser 1989; the Elman RNN)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import common

rnn = common.topic("rnn")

D = torch.float64


def _pair(input_size=5, hidden=7, nonlinearity="tanh", dtype=D):
    torch.manual_seed(0)
    ref = nn.RNN(input_size, hidden, nonlinearity=nonlinearity, batch_first=True, dtype=dtype)
    ours = rnn.ElmanRNN(input_size, hidden, nonlinearity).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("with_h0", [False, True])
def test_elman_matches_nn_rnn_outputs_state_and_grads(nonlinearity, with_h0):
    ours, ref = _pair(nonlinearity=nonlinearity)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 11, 5, generator=g, dtype=D, requires_grad=True)
    h0 = torch.randn(3, 7, generator=g, dtype=D, requires_grad=True) if with_h0 else None
    out_o, h_o = ours(x, h0)
    out_r, h_r = ref(x, None if h0 is None else h0[None])
    assert out_o.shape == (3, 11, 7) and h_o.shape == (3, 7)
    assert (out_o - out_r).abs().max() < 1e-10 and (h_o - h_r[0]).abs().max() < 1e-10
    assert torch.equal(out_o[:, -1], h_o)
    gy, gh = torch.randn(out_o.shape, generator=g, dtype=D), torch.randn(h_o.shape, generator=g, dtype=D)
    leaves_o = [x, *ours.parameters()] + ([h0] if with_h0 else [])
    leaves_r = [x, *ref.parameters()] + ([h0] if with_h0 else [])
    grads_o = torch.autograd.grad((out_o * gy).sum() + (h_o * gh).sum(), leaves_o)
    grads_r = torch.autograd.grad((out_r * gy).sum() + (h_r[0] * gh).sum(), leaves_r)
    for a, b in zip(grads_o, grads_r):
        assert a.shape == b.shape and (a - b).abs().max() < 1e-10


def test_elman_float32_and_state_dict_interchange():
    ours, ref = _pair(dtype=torch.float32)
    assert set(ours.state_dict()) == set(ref.state_dict())
    bound = 1 / 7 ** 0.5
    assert all(p.abs().max() <= bound for p in rnn.ElmanRNN(5, 7).parameters())  # nn.RNN's init range
    x = torch.randn(2, 6, 5)
    assert (ours(x)[0] - ref(x)[0]).abs().max() < 1e-5


def test_elman_step_is_the_recurrence():
    ours, _ = _pair()
    x, h = torch.randn(2, 5, dtype=D), torch.randn(2, 7, dtype=D)
    want = torch.tanh(x @ ours.weight_ih_l0.T + ours.bias_ih_l0 + h @ ours.weight_hh_l0.T + ours.bias_hh_l0)
    assert torch.allclose(ours.step(x, h), want, atol=1e-14)


def test_elman_rejects_bad_input():
    net = rnn.ElmanRNN(5, 7)
    for bad in (torch.randn(6, 5), torch.randn(2, 6, 5, 1), torch.randn(2, 6, 4), torch.randn(2, 0, 5),
                torch.randn(0, 6, 5), torch.ones(2, 6, 5, dtype=torch.long), "x"):
        with pytest.raises(ValueError):
            net(bad)
    with pytest.raises(ValueError, match="rank 3"):
        net(torch.randn(6, 5))
    x = torch.randn(2, 6, 5)
    for h0 in (torch.zeros(2, 8), torch.zeros(3, 7), torch.zeros(1, 2, 7), torch.zeros(2, 7, dtype=torch.long)):
        with pytest.raises(ValueError):
            net(x, h0)
    with pytest.raises(ValueError, match=r"\(2, 7\).*\(2, 8\)"):  # names what was expected and what came
        net(x, torch.zeros(2, 8))
    for kwargs in (dict(input_size=0, hidden_size=3), dict(input_size=2, hidden_size=0),
                   dict(input_size=2, hidden_size=3, nonlinearity="sigmoid"), dict(input_size=2.0, hidden_size=3)):
        with pytest.raises(ValueError):
            rnn.ElmanRNN(**kwargs)


def test_char_rnn_cores_agree_and_shapes():
    torch.manual_seed(0)
    a = rnn.CharRNN(11, 4, 9, core="torch").double()
    b = rnn.CharRNN(11, 4, 9, core="ours").double()
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 11, (3, 8))
    (la, ha), (lb, hb) = a(idx), b(idx)
    assert la.shape == (3, 8, 11) and ha.shape == (3, 9)
    assert (la - lb).abs().max() < 1e-10 and (ha - hb).abs().max() < 1e-10
    h0 = torch.randn(3, 9, dtype=D)
    assert (a(idx, h0)[0] - b(idx, h0)[0]).abs().max() < 1e-10
    # running in two halves with the state carried equals one run
    l1, h1 = a(idx[:, :5])
    l2, _ = a(idx[:, 5:], h1)
    assert torch.allclose(torch.cat([l1, l2], 1), la, atol=1e-12)


def test_char_rnn_rejects_bad_input():
    net = rnn.CharRNN(5, 3, 4)
    for bad in (torch.tensor([1, 2, 3]), torch.zeros(2, 3, 1, dtype=torch.long), torch.randn(2, 3),
                torch.zeros(2, 0, dtype=torch.long), torch.tensor([[0, 5]]), torch.tensor([[-1, 0]]),
                torch.zeros(0, 3, dtype=torch.long)):
        with pytest.raises(ValueError):
            net(bad)
    with pytest.raises(ValueError, match="hidden_size"):
        net(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 6))
    for kwargs in (dict(vocab_size=1, embed_size=3, hidden_size=4), dict(vocab_size=5, embed_size=0, hidden_size=4),
                   dict(vocab_size=5, embed_size=3, hidden_size=0), dict(vocab_size=5, embed_size=3, hidden_size=4,
                                                                         core="lstm")):
        with pytest.raises(ValueError):
            rnn.CharRNN(**kwargs)
    with pytest.raises(ValueError):
        net.sample(0)


def test_char_rnn_learns_and_samples_a_toy_language():
    torch.manual_seed(0)
    words = ["abc", "abd", "bca", "cab"]  # token 0 starts and ends every word, as in the names experiment
    stoi = {c: i + 1 for i, c in enumerate("abcd")}
    seqs = torch.tensor([[0] + [stoi[c] for c in w] + [0] for w in words])  # (4, 5)
    net = rnn.CharRNN(5, 8, 32)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(150):
        loss = F.cross_entropy(net(seqs[:, :-1])[0].reshape(-1, 5), seqs[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    # the entropy of the language: first letter from {a, b, c} (a twice as often), then one choice of two
    floor = (-(0.5 * torch.tensor(0.5).log() + 0.5 * torch.tensor(0.25).log()) - 0.25 * torch.tensor(0.5).log()) / 4
    assert loss.item() < floor.item() + 0.05
    out = net.sample(50, generator=torch.Generator().manual_seed(0))
    assert len(out) == 50 and all(all(0 < t < 5 for t in s) for s in out)
    assert sum("".join("_abcd"[t] for t in s) in words for s in out) >= 45


def test_lag_gradient_norms_match_autograd_and_vanish_at_small_weights():
    torch.manual_seed(0)
    net = rnn.CharRNN(6, 3, 5).double()
    idx = torch.randint(0, 6, (4, 7))
    norms = rnn.lag_gradient_norms(net, idx)
    assert norms.shape == (6,)
    # brute force: dL/dh_{T-1-k} by re-running the tail of the sequence from h_{T-1-k}
    emb = net.emb(idx[:, :-1]).detach()
    core = rnn.ElmanRNN(3, 5).double()
    core.load_state_dict(net.rnn.state_dict())
    for k in range(6):
        j = 5 - k  # h_j, the state k steps before the last
        h = core(emb[:, :j + 1])[1].detach().requires_grad_()
        last = core(emb[:, j + 1:], h)[1] if j < 5 else h
        (g,) = torch.autograd.grad(F.cross_entropy(net.out(last), idx[:, -1]), h)
        assert abs(g.norm(dim=1).mean().item() - norms[k].item()) < 1e-12
    with torch.no_grad():
        net.rnn.weight_hh_l0.mul_(0.1)
    small = rnn.lag_gradient_norms(net, idx)
    assert (small[1:] < small[:-1]).all() and small[-1] < 1e-3 * small[0]
    with pytest.raises(ValueError):
        rnn.lag_gradient_norms(net, idx[:, :1])
    with pytest.raises(ValueError):
        rnn.lag_gradient_norms(nn.Linear(2, 2), idx)


def _net_problem(n=4, m=3, B=2, T=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = 0.8 * torch.randn(n, n + m, generator=g, dtype=D)
    x = torch.rand(B, T, m, generator=g, dtype=D)
    x[..., -1] = 1.0  # the bias line
    d = torch.rand(B, T, n, generator=g, dtype=D)
    mask = torch.rand(B, T, n, generator=g) < 0.5
    return W, x, d, mask


@pytest.mark.parametrize("teacher_forcing", [False, True])
def test_rtrl_gradient_equals_bptt(teacher_forcing):
    W, x, d, mask = _net_problem()
    out = rnn.rtrl(W, x, d, mask, teacher_forcing=teacher_forcing)
    ref = rnn.bptt_grad(W, x, d, mask, teacher_forcing=teacher_forcing)
    assert out["grad"].shape == W.shape
    assert (out["grad"] - ref).abs().max() < 1e-8 and ref.abs().max() > 1e-3
    assert torch.equal(out["W"], W)  # lr = 0: the weights do not move
    y = rnn.run_net(W, x, d, mask, teacher_forcing)
    assert torch.allclose(out["y"], y, atol=1e-14)
    assert abs(out["loss"].item() - 0.5 * (torch.where(mask, d - y, 0.0) ** 2).sum().item()) < 1e-12


def test_rtrl_sensitivities_are_dy_dw():
    W, x, d, mask = _net_problem(n=3, m=2, B=1, T=5)
    mask = torch.zeros_like(mask)
    mask[0, -1, 1] = True  # one target, unit 1 at the last step: -grad is e * dy_1(T)/dW (eq. 14-15)
    d[0, -1, 1] = rnn.run_net(W, x)[0, -1, 1] + 1.0  # so that e = 1
    jac = torch.autograd.functional.jacobian(lambda w: rnn.run_net(w, x)[0, -1, 1], W)
    assert torch.allclose(-rnn.rtrl(W, x, d, mask)["grad"], jac, atol=1e-12)


def test_rtrl_online_follows_the_gradient_at_small_rates_and_learns():
    W, x, d, mask = _net_problem(T=1)
    one = rnn.rtrl(W, x, d, mask, lr=0.1)  # one step: the online change is exactly -lr * gradient
    assert torch.allclose(one["W"], W - 0.1 * one["grad"], atol=1e-14)
    # a delay task: unit 0 must output the input bit of the step before (needs the state)
    g = torch.Generator().manual_seed(0)
    bits = (torch.rand(1, 600, 1, generator=g) < 0.5).to(D)
    x = torch.cat([bits, torch.ones_like(bits)], 2)  # (1, T, m = 2): bit and bias line
    d = torch.zeros(1, 600, 3, dtype=D)
    d[0, 1:, 0] = bits[0, :-1, 0]
    mask = torch.zeros(1, 600, 3, dtype=torch.bool)
    mask[0, 1:, 0] = True
    W0 = 0.1 * torch.randn(3, 5, generator=g, dtype=D)
    first = rnn.rtrl(W0, x, d, mask)["loss"].item()
    trained = rnn.rtrl(W0, x, d, mask, lr=1.0)["W"]
    after = rnn.rtrl(trained, x, d, mask)["loss"].item()
    assert after < 0.2 * first


def test_rtrl_and_net_reject_bad_input():
    W, x, d, mask = _net_problem()
    for args in ((W[:, :-1], x, d, mask), (W, x[0], d, mask), (W, x, d[:, :-1], mask), (W, x, d, mask[..., :2]),
                 (W.long(), x, d, mask), (W[None], x, d, mask), (W, x, d, mask.double()),
                 (W, x, d.long(), mask)):
        with pytest.raises(ValueError):
            rnn.rtrl(*args)
        with pytest.raises(ValueError):
            rnn.bptt_grad(*args)
    with pytest.raises(ValueError, match="teacher forcing"):
        rnn.run_net(W, x, teacher_forcing=True)
    with pytest.raises(ValueError, match=r"\(4, 7\)"):
        rnn.run_net(W[:, :-1], x)
    for lr in (-0.1, float("nan"), "1"):
        with pytest.raises(ValueError):
            rnn.rtrl(W, x, d, mask, lr=lr)


def test_bench_rnn_returns_the_documented_keys():
    r = rnn.bench_rnn(repeats=1, batch=2, steps=3, input_size=4, hidden_size=5)
    assert set(r) == {"ours_ms", "theirs_ms", "ratio", "name"}
    assert r["ours_ms"] > 0 and r["theirs_ms"] > 0 and abs(r["ratio"] - r["ours_ms"] / r["theirs_ms"]) < 1e-9
    with pytest.raises(ValueError):
        rnn.bench_rnn(repeats=0)
    with pytest.raises(ValueError):
        rnn.bench_rnn(hidden_size=0)
