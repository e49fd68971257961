"""CTC vocabularies: token ids <-> text, with the blank at index 0.

- ``digits``: tokens are the ten digit words; text is the digit string ("314"). The character error rate over
  the digit string is the token error rate, and each digit is also a word, so CER = WER for this vocabulary.
  ``encode`` accepts "314", "3 1 4" and "three one four" (any case; "oh" is zero), as found in transcripts.
- ``characters``: tokens are the characters of the transcripts (lower-cased, then Unicode NFC), " " separating
  words. NFC: an "é" typed as one code point (U+00E9) or as "e" + a combining accent (U+0301, as macOS and
  some editors write it) is one letter to a listener, so it is one token; both spellings give the same ids.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence

import torch

__all__ = ["BLANK", "Vocabulary", "digit_vocabulary", "character_vocabulary", "ctc_min_frames"]

BLANK = "<blank>"
_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_WORD_TO_DIGIT = {w: str(i) for i, w in enumerate(_DIGIT_WORDS)} | {"oh": "0", "o": "0"}


class Vocabulary:
    """``labels[0]`` is the CTC blank; ``encode(text)`` -> LongTensor of ids >= 1; ``decode(ids)`` -> text."""

    def __init__(self, kind: str, labels: Sequence[str]):
        if kind not in ("digits", "characters"):
            raise ValueError(f"vocabulary kind {kind!r} is not 'digits' or 'characters'")
        if not labels or labels[0] != BLANK:
            raise ValueError(f"labels must start with the blank {BLANK!r}")
        self.kind = kind
        self.labels = list(labels)
        # digits decode to their digit character; characters to themselves
        self._symbols = [""] + ([str(i) for i in range(10)] if kind == "digits" else self.labels[1:])
        self._ids = {s: i for i, s in enumerate(self._symbols) if i > 0}

    def __len__(self) -> int:
        return len(self.labels)

    def normalize(self, text: str) -> str:
        """The text the ids stand for ("three one four" -> "314"; "Hello  World" -> "hello world", in NFC)."""
        if self.kind == "digits":
            out = []
            for word in text.lower().replace(",", " ").split():
                if word.isdigit():
                    out.append(word)
                elif word in _WORD_TO_DIGIT:
                    out.append(_WORD_TO_DIGIT[word])
                else:
                    raise ValueError(
                        f"{word!r} in {text!r} is not a digit or a digit word (zero ... nine, oh)"
                    )
            return "".join(out)
        return _characters(text)

    def encode(self, text: str) -> torch.Tensor:
        norm = self.normalize(text)
        try:
            return torch.tensor([self._ids[c] for c in norm], dtype=torch.long)
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} of {text!r} is not in the vocabulary") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Ids (no blanks expected, blanks are skipped) -> text; see ``ctc_greedy`` for raw model outputs."""
        return "".join(self._symbols[int(i)] for i in ids if int(i) != 0)

    def ctc_greedy(self, ids: Iterable[int]) -> list[int]:
        """Best-path decoding of per-frame argmax ids: merge repeats, then drop blanks."""
        out, prev = [], None
        for i in (int(j) for j in ids):
            if i != prev and i != 0:
                out.append(i)
            prev = i
        return out


def digit_vocabulary() -> Vocabulary:
    return Vocabulary("digits", [BLANK, *_DIGIT_WORDS])


def character_vocabulary(texts: Iterable[str]) -> Vocabulary:
    """The sorted characters of ``texts`` (lower-cased, NFC, whitespace collapsed to one space)."""
    chars = sorted({c for t in texts for c in _characters(t)})
    if not chars:
        raise ValueError("no characters: every transcript is empty")
    return Vocabulary("characters", [BLANK, *chars])


def ctc_min_frames(ids: Sequence[int] | torch.Tensor) -> int:
    """The fewest frames CTC can align the label ids ``ids`` to: one per label, plus a blank between two
    equal neighbours (without it the two would merge into one)."""
    ids = torch.as_tensor(ids)
    return len(ids) + int((ids[1:] == ids[:-1]).sum())


def _characters(text: str) -> str:
    # Lower-case first: NFC then composes what lower() left decomposed (an NFD "E" + U+0301 -> "é").
    return " ".join(unicodedata.normalize("NFC", text.lower()).split())
