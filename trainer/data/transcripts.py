"""A folder of audio files + transcripts, for sequence tasks (CTC): LibriSpeech's layout or a flat one.

Accepted layouts of a corpus folder (audio: any format soundfile reads -- flac, wav, ogg; any rate, resampled
to 16 kHz; stereo averaged):

1. LibriSpeech: ``<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` and, per chapter folder,
   ``<speaker>-<chapter>.trans.txt`` with lines ``<UTT-ID> <TEXT>``. Speaker = the UTT-ID's first field.
2. ``transcripts.tsv``: tab-separated ``<path>\\t<text>[\\t<speaker>]`` lines, paths relative to the
   folder; an optional header line names the columns (``path``, ``text``, optional ``speaker``, ``split``).
3. ``trans.txt``: lines ``<UTT-ID> <TEXT>`` with the audio at ``<UTT-ID>.<ext>`` next to it.
   For 2 and 3 without a speaker column, the speaker is the file name's part before the first ``-`` or ``_``.

Splits: subfolders named like LibriSpeech's parts (``train*`` and ``dev*``/``val*``/``valid*`` and
``test*``, e.g. ``train-clean-100/``, ``dev-clean/``, ``test-clean/``), each in one of the layouts above; else
a ``split`` column of ``transcripts.tsv`` (filled on every row); else the speakers of the whole folder are
shuffled by the seed and split 80/10/10 (speaker-disjoint, at least one speaker per split).

Text files are UTF-8 (a byte-order mark is allowed). A clip shorter than one analysis window (25 ms) is
zero-padded at the end to it; a file with no samples at all is refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .cache import params_hash
from .errors import CorpusLayoutError, CorpusNotFound
from .features import FeatureSpec, LogMel, to_sample_rate
from .precompute import cached_features, compute_features
from .speech_commands import read_audio
from .textfiles import read_lines
from .vocab import character_vocabulary, digit_vocabulary

__all__ = ["Utterance", "scan_transcripts", "load_transcripts"]

AUDIO_EXTENSIONS = (".flac", ".wav", ".ogg", ".opus", ".mp3", ".aiff", ".aif")
LAYOUTS = (
    "LibriSpeech <speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac + <speaker>-<chapter>.trans.txt, "
    "or transcripts.tsv (path<TAB>text[<TAB>speaker]), or trans.txt (UTT-ID TEXT, audio <UTT-ID>.<ext>); "
    "optionally inside train*/, dev*|val*/, test*/ subfolders"
)
_SPLIT_PREFIXES = {"train": ("train",), "val": ("dev", "val", "valid"), "test": ("test",)}
_SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Utterance:
    path: str  # relative to the corpus root
    text: str
    speaker: str
    split: str | None = None


def _default_speaker(name: str) -> str:
    stem = Path(name).stem
    for sep in ("-", "_"):
        if sep in stem:
            return stem.split(sep, 1)[0]
    return stem


def _find_audio(folder: Path, utt_id: str, source: Path) -> Path:
    for ext in AUDIO_EXTENSIONS:
        if (folder / f"{utt_id}{ext}").exists():
            return folder / f"{utt_id}{ext}"
    raise CorpusLayoutError(
        f"{str(source)!r} names utterance {utt_id!r} but {str(folder / utt_id)}.* is missing"
    )


def _id_lines(path: Path):
    for n, line in read_lines(path):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) < 2:
            raise CorpusLayoutError(f"{str(path)}:{n}: expected '<UTT-ID> <TEXT>', got {line!r}")
        yield parts[0], parts[1]


def _scan_one(folder: Path, root: Path) -> list[Utterance]:
    """The utterances of one folder in any accepted layout (paths relative to ``root``)."""
    utts = []
    librispeech = sorted(folder.rglob("*.trans.txt"))
    if librispeech:
        for trans in librispeech:
            for utt_id, text in _id_lines(trans):
                audio = _find_audio(trans.parent, utt_id, trans)
                utts.append(Utterance(str(audio.relative_to(root)), text, utt_id.split("-", 1)[0]))
        return utts
    if (folder / "transcripts.tsv").exists():
        return _scan_tsv(folder / "transcripts.tsv", root)
    if (folder / "trans.txt").exists():
        for utt_id, text in _id_lines(folder / "trans.txt"):
            audio = _find_audio(folder, utt_id, folder / "trans.txt")
            utts.append(Utterance(str(audio.relative_to(root)), text, _default_speaker(utt_id)))
        return utts
    raise CorpusLayoutError(f"{str(folder)!r} has no transcripts; expected one of: {LAYOUTS}")


def _scan_tsv(tsv: Path, root: Path) -> list[Utterance]:
    # QUOTE_NONE: a cell is everything between two tabs, so splitting a line on tabs reads it exactly.
    rows = [(n, line.split("\t")) for n, line in read_lines(tsv) if line.strip()]
    columns = ["path", "text", "speaker"]
    if rows and rows[0][1][0].strip().lower() == "path":
        columns = [c.strip().lower() for c in rows[0][1]]
        rows = rows[1:]
        if "text" not in columns:
            raise CorpusLayoutError(f"{str(tsv)!r}: the header {columns} has no 'text' column")
    utts, blank_split = [], []
    for n, row in rows:  # n: the line in the file, for messages that point at it
        if len(row) < 2:
            raise CorpusLayoutError(f"{str(tsv)}:{n}: expected 'path<TAB>text[<TAB>speaker]', got {row!r}")
        rec = dict(zip(columns, (c.strip() for c in row), strict=False))
        audio = tsv.parent / rec["path"]
        if not audio.is_file():
            raise CorpusLayoutError(f"{str(tsv)}:{n}: audio file {str(audio)!r} is missing")
        split = rec.get("split") or None
        if split is not None and split not in _SPLIT_NAMES:
            raise CorpusLayoutError(f"{str(tsv)}:{n}: split {split!r} is not one of {list(_SPLIT_NAMES)}")
        if "split" in columns and split is None:
            blank_split.append(n)
        speaker = rec.get("speaker") or _default_speaker(rec["path"])
        utts.append(Utterance(str(audio.relative_to(root)), rec.get("text", ""), speaker, split))
    if blank_split:
        # A split column is the user's own split: guessing the blank rows (or re-splitting every row by
        # speaker) could move test utterances into training.
        lines = ", ".join(map(str, blank_split[:10])) + (" ..." if len(blank_split) > 10 else "")
        raise CorpusLayoutError(
            f"{str(tsv)!r}: the split column is blank on line(s) {lines}: give every row train, val or test, "
            "or remove the split column to split the speakers 80/10/10"
        )
    return utts


def _split_folders(root: Path) -> dict[str, list[Path]]:
    found = {s: [] for s in _SPLIT_NAMES}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        for split, prefixes in _SPLIT_PREFIXES.items():
            if d.name.lower().startswith(prefixes):
                found[split].append(d)
    return found


def scan_transcripts(root: Path, seed: int = 0) -> dict[str, list[Utterance]]:
    """Utterances per split; raises CorpusNotFound / CorpusLayoutError naming the path and the layouts."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CorpusNotFound(f"transcripts folder {str(root)!r} does not exist (layouts: {LAYOUTS})")
    if not any(root.iterdir()):
        raise CorpusLayoutError(f"transcripts folder {str(root)!r} is empty (layouts: {LAYOUTS})")
    folders = _split_folders(root)
    if any(folders.values()):
        missing = [s for s in _SPLIT_NAMES if not folders[s]]
        if missing:
            raise CorpusLayoutError(
                f"{str(root)!r} has split folders {[p.name for ps in folders.values() for p in ps]} "
                f"but none for {missing} (train*, dev*/val*/valid*, test*)"
            )
        splits = {s: [u for d in folders[s] for u in _scan_one(d, root)] for s in _SPLIT_NAMES}
    else:
        utts = _scan_one(root, root)
        if utts and all(u.split for u in utts):  # a split column (filled on every row: _scan_tsv)
            splits = {s: [u for u in utts if u.split == s] for s in _SPLIT_NAMES}
        else:
            splits = _split_by_speaker(utts, seed, root)
    for s in _SPLIT_NAMES:
        if not splits[s]:
            raise CorpusLayoutError(f"{str(root)!r}: the {s} split has no utterances")
    for u in (u for us in splits.values() for u in us):
        if not u.text.strip():
            raise CorpusLayoutError(f"{str(root / u.path)!r} has an empty transcript")
    return splits


def _split_by_speaker(utts: list[Utterance], seed: int, root: Path) -> dict[str, list[Utterance]]:
    speakers = sorted({u.speaker for u in utts})
    if len(speakers) < 3:
        raise CorpusLayoutError(
            f"{str(root)!r} has {len(speakers)} speaker(s) {speakers}: a speaker-disjoint train/val/test "
            "split needs at least 3 (or train*/dev*/test* subfolders, or a split column in transcripts.tsv)"
        )
    order = [speakers[i] for i in np.random.default_rng([seed, 11]).permutation(len(speakers))]
    n_val = n_test = max(1, round(0.1 * len(order)))
    part = {sp: "val" for sp in order[:n_val]} | {sp: "test" for sp in order[n_val : n_val + n_test]}
    return {s: [u for u in utts if part.get(u.speaker, "train") == s] for s in _SPLIT_NAMES}


def _waveform(path: Path, min_samples: int) -> np.ndarray:
    """16 kHz samples of ``path``, zero-padded at the end to ``min_samples`` (one analysis window): the
    log-mel's centred frames reflect-pad half a window on each side, which a shorter clip cannot give."""
    wav, rate = read_audio(path)
    if len(wav) == 0:  # nothing to pad: a recording that failed, not a short utterance
        raise CorpusLayoutError(
            f"audio file {str(path)!r} has no samples: replace it, or remove its transcript line"
        )
    wav = to_sample_rate(torch.from_numpy(wav), rate).numpy()
    if len(wav) < min_samples:
        wav = np.pad(wav, (0, min_samples - len(wav)))
    return wav


def load_transcripts(root: Path, *, task: str, seed: int, cache_dir: Path, spec: FeatureSpec):
    """``(features, targets, labels, vocabulary, info)`` per split, features cached by (file list, spec)."""
    splits = scan_transcripts(root, seed)
    root = Path(root).expanduser().resolve()
    if task == "digits":
        vocabulary = digit_vocabulary()
    else:
        vocabulary = character_vocabulary(u.text for us in splits.values() for u in us)
    targets = {}
    for s in _SPLIT_NAMES:
        targets[s] = []
        for u in splits[s]:
            try:
                targets[s].append(vocabulary.encode(u.text))
            except ValueError as e:
                hint = " (task='characters' takes any text)" if task == "digits" else ""
                raise CorpusLayoutError(f"transcript of {str(root / u.path)!r}: {e}{hint}") from None
    fingerprint = []
    for s in _SPLIT_NAMES:
        for u in splits[s]:
            st = (root / u.path).stat()
            fingerprint.append((s, u.path, st.st_size, st.st_mtime_ns))
    folder = Path(cache_dir) / f"transcripts-{params_hash({'root': str(root), 'files': fingerprint})}"
    logmel = LogMel(spec)

    def compute():
        return {
            s: compute_features((_waveform(root / u.path, spec.n_fft) for u in splits[s]), logmel)
            for s in _SPLIT_NAMES
        }

    start = time.perf_counter()
    feats, seconds, hit = cached_features(folder, spec, compute)
    info = dict(
        path=str(root),
        voices={s: sorted({u.speaker for u in splits[s]}) for s in _SPLIT_NAMES},
        cache_path=str(folder),
        cache_hit=hit,  # the features are all a real corpus caches
        feature_cache_hit=hit,
        feature_seconds=seconds,
        load_seconds=round(time.perf_counter() - start, 3),
        seed=seed,
    )
    return feats, targets, vocabulary.labels, vocabulary, info
