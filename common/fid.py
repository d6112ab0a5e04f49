"""One image-quality score for all of section 05: FID in the feature space of a small MNIST classifier.

Heusel et al. (2017) score a generator by the Frechet distance between two Gaussians fitted to
features of real and of generated images:

    FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)).

Their features come from Inception-v3 on ImageNet; on 28x28 digits that network is both foreign
and slow, so here the features are the 64-d penultimate layer of a small CNN trained once on the
dataset's own training split (cached under ``checkpoints/``, retrained by the same seeded code when
the file is absent). ``torchmetrics``' ``FrechetInceptionDistance`` does the statistics (float64)
with this network plugged in as its feature extractor. Every number is reported beside a floor,
the FID between two disjoint halves of the test split, which is what a perfect generator would
score with the same number of images.

    from common import fid
    imgs = generator_samples(fid.n_samples())      # float (N, 1, 28, 28) in [0, 1]
    fid.report(imgs)                                # {"fid": ..., "floor": ..., "n": N}
    fid.report(imgs, labels=prompted_classes)       # + "accuracy", "confidence"

At smoke scale the classifier trains in seconds on ``common.data``'s synthetic images and is
cached in a separate ``-smoke`` file; :func:`n_samples` is 200 instead of :data:`N_SAMPLES`.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import data, train
from .checks import check_int, check_labels, check_tensor
from .runtime import REPO_ROOT, scale

N_SAMPLES = 2000  # generated images scored by every section-05 notebook at cpu and gpu scale
SMOKE_SAMPLES = 200
DATASETS = ("mnist", "fashion-mnist")
FEATURES = 64  # width of the penultimate layer, the feature space of the FID
SEED = 0  # the classifier's training seed
_SMOKE_TEST_N = 1024  # synthetic test images at smoke scale (enough for two halves of SMOKE_SAMPLES)
_CACHE: dict[tuple[str, bool], nn.Module] = {}


def n_samples() -> int:
    """How many generated images a notebook scores: 200 at smoke scale, :data:`N_SAMPLES` otherwise."""
    return SMOKE_SAMPLES if scale() == "smoke" else N_SAMPLES


class Classifier(nn.Module):
    """Two 3x3 conv blocks (16, 32 channels, each ReLU + 2x2 max-pool), a 64-unit layer, 10 logits.

    ``forward(x)`` gives logits (N, 10) for x (N, 1, 28, 28); ``features(x)`` the 64-unit layer's
    pre-activations (N, 64), the penultimate features the FID compares.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # (N, 16, 14, 14)
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 32, 7, 7)
            nn.Flatten())                                                 # (N, 1568)
        self.hidden = nn.Linear(32 * 7 * 7, FEATURES)
        self.out = nn.Linear(FEATURES, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, 64) of images x (N, 1, 28, 28)."""
        return self.hidden(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, 10)."""
        return self.out(F.relu(self.features(x)))


class _Extractor(nn.Module):
    """The classifier's feature map as torchmetrics wants it: a module with ``num_features``, float64 out."""

    def __init__(self, net: Classifier):
        super().__init__()
        self.net = net
        self.num_features = FEATURES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x.float()).double()  # (N, 64) float64: FID statistics in double


def _check_dataset(dataset) -> str:
    if dataset not in DATASETS:
        raise ValueError(f"fid: unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    return dataset


def _check_images(name: str, x, min_n: int = 1) -> torch.Tensor:
    """Float images (N, 1, 28, 28) with values in [0, 1] and N >= min_n."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"fid: {name} must be images of shape (N, 1, 28, 28), got {got}")
    check_tensor(f"fid: {name}", x, floating=True)
    if x.shape[0] < min_n:
        raise ValueError(f"fid: {name} needs at least {min_n} images, got {x.shape[0]}")
    lo, hi = float(x.min()), float(x.max())
    if not (0.0 <= lo and hi <= 1.0):  # also false for NaN
        raise ValueError(f"fid: {name} must hold values in [0, 1], got values from {lo} to {hi}")
    return x


def _split(dataset: str, split: str, smoke: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Float images in [0, 1] (N, 1, 28, 28) and labels of a split (synthetic stand-in at smoke scale)."""
    if smoke:
        x, y = data.synthetic_images(dataset, split, n=_SMOKE_TEST_N if split == "test" else None)
    else:
        x, y = data.load_images(dataset, split, synthetic=False)
    return data.to_float(x), y


def checkpoint_path(dataset: str = "mnist", smoke: bool | None = None):
    """Where the classifier of ``dataset`` is cached: ``checkpoints/fid-<dataset>[-smoke].pt`` in the repo."""
    _check_dataset(dataset)
    smoke = scale() == "smoke" if smoke is None else smoke
    return REPO_ROOT / "checkpoints" / f"fid-{dataset}{'-smoke' if smoke else ''}.pt"


def train_classifier(dataset: str = "mnist", smoke: bool | None = None, epochs: int | None = None) -> Classifier:
    """Train the feature classifier on ``dataset``'s train split with a fixed seed; save and return it.

    Adam with a one-cycle learning rate (peak 3e-3), batches of 256, 3 epochs on the real data (about
    30 s on 2 cores), 10 on the smoke stand-in. The caller's random state is left untouched, so whether
    the checkpoint existed does not change what a notebook draws afterwards.
    """
    _check_dataset(dataset)
    smoke = scale() == "smoke" if smoke is None else smoke
    epochs = check_int("epochs", epochs if epochs is not None else (10 if smoke else 3), low=1)
    x, y = _split(dataset, "train", smoke)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        net = Classifier()
        loader = data.TensorLoader(x, y, batch_size=256, seed=SEED)
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * len(loader))
        train.fit(net, loader, optimizer=opt, scheduler=sched, epochs=epochs, desc=f"fid classifier ({dataset})",
                  amp=False)
    net.eval()
    path = checkpoint_path(dataset, smoke)
    tmp = path.with_name(f"{path.name}.{os.getpid()}")  # per process: concurrent notebooks may train at once
    train.save_checkpoint(tmp, net, dataset=dataset, epochs=epochs, seed=SEED)
    os.replace(tmp, path)
    return net


def classifier(dataset: str = "mnist") -> nn.Module:
    """The frozen feature classifier of ``dataset`` (eval mode, CPU), trained first if its checkpoint is absent.

    Prints its test accuracy when it is loaded (once per process and scale).
    """
    _check_dataset(dataset)
    smoke = scale() == "smoke"
    key = (dataset, smoke)
    if key not in _CACHE:
        path = checkpoint_path(dataset, smoke)
        if path.exists():
            net = Classifier()
            train.load_checkpoint(path, net)
        else:
            print(f"fid: no {path.relative_to(REPO_ROOT)}; training the {dataset} feature classifier once")
            net = train_classifier(dataset, smoke)
        net.eval().requires_grad_(False)
        xt, yt = _split(dataset, "test", smoke)
        acc = train.evaluate(net, data.TensorLoader(xt, yt, batch_size=1000, shuffle=False))["acc"]
        print(f"fid: {dataset} feature classifier{' (smoke stand-in)' if smoke else ''}: "
              f"test accuracy {100 * acc:.2f}% on {len(yt):,} images ({path.relative_to(REPO_ROOT)})")
        _CACHE[key] = net
    return _CACHE[key]


@torch.no_grad()
def features(images, dataset: str = "mnist") -> torch.Tensor:
    """Penultimate classifier features (N, 64), float64, of float images (N, 1, 28, 28) in [0, 1]."""
    _check_dataset(dataset)
    _check_images("images", images)
    ext = _Extractor(classifier(dataset))
    return torch.cat([ext(b) for b in images.detach().cpu().split(1000)])


def fid(real, fake, dataset: str = "mnist") -> float:
    """FID between two sets of float images (N, 1, 28, 28) in [0, 1] (at least 2 each), in classifier features.

    ``torchmetrics.image.fid.FrechetInceptionDistance`` with the classifier's 64-d penultimate layer as
    its feature extractor; means and covariances are accumulated in float64.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    _check_dataset(dataset)
    _check_images("real", real, min_n=2)
    _check_images("fake", fake, min_n=2)
    metric = FrechetInceptionDistance(feature=_Extractor(classifier(dataset)))
    with torch.no_grad():
        for b in real.detach().cpu().split(1000):
            metric.update(b, real=True)
        for b in fake.detach().cpu().split(1000):
            metric.update(b, real=False)
        return float(metric.compute())


def reference(dataset: str = "mnist", n: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint random sets (A, B) of ``n`` test images each (default :func:`n_samples`), float in [0, 1]."""
    _check_dataset(dataset)
    n = n_samples() if n is None else check_int("n", n, low=2)
    check_int("seed", seed, low=0)
    x, _ = _split(dataset, "test", scale() == "smoke")
    if 2 * n > len(x):
        raise ValueError(f"fid.reference: n={n} is larger than half the {dataset} test split ({len(x) // 2})")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[order[:n]], x[order[n:2 * n]]


@torch.no_grad()
def report(fake, labels=None, dataset: str = "mnist") -> dict:
    """Score exactly :func:`n_samples` generated images: ``{"fid", "floor", "n"}``.

    ``fid`` is FID(fake, A) and ``floor`` FID(B, A), A and B the two halves from :func:`reference`.
    With ``labels`` (N,), the classes the images were conditioned on, it adds ``accuracy`` (share the
    classifier assigns to that class) and ``confidence`` (mean max softmax probability).
    """
    _check_dataset(dataset)
    _check_images("fake", fake)
    if fake.shape[0] != n_samples():
        raise ValueError(f"fid.report: expected exactly n_samples() = {n_samples()} images (so section-05 rows "
                         f"compare), got {fake.shape[0]}")
    if labels is not None:
        check_labels("labels", labels, 10, n=fake.shape[0])
    a, b = reference(dataset)
    out = {"fid": fid(fake, a, dataset), "floor": fid(b, a, dataset), "n": int(fake.shape[0])}
    if labels is not None:
        net = classifier(dataset)
        probs = torch.cat([net(x.float()).softmax(1) for x in fake.detach().cpu().split(1000)])  # (N, 10)
        out["accuracy"] = float((probs.argmax(1) == labels.cpu()).float().mean())
        out["confidence"] = float(probs.max(1).values.mean())
    return out
