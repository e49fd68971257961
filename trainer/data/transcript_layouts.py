"""Which utterances a folder of audio files + transcripts holds, in which split: its layout read, no audio.

Accepted layouts of a corpus folder:

1. LibriSpeech: ``<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` and, per chapter folder,
   ``<speaker>-<chapter>.trans.txt`` with lines ``<UTT-ID> <TEXT>``. Speaker = the UTT-ID's first field.
2. ``transcripts.tsv``: tab-separated ``<path>\\t<text>[\\t<speaker>]`` lines, paths relative to the
   folder (or absolute; ``\\`` is read as ``/``); an optional header line names the columns (``path``,
   ``text``, optional ``speaker``, ``split``, in any order).
3. ``trans.txt``: lines ``<UTT-ID> <TEXT>`` with the audio at ``<UTT-ID>.<ext>`` next to it.
   For 2 and 3 without a speaker column, the speaker is the file name's part before the first ``-`` or ``_``.
Audio extensions match in any case (``.WAV``). A folder holding two layouts is refused, naming both: which
one lists the corpus would be a guess.

Splits: subfolders named like LibriSpeech's parts -- ``train``/``training``, ``dev``/``val``/``valid``/
``validation``, ``test``/``testing``, alone or before ``-``, ``_`` or ``.`` (``train-clean-100/``,
``dev-clean/``) -- that hold one of the layouts above; else a ``split`` column of ``transcripts.tsv`` (filled
on every row); else the speakers of the whole folder are shuffled by the seed and split 80/10/10
(speaker-disjoint, at least one speaker per split).

An audio file listed twice (the same utterance id twice, a file pasted twice, one row per split) is refused,
naming both lines. Text files are UTF-8 (a byte-order mark is allowed).
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CorpusLayoutError, CorpusNotFound
from .files import list_folder
from .textfiles import read_lines

__all__ = ["Utterance", "scan_transcripts", "AUDIO_EXTENSIONS", "LAYOUTS", "SPLIT_NAMES"]

AUDIO_EXTENSIONS = (".flac", ".wav", ".ogg", ".opus", ".mp3", ".aiff", ".aif")
LAYOUTS = (
    "LibriSpeech <speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac + <speaker>-<chapter>.trans.txt, "
    "or transcripts.tsv (path<TAB>text[<TAB>speaker]), or trans.txt (UTT-ID TEXT, audio <UTT-ID>.<ext>); "
    "optionally inside train*/, dev*|val*/, test*/ subfolders"
)
# A split folder's name: the word alone or before a separator (testing_notes/, validated/ are not splits).
_SPLIT_FOLDER = re.compile(r"(train|training|dev|val|valid|validation|test|testing)([-_.].*)?", re.IGNORECASE)
_SPLIT_OF_WORD = {"train": "train", "training": "train", "test": "test", "testing": "test"}  # else "val"
SPLIT_NAMES = ("train", "val", "test")
_TSV_COLUMNS = ("path", "text", "speaker", "split")


@dataclass(frozen=True)
class Utterance:
    path: str  # relative to the corpus root; absolute for a transcripts.tsv row naming a file outside it
    text: str
    speaker: str
    split: str | None = None
    where: str = field(default="", compare=False)  # "<transcript file>:<line>", for messages


def _default_speaker(name: str) -> str:
    stem = Path(name).stem
    for sep in ("-", "_"):
        if sep in stem:
            return stem.split(sep, 1)[0]
    return stem


def _layouts(folder: Path) -> dict[str, list[Path]]:
    """The transcript files of each layout found in ``folder``: a stray ``notes/old.trans.txt`` is not a
    LibriSpeech chapter, which sits two folders down and is named after them."""
    found = {}
    chapters = [
        f
        for f in sorted(folder.glob("*/*/*.trans.txt"))
        if f.name == f"{f.parent.parent.name}-{f.parent.name}.trans.txt"
    ]
    if chapters:
        found["LibriSpeech"] = chapters
    for name in ("transcripts.tsv", "trans.txt"):
        if (folder / name).is_file():
            found[name] = [folder / name]
    return found


def _describe(layouts: dict[str, list[Path]], folder: Path) -> str:
    return " and ".join(
        f"LibriSpeech chapters ({len(files)}, e.g. {files[0].relative_to(folder)})"
        if kind == "LibriSpeech"
        else str(files[0].relative_to(folder))
        for kind, files in layouts.items()
    )


def _no_transcripts(folder: Path) -> CorpusLayoutError:
    stray = next((f for p in ("*.trans.txt", "trans.txt", "transcripts.tsv") for f in folder.rglob(p)), None)
    hint = ""
    if stray is not None:
        hint = (
            f"; {str(stray)!r} is not where one of them is read (point the path at the folder that holds it, "
            "or, for LibriSpeech, at the folder two levels above the chapter folders)"
        )
    return CorpusLayoutError(f"{str(folder)!r} has no transcripts; expected one of: {LAYOUTS}{hint}")


def _audio_by_stem(folder: Path) -> dict[str, Path]:
    """The audio file of each name without extension in ``folder``, extensions in any case (``x.WAV``); of
    several (``x.flac`` next to a converted ``x.wav``), the first in AUDIO_EXTENSIONS' order, as before."""
    found = {}
    for entry in list_folder(folder):
        name, ext = os.path.splitext(entry.name)
        if ext.lower() not in AUDIO_EXTENSIONS:
            continue
        rank = (AUDIO_EXTENSIONS.index(ext.lower()), ext != ext.lower())  # then x.wav before x.WAV
        if name not in found or rank < found[name][0]:
            found[name] = (rank, folder / entry.name)
    return {name: path for name, (_, path) in found.items()}


def _find_audio(audio: dict[str, Path], folder: Path, utt_id: str, where: str) -> Path:
    if utt_id not in audio:
        raise CorpusLayoutError(
            f"{where}: utterance {utt_id!r} has no audio: {str(folder / utt_id)}.* is missing "
            f"(extensions {', '.join(AUDIO_EXTENSIONS)}, in any case)"
        )
    return audio[utt_id]


def _id_lines(path: Path):
    for n, line in read_lines(path):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) < 2:
            raise CorpusLayoutError(f"{str(path)}:{n}: expected '<UTT-ID> <TEXT>', got {line!r}")
        yield n, parts[0], parts[1]


def _scan_one(folder: Path, root: Path, layouts: dict[str, list[Path]]) -> list[Utterance]:
    """The utterances of ``folder``, in its one layout (paths relative to ``root``)."""
    if not layouts:
        raise _no_transcripts(folder)
    if len(layouts) > 1:
        raise CorpusLayoutError(
            f"{str(folder)!r} holds two transcript layouts, {_describe(layouts, folder)}: keep one (move or "
            "rename the other's transcript files), as either could be the list of the corpus"
        )
    ((kind, files),) = layouts.items()
    if kind == "transcripts.tsv":
        return _scan_tsv(files[0], root)
    utts = []
    for trans in files:
        audio = _audio_by_stem(trans.parent)
        for n, utt_id, text in _id_lines(trans):
            where = f"{str(trans)}:{n}"
            path = str(_find_audio(audio, trans.parent, utt_id, where).relative_to(root))
            speaker = utt_id.split("-", 1)[0] if kind == "LibriSpeech" else _default_speaker(utt_id)
            utts.append(Utterance(path, text, speaker, where=where))
    return utts


def _is_header(cells: list[str]) -> bool:
    names = [c.strip().lower() for c in cells]
    return names[0] == "path" or sum(c in _TSV_COLUMNS for c in names) >= 2


def _tsv_path(cell: str, tsv: Path, root: Path) -> str:
    """A TSV path cell as ``Utterance.path``. A backslash is a folder separator, as Windows writes it (the
    Speech Commands lists are read the same way); an absolute path inside the root is made relative to it."""
    cell = cell.replace("\\", "/")
    if posixpath.isabs(cell):
        path = Path(posixpath.normpath(cell))
        try:
            return str(path.relative_to(os.path.abspath(root)))
        except ValueError:  # outside the corpus folder: kept absolute
            return str(path)
    return posixpath.normpath(posixpath.join(tsv.parent.relative_to(root).as_posix(), cell))


def _scan_tsv(tsv: Path, root: Path) -> list[Utterance]:
    # QUOTE_NONE: a cell is everything between two tabs, so splitting a line on tabs reads it exactly.
    rows = [(n, line.split("\t")) for n, line in read_lines(tsv) if line.strip()]
    columns = ["path", "text", "speaker"]
    if rows and _is_header(rows[0][1]):
        n, header = rows.pop(0)
        columns = [c.strip().lower() for c in header]
        missing = [c for c in ("path", "text") if c not in columns]
        repeated = sorted({c for c in columns if c and columns.count(c) > 1})
        if missing or repeated:
            problem = f"has no {missing} column" if missing else f"names {repeated} twice"
            raise CorpusLayoutError(
                f"{str(tsv)}:{n}: the header {columns} {problem}; its columns are {list(_TSV_COLUMNS)} "
                "(path and text required, in any order)"
            )
    utts, blank_split = [], []
    for n, row in rows:  # n: the line in the file, for messages that point at it
        if len(row) < 2:
            raise CorpusLayoutError(f"{str(tsv)}:{n}: expected 'path<TAB>text[<TAB>speaker]', got {row!r}")
        rec = dict(zip(columns, (c.strip() for c in row), strict=False))
        if not rec.get("path"):
            raise CorpusLayoutError(f"{str(tsv)}:{n}: the path cell is empty")
        path = _tsv_path(rec["path"], tsv, root)
        if not (root / path).is_file():
            raise CorpusLayoutError(f"{str(tsv)}:{n}: audio file {str(root / path)!r} is missing")
        if not rec.get("text"):
            raise CorpusLayoutError(f"{str(tsv)}:{n}: the text of {rec['path']!r} is empty")
        split = rec.get("split") or None
        if split is not None and split not in SPLIT_NAMES:
            raise CorpusLayoutError(f"{str(tsv)}:{n}: split {split!r} is not one of {list(SPLIT_NAMES)}")
        if "split" in columns and split is None:
            blank_split.append(n)
        speaker = rec.get("speaker") or _default_speaker(path)
        utts.append(Utterance(path, rec["text"], speaker, split, where=f"{str(tsv)}:{n}"))
    if blank_split:
        # A split column is the user's own split: guessing the blank rows (or re-splitting every row by
        # speaker) could move test utterances into training.
        lines = ", ".join(map(str, blank_split[:10])) + (" ..." if len(blank_split) > 10 else "")
        raise CorpusLayoutError(
            f"{str(tsv)!r}: the split column is blank on line(s) {lines}: give every row train, val or test, "
            "or remove the split column to split the speakers 80/10/10"
        )
    return utts


def _split_folders(root: Path) -> tuple[dict[str, list[tuple[Path, dict]]], list[Path]]:
    """The split subfolders of ``root`` with their layouts, and the folders named like one that hold no
    transcripts (a ``test/`` of scratch recordings is not a split; a missing split's message names them)."""
    found, empty = {s: [] for s in SPLIT_NAMES}, []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        word = _SPLIT_FOLDER.fullmatch(d.name)
        if word is None:
            continue
        layouts = _layouts(d)
        if layouts:
            found[_SPLIT_OF_WORD.get(word.group(1).lower(), "val")].append((d, layouts))
        else:
            empty.append(d)
    return found, empty


def scan_transcripts(root: Path, seed: int = 0) -> dict[str, list[Utterance]]:
    """Utterances per split; raises CorpusNotFound / CorpusLayoutError naming the path and the layouts."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CorpusNotFound(f"transcripts folder {str(root)!r} does not exist (layouts: {LAYOUTS})")
    if not any(root.iterdir()):
        raise CorpusLayoutError(f"transcripts folder {str(root)!r} is empty (layouts: {LAYOUTS})")
    folders, empty = _split_folders(root)
    layouts = _layouts(root)
    named = [d.name for ds in folders.values() for d, _ in ds]
    if named and layouts:
        raise CorpusLayoutError(
            f"{str(root)!r} holds split folders {named} and, beside them, {_describe(layouts, root)}: keep "
            "one (move the split folders or those transcripts elsewhere), as either could be the corpus"
        )
    if named:
        missing = [s for s in SPLIT_NAMES if not folders[s]]
        if missing:
            unused = f"; {[d.name for d in empty]} hold no transcripts" if empty else ""
            raise CorpusLayoutError(
                f"{str(root)!r} has split folders {named} but none for {missing} (train*, dev*/val*/valid*, "
                f"test*){unused}"
            )
        splits = {s: [u for d, found in folders[s] for u in _scan_one(d, root, found)] for s in SPLIT_NAMES}
        utts = [u for s in SPLIT_NAMES for u in splits[s]]
    else:
        utts = _scan_one(root, root, layouts)
        if utts and all(u.split for u in utts):  # a split column (filled on every row: _scan_tsv)
            splits = {s: [u for u in utts if u.split == s] for s in SPLIT_NAMES}
        else:
            splits = _split_by_speaker(utts, seed, root)
    _refuse_repeats(utts, splits)
    for s in SPLIT_NAMES:
        if not splits[s]:
            raise CorpusLayoutError(f"{str(root)!r}: the {s} split has no utterances")
    return splits


def _refuse_repeats(utts: list[Utterance], splits: dict[str, list[Utterance]]) -> None:
    """One line per recording (``utts`` in the order they are listed): a second line would count it twice,
    give it two transcripts, or put it in two splits (a test utterance also trained on)."""
    split_of = {id(u): s for s in SPLIT_NAMES for u in splits[s]}
    first = {}
    for u in utts:
        u0 = first.setdefault(u.path, u)
        if u0 is u:
            continue
        s0, s = split_of[id(u0)], split_of[id(u)]
        where = f"in the {s0} split and again in the {s} split" if s0 != s else "twice"
        raise CorpusLayoutError(
            f"{u.where}: audio file {u.path!r} is listed again (first at {u0.where}): one recording "
            f"{where}; remove one of the two lines"
        )


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
    return {s: [u for u in utts if part.get(u.speaker, "train") == s] for s in SPLIT_NAMES}
