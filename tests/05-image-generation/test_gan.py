"""Tests for 05-image-generation/01-gan/gan.py (Goodfellow et al. 2014)."""

import math

import pytest
import torch
import torch.nn.functional as F

import common

gan = common.topic("gan")


def _logits(n=64, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([4 * torch.randn(n, generator=g, dtype=dtype), torch.tensor([-40.0, 40.0], dtype=dtype)])


def test_losses_match_binary_cross_entropy_float64():
    real, fake = _logits(seed=0), _logits(seed=1)
    ones, zeros = torch.ones_like(real), torch.zeros_like(fake)
    d_ref = F.binary_cross_entropy_with_logits(real, ones) + F.binary_cross_entropy_with_logits(fake, zeros)
    assert abs(gan.discriminator_loss(real, fake).item() - d_ref.item()) < 1e-10
    ns_ref = F.binary_cross_entropy_with_logits(fake, ones)          # -mean log D(G(z))
    mm_ref = -F.binary_cross_entropy_with_logits(fake, zeros)        # mean log(1 - D(G(z)))
    assert abs(gan.generator_loss(fake, "non_saturating").item() - ns_ref.item()) < 1e-10
    assert abs(gan.generator_loss(fake, "minimax").item() - mm_ref.item()) < 1e-10


def test_losses_match_the_papers_formulas_where_they_are_finite():
    fake = torch.linspace(-6, 6, 25, dtype=torch.float64)
    d = torch.sigmoid(fake)
    assert abs(gan.generator_loss(fake, "minimax").item() - torch.log(1 - d).mean().item()) < 1e-10
    assert abs(gan.generator_loss(fake, "non_saturating").item() + torch.log(d).mean().item()) < 1e-10


def test_loss_gradients_saturate_as_sec3_says():
    """d/dl of the minimax loss is -D/m, of the non-saturating one -(1-D)/m: ratio (1-D)/D."""
    fake = torch.tensor([-8.0, -2.0, 0.0, 3.0], dtype=torch.float64, requires_grad=True)
    (g_mm,) = torch.autograd.grad(gan.generator_loss(fake, "minimax"), fake)
    (g_ns,) = torch.autograd.grad(gan.generator_loss(fake, "non_saturating"), fake)
    d = torch.sigmoid(fake.detach())
    assert torch.allclose(g_mm, -d / 4, atol=1e-12) and torch.allclose(g_ns, -(1 - d) / 4, atol=1e-12)
    assert g_ns[0] / g_mm[0] > 2900  # D(G(z)) = sigmoid(-8): the minimax gradient has all but vanished


def test_losses_gradcheck():
    fake = torch.randn(6, dtype=torch.float64, requires_grad=True)
    real = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: gan.discriminator_loss(a, b), (real, fake))
    for kind in gan.LOSSES:
        assert torch.autograd.gradcheck(lambda a, k=kind: gan.generator_loss(a, k), (fake,))


def test_maxout_is_max_of_affine_pieces():
    torch.manual_seed(0)
    m = gan.Maxout(5, 3, pieces=4).double()
    x = torch.randn(7, 5, dtype=torch.float64)
    w, b = m.linear.weight.view(3, 4, 5), m.linear.bias.view(3, 4)
    ref = (torch.einsum("opi,bi->bop", w, x) + b).amax(-1)
    assert (m(x) - ref).abs().max() < 1e-12


def test_shapes_and_output_ranges():
    torch.manual_seed(0)
    G = gan.Generator(8, (1, 28, 28), hidden=(32,), output="sigmoid")
    x = G(torch.randn(5, 8))
    assert x.shape == (5, 1, 28, 28) and 0 <= x.min() and x.max() <= 1
    assert G.sample(3).shape == (3, 1, 28, 28)
    assert gan.Generator(4, 2)(torch.randn(6, 4)).shape == (6, 2)
    bn = gan.Generator(4, 2, (8, 8), batchnorm=True)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in bn.net) == 2 and bn(torch.randn(6, 4)).shape == (6, 2)
    D = gan.Discriminator(784, hidden=(16, 16), pieces=3, dropout=0.5)
    assert D(x).shape == (5,)


def _toy(seed=0):
    torch.manual_seed(seed)
    G, D = gan.Generator(4, 2, (32,)), gan.Discriminator(2, (32,))
    opt_g = torch.optim.Adam(G.parameters(), 2e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 2e-3, betas=(0.5, 0.999))
    return G, D, opt_g, opt_d


def test_gan_step_updates_both_players_and_reports():
    G, D, opt_g, opt_d = _toy()
    g0 = [p.detach().clone() for p in G.parameters()]
    d0 = [p.detach().clone() for p in D.parameters()]
    out = gan.gan_step(G, D, opt_g, opt_d, torch.randn(16, 2))
    assert set(out) == {"d_loss", "g_loss", "d_real", "d_fake"} and 0 < out["d_fake"] < 1
    assert all(not torch.equal(a, b) for a, b in zip(g0, G.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(d0, D.parameters()))
    gan.gan_step(G, D, opt_g, opt_d, [torch.randn(16, 2), torch.randn(16, 2)], loss="minimax")  # k = 2


def test_gan_learns_a_shifted_gaussian_seeded():
    G, D, opt_g, opt_d = _toy(0)
    g = torch.Generator().manual_seed(0)
    target = torch.tensor([2.0, -1.0])
    start = (G.sample(500).mean(0) - target).norm().item()
    for _ in range(300):
        gan.gan_step(G, D, opt_g, opt_d, target + 0.3 * torch.randn(64, 2, generator=g))
    with torch.no_grad():
        end = (G.sample(500).mean(0) - target).norm().item()
    assert start > 1.5 and end < 0.6  # G's samples moved onto the data (they oscillate about it)


def test_generator_grad_norm_matches_manual_and_leaves_no_grads():
    G, D, _, _ = _toy()
    z = torch.randn(32, 4)
    for kind in gan.LOSSES:
        got = gan.generator_grad_norm(G, D, z, kind)
        gan.generator_loss(D(G(z)), kind).backward()
        ref = math.sqrt(sum(float((p.grad ** 2).sum()) for p in G.parameters()))
        assert abs(got - ref) < 1e-5 * ref
        G.zero_grad(set_to_none=True)
        D.zero_grad(set_to_none=True)
    gan.generator_grad_norm(G, D, z, "minimax")
    assert all(p.grad is None for p in [*G.parameters(), *D.parameters()])


def test_grad_norm_ratio_grows_when_discriminator_is_confident():
    G, D, _, _ = _toy()
    with torch.no_grad():
        D.net[-1].bias.fill_(-9.0)  # D(G(z)) about 1e-4 everywhere
    z = torch.randn(64, 4)
    ratio = gan.generator_grad_norm(G, D, z, "non_saturating") / gan.generator_grad_norm(G, D, z, "minimax")
    assert ratio > 1000


def test_ring_data_and_mode_coverage():
    centres = gan.ring_centres(8, 2.0)
    assert centres.shape == (8, 2) and torch.allclose(centres.norm(dim=1), torch.full((8,), 2.0))
    assert torch.allclose(centres[2], torch.tensor([0.0, 2.0]), atol=1e-6)
    x = gan.ring_of_gaussians(8000, std=0.05, generator=torch.Generator().manual_seed(0))
    cov = gan.mode_coverage(x, centres, 0.05)
    assert x.shape == (8000, 2) and cov["covered"] == 8
    assert abs(cov["high_quality"] - (1 - math.exp(-4.5))) < 0.01  # within 3 std in 2-D: 98.9%
    collapsed = centres[3] + 0.01 * torch.randn(500, 2)
    cov = gan.mode_coverage(collapsed, centres, 0.05)
    assert cov["covered"] == 1 and cov["counts"][3] == 500 and cov["high_quality"] == 1.0
    assert gan.mode_coverage(torch.zeros(100, 2), centres, 0.05)["high_quality"] == 0.0


def test_parzen_matches_direct_gaussian_mixture_float64():
    g = torch.Generator().manual_seed(0)
    samples, x = torch.rand(30, 5, generator=g, dtype=torch.float64), torch.rand(12, 5, generator=g, dtype=torch.float64)
    sigma = 0.3
    comp = torch.distributions.Normal(samples, sigma)  # (30, 5) components, independent coordinates
    ref = torch.logsumexp(comp.log_prob(x[:, None]).sum(-1), 1) - math.log(30)  # (12,)
    mean, se = gan.parzen_log_likelihood(samples, x, sigma, batch_size=5)
    assert abs(mean - ref.mean().item()) < 1e-10
    assert abs(se - (ref.std() / math.sqrt(12)).item()) < 1e-10


@pytest.mark.parametrize("call", [
    lambda: gan.generator_loss(torch.zeros(3), "wasserstein"),
    lambda: gan.generator_loss(torch.zeros(3, 1)),
    lambda: gan.generator_loss(torch.zeros(3, dtype=torch.long)),
    lambda: gan.discriminator_loss(torch.zeros(0), torch.zeros(3)),
    lambda: gan.Generator(0, 2),
    lambda: gan.Generator(4, 2, output="tanh"),
    lambda: gan.Generator(4, 2)(torch.zeros(3, 5)),
    lambda: gan.Generator(4, 2)(torch.zeros(4)),
    lambda: gan.Discriminator(2, dropout=1.0),
    lambda: gan.Discriminator(2)(torch.zeros(3, 3)),
    lambda: gan.Maxout(3, 2, pieces=0),
    lambda: gan.gan_step(*_toy(), [], "minimax"),
    lambda: gan.gan_step(*_toy(), torch.zeros(4, 2), "hinge"),
    lambda: gan.gan_step(*_toy(), torch.zeros(4, 2, dtype=torch.long)),
    lambda: gan.generator_grad_norm(*_toy()[:2], torch.zeros(4), "minimax"),
    lambda: gan.ring_centres(0),
    lambda: gan.ring_of_gaussians(10, std=0.0),
    lambda: gan.mode_coverage(torch.zeros(5, 3), gan.ring_centres(), 0.05),
    lambda: gan.mode_coverage(torch.zeros(5, 2), gan.ring_centres(), -1.0),
    lambda: gan.mode_coverage(torch.zeros(5, 2), gan.ring_centres(), 0.05, min_share=2.0),
    lambda: gan.parzen_log_likelihood(torch.rand(4, 3), torch.rand(2, 4), 0.1),
    lambda: gan.parzen_log_likelihood(torch.rand(4, 3), torch.rand(2, 3), 0.0),
])
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()
