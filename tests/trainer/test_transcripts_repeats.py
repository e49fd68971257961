"""A transcripts folder listing one recording twice is refused, naming both lines (file:line)."""

import re

import numpy as np
import pytest
import soundfile

from trainer.data import CorpusLayoutError
from trainer.data.transcripts import scan_transcripts

SPEAKERS = ("anna", "bob", "carl", "dora", "emil")


def write_clip(path, seed=0, seconds=0.3, rate=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.random.default_rng(seed).uniform(-0.3, 0.3, int(seconds * rate)), rate)


def trans_txt(root, extra_lines=(), repeat_file=False):
    """Two clips per speaker and a trans.txt listing them (+ ``extra_lines``); returns the file's lines."""
    lines = []
    for k, speaker in enumerate(SPEAKERS):
        for u in range(2):
            write_clip(root / f"{speaker}-{u}.wav", seed=10 * k + u)
            lines.append(f"{speaker}-{u} {u} {k}")
    lines += list(extra_lines)
    if repeat_file:
        lines += lines
    (root / "trans.txt").write_text("\n".join(lines) + "\n")
    return lines


def line_of(lines, start, text=None, after=0):
    """The 1-based number of the first line from ``after`` that starts with ``start`` (and is ``text``)."""
    for n, line in enumerate(lines[after:], after + 1):
        if line.startswith(start) and (text is None or line == text):
            return n
    raise AssertionError(start)


def test_the_same_utterance_id_with_two_texts_names_both_lines(tmp_path):
    lines = trans_txt(tmp_path, extra_lines=["bob-1 9 9 9"])
    first, again = line_of(lines, "bob-1 "), line_of(lines, "bob-1 ", "bob-1 9 9 9")
    trans = re.escape(str(tmp_path / "trans.txt"))
    with pytest.raises(
        CorpusLayoutError,
        match=rf"{trans}:{again}: audio file 'bob-1\.wav' is listed again \(first at {trans}:{first}\)",
    ):
        scan_transcripts(tmp_path)


def test_a_transcript_file_pasted_twice_is_refused_at_its_first_repeated_line(tmp_path):
    lines = trans_txt(tmp_path, repeat_file=True)
    half = len(lines) // 2  # the first line of the second copy is line half + 1, repeating line 1
    with pytest.raises(CorpusLayoutError, match=rf"trans\.txt:{half + 1}: .*first at .*trans\.txt:1\)"):
        scan_transcripts(tmp_path)


def test_one_clip_in_train_and_in_test_of_a_split_column_is_refused(tmp_path):
    rows = ["path\ttext\tspeaker\tsplit"]
    for k, (speaker, split) in enumerate(
        zip(SPEAKERS, ["train", "train", "train", "val", "test"], strict=True)
    ):
        write_clip(tmp_path / "clips" / f"{speaker}.wav", seed=k)
        rows.append(f"clips/{speaker}.wav\t{k} {k}\t{speaker}\t{split}")
    rows.append("clips/anna.wav\t0 0\tanna\ttest")  # line 7: the training clip again, as a test clip
    (tmp_path / "transcripts.tsv").write_text("\n".join(rows) + "\n")
    with pytest.raises(
        CorpusLayoutError,
        match=r"tsv:7: .*'clips/anna\.wav'.*first at .*tsv:2\).*in the train split and again in the test",
    ):
        scan_transcripts(tmp_path)


@pytest.mark.parametrize(
    "spelling", ["./clips/anna.wav", "clips//anna.wav", "clips/../clips/anna.wav", "ABSOLUTE"]
)
def test_two_spellings_of_one_path_are_one_recording(spelling, tmp_path):
    rows = []
    for k, speaker in enumerate(SPEAKERS):
        write_clip(tmp_path / "clips" / f"{speaker}.wav", seed=k)
        rows.append(f"clips/{speaker}.wav\t{k}\t{speaker}")
    spelling = str(tmp_path / "clips" / "anna.wav") if spelling == "ABSOLUTE" else spelling
    rows.append(f"{spelling}\t7\tzed")
    (tmp_path / "transcripts.tsv").write_text("\n".join(rows) + "\n")
    with pytest.raises(
        CorpusLayoutError, match=r"tsv:6: audio file 'clips/anna\.wav' is listed again .*tsv:1\)"
    ):
        scan_transcripts(tmp_path)


def test_a_librispeech_chapter_listing_an_utterance_twice_is_refused(tmp_path):
    for speaker in (19, 26, 32):
        chapter = tmp_path / str(speaker) / "198"
        ids = [f"{speaker}-198-{u:04d}" for u in range(2)]
        for u, utt in enumerate(ids):
            write_clip(chapter / f"{utt}.flac", seed=speaker + u)
        lines = [f"{utt} ONE TWO" for utt in ids] + ([f"{ids[0]} THREE"] if speaker == 26 else [])
        (chapter / f"{speaker}-198.trans.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        CorpusLayoutError, match=r"26-198\.trans\.txt:3: audio file '26/198/26-198-0000\.flac'.*:1\)"
    ):
        scan_transcripts(tmp_path)


def test_distinct_recordings_are_all_kept(tmp_path):
    lines = trans_txt(tmp_path)
    splits = scan_transcripts(tmp_path)
    paths = sorted(u.path for us in splits.values() for u in us)
    assert paths == sorted(f"{line.split()[0]}.wav" for line in lines)
