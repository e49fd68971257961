"""Pieces of the loop against independent oracles: greedy CTC decoding and CER/WER on hand-computed
cases, the LR schedule against torch's own schedulers."""

import math

import pytest
import torch
from torch import nn

from trainer.evaluate import TextUnits, evaluate, greedy_ctc_decode
from trainer.sampling import BucketBatchSampler
from trainer.train import lr_factor


def one_hot_log_probs(frames: list[list[int]], vocab: int) -> torch.Tensor:
    x = torch.full((len(frames), max(map(len, frames)), vocab), -10.0)
    for b, seq in enumerate(frames):
        for t, k in enumerate(seq):
            x[b, t, k] = 0.0
    return x.log_softmax(-1)


def test_greedy_ctc_merges_repeats_then_drops_blanks():
    # a a _ a b b | b _ _ (length 3 of 6: the padding frames are ignored)
    lp = one_hot_log_probs([[1, 1, 0, 1, 2, 2], [2, 0, 0, 3, 3, 3]], vocab=4)
    assert greedy_ctc_decode(lp, torch.tensor([6, 3])) == [[1, 1, 2], [2]]


class _Fixed(nn.Module):
    """A 'model' that outputs given frame posteriors, so the metrics can be checked by hand."""

    kind = "ctc"

    def __init__(self, log_probs):
        super().__init__()
        self.log_probs = log_probs
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x, lengths):
        return self.log_probs + 0 * self.w, lengths


def test_cer_and_wer_are_corpus_level_edit_rates():
    # Character vocabulary: blank, "a", "b", " ". References "ab a" and "b"; hypotheses "a a" and "bb".
    labels = ["<blank>", "a", "b", " "]
    hyp_frames = [[1, 3, 1, 0], [2, 0, 2, 0]]
    lp = one_hot_log_probs(hyp_frames, vocab=4)
    refs = torch.tensor([[1, 2, 3, 1], [2, 0, 0, 0]])
    batch = (torch.zeros(2, 1, 4, 4), refs, torch.tensor([4, 4]), torch.tensor([4, 1]))
    text = TextUnits(lambda ids: "".join(labels[i] for i in ids))
    m = evaluate(_Fixed(lp), [batch], kind="ctc", device=torch.device("cpu"), text=text)
    # chars: "ab a" -> "a a" is 1 deletion; "b" -> "bb" is 1 insertion: 2 edits / 5 reference chars.
    assert m["cer"] == pytest.approx(2 / 5)
    # words: ["ab", "a"] -> ["a", "a"] is 1 substitution; ["b"] -> ["bb"] is 1: 2 edits / 3 words.
    assert m["wer"] == pytest.approx(2 / 3)
    lengths, ref_lengths = torch.tensor([4, 4]), torch.tensor([4, 1])
    expected_loss = nn.functional.ctc_loss(lp.transpose(0, 1), refs, lengths, ref_lengths, zero_infinity=True)
    assert m["loss"] == pytest.approx(expected_loss.item(), rel=1e-5)


def test_digits_count_every_digit_as_a_word():
    text = TextUnits(lambda ids: "".join(str(i - 1) for i in ids), digits_are_words=True)
    assert text.units([4, 2, 5]) == (["3", "1", "4"], ["3", "1", "4"])


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_lr_schedule_matches_torch_schedulers(schedule):
    total = 20
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    reference = {
        "cosine": torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total),
        "linear": torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=0.0, total_iters=total),
        "constant": torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0),
    }[schedule]
    for step in range(total + 1):  # torch's cosine is periodic after T_max; ours stays at its end value
        assert lr_factor(step, warmup=0, total=total, schedule=schedule) == pytest.approx(
            reference.get_last_lr()[0], abs=1e-9
        )
        opt.step()
        reference.step()
    assert lr_factor(total + 5, warmup=0, total=total, schedule=schedule) == (
        1.0 if schedule == "constant" else 0.0
    )


def test_warmup_is_linear_then_hands_over():
    factors = [lr_factor(s, warmup=4, total=14, schedule="cosine") for s in range(15)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and factors[9] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factors[14] == pytest.approx(0.0)


def test_bucket_sampler_covers_every_index_once_per_epoch_in_a_new_order():
    lengths = [int(x) for x in torch.randint(10, 300, (203,), generator=torch.Generator().manual_seed(1))]
    sampler = BucketBatchSampler(lengths, 8, seed=3, pool=4)
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == math.ceil(203 / 8)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(203)) and all(1 <= len(b) <= 8 for b in batches)
        epochs.append(flat)
    assert epochs[0] != epochs[1]
    sampler.set_epoch(0)
    assert [i for b in sampler for i in b] == epochs[0]  # deterministic from seed and epoch
    # Bucketing pads less than random batches of the same size.
    padded = sum(max(lengths[i] for i in b) * len(b) for b in BucketBatchSampler(lengths, 8, seed=3))
    perm = torch.randperm(203, generator=torch.Generator().manual_seed(3)).tolist()
    random_padded = sum(
        max(lengths[i] for i in perm[s : s + 8]) * len(perm[s : s + 8]) for s in range(0, 203, 8)
    )
    assert padded < random_padded
