"""Which layout a transcripts folder is in: upper-case audio extensions, stray files and folders that are
not a layout, and two layouts in one folder (refused, naming both)."""

import re

import numpy as np
import pytest
import soundfile

from trainer.data import CorpusLayoutError, load_task
from trainer.data.transcripts import scan_transcripts

SPEAKERS = ("anna", "bob", "carl", "dora", "emil")


def write_clip(path, seed=0, seconds=0.3, rate=16000, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    wav = np.random.default_rng(seed).uniform(-0.3, 0.3, int(seconds * rate)).astype(np.float32)
    soundfile.write(path, wav, rate, **kw)
    return wav


def flat(root, ext=".wav", fmt=None):
    """trans.txt + two clips per speaker (``<speaker>-<u><ext>``); returns {path: samples}."""
    written, lines = {}, []
    for k, speaker in enumerate(SPEAKERS):
        for u in range(2):
            name = f"{speaker}-{u}{ext}"
            written[name] = write_clip(root / name, seed=10 * k + u, seconds=0.2 + 0.1 * u, format=fmt)
            lines.append(f"{speaker}-{u} {u} {k}")
    (root / "trans.txt").write_text("\n".join(lines) + "\n")
    return written


def librispeech(root, speakers=(19, 26, 32), ext=".flac"):
    written = {}
    for speaker in speakers:
        chapter = root / str(speaker) / "198"
        ids = [f"{speaker}-198-{u:04d}" for u in range(2)]
        for u, utt in enumerate(ids):
            written[f"{speaker}/198/{utt}{ext}"] = write_clip(
                chapter / f"{utt}{ext}", seed=speaker + u, format="FLAC"
            )
        (chapter / f"{speaker}-198.trans.txt").write_text("".join(f"{utt} ONE TWO\n" for utt in ids))
    return written


def all_paths(splits):
    return sorted(u.path for us in splits.values() for u in us)


@pytest.mark.parametrize("ext", [".WAV", ".Wav", ".FLAC"])
def test_trans_txt_finds_audio_with_an_upper_case_extension(ext, tmp_path):
    written = flat(tmp_path, ext=ext, fmt="FLAC" if ext == ".FLAC" else "WAV")
    splits = load_task("digits", "transcripts", tmp_path, cache_dir=tmp_path / "cache")
    assert all_paths(scan_transcripts(tmp_path)) == sorted(written)
    frames = sorted(x.shape[-1] for part in (splits.train, splits.val, splits.test) for x, _ in part)
    assert frames == sorted(1 + len(w) // 160 for w in written.values())  # every clip read, whole


def test_librispeech_finds_upper_case_flac(tmp_path):
    written = librispeech(tmp_path, ext=".FLAC")
    assert all_paths(scan_transcripts(tmp_path)) == sorted(written)


def test_of_two_files_of_one_utterance_the_first_extension_in_order_is_read(tmp_path):
    written = flat(tmp_path, ext=".flac", fmt="FLAC")
    write_clip(tmp_path / "anna-0.wav", seed=99)  # a converted copy next to the original
    assert all_paths(scan_transcripts(tmp_path)) == sorted(written)


def test_a_stray_trans_txt_below_the_folder_is_not_a_librispeech_chapter(tmp_path):
    written = flat(tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "old.trans.txt").write_text("x-0 ONE\n")
    (tmp_path / "notes" / "old" / "a").mkdir(parents=True)
    (tmp_path / "notes" / "old" / "a" / "stale.trans.txt").write_text("x-0 ONE\n")  # two levels down
    assert all_paths(scan_transcripts(tmp_path)) == sorted(written)


def test_a_folder_with_only_a_stray_trans_txt_names_it(tmp_path):
    write_clip(tmp_path / "notes" / "x-0.wav")
    (tmp_path / "notes" / "old.trans.txt").write_text("x-0 ONE\n")
    with pytest.raises(CorpusLayoutError, match=r"has no transcripts.*notes/old\.trans\.txt' is not where"):
        scan_transcripts(tmp_path)


@pytest.mark.parametrize("second", ["transcripts.tsv", "LibriSpeech"])
def test_two_layouts_in_one_folder_are_refused_naming_both(second, tmp_path):
    flat(tmp_path)
    if second == "transcripts.tsv":
        (tmp_path / "transcripts.tsv").write_text("anna-0.wav\tone\n")
        named = r"transcripts\.tsv and trans\.txt"
    else:
        librispeech(tmp_path)
        named = r"LibriSpeech chapters \(3, e\.g\. 19/198/19-198\.trans\.txt\) and trans\.txt"
    with pytest.raises(
        CorpusLayoutError, match=rf"{re.escape(repr(str(tmp_path)))} holds two .*{named}: keep one"
    ):
        scan_transcripts(tmp_path)


@pytest.mark.parametrize("name", ["testing_notes", "validated", "trainers", "test"])
def test_a_folder_named_like_a_split_but_not_one_is_ignored(name, tmp_path):
    written = flat(tmp_path)
    write_clip(tmp_path / name / "scratch.wav")  # recordings without transcripts
    assert all_paths(scan_transcripts(tmp_path)) == sorted(written)


def split_folders(root, names):
    written = {}
    for name in names:
        for path, wav in flat(root / name).items():
            written[f"{name}/{path}"] = wav
    return written


@pytest.mark.parametrize(
    "names", [("train-clean-100", "dev-clean", "test-clean"), ("training", "validation", "testing"),
              ("TRAIN", "valid_set", "test.other")]
)  # fmt: skip
def test_split_folders_give_the_splits(names, tmp_path):
    split_folders(tmp_path, names)
    (tmp_path / "testing_notes").mkdir()
    splits = scan_transcripts(tmp_path)
    assert {s: {u.path.split("/")[0] for u in us} for s, us in splits.items()} == {
        "train": {names[0]}, "val": {names[1]}, "test": {names[2]}
    }  # fmt: skip


def test_a_split_named_folder_without_transcripts_is_named_when_its_split_is_missing(tmp_path):
    split_folders(tmp_path, ["train", "dev"])
    write_clip(tmp_path / "test-clean" / "x.wav")
    with pytest.raises(CorpusLayoutError, match=r"none for \['test'\].*\['test-clean'\] hold no transcripts"):
        scan_transcripts(tmp_path)


def test_split_folders_beside_transcripts_of_the_whole_folder_are_refused(tmp_path):
    split_folders(tmp_path, ["train", "dev", "test"])
    flat(tmp_path)
    with pytest.raises(
        CorpusLayoutError, match=r"split folders \['train', 'dev', 'test'\] and, beside them, trans\.txt"
    ):
        scan_transcripts(tmp_path)
