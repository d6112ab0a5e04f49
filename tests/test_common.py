"""Tests of the common package: runtime, data resolution and loaders, training loop, results."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import pickle
import struct
import tarfile
import time
import zipfile

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
from common import data, results, runtime, topics, train

# ----------------------------------------------------------------------------- runtime


def test_scale_and_pick(monkeypatch):
    monkeypatch.setenv("DLH_SCALE", "cpu")
    assert common.scale() == "cpu"
    assert common.pick(smoke=1, cpu=2, gpu=3) == 2
    monkeypatch.setenv("DLH_SCALE", "gpu")
    assert common.pick(smoke=1, cpu=2) == 2  # gpu defaults to cpu's value
    assert common.pick(smoke=1, cpu=2, gpu=3) == 3
    monkeypatch.setenv("DLH_SCALE", "smoke")
    assert common.pick(smoke=1, cpu=2, gpu=3) == 1
    monkeypatch.setenv("DLH_SCALE", "huge")
    with pytest.raises(ValueError, match="smoke, cpu, gpu"):
        common.scale()
    monkeypatch.delenv("DLH_SCALE")
    assert common.scale() == ("gpu" if torch.cuda.is_available() else "cpu")


def test_seed_everything_repeats_and_rejects_bad_seed():
    common.seed_everything(3)
    a = torch.randn(4), np.random.rand()
    common.seed_everything(3)
    b = torch.randn(4), np.random.rand()
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    with pytest.raises(ValueError, match="non-negative int"):
        common.seed_everything(-1)


def test_setup_prints_header_and_timer(capsys):
    dev = common.setup(seed=1, datasets=["mnist"])
    out = capsys.readouterr().out
    assert isinstance(dev, torch.device)
    assert "scale   : smoke" in out and "mnist: synthetic" in out and "torch" in out
    with common.Timer() as t:
        sum(range(1000))
    assert t.seconds > 0
    assert runtime.elapsed() is not None and runtime.elapsed() >= 0


def test_device_is_a_torch_device():
    assert common.device().type in ("cpu", "cuda", "mps")


# ----------------------------------------------------------------------------- data resolution


def _dataset(name: str, files: dict[str, bytes], url: str = "http://127.0.0.1:9/") -> data.Dataset:
    return data.Dataset(name, tuple(data.RemoteFile(f, url + f, hashlib.md5(b).hexdigest(), len(b))
                                    for f, b in files.items()))


@pytest.fixture
def fake_dataset(monkeypatch, tmp_path):
    """A registered dataset of one small file, with download forbidden unless a test allows it."""
    body = b"hello dataset\n" * 10
    ds = _dataset("toy", {"toy.txt": body})
    monkeypatch.setitem(data.REGISTRY, "toy", ds)
    calls = []

    def no_download(url, dest, **kw):
        calls.append(url)
        raise data.DataError("offline in tests")

    monkeypatch.setattr(data, "_download", no_download)
    return ds, body, calls


def test_cache_hit_uses_the_cache_without_download(fake_dataset, tmp_path):
    ds, body, calls = fake_dataset
    cached = data.cache_dir() / "toy" / "toy.txt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(body)
    assert data.fetch("toy") == {"toy.txt": cached}
    assert calls == []


def test_mirror_hit(fake_dataset, tmp_path, monkeypatch):
    ds, body, calls = fake_dataset
    mirror = tmp_path / "mirror"
    (mirror / "toy").mkdir(parents=True)
    (mirror / "toy" / "toy.txt").write_bytes(body)
    monkeypatch.setenv("DLH_DATA_MIRROR", str(mirror))
    assert data.fetch("toy")["toy.txt"] == mirror / "toy" / "toy.txt"
    assert data.available("toy")
    assert "mirror" in data.source("toy") or data.scale() == "smoke"
    assert calls == []


def test_corrupt_cache_is_reported_removed_and_refetched_from_mirror(fake_dataset, tmp_path, monkeypatch):
    ds, body, calls = fake_dataset
    cached = data.cache_dir() / "toy" / "toy.txt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(body[:-1] + b"X")  # same size, wrong md5
    mirror = tmp_path / "mirror"
    (mirror / "toy").mkdir(parents=True)
    (mirror / "toy" / "toy.txt").write_bytes(body)
    monkeypatch.setenv("DLH_DATA_MIRROR", str(mirror))
    with pytest.warns(UserWarning, match=f"corrupt cached file.*expected md5 {ds.files[0].md5}"):
        paths = data.fetch("toy")
    assert paths["toy.txt"] == mirror / "toy" / "toy.txt"
    assert not cached.exists()


def test_corrupt_everywhere_and_offline_is_never_used(fake_dataset, tmp_path, monkeypatch):
    ds, body, calls = fake_dataset
    mirror = tmp_path / "mirror"
    (mirror / "toy").mkdir(parents=True)
    (mirror / "toy" / "toy.txt").write_bytes(b"truncated")
    monkeypatch.setenv("DLH_DATA_MIRROR", str(mirror))
    with pytest.warns(UserWarning, match="corrupt mirrored file"), pytest.raises(data.DataError):
        data.fetch("toy")
    with pytest.warns(UserWarning, match="corrupt mirrored file"):
        assert not data.available("toy")


def test_offline_error_names_dataset_url_and_both_variables(monkeypatch):
    ds = _dataset("toy2", {"a.bin": b"abc"}, url="http://127.0.0.1:9/")  # port 9: refused at once
    monkeypatch.setitem(data.REGISTRY, "toy2", ds)
    monkeypatch.setattr(data.time, "sleep", lambda s: None)
    with pytest.raises(data.DataError) as info:
        data.fetch("toy2")
    msg = str(info.value)
    assert "'toy2'" in msg and "http://127.0.0.1:9/a.bin" in msg
    assert "DLH_DATA=" in msg and "DLH_DATA_MIRROR=" in msg


def test_download_is_checksummed_and_atomic(http_server, monkeypatch):
    base, routes = http_server
    good = b"0123456789" * 100
    routes["/good.bin"] = (200, good)
    routes["/bad.bin"] = (200, b"tampered!!" * 100)
    ds = data.Dataset("dl", (data.RemoteFile("good.bin", base + "/good.bin", hashlib.md5(good).hexdigest()),))
    monkeypatch.setitem(data.REGISTRY, "dl", ds)
    path = data.fetch("dl")["good.bin"]
    assert path.read_bytes() == good and path.parent == data.cache_dir() / "dl"
    assert not list(path.parent.glob("*.part*"))
    bad = data.Dataset("dlbad", (data.RemoteFile("bad.bin", base + "/bad.bin", hashlib.md5(good).hexdigest()),))
    monkeypatch.setitem(data.REGISTRY, "dlbad", bad)
    with pytest.raises(data.ChecksumError, match=f"expected md5 {hashlib.md5(good).hexdigest()}"):
        data.fetch("dlbad")
    assert not (data.cache_dir() / "dlbad" / "bad.bin").exists()


def test_download_retries_after_a_server_error(http_server, monkeypatch):
    base, routes = http_server
    body = b"payload" * 50
    answers = iter([(503, b"busy"), (200, body)])
    routes["/flaky.bin"] = lambda: next(answers)
    monkeypatch.setattr(data.time, "sleep", lambda s: None)
    ds = data.Dataset("flaky", (data.RemoteFile("flaky.bin", base + "/flaky.bin", hashlib.md5(body).hexdigest()),))
    monkeypatch.setitem(data.REGISTRY, "flaky", ds)
    assert data.fetch("flaky")["flaky.bin"].read_bytes() == body


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(ValueError, match="mnist"):
        data.fetch("imagenet")


# ----------------------------------------------------------------------------- parsers and loaders


def _idx(arr: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes())


def _register_tiny_mnist(monkeypatch, tmp_path, n_train=6, n_test=3):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, (n_train,)),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, (n_test,)),
    }
    files = {name: _idx(a) for name, a in arrays.items()}
    mirror = tmp_path / "mirror"
    (mirror / "mnist").mkdir(parents=True)
    for name, b in files.items():
        (mirror / "mnist" / name).write_bytes(b)
    monkeypatch.setitem(data.REGISTRY, "mnist", _dataset("mnist", files))
    monkeypatch.setenv("DLH_DATA_MIRROR", str(mirror))
    return arrays


def test_idx_parsing_of_tiny_mnist(monkeypatch, tmp_path, cpu_scale):
    arrays = _register_tiny_mnist(monkeypatch, tmp_path)
    x, y = data.load_images("mnist", "train")
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert np.array_equal(x[:, 0].numpy(), arrays["train-images-idx3-ubyte.gz"])
    assert np.array_equal(y.numpy(), arrays["train-labels-idx1-ubyte.gz"])
    xt, yt = data.load_images("mnist", "test")
    assert xt.shape == (3, 1, 28, 28) and yt.shape == (3,)


def test_truncated_gzip_is_an_error_naming_the_file(monkeypatch, tmp_path, cpu_scale):
    good = _idx(np.zeros((4, 28, 28)))
    truncated = good[: len(good) // 2]
    files = {"train-images-idx3-ubyte.gz": truncated}  # its md5 is registered: only parsing can notice
    mirror = tmp_path / "m"
    (mirror / "trunc").mkdir(parents=True)
    (mirror / "trunc" / "train-images-idx3-ubyte.gz").write_bytes(truncated)
    monkeypatch.setitem(data.REGISTRY, "trunc", _dataset("trunc", files))
    monkeypatch.setenv("DLH_DATA_MIRROR", str(mirror))
    path = data.fetch("trunc")["train-images-idx3-ubyte.gz"]
    with pytest.raises(data.ChecksumError, match="train-images-idx3-ubyte.gz.*(corrupt|truncated)"):
        data.read_idx(path)


def test_idx_rejects_bad_magic(tmp_path):
    p = tmp_path / "x.idx"
    p.write_bytes(b"\x01\x02\x03\x04abcd")
    with pytest.raises(data.ChecksumError, match="not an IDX file"):
        data.read_idx(p)


def test_cifar10_loader_on_tiny_batches(monkeypatch, tmp_path, cpu_scale):
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    expected = {}
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            imgs = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
            labels = rng.integers(0, 10, 2).tolist()
            expected[name] = (imgs, labels)
            blob = pickle.dumps({b"data": imgs, b"labels": labels})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    body = buf.getvalue()
    mirror = tmp_path / "m"
    (mirror / "cifar10").mkdir(parents=True)
    (mirror / "cifar10" / "cifar-10-python.tar.gz").write_bytes(body)
    monkeypatch.setitem(data.REGISTRY, "cifar10", _dataset("cifar10", {"cifar-10-python.tar.gz": body}))
    monkeypatch.setenv("DLH_DATA_MIRROR", str(mirror))
    assert data.available("cifar10")
    x, y = data.load_images("cifar10", "train")
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.uint8 and y.shape == (10,)
    assert np.array_equal(x[0].numpy().reshape(-1), expected["data_batch_1"][0][0])
    xt, yt = data.load_images("cifar10", "test")
    assert xt.shape == (2, 3, 32, 32) and yt.tolist() == expected["test_batch"][1]


def test_pairs_accept_both_upstream_layouts(monkeypatch, tmp_path, cpu_scale):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("fra.txt", "Go.\tVa !\tCC-BY 2.0 (France) Attribution\nHi.\tSalut !\n")
    body = buf.getvalue()
    mirror = tmp_path / "m"
    (mirror / "tatoeba-fra-eng").mkdir(parents=True)
    (mirror / "tatoeba-fra-eng" / "fra-eng.zip").write_bytes(body)
    monkeypatch.setenv("DLH_DATA_MIRROR", str(mirror))
    assert data.load_pairs() == [("Go.", "Va !"), ("Hi.", "Salut !")]


def test_unpinned_zip_with_bad_crc_is_rejected(monkeypatch, tmp_path, cpu_scale):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("fra.txt", "Go.\tVa !\n" * 50)
    body = bytearray(buf.getvalue())
    body[60] ^= 0xFF  # flip a byte of the stored member
    mirror = tmp_path / "m"
    (mirror / "tatoeba-fra-eng").mkdir(parents=True)
    (mirror / "tatoeba-fra-eng" / "fra-eng.zip").write_bytes(bytes(body))
    monkeypatch.setenv("DLH_DATA_MIRROR", str(mirror))
    monkeypatch.setattr(data, "_download", lambda *a, **k: (_ for _ in ()).throw(data.DataError("offline")))
    with pytest.warns(UserWarning, match="corrupt mirrored"), pytest.raises(data.DataError):
        data.load_pairs()


def test_smoke_stand_ins_have_real_shapes():
    for name, shape in data.IMAGE_DATASETS.items():
        x, y = data.load_images(name, "train")
        assert x.shape[1:] == shape and x.dtype == torch.uint8 and y.dtype == torch.int64
        assert set(y.tolist()) <= set(range(10))
    assert isinstance(data.load_text(), str) and len(data.load_text()) > 1000
    assert data.load_text("text8").replace(" ", "").isalpha()
    assert all(n.isalpha() and n.islower() for n in data.load_names())
    pairs = data.load_pairs()
    assert all(isinstance(e, str) and isinstance(f, str) for e, f in pairs)


def test_load_images_rejects_bad_names():
    with pytest.raises(ValueError, match="not an image dataset"):
        data.load_images("names")
    with pytest.raises(ValueError, match="split must be"):
        data.load_images("mnist", "valid")


def test_to_float():
    x = torch.tensor([0, 255], dtype=torch.uint8)
    assert torch.equal(data.to_float(x), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="uint8"):
        data.to_float(torch.zeros(2))


def test_tensor_loader_visits_each_sample_once_per_epoch():
    x = torch.arange(103)
    loader = data.TensorLoader(x, x * 2, batch_size=10, seed=0)
    assert len(loader) == 11
    orders = []
    for _ in range(2):
        seen = []
        for xb, yb in loader:
            assert torch.equal(yb, xb * 2)
            seen.append(xb)
        seen = torch.cat(seen)
        assert sorted(seen.tolist()) == list(range(103))
        orders.append(seen)
    assert not torch.equal(orders[0], orders[1])  # a fresh permutation each epoch
    dropped = data.TensorLoader(x, batch_size=10, drop_last=True)
    assert len(dropped) == 10 and sum(len(b[0]) for b in dropped) == 100
    ordered = data.TensorLoader(x, batch_size=50, shuffle=False, transform=lambda a: (a + 1,))
    assert torch.equal(torch.cat([b[0] for b in ordered]), x + 1)


def test_tensor_loader_bad_input():
    with pytest.raises(ValueError, match="same first dimension"):
        data.TensorLoader(torch.zeros(3), torch.zeros(4), batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        data.TensorLoader(torch.zeros(3), batch_size=0)
    with pytest.raises(ValueError, match="at least one tensor"):
        data.TensorLoader(batch_size=2)


def test_char_tokenizer_round_trip_and_errors():
    tok = data.CharTokenizer("hello world")
    assert tok.vocab_size == 8
    ids = tok.encode("hold")
    assert ids.dtype == torch.long and tok.decode(ids) == "hold"
    with pytest.raises(ValueError, match="'z' is not in the vocabulary"):
        tok.encode("z")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([99])
    with pytest.raises(ValueError, match="non-empty"):
        data.CharTokenizer("")


# ----------------------------------------------------------------------------- training


def _blobs(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centers = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    return centers[y] + 0.5 * torch.randn(n, 2, generator=g), y


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 3))


def test_fit_learns_a_tiny_problem():
    x, y = _blobs()
    model = _model()
    loader = data.TensorLoader(x, y, batch_size=32, seed=0)
    val = data.TensorLoader(*_blobs(128, seed=1), batch_size=64, shuffle=False)
    hist = train.fit(model, loader, optimizer=torch.optim.SGD(model.parameters(), lr=0.2), epochs=5,
                     val_loader=val, eval_every=20, progress_bar=False)
    assert hist.last("val_acc") > 0.95
    steps, losses = hist.series("train_loss")
    assert losses[-1] < losses[0] and steps == sorted(steps)
    assert {"train_loss", "val_loss", "val_acc"} <= hist.names()
    with pytest.raises(KeyError, match="no metric"):
        hist.series("bleu")


def test_fit_can_skip_epoch_end_evaluation():
    x, y = _blobs(64)
    model = _model()
    loader = data.TensorLoader(x, y, batch_size=16, seed=0)  # 4 steps per epoch
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hist = train.fit(model, loader, optimizer=opt, epochs=6, val_loader=loader, eval_every=10,
                     eval_each_epoch=False, progress_bar=False)
    assert [r["step"] for r in hist.records] == [10, 20, 24]  # every 10 steps, then the end only
    hist = train.fit(model, loader, optimizer=opt, epochs=3, eval_each_epoch=False, progress_bar=False)
    assert [r["step"] for r in hist.records] == [12] and "train_loss" in hist.records[0]


def test_fit_max_steps_and_bad_arguments():
    x, y = _blobs(64)
    model = _model()
    loader = data.TensorLoader(x, y, batch_size=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hist = train.fit(model, loader, optimizer=opt, epochs=10, max_steps=5, progress_bar=False)
    assert hist.records[-1]["step"] == 5
    with pytest.raises(ValueError, match="epochs"):
        train.fit(model, loader, optimizer=opt, epochs=0)


def test_resume_after_checkpoint_matches_uninterrupted_run(tmp_path):
    x, y = _blobs(96)

    def run(epochs, ckpt=None, resume=False, model=None, opt=None):
        model = model or _model(seed=5)
        opt = opt or torch.optim.Adam(model.parameters(), lr=0.01)
        loader = data.TensorLoader(x, y, batch_size=16, seed=7)
        torch.manual_seed(11)
        train.fit(model, loader, optimizer=opt, epochs=epochs, checkpoint=ckpt, resume=resume, progress_bar=False)
        return model

    straight = run(4)
    ckpt = tmp_path / "ck.pt"
    run(2, ckpt)  # "interrupted" after two epochs
    resumed_model = _model(seed=99)  # fresh process: different init, restored from the checkpoint
    resumed = run(4, ckpt, resume=True, model=resumed_model)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_non_finite_guard_names_step_and_lr():
    x, y = _blobs(32)
    model = _model()
    loader = data.TensorLoader(x, y, batch_size=8)

    def nan_loss(out, target):
        return F.cross_entropy(out, target) * float("nan")

    with pytest.raises(train.NonFiniteLossError, match="step 0 .*learning rate 0.5"):
        train.fit(model, loader, optimizer=torch.optim.SGD(model.parameters(), lr=0.5), loss_fn=nan_loss,
                  progress_bar=False)


def test_non_finite_guard_names_the_step_it_happened_at():
    x, y = _blobs(64)
    model = _model()
    calls = []

    def late_nan(out, target):
        calls.append(1)
        loss = F.cross_entropy(out, target)
        return loss * float("inf") if len(calls) == 8 else loss

    with pytest.raises(train.NonFiniteLossError, match="at step 7 "):
        train.fit(model, data.TensorLoader(x, y, batch_size=4), optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                  loss_fn=late_nan, epochs=2, guard_every=5, progress_bar=False)


def test_check_finite_on_one_loss_and_on_a_run_of_losses():
    train.check_finite(torch.tensor(1.0), step=3)
    with pytest.raises(train.NonFiniteLossError, match="at step 3 "):
        train.check_finite(torch.tensor(float("nan")), step=3)
    with pytest.raises(train.NonFiniteLossError, match="at step 12 "):
        train.check_finite(torch.tensor([0.5, 0.4, float("inf"), 0.3]), step=10)


def test_evaluate_and_accuracy():
    model = nn.Identity()
    model.register_parameter("dummy", nn.Parameter(torch.zeros(1)))
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 1, 1])
    res = train.evaluate(model, data.TensorLoader(logits, y, batch_size=3, shuffle=False))
    assert res["acc"] == pytest.approx(0.75)
    assert res["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    with pytest.raises(ValueError, match="logits"):
        train.accuracy(torch.zeros(3), torch.zeros(3))


# ----------------------------------------------------------------------------- results and topics


PAPER = {"source": "Fig. 1", "dataset": "CIFAR-10", "summary": "ReLU reaches 25% training error 6x sooner than tanh",
         "values": {"speed-up": 6}}


def test_results_keep_small_values_and_round_the_rest():
    from common.results import _jsonable

    assert _jsonable({"a": 3.14159265358, "b": [2.5e-15, -1.23456789e-7, 0.0]}) == {
        "a": 3.141593, "b": [2.5e-15, -1.234568e-7, 0.0]}
    assert _jsonable(torch.tensor(4.8e-7)) == pytest.approx(4.8e-7, rel=1e-6)


def test_record_scoreboard_round_trip(tmp_path, monkeypatch, cpu_scale):
    folder = tmp_path / "01-deep-neural-networks" / "01-dnn"
    folder.mkdir(parents=True)
    (folder / "dnn.py").write_text("x = 1\n")
    monkeypatch.setattr(results, "topic_dir", lambda f: tmp_path / f)
    common.setup(0)
    run = common.record(claim="ReLU trains faster.", paper=PAPER, dataset="fashion-mnist", substitute_for="CIFAR-10",
                        metrics={"speedup": np.float64(2.5), "lr": 0.01}, spread={"speedup": [2.0, 3.0]},
                        seeds=[0, 1, 2], claim_holds=np.bool_(True), headline="2.5x faster", folder=folder)
    saved = json.loads((folder / "results.json").read_text())
    assert saved["topic"] == "01-deep-neural-networks/01-dnn"
    assert saved["runs"]["cpu"] == run and run["claim_holds"] is True and run["metrics"]["speedup"] == 2.5
    assert run["seeds"] == [0, 1, 2] and run["spread"] == {"speedup": [2.0, 3.0]}
    assert run["substitute_for"] == "CIFAR-10" and run["source_sha256"] == results.source_sha256(folder)
    assert "commit" not in run
    board = results.render_scoreboard(tmp_path)
    assert "| Topic | Claim | Paper | Data | Scale | Measured | Holds | Time |" in board
    assert "Fig. 1, CIFAR-10: ReLU reaches 25% training error 6x sooner than tanh" in board
    assert "fashion-mnist (substitute for CIFAR-10)" in board and "2.5x faster (3 seeds)" in board
    assert "| cpu |" in board and "| yes |" in board
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- index:start -->\n<!-- index:end -->\n<!-- scoreboard:start -->\nSTALE\n"
                      "<!-- scoreboard:end -->\nend\n")
    assert results.update_readme(readme, tmp_path)
    text = readme.read_text()
    assert "2.5x faster" in text and "STALE" not in text and "*planned*" in text
    assert "[Backpropagation (1986)](01-deep-neural-networks/01-dnn/notes.ipynb)" in text
    assert not results.update_readme(readme, tmp_path)  # idempotent


def test_record_validates_and_skips_smoke(tmp_path, monkeypatch):
    folder = tmp_path / "01-deep-neural-networks" / "01-dnn"
    folder.mkdir(parents=True)
    monkeypatch.setattr(results, "topic_dir", lambda f: tmp_path / f)
    kw = dict(claim="c", paper=PAPER, dataset="d", metrics={"a": 1.0}, seeds=[0], headline="h", folder=folder)
    with pytest.raises(ValueError, match="claim_holds must be a bool"):
        common.record(claim_holds="yes", **kw)
    with pytest.raises(ValueError, match="summary"):
        common.record(claim_holds=False, **{**kw, "paper": {"source": "s", "metric": "m", "values": {}}})
    with pytest.raises(ValueError, match="seeds"):
        common.record(claim_holds=False, **{**kw, "seeds": 3})
    with pytest.raises(ValueError, match="no spread"):
        common.record(claim_holds=False, **{**kw, "seeds": [0, 1]})
    with pytest.raises(ValueError, match="not in metrics"):
        common.record(claim_holds=False, **{**kw, "seeds": [0, 1], "spread": {"b": [0, 1]}})
    with pytest.raises(ValueError, match="min <= max"):
        common.record(claim_holds=False, **{**kw, "seeds": [0, 1], "spread": {"a": [2, 1]}})
    with pytest.raises(ValueError, match="headline"):
        common.record(claim_holds=False, **{**kw, "headline": " "})
    with pytest.raises(ValueError, match="substitute_for"):
        common.record(claim_holds=False, **{**kw, "substitute_for": ""})
    common.record(claim_holds=False, **kw)  # smoke scale: nothing written
    assert not (folder / "results.json").exists()
    with pytest.raises(ValueError, match="not one of the planned topics"):
        common.record(claim_holds=False, **{**kw, "folder": tmp_path}, run_scale="cpu")


def test_seed_stats_and_fmt_stats():
    st = common.seed_stats([1.0, 2.0, 3.0])
    assert st == {"mean": 2.0, "min": 1.0, "max": 3.0, "std": 1.0, "n": 3}
    assert common.seed_stats(torch.tensor([4.0]))["std"] == 0.0
    assert common.fmt_stats([2.0, 1.5, 2.5], ".2f", "x") == "2.00x (1.50-2.50x, 3 seeds)"
    assert common.fmt_stats([0.25], ".0%") == "25%"
    with pytest.raises(ValueError, match="no values"):
        common.seed_stats([])
    with pytest.raises(ValueError, match="non-finite"):
        common.seed_stats([1.0, float("nan")])


def test_source_hash_ignores_docstrings_and_comments_not_code(tmp_path):
    import nbformat

    (tmp_path / "m.py").write_text('"""Doc."""\n\ndef f(x):\n    """Doc."""\n    return x + 1  # note\n')
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# T"), nbformat.v4.new_code_cell("f(1)")])
    nbformat.write(nb, tmp_path / "notes.ipynb")
    h = results.source_sha256(tmp_path)
    (tmp_path / "m.py").write_text('"""Other doc."""\n# a comment\ndef f(x):\n    return x + 1\n')
    assert results.source_sha256(tmp_path) == h
    nb.cells[0].source = "# Another title"
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="2\n")]
    nbformat.write(nb, tmp_path / "notes.ipynb")
    assert results.source_sha256(tmp_path) == h  # markdown and outputs are not code
    (tmp_path / "m.py").write_text("def f(x):\n    return x + 2\n")
    assert results.source_sha256(tmp_path) != h
    (tmp_path / "m.py").write_text("def f(x):\n    return x + 1\n")
    assert results.source_sha256(tmp_path) == h
    nb.cells[1].source = "f(2)"
    nbformat.write(nb, tmp_path / "notes.ipynb")
    assert results.source_sha256(tmp_path) != h
    (tmp_path / "bad.py").write_text("def (:\n")
    with pytest.raises(ValueError, match="does not parse"):
        results.source_sha256(tmp_path)


def test_code_text_cuts_docstrings_and_comments_and_keeps_the_code_as_written():
    src = ('"""Module doc."""\n\n\nclass A:  # a class\n    """Doc\n    on two lines."""\n\n'
           '    def f(self, x):\n        """é"""; y = 1\n        return f"{\'a\' if x else \'b\'}"  # note  \n')
    assert results._code_text(src) == ("class A:\n    def f(self, x):\n        ; y = 1\n"
                                       "        return f\"{\'a\' if x else \'b\'}\"")


def test_topic_import_and_resolve(monkeypatch):
    folder, module, title, year = topics.resolve("01-dnn")
    assert (folder, module) == ("01-deep-neural-networks/01-dnn", "dnn")
    assert topics.resolve("dnn") == topics.resolve("01-deep-neural-networks/01-dnn")
    with pytest.raises(ValueError, match="the topics are"):
        topics.resolve("nonexistent-topic")
    assert len(topics.TOPICS) == 31 and len({t[1] for t in topics.TOPICS}) == 31
    mod = common.topic("dnn")
    assert mod is common.topic("dnn") and mod.__name__ == "dnn"
    # every topic exists now; a listed topic without its module still gets a clear error
    monkeypatch.setattr(topics, "TOPICS", [*topics.TOPICS, ("05-image-generation/99-future", "future", "Future", 2030)])
    with pytest.raises(ValueError, match="planned"):
        common.topic("future")


# ----------------------------------------------------------------------------- plots, progress, notebooks


def test_plots_return_axes_and_reject_bad_input():
    import matplotlib

    matplotlib.use("Agg")
    ax = common.plot.curves({"a": ([0, 1, 2], [3, 2, 1]), "b": [1, 2, 3]}, ylabel="loss", hline=1.5, logy=True)
    assert len(ax.lines) == 3
    ax = common.plot.image_grid(torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8), nrow=5, labels=list("abcdefghij"))
    assert ax.images[0].get_array().shape == (19, 46)
    ax = common.plot.heatmap(np.eye(3), xticklabels="abc", yticklabels="xyz", annotate=True)
    assert len(ax.texts) == 9
    with pytest.raises(ValueError, match="2-D"):
        common.plot.heatmap(np.zeros(3))
    with pytest.raises(ValueError, match="N, C, H, W"):
        common.plot.image_grid(np.zeros((2, 5, 4, 4)))
    with pytest.raises(ValueError, match="non-empty dict"):
        common.plot.curves({})
    import matplotlib.pyplot as plt

    plt.close("all")


def test_progress_is_plain_text():
    buf = io.StringIO()
    bar = common.progress(range(3), desc="x", file=buf, mininterval=0)
    assert list(bar) == [0, 1, 2]
    assert "3/3" in buf.getvalue()


def test_tidy_outputs_collapses_carriage_returns():
    import nbformat

    from common.notebooks import tidy_outputs

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text="a  10%\ra  50%"),
                    nbformat.v4.new_output("stream", name="stderr", text="\ra 100%\n"),
                    nbformat.v4.new_output("stream", name="stdout", text="done\n")]
    nb.cells.append(cell)
    tidy_outputs(nb)
    assert [o["text"] for o in nb.cells[0].outputs] == ["a 100%\n", "done\n"]


def test_show_source_prints_once_and_returns_nothing(capsys):
    assert common.show_source(_blobs) is None
    out = capsys.readouterr().out
    assert out.startswith("def _blobs") and out.count("def _blobs") == 1
    assert common.source_of(_blobs).startswith("def _blobs")
    with pytest.raises(ValueError, match="no source"):
        common.show_source(1)


def test_threads_sets_and_restores():
    before = torch.get_num_threads()
    with common.threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    old = common.set_threads(1)
    assert old == before and torch.get_num_threads() == 1
    common.set_threads(before)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive int"):
            common.set_threads(bad)
        with pytest.raises(ValueError, match="positive int"):
            common.threads(bad)


def test_failing_notebook_names_the_error_plainly_first(tmp_path):
    import nbformat

    from common.notebooks import NotebookError, run_notebook

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell(
        "from common.data import DataError\nraise DataError('mnist: offline; set DLH_DATA or DLH_DATA_MIRROR')")])
    nbformat.write(nb, tmp_path / "nb.ipynb")
    with pytest.raises(NotebookError) as info:
        run_notebook(tmp_path / "nb.ipynb", scale="smoke")
    first = str(info.value).split("\n", 1)[0]
    assert first == info.value.summary
    assert "cell 2 (counting" in first and "DataError: mnist: offline; set DLH_DATA or DLH_DATA_MIRROR" in first
    assert "\x1b[" not in str(info.value) and "full traceback" in str(info.value)


def test_bench_rows_report_batching_and_whole_epoch(monkeypatch):
    from common import bench

    monkeypatch.setenv("DLH_SCALE", "smoke")  # synthetic MNIST stand-in, no download
    rows = bench.bench_loader(n=512, batch_size=64, repeats=1)
    assert [r["name"].split("] ")[1].split(",")[0] for r in rows] == ["batching alone", "whole MLP 784-256-10 epoch (model included)"]
    assert all(r["speedup"] > 0 and r["ours_s"] > 0 for r in rows)
    row = bench.bench_fit(n=512, batch_size=64, repeats=2)
    assert row["ours_s"] > 0 and row["theirs_s"] > 0 and "overhead_pct" in row


def test_time_ab_alternates_and_reports_medians_in_ms():
    from common import bench
    calls = []
    a = lambda: (calls.append("a"), time.sleep(0.002))  # noqa: E731
    b = lambda: calls.append("b")  # noqa: E731
    ta, tb = bench.time_ab(a, b, repeats=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then ABBA
    assert ta >= 2.0 > tb >= 0.0
    for bad in [(a, None, 3), (a, b, 0), (a, b, 1.5)]:
        with pytest.raises(ValueError):
            bench.time_ab(*bad)


def test_topic_bench_rows_convert_milliseconds_and_name_planned_modules():
    from common import bench
    from common.topics import TOPICS

    modules = {t[1] for t in TOPICS}
    assert all(entry[0] in modules for entry in bench._TOPIC_BENCHES)
    row = bench._topic_row({"ours_ms": 30.0, "theirs_ms": 10.0, "ratio": 3.0}, "gelu", "bench_gelu", "ours", "F.gelu")
    assert row == {"name": "gelu.bench_gelu", "ours": "ours", "ours_s": 0.03, "theirs": "F.gelu", "theirs_s": 0.01,
                   "ratio": 3.0, "extra": ""}
    row = bench._topic_row({"ours_ms": 3.0, "theirs_ms": 1.0, "ratio": 3.0, "lora_optim_bytes": 49216,
                            "cached_tok_per_s": 1234.5, "steps": 7}, "lora", "bench_lora_step", "a", "b")
    assert row["extra"] == "lora_optim_bytes 49,216, cached_tok_per_s 1,234"
    row = bench._topic_row({"unfold_ms": 2.0, "conv2d_ms": 1.0, "ratio": 2.0, "name": "conv"}, "cnn", "bench_conv",
                           "a", "b", "unfold_ms", "conv2d_ms")
    assert row["name"] == "conv" and row["ours_s"] == 0.002 and row["theirs_s"] == 0.001


def test_every_topic_bench_entry_names_a_function_that_takes_its_arguments():
    import inspect

    from common import bench
    from common.topics import existing_topics, topic

    built = {t[1] for t in existing_topics()}
    for module, fn, *labels in bench._TOPIC_BENCHES:
        kwargs = labels[-1] if isinstance(labels[-1], dict) else {}
        assert len(labels) - bool(kwargs) in (2, 4), f"{module}.{fn}: two labels (and two keys) expected"
        if module not in built:
            continue
        params = inspect.signature(getattr(topic(module), fn)).parameters
        assert {"device", *kwargs} <= set(params), f"{module}.{fn} does not take {sorted({'device', *kwargs})}"


def test_time_optimizer_step_times_each_optimizer_on_the_same_gradients():
    from common import bench

    seen = []

    def make(params):
        seen.append([p.grad.clone() for p in params])
        return torch.optim.SGD(params, lr=0.1)

    ms = bench.time_optimizer_step(make, [(3, 2), (2,)], repeats=2, warmup=1)
    bench.time_optimizer_step(make, [(3, 2), (2,)], repeats=1)
    assert ms > 0
    assert all(torch.equal(a, b) for a, b in zip(*seen))
    with pytest.raises(ValueError, match="repeats"):
        bench.time_optimizer_step(make, [(3,)], repeats=0)
    with pytest.raises(ValueError, match="at least one"):
        bench.time_optimizer_step(make, [])



def test_time_forward_backward_alternates_sides_on_fresh_copies_of_the_same_inputs():
    from common import bench

    calls = []

    def side(name):
        def fn(x, idx):
            calls.append((name, x.requires_grad, x.grad is None, torch.equal(x.detach(), base)))
            return (x[idx] * 2).sum()
        return fn

    base = torch.arange(4.0)
    ours_ms, theirs_ms = bench.time_forward_backward(side("a"), side("b"), (base, torch.tensor([0, 2])),
                                                     repeats=2, warmup=1)
    assert ours_ms > 0 and theirs_ms > 0
    assert [c[0] for c in calls] == ["a", "b", "b", "a", "a", "b"]  # ABBA order
    assert all(c[1] and c[2] and c[3] for c in calls)  # a fresh leaf copy every pass, input untouched
    with pytest.raises(ValueError, match="repeats"):
        bench.time_forward_backward(side("a"), side("b"), base, repeats=0)
    with pytest.raises(ValueError, match="tuple of tensors"):
        bench.time_forward_backward(side("a"), side("b"), [1.0])


def test_time_forward_backward_without_backward_runs_the_forward_in_inference_mode():
    from common import bench

    seen = []

    def fn(x):
        seen.append((torch.is_inference_mode_enabled(), x.requires_grad))
        return x * 2

    bench.time_forward_backward(fn, fn, torch.ones(3), repeats=2, warmup=0, backward=False)
    assert seen == [(True, False)] * 4

# ----------------------------------------------------------------------------- text tools


def test_words_splits_words_numbers_and_punctuation():
    assert data.words("Don't go, Tom! 3.5 km") == ["don't", "go", ",", "tom", "!", "3.5", "km"]
    assert data.words("Déjà vu.") == ["déjà", "vu", "."]
    assert data.words("Tom", lower=False) == ["Tom"]
    assert data.words("Don\u2019t") == ["don't"]
    assert data.words("J'ai l'heure qu'il faut, aujourd'hui !", lang="fr") == [
        "j'", "ai", "l'", "heure", "qu'", "il", "faut", ",", "aujourd'hui", "!"]
    with pytest.raises(ValueError, match="lang"):
        data.words("a", lang="de")
    with pytest.raises(ValueError, match="string"):
        data.words(["a"])


def test_word_vocab_orders_by_frequency_and_cuts_rare_words():
    sents = [["the", "cat", "sat"], ["the", "dog", "sat"], ["the", "cat", "ran"]]
    v = data.WordVocab(sents, min_count=2)
    assert v.itos == ["<unk>", "the", "cat", "sat"]
    assert v.counts.tolist() == [2, 3, 2, 2]  # <unk> counts the dropped 'dog' and 'ran'
    assert v.encode(["the", "dog"]).tolist() == [1, v.unk_id]
    assert v.decode(torch.tensor([2, 3])) == ["cat", "sat"]
    assert "cat" in v and "dog" not in v and len(v) == 4
    # Ties are broken alphabetically, so ids do not depend on the corpus order.
    assert data.WordVocab(["b", "a"]).itos == data.WordVocab(["a", "b"]).itos == ["<unk>", "a", "b"]
    capped = data.WordVocab(sents, max_size=3, specials=("<pad>", "<unk>"))
    assert capped.itos == ["<pad>", "<unk>", "the"] and capped.unk_id == 1


@pytest.mark.parametrize("kwargs, match", [
    ({"tokens": []}, "non-empty corpus"),
    ({"tokens": "the cat"}, "got a string"),
    ({"tokens": [["a"], 3]}, "type int"),
    ({"tokens": ["a"], "min_count": 0}, "min_count"),
    ({"tokens": ["a"], "specials": ("<pad>",)}, "unknown token"),
    ({"tokens": ["a"], "max_size": 1}, "max_size"),
])
def test_word_vocab_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.WordVocab(**kwargs)


def test_word_vocab_decode_and_encode_bad_input():
    v = data.WordVocab(["a", "b"])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        v.decode([3])
    with pytest.raises(ValueError, match="got a string"):
        v.encode("a b")


def test_fixed_split_is_fixed_by_the_seed_and_partitions_the_items():
    items = list(range(100))
    a = data.fixed_split(items, (0.8, 0.1, 0.1), seed=0)
    assert a == data.fixed_split(items, (0.8, 0.1, 0.1), seed=0)
    assert a != data.fixed_split(items, (0.8, 0.1, 0.1), seed=1)
    assert [len(p) for p in a] == [80, 10, 10] and sorted(sum(a, [])) == items
    t = data.fixed_split(torch.arange(100), (0.8, 0.1, 0.1), seed=0)
    assert [p.tolist() for p in t] == list(a)
    assert isinstance(data.fixed_split(tuple(items), (0.5, 0.5))[0], tuple)


@pytest.mark.parametrize("items, fractions, match", [
    ([1, 2], (0.5, 0.6), "summing to 1"),
    ([1, 2], (1.0,), "summing to 1"),
    ([], (0.5, 0.5), "non-empty"),
    ({1, 2}, (0.5, 0.5), "list, tuple"),
])
def test_fixed_split_bad_input(items, fractions, match):
    with pytest.raises(ValueError, match=match):
        data.fixed_split(items, fractions)
