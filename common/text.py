"""Text tools shared by the sequence topics: tokenizers, vocabularies and fixed seeded splits.

Re-exported by :mod:`common.data`, so ``common.data.WordVocab`` and ``common.text.WordVocab`` are
the same class. Built once here and reused from section 03 (RNNs, word2vec, seq2seq) onwards.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from .checks import check_int

# Lower-case words with an optional apostrophe part (don't, king's), numbers, or single punctuation marks.
_WORD_RE = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*|\d+(?:[.,]\d+)*|[^\w\s]")


# French elided words (l', d', j', qu', ...) become tokens of their own when followed by a letter.
_ELISION_RE = re.compile(r"(?:[cdjlmnst]|qu|jusqu|lorsqu|puisqu|quoiqu)'(?=[^\W\d_])|" + _WORD_RE.pattern,
                         re.IGNORECASE)


def words(text: str, lower: bool = True, lang: str = "en") -> list[str]:
    """Split ``text`` into word tokens: words (keeping inner apostrophes), numbers and punctuation marks.

    ``words("Don't go, Tom!") == ["don't", "go", ",", "tom", "!"]``. Letters of any script count as
    word characters (``"déjà"`` stays one token) and a typographic apostrophe counts as ``'``. With
    ``lang="fr"`` elided articles and pronouns are split off: ``words("J'ai l'heure", lang="fr") ==
    ["j'", "ai", "l'", "heure"]``.
    """
    if not isinstance(text, str):
        raise ValueError(f"words expects a string, got {type(text).__name__}")
    if lang not in ("en", "fr"):
        raise ValueError(f"words: lang must be 'en' or 'fr', got {lang!r}")
    text = text.replace("\u2019", "'")
    pattern = _ELISION_RE if lang == "fr" else _WORD_RE
    return pattern.findall(text.lower() if lower else text)


class WordVocab:
    """A word vocabulary: ids by descending frequency, a count cut-off, an unknown token.

    ``WordVocab(tokens, min_count=2, max_size=None, specials=("<unk>",))`` takes a flat list of
    tokens or a list of token lists (sentences). The specials come first (ids 0, 1, ...), then every
    word seen at least ``min_count`` times, most frequent first (ties alphabetically, so the ids are
    deterministic), cut at ``max_size`` entries in all. Words outside the vocabulary encode to the
    unknown token, which must be one of the specials (``unk="<unk>"``).

    Attributes: ``itos`` (id -> word), ``stoi`` (word -> id), ``counts`` (int64 tensor aligned with
    the ids; specials count 0, except the unknown token, which counts the dropped words' tokens),
    ``unk_id``.
    """

    def __init__(self, tokens: Iterable, min_count: int = 1, max_size: int | None = None,
                 specials: Sequence[str] = ("<unk>",), unk: str = "<unk>"):
        check_int("min_count", min_count, low=1)
        specials = tuple(specials)
        if unk not in specials:
            raise ValueError(f"the unknown token {unk!r} must be one of the specials {specials}")
        if len(set(specials)) != len(specials):
            raise ValueError(f"specials must be distinct, got {specials}")
        if max_size is not None:
            check_int("max_size", max_size, low=len(specials) + 1)
        counter = Counter(_flatten(tokens))
        if not counter:
            raise ValueError("WordVocab needs a non-empty corpus: got no tokens")
        ranked = sorted(((w, c) for w, c in counter.items() if c >= min_count and w not in specials),
                        key=lambda wc: (-wc[1], wc[0]))
        if max_size is not None:
            ranked = ranked[:max_size - len(specials)]
        self.itos: list[str] = list(specials) + [w for w, _ in ranked]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        self.unk_id: int = self.stoi[unk]
        counts = [0] * len(specials) + [c for _, c in ranked]
        counts[self.unk_id] = sum(counter.values()) - sum(c for _, c in ranked) - sum(
            counter.get(s, 0) for s in specials if s != unk)
        self.counts = torch.tensor(counts, dtype=torch.long)
        self.min_count, self.specials = min_count, specials

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    def encode(self, tokens: Sequence[str]) -> torch.Tensor:
        """A list of tokens to an int64 tensor of ids (unknown words map to ``unk_id``)."""
        if isinstance(tokens, str):
            raise ValueError("encode expects a list of tokens, got a string; split it with words() first")
        return torch.tensor([self.stoi.get(t, self.unk_id) for t in tokens], dtype=torch.long)

    def decode(self, ids) -> list[str]:
        """Ids (tensor or list of ints) back to a list of tokens."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        bad = [i for i in ids if not (isinstance(i, int) and 0 <= i < len(self))]
        if bad:
            raise ValueError(f"ids {bad[:5]} outside the vocabulary [0, {len(self)})")
        return [self.itos[i] for i in ids]


def _flatten(tokens: Iterable) -> list[str]:
    """A flat token list from a list of tokens or a list of token lists; anything else is refused."""
    if isinstance(tokens, str):
        raise ValueError("WordVocab expects a list of tokens (or of token lists), got a string; use words() first")
    flat: list[str] = []
    for t in tokens:
        if isinstance(t, str):
            flat.append(t)
        elif isinstance(t, (list, tuple)) and all(isinstance(w, str) for w in t):
            flat.extend(t)
        else:
            raise ValueError(f"WordVocab expects strings or lists of strings, got an item of type {type(t).__name__}")
    return flat


def fixed_split(items, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> tuple:
    """A fixed, seeded train/validation/test split of ``items`` (list, tuple, tensor or array).

    Shuffles the indices with ``numpy.random.default_rng(seed)`` (a generator whose stream NumPy keeps
    stable across versions), then cuts them by ``fractions`` (which must sum to 1; any number of
    parts). Returns one part per fraction, of the same type as ``items``; the same seed always gives
    the same parts.
    """
    fr = [float(f) for f in fractions]
    if len(fr) < 2 or any(f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be >= 2 non-negative numbers summing to 1, got {tuple(fractions)}")
    check_int("seed", seed, low=0)
    n = len(items)
    if n == 0:
        raise ValueError("fixed_split needs a non-empty sequence")
    order = np.random.default_rng(seed).permutation(n)
    cuts = np.round(np.cumsum(fr)[:-1] * n).astype(int)
    parts = np.split(order, cuts)
    if isinstance(items, torch.Tensor):
        return tuple(items[torch.from_numpy(p).to(items.device)] for p in parts)
    if isinstance(items, np.ndarray):
        return tuple(items[p] for p in parts)
    if isinstance(items, (list, tuple)):
        return tuple(type(items)(items[i] for i in p) for p in parts)
    raise ValueError(f"fixed_split expects a list, tuple, tensor or array, got {type(items).__name__}")


class CharTokenizer:
    """A character-level tokenizer: every distinct character of a text is one token id."""

    def __init__(self, text: str):
        if not isinstance(text, str) or not text:
            raise ValueError("CharTokenizer needs a non-empty string to take its characters from")
        self.chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters."""
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """A string to an int64 tensor of ids; unknown characters raise ``ValueError``."""
        try:
            return torch.tensor([self.stoi[c] for c in text], dtype=torch.long)
        except KeyError as exc:
            raise ValueError(f"character {exc.args[0]!r} is not in the vocabulary "
                             f"({self.vocab_size} characters)") from None

    def decode(self, ids) -> str:
        """Ids (tensor or list of ints) back to a string."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids {bad[:5]} outside the vocabulary [0, {self.vocab_size})")
        return "".join(self.chars[i] for i in ids)
