"""Tests for 05-image-generation/02-vae/vae.py (Kingma & Welling 2013; van den Oord et al. 2017)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Normal, kl_divergence

import common

vae = common.topic("vae")


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_gaussian_kl_matches_torch_float64():
    mu, logvar = _rand(7, 5), _rand(7, 5, seed=1)
    ref = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1)
    assert (vae.gaussian_kl(mu, logvar) - ref).abs().max().item() <= 1e-10
    assert vae.gaussian_kl(torch.zeros(3, 4), torch.zeros(3, 4)).abs().max() == 0  # q = p


def test_bernoulli_log_likelihood_matches_torch_float64():
    logits = 5 * _rand(6, 10)
    x = torch.bernoulli(torch.full((6, 10), 0.4, dtype=torch.float64), generator=torch.Generator().manual_seed(2))
    ref = Bernoulli(logits=logits).log_prob(x).sum(-1)
    assert (vae.bernoulli_log_likelihood(x, logits) - ref).abs().max().item() <= 1e-10
    grey = torch.rand(6, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(3))  # soft targets
    ref = -F.binary_cross_entropy_with_logits(logits, grey, reduction="none").sum(-1)
    assert (vae.bernoulli_log_likelihood(grey, logits) - ref).abs().max().item() <= 1e-10
    assert torch.isfinite(vae.bernoulli_log_likelihood(torch.ones(1, 2), torch.tensor([[-200.0, 200.0]]))).all()


def test_gaussian_log_density_matches_torch_float64():
    z, mu, logvar = _rand(4, 3), _rand(4, 3, seed=1), _rand(4, 3, seed=2)
    ref = Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    assert (vae.gaussian_log_density(z, mu, logvar) - ref).abs().max().item() <= 1e-10


def test_reparameterize_value_and_gradients():
    mu, logvar, eps = _rand(5, 3).requires_grad_(), _rand(5, 3, seed=1).requires_grad_(), _rand(5, 3, seed=2)
    z = vae.reparameterize(mu, logvar, eps)
    sigma = (0.5 * logvar).exp()
    assert torch.allclose(z, mu + sigma * eps, atol=1e-12)
    gmu, glv = torch.autograd.grad(z.sum(), (mu, logvar))
    assert torch.allclose(gmu, torch.ones_like(gmu)) and torch.allclose(glv, 0.5 * sigma * eps)
    assert torch.autograd.gradcheck(lambda m, lv: vae.reparameterize(m, lv, eps), (mu, logvar))
    z = vae.reparameterize(torch.zeros(20000, 1), torch.full((20000, 1), math.log(4.0)))  # N(0, 4)
    assert abs(z.std().item() - 2.0) < 0.05


def test_reparameterize_rejects_bad_input():
    with pytest.raises(ValueError):
        vae.reparameterize(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError):
        vae.reparameterize(torch.zeros(2, 3), torch.zeros(2, 3), eps=torch.zeros(3))
    with pytest.raises(ValueError):
        vae.reparameterize(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3))
    with pytest.raises(ValueError):
        vae.gaussian_kl(torch.zeros(2, 3), torch.zeros(3))
    with pytest.raises(ValueError):
        vae.bernoulli_log_likelihood(torch.zeros(2, 3), torch.zeros(2, 4))


def test_vae_shapes_and_elbo_is_eq_10():
    torch.manual_seed(0)
    model = vae.VAE(latent_dim=3, hidden=16, image_shape=(1, 4, 5)).double()
    x = torch.rand(6, 1, 4, 5, dtype=torch.float64)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (6, 3)
    assert model.decode(torch.zeros(2, 6, 3, dtype=torch.float64)).shape == (2, 6, 20)
    torch.manual_seed(1)
    elbo = model.elbo(x)
    torch.manual_seed(1)
    z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
    kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(-1)
    ref = -F.binary_cross_entropy_with_logits(model.decode(z), x.flatten(1), reduction="none").sum(-1) - kl
    assert elbo.shape == (6,) and (elbo - ref).abs().max().item() <= 1e-10
    s = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert s.shape == (4, 1, 4, 5) and s.min() >= 0 and s.max() <= 1


def _tiny_model():
    torch.manual_seed(0)
    model = vae.VAE(latent_dim=1, hidden=8, image_shape=(1, 2, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)  # a decoder that depends strongly on z: the posterior is far from Gaussian
        model.enc_out.weight.zero_()  # q(z|x) = N(0.3, 1.5^2) for every x: broad enough to cover each posterior
        model.enc_out.bias.copy_(torch.tensor([0.3, math.log(1.5**2)]))
    return model


def test_iw_nll_converges_to_the_exact_marginal_likelihood():
    model = _tiny_model()
    x = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.float64).view(3, 1, 2, 3)
    # exact -log p(x) by quadrature over the one latent dimension
    zs = torch.linspace(-10, 10, 40001, dtype=torch.float64)[:, None, None]  # (Z, 1, 1)
    log_joint = vae.bernoulli_log_likelihood(x.flatten(1), model.decode(zs)) + Normal(0.0, 1.0).log_prob(zs[..., 0])
    exact = -(torch.logsumexp(log_joint, 0) + math.log(20 / 40000))  # (3,)
    g = torch.Generator().manual_seed(0)
    k1 = torch.stack([vae.iw_nll(model, x, k=1, generator=g) for _ in range(2000)]).mean(0)
    k5000 = vae.iw_nll(model, x, k=5000, generator=g)
    assert ((k5000 - exact).abs() < 0.02).all()
    assert (k1 > exact + 0.05).all()  # the single-sample bound is loose here, the k-sample one is not
    assert (k1 >= k5000).all()


def test_iw_nll_rejects_bad_input():
    model = vae.VAE(2, 8, image_shape=(1, 2, 2))
    with pytest.raises(ValueError):
        vae.iw_nll(model, torch.rand(3, 1, 2, 2), k=0)
    with pytest.raises(ValueError):
        vae.iw_nll(torch.nn.Linear(2, 2), torch.rand(3, 1, 2, 2))
    with pytest.raises(ValueError):
        vae.iw_nll(model, torch.rand(3, 4))
    with pytest.raises(ValueError):
        vae.iw_nll(model, torch.rand(3, 1, 3, 3))


def test_latent_grid_uses_the_inverse_gaussian_cdf():
    torch.manual_seed(0)
    model = vae.VAE(latent_dim=2, hidden=8, image_shape=(1, 3, 3))
    grid = vae.latent_grid(model, n=5)
    assert grid.shape == (25, 1, 3, 3) and grid.min() >= 0 and grid.max() <= 1
    centre = torch.sigmoid(model.decode(torch.zeros(1, 2))).view(1, 3, 3)
    assert torch.allclose(grid[12], centre, atol=1e-6)  # u = 1/2 -> z = 0
    u = torch.tensor(1 / 6)  # first of linspace(0, 1, 7)[1:-1]
    z1 = Normal(0.0, 1.0).icdf(u)
    top_left = torch.sigmoid(model.decode(torch.stack([z1, -z1])[None])).view(1, 3, 3)  # z_1 low, z_2 high
    assert torch.allclose(grid[0], top_left, atol=1e-6)
    with pytest.raises(ValueError):
        vae.latent_grid(vae.VAE(latent_dim=3, hidden=8, image_shape=(1, 3, 3)))
    with pytest.raises(ValueError):
        vae.latent_grid(model, n=1)


@pytest.mark.parametrize("kwargs", [dict(latent_dim=0), dict(latent_dim=2.5), dict(hidden=0),
                                    dict(image_shape=(28, 28)), dict(image_shape=(1, 0, 28))])
def test_vae_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        vae.VAE(**kwargs)


def test_vae_rejects_bad_input():
    model = vae.VAE(4, 8)
    with pytest.raises(ValueError):
        model.encode(torch.rand(2, 784))
    with pytest.raises(ValueError):
        model.encode(torch.rand(2, 1, 14, 14))
    with pytest.raises(ValueError):
        model.encode(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError):
        model.encode(torch.rand(0, 1, 28, 28))
    with pytest.raises(ValueError):
        model.decode(torch.zeros(2, 5))
    with pytest.raises(ValueError):
        model.sample(0)


def test_quantizer_nearest_lookup_and_losses():
    torch.manual_seed(0)
    q = vae.VectorQuantizer(num_codes=6, code_dim=3).double()
    with torch.no_grad():
        q.codebook.copy_(_rand(6, 3))
    z_e = _rand(2, 3, 4, 5, seed=1).requires_grad_()
    z_q, idx, cb, cm = q.eval()(z_e)
    flat = z_e.detach().permute(0, 2, 3, 1).reshape(-1, 3)
    assert torch.equal(idx.reshape(-1), torch.cdist(flat, q.codebook.detach()).argmin(1))
    e = q.codebook.detach()[idx].permute(0, 3, 1, 2)
    assert idx.shape == (2, 4, 5) and torch.allclose(z_q, e, atol=1e-12)  # forward value: the nearest embedding
    assert torch.equal(q.lookup(idx), q.codebook[idx].permute(0, 3, 1, 2))
    ref = ((z_e.detach() - e) ** 2).sum(1).mean()
    assert abs(cb.item() - ref.item()) <= 1e-10 and abs(cm.item() - ref.item()) <= 1e-10
    # straight-through: the gradient reaching z_q is copied unchanged to z_e; the codebook gets none from it
    g = _rand(2, 3, 4, 5, seed=2)
    (gz, gc) = torch.autograd.grad((z_q * g).sum(), (z_e, q.codebook), allow_unused=True)
    assert torch.equal(gz, g) and (gc is None or gc.abs().max() == 0)
    # the codebook term trains only the codebook, the commitment term only the encoder output
    z_q, idx, cb, cm = q(z_e)
    gz, gc = torch.autograd.grad(cb, (z_e, q.codebook), allow_unused=True)
    assert (gz is None or gz.abs().max() == 0) and gc.abs().max() > 0
    z_q, idx, cb, cm = q(z_e)
    gz, gc = torch.autograd.grad(cm, (z_e, q.codebook), allow_unused=True)
    assert gz.abs().max() > 0 and (gc is None or gc.abs().max() == 0)
    assert torch.allclose(gz, 2 * (z_e.detach() - e) / (2 * 4 * 5), atol=1e-12)


def test_quantizer_data_dependent_start():
    torch.manual_seed(0)
    q = vae.VectorQuantizer(4, 2)
    assert not bool(q.initialized)
    z_e = torch.arange(2 * 2 * 3 * 3, dtype=torch.float32).view(2, 2, 3, 3)
    q.train()(z_e)
    rows = z_e.permute(0, 2, 3, 1).reshape(-1, 2)
    assert bool(q.initialized) and all((rows == c).all(1).any() for c in q.codebook.detach())
    before = q.codebook.detach().clone()
    q(z_e + 100)  # only once
    assert torch.equal(q.codebook.detach(), before)
    with pytest.raises(ValueError):
        vae.VectorQuantizer(64, 2).init_from_(torch.zeros(1, 2, 2, 2))


def test_codebook_usage_hand_made():
    u = vae.codebook_usage(torch.tensor([[0, 0], [1, 1]]), 4)
    assert u["counts"].tolist() == [2, 2, 0, 0] and abs(u["perplexity"] - 2.0) < 1e-12 and u["dead"] == 2
    u = vae.codebook_usage(torch.arange(8), 8)
    assert abs(u["perplexity"] - 8.0) < 1e-9 and u["dead"] == 0
    assert abs(vae.codebook_usage(torch.zeros(5, dtype=torch.long), 3)["perplexity"] - 1.0) < 1e-12
    with pytest.raises(ValueError):
        vae.codebook_usage(torch.tensor([0, 4]), 4)
    with pytest.raises(ValueError):
        vae.codebook_usage(torch.tensor([0.0, 1.0]), 4)
    with pytest.raises(ValueError):
        vae.codebook_usage(torch.tensor([0, 1]), 1)


def test_vqvae_code_grid_encode_decode():
    torch.manual_seed(0)
    model = vae.VQVAE(num_codes=8, code_dim=4, channels=8).eval()
    x = torch.rand(3, 1, 28, 28)
    idx = model.encode(x)
    assert idx.shape == (3, 7, 7) and idx.dtype == torch.int64 and idx.min() >= 0 and idx.max() < 8
    assert model.grid_size == (7, 7) and model.num_codes == 8
    img = model.decode(idx)
    assert img.shape == (3, 1, 28, 28) and img.min() >= 0 and img.max() <= 1
    logits, idx2, _, _ = model(x)
    assert torch.equal(idx, idx2) and torch.allclose(img, torch.sigmoid(logits), atol=1e-6)


@pytest.mark.parametrize("kwargs", [dict(num_codes=1), dict(num_codes=0), dict(code_dim=0), dict(channels=0),
                                    dict(beta=-0.1), dict(beta=float("nan"))])
def test_vqvae_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        vae.VQVAE(**kwargs)


def test_vqvae_rejects_bad_input():
    model = vae.VQVAE(num_codes=8, code_dim=4, channels=8)
    with pytest.raises(ValueError):
        vae.VectorQuantizer(1, 4)
    with pytest.raises(ValueError):
        model.encode(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError):
        model.encode(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError):
        model.decode(torch.full((2, 7, 7), 8))
    with pytest.raises(ValueError):
        model.decode(torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError):
        model.decode(torch.zeros(2, 7, 7))
    with pytest.raises(ValueError):
        model.quantizer(torch.rand(2, 5, 7, 7))


def test_binarize():
    p = torch.full((200, 50), 0.3)
    b = vae.binarize(p, torch.Generator().manual_seed(0))
    assert set(b.unique().tolist()) <= {0.0, 1.0} and abs(b.mean().item() - 0.3) < 0.01
    assert not torch.equal(b, vae.binarize(p))  # fresh each call
    with pytest.raises(ValueError):
        vae.binarize(torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError):
        vae.binarize(torch.tensor([0, 1]))


def test_train_rejects_bad_input():
    x = torch.zeros(8, 1, 28, 28, dtype=torch.uint8)
    with pytest.raises(ValueError):
        vae.train(torch.nn.Linear(2, 2), x)
    with pytest.raises(ValueError):
        vae.train(vae.VAE(2, 8), x.float())
    with pytest.raises(ValueError):
        vae.train(vae.VAE(2, 8), x, epochs=0)
    with pytest.raises(ValueError):
        vae.train(vae.VAE(2, 8), x, lr=0.0)


def test_vae_and_vqvae_learn_synthetic_digits():
    x, _ = common.data.synthetic_images("mnist", "train", n=256)
    x = (x > 127).to(torch.uint8) * 255  # black-and-white, so binarisation adds no noise the model cannot learn
    xf = common.data.to_float(x)
    common.seed_everything(0)
    model = vae.VAE(latent_dim=4, hidden=64)
    g = torch.Generator().manual_seed(0)
    before = vae.iw_nll(model, xf, k=10, generator=g).mean().item()
    losses = vae.train(model, x, epochs=10, batch_size=32, lr=1e-2, show=False)
    after = vae.iw_nll(model, xf, k=10, generator=g).mean().item()
    assert not model.training and len(losses) == 10 * 8
    assert after < before - 60  # about 547 -> 447 nats
    common.seed_everything(0)
    vq = vae.VQVAE(num_codes=16, code_dim=4, channels=8)
    logits0 = vq(xf)[0]
    vae.train(vq, x, epochs=10, batch_size=32, lr=1e-2, dynamic_binarization=False, show=False)
    logits1 = vq(xf)[0]
    bce = [F.binary_cross_entropy_with_logits(v, xf).item() for v in (logits0, logits1)]
    assert bce[1] < bce[0] - 0.1  # about 0.69 -> 0.51 nats per pixel
    assert vae.codebook_usage(vq.encode(xf), 16)["perplexity"] > 2
