"""Tests for common/fid.py: the section-05 image-quality score (FID in a small classifier's features)."""

import pytest
import torch

from common import data, fid


def _images(n, seed=0, split="test"):
    x, y = data.synthetic_images("mnist", split, n=n, seed=seed)
    return data.to_float(x), y


def _direct_fid(f1, f2):
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), with Tr (S1 S2)^(1/2) = Tr (S1^(1/2) S2 S1^(1/2))^(1/2)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = torch.cov(f1.T), torch.cov(f2.T)

    def sqrtm_psd(s):
        w, v = torch.linalg.eigh(s)
        return v @ torch.diag(w.clamp_min(0).sqrt()) @ v.T

    r1 = sqrtm_psd(s1)
    covmean_trace = torch.linalg.eigvalsh(r1 @ s2 @ r1).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * covmean_trace)


def test_n_samples_by_scale(monkeypatch):
    assert fid.n_samples() == 200
    monkeypatch.setenv("DLH_SCALE", "cpu")
    assert fid.n_samples() == fid.N_SAMPLES == 2000


def test_classifier_is_frozen_eval_cpu_and_prints_accuracy(capsys, monkeypatch):
    monkeypatch.setattr(fid, "_CACHE", {})
    net = fid.classifier()
    out = capsys.readouterr().out
    assert "test accuracy" in out
    assert not net.training and all(not p.requires_grad for p in net.parameters())
    assert all(p.device.type == "cpu" for p in net.parameters())
    x, y = _images(256, seed=0)
    assert (net(x).argmax(1) == y).float().mean() > 0.9  # learnt the smoke stand-in's classes
    assert fid.classifier() is net  # cached in the process


def test_classifier_trains_when_checkpoint_absent_without_touching_global_rng(tmp_path, monkeypatch):
    monkeypatch.setattr(fid, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(fid, "_CACHE", {})
    torch.manual_seed(123)
    state = torch.get_rng_state()
    net = fid.classifier()
    assert torch.equal(torch.get_rng_state(), state)
    assert (tmp_path / "checkpoints" / "fid-mnist-smoke.pt").exists()
    monkeypatch.setattr(fid, "_CACHE", {})
    again = fid.classifier()  # loaded from the file just written: same weights
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))


def test_features_shape_dtype_and_batch_independence():
    x, _ = _images(30)
    f = fid.features(x)
    assert f.shape == (30, fid.FEATURES) and f.dtype == torch.float64
    assert torch.allclose(fid.features(x[:7]), f[:7], atol=1e-5)


def test_fid_matches_direct_float64_computation():
    a, _ = _images(300, seed=1)
    b, _ = _images(300, seed=2)
    b = (0.8 * b + 0.1).clamp(0, 1)  # a different distribution
    ours = fid.fid(a, b)
    ref = _direct_fid(fid.features(a), fid.features(b))
    assert ours > 1.0
    assert abs(ours - ref) <= 1e-6 * max(1.0, abs(ref))


def test_fid_symmetric_and_zero_for_identical_sets():
    a, _ = _images(300, seed=1)
    b, _ = _images(300, seed=2)
    assert abs(fid.fid(a, b) - fid.fid(b, a)) < 1e-6 * max(1.0, fid.fid(a, b))
    assert abs(fid.fid(a, a)) < 1e-4


def test_reference_halves_are_disjoint_sized_and_seeded():
    a, b = fid.reference()
    assert a.shape == b.shape == (fid.n_samples(), 1, 28, 28) and a.dtype == torch.float32
    assert 0 <= float(a.min()) and float(a.max()) <= 1
    rows_a = {tuple(r.tolist()) for r in a.flatten(1)}
    assert not any(tuple(r.tolist()) in rows_a for r in b.flatten(1))
    a2, _ = fid.reference()
    a3, _ = fid.reference(seed=1)
    assert torch.equal(a, a2) and not torch.equal(a, a3)
    a4, b4 = fid.reference(n=10)
    assert a4.shape[0] == b4.shape[0] == 10


def test_report_floor_below_noise_and_class_accuracy():
    n = fid.n_samples()
    real, labels = _images(n, seed=0)
    noise = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    good, bad = fid.report(real), fid.report(noise)
    assert set(good) == {"fid", "floor", "n"} and good["n"] == n
    assert good["floor"] == bad["floor"] and bad["fid"] > 10 * good["floor"]
    scored = fid.report(real, labels=labels)
    assert scored["accuracy"] > 0.9 and 0.1 <= scored["confidence"] <= 1
    wrong = fid.report(real, labels=(labels + 1) % 10)
    assert wrong["accuracy"] < 0.2


@pytest.mark.parametrize("bad", [
    torch.rand(4, 28, 28),                      # no channel axis
    torch.rand(4, 3, 28, 28),                   # colour
    torch.rand(4, 1, 32, 32),                   # wrong size
    torch.randint(0, 255, (4, 1, 28, 28)),      # integer images
    torch.rand(4, 1, 28, 28) * 2,               # outside [0, 1]
    torch.full((4, 1, 28, 28), float("nan")),   # NaN
    torch.rand(1, 1, 28, 28),                   # one image: no covariance
    [[0.0]],
])
def test_fid_rejects_bad_images(bad):
    good, _ = _images(8)
    with pytest.raises(ValueError):
        fid.fid(good, bad)
    with pytest.raises(ValueError):
        fid.fid(bad, good)


def test_bad_dataset_n_and_report_count():
    x, y = _images(fid.n_samples())
    with pytest.raises(ValueError, match="unknown dataset"):
        fid.classifier("cifar10")
    with pytest.raises(ValueError, match="unknown dataset"):
        fid.features(x, dataset="svhn")
    with pytest.raises(ValueError, match="larger than half"):
        fid.reference(n=10_000)
    with pytest.raises(ValueError):
        fid.reference(n=1)
    with pytest.raises(ValueError, match="n_samples"):
        fid.report(x[:-1])
    with pytest.raises(ValueError):
        fid.report(x, labels=y[:-1])
    with pytest.raises(ValueError):
        fid.report(x, labels=y + 10)
    with pytest.raises(ValueError):
        fid.features(torch.rand(2, 1, 28, 28, dtype=torch.float64) + 1)
