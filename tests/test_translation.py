"""The shared English-to-French task (common.translation), on the small synthetic corpus."""

import pytest
import torch

from common import translation as tr


@pytest.fixture(scope="module")
def task():
    return tr.load_translation(max_len=8, min_count=1, val_size=4, test_size=6, seed=0, synthetic=True)


def test_split_is_by_source_sentence_and_fixed_by_the_seed(task):
    parts = {k: {ex.source for ex in task.examples(k)} for k in ("train", "val", "test")}
    assert not (parts["train"] & parts["val"]) and not (parts["train"] & parts["test"])
    assert not (parts["val"] & parts["test"])
    assert len(task.examples("val")) == 4 and len(task.examples("test")) == 6
    again = tr.load_translation(max_len=8, min_count=1, val_size=4, test_size=6, seed=0, synthetic=True)
    assert [ex.source for ex in again.examples("test")] == [ex.source for ex in task.examples("test")]
    other = tr.load_translation(max_len=8, min_count=1, val_size=4, test_size=6, seed=1, synthetic=True)
    assert [ex.source for ex in other.examples("test")] != [ex.source for ex in task.examples("test")]


def test_held_out_examples_carry_every_reference_of_their_sentence(task):
    # The synthetic corpus repeats each pair 8 times: 8 references, all the same translation.
    ex = task.examples("test")[0]
    assert len(ex.references) == 8 and set(ex.references) == {ex.references[0]}
    assert tr.bleu([tr.detokenize(ex.tgt_tokens)], [ex.references[0]]).score == pytest.approx(100.0)


def test_vocabularies_come_from_training_pairs_with_the_specials_first(task):
    assert task.src_vocab.itos[:4] == list(tr.SPECIALS) and task.tgt_vocab.itos[:4] == list(tr.SPECIALS)
    train_words = {w for ex in task.examples("train") for w in ex.tgt_tokens}
    assert set(task.tgt_vocab.itos[4:]) == train_words


def test_tensors_pad_and_frame_the_targets(task):
    src, tgt = task.tensors("test")
    assert src.shape == (6, 8) and tgt.shape == (6, 10) and src.dtype == tgt.dtype == torch.long
    ex = task.examples("test")[0]
    n = len(ex.tgt_tokens)
    assert tgt[0, 0] == tr.BOS and tgt[0, n + 1] == tr.EOS and (tgt[0, n + 2:] == tr.PAD).all()
    assert task.decode(tgt[0]) == list(ex.tgt_tokens)
    assert task.src_vocab.decode(src[0, :len(ex.src_tokens)]) == list(ex.src_tokens)
    assert (src[0, len(ex.src_tokens):] == tr.PAD).all()


def test_decode_stops_at_eos_or_pad(task):
    w = task.tgt_vocab.stoi[task.examples("train")[0].tgt_tokens[0]]
    assert task.decode([tr.BOS, w, tr.EOS, w]) == [task.tgt_vocab.itos[w]]
    assert task.decode(torch.tensor([w, tr.PAD, w])) == [task.tgt_vocab.itos[w]]


def test_detokenize_undoes_the_tokeniser_for_french():
    assert tr.detokenize(["je", "vois", "l'", "homme", ",", "non", "?"]) == "je vois l'homme, non ?"
    assert tr.detokenize(["que", "veux", "-", "tu", "?"]) == "que veux-tu ?"
    assert tr.detokenize(["jusqu'", "à", "kyoto", "."]) == "jusqu'à kyoto."


def test_bleu_perfect_partial_and_variable_references(task):
    hyps = [tr.detokenize(ex.tgt_tokens) for ex in task.examples("test")]
    best = task.bleu(hyps)
    assert best.score == pytest.approx(100.0) and "case:lc" in best.signature
    varied = tr.bleu(["the cat sat on the mat", "a dog"], [["The cat sat on a mat.", "A cat is on the mat"], "A dog."])
    assert 0 < varied.score < 100 and "nrefs:var" in varied.signature
    # A typographic apostrophe in a reference matches an ASCII one in the hypothesis.
    assert tr.bleu(["c'est le printemps ."], ["C\u2019est le printemps."]).score == pytest.approx(100.0)


@pytest.mark.parametrize("hyps, refs, match", [
    (["a"], [], "one reference entry per hypothesis"),
    ([], [], "at least one pair"),
    ("a b", ["a b"], "list of hypothesis strings"),
    (["a"], [[]], "at least one reference"),
])
def test_bleu_bad_input(hyps, refs, match):
    with pytest.raises(ValueError, match=match):
        tr.bleu(hyps, refs)


@pytest.mark.parametrize("kwargs, match", [
    ({"max_len": 0}, "max_len"),
    ({"val_size": 20, "test_size": 20}, "must leave some for training"),
    ({"max_train": 0}, "max_train"),
])
def test_load_translation_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tr.load_translation(synthetic=True, **kwargs)


def test_unknown_split_and_max_train(task):
    with pytest.raises(ValueError, match="unknown split"):
        task.examples("dev")
    capped = tr.load_translation(max_len=8, min_count=1, val_size=4, test_size=6, max_train=10, synthetic=True)
    assert len(capped.examples("train")) == 10
    assert "train" in task.summary() and "vocabularies" in task.summary()


def test_unknown_token_policy_must_name_a_special():
    from common.text import WordVocab

    vocab = WordVocab([["le", "chat"]], min_count=1, specials=tr.SPECIALS)
    assert vocab.encode(["le", "chien"]).tolist() == [vocab.stoi["le"], tr.UNK]  # unseen word -> <unk>
    with pytest.raises(ValueError, match="unknown token '<oov>' must be one of the specials"):
        WordVocab([["le"]], min_count=1, specials=tr.SPECIALS, unk="<oov>")
