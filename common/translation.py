"""The English-to-French translation task shared by 05-seq2seq, 06-attention and the Transformer.

One task, built once, so that the three topics compare on the same data and the same metric:

- sentence pairs from ``tatoeba-fra-eng`` (:func:`common.data.load_pairs`), tokenised with
  :func:`common.text.words` (French elisions split off), kept when both sides have at most
  ``max_len`` tokens;
- a fixed, seeded split by *English sentence*: every translation of a sentence lands in the same
  part, so no test sentence was seen in training under another translation;
- word vocabularies (:class:`common.text.WordVocab`) built from the training pairs only, with the
  specials ``<pad>`` (id 0), ``<unk>``, ``<bos>`` and ``<eos>``;
- corpus BLEU from ``sacrebleu`` on detokenised, lower-cased text against every reference
  translation the corpus has for that sentence (a variable number of references; the signature
  says ``nrefs:var|case:lc``).

Decoding (greedy, beam) lives with the model that owns it; this module owns the data and the metric.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

from .checks import check_int
from .data import load_pairs
from .text import WordVocab, words

SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
PAD, UNK, BOS, EOS = 0, 1, 2, 3


@dataclass
class Example:
    """One source sentence: its tokens, one target's tokens and every reference translation (raw text)."""

    source: str
    src_tokens: tuple[str, ...]
    tgt_tokens: tuple[str, ...]
    references: tuple[str, ...]


@dataclass
class TranslationTask:
    """Splits of :class:`Example` (``"train"``, ``"val"``, ``"test"``), the two vocabularies and the limit.

    ``train`` holds one example per (English, French) pair; ``val`` and ``test`` one per English
    sentence (its first translation as the target for losses, all of them as BLEU references).
    """

    src_vocab: WordVocab
    tgt_vocab: WordVocab
    max_len: int
    splits: dict[str, list[Example]] = field(default_factory=dict)

    def examples(self, split: str) -> list[Example]:
        """The examples of ``split`` (``ValueError`` naming the splits otherwise)."""
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(self.splits)}")
        return self.splits[split]

    def tensors(self, split: str, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``src`` (N, max_len) and ``tgt`` (N, max_len + 2) int64 id tensors, padded with ``PAD`` (0).

        ``tgt`` rows read ``<bos> w1 ... wn <eos> <pad> ...``; a source row is its tokens then padding.
        Words outside a vocabulary become ``UNK``.
        """
        exs = self.examples(split)
        src = torch.full((len(exs), self.max_len), PAD, dtype=torch.long)
        tgt = torch.full((len(exs), self.max_len + 2), PAD, dtype=torch.long)
        for i, ex in enumerate(exs):
            s = self.src_vocab.encode(ex.src_tokens)
            t = self.tgt_vocab.encode(ex.tgt_tokens)
            src[i, :len(s)] = s
            tgt[i, 0] = BOS
            tgt[i, 1:len(t) + 1] = t
            tgt[i, len(t) + 1] = EOS
        return (src.to(device), tgt.to(device)) if device is not None else (src, tgt)

    def decode(self, ids) -> list[str]:
        """Target ids to tokens: a leading ``<bos>`` dropped, stopping at the first ``<eos>`` or ``<pad>``."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if ids and ids[0] == BOS:
            ids = ids[1:]
        out = []
        for i in ids:
            if i in (EOS, PAD):
                break
            out.append(i)
        return self.tgt_vocab.decode(out)

    def bleu(self, hypotheses: list[str], split: str = "test") -> BleuScore:
        """Corpus BLEU of detokenised ``hypotheses`` (one per example of ``split``) against its references."""
        return bleu(hypotheses, [ex.references for ex in self.examples(split)])

    def summary(self) -> str:
        """One line per split and vocabulary: sizes and the share of unknown tokens."""
        lines = [f"pairs with <= {self.max_len} tokens a side; vocabularies: English {len(self.src_vocab):,}, "
                 f"French {len(self.tgt_vocab):,} words (specials included)"]
        for name, exs in self.splits.items():
            n_src = sum(len(e.src_tokens) for e in exs)
            unk = sum(t not in self.src_vocab for e in exs for t in e.src_tokens)
            refs = sum(len(e.references) for e in exs)
            lines.append(f"  {name:5s}: {len(exs):6,} examples, {refs:6,} reference translations, "
                         f"unknown English tokens {100 * unk / max(n_src, 1):.2f}%")
        return "\n".join(lines)


_NO_SPACE_BEFORE = re.compile(r" ([.,)])")
_NO_SPACE_AFTER = re.compile(r"([(]|\b(?:[cdjlmnst]|qu|jusqu|lorsqu|puisqu|quoiqu)') ", re.IGNORECASE)
_HYPHEN = re.compile(r"(?<=\w) - (?=\w)")


def detokenize(tokens) -> str:
    """Tokens back to text: spaces joined, none before ``. , )``, after ``(`` and French elisions, nor around
    a hyphen between two words (``veux - tu`` -> ``veux-tu``).

    French keeps its space before ``? ! : ;``. BLEU's 13a tokeniser splits punctuation again but keeps
    hyphenated and elided words whole, so this matters for the score.
    """
    text = _HYPHEN.sub("-", " ".join(tokens))
    return _NO_SPACE_AFTER.sub(r"\1", _NO_SPACE_BEFORE.sub(r"\1", text))


@dataclass
class BleuScore:
    """A corpus BLEU score (0-100), sacrebleu's signature string and its one-line report."""

    score: float
    signature: str
    report: str


def bleu(hypotheses: list[str], references: list) -> BleuScore:
    """Corpus BLEU with ``sacrebleu``: its 13a tokenisation and default (exponential) smoothing, lower-cased.

    ``references[i]`` is a string or a list of reference strings for ``hypotheses[i]``; the number of
    references may vary between sentences. Typographic apostrophes in them are read as ``'``. Raises ``ValueError`` when the lengths differ or nothing is given.
    """
    from sacrebleu.metrics import BLEU

    if isinstance(hypotheses, str) or not isinstance(hypotheses, (list, tuple)):
        raise ValueError(f"bleu expects a list of hypothesis strings, got {type(hypotheses).__name__}")
    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError(f"bleu needs one reference entry per hypothesis and at least one pair, got "
                         f"{len(hypotheses)} hypotheses and {len(references)} reference entries")
    # Typographic apostrophes as ASCII ones, as words() reads them: a model cannot choose between the two.
    refs = [[x.replace("\u2019", "'") for x in ([r] if isinstance(r, str) else r)] for r in references]
    if any(not r for r in refs):
        raise ValueError("every hypothesis needs at least one reference")
    n = max(len(r) for r in refs)
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(n)]
    metric = BLEU(lowercase=True)
    result = metric.corpus_score(list(hypotheses), streams)
    return BleuScore(float(result.score), str(metric.get_signature()), str(result))


def load_translation(max_len: int = 10, min_count: int = 2, val_size: int = 1000, test_size: int = 1000,
                     max_train: int | None = None, seed: int = 0, synthetic: bool | None = None
                     ) -> TranslationTask:
    """Build the English-to-French task (see the module docstring).

    ``val_size`` and ``test_size`` count English sentences; ``max_train`` caps the training pairs (a
    seeded sample). At smoke scale (or ``synthetic=True``) the small templated corpus of
    :func:`common.data.load_pairs` stands in; then the sizes must fit it.
    """
    check_int("max_len", max_len, low=1)
    check_int("min_count", min_count, low=1)
    check_int("val_size", val_size, low=1)
    check_int("test_size", test_size, low=1)
    if max_train is not None:
        check_int("max_train", max_train, low=1)
    groups: dict[str, list[tuple[tuple[str, ...], str]]] = defaultdict(list)
    src_tokens: dict[str, tuple[str, ...]] = {}
    for en, fr in load_pairs(synthetic=synthetic):
        s, t = tuple(words(en)), tuple(words(fr, lang="fr"))
        if 0 < len(s) <= max_len and 0 < len(t) <= max_len:
            groups[en].append((t, fr))
            src_tokens[en] = s
    sources = sorted(groups)  # a fixed order before the seeded shuffle
    n = len(sources)
    if val_size + test_size >= n:
        raise ValueError(f"only {n} English sentences have <= {max_len} tokens a side; val_size + test_size "
                         f"= {val_size + test_size} must leave some for training")
    order = np.random.default_rng(seed).permutation(n)  # the same seeded generator as common.text.fixed_split
    test_src = [sources[i] for i in order[:test_size]]
    val_src = [sources[i] for i in order[test_size:test_size + val_size]]
    train_src = [sources[i] for i in order[test_size + val_size:]]
    train = [Example(en, src_tokens[en], t, (fr,)) for en in train_src for t, fr in groups[en]]
    if max_train is not None and max_train < len(train):
        keep = np.sort(np.random.default_rng(seed).choice(len(train), size=max_train, replace=False))
        train = [train[i] for i in keep]

    def held_out(srcs):
        return [Example(en, src_tokens[en], groups[en][0][0], tuple(fr for _, fr in groups[en])) for en in srcs]

    src_vocab = WordVocab([ex.src_tokens for ex in train], min_count=min_count, specials=SPECIALS)
    tgt_vocab = WordVocab([ex.tgt_tokens for ex in train], min_count=min_count, specials=SPECIALS)
    return TranslationTask(src_vocab, tgt_vocab, max_len,
                           {"train": train, "val": held_out(val_src), "test": held_out(test_src)})
