"""Utterances whose transcripts a CTC model's output is too short to align: the models subsample time, so
after building the model the trainer counts them per split and says so in one warning, where their loss
would otherwise be a silent 0 (``zero_infinity``)."""

import re

import numpy as np
import pytest
import soundfile
import torch

from trainer.cli import main
from trainer.data import CorpusWarning, load_task
from trainer.models import build_model

SPEAKERS = ("anna", "bob", "carl", "dora", "emil")


def corpus(root):
    """trans.txt, 3 utterances per speaker: 'ab' over 0.3 s (31 feature frames of 10 ms), 'abcdefgh' over
    0.09 s (10 frames: enough for CTC's 8, not once halved to 5) and, for bob only, 'abcdefgh' over 0.05 s
    (6 frames: too short even for the features, which the loader reports)."""
    root.mkdir()
    lines = []
    for k, speaker in enumerate(SPEAKERS):
        clips = [("ab", 0.3), ("abcdefgh", 0.09)] + ([("abcdefgh", 0.05)] if speaker == "bob" else [])
        for u, (text, seconds) in enumerate(clips):
            wav = np.random.default_rng([k, u]).uniform(-0.3, 0.3, int(seconds * 16000)).astype(np.float32)
            soundfile.write(root / f"{speaker}-{u}.wav", wav, 16000)
            lines.append(f"{speaker}-{u} {text}")
    (root / "trans.txt").write_text("\n".join(lines) + "\n")
    return root


def unalignable(splits, model_name):
    """The oracle: per split, the items whose CTC loss is infinite over the model's own output for them."""
    torch.manual_seed(0)
    model = build_model(model_name, n_classes=len(splits.labels), n_mels=40, hidden_size=8).eval()
    counts = {}
    for name in ("train", "val", "test"):
        counts[name] = 0
        for x, y in getattr(splits, name):
            with torch.no_grad():
                log_probs, _ = model(x[None], torch.tensor([x.shape[-1]]))
            frames = torch.tensor([log_probs.shape[1]])  # the time the network really gives it
            targets, target_lengths = y[None], torch.tensor([len(y)])
            loss = torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), targets, frames, target_lengths)
            counts[name] += bool(torch.isinf(loss))
    return counts


def test_utterances_too_short_once_the_model_subsamples_time_are_counted_in_one_warning(tmp_path, capsys):
    root, cache = corpus(tmp_path / "corpus"), tmp_path / "cache"
    with pytest.warns(CorpusWarning, match="6 frames where CTC needs 8"):  # bob's, from the loader
        splits = load_task("characters", "transcripts", root, cache_dir=cache)
    want = unalignable(splits, "crnn-ctc")
    assert sum(want.values()) == 6 and sum(splits.info["too_short"].values()) == 1  # 5 + bob's, and bob's
    capsys.readouterr()
    argv = ["--task", "characters", "--data", "transcripts", "--data-path", str(root),
            "--cache-dir", str(cache), "--model", "crnn-ctc", "--hidden-size", "8", "--max-steps", "1",
            "--batch-size", "4", "--no-track", "--clip", "none", "--quiet", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 2, warned  # the loader's (bob's 6 frames), then the model's
    counts = ", ".join(f"{n} in {s}" for s, n in want.items() if n)
    line = re.escape(str(root / "trans.txt"))
    assert re.fullmatch(
        rf"warning: 6 utterance\(s\) \({counts}\) are too short for their transcripts once crnn-ctc has "
        rf"subsampled time \(e\.g\. {line}:\d+: 10 feature frames, 5 output frames, where CTC needs 8\): .*; "
        r"1 of them were already too short for the features \(above\); check their transcripts",
        warned[1],
    ), warned[1]
