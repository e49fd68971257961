"""Folders of audio + transcripts (LibriSpeech layout, transcripts.tsv, trans.txt) written by the test."""

import numpy as np
import pytest
import soundfile
import torch
import torchaudio

from trainer.data import CorpusLayoutError, CorpusNotFound, load_task
from trainer.data.transcripts import scan_transcripts
from trainer.data.vocab import digit_vocabulary

WORDS = ["ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"]


def noise(seconds, rate, seed):
    return np.random.default_rng(seed).uniform(-0.3, 0.3, int(seconds * rate)).astype(np.float32)


def write_librispeech(root, speakers, rate=16000, utts=2, texts=None):
    """<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac + <speaker>-<chapter>.trans.txt."""
    written = {}
    for k, speaker in enumerate(speakers):
        chapter = 100 + k
        folder = root / str(speaker) / str(chapter)
        folder.mkdir(parents=True)
        lines = []
        for u in range(utts):
            utt_id = f"{speaker}-{chapter}-{u:04d}"
            text = (
                texts[(k + u) % len(texts)] if texts else " ".join(WORDS[(k + u + j) % 10] for j in range(3))
            )
            soundfile.write(folder / f"{utt_id}.flac", noise(0.3 + 0.1 * u, rate, k * 10 + u), rate)
            lines.append(f"{utt_id} {text}")
            written[utt_id] = text
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return written


@pytest.fixture(scope="module")
def libri(tmp_path_factory):
    root = tmp_path_factory.mktemp("LibriSpeech")
    texts = {}
    for part, speakers in [("train-clean-5", [19, 26, 32]), ("dev-clean", [84]), ("test-clean", [61, 121])]:
        texts |= write_librispeech(root / part, speakers)
    return root, texts


def test_librispeech_parts_give_the_splits_and_digit_targets(libri, tmp_path):
    root, texts = libri
    splits = load_task("digits", "transcripts", root, cache_dir=tmp_path)
    assert splits.info["counts"] == {"train": 6, "val": 2, "test": 4}
    assert splits.info["voices"] == {"train": ["19", "26", "32"], "val": ["84"], "test": ["121", "61"]}
    assert splits.labels[0] == "<blank>" and splits.kind == "sequence"
    scanned = scan_transcripts(root)
    for i, utt in enumerate(scanned["train"]):
        utt_id = utt.path.rsplit("/", 1)[-1].removesuffix(".flac")
        digits = "".join(str(WORDS.index(w)) for w in texts[utt_id].split())
        assert splits.vocabulary.decode(splits.train[i][1]) == digits
        assert splits.train[i][1].tolist() == [int(d) + 1 for d in digits]


def test_flac_features_equal_a_direct_torchaudio_computation(libri, tmp_path):
    root, _ = libri
    splits = load_task("digits", "transcripts", root, cache_dir=tmp_path)
    utt = scan_transcripts(root)["test"][1]
    wav, rate = soundfile.read(root / utt.path, dtype="float32")
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=400, win_length=400, hop_length=160, n_mels=40)(
        torch.from_numpy(wav)
    )
    db = torchaudio.transforms.AmplitudeToDB("power", top_db=80)(mel)
    x = splits.test[1][0]
    assert x.shape == (1, 40, 1 + len(wav) // 160)
    torch.testing.assert_close(x[0], (db - db.mean()) / (db.std() + 1e-5))


def test_characters_task_builds_the_vocabulary_from_the_text(tmp_path):
    root = tmp_path / "libri"
    texts = ["HELLO WORLD", "IT'S A TEST", "SPEECH AND TEXT"]
    write_librispeech(root, [1, 2, 3, 4], rate=22050, texts=texts)
    splits = load_task("characters", "transcripts", root, cache_dir=tmp_path / "cache")
    assert splits.labels == ["<blank>", " ", "'", *sorted(set("helloworlditsatestspeechandtext") - {" "})]
    voices = splits.info["voices"]
    assert sum(map(len, voices.values())) == 4 and all(len(v) >= 1 for v in voices.values())
    assert set(voices["train"]).isdisjoint(voices["test"]) and set(voices["val"]).isdisjoint(voices["test"])
    decoded = {
        splits.vocabulary.decode(y) for split in (splits.train, splits.val, splits.test) for _, y in split
    }
    assert decoded <= {t.lower() for t in texts}
    x, _ = splits.train[0]
    assert x.shape[1] == 40 and x.shape[2] > 20  # 22.05 kHz audio resampled, 10 ms frames


def test_flat_tsv_with_header_and_split_column(tmp_path):
    root = tmp_path / "flat"
    (root / "clips").mkdir(parents=True)
    rows = ["path\ttext\tspeaker\tsplit"]
    for i, split in enumerate(["train", "train", "train", "val", "test"]):
        soundfile.write(root / "clips" / f"u{i}.wav", noise(0.4, 16000, i), 16000)
        rows.append(f"clips/u{i}.wav\tthree {WORDS[i].lower()}\tspk{i}\t{split}")
    (root / "transcripts.tsv").write_text("\n".join(rows) + "\n")
    splits = load_task("digits", "transcripts", root, cache_dir=tmp_path / "cache")
    assert splits.info["counts"] == {"train": 3, "val": 1, "test": 1}
    assert [splits.vocabulary.decode(y) for _, y in splits.train] == ["30", "31", "32"]
    assert splits.info["voices"]["val"] == ["spk3"]


def test_trans_txt_next_to_the_audio(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    lines = []
    for speaker in ("anna", "bob", "carl"):
        for u in range(2):
            soundfile.write(root / f"{speaker}-{u}.wav", noise(0.3, 16000, u), 16000)
            lines.append(f"{speaker}-{u} {u} {u + 1}")
    (root / "trans.txt").write_text("\n".join(lines))
    splits = load_task("digits", "transcripts", root, cache_dir=tmp_path / "cache")
    assert sorted(v for vs in splits.info["voices"].values() for v in vs) == ["anna", "bob", "carl"]
    assert splits.info["counts"] == {"train": 2, "val": 2, "test": 2}


def test_collate_pads_for_ctc(libri, tmp_path):
    root, _ = libri
    splits = load_task("digits", "transcripts", root, cache_dir=tmp_path)
    batch = [splits.train[i] for i in range(4)]
    x, y, x_lens, y_lens = splits.collate(batch)
    assert x.shape == (4, 1, 40, int(x_lens.max())) and y.shape == (4, int(y_lens.max()))
    for i, (xi, yi) in enumerate(batch):
        torch.testing.assert_close(x[i, :, :, : xi.shape[-1]], xi)
        assert (x[i, :, :, xi.shape[-1] :] == 0).all() and y[i, : len(yi)].tolist() == yi.tolist()
    log_probs = torch.randn(int(x_lens.max()), 4, len(splits.labels)).log_softmax(-1)
    loss = torch.nn.functional.ctc_loss(log_probs, y, x_lens, y_lens)  # the layout torch expects
    assert torch.isfinite(loss)


def test_bad_folders_name_the_path_and_the_layouts(tmp_path):
    with pytest.raises(CorpusNotFound, match="missing"):
        scan_transcripts(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusLayoutError, match="is empty.*trans.txt"):
        scan_transcripts(tmp_path / "empty")
    only_audio = tmp_path / "only_audio"
    only_audio.mkdir()
    soundfile.write(only_audio / "a.wav", noise(0.2, 16000, 0), 16000)
    with pytest.raises(CorpusLayoutError, match="no transcripts.*LibriSpeech"):
        scan_transcripts(only_audio)
    broken = tmp_path / "broken"
    write_librispeech(broken, [1, 2, 3])
    next(broken.rglob("*.flac")).unlink()
    with pytest.raises(CorpusLayoutError, match="is missing"):
        scan_transcripts(broken)
    two = tmp_path / "two"
    write_librispeech(two, [1, 2])
    with pytest.raises(CorpusLayoutError, match="2 speaker"):
        scan_transcripts(two)
    words = tmp_path / "words"
    write_librispeech(words, [1, 2, 3], texts=["HELLO THERE"])
    with pytest.raises(CorpusLayoutError, match="'hello'.*task='characters'"):
        load_task("digits", "transcripts", words, cache_dir=tmp_path / "cache")
    no_dev = tmp_path / "no_dev"
    write_librispeech(no_dev / "train-clean", [1])
    write_librispeech(no_dev / "test-clean", [2])
    with pytest.raises(CorpusLayoutError, match="none for \\['val'\\]"):
        scan_transcripts(no_dev)


def test_digit_vocabulary_reads_words_digits_and_oh():
    vocab = digit_vocabulary()
    assert vocab.normalize("THREE oh 4") == "304"
    assert vocab.decode(vocab.encode("nine, eight")) == "98"
    assert vocab.ctc_greedy([0, 4, 4, 0, 4, 2, 2, 0]) == [4, 4, 2]


def write_tsv(root, rows, header="path\ttext\tspeaker\tsplit", rate=16000, seconds=0.4):
    """transcripts.tsv from ``(name, text, speaker, split)`` rows, a noise clip per row (clips/<name>.wav)."""
    (root / "clips").mkdir(parents=True, exist_ok=True)
    lines = [header] if header else []
    for i, (name, text, speaker, split) in enumerate(rows):
        soundfile.write(root / "clips" / f"{name}.wav", noise(seconds, rate, i), rate)
        lines.append("\t".join([f"clips/{name}.wav", text, speaker, split]))
    (root / "transcripts.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


SPLIT_ROWS = [("u0", "one two", "a", "train"), ("u1", "three", "b", "train"), ("u2", "four", "c", "val"),
              ("u3", "five six", "d", "test")]  # fmt: skip


def test_a_clip_shorter_than_a_window_is_zero_padded_to_it(tmp_path):
    root = write_tsv(tmp_path / "short", SPLIT_ROWS, rate=22050)
    short = noise(1, 22050, 9)[:100]  # 100 samples at 22.05 kHz: 73 at 16 kHz, under one 400-sample window
    soundfile.write(root / "clips" / "u3.wav", short, 22050, subtype="FLOAT")
    splits = load_task("digits", "transcripts", root, cache_dir=tmp_path / "cache")
    wav = torchaudio.functional.resample(torch.from_numpy(short), 22050, 16000)
    wav = torch.nn.functional.pad(wav, (0, 400 - len(wav)))  # silence after the clip, to one window
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=400, win_length=400, hop_length=160, n_mels=40)(
        wav
    )
    db = torchaudio.transforms.AmplitudeToDB("power", top_db=80)(mel)
    x, _ = splits.test[0]
    assert x.shape == (1, 40, 3)
    torch.testing.assert_close(x[0], (db - db.mean()) / (db.std() + 1e-5), atol=1e-4, rtol=1e-4)


def test_an_audio_file_without_samples_is_refused_by_name(tmp_path):
    root = write_tsv(tmp_path / "empty_clip", SPLIT_ROWS)
    soundfile.write(root / "clips" / "u1.wav", np.zeros((0, 2), np.float32), 22050)
    with pytest.raises(CorpusLayoutError, match=r"u1\.wav' has no samples"):
        load_task("digits", "transcripts", root, cache_dir=tmp_path / "cache")


def test_a_blank_cell_in_the_split_column_is_refused_naming_its_line(tmp_path):
    rows = [*SPLIT_ROWS, ("u4", "seven", "e", ""), ("u5", "eight", "e", "test")]
    root = write_tsv(tmp_path / "partial", rows)
    # line 1 is the header: u4 is on line 6
    with pytest.raises(CorpusLayoutError, match=r"split column is blank on line\(s\) 6: give every row"):
        scan_transcripts(root)


def test_tsv_errors_name_the_line_of_the_file(tmp_path):
    root = write_tsv(tmp_path / "noheader", SPLIT_ROWS, header=None)
    tsv = root / "transcripts.tsv"
    tsv.write_text(tsv.read_text().replace("clips/u0.wav", "clips/missing.wav"))
    with pytest.raises(CorpusLayoutError, match=r"transcripts\.tsv:1: audio file .*missing\.wav"):
        scan_transcripts(root)
    # Blank lines count as lines, as in an editor: the row without a text is on line 4.
    tsv.write_text("\nclips/u0.wav\tone two\ta\ttrain\n\nclips/u1.wav\n")
    with pytest.raises(CorpusLayoutError, match=r"transcripts\.tsv:4: expected 'path<TAB>text"):
        scan_transcripts(root)


def test_a_byte_order_mark_before_the_header_is_not_part_of_it(tmp_path):
    root = write_tsv(tmp_path / "bom", SPLIT_ROWS)
    tsv = root / "transcripts.tsv"
    tsv.write_bytes(b"\xef\xbb\xbf" + tsv.read_bytes().replace(b"\n", b"\r\n"))  # as Windows Notepad saves
    splits = scan_transcripts(root)
    assert {s: [u.path for u in us] for s, us in splits.items()} == {
        "train": ["clips/u0.wav", "clips/u1.wav"], "val": ["clips/u2.wav"], "test": ["clips/u3.wav"]
    }  # fmt: skip
    assert splits["test"][0].text == "five six"


@pytest.mark.parametrize("layout", ["transcripts.tsv", "trans.txt"])
def test_a_transcript_file_that_is_not_utf8_names_the_file_and_line(layout, tmp_path):
    root = write_tsv(tmp_path / "latin1", [*SPLIT_ROWS[:2], ("u2", "café", "c", "val"), SPLIT_ROWS[3]])
    if layout == "trans.txt":
        (root / "transcripts.tsv").unlink()
        lines = [f"{u} {t}" for u, t, _, _ in [*SPLIT_ROWS[:2], ("u2", "café", "c", "val")]]
        for u in ("u0", "u1", "u2"):
            (root / "clips" / f"{u}.wav").rename(root / f"{u}.wav")
        (root / "trans.txt").write_bytes("\n".join(lines).encode("latin-1"))
        line = 3
    else:
        tsv = root / "transcripts.tsv"
        tsv.write_bytes(tsv.read_text(encoding="utf-8").encode("latin-1"))
        line = 4
    with pytest.raises(CorpusLayoutError, match=rf"{layout}:{line}: the file is not UTF-8.*save it as UTF-8"):
        scan_transcripts(root)
