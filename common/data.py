"""Datasets: a registry, checksummed resolution (cache -> mirror -> download), loaders and batching.

Every file of every dataset is resolved in order:

1. the cache, ``$DLH_DATA/<dataset>/<file>`` (default ``data/`` in the repository, git-ignored);
2. a mirror, ``$DLH_DATA_MIRROR/<dataset>/<file>`` (a folder laid out like the cache);
3. a download from the file's canonical URL, with a progress bar, retries, a checksum and an
   atomic rename into the cache.

A file whose checksum is wrong is reported and never used. At smoke scale the loaders return
small synthetic stand-ins with the real shapes, dtypes and vocabulary, and touch no file.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import time
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .runtime import REPO_ROOT, scale

# Text tools live in common.text and are re-exported here under the same names.
from .text import CharTokenizer, WordVocab, fixed_split, words  # noqa: F401

# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: its name, canonical URL, md5 and size in bytes.

    ``md5=None`` means the upstream file is re-released under the same URL, so its integrity is
    checked by shape instead (size when known, and every member's CRC for a zip).
    """

    name: str
    url: str
    md5: str | None
    size: int | None = None


@dataclass(frozen=True)
class Dataset:
    """A registered dataset: a name, its files, a license line and a one-line description."""

    name: str
    files: tuple[RemoteFile, ...]
    license: str = ""
    description: str = ""
    extra: dict = field(default_factory=dict)


_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

REGISTRY: dict[str, Dataset] = {}


def register(dataset: Dataset) -> Dataset:
    """Add (or replace) a dataset in the registry and return it."""
    if not isinstance(dataset, Dataset):
        raise ValueError(f"register() expects a Dataset, got {type(dataset).__name__}")
    REGISTRY[dataset.name] = dataset
    return dataset


def _idx_files(base: str, md5s: tuple[str, str, str, str], sizes: tuple) -> tuple[RemoteFile, ...]:
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    return tuple(RemoteFile(n, base + n, m, s) for n, m, s in zip(names, md5s, sizes))


register(Dataset("mnist", _idx_files(
    _MNIST_URL,
    ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
     "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
    (9912422, 28881, 1648877, 4542)),
    "CC BY-SA 3.0 (Y. LeCun, C. Cortes, C. Burges)", "70,000 28x28 handwritten digits"))
register(Dataset("fashion-mnist", _idx_files(
    _FASHION_URL,
    ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
     "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
    (26421880, 29515, 4422102, 5148)),
    "MIT (Zalando SE)", "70,000 28x28 greyscale clothing images"))
register(Dataset("cifar10", (RemoteFile(
    "cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "c58f30108f718f92721af3b95e74349a", 170498071),),
    "see https://www.cs.toronto.edu/~kriz/cifar.html", "60,000 32x32 colour images, 10 classes"))
register(Dataset("tinyshakespeare", (RemoteFile(
    "input.txt",
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    "6fb458f1232090904fb40fe944165e91", 1115394),),
    "public-domain text", "1.1M characters of Shakespeare"))
register(Dataset("names", (RemoteFile(
    "names.txt", "https://raw.githubusercontent.com/karpathy/makemore/master/names.txt",
    "401b3c4cac9e28a586ed15e81256680d", 228145),),
    "MIT", "32,033 first names"))
register(Dataset("tatoeba-fra-eng", (RemoteFile(
    "fra-eng.zip", "https://www.manythings.org/anki/fra-eng.zip", None),),
    "CC BY 2.0 (tatoeba.org)", "English-French sentence pairs",
    extra={"known_md5": ("c49e6073dca8524c9230ee8f68c3cf32",)}))
register(Dataset("text8", (RemoteFile(
    "text8.zip", "http://mattmahoney.net/dc/text8.zip", None, 31344016),),
    "see http://mattmahoney.net/dc/textdata.html", "the first 100M characters of cleaned Wikipedia"))


def get(name: str) -> Dataset:
    """The registered dataset called ``name`` (``ValueError`` listing the known ones otherwise)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


# ----------------------------------------------------------------------------- resolution


class DataError(RuntimeError):
    """A dataset file could not be had: offline with no mirror, or every copy was corrupt."""


class ChecksumError(DataError):
    """A file's content does not match its registered checksum or shape."""


def cache_dir() -> Path:
    """The cache folder: ``$DLH_DATA``, else ``data/`` in the repository."""
    return Path(os.environ.get("DLH_DATA") or REPO_ROOT / "data")


def mirror_dir() -> Path | None:
    """The mirror folder ``$DLH_DATA_MIRROR`` (``None`` when unset)."""
    value = os.environ.get("DLH_DATA_MIRROR")
    return Path(value) if value else None


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    """The hex md5 of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_VERIFIED: dict[tuple[str, int, int], bool] = {}  # (path, size, mtime_ns) -> ok, per process


def verify(path: Path, file: RemoteFile, dataset: Dataset | None = None) -> str | None:
    """Check ``path`` against ``file``'s md5 (or shape); return ``None`` if good, else the reason."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if _VERIFIED.get(key):
        return None
    if file.size is not None and st.st_size != file.size:
        return f"size {st.st_size:,} B, expected {file.size:,} B" + (f" and md5 {file.md5}" if file.md5 else "")
    if file.md5 is not None:
        got = md5sum(path)
        if got != file.md5:
            return f"md5 {got}, expected md5 {file.md5}"
    elif file.name.endswith(".zip"):
        known = (dataset.extra.get("known_md5", ()) if dataset else ())
        if not (known and md5sum(path) in known):
            try:
                with zipfile.ZipFile(path) as zf:
                    bad = zf.testzip()
            except (zipfile.BadZipFile, OSError) as exc:
                return f"not a valid zip ({exc})"
            if bad is not None:
                return f"zip member {bad} fails its CRC check"
    _VERIFIED[key] = True
    return None


def _download(url: str, dest: Path, retries: int = 3, timeout: float = 60.0) -> None:
    """Download ``url`` to ``dest`` atomically (temp file then rename), with retries and a bar."""
    from .progress import progress

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".part{os.getpid()}")
    last: Exception | None = None
    for attempt in range(1, retries + 1):
        try:
            req = urllib.request.Request(url, headers={"User-Agent": "dl-history/0.1"})
            with urllib.request.urlopen(req, timeout=timeout) as resp, open(tmp, "wb") as out:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with progress(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                    while block := resp.read(1 << 16):
                        out.write(block)
                        bar.update(len(block))
            os.replace(tmp, dest)
            return
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            last = exc
            tmp.unlink(missing_ok=True)
            if isinstance(exc, urllib.error.HTTPError) and exc.code in (403, 404, 410):
                break
            if attempt < retries:
                time.sleep(min(2.0 ** attempt, 10.0))
    raise DataError(f"download of {url} failed: {last}") from last


def _offline_message(ds: Dataset, file: RemoteFile, reason: str) -> str:
    return (f"dataset {ds.name!r}: could not get {file.name} ({reason}).\n"
            f"  Source URL: {file.url}\n"
            f"  Either connect to the internet, or place the file at "
            f"$DLH_DATA/{ds.name}/{file.name} (DLH_DATA={cache_dir()}), or point DLH_DATA_MIRROR "
            f"at a folder laid out <dataset>/<file> (DLH_DATA_MIRROR={os.environ.get('DLH_DATA_MIRROR', 'unset')}).")


def fetch(name: str, download: bool = True) -> dict[str, Path]:
    """Resolve every file of dataset ``name`` (cache, mirror, download); return ``{file: path}``.

    A cached or mirrored copy with a wrong checksum is reported (a warning naming the file and
    the expected md5), never used, and fetched again. A download that fails its checksum raises
    :class:`ChecksumError`; no copy at all raises :class:`DataError` naming the dataset, its URL,
    ``DLH_DATA`` and ``DLH_DATA_MIRROR``.
    """
    ds = get(name)
    paths: dict[str, Path] = {}
    for file in ds.files:
        cached = cache_dir() / ds.name / file.name
        if cached.exists():
            reason = verify(cached, file, ds)
            if reason is None:
                paths[file.name] = cached
                continue
            warnings.warn(f"corrupt cached file {cached}: {reason}; not used, fetching it again",
                          stacklevel=2)
            cached.unlink()
        mirror = mirror_dir()
        if mirror is not None and (mirror / ds.name / file.name).exists():
            mirrored = mirror / ds.name / file.name
            reason = verify(mirrored, file, ds)
            if reason is None:
                paths[file.name] = mirrored
                continue
            warnings.warn(f"corrupt mirrored file {mirrored}: {reason}; not used", stacklevel=2)
        if not download:
            raise DataError(_offline_message(ds, file, "not in the cache or the mirror"))
        try:
            _download(file.url, cached)
        except DataError as exc:
            raise DataError(_offline_message(ds, file, str(exc))) from exc
        reason = verify(cached, file, ds)
        if reason is not None:
            cached.unlink(missing_ok=True)
            raise ChecksumError(f"downloaded {file.name} of {ds.name!r} is corrupt: {reason}; "
                                f"removed {cached}")
        paths[file.name] = cached
    return paths


def available(name: str) -> bool:
    """Whether every file of ``name`` is present offline (cache or mirror) and passes its check."""
    try:
        fetch(name, download=False)
        return True
    except DataError:
        return False


def source(name: str) -> str:
    """One line saying where ``name``'s data comes from in this run (synthetic, cache, mirror)."""
    ds = get(name)
    if scale() == "smoke":
        return "synthetic stand-in (smoke scale; no file read)"
    where = set()
    for file in ds.files:
        if (cache_dir() / ds.name / file.name).exists():
            where.add(f"cache {cache_dir() / ds.name}")
        elif mirror_dir() is not None and (mirror_dir() / ds.name / file.name).exists():
            where.add(f"mirror {mirror_dir() / ds.name}")
        else:
            where.add(f"download from {file.url}")
    return "; ".join(sorted(where))


# ----------------------------------------------------------------------------- parsers


def _open_maybe_gzip(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, OSError, zlib.error) as exc:
        raise ChecksumError(f"{path} is corrupt or truncated ({exc}); delete it to fetch again") from exc


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped), the format of MNIST and Fashion-MNIST."""
    path = Path(path)
    raw = _open_maybe_gzip(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ChecksumError(f"{path} is not an IDX file (bad magic number {raw[:4]!r})")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim:]
    if len(body) != expected:
        raise ChecksumError(f"{path}: IDX header promises {dims} ({expected} B) but holds {len(body)} B")
    return np.frombuffer(body, dtype=dtype).reshape(dims).copy()  # writable, native order


def _read_cifar10(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    members = [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)] if split == "train" \
        else ["cifar-10-batches-py/test_batch"]
    xs, ys = [], []
    try:
        with tarfile.open(path, "r:gz") as tar:
            for m in members:
                f = tar.extractfile(m)
                if f is None:
                    raise ChecksumError(f"{path}: member {m} is not a file")
                batch = pickle.load(f, encoding="bytes")  # the official CIFAR format is pickled
                xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
    except (tarfile.TarError, KeyError, EOFError, OSError) as exc:
        raise ChecksumError(f"{path} is corrupt or not the CIFAR-10 python archive ({exc})") from exc
    return np.concatenate(xs), np.concatenate(ys)


# ----------------------------------------------------------------------------- loaders

IMAGE_DATASETS = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
CLASSES = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"],
}


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def load_images(name: str, split: str = "train", synthetic: bool | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of an image dataset: ``x`` uint8 ``(N, C, H, W)``, ``y`` int64 ``(N,)``.

    ``name`` is ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"``; ``split`` is ``"train"`` or
    ``"test"``. With ``synthetic`` (default: at smoke scale) a small learnable stand-in of the
    same shapes is returned instead and no file is read.
    """
    if name not in IMAGE_DATASETS:
        raise ValueError(f"load_images: {name!r} is not an image dataset; expected one of "
                         f"{', '.join(IMAGE_DATASETS)}")
    _check_split(split)
    if synthetic if synthetic is not None else scale() == "smoke":
        return synthetic_images(name, split)
    paths = fetch(name)
    if name == "cifar10":
        x, y = _read_cifar10(paths["cifar-10-python.tar.gz"], split)
    else:
        prefix = "train" if split == "train" else "t10k"
        x = read_idx(paths[f"{prefix}-images-idx3-ubyte.gz"])[:, None]
        y = read_idx(paths[f"{prefix}-labels-idx1-ubyte.gz"]).astype(np.int64)
        if len(x) != len(y):
            raise ChecksumError(f"{name} {split}: {len(x)} images but {len(y)} labels")
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))


def synthetic_images(name: str, split: str = "train", n: int | None = None, seed: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable stand-in for an image dataset: 10 smooth class prototypes, shifted and noised.

    Same shapes and dtypes as :func:`load_images`; ``n`` defaults to 1,024 (train) / 256 (test).
    """
    c, h, w = IMAGE_DATASETS[name]
    n = n or (1024 if split == "train" else 256)
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(10, c, h // 4, w // 4, generator=g)
    protos = torch.nn.functional.interpolate(protos, size=(h, w), mode="bilinear", align_corners=False)
    g.manual_seed(seed + (1 if split == "train" else 2))
    y = torch.randint(0, 10, (n,), generator=g)
    x = protos[y]
    shifts = torch.randint(-1, 2, (2,), generator=g).tolist()
    x = torch.roll(x, shifts=shifts, dims=(2, 3))
    x = (x + 0.15 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return (x * 255).round().to(torch.uint8), y


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] to float32 in [0, 1] (on the same device)."""
    if x.dtype != torch.uint8:
        raise ValueError(f"to_float expects a uint8 tensor, got {x.dtype}")
    return x.float().div_(255.0)


def load_text(name: str = "tinyshakespeare", synthetic: bool | None = None) -> str:
    """The whole text of ``"tinyshakespeare"`` or ``"text8"`` as one string.

    At smoke scale: a short synthetic text over the same alphabet.
    """
    if name not in ("tinyshakespeare", "text8"):
        raise ValueError(f"load_text: {name!r} is not a text dataset; expected 'tinyshakespeare' or 'text8'")
    if synthetic if synthetic is not None else scale() == "smoke":
        return synthetic_text(name)
    paths = fetch(name)
    if name == "text8":
        with zipfile.ZipFile(paths["text8.zip"]) as zf:
            return zf.read("text8").decode("ascii")
    return paths["input.txt"].read_text(encoding="utf-8")


_WORDS = ("the king and queen of my lord thou art not what shall we do to him her love good sir "
          "come now speak first citizen you are all resolved rather die than famish").split()


def synthetic_text(name: str = "tinyshakespeare", n_chars: int = 20000, seed: int = 0) -> str:
    """A deterministic stand-in text: random lines of common words (text8: lower-case words only)."""
    rng = np.random.default_rng(seed)
    if name == "text8":
        words = rng.choice(_WORDS, size=n_chars // 5)
        return " ".join(words)[:n_chars]
    out, total = [], 0
    speakers = ["KING HENRY", "QUEEN", "First Citizen", "ROMEO", "JULIET"]
    while total < n_chars:
        line = " ".join(rng.choice(_WORDS, size=rng.integers(4, 10)))
        block = f"{rng.choice(speakers)}:\n{line.capitalize()}{rng.choice(['.', ',', '!', '?', ';'])}\n\n"
        out.append(block)
        total += len(block)
    return "".join(out)[:n_chars]


def load_names(synthetic: bool | None = None) -> list[str]:
    """The ``names`` dataset as a list of lower-case names (smoke: generated name-like strings)."""
    if synthetic if synthetic is not None else scale() == "smoke":
        rng = np.random.default_rng(0)
        syl = ["an", "na", "el", "la", "mi", "ri", "ja", "son", "ka", "ly", "em", "ma", "o", "a"]
        return ["".join(rng.choice(syl, size=rng.integers(1, 4))) for _ in range(500)]
    text = fetch("names")["names.txt"].read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_pairs(name: str = "tatoeba-fra-eng", synthetic: bool | None = None) -> list[tuple[str, str]]:
    """English-French sentence pairs ``[(english, french), ...]`` from the Tatoeba/Anki file.

    Handles both upstream layouts (two columns, or a third attribution column). At smoke scale a
    small templated parallel corpus stands in.
    """
    if name != "tatoeba-fra-eng":
        raise ValueError(f"load_pairs: unknown pair dataset {name!r}; expected 'tatoeba-fra-eng'")
    if synthetic if synthetic is not None else scale() == "smoke":
        subj = [("i", "je"), ("you", "tu"), ("he", "il"), ("she", "elle")]
        verb = [("am", "suis"), ("see", "vois"), ("like", "aime")]
        obj = [("the cat", "le chat"), ("the dog", "le chien"), ("the house", "la maison")]
        return [(f"{s} {v} {o} .", f"{sf} {vf} {of} .") for s, sf in subj for v, vf in verb
                for o, of in obj] * 8
    path = fetch(name)["fra-eng.zip"]
    with zipfile.ZipFile(path) as zf:
        member = next((n for n in zf.namelist() if n.endswith("fra.txt")), None)
        if member is None:
            raise ChecksumError(f"{path} holds no fra.txt (members: {zf.namelist()})")
        text = io.TextIOWrapper(zf.open(member), encoding="utf-8").read()
    pairs = []
    for line in text.splitlines():
        cols = line.split("\t")
        if len(cols) >= 2:
            pairs.append((cols[0].strip(), cols[1].strip()))
    if not pairs:
        raise ChecksumError(f"{path}: fra.txt has no tab-separated English/French pairs")
    return pairs


# ----------------------------------------------------------------------------- batching


class TensorLoader:
    """Batches of whole tensors kept on the device: no per-item Python, no worker processes.

    ``TensorLoader(x, y, batch_size=128)`` moves ``x`` and ``y`` to ``device`` once and yields
    tuples of index-selected batches, with a fresh permutation each epoch when ``shuffle``.
    ``transform(*batch) -> tuple`` is applied to each batch (e.g. uint8 -> float on the device).
    """

    def __init__(self, *tensors: torch.Tensor, batch_size: int, shuffle: bool = True,
                 drop_last: bool = False, device: torch.device | str | None = None,
                 seed: int = 0, transform=None):
        if not tensors:
            raise ValueError("TensorLoader needs at least one tensor")
        if not all(isinstance(t, torch.Tensor) for t in tensors):
            raise ValueError(f"TensorLoader expects tensors, got {[type(t).__name__ for t in tensors]}")
        n = tensors[0].shape[0] if tensors[0].dim() > 0 else 0
        if any(t.dim() == 0 or t.shape[0] != n for t in tensors):
            raise ValueError(f"all tensors need the same first dimension, got {[tuple(t.shape) for t in tensors]}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if n == 0:
            raise ValueError("TensorLoader got empty tensors")
        self.device = torch.device(device) if device is not None else tensors[0].device
        self.tensors = tuple(t.to(self.device) for t in tensors)
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.transform = transform
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=self.generator).to(self.device)
        else:
            order = torch.arange(self.n, device=self.device)
        self.epoch += 1
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            batch = tuple(t.index_select(0, idx) for t in self.tensors)
            yield self.transform(*batch) if self.transform is not None else batch
