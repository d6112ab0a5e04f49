"""Tests for 02-optimization-and-regularization/01-weight-decay/weight_decay.py (Krogh & Hertz 1991)."""

import pytest
import torch

import common

wd = common.topic("weight_decay")


def _problem(seed=0):
    """A small float64 regression net and a fixed batch, so trajectories can be compared step by step."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 5, generator=g, dtype=torch.float64)
    y = torch.randn(32, 3, generator=g, dtype=torch.float64)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    return net, x, y


def _trajectory(make_opt, steps=100, seed=0):
    net, x, y = _problem(seed)
    opt = make_opt(net.parameters())
    out = []
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        opt.step()
        out.append(torch.cat([p.detach().flatten().clone() for p in net.parameters()]))
    return torch.stack(out)  # (steps, n_params)


def _max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("decay", [0.0, 1e-2, 0.3])
def test_sgd_l2_matches_torch_sgd_over_100_steps(momentum, decay):
    mine = _trajectory(lambda p: wd.SGD(p, lr=0.05, weight_decay=decay, momentum=momentum))
    ref = _trajectory(lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=decay, momentum=momentum))
    assert _max_diff(mine, ref) <= 1e-10


@pytest.mark.parametrize("decay", [0.0, 1e-2, 0.5])
def test_decoupled_adam_matches_torch_adamw_over_100_steps(decay):
    mine = _trajectory(lambda p: wd.Adam(p, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=decay))
    ref = _trajectory(lambda p: torch.optim.AdamW(p, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=decay,
                                                  foreach=False))
    assert _max_diff(mine, ref) <= 1e-10


def test_l2_adam_matches_torch_adam_and_differs_from_adamw():
    mine = _trajectory(lambda p: wd.Adam(p, lr=1e-2, weight_decay=0.1, decoupled=False))
    ref = _trajectory(lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.1))
    assert _max_diff(mine, ref) <= 1e-10
    decoupled = _trajectory(lambda p: wd.Adam(p, lr=1e-2, weight_decay=0.1, decoupled=True))
    assert _max_diff(mine, decoupled) > 1e-3  # under Adam the two kinds of decay are different methods


def test_sgd_l2_equals_decoupled_shrink_for_plain_sgd():
    # without momentum, w - lr (g + lambda w) == (1 - lr lambda) w - lr g: the two forms coincide
    a = _trajectory(lambda p: wd.SGD(p, lr=0.05, weight_decay=0.2), steps=20)
    net, x, y = _problem()
    out = []
    for _ in range(20):
        net.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(1 - 0.05 * 0.2).sub_(0.05 * p.grad)
        out.append(torch.cat([p.detach().flatten().clone() for p in net.parameters()]))
    assert _max_diff(a, torch.stack(out)) <= 1e-12


def test_ridge_is_the_fixed_point_of_gradient_descent_with_decay():
    g = torch.Generator().manual_seed(0)
    xi, y, u = wd.teacher_data(20, 12, sigma=0.5, draws=1, generator=g)
    xi, y = xi[0], y[0]
    lam = 0.3
    w = torch.zeros(20, dtype=torch.float64, requires_grad=True)
    opt = wd.SGD([w], lr=0.05, weight_decay=lam)
    for _ in range(3000):
        opt.zero_grad()
        (0.5 * ((y - xi @ w / 20 ** 0.5) ** 2).sum()).backward()  # E0 of eq. (3), linear student eq. (5)
        opt.step()
    assert _max_diff(w.detach(), wd.ridge(xi, y, lam)) <= 1e-8


def test_ridge_matches_a_direct_solve_and_min_norm_at_zero_decay():
    g = torch.Generator().manual_seed(1)
    xi, y, _ = wd.teacher_data(10, 6, sigma=0.3, draws=3, generator=g)
    lams = torch.tensor([0.0, 0.1, 2.0], dtype=torch.float64)
    w = wd.ridge(xi, y, lams)  # (3 draws, 3 decays, 10)
    assert w.shape == (3, 3, 10)
    for d in range(3):
        a = xi[d].T @ xi[d] / 10
        b = xi[d].T @ y[d] / 10 ** 0.5
        for j, lam in enumerate(lams[1:], 1):
            direct = torch.linalg.solve(a + lam * torch.eye(10, dtype=torch.float64), b)
            assert _max_diff(w[d, j], direct) <= 1e-10
        # lambda = 0 with p < N: the smallest-norm interpolant, pinv(X / sqrt N) y
        assert _max_diff(w[d, 0], torch.linalg.pinv(xi[d] / 10 ** 0.5) @ y[d]) <= 1e-9
    assert wd.ridge(xi[0], y[0], 0.1).shape == (10,)


def test_optimal_decay_minimises_the_averaged_error():
    lams = torch.logspace(-2, 1, 31, dtype=torch.float64)
    err = wd.error_surface(20, [20], lams, sigma=0.5, sigma_w=1.0, draws=400, seed=0)[0]
    best = lams[err.argmin()].item()
    opt = wd.optimal_decay(0.5, 1.0)
    assert opt == pytest.approx(0.25)
    assert opt / 1.5 <= best <= opt * 1.5


def test_zero_decay_error_peaks_at_p_equals_n_and_optimal_decay_removes_it():
    n, ps = 20, [10, 16, 20, 24, 30]
    lams = torch.tensor([0.0, wd.optimal_decay(0.5, 1.0)], dtype=torch.float64)
    err = wd.error_surface(n, ps, lams, sigma=0.5, draws=200, seed=0)
    assert ps[err[:, 0].argmax()] == n
    assert (err[1:, 1] <= err[:-1, 1] + 1e-3).all()  # monotone with the optimal decay
    assert err[2, 1] < 0.5 * err[2, 0]


def test_generalisation_error_is_mean_squared_weight_difference():
    u = torch.tensor([1.0, -1.0, 2.0, 0.0], dtype=torch.float64)
    assert wd.generalisation_error(torch.zeros(4, dtype=torch.float64), u).item() == pytest.approx(1.5)


def test_negative_decay_and_bad_inputs_raise_value_error():
    p = [torch.zeros(3, requires_grad=True)]
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        wd.SGD(p, lr=0.1, weight_decay=-1e-4)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        wd.Adam(p, weight_decay=-0.01)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        wd.ridge(torch.randn(4, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64), -0.1)
    with pytest.raises(ValueError, match="weight_decay"):
        wd.ridge(torch.randn(4, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64),
                 torch.tensor([0.1, -0.1]))
    with pytest.raises(ValueError, match="lr must be > 0"):
        wd.SGD(p, lr=0.0)
    with pytest.raises(ValueError, match="momentum"):
        wd.SGD(p, lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match="betas"):
        wd.Adam(p, betas=(0.9,))
    with pytest.raises(ValueError, match="decoupled"):
        wd.Adam(p, decoupled="yes")
    with pytest.raises(ValueError, match="one target per example"):
        wd.ridge(torch.randn(4, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64), 0.1)
    with pytest.raises(ValueError, match="sigma_w"):
        wd.optimal_decay(0.5, 0.0)
    with pytest.raises(ValueError, match="same last dimension"):
        wd.generalisation_error(torch.zeros(3, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))


def test_bench_step_returns_times():
    r = wd.bench_step(repeats=1, sizes=((4, 3), (3,)))
    assert set(r) == {"ours_ms", "adamw_ms", "ratio", "name"}
    assert r["ours_ms"] > 0 and r["adamw_ms"] > 0
    assert r["ratio"] == pytest.approx(r["ours_ms"] / r["adamw_ms"])
