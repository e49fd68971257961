"""Interleaved step timing: every variant trains its own copy of the model, in round-robin blocks.

A shared, noisy machine drifts over minutes; running A B C … A B C … in the same process spreads
that drift over all variants alike, and medians ignore the steps another process interrupted.
Tools that do their expensive work only every N steps are estimated per phase: the median of
their logging steps and of their other steps, weighted 1/N and (N-1)/N.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["CLOCKS", "Trainee", "amortised_step_s", "bootstrap_ratio", "interleave", "train_steps"]


@dataclass
class Trainee:
    """One variant with its own model copy, optimizer and step counter."""

    variant: object  # peer_variants.Variant
    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: int = 0
    # (round, step, step seconds, seconds inside the monitoring call) for every timed step.
    times: list[tuple[int, int, float, float]] = field(default_factory=list)
    error: str | None = None


def _sync(device: torch.device) -> None:
    # CUDA kernels run asynchronously: without a sync the clock would stop before the step ends.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {
    # What a user waits for; on a shared machine it also counts time spent descheduled.
    "wall": time.perf_counter,
    # CPU seconds of this process, all its threads (a tool's background writer included, a tool's
    # separate service process such as wandb-core not): steady while other processes compete.
    "cpu": time.process_time,
}


def train_steps(
    trainee: Trainee, loss_fn, batch, n: int, device: torch.device, round_: int, clock=time.perf_counter
) -> None:
    """Run ``n`` optimizer steps of ``trainee``, monitored by its variant, timing each step."""
    variant, model, opt = trainee.variant, trainee.model, trainee.optimizer
    variant.before_block()
    for _ in range(n):
        _sync(device)
        t0 = clock()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch)
        loss.backward()
        _sync(device)
        t1 = clock()
        variant.after_backward(loss, trainee.step)
        _sync(device)
        t2 = clock()
        opt.step()
        _sync(device)
        elapsed = clock() - t0
        if round_ >= 0:
            trainee.times.append((round_, trainee.step, elapsed, t2 - t1))
        trainee.step += 1


def interleave(
    trainees: list[Trainee],
    loss_fn,
    batch,
    device: torch.device,
    *,
    rounds: int,
    steps: int,
    warmup: int,
    clock=time.perf_counter,
    on_round: Callable[[int], None] | None = None,
) -> None:
    """Warm every trainee up, then ``rounds`` round-robin passes of ``steps`` steps each.

    The starting variant rotates each round, so none always runs right after a switch (cold
    caches). A variant that raises is marked with its error and leaves the rotation.
    """

    def run(t: Trainee, n: int, round_: int) -> None:
        if t.error is not None:
            return
        try:
            train_steps(t, loss_fn, batch, n, device, round_, clock)
        except Exception as exc:  # noqa: BLE001 - one broken tool must not hide the others' figures
            t.error = f"{type(exc).__name__}: {exc}"

    for t in trainees:
        run(t, warmup, -1)
    for r in range(rounds):
        k = r % len(trainees)
        for t in trainees[k:] + trainees[:k]:
            run(t, steps, r)
        if on_round is not None:
            on_round(r)


def amortised_step_s(
    samples: list[tuple], logged: Callable[[int], bool], period: int, column: int = 2
) -> float:
    """Typical seconds per step, amortising work done only on logging steps (1 in ``period``).
    ``column`` 2 is the whole step, 3 the monitoring call alone."""
    hot = [x[column] for x in samples if logged(x[1])]
    cold = [x[column] for x in samples if not logged(x[1])]
    if not hot or not cold:
        return statistics.median(hot or cold)
    return statistics.median(cold) + (statistics.median(hot) - statistics.median(cold)) / period


def bootstrap_ratio(
    a: Trainee, b: Trainee, *, n: int = 400, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Confidence interval of step(a)/step(b), resampling whole rounds (rounds are the unit that
    shares machine conditions)."""
    rng = random.Random(seed)
    rounds = sorted({x[0] for x in a.times} & {x[0] for x in b.times})
    if not rounds:
        return float("nan"), float("nan")
    by_a = {r: [x for x in a.times if x[0] == r] for r in rounds}
    by_b = {r: [x for x in b.times if x[0] == r] for r in rounds}
    ratios = []
    for _ in range(n):
        pick = [rng.choice(rounds) for _ in rounds]
        sa = [x for r in pick for x in by_a[r]]
        sb = [x for r in pick for x in by_b[r]]
        ratios.append(
            amortised_step_s(sa, a.variant.logged, a.variant.period)
            / amortised_step_s(sb, b.variant.logged, b.variant.period)
        )
    ratios.sort()
    lo = ratios[int((1 - level) / 2 * (n - 1))]
    hi = ratios[int((1 + level) / 2 * (n - 1))]
    return lo, hi
