"""Speech data for the trainer: built-in eSpeak NG corpora, Speech Commands, transcribed folders -> log-mels.

API (the trainer uses only this)::

    from trainer.data import load_task, TASKS, SOURCES
    splits = load_task(
        task="keywords",            # "keywords" | "digits" | "characters"  (see TASKS)
        source="builtin",           # "builtin" | "speech_commands" | "transcripts"
        path=None,                  # corpus folder for speech_commands / transcripts
        size="small",               # builtin only: "tiny" | "small" | "full" | int (reps per speaker), below
        seed=0,                     # corpus generation, speaker split, silence/unknown sampling
        cache_dir=None,             # default $GRADWATCH_CACHE/corpora or ~/.cache/gradwatch/corpora
        n_mels=None,                # default 32 (keywords) / 40 (sequence tasks)
        frames=32,                  # keywords: frames per 1 s clip (32 x 32 inputs for the seed CNN)
        specaugment=False,          # frequency + time masks on the train split only, new masks each epoch
        classes=10,                 # speech_commands: 10 | 12 (+ _silence_, _unknown_) | 30 (v0.01) | 35
        before_features=None,       # check(record): called before any feature is computed, see load_task
    )
    splits.train / splits.val / splits.test   # torch Datasets
    splits.kind         # "classification" (keywords) or "sequence" (digits, characters)
    splits.labels       # class names, or the CTC vocabulary with labels[0] == "<blank>"
    splits.num_classes  # len(labels): model output size (includes the blank for CTC)
    splits.n_mels       # input mel bands
    splits.collate      # collate_fn for DataLoader (see below)
    splits.vocabulary   # sequence tasks: Vocabulary with encode(text), decode(ids), ctc_greedy(frame_ids)
    splits.info         # counts and voices per split, cache_path, cache_hit, feature_cache_hit,
                        # feature_seconds, generation_seconds (built-in corpora only), ...

Items and batches:
- classification: item ``(x[1, n_mels, frames] float32, y int)``; batch ``(x[B, 1, n_mels, frames], y[B])``.
- sequence: item ``(x[1, n_mels, T] float32, y LongTensor[L], ids >= 1)``; batch
  ``(x[B, 1, n_mels, T_max], y[B, L_max] padded with 0, x_lens[B], y_lens[B])`` (10 ms frames).
  For digits, ``vocabulary.decode(ids)`` gives the digit string ("314"): CER over it = token error rate
  (= WER, each digit being a word). For characters, CER over the text, WER over its space-separated words.

Built-in sizes (speakers split 84/10/10, voice-disjoint): keywords tiny 60 clips, small 4,160 (3,360 train),
full 10,400; digits tiny 24 strings, small 6,240 (5,040 train), full 15,600. Keyword log-mels: 640-sample
window, hop 516, 32 frames per 1 s clip; sequence log-mels: 25 ms window, 10 ms hop, 40 mels by default.

Log-mels are normalised per utterance (mean 0, std 1). Errors: ValueError naming a bad option and the accepted
values; ``CorpusNotFound`` (a FileNotFoundError) and ``CorpusLayoutError`` (a ValueError) for corpus folders;
what a loader skips or changes rather than refuses is a ``CorpusWarning`` (a UserWarning), all in ``.errors``.
See docs/data.md for corpus generation, voices, splits, layouts and figures.
"""

from .datasets import KeywordDataset, SequenceDataset, collate_keywords, collate_sequences
from .errors import CorpusLayoutError, CorpusNotFound, CorpusWarning, DataError
from .features import FeatureSpec, LogMel, SpecAugment, keyword_features, sequence_features
from .synth_corpus import DIGIT_WORDS, KEYWORDS
from .tasks import SOURCES, TASKS, Splits, load_task
from .vocab import Vocabulary

__all__ = [
    "load_task",
    "Splits",
    "TASKS",
    "SOURCES",
    "KEYWORDS",
    "DIGIT_WORDS",
    "Vocabulary",
    "FeatureSpec",
    "LogMel",
    "SpecAugment",
    "keyword_features",
    "sequence_features",
    "KeywordDataset",
    "SequenceDataset",
    "collate_keywords",
    "collate_sequences",
    "DataError",
    "CorpusNotFound",
    "CorpusLayoutError",
    "CorpusWarning",
]
