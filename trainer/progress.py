"""Progress bar and end-of-run summary.

The bar reads the tracker's StepStats only on logged steps, where they are already plain Python
numbers: on other steps they are device tensors and reading them would cost a host sync.
"""

from __future__ import annotations

import math
import shlex
import sys

__all__ = ["Progress", "format_summary"]


def _number(x) -> float | None:
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) else None


class Progress:
    """tqdm bar with step, loss, global grad norm and clip rate.

    ``bar=False`` (not a terminal: a log file, the dashboard's launcher) keeps only the per-epoch
    lines; ``quiet=True`` silences both.
    """

    def __init__(self, total: int, *, bar: bool, quiet: bool = False, initial: int = 0):
        # Counted over this process's steps (from ``initial``, the step a resumed run goes on from), like
        # the largest norm and the time in the summary: one process's figures, never mixed with the run's.
        self.logged = 0
        self.clipped = 0
        self.max_norm: float | None = None
        self.quiet = quiet
        self.bar = None
        if bar and not quiet:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr, leave=True
            )

    @property
    def clip_rate(self) -> float | None:
        """Fraction of this process's logged steps on which clipping changed the gradients."""
        return self.clipped / self.logged if self.logged else None

    def update(self, step: int, stats, loss) -> None:
        """Called after every optimizer step; ``stats`` is the tracker's StepStats (or None)."""
        total_norm = _number(getattr(stats, "total_norm", None))
        if total_norm is not None:  # a logged step: everything in stats is on the host already
            self.logged += 1
            self.clipped += bool(getattr(stats, "clipped", False))
            if self.max_norm is None or total_norm > self.max_norm or math.isnan(total_norm):
                self.max_norm = total_norm
        if self.bar is None:
            return
        if total_norm is not None:
            post = {"loss": f"{float(loss):.3f}", "gnorm": f"{total_norm:.3g}"}
            if self.clip_rate is not None:
                post["clip"] = f"{100 * self.clip_rate:.0f}%"
            self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)  # redraws with the postfix of this step

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        elif not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt(name: str, value: float) -> str:
    if name.endswith(("acc", "cer", "wer")) or name == "gen_gap":
        return f"{100 * value:.2f}%"
    if (
        isinstance(value, float)
        and (abs(value) < 1e-3 or abs(value) >= 1e4)
        and value != 0
        and math.isfinite(value)
    ):
        return f"{value:.3e}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_summary(
    *,
    status: str,
    run_name: str,
    run_id: int | None,
    db: str | None,
    steps: int,
    first_step: int = 0,
    seconds: float,
    train_seconds: float,
    metrics: dict[str, float],
    clip: str,
    logged: int,
    clip_rate: float | None,
    max_norm: float | None,
) -> str:
    """The one-screen summary printed at the end of a run.

    ``steps`` is the step the run has reached, ``first_step`` the one this process started at (a resumed
    run's checkpoint step). The time, the clip rate and the largest norm are all this process's, over its
    ``steps - first_step`` steps (``logged`` of them logged): a resumed or forked run says so.
    """
    ran = steps - first_step
    timing = (
        f" (training steps {train_seconds:.1f} s, {1000 * train_seconds / ran:.1f} ms/step)" if ran else ""
    )
    here = " of this process" if first_step else ""
    if not first_step:
        work = f"  {steps} optimizer steps in {seconds:.1f} s{timing}"
    elif ran:
        work = (
            f"  resumed at step {first_step}: {ran} optimizer steps in this process (steps {first_step}–"
            f"{steps - 1}) in {seconds:.1f} s{timing}"
        )
    else:
        work = f"  resumed at step {first_step}: no optimizer steps left to take ({seconds:.1f} s)"
    clipping = (
        f"no logged steps{here}"
        if clip_rate is None
        else f"clipped on {100 * clip_rate:.1f}% of the {logged} logged steps{here}"
    )
    lines = [
        "",
        f"run {run_name!r}" + (f" (id {run_id})" if run_id is not None else "") + f": {status}",
        work,
        f"  clipping {clip}: {clipping}"
        + ("" if max_norm is None else f", largest global grad norm {max_norm:.3g}"),
    ]
    order = ["train", "val", "test"]
    for split in order:
        row = {k: v for k, v in metrics.items() if k.startswith(split + "_")}
        if row:
            lines.append(
                f"  {split:<5} " + "  ".join(f"{k[len(split) + 1 :]} {_fmt(k, v)}" for k, v in row.items())
            )
    gaps = {k: v for k, v in metrics.items() if k.startswith("gen_gap")}
    if gaps:
        lines.append("  generalisation gap " + "  ".join(f"{k} {_fmt(k, v)}" for k, v in gaps.items()))
    if db is not None:
        lines += [f"  database: {db}", f"  dashboard: gradwatch-dashboard --db {shlex.quote(str(db))}"]
    else:
        lines.append("  tracking disabled (--no-track): nothing was recorded")
    return "\n".join(lines)
