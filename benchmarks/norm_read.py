"""Reading a gradient's L2 norm on the CPU: torch's fused kernel against BLAS dot, per tensor size.

``tracker.norms`` reads float32/float64 CPU tensors of ``DOT_MIN_NUMEL`` elements or more with
``torch.dot(g, g)`` and the rest with ``torch._foreach_norm`` (what ``torch.nn.utils.get_total_norm`` uses).
This script measures where that threshold belongs: for each size, ``--tensors`` tensors are read both ways,
interleaved, each read preceded by a write over a buffer larger than the caches so that both start cold, as
right after a backward pass. Medians of ``--repeats``; the ratio is foreach / dot (above 1: dot is faster).

    .venv/bin/python benchmarks/norm_read.py            # prints the table
    .venv/bin/python benchmarks/norm_read.py --write    # and refreshes docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout: this tree's tracker, however the env was installed

from docs_section import replace_section  # noqa: E402

from tracker.norms import DOT_MIN_NUMEL  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
SIZES = (1024, 4096, 16384, 32768, 65536, 262144, 1048576)


def _dot_read(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([torch.dot(f, f) for f in (t.view(-1) for t in tensors)]).sqrt_()


def _foreach_read(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(torch._foreach_norm(tensors))


def measure(size: int, n_tensors: int, repeats: int, evict: torch.Tensor) -> dict[str, float]:
    """Median µs per tensor of each read, cold caches, and the largest relative difference between them."""
    g = torch.Generator().manual_seed(size)
    tensors = [torch.randn(size, generator=g) for _ in range(n_tensors)]
    times: dict[str, list[float]] = {"foreach": [], "dot": []}
    reads = {"foreach": _foreach_read, "dot": _dot_read}
    for r in range(repeats):
        for name in ("foreach", "dot") if r % 2 == 0 else ("dot", "foreach"):
            evict.add_(1.0)  # streams the eviction buffer through every cache level
            t = time.perf_counter()
            reads[name](tensors)
            times[name].append((time.perf_counter() - t) / n_tensors)
    exact = torch.stack([torch.linalg.vector_norm(t.double()) for t in tensors])
    error = {n: ((f(tensors).double() - exact).abs() / exact).max().item() for n, f in reads.items()}
    foreach, dot = (statistics.median(times[n]) * 1e6 for n in ("foreach", "dot"))
    return dict(
        foreach=foreach, dot=dot, ratio=foreach / dot, err_foreach=error["foreach"], err_dot=error["dot"]
    )


def table(rows: dict[int, dict[str, float]]) -> str:
    lines = [
        "| elements | KiB (float32) | `_foreach_norm` µs/tensor | `dot` µs/tensor | foreach / dot "
        "| max rel. error vs float64: foreach | dot | read by the tracker with |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for size, r in rows.items():
        read = "dot" if size >= DOT_MIN_NUMEL else "foreach"
        lines.append(
            f"| {size:,} | {size * 4 // 1024:,} | {r['foreach']:.1f} | {r['dot']:.1f} | {r['ratio']:.2f} "
            f"| {r['err_foreach']:.1e} | {r['err_dot']:.1e} | {read} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tensors", type=int, default=40, help="tensors of each size read per call")
    ap.add_argument("--repeats", type=int, default=40, help="interleaved repetitions (medians over these)")
    ap.add_argument("--evict-mib", type=int, default=512, help="size of the buffer written between reads")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma-separated element counts")
    ap.add_argument("--write", action="store_true", help="write the results into docs/benchmarks.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    evict = torch.zeros(args.evict_mib * 1024 * 1024 // 4)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    rows = {s: measure(s, args.tensors, args.repeats, evict) for s in sizes}
    body = table(rows)
    print(body)
    if args.write:
        cmd = "python benchmarks/norm_read.py " + " ".join(sys.argv[1:])
        text = "\n".join(
            [
                "### CPU norm read — `benchmarks/norm_read.py`",
                "",
                f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores visible, "
                f"torch.set_num_threads({args.threads}); torch {torch.__version__}. "
                f"Command: `{cmd.strip()}`. "
                f"{args.tensors} float32 tensors of each size, each read preceded by a write over "
                f"{args.evict_mib} MiB so that both reads start with cold caches; medians of {args.repeats} "
                f"interleaved repetitions. The tracker reads tensors of {DOT_MIN_NUMEL:,} elements or more "
                "with `dot` (`tracker.norms.DOT_MIN_NUMEL`).",
                "",
                body,
            ]
        )
        replace_section(DOC, "norm-read", text)
        print(f"\nwrote the norm-read section of {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
