"""transcripts.tsv details: absolute paths (inside or outside the folder), Windows backslashes, a header in
any column order, and errors that name the TSV's line."""

import numpy as np
import pytest
import soundfile
import torch
import torchaudio

from trainer.data import CorpusLayoutError, load_task
from trainer.data.transcripts import scan_transcripts

SPEAKERS = ("anna", "bob", "carl", "dora", "emil")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def write_clip(path, seed=0, seconds=0.3, rate=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    wav = np.random.default_rng(seed).uniform(-0.3, 0.3, int(seconds * rate)).astype(np.float32)
    soundfile.write(path, wav, rate, subtype="FLOAT")
    return wav


def corpus(root, header="path\ttext\tspeaker", cell=lambda k, path, text, speaker: [path, text, speaker]):
    """One clip per speaker under clips/, the digits ``k k+1`` as words; ``cell`` orders a row's cells."""
    lines = [header] if header else []
    for k, speaker in enumerate(SPEAKERS):
        write_clip(root / "clips" / f"{speaker}.wav", seed=k)
        lines.append("\t".join(cell(k, f"clips/{speaker}.wav", f"{DIGITS[k]} {DIGITS[k + 1]}", speaker)))
    (root / "transcripts.tsv").write_text("\n".join(lines) + "\n")
    return root / "transcripts.tsv"


def items(root, splits):
    """{speaker: (features, target)} over the three splits (one clip per speaker)."""
    scanned = scan_transcripts(root)
    parts = {"train": splits.train, "val": splits.val, "test": splits.test}
    return {u.speaker: item for s, part in parts.items() for u, item in zip(scanned[s], part, strict=True)}


def test_an_absolute_path_outside_the_folder_is_read(tmp_path):
    tsv = corpus(tmp_path / "corpus")
    outside = tmp_path / "elsewhere" / "anna.wav"
    wav = write_clip(outside, seed=42, seconds=0.5)
    tsv.write_text(tsv.read_text().replace("clips/anna.wav", str(outside)))
    scanned = scan_transcripts(tmp_path / "corpus")
    assert {u.speaker: u.path for us in scanned.values() for u in us}["anna"] == str(outside)
    splits = load_task("digits", "transcripts", tmp_path / "corpus", cache_dir=tmp_path / "cache")
    x, _ = items(tmp_path / "corpus", splits)["anna"]
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=400, win_length=400, hop_length=160, n_mels=40)
    db = torchaudio.transforms.AmplitudeToDB("power", top_db=80)(mel(torch.from_numpy(wav)))
    torch.testing.assert_close(x[0], (db - db.mean()) / (db.std() + 1e-5))  # the file outside, read whole


def test_an_absolute_path_inside_the_folder_is_made_relative(tmp_path):
    tsv = corpus(tmp_path)
    tsv.write_text(tsv.read_text().replace("clips/bob.wav", str(tmp_path / "clips" / "bob.wav")))
    paths = sorted(u.path for us in scan_transcripts(tmp_path).values() for u in us)
    assert paths == sorted(f"clips/{s}.wav" for s in SPEAKERS)


def test_a_missing_absolute_path_names_the_line(tmp_path):
    tsv = corpus(tmp_path, header=None)
    tsv.write_text(tsv.read_text().replace("clips/carl.wav", str(tmp_path / "gone.wav")))
    with pytest.raises(CorpusLayoutError, match=r"transcripts\.tsv:3: audio file '.*gone\.wav' is missing"):
        scan_transcripts(tmp_path)


def test_backslashes_are_folder_separators(tmp_path):
    tsv = corpus(tmp_path)
    tsv.write_text(tsv.read_text().replace("clips/", "clips\\"))
    paths = sorted(u.path for us in scan_transcripts(tmp_path).values() for u in us)
    assert paths == sorted(f"clips/{s}.wav" for s in SPEAKERS)


@pytest.mark.parametrize(
    "header, order",
    [
        ("text\tpath\tspeaker", (1, 0, 2)),
        ("Speaker\tText\tPath", (2, 1, 0)),
        ("path\ttext\tspeaker", (0, 1, 2)),
    ],
)
def test_a_header_names_the_columns_in_any_order(header, order, tmp_path):
    corpus(tmp_path, header=header, cell=lambda k, *cells: [cells[i] for i in order])
    splits = load_task("digits", "transcripts", tmp_path, cache_dir=tmp_path / "cache")
    got = {speaker: splits.vocabulary.decode(y) for speaker, (_, y) in items(tmp_path, splits).items()}
    assert got == {speaker: f"{k}{k + 1}" for k, speaker in enumerate(SPEAKERS)}


def test_a_header_without_a_text_column_names_its_line(tmp_path):
    corpus(tmp_path, header="Path\tTranscript\tSpeaker")
    with pytest.raises(
        CorpusLayoutError, match=r"transcripts\.tsv:1: the header .* has no \['text'\] column"
    ):
        scan_transcripts(tmp_path)


def test_an_empty_text_cell_names_the_line_of_the_tsv(tmp_path):
    tsv = corpus(tmp_path)  # line 1 is the header: carl is on line 4
    tsv.write_text(tsv.read_text().replace("two three", "  "))
    with pytest.raises(
        CorpusLayoutError, match=r"transcripts\.tsv:4: the text of 'clips/carl\.wav' is empty"
    ):
        scan_transcripts(tmp_path)


def test_an_empty_path_cell_names_the_line_of_the_tsv(tmp_path):
    tsv = corpus(tmp_path)
    tsv.write_text(tsv.read_text().replace("clips/dora.wav", ""))
    with pytest.raises(CorpusLayoutError, match=r"transcripts\.tsv:5: the path cell is empty"):
        scan_transcripts(tmp_path)
