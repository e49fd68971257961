"""gradwatch against the gradient monitors users would pick instead, side by side in one process.

    python benchmarks/peers.py                  # all workloads, all variants, writes docs/benchmarks.md
    python benchmarks/peers.py --quick --docs /tmp/b.md   # seconds: M1 at batch 8, 2 short rounds
    python benchmarks/peers.py --device cuda    # the same on a GPU

For each workload every variant trains its own copy of the model; after a warm-up the variants run
round-robin (A B C … A B C …) for R rounds of K steps. The table gives the median step time
(logging-every-N tools amortised, see timing.py), the overhead vs the bare step with a bootstrap
95% interval over rounds, the step-time ratio vs gradwatch clip=none, and the bytes each tool
wrote per step. A capability matrix says what each tool's files actually contain (peer_outputs.py).
Absolute times depend on the machine; compare ratios.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

# Run as a script (`python benchmarks/peers.py`): the sibling modules sit next to this file and the
# project (tracker, trainer) one level up.
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from docs_section import replace_section  # noqa: E402
from peer_outputs import CAPABILITIES, capabilities, probe  # noqa: E402
from peer_variants import VARIANTS, make_variants  # noqa: E402
from timing import CLOCKS, Trainee, amortised_step_s, bootstrap_ratio, interleave  # noqa: E402
from workloads import WORKLOADS, build_workload  # noqa: E402

REFERENCE = "gw_none"
LOAD_AT_START: float | None = None
CLOCK_TEXT = {
    "wall": "wall time",
    "cpu": "process CPU time (all threads of this process; wandb's separate wandb-core process not counted)",
}  # the "ratio vs gradwatch" column divides by this variant


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = p.add_argument_group("what to run")
    what.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"comma list of {', '.join(WORKLOADS)}"
    )
    what.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    what.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    what.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: all cores; 1 with --clock cpu)",
    )
    what.add_argument("--batch", type=int, default=None, help="override every workload's batch size")
    timing = p.add_argument_group("timing")
    timing.add_argument("--rounds", type=int, default=10, help="interleaved rounds R")
    timing.add_argument("--steps", type=int, default=10, help="steps per variant per round K")
    timing.add_argument("--warmup", type=int, default=5, help="untimed steps per variant first")
    timing.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: elapsed time (quiet machine); cpu: this process's CPU time (busy machine; CPU only)",
    )
    timing.add_argument("--quick", action="store_true", help="smoke mode: M1 at batch 8, R=2, K=3, warm-up 1")
    out = p.add_argument_group("output")
    out.add_argument(
        "--docs", default=str(HERE.parent / "docs" / "benchmarks.md"), help="markdown file to update"
    )
    out.add_argument("--no-docs", action="store_true", help="print only; leave the docs file alone")
    out.add_argument("--no-probe", action="store_true", help="skip the capability matrix probe")
    args = p.parse_args(argv)
    if args.quick:
        args.workloads = "m1" if args.workloads == ",".join(WORKLOADS) else args.workloads
        args.batch = args.batch or 8
        args.rounds, args.steps, args.warmup = 2, 3, 1
    if args.threads is None:
        # CPU time of idle-spinning OpenMP workers is noise: one thread keeps --clock cpu meaningful.
        args.threads = 1 if args.clock == "cpu" else os.cpu_count()
    args.workloads = _pick(args.workloads, WORKLOADS, "--workloads")
    args.variants = _pick(args.variants, VARIANTS, "--variants")
    for name in ("rounds", "steps", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be ≥ 1, got {getattr(args, name)}")
    return args


def _pick(text: str, accepted: tuple[str, ...], flag: str) -> list[str]:
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in chosen if x not in accepted]
    if bad or not chosen:
        raise SystemExit(f"{flag}: unknown {', '.join(bad) or '(empty)'}; accepted: {', '.join(accepted)}")
    return chosen


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ------------------------------------------------------------------------------------- measure
def measure_workload(key: str, args, device: torch.device, reasons: dict[str, str]) -> dict:
    """Time every runnable variant on workload ``key``; return its rows and description."""
    wl = build_workload(key, str(device), batch_size=args.batch)
    _log(f"[{key}] {wl.title}: {wl.n_tensors} tensors, {wl.n_params / 1e6:.1f}M parameters, batch {wl.shape}")
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix=f"peers-{key}-") as tmp:
        tmp = Path(tmp)
        trainees = []
        for v in make_variants():
            if v.key not in args.variants:
                continue
            if v.key in reasons:
                rows[v.key] = {"label": v.label, "status": reasons[v.key]}
                continue
            model = copy.deepcopy(wl.model)
            try:
                (tmp / v.key).mkdir()
                v.start(model, tmp / v.key)
            except Exception as exc:  # noqa: BLE001 - report the broken tool, measure the rest
                rows[v.key] = {"label": v.label, "status": f"error at start: {type(exc).__name__}: {exc}"}
                continue
            trainees.append(Trainee(v, model, torch.optim.Adam(model.parameters(), lr=1e-3)))

        interleave(
            trainees,
            wl.loss_fn,
            wl.batch,
            device,
            rounds=args.rounds,
            steps=args.steps,
            warmup=args.warmup,
            clock=CLOCKS[args.clock],
            on_round=lambda r: _log(f"[{key}] round {r + 1}/{args.rounds}"),
        )

        for t in trainees:
            v = t.variant
            try:
                v.finish()
            except Exception as exc:  # noqa: BLE001
                t.error = t.error or f"error at finish: {type(exc).__name__}: {exc}"
            t.model = t.optimizer = None  # the timings are all we keep; free the model copies
            row = {"label": v.label, "status": t.error or "ok", "trainee": t, "steps": t.step}
            if t.error is None:
                row["ms"] = 1e3 * amortised_step_s(t.times, v.logged, v.period)
                row["call_ms"] = 1e3 * amortised_step_s(t.times, v.logged, v.period, column=3)
                row["bytes_total"] = _bytes(tmp / v.key)
            rows[v.key] = row

        # Bytes per step exclude what a tool writes once (schema, run metadata): a second instance
        # started and finished with no step gives that fixed part.
        for v in make_variants():
            row = rows.get(v.key)
            if not row or "bytes_total" not in row:
                continue
            empty = tmp / f"{v.key}-empty"
            empty.mkdir()
            try:
                v.start(copy.deepcopy(wl.model), empty)
                v.finish()
                row["bytes_per_step"] = max(0.0, (row["bytes_total"] - _bytes(empty)) / row["steps"])
            except Exception as exc:  # noqa: BLE001
                _log(f"[{key}] {v.key}: empty run for the byte count failed: {exc}")

    _derive(rows)
    return {"workload": wl, "rows": rows}


def _derive(rows: dict[str, dict]) -> None:
    """Overhead vs bare (with a bootstrap interval) and the ratio vs gradwatch clip=none."""
    bare, ref = rows.get("bare", {}), rows.get(REFERENCE, {})
    for row in rows.values():
        if "ms" not in row:
            continue
        if "ms" in bare:
            row["overhead"] = row["ms"] / bare["ms"] - 1
            lo, hi = bootstrap_ratio(row["trainee"], bare["trainee"])
            row["overhead_ci"] = (lo - 1, hi - 1)
        if "ms" in ref:
            row["ratio_gw"] = row["ms"] / ref["ms"]


def probe_capabilities(variants: list[str], reasons: dict[str, str]) -> dict[str, dict]:
    """One representative variant per tool, probed on a tiny model; returns tool → matrix row."""
    matrix, seen = {}, set()
    for v in make_variants():
        if v.tool == "none" or v.tool in seen or v.key not in variants:
            continue
        seen.add(v.tool)
        if v.key in reasons:
            matrix[v.tool] = {"status": reasons[v.key]}
            continue
        if v.tool == "gradwatch":  # the probe clips at 1.0 so clip events can appear
            v = next(x for x in make_variants() if x.key == "gw_norm")
        with tempfile.TemporaryDirectory(prefix="peers-probe-") as tmp:
            try:
                rec = probe(v, Path(tmp))
                matrix[v.tool] = {"status": "ok", "how": rec.how, **capabilities(rec, v.tool)}
            except Exception as exc:  # noqa: BLE001
                matrix[v.tool] = {"status": f"probe failed: {type(exc).__name__}: {exc}"}
    return matrix


# -------------------------------------------------------------------------------------- report
def machine_description(device: torch.device, threads: int) -> list[str]:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [f"CPU: {cpu}, {os.cpu_count()} logical cores, torch threads {threads}"]
    if LOAD_AT_START is not None:
        # Other processes' load is why --clock cpu exists: say how busy the machine was.
        lines[0] += f"; 1-min load average {LOAD_AT_START:.1f} at start, {os.getloadavg()[0]:.1f} at end"
    if device.type == "cuda":
        lines.append(f"GPU: {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})")
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for v in make_variants():
        versions.update(v.versions())
    lines.append("versions: " + ", ".join(f"{k} {val}" for k, val in versions.items()) + _commit())
    return lines


def _commit() -> str:
    """The gradwatch commit measured, and whether tracker/ had uncommitted changes."""
    try:
        git = ["git", "-C", str(HERE.parent)]
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run([*git, "status", "--porcelain", "tracker"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return ""
    return f" (gradwatch commit {head.stdout.strip()}{', tracker/ modified' if dirty.stdout.strip() else ''})"


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def _ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def results_table(results: list[dict]) -> list[str]:
    head = ["variant"]
    for res in results:
        k = res["workload"].key.upper()
        head += [f"{k} ms", f"{k} Δ vs bare (95% CI)", f"{k} × gw"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = [k for k in VARIANTS if any(k in res["rows"] for res in results)]
    for key in keys:
        label = next(res["rows"][key]["label"] for res in results if key in res["rows"])
        cells = [label]
        for res in results:
            row = res["rows"].get(key)
            if row is None:
                cells += ["–", "–", "–"]
            elif "ms" not in row:
                cells += [row["status"], "–", "–"]
            elif key == "bare":
                cells += [f"{row['ms']:.1f}", "(reference)", _ratio(row.get("ratio_gw"))]
            else:
                ov = row.get("overhead")
                ci = row.get("overhead_ci")
                ov_text = "–" if ov is None else _pct(ov) + (f" ({_pct(ci[0])}, {_pct(ci[1])})" if ci else "")
                ratio = row.get("ratio_gw")
                cells += [f"{row['ms']:.1f}", ov_text, _ratio(ratio)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def call_table(results: list[dict]) -> list[str]:
    head = ["variant"] + [f"{res['workload'].key.upper()} ms in call" for res in results]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in VARIANTS:
        if key == "bare" or not any(key in res["rows"] for res in results):
            continue
        label = next(res["rows"][key]["label"] for res in results if key in res["rows"])
        cells = [label]
        for res in results:
            row = res["rows"].get(key, {})
            if "call_ms" not in row:
                cells.append(row.get("status", "–"))
            elif key.startswith("wandb"):
                cells.append(f"{row['call_ms']:.2f} + hooks in backward")
            else:
                cells.append(f"{row['call_ms']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def bytes_table(results: list[dict]) -> list[str]:
    head = ["variant"] + [f"{res['workload'].key.upper()} bytes/step" for res in results]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in VARIANTS:
        if key in ("bare", "clip_grad_norm") or not any(key in res["rows"] for res in results):
            continue
        label = next(res["rows"][key]["label"] for res in results if key in res["rows"])
        cells = [label]
        for res in results:
            row = res["rows"].get(key, {})
            b = row.get("bytes_per_step")
            cells.append(f"{b:,.0f}" if b is not None else row.get("status", "–"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def matrix_table(matrix: dict[str, dict]) -> list[str]:
    head = ["tool"] + [title for _, title in CAPABILITIES] + ["what its files hold"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for tool, row in matrix.items():
        if row["status"] != "ok":
            lines.append(f"| {tool} | " + " | ".join([row["status"]] + ["–"] * len(CAPABILITIES)) + " |")
            continue
        lines.append(f"| {tool} | " + " | ".join(row[k] for k, _ in CAPABILITIES) + f" | {row['how']} |")
    return lines


def target_lines(results: list[dict], matrix: dict[str, dict]) -> list[str]:
    """The issue's two targets, checked on the figures above and stated plainly."""
    tool_of = {v.key: v.tool for v in make_variants()}
    period = {v.key: v.period for v in make_variants()}
    per_layer_tools = {t for t, row in matrix.items() if row.get("per_layer") == "yes"}
    out = []
    for res in results:
        rows, k = res["rows"], res["workload"].key.upper()
        gw = rows.get(REFERENCE, {})
        rivals = {
            key: row
            for key, row in rows.items()
            if "ms" in row
            and key != REFERENCE
            and tool_of[key] in per_layer_tools
            and period[key] == 1
            and tool_of[key] != "gradwatch"
        }
        if "ms" in gw and rivals:
            best_key = min(rivals, key=lambda x: rivals[x]["ms"])
            best = rivals[best_key]
            lo, hi = bootstrap_ratio(gw["trainee"], best["trainee"])
            verdict = "met" if hi < 1 else ("tied (within noise)" if lo <= 1 else "NOT met")
            out.append(
                f"- {k}, cheapest per-layer-every-step recorder: {verdict} — gradwatch clip=none "
                f"{gw['ms']:.1f} ms vs the cheapest other ({best['label']}) {best['ms']:.1f} ms; "
                f"gradwatch/other {gw['ms'] / best['ms']:.3f} (95% CI {lo:.3f}, {hi:.3f})."
            )
        gn, cg = rows.get("gw_norm", {}), rows.get("clip_grad_norm", {})
        if "ms" in gn and "ms" in cg:
            lo, hi = bootstrap_ratio(gn["trainee"], cg["trainee"])
            ratio = gn["ms"] / cg["ms"]
            same = lo <= 1 <= hi or abs(ratio - 1) <= 0.01
            out.append(
                f"- {k}, clip=norm:1.0 vs `clip_grad_norm_` alone: {_pct(ratio - 1)} "
                f"(95% CI {_pct(lo - 1)}, {_pct(hi - 1)}) → {'indistinguishable' if same else 'DIFFERENT'}."
            )
    return out


def render(results, matrix, args, device) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "python benchmarks/peers.py" + "".join(f" {a}" for a in sys.argv[1:])
    lines = ["## gradwatch against other gradient monitors", ""]
    lines += [
        f"Measured {now} with `{command}`" + (" (smoke mode: not figures to quote)." if args.quick else ".")
    ]
    lines += [""] + [f"- {x}" for x in machine_description(device, args.threads)]
    lines.append(
        f"- method: one process; per workload each variant trains its own copy (Adam), {args.warmup} warm-up "
        f"steps, then {args.rounds} interleaved round-robin rounds × {args.steps} steps; "
        f"clock: {CLOCK_TEXT[args.clock]}; median step time "
        "(tools that log every N steps: median of logging and other steps weighted 1/N); 95% CI by "
        "bootstrap over rounds; Δ = vs bare step; × gw = step time / gradwatch clip=none."
    )
    for res in results:
        wl = res["workload"]
        lines.append(
            f"- {wl.title}: {wl.n_tensors} parameter tensors, {wl.n_params / 1e6:.1f}M parameters, "
            f"batch {wl.shape}, model from {wl.source}."
        )
    lines += ["", "### Step time", ""] + results_table(results)
    lines += ["", "### Time inside the monitoring call", ""]
    lines += [
        "Median time of the call made between `backward()` and `optimizer.step()` (same clock; logging "
        "steps amortised as above). wandb does its work in gradient hooks during `backward()`, which "
        "this column cannot separate; a background writer thread's work is in the step time, not here.",
        "",
    ]
    lines += call_table(results)
    lines += ["", "### Bytes on disk per step", ""]
    lines += ["Output directory size after the run minus that of a run with no step, ÷ steps.", ""]
    lines += bytes_table(results)
    if matrix:
        lines += ["", "### What each tool records (read back from its own files)", ""]
        lines += [
            "A probe trains a 4-tensor model 4 steps under each tool with gradients clipped at 1.0 "
            '(gradwatch `clip="norm:1.0"`) and a NaN injected into the first layer\'s gradients on the last '
            "step, then parses the tool's files (`benchmarks/peer_outputs.py`).",
            "",
        ]
        lines += matrix_table(matrix)
        lines += ["", "¹ Live dashboard: the tool's documented viewer, not probed."]
    targets = target_lines(results, matrix)
    if targets:
        lines += ["", "### Targets (issue 5)", ""] + targets
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    global LOAD_AT_START
    args = parse_args(argv)
    LOAD_AT_START = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here")
    if device.type == "cuda" and args.clock == "cpu":
        raise SystemExit("--clock cpu measures host CPU time only: use --clock wall with --device cuda")
    torch.set_num_threads(args.threads)

    reasons = {}
    for v in make_variants():
        if v.key in args.variants and (why := v.load()):
            reasons[v.key] = why
            _log(f"{v.label}: {why}")

    results = [measure_workload(key, args, device, reasons) for key in args.workloads]
    matrix = {} if args.no_probe else probe_capabilities(args.variants, reasons)
    body = render(results, matrix, args, device)
    print(body)
    if not args.no_docs:
        replace_section(Path(args.docs), "peers", body)
        _log(f"wrote the peers section of {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
