"""Tests for 05-image-generation/03-diffusion/diffusion.py (DDPM, Improved DDPM, DDIM, classifier-free guidance)."""

import math

import pytest
import torch
import torch.nn as nn

import common

diffusion = common.topic("diffusion")
D = diffusion


def _net(**kw):
    torch.manual_seed(0)
    return D.DiffusionUNet(widths=kw.pop("widths", (8, 16)), emb_dim=16, **kw)


def test_linear_and_cosine_schedules():
    b = D.linear_betas(1000)
    assert b.dtype == torch.float64 and b.shape == (1000,)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    c = D.cosine_betas(1000)
    s = 0.008
    f = lambda t: math.cos((t / 1000 + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    ab = torch.cumprod(1 - c, 0)
    for t in (1, 250, 500, 900):  # alpha_bar_t = f(t) / f(0) (Improved DDPM Eq. 17), before clipping bites
        assert ab[t - 1].item() == pytest.approx(f(t) / f(0), rel=1e-10)
    assert c.max().item() <= 0.999 and (c > 0).all()


def test_closed_form_matches_iterated_chain_float64():
    # q(x_t | x_0) from T one-step Gaussians x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps (Eq. 2):
    # mean factor prod sqrt(alpha), variance v_t = alpha_t v_{t-1} + beta_t; Eq. 4 must give the same.
    for betas in (D.linear_betas(1000), D.cosine_betas(1000)):
        sched = D.Schedule(betas)
        x0 = torch.randn(4, 1, 2, 2, dtype=torch.float64)
        m, v = x0.clone(), torch.zeros(())
        for t in range(1000):
            m, v = m * (1 - betas[t]).sqrt(), (1 - betas[t]) * v + betas[t]
            if t in (0, 10, 500, 999):
                mean, var = sched.q_stats(x0, torch.full((4,), t))
                assert (mean - m).abs().max().item() < 1e-10 and (var - v).abs().max().item() < 1e-10


def test_q_sample_empirical_statistics():
    sched = D.Schedule(D.linear_betas())
    x0 = torch.full((20000, 1, 1, 1), 0.7, dtype=torch.float64)
    t = torch.full((20000,), 300)
    xt = sched.q_sample(x0, t, torch.randn(x0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    ab = sched.alpha_bars[300].item()
    assert xt.mean().item() == pytest.approx(math.sqrt(ab) * 0.7, abs=0.02)
    assert xt.var().item() == pytest.approx(1 - ab, rel=0.03)


def test_posterior_is_bayes_product_of_gaussians():
    # q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0): precision-weighted combination, float64.
    sched = D.Schedule(D.linear_betas())
    g = torch.Generator().manual_seed(0)
    x0, xt = torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64), torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 50, 999])
    mean, var = sched.posterior(x0, xt, t)
    for i, ti in enumerate(t.tolist()):
        a, b, abp = sched.alphas[ti], sched.betas[ti], sched.alpha_bars[ti - 1]
        prec = a / b + 1 / (1 - abp)  # from N(x_t; sqrt(a) x, b) and N(x; sqrt(abp) x0, 1 - abp)
        m = (a.sqrt() / b * xt[i] + abp.sqrt() / (1 - abp) * x0[i]) / prec
        assert (mean[i] - m).abs().max().item() < 1e-10 and abs(var[i].item() - 1 / prec.item()) < 1e-10


def test_ddim_eta1_equals_ddpm_posterior_step_float64():
    sched = D.Schedule(D.linear_betas())
    g = torch.Generator().manual_seed(1)
    x, eps, z = (torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    for t in (1, 10, 500, 999):
        a = D.ddim_step(sched, x, t, t - 1, eps, eta=1.0, noise=z)
        b = D.ddpm_step(sched, x, t, eps, z, variance="posterior")
        assert (a - b).abs().max().item() < 1e-10
    assert (D.ddim_step(sched, x, 0, -1, eps) - D.ddpm_step(sched, x, 0, eps, z)).abs().max().item() < 1e-10


def test_ddpm_step_is_algorithm_2():
    sched = D.Schedule(D.cosine_betas(100))
    x, eps, z = torch.randn(3, 2, 1, 4, 4, dtype=torch.float64)
    t = 40
    a, ab, b = sched.alphas[t], sched.alpha_bars[t], sched.betas[t]
    want = (x - (1 - a) / (1 - ab).sqrt() * eps) / a.sqrt() + b.sqrt() * z
    assert (D.ddpm_step(sched, x, t, eps, z) - want).abs().max().item() < 1e-12


def test_ddim_recovers_x0_with_true_noise():
    # With the true eps, x0^ is exact, and eta = 0 lands on q's mean path: stepping to -1 returns x0.
    sched = D.Schedule(D.linear_betas())
    x0, eps = torch.randn(2, 2, 1, 4, 4, dtype=torch.float64)
    xt = sched.q_sample(x0, torch.tensor([700, 700]), eps)
    assert (D.ddim_step(sched, xt, 700, -1, eps) - x0).abs().max().item() < 1e-10
    x_mid = D.ddim_step(sched, xt, 700, 200, eps)
    assert (x_mid - sched.q_sample(x0, torch.tensor([200, 200]), eps)).abs().max().item() < 1e-10


def test_ddim_timesteps():
    assert D.ddim_timesteps(1000, 1000) == list(range(999, -1, -1))
    ts = D.ddim_timesteps(1000, 50)
    assert len(ts) == 50 and ts[0] == 999 and ts[-1] == 0 and ts == sorted(ts, reverse=True)


def test_unet_shapes_blocks_and_zero_start():
    for kw in ({}, {"patch": 2}):
        net = _net(**kw)
        x = torch.randn(3, 1, 28, 28)
        out = net(x, torch.tensor([0, 5, 999]), torch.tensor([1, 10, 3]))
        assert out.shape == x.shape and out.abs().max().item() == 0  # zero-initialised head
    resnet = common.topic("resnet")
    blocks = [m for m in net.modules() if isinstance(m, resnet.BasicBlock)]
    assert blocks and not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in net.modules())


def test_timestep_embedding():
    e = D.timestep_embedding(torch.tensor([0, 3]), 8)
    assert e.shape == (2, 8)
    assert torch.allclose(e[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert e[1, 0].item() == pytest.approx(math.sin(3.0))


def test_guided_eps_formula():
    class Fixed(nn.Module):  # eps = label value everywhere: cond y, null label 10
        num_classes = 10

        def forward(self, x, t, y=None):
            return torch.ones_like(x) * (torch.full_like(t, 10) if y is None else y).view(-1, 1, 1, 1).float()

    x, t, y = torch.zeros(2, 1, 4, 4), torch.tensor([3, 4]), torch.tensor([2, 7])
    assert torch.equal(D.guided_eps(Fixed(), x, t, y, 0.0), Fixed()(x, t, y))
    out = D.guided_eps(Fixed(), x, t, y, 2.0)
    assert torch.allclose(out[:, 0, 0, 0], 3 * y.float() - 2 * 10.0)


def test_samplers_shapes_and_range():
    net = _net(patch=2).eval()
    nn.init.normal_(net.head.weight, std=0.1)
    sched = D.Schedule(D.linear_betas(20))
    net.T = 20
    g = torch.Generator().manual_seed(0)
    a = D.ddpm_sample(net, sched, 3, torch.tensor([0, 1, 2]), w=1.0, generator=g)
    b = D.ddim_sample(net, sched, 3, None, steps=5, generator=g)
    c = D.ddim_sample(net, sched, 2, torch.tensor([4, 5]), steps=4, eta=1.0, generator=g)
    for s, n in ((a, 3), (b, 3), (c, 2)):
        assert s.shape == (n, 1, 28, 28) and s.min() >= -1 and s.max() <= 1 and torch.isfinite(s).all()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(D.ddim_sample(net, sched, 2, steps=3, generator=g1), D.ddim_sample(net, sched, 2, steps=3, generator=g2))


def test_learning_sanity_loss_falls():
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 8, 8)
    x[:32, :, 2:6, 2:6] = 1.0
    x = x * 2 - 1
    y = torch.tensor([0, 1]).repeat_interleave(32)
    net = D.DiffusionUNet(widths=(8, 16), num_classes=2, T=100, emb_dim=16)
    sched = D.Schedule(D.linear_betas(100, 1e-3, 0.2))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        before = sum(D.loss_simple(net, sched, x, y, generator=g).item() for _ in range(5)) / 5
    with common.threads(1):  # tiny tensors: one thread avoids waiting on a busy second core
        ema, hist = D.fit(net, sched, x, y, steps=150, batch_size=32, lr=3e-3, warmup=10, ema_decay=0.9, log_every=50)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        after = sum(D.loss_simple(net, sched, x, y, generator=g).item() for _ in range(5)) / 5
    assert before == pytest.approx(1.0, abs=0.1)  # zero head: eps^ = 0, loss = E[eps^2] = 1
    assert after < 0.5 * before
    assert len(hist.series("loss")[1]) == 3


def test_ema_update():
    net = nn.Linear(2, 1)
    ema = D.EMA(net, 0.5)
    with torch.no_grad():
        net.weight.add_(2.0)
    ema.update(net)
    assert torch.allclose(ema.model.weight, net.weight - 1.0)


def test_bench_functions_return_keys():
    r = D.bench_sampling(batch=2, probe_steps=1)
    assert {"ours_ms", "theirs_ms", "ratio", "ddim_images_per_s", "ddpm_images_per_s", "name"} <= set(r)
    assert r["ratio"] == pytest.approx(r["ours_ms"] / r["theirs_ms"])


@pytest.mark.parametrize("bad", [torch.tensor([0.1, 1.0]), torch.tensor([0.0, 0.5]), torch.tensor([-0.1, 0.2]),
                                 torch.tensor([[0.1]]), torch.tensor([1, 2])])
def test_bad_schedule(bad):
    with pytest.raises(ValueError):
        D.Schedule(bad)


def test_bad_inputs():
    sched = D.Schedule(D.linear_betas(50))
    net = _net(T=50)
    x = torch.randn(2, 1, 28, 28)
    with pytest.raises(ValueError, match=r"\[0, 50\)"):
        sched.q_sample(x, torch.tensor([0, 50]), torch.randn_like(x))
    with pytest.raises(ValueError, match=r"\[0, 50\)"):
        net(x, torch.tensor([-1, 3]))
    with pytest.raises(ValueError):
        net(x, torch.tensor([1.0, 3.0]))
    with pytest.raises(ValueError, match="shape"):
        sched.q_sample(x, torch.tensor([1, 2]), torch.randn(2, 1, 4, 4))
    with pytest.raises(ValueError, match=">= 0"):
        D.guided_eps(net, x, torch.tensor([1, 2]), torch.tensor([1, 2]), -0.5)
    with pytest.raises(ValueError, match=">= 0"):
        D.ddim_sample(net, sched, 2, w=-1.0)
    with pytest.raises(ValueError):
        D.ddpm_sample(net, sched, 2, torch.tensor([1, 10]))  # 10 is the null label, not a class
    with pytest.raises(ValueError):
        net(x, torch.tensor([1, 2]), torch.tensor([0, 11]))
    with pytest.raises(ValueError):
        net(torch.randn(2, 1, 27, 27), torch.tensor([1, 2]))
    with pytest.raises(ValueError):
        net(torch.randn(2, 3, 28, 28), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="empty"):
        net(torch.randn(0, 1, 28, 28), torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError):
        D.linear_betas(10, 0.0, 0.02)
    with pytest.raises(ValueError):
        D.linear_betas(10, 1e-4, 1.0)
    with pytest.raises(ValueError):
        D.cosine_betas(0)
    with pytest.raises(ValueError):
        D.ddim_timesteps(50, 51)
    with pytest.raises(ValueError):
        D.ddim_step(sched, x, 10, 10, x)
    with pytest.raises(ValueError):
        D.ddim_step(sched, x, 10, 5, x, eta=-0.1)
    with pytest.raises(ValueError):
        D.ddpm_step(sched, x, 50, x, x)
    with pytest.raises(ValueError):
        D.ddpm_step(sched, x, 5, x, x, variance="learned")
    with pytest.raises(ValueError):
        D.loss_simple(net, sched, x, torch.tensor([1, 2]), p_uncond=1.5)
    with pytest.raises(ValueError):
        D.DiffusionUNet(widths=())
    with pytest.raises(ValueError):
        D.DiffusionUNet(emb_dim=15)
    with pytest.raises(ValueError):
        D.EMA(net, 1.5)
    with pytest.raises(ValueError):
        D.fit(net, sched, x, None, steps=0)
