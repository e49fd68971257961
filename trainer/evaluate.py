"""Losses, greedy CTC decoding and evaluation metrics (accuracy, CER, WER); ``Evaluator``, the training
loop's evaluation pass, which logs them.

Batches are ``(x, y)`` for classification and ``(x, y, x_lens, y_lens)`` for CTC, as produced by
``trainer.data``'s collate functions. Error rates use ``torchaudio.functional.edit_distance``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "batch_loss",
    "too_short_for_ctc",
    "greedy_ctc_decode",
    "TextUnits",
    "evaluate",
    "Evaluator",
]


def batch_loss(model: nn.Module, batch, kind: str, device: torch.device) -> tuple[torch.Tensor, object]:
    """Mean loss of one batch and the raw model output (logits, or (log_probs, out_lengths))."""
    if kind == "classify":
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        logits = model(x)
        return F.cross_entropy(logits.float(), y), logits
    x, y, x_lens, y_lens = (t.to(device, non_blocking=True) for t in batch[:4])
    log_probs, out_lens = model(x, x_lens)
    # zero_infinity: an utterance too short for its target must not turn the whole batch into inf.
    loss = F.ctc_loss(log_probs.transpose(0, 1), y, out_lens, y_lens, blank=0, zero_infinity=True)
    return loss, (log_probs, out_lens)


def too_short_for_ctc(model: nn.Module, dataset) -> list[tuple[int, int, int, int]]:
    """The items of a sequence ``dataset`` whose transcripts ``model``'s output is too short to align, as
    ``(index, feature frames, output frames, frames CTC needs)``. Their CTC loss is infinite, which
    ``batch_loss`` counts as 0 (``zero_infinity``): they teach the model nothing. ``model.output_lengths``
    says how many frames the model makes of an input's (the CTC models subsample time)."""
    from trainer.data.vocab import ctc_min_frames

    frames = dataset.lengths()
    out = model.output_lengths(torch.tensor(frames, dtype=torch.long)).tolist()
    found = []
    for i, (n, target) in enumerate(zip(out, dataset.targets, strict=True)):
        # (CTC never needs more than 2 frames per label: the first test is cheap)
        if n < 2 * len(target) and n < (needed := ctc_min_frames(target)):
            found.append((i, frames[i], n, needed))
    return found


def greedy_ctc_decode(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """Best-path decoding: argmax per frame, merge repeats, drop blanks. ``log_probs``: [B, T, V]."""
    best = log_probs.argmax(dim=-1).cpu()
    out = []
    for seq, n in zip(best.tolist(), lengths.cpu().tolist(), strict=True):
        tokens, prev = [], None
        for t in seq[:n]:
            if t != prev and t != blank:
                tokens.append(t)
            prev = t
        out.append(tokens)
    return out


class TextUnits:
    """Turns token ids into the units CER and WER count: the characters and the words of the text.

    ``decode`` maps ids to text (the data's ``Vocabulary.decode``). For digit strings ("314") every
    digit is a spoken word, so ``digits_are_words=True`` makes WER count digits and CER equals WER.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], *, digits_are_words: bool = False):
        self.decode = decode
        self.digits_are_words = digits_are_words

    def units(self, ids: Sequence[int]) -> tuple[list[str], list[str]]:
        text = self.decode(ids)
        return list(text), list(text) if self.digits_are_words else text.split()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    *,
    kind: str,
    device: torch.device,
    text: TextUnits | None = None,
    autocast=None,
) -> dict[str, float]:
    """Loss plus accuracy (classify) or CER/WER (ctc) over a loader, in eval mode.

    Returns ``{"loss", "acc"}`` or ``{"loss", "cer", "wer"}``; error rates are total edits over
    total reference units (corpus-level, as in published CER/WER), not a mean of per-utterance rates.
    """
    from torchaudio.functional import edit_distance

    if kind == "ctc" and text is None:
        raise ValueError("evaluating a CTC model needs text= (TextUnits) to compute CER/WER")
    was_training = model.training
    model.eval()
    loss_sum, n_items, correct = 0.0, 0, 0
    char_edits = char_total = word_edits = word_total = 0
    try:
        for batch in loader:
            with autocast() if autocast else torch.autocast("cpu", enabled=False):
                loss, out = batch_loss(model, batch, kind, device)
            n = batch[0].shape[0]
            loss_sum += float(loss) * n
            n_items += n
            if kind == "classify":
                correct += int((out.argmax(dim=-1).cpu() == batch[1]).sum())
                continue
            log_probs, out_lens = out
            hyps = greedy_ctc_decode(log_probs, out_lens)
            y, y_lens = batch[1], batch[3]
            for hyp, ref, n_ref in zip(hyps, y.tolist(), y_lens.tolist(), strict=True):
                hc, hw = text.units(hyp)
                rc, rw = text.units(ref[:n_ref])
                char_edits += edit_distance(rc, hc)
                char_total += len(rc)
                word_edits += edit_distance(rw, hw)
                word_total += len(rw)
    finally:
        model.train(was_training)
    if n_items == 0:
        return {}
    metrics = {"loss": loss_sum / n_items}
    if kind == "classify":
        metrics["acc"] = correct / n_items
    else:
        metrics["cer"] = char_edits / max(char_total, 1)
        metrics["wer"] = word_edits / max(word_total, 1)
    return metrics


class Evaluator:
    """Evaluates on rank 0 (whole splits, unsharded), derives the generalisation gap and logs the metrics
    under the names of design.md §5; keeps the time it took so the summary can report training alone."""

    def __init__(self, model, loaders, *, kind, rt, text, tracker):
        self.model, self.loaders, self.kind, self.rt, self.text, self.tracker = (
            model,
            loaders,
            kind,
            rt,
            text,
            tracker,
        )
        self.seconds = 0.0

    def __call__(self, splits: tuple[str, ...], *, step: int, extra: dict | None = None) -> dict[str, float]:
        t0 = time.perf_counter()
        metrics: dict[str, float] = dict(extra or {})
        if self.rt.is_main:
            for split in splits:
                scores = evaluate(
                    self.model, self.loaders[split], kind=self.kind, device=self.rt.device, text=self.text,
                    autocast=self.rt.autocast,
                )  # fmt: skip
                metrics |= {f"{split}_{name}": value for name, value in scores.items()}
            if self.kind == "classify" and "train_acc" in metrics and "val_acc" in metrics:
                metrics["gen_gap"] = metrics["train_acc"] - metrics["val_acc"]
            if self.kind == "ctc" and "train_cer" in metrics and "val_cer" in metrics:
                metrics["gen_gap"] = metrics["val_cer"] - metrics["train_cer"]
            if "train_loss" in metrics and "val_loss" in metrics:
                metrics["gen_gap_loss"] = metrics["val_loss"] - metrics["train_loss"]
            # At the last optimizer step taken (the steps table is 0-based), so metrics line up with norms.
            self.tracker.log(metrics, step=max(step - 1, 0))
        self.rt.barrier()
        self.seconds += time.perf_counter() - t0
        return metrics
