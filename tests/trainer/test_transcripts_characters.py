"""The characters vocabulary reads text in Unicode NFC: a letter typed precomposed or as a base letter plus a
combining accent is one token, and both spellings give the same target ids."""

import unicodedata

import numpy as np
import soundfile

from trainer.data import load_task
from trainer.data.transcripts import scan_transcripts
from trainer.data.vocab import character_vocabulary

WORDS = ("café", "crème", "naïve", "Ångström", "über")


def nfc(text):
    return unicodedata.normalize("NFC", text)


def nfd(text):
    return unicodedata.normalize("NFD", text)


def test_nfc_and_nfd_spellings_are_one_token_and_the_same_ids():
    texts = [nfc(w) for w in WORDS] + [nfd(w) for w in WORDS]
    assert nfc(WORDS[0]) != nfd(WORDS[0])  # two spellings of one word
    vocab = character_vocabulary(texts)
    expected = sorted(set("".join(nfc(w).lower() for w in WORDS)))
    assert vocab.labels[1:] == expected  # no combining accent (U+0301...) of its own
    for word in WORDS:
        assert vocab.encode(nfd(word)).tolist() == vocab.encode(nfc(word)).tolist()
        assert vocab.decode(vocab.encode(nfd(word))) == nfc(word).lower()


def test_a_corpus_mixing_both_spellings_gives_identical_targets(tmp_path):
    lines = []
    for k, speaker in enumerate(("anna", "bob", "carl", "dora", "emil", "fred")):
        soundfile.write(tmp_path / f"{speaker}-0.wav", np.zeros(4800, np.float32) + 0.01 * k, 16000)
        spell = nfd if k % 2 else nfc  # the same sentence, in NFD on every other line
        lines.append(f"{speaker}-0 {spell('Café crème')}")
    (tmp_path / "trans.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    splits = load_task("characters", "transcripts", tmp_path, cache_dir=tmp_path / "cache")
    assert splits.labels[1:] == sorted(set("café crème"))
    targets = {tuple(y.tolist()) for part in (splits.train, splits.val, splits.test) for _, y in part}
    assert targets == {tuple(splits.labels.index(c) for c in "café crème")}
    assert {u.text for us in scan_transcripts(tmp_path).values() for u in us} == {
        nfc("Café crème"), nfd("Café crème")
    }  # fmt: skip  # (the transcripts themselves are read as written)
