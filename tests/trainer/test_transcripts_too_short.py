"""Utterances too short for their transcripts (fewer frames than CTC needs) are counted and reported once,
rather than silently adding zero loss; ``ctc_min_frames`` is checked against torch's CTC loss."""

import re
import warnings

import numpy as np
import pytest
import soundfile
import torch

from trainer.data import load_task
from trainer.data.files import CorpusWarning
from trainer.data.vocab import ctc_min_frames


@pytest.mark.parametrize("ids", [[3, 3, 3], [1, 2, 3], [1, 1], [2, 2, 2, 3, 3], [4, 1, 4, 4, 1, 1, 1]])
def test_ctc_min_frames_is_the_fewest_frames_ctc_loss_can_align(ids):
    def loss(frames):
        log_probs = torch.randn(frames, 1, 5, generator=torch.Generator().manual_seed(0)).log_softmax(-1)
        target = torch.tensor([ids])
        return torch.nn.functional.ctc_loss(
            log_probs, target, torch.tensor([frames]), torch.tensor([len(ids)])
        )

    needed = ctc_min_frames(torch.tensor(ids))
    assert torch.isfinite(loss(needed)) and torch.isinf(loss(needed - 1))  # the oracle: torch's own alignment
    assert ctc_min_frames(ids) == needed


def corpus(root, short_text=None):
    """trans.txt, one 0.3 s clip per speaker (31 frames of 10 ms); ``short_text``: bob's clip is 0.05 s
    (6 frames) and says that."""
    lines = []
    for k, speaker in enumerate(("anna", "bob", "carl", "dora", "emil")):
        seconds = 0.05 if short_text and speaker == "bob" else 0.3
        wav = np.random.default_rng(k).uniform(-0.3, 0.3, int(seconds * 16000)).astype(np.float32)
        soundfile.write(root / f"{speaker}-0.wav", wav, 16000)
        lines.append(f"{speaker}-0 {short_text if short_text and speaker == 'bob' else 'one two'}")
    (root / "trans.txt").write_text("\n".join(lines) + "\n")


def test_an_utterance_shorter_than_its_transcript_needs_is_counted_and_named(tmp_path):
    corpus(tmp_path, short_text="abcdefgh")  # 8 labels for 6 frames
    with pytest.warns(CorpusWarning) as caught:
        splits = load_task("characters", "transcripts", tmp_path, cache_dir=tmp_path / "cache")
    assert len(caught) == 1
    trans = re.escape(str(tmp_path / "trans.txt"))
    assert re.search(
        rf"^1 utterance\(s\) .*\(1 in \w+\) .*e\.g\. {trans}:2: 6 frames where CTC needs 8",
        str(caught[0].message),
    )
    # the oracle: items whose CTC loss is infinite over their own frames (no subsampling)
    expected = {}
    for name, part in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        log_probs = [torch.zeros(x.shape[-1], 1, len(splits.labels)).log_softmax(-1) for x, _ in part]
        losses = [
            torch.nn.functional.ctc_loss(lp, y[None], torch.tensor([len(lp)]), torch.tensor([len(y)]))
            for lp, (_, y) in zip(log_probs, part, strict=True)
        ]
        expected[name] = sum(bool(torch.isinf(loss)) for loss in losses)
    assert splits.info["too_short"] == expected and sum(expected.values()) == 1


def test_repeated_letters_need_a_blank_between_them(tmp_path):
    corpus(tmp_path, short_text="aabb")  # 4 labels and 2 repeats: 6 frames are enough
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorpusWarning)
        splits = load_task("characters", "transcripts", tmp_path, cache_dir=tmp_path / "cache")
    assert sum(splits.info["too_short"].values()) == 0
    corpus(tmp_path, short_text="aaaa")  # 4 labels, 3 repeats: 7 frames needed
    with pytest.warns(CorpusWarning, match="6 frames where CTC needs 7"):
        load_task("characters", "transcripts", tmp_path, cache_dir=tmp_path / "cache")
