"""Variational auto-encoders from scratch: the VAE (Kingma & Welling, 2013) and the VQ-VAE (van den Oord et al., 2017).

*Auto-Encoding Variational Bayes* trains a latent-variable model p(z) p(x|z) together with a recognition model
q(z|x) by maximising the variational lower bound (ELBO, eqs. 2-3), made differentiable by the reparameterisation
z = mu + sigma * eps, eps ~ N(0, I) (Sec. 2.4). Here: a Gaussian MLP encoder and a Bernoulli MLP decoder with one
tanh hidden layer (App. C), the closed-form KL term (App. B), the estimator of eq. 10 (L = 1), and an
importance-weighted estimate of the marginal likelihood -log p(x) with k samples from q (Burda et al., 2015).

*Neural Discrete Representation Learning* replaces the Gaussian code by the nearest of K learned embedding vectors
(eqs. 1-2), copies the decoder's gradient to the encoder past the non-differentiable look-up (straight-through,
Sec. 3.2), and adds the codebook and commitment terms of eq. 3 with beta = 0.25. ``VQVAE.encode`` turns 28x28
images into a 7x7 grid of code indices and ``VQVAE.decode`` turns such a grid back into images: the discrete image
tokens that a later autoregressive prior (DALL-E, topic 05-dall-e) models.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.checks import check_float, check_images, check_int, check_tensor
from common.data import TensorLoader
from common.progress import progress

LOG_2PI = math.log(2 * math.pi)


def reparameterize(mu, logvar, eps=None):
    """z = mu + sigma * eps with sigma = exp(logvar / 2) and eps ~ N(0, I) (Sec. 2.4, eq. 10): a sample of
    N(mu, sigma^2) that is a differentiable function of mu and logvar. ``eps`` (same shape, optional) fixes the noise."""
    check_tensor("mu", mu, floating=True)
    check_tensor("logvar", logvar, floating=True)
    if logvar.shape != mu.shape:
        raise ValueError(f"mu and logvar must have the same shape, got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    if eps is None:
        eps = torch.randn_like(mu)
    elif not isinstance(eps, torch.Tensor) or eps.shape[-mu.dim():] != mu.shape:
        raise ValueError(f"eps must be a tensor ending in mu's shape {tuple(mu.shape)}, got {eps!r:.60}")
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_kl(mu, logvar):
    """KL(N(mu, diag sigma^2) || N(0, I)) in closed form (App. B), summed over the last dimension:
    -1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2). mu, logvar (..., J) -> (...)."""
    check_tensor("mu", mu, floating=True)
    if not isinstance(logvar, torch.Tensor) or logvar.shape != mu.shape:
        raise ValueError(f"logvar must be a tensor of mu's shape {tuple(mu.shape)}")
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)


def bernoulli_log_likelihood(x, logits):
    """log p(x|z) = sum_i x_i log y_i + (1 - x_i) log(1 - y_i), y = sigmoid(logits) (App. C.1, eq. 11), summed over
    the last dimension and computed stably as x * l - softplus(l). x (..., D) in [0, 1], logits (..., D) -> (...)."""
    check_tensor("x", x, floating=True)
    check_tensor("logits", logits, floating=True)
    if x.shape[-1] != logits.shape[-1]:
        raise ValueError(f"x and logits must end in the same size D, got {tuple(x.shape)} and {tuple(logits.shape)}")
    return (x * logits - F.softplus(logits)).sum(-1)


def gaussian_log_density(z, mu, logvar):
    """log N(z; mu, diag exp(logvar)) summed over the last dimension; shapes broadcast, (..., J) -> (...)."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


class VAE(nn.Module):
    """Gaussian MLP encoder q(z|x) and Bernoulli MLP decoder p(x|z), one tanh hidden layer each (App. C), prior N(0, I).

    Images (B, C, H, W) are flattened to x (B, D); ``encode`` gives (mu, logvar), each (B, J); ``decode(z)`` gives the
    Bernoulli logits (..., D) of any batch of codes (..., J).
    """

    def __init__(self, latent_dim=20, hidden=500, image_shape=(1, 28, 28)):
        super().__init__()
        self.latent_dim = check_int("latent_dim", latent_dim, low=1)
        check_int("hidden", hidden, low=1)
        if len(image_shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in image_shape):
            raise ValueError(f"image_shape must be (C, H, W) of positive ints, got {image_shape!r}")
        self.image_shape = tuple(image_shape)
        d = math.prod(image_shape)
        self.enc_hidden, self.enc_out = nn.Linear(d, hidden), nn.Linear(hidden, 2 * latent_dim)
        self.dec_hidden, self.dec_out = nn.Linear(latent_dim, hidden), nn.Linear(hidden, d)

    def _flat(self, x):
        check_images("VAE", x, channels=self.image_shape[0])
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"VAE expects images of shape {self.image_shape}, got {tuple(x.shape[1:])}")
        return x.flatten(1)  # (B, D)

    def encode(self, x):
        """(mu, logvar) of q(z|x), each (B, J), for images x (B, C, H, W) in [0, 1] (eq. 12 with x and z swapped)."""
        h = torch.tanh(self.enc_hidden(self._flat(x)))
        mu, logvar = self.enc_out(h).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z):
        """Bernoulli logits (..., D) of p(x|z) for codes z (..., J) (eq. 11 before the sigmoid)."""
        check_tensor("z", z, floating=True)
        if z.shape[-1] != self.latent_dim:
            raise ValueError(f"z must end in latent_dim={self.latent_dim}, got shape {tuple(z.shape)}")
        return self.dec_out(torch.tanh(self.dec_hidden(z)))

    def elbo(self, x):
        """The per-image lower bound estimator of eq. 10 (L = 1): -KL(q(z|x) || p(z)) + log p(x|z), z = mu + sigma eps.
        x (B, C, H, W) -> (B,), in nats."""
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar)
        return bernoulli_log_likelihood(x.flatten(1), self.decode(z)) - gaussian_kl(mu, logvar)

    def loss(self, x):
        """The training loss: minus the mean ELBO over the batch (Algorithm 1, the minibatch estimator of eq. 8 / N)."""
        return -self.elbo(x).mean()

    @torch.no_grad()
    def sample(self, n, generator=None):
        """n images (n, C, H, W): z ~ N(0, I), then the decoder's Bernoulli means sigmoid(logits), in [0, 1]."""
        check_int("n", n, low=1)
        w = self.dec_out.weight
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=w.dtype).to(w.device)
        return torch.sigmoid(self.decode(z)).view(n, *self.image_shape)


@torch.no_grad()
def iw_nll(model, x, k=100, batch_size=100, generator=None):
    """Importance-weighted estimate of -log p(x) in nats per image (Burda et al., 2015), shape (N,):
    -log (1/k) sum_j p(x|z_j) p(z_j) / q(z_j|x), z_j ~ q(z|x). k = 1 gives the ELBO's single-sample estimate;
    as k grows the estimate tightens towards the true -log p(x) (from above, in expectation). x (N, C, H, W) in [0, 1]."""
    if not isinstance(model, VAE):
        raise ValueError(f"iw_nll expects a VAE, got {type(model).__name__}")
    check_images("iw_nll", x)
    check_int("k", k, low=1)
    check_int("batch_size", batch_size, low=1)
    dev = model.dec_out.weight.device
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(dev)
        mu, logvar = model.encode(xb)  # (B, J)
        eps = torch.randn((k, *mu.shape), generator=generator, dtype=mu.dtype).to(dev)
        z = reparameterize(mu, logvar, eps)  # (k, B, J)
        log_w = (bernoulli_log_likelihood(xb.flatten(1), model.decode(z))
                 + gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z))
                 - gaussian_log_density(z, mu, logvar))  # (k, B)
        out.append(math.log(k) - torch.logsumexp(log_w, dim=0))
    return torch.cat(out)


@torch.no_grad()
def latent_grid(model, n=15):
    """The 2-D latent manifold of App. A, Fig. 4: an n x n grid of linearly spaced points of the unit square mapped
    through the Gaussian's inverse CDF to z, decoded to Bernoulli means. Returns images (n*n, C, H, W), row-major,
    rows going down in z_2 and columns right in z_1."""
    if not isinstance(model, VAE) or model.latent_dim != 2:
        raise ValueError("latent_grid needs a VAE with latent_dim=2")
    check_int("n", n, low=2)
    w = model.dec_out.weight
    u = torch.linspace(0, 1, n + 2, dtype=w.dtype)[1:-1]  # stay inside (0, 1): icdf(0) = -inf
    g = torch.distributions.Normal(0.0, 1.0).icdf(u).to(w.device)
    z = torch.stack(torch.meshgrid(g.flip(0), g, indexing="ij")[::-1], dim=-1).reshape(-1, 2)  # (n*n, 2)
    return torch.sigmoid(model.decode(z)).view(n * n, *model.image_shape)


class VectorQuantizer(nn.Module):
    """The discretisation bottleneck of VQ-VAE (Sec. 3.1-3.2): K embedding vectors e_k in R^D.

    ``forward(z_e)`` with encoder outputs z_e (B, D, h, w) returns (z_q, indices, codebook_loss, commitment_loss):
    z_q (B, D, h, w) is the nearest embedding (eqs. 1-2) passed forward with the straight-through gradient
    (d loss / d z_e := d loss / d z_q); indices (B, h, w); codebook_loss = ||sg[z_e] - e||^2 and commitment_loss =
    ||z_e - sg[e]||^2 (eq. 3), each summed over D and averaged over the B*h*w latents.
    """

    def __init__(self, num_codes, code_dim):
        super().__init__()
        self.num_codes = check_int("num_codes (codebook size)", num_codes, low=2)
        self.code_dim = check_int("code_dim", code_dim, low=1)
        self.codebook = nn.Parameter(torch.empty(num_codes, code_dim).uniform_(-1 / num_codes, 1 / num_codes))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def init_from_(self, z_e):
        """Data-dependent start (not in the paper): set the K embeddings to K random encoder outputs of z_e
        (B, D, h, w), so that no code starts far from every encoder output and stays unused. Done once, by the first
        training-mode ``forward``; needs B*h*w >= K."""
        flat = z_e.detach().permute(0, 2, 3, 1).reshape(-1, self.code_dim)
        if len(flat) < self.num_codes:
            raise ValueError(f"init_from_ needs at least {self.num_codes} encoder vectors, got {len(flat)}")
        self.codebook.copy_(flat[torch.randperm(len(flat))[:self.num_codes].to(flat.device)])
        self.initialized.fill_(True)

    def nearest(self, z_e):
        """Index (B, h, w) of the nearest embedding to each D-vector of z_e (B, D, h, w), by squared distance (eq. 1)."""
        check_tensor("z_e", z_e, dim=4, floating=True)
        if z_e.shape[1] != self.code_dim:
            raise ValueError(f"z_e must have code_dim={self.code_dim} channels, got shape {tuple(z_e.shape)}")
        b, d, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)  # (B*h*w, D)
        e = self.codebook
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1)  # (B*h*w, K)
        return dist.argmin(1).view(b, h, w)

    def lookup(self, indices):
        """Embeddings (B, D, h, w) of code indices (B, h, w) (eq. 2)."""
        check_tensor("indices", indices, dim=3, integer=True)
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_codes):
            raise ValueError(f"indices must lie in [0, {self.num_codes}), got {int(indices.min())}..{int(indices.max())}")
        return self.codebook[indices].permute(0, 3, 1, 2)

    def forward(self, z_e):
        """Quantise z_e (B, D, h, w); see the class docstring for what is returned."""
        if self.training and not bool(self.initialized):
            self.nearest(z_e)  # validates z_e
            self.init_from_(z_e)
        indices = self.nearest(z_e)
        e = self.lookup(indices)  # (B, D, h, w)
        codebook_loss = (z_e.detach() - e).pow(2).sum(1).mean()
        commitment_loss = (z_e - e.detach()).pow(2).sum(1).mean()
        z_q = z_e + (e - z_e).detach()  # forward: e; backward: identity to z_e (straight-through)
        return z_q, indices, codebook_loss, commitment_loss


class VQVAE(nn.Module):
    """A small convolutional VQ-VAE for 28x28 one-channel images (Sec. 3 and 4.1, scaled down, no residual blocks).

    Encoder: two 4x4 stride-2 convolutions (28 -> 14 -> 7) and a 1x1 convolution to D channels; the quantiser;
    decoder: a 3x3 convolution and two 4x4 stride-2 transposed convolutions back to 28x28 Bernoulli logits.
    The code grid is 7x7 indices in [0, K).
    """

    def __init__(self, num_codes=64, code_dim=16, channels=32, beta=0.25):
        super().__init__()
        check_int("num_codes (codebook size)", num_codes, low=2)
        check_int("code_dim", code_dim, low=1)
        check_int("channels", channels, low=1)
        self.beta = check_float("beta", beta, low=0.0)
        self.grid_size = (7, 7)
        self.encoder = nn.Sequential(
            nn.Conv2d(1, channels, 4, 2, 1), nn.ReLU(), nn.Conv2d(channels, channels, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(channels, code_dim, 1))
        self.quantizer = VectorQuantizer(num_codes, code_dim)
        self.decoder = nn.Sequential(
            nn.Conv2d(code_dim, channels, 3, 1, 1), nn.ReLU(), nn.ConvTranspose2d(channels, channels, 4, 2, 1),
            nn.ReLU(), nn.ConvTranspose2d(channels, 1, 4, 2, 1))

    @property
    def num_codes(self):
        """K, the codebook size."""
        return self.quantizer.num_codes

    def _check(self, x):
        check_images("VQVAE", x, channels=1)
        if tuple(x.shape[-2:]) != (28, 28):
            raise ValueError(f"VQVAE expects 28x28 images, got {tuple(x.shape[-2:])}")
        return x

    def forward(self, x):
        """(logits (B, 1, 28, 28), indices (B, 7, 7), codebook_loss, commitment_loss) for images x (B, 1, 28, 28)."""
        z_q, indices, codebook_loss, commitment_loss = self.quantizer(self.encoder(self._check(x)))
        return self.decoder(z_q), indices, codebook_loss, commitment_loss

    def loss(self, x):
        """Eq. 3 as a loss to minimise: -log p(x|z_q(x)) / D + ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2.

        The reconstruction term is the Bernoulli cross-entropy per pixel (D = 784 pixels), averaged like the two VQ
        terms, which the paper averages over the latents (Sec. 3.2; beta "would depend on the scale of reconstruction
        loss"). Summed over pixels instead, it outweighs the commitment term so much that the encoder's outputs run
        away from the codebook and nearly every code dies."""
        logits, _, codebook_loss, commitment_loss = self(x)
        recon = -bernoulli_log_likelihood(x.flatten(1), logits.flatten(1)).mean() / x[0].numel()
        return recon + codebook_loss + self.beta * commitment_loss

    @torch.no_grad()
    def encode(self, x):
        """Code indices (N, 7, 7), int64 in [0, K), of images x (N, 1, 28, 28) in [0, 1]."""
        return self.quantizer.nearest(self.encoder(self._check(x)))

    @torch.no_grad()
    def decode(self, indices):
        """Images (N, 1, 28, 28) in [0, 1] (the decoder's Bernoulli means) from code indices (N, 7, 7)."""
        check_tensor("indices", indices, dim=3, integer=True)
        if tuple(indices.shape[1:]) != self.grid_size:
            raise ValueError(f"indices must be (N, {self.grid_size[0]}, {self.grid_size[1]}), got {tuple(indices.shape)}")
        return torch.sigmoid(self.decoder(self.quantizer.lookup(indices.to(self.quantizer.codebook.device))))


def codebook_usage(indices, num_codes):
    """How a codebook is used: dict(counts (K,) of each code, perplexity = exp(entropy of the code frequencies),
    between 1 (one code) and K (all equally often), and dead = number of codes never used) over indices of any shape."""
    check_tensor("indices", indices, integer=True)
    check_int("num_codes", num_codes, low=2)
    if int(indices.min()) < 0 or int(indices.max()) >= num_codes:
        raise ValueError(f"indices must lie in [0, {num_codes}), got {int(indices.min())}..{int(indices.max())}")
    counts = torch.bincount(indices.reshape(-1).cpu(), minlength=num_codes)
    p = counts.double() / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return dict(counts=counts, perplexity=float(entropy.exp()), dead=int((counts == 0).sum()))


def binarize(x, generator=None):
    """Dynamic binarisation: each pixel set to 1 with probability its grey level (x float in [0, 1]), fresh each call."""
    check_tensor("x", x, floating=True)
    if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise ValueError(f"binarize expects grey levels in [0, 1], got {float(x.min())}..{float(x.max())}")
    return torch.bernoulli(x, generator=generator)


def train(model, images, epochs=1, batch_size=100, lr=1e-3, seed=0, dynamic_binarization=True, show=True):
    """Train a VAE or VQVAE on uint8 images (N, C, H, W) with Adam on ``model.loss`` (Algorithm 1 with Adam instead of
    Adagrad), the learning rate decayed linearly from ``lr`` to 0. With ``dynamic_binarization`` every batch is re-sampled with :func:`binarize`; otherwise grey levels in
    [0, 1] are the targets. Returns the list of per-step losses (floats); the model is left in eval mode."""
    if not isinstance(model, (VAE, VQVAE)):
        raise ValueError(f"train expects a VAE or VQVAE, got {type(model).__name__}")
    check_tensor("images", images, dim=4)
    if images.dtype != torch.uint8:
        raise ValueError(f"train expects uint8 images (N, C, H, W), got {images.dtype}")
    check_int("epochs", epochs, low=1)
    check_float("lr", lr, low=0.0, low_open=True)
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    loader = TensorLoader(images, batch_size=batch_size, device=dev, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 - k / total)  # linear decay to 0
    model.train()
    losses = []
    bar = progress(total=total, desc=type(model).__name__, disable=not show)
    for _ in range(epochs):
        for (xb,) in loader:
            xb = xb.float().div_(255)
            if dynamic_binarization:
                xb = binarize(xb.cpu(), g).to(dev)
            loss = model.loss(xb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(f"non-finite loss at step {len(losses)} (learning rate {lr})")
            bar.update()
        bar.set_postfix(loss=f"{sum(losses[-len(loader):]) / len(loader):.2f}")
    bar.close()
    model.eval()
    return losses
