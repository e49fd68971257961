"""What GradTracker costs per training step, measured side by side in one process.

Two models from the issue: M1, the seed document's CNN (conv 1->32, conv 32->64, 3x3 padding 1, avg-pool 2,
fc 64*16*16 -> 512 -> 10; 32x32 inputs, batch 64) and M2, a 12-layer Transformer encoder (d_model 256,
~150 parameter tensors), at batch 32 x 64 tokens ("M2") and 8 x 32 ("M2-small", see M2_BATCHES). Every
variant trains the same model with Adam. The variants run interleaved: a
stretch of ``--per-round`` consecutive steps of each (A B C ..., the order rotated every round), so that
the tracker's once-a-second hand-off to its writer happens as in real training, and each tracker stretch
ends with ``tracker.flush()`` inside the timed region, so that the writer thread's work is charged to its
own variant and never spills into the next one. We report medians of per-round ratios to the bare step,
so machine noise hits all variants alike. Two "norm read" variants read every gradient once and do nothing
else: with torch's fused kernel (``torch._foreach_norm``, what ``get_total_norm`` uses) and with the
tracker's own (``tracker.norms.NormPlan``: ``dot()`` for large CPU tensors, docs/benchmarks.md).

A second, micro, benchmark times ``tracker.step()`` alone on fixed gradients against the bare kernel calls
it makes (the ``dot()`` calls on ready-made flat views and one ``_foreach_norm`` over the rest, results
left unstacked): the difference is the tracker's own host-side work (fetching the gradients, flattening,
stacking, the one host copy, building rows, queueing them). It is also timed against torch's fused kernel
over all the gradients. "minimal" is the least any Python code can do around torch's kernel (fetch the
gradients, stack the norms, copy them once).

    .venv/bin/python benchmarks/tracker_overhead.py            # prints the tables
    .venv/bin/python benchmarks/tracker_overhead.py --write    # and refreshes docs/benchmarks.md

``--device cuda`` runs the same on a GPU (benchmarks/device_check.sh). Every timed stretch then ends with a
``torch.cuda.synchronize()``, wall time is the clock, and there is no "direct cost" column: the host time
inside an asynchronous call says nothing about what it costs the GPU, and a logged step's one host copy
waits for the whole backward, so only the side-by-side ratios are reported. The host-side micro benchmark
synchronises before each timed call: its "beyond the kernel" then also holds the norm kernels' GPU time
and the copy's latency (an upper bound).
"""

from __future__ import annotations

import argparse
import operator
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout: this tree's tracker, however the env was installed

from docs_section import replace_section  # noqa: E402

from tracker import GradTracker  # noqa: E402
from tracker.norms import NormPlan  # noqa: E402
from trainer.models import SeedCNN  # noqa: E402  (M1 is the trainer's seed CNN, layer for layer)

DOC = ROOT / "docs" / "benchmarks.md"
CLIP = "+ clip_grad_norm_(1.0)"  # the reference of the clip=norm:1.0 target


# ---------------------------------------------------------------- models
class Encoder(nn.Module):
    def __init__(self, layers: int = 12, d_model: int = 256):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model, 8, 4 * d_model, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(1))


class Tiny(nn.Module):
    """One 4-element parameter per parameter of ``like``; the loss touches all of them."""

    def __init__(self, like: nn.Module):
        super().__init__()
        self.ps = nn.ParameterList([nn.Parameter(torch.randn(4)) for _ in like.parameters()])
        self.to(DEVICE)
        self.batch = (torch.zeros(1, device=DEVICE), torch.zeros(1, dtype=torch.long, device=DEVICE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([p.sum() for p in self.ps]).sum().reshape(1, 1).expand(1, 10) + x[:, None]


# The issue fixes M2's architecture, not its batch. Its reference figures were measured on a prototype on
# this machine kind where the fused norm read cost ~0.3% of M2's step (2.1 ms): a ~700 ms step, which is batch
# 32 x 64 tokens here (689 ms measured). At 8 x 32 tokens (the step sessions 1-2 used, ~110 ms), reading the
# 38 MB of gradients once is already ~1.5% of the step: kept as the stress case, "M2-small".
M2_BATCHES = {"M2": (32, 64), "M2-small": (8, 32)}
MODELS = ("M1", *M2_BATCHES)


def make_model(name: str, batch: tuple[int, int] | None = None):
    """(model, (inputs, targets)) of ``name`` (one of MODELS) on DEVICE; ``batch`` = (batch, tokens)
    overrides M2's."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if name == "M1":
        model, x = SeedCNN(), torch.randn(64, 1, 32, 32, generator=g)
    else:
        b, seq = batch or M2_BATCHES[name]
        model, x = Encoder(), torch.randn(b, seq, 256, generator=g)
    y = torch.randint(0, 10, (x.shape[0],), generator=g)
    return model.to(DEVICE), (x.to(DEVICE), y.to(DEVICE))


# Where the models train: "cpu" or "cuda" (--device).
DEVICE = torch.device("cpu")


def sync() -> None:
    """Wait for the GPU's queued work, so that a clock read after it counts that work (no-op on CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


# ---------------------------------------------------------------- step variants
# The variants the targets are judged on; --targets-only runs just these (more rounds in the same time).
TORCH_READ, OWN_READ = "+ torch's norm read (_foreach_norm)", "+ gradwatch's norm read (NormPlan)"
TARGET_VARIANTS = (
    "bare step",
    TORCH_READ,
    OWN_READ,
    CLIP,
    "tracker clip=none every=1",
    "tracker clip=norm:1.0",
)


def variants(
    model: nn.Module, batch, db: str, only: tuple[str, ...] | None = None
) -> tuple[dict[str, Callable[[], None]], dict[str, GradTracker], dict[str, Direct]]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    x, y = batch
    params = list(model.parameters())

    def trackers(**kw) -> GradTracker:
        return GradTracker(model, db=db, handle_sigterm=False, **kw)

    made = {
        "tracker clip=none every=1": dict(run="bench-none", clip="none"),
        "tracker clip=norm:1.0": dict(run="bench-norm", clip="norm:1.0"),
        "tracker clip=none every=10": dict(run="bench-every10", clip="none", every=10),
        "tracker extra_stats=True": dict(run="bench-extra", clip="none", extra_stats=True),
    }
    owners = {n: trackers(**kw) for n, kw in made.items() if only is None or n in only}

    def step(before_optimizer: Callable[[torch.Tensor], object] | None) -> Callable[[], None]:
        def run() -> None:
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            if before_optimizer is not None:
                before_optimizer(loss)
            opt.step()

        return run

    grads_of = operator.attrgetter("grad")
    plan = NormPlan.for_tensors(params)
    hooks: dict[str, Callable[[torch.Tensor], object] | None] = {
        "bare step": None,
        TORCH_READ: lambda loss: torch._foreach_norm(list(map(grads_of, params))),
        OWN_READ: lambda loss: plan.apply(list(map(grads_of, params))),
        CLIP: lambda loss: torch.nn.utils.clip_grad_norm_(params, 1.0),
    }
    hooks.update({n: t.step for n, t in owners.items()})
    if only is not None:
        hooks = {n: h for n, h in hooks.items() if n in only}
    # On a GPU the time inside a call is launch time, or, for a copy to the host, the backward's: no direct
    # cost there.
    on_cpu = DEVICE.type == "cpu"
    direct = {n: Direct(h, owners.get(n)) for n, h in hooks.items() if h is not None and on_cpu}
    return {n: step(direct.get(n, hooks[n])) for n in hooks}, owners, direct


class Direct:
    """The direct cost of one variant's extra work: wall time inside its call before ``optimizer.step()``,
    plus, for a tracker, its writer thread's CPU time. Summed exactly, so it is known far more precisely
    than a difference of two noisy step times; what it leaves out is the indirect cost (caches the call
    evicted, CPU the writer took from the training threads), which the side-by-side ratio includes."""

    def __init__(self, hook: Callable[[torch.Tensor], object], tracker: GradTracker | None):
        self.hook, self.inside = hook, 0.0
        writer = getattr(getattr(tracker, "_writer", None), "writer", None)  # Outbox -> BackgroundWriter
        # The writer thread's own CPU clock (Linux): exact, whatever else the process does.
        self._clock = time.pthread_getcpuclockid(writer._thread.ident) if writer is not None else None

    def __call__(self, loss: torch.Tensor) -> None:
        t = time.perf_counter()
        self.hook(loss)
        self.inside += time.perf_counter() - t

    def total(self) -> float:
        return self.inside + (time.clock_gettime(self._clock) if self._clock is not None else 0.0)


# CPU time, not wall time, by default: on a machine shared with other jobs, wall time mostly measures who
# else was scheduled. Process CPU time counts every thread of ours (the writer thread included: it is part of
# the tracker's cost) and none of the time we sat preempted. The host-side micro benchmark uses the training
# thread's own CPU time, and reports the writer thread's separately.
CLOCKS = {
    "cpu": (time.process_time, time.thread_time),
    "wall": (time.perf_counter, time.perf_counter),
}
CLOCK, THREAD_CLOCK = CLOCKS["cpu"]


def interleaved(
    fns: dict[str, Callable[[], None]],
    rounds: int,
    per_round: int,
    warmup: int,
    trackers: dict[str, GradTracker],
    direct: dict[str, Direct],
) -> dict[str, dict]:
    """Run a stretch of ``per_round`` steps of every variant per round, rotating the order each round.

    A tracker variant's stretch ends with its ``flush()``, timed: the rows of the stretch are committed
    before the next variant starts, so the writer's work is counted where it belongs.
    """
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    costs: dict[str, list[float]] = {n: [] for n in direct}
    for r in range(warmup + rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            fn, tracker, d = fns[n], trackers.get(n), direct.get(n)
            c0 = d.total() if d is not None else 0.0
            sync()
            t0 = CLOCK()
            for _ in range(per_round):
                fn()
            if tracker is not None:
                tracker.flush()
            sync()
            if r >= warmup:
                times[n].append((CLOCK() - t0) / per_round)
                if d is not None:
                    costs[n].append((d.total() - c0) / per_round)
    bare = times["bare step"]
    clip = times[CLIP]
    out = {}
    for n in names:
        ratios = [t / b for t, b in zip(times[n], bare, strict=True)]
        vs_clip = [t / c for t, c in zip(times[n], clip, strict=True)]
        q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
        out[n] = dict(
            ms=statistics.median(times[n]) * 1e3,
            ratio=statistics.median(ratios),
            iqr=(q1, q3),  # the spread of the per-round ratios
            ci=median_ci(ratios),  # how well the median itself is known: what a verdict can rest on
            vs_clip=statistics.median(vs_clip),
            vs_clip_ci=median_ci(vs_clip),
        )
        if n in costs:  # 1 + direct cost / bare step of the same round, as a ratio like the others
            shares = [1 + c / b for c, b in zip(costs[n], bare, strict=True)]
            out[n].update(direct=statistics.median(shares), direct_ci=median_ci(shares))
            # Against clip_grad_norm_'s own direct cost, in the same round: (bare + ours) / (bare + its).
            vs = [(b + c) / (b + k) for c, k, b in zip(costs[n], costs[CLIP], bare, strict=True)]
            out[n].update(direct_vs_clip=statistics.median(vs), direct_vs_clip_ci=median_ci(vs))
    return out


def median_ci(values: list[float], level: float = 0.95, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap confidence interval of the median (rounds resampled with replacement)."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(n))
    return meds[int((1 - level) / 2 * (n - 1))], meds[int((1 + level) / 2 * (n - 1))]


def verdict(ci: tuple[float, float], target_pct: float) -> str:
    """met / MISSED when the whole 95% interval is on one side of the target; otherwise not resolved."""
    lo, hi = ((x - 1) * 100 for x in ci)
    if hi <= target_pct:
        return "met"
    if lo > target_pct:
        return "MISSED"
    return f"not resolved by this run: 95% CI {lo:+.2f}% to {hi:+.2f}% spans it"


def bare_kernels(plan: NormPlan, grads: list[torch.Tensor]) -> Callable[[], None]:
    """The kernel calls ``plan.apply(grads)`` makes, alone, on inputs made beforehand: ``dot()`` on flat
    views of the large CPU tensors, one ``_foreach_norm`` per group over the rest, nothing stacked."""
    flats, rests = [], []
    for group, split in zip(plan.groups, plan.splits or (None,) * len(plan.groups), strict=True):
        tensors = [grads[i] for i in group]
        flats += [tensors[j].view(-1) for j in split.dot] if split else []
        rest = [tensors[j] for j in split.rest] if split else tensors
        if rest:
            rests.append(rest)

    def run() -> None:
        for f in flats:
            torch.dot(f, f)
        for rest in rests:
            torch._foreach_norm(rest)

    return run


def host_side(model: nn.Module, batch, db: str, reps: int, per_handoff: int = 10) -> dict[str, float]:
    """tracker.step() on fixed gradients vs the bare norm kernels it calls, interleaved; medians in µs.

    As in training, the logged tracker's rows are handed to the writer every ``per_handoff`` steps (in
    training: once a second, ~10 steps of M1 or M2 here) and committed together. The hand-off, where the
    rows are built, runs on the training thread: its time per step is added to the step's. The writer
    thread is drained right after, outside the timed region: back to back, its work would land in the next
    timed call through the GIL and say more about the store than about the tracker. Its CPU time per step is
    reported on its own (``writer``) and is part of every full training step in the table above.
    """
    per_handoff = max(1, min(per_handoff, reps))  # a smoke run with a few reps still gets one hand-off
    x, y = batch
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    grads = [p.grad for p in model.parameters()]
    logged = GradTracker(model, db=db, run="bench-host", handle_sigterm=False)
    quiet = GradTracker(model, db=db, run="bench-host-every", every=1_000_000_000, handle_sigterm=False)
    quiet.step()  # step 0 is logged; the following ones are not
    params = list(model.parameters())
    grads_of = operator.attrgetter("grad")
    own_kernels = bare_kernels(logged._plan, grads)
    t_kernel, t_own, t_logged, t_handoff, t_writer, t_quiet, t_torch, t_min = [], [], [], [], [], [], [], []
    # Each timed call ends with sync(): on a GPU its kernels' time is then inside, as it is on the CPU.
    for rep in range(1, reps + 1):
        torch._foreach_norm(grads)  # the same cache state as before the timed kernel below
        sync()
        t = THREAD_CLOCK()
        torch.stack(torch._foreach_norm(list(map(grads_of, params)))).tolist()  # "minimal"
        t_min.append(THREAD_CLOCK() - t)
        t = THREAD_CLOCK()
        torch.nn.utils.get_total_norm(grads)  # what clip_grad_norm_ pays to measure, for reference
        sync()
        t0 = THREAD_CLOCK()
        t_torch.append(t0 - t)
        torch._foreach_norm(grads)
        sync()
        t1 = THREAD_CLOCK()
        own_kernels()
        sync()
        t1b = THREAD_CLOCK()
        logged.step()
        sync()
        t2 = THREAD_CLOCK()
        quiet.step()
        sync()
        t_quiet.append(THREAD_CLOCK() - t2)
        t_kernel.append(t1 - t0)
        t_own.append(t1b - t1)
        t_logged.append(t2 - t1b)
        if len(quiet._pending) > 100:  # keep the unlogged buffer small, as a logged step would
            quiet._pending.clear()
        if rep % per_handoff == 0:
            t = THREAD_CLOCK()
            logged._writer.handoff()  # what the outbox does once a second: build the rows, queue them
            t_handoff.append((THREAD_CLOCK() - t) / per_handoff)
            t, p = THREAD_CLOCK(), CLOCK()
            logged.flush()  # wait until they are committed
            # The writer thread's CPU time: the process's minus ours, over the flush (wall clock: the flush).
            ours = THREAD_CLOCK() - t if CLOCK is not THREAD_CLOCK else 0.0
            t_writer.append(((CLOCK() - p) - ours) / per_handoff)
    for t in (logged, quiet):
        t.finish()
    med = statistics.median
    handoff = med(t_handoff)
    return dict(
        tensors=len(grads),
        kernel=med(t_kernel) * 1e6,
        own=med(t_own) * 1e6,
        torch=med(t_torch) * 1e6,
        logged=med(t_logged) * 1e6,
        logged_p90=statistics.quantiles(t_logged, n=10)[8] * 1e6,
        handoff=handoff * 1e6,
        # Per repetition, so that a busy spell hits both terms of the difference alike.
        beyond=(med([a - b for a, b in zip(t_logged, t_own, strict=True)]) + handoff) * 1e6,
        vs_torch=(med([a - b for a, b in zip(t_logged, t_kernel, strict=True)]) + handoff) * 1e6,
        minimal=med([a - b for a, b in zip(t_min, t_kernel, strict=True)]) * 1e6,
        writer=med(t_writer) * 1e6,
        quiet=med(t_quiet) * 1e6,
    )


# ---------------------------------------------------------------- report
def table(model_results: dict[str, dict], host: dict[str, dict]) -> str:
    names = list(next(iter(model_results.values())))
    lines = [
        "| variant | "
        + " | ".join(
            f"{m} ms/step | {m} Δ vs bare [95% CI] | {m} direct cost [95% CI]" for m in model_results
        )
        + " |",
        "|---|" + "---:|---:|---:|" * len(model_results),
    ]
    for n in names:
        cells = []
        for res in model_results.values():
            r = res[n]
            lo, hi = ((x - 1) * 100 for x in r["ci"])
            delta = f"{(r['ratio'] - 1) * 100:+.2f}% [{lo:+.1f}, {hi:+.1f}]"
            direct = "—"
            if "direct" in r:
                d_lo, d_hi = ((x - 1) * 100 for x in r["direct_ci"])
                direct = f"{(r['direct'] - 1) * 100:+.2f}% [{d_lo:+.2f}, {d_hi:+.2f}]"
            cells += [f"{r['ms']:.1f}", "—" if n == names[0] else delta, direct]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| model | tensors | torch's `_foreach_norm` µs | `get_total_norm` µs "
        "| the tracker's bare kernel calls µs "
        "| `tracker.step()` µs, logged (p90) | its rows built at the hand-off, µs per step "
        "| **host-side beyond the kernel** µs (step − its kernel calls, median of differences, + hand-off) "
        "| step + hand-off − torch's `_foreach_norm` µs | minimal Python around `_foreach_norm` µs "
        "| unlogged `tracker.step()` µs | writer thread µs per step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m, h in host.items():
        lines.append(
            f"| {m} | {h['tensors']} | {h['kernel']:.0f} | {h['torch']:.0f} | {h['own']:.0f} "
            f"| {h['logged']:.0f} ({h['logged_p90']:.0f}) | {h['handoff']:.0f} "
            f"| **{h['beyond']:.0f}** | {h['vs_torch']:+.0f} | {h['minimal']:.0f} | {h['quiet']:.0f} "
            f"| {h['writer']:.0f} |"
        )
    return "\n".join(lines)


def verdicts(model_results: dict[str, dict], host: dict[str, dict]) -> list[str]:
    out = []
    for m, res in model_results.items():
        r_none, r_norm = res["tracker clip=none every=1"], res["tracker clip=norm:1.0"]
        none, norm = (r_none["ratio"] - 1) * 100, (r_norm["vs_clip"] - 1) * 100
        direct = "direct" in r_none  # not on a GPU (see the module's docstring)
        out.append(
            f"- {m}: clip=none every=1 adds {none:+.2f}% side by side (target ≤ 1.5%: "
            f"{verdict(r_none['ci'], 1.5)})"
            + (
                f"; its direct cost is {(r_none['direct'] - 1) * 100:+.2f}% "
                f"(target ≤ 1.5%: {verdict(r_none['direct_ci'], 1.5)})"
                if direct
                else ""
            )
            + f". clip=norm:1.0 vs bare + clip_grad_norm_: {norm:+.2f}% side by side "
            f"(target ≤ 1%: {verdict(r_norm['vs_clip_ci'], 1.0)})"
            + (
                f", {(r_norm['direct_vs_clip'] - 1) * 100:+.2f}% in direct costs "
                f"(target ≤ 1%: {verdict(r_norm['direct_vs_clip_ci'], 1.0)})"
                if direct
                else ""
            )
            + "."
        )
    for m, res in model_results.items():
        reads = {name: res[name] for name in (TORCH_READ, OWN_READ)}
        none = res["tracker clip=none every=1"]
        if "direct" not in none:
            out.append(
                f"- {m}: reading every gradient once costs {(reads[TORCH_READ]['ratio'] - 1) * 100:+.2f}% "
                f"side by side with torch's fused kernel, {(reads[OWN_READ]['ratio'] - 1) * 100:+.2f}% with "
                f"the tracker's; the tracker with clip=none every=1 costs "
                f"{(none['ratio'] / reads[OWN_READ]['ratio'] - 1) * 100:+.2f}% on top of its own read."
            )
            continue
        pct = {name: ((r["ratio"] - 1) * 100, (r["direct"] - 1) * 100) for name, r in reads.items()}
        out.append(
            f"- {m}: reading every gradient once costs, side by side / in direct cost, "
            f"{pct[TORCH_READ][0]:+.2f}% / {pct[TORCH_READ][1]:+.2f}% with torch's fused kernel and "
            f"{pct[OWN_READ][0]:+.2f}% / {pct[OWN_READ][1]:+.2f}% with the tracker's; the tracker with "
            f"clip=none every=1 costs {(none['ratio'] / reads[OWN_READ]['ratio'] - 1) * 100:+.2f}% side by "
            f"side, {(none['direct'] - reads[OWN_READ]['direct']) * 100:+.2f}% in direct cost, on top of its "
            "own read."
        )
        h = host.get(m)
        if h is not None:
            out.append(
                f"- {m}: torch's own `get_total_norm` spends {h['torch'] - h['kernel']:.0f} µs beyond its "
                f"kernel; the least Python can do around that kernel (fetch the gradients, stack, copy) "
                f"{h['minimal']:.0f} µs."
            )
    for m, h in host.items():
        out.append(
            f"- {m}: host-side time per logged `tracker.step()` (with its share of the hand-off) beyond the "
            f"kernel calls it makes: {h['beyond']:.0f} µs for {h['tensors']} tensors (target ≤ 200 µs: "
            f"{'met' if h['beyond'] <= 200 else 'MISSED'}); the whole step against torch's fused kernel "
            f"alone: {h['vs_torch']:+.0f} µs."
        )
    return out


DIRECT_TEXT = (
    "Direct cost: the wall time inside the variant's call before `optimizer.step()` plus, for a tracker, its "
    "writer thread's CPU time, over the bare step of the same round (exact sums, so far less noisy; it "
    "leaves out indirect costs such as evicted caches, which Δ includes)."
)
GPU_TEXT = (
    "No direct cost on a GPU: the time inside an asynchronous call is not what it costs. Every stretch of "
    "steps ends with `torch.cuda.synchronize()`."
)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--models",
        default=",".join(MODELS),
        help="comma-separated: M1 (seed CNN), M2 (Transformer, 32×64 tokens), M2-small (the same, 8×32)",
    )
    ap.add_argument("--rounds", type=int, default=20, help="measured rounds per model (medians over these)")
    ap.add_argument("--m2-rounds", type=int, help="rounds for M2 (a ~0.7 s step on 2 cores), if not --rounds")
    ap.add_argument(
        "--per-round", type=int, default=10, help="consecutive steps of each variant per round (a stretch)"
    )
    ap.add_argument("--warmup", type=int, default=1, help="rounds discarded at the start")
    ap.add_argument("--host-reps", type=int, default=300, help="repetitions of the host-side micro benchmark")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch.set_num_threads (1 = least noise when shared)"
    )
    ap.add_argument(
        "--targets-only",
        action="store_true",
        help="only the variants the targets are judged on (no every=10 nor extra_stats): more rounds",
    )
    ap.add_argument(
        "--clock", choices=sorted(CLOCKS), default="cpu", help="CPU time (default) or wall time (cuda: wall)"
    )
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the models train")
    ap.add_argument("--write", action="store_true", help="write the results into docs/benchmarks.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    global CLOCK, THREAD_CLOCK, DEVICE
    if args.device == "cuda":
        if not torch.cuda.is_available():
            ap.error("--device cuda: torch sees no CUDA device here")
        args.clock = "wall"  # CPU time would count spinning in synchronize, and miss the GPU's work
    DEVICE = torch.device(args.device)
    CLOCK, THREAD_CLOCK = CLOCKS[args.clock]

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        ap.error(f"--models: unknown {', '.join(unknown)}; accepted: {', '.join(MODELS)}")
    results, host = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "bench.db")
        for m in models:
            model, batch = make_model(m)
            n_params = sum(p.numel() for p in model.parameters())
            print(
                f"{m}: {len(list(model.parameters()))} tensors, {n_params / 1e6:.1f}M parameters", flush=True
            )
            fns, trackers, direct = variants(model, batch, db, TARGET_VARIANTS if args.targets_only else None)
            rounds = args.m2_rounds if m == "M2" and args.m2_rounds else args.rounds
            results[m] = interleaved(fns, rounds, args.per_round, args.warmup, trackers, direct)
            for t in trackers.values():
                t.finish()
            if m == "M2-small" and "M2" in models:
                continue  # M2's gradients: the host-side micro benchmark does not depend on the batch
            host[m] = host_side(model, batch, db, args.host_reps)
            if m.startswith("M2"):
                # The same 146 tensors shrunk to 4 elements each: no memory traffic, caches stay warm, so what
                # is left is the tracker's Python and dispatch cost alone.
                tiny = Tiny(model)
                host["M2 shapes, 4 elements each"] = host_side(tiny, tiny.batch, db, args.host_reps)

    body_table = table(results, host)
    lines = verdicts(results, host)
    print()
    print(body_table)
    print()
    print("\n".join(lines))
    if args.write:
        clock_text = (
            "CPU time (steps: the process's, writer thread included; host-side: the training thread's)"
            if args.clock == "cpu"
            else "wall time"
        )
        machine = (
            f"{platform.machine()}, {os.cpu_count()} CPU cores visible, torch.set_num_threads({args.threads})"
        )
        if DEVICE.type == "cuda":
            machine += f"; GPU: {torch.cuda.get_device_name(DEVICE)}"
        cmd = "python benchmarks/tracker_overhead.py " + " ".join(sys.argv[1:])
        body = "\n".join(
            [
                "## Tracker overhead (issue: tracker)" + (", on a GPU" if DEVICE.type == "cuda" else ""),
                "",
                f"Machine: {machine}; Python {platform.python_version()}, torch {torch.__version__}; "
                f"{DEVICE.type.upper()}.",
                f"Command: `{cmd.strip()}` ({args.rounds} interleaved rounds × {args.per_round} steps per "
                f"variant{f' ({args.m2_rounds} for M2)' if args.m2_rounds else ''}, {args.warmup} warm-up "
                f"rounds; Adam; M2 batch {'×'.join(map(str, M2_BATCHES['M2']))} tokens, M2-small "
                f"{'×'.join(map(str, M2_BATCHES['M2-small']))}).",
                f"Clock: {clock_text}. Δ is the median over rounds of (variant step time / bare step time "
                "in the same round) − 1; the bracket is a bootstrap 95% confidence interval of that median "
                "(rounds resampled). A target is met or missed only when the whole interval is on one side. "
                + (DIRECT_TEXT if DEVICE.type == "cpu" else GPU_TEXT),
                "",
                body_table,
                "",
                *lines,
            ]
        )
        section = "tracker" if DEVICE.type == "cpu" else "tracker-gpu"
        replace_section(DOC, section, body)
        print(f"\nwrote the {section} section of {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
