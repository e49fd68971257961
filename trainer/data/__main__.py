"""``python -m trainer.data``: generate (or find) a corpus in the cache and print what it holds.

python -m trainer.data --task keywords --size small
python -m trainer.data --source speech_commands --path ~/data/speech_commands_v0.02 --classes 12
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

from . import SOURCES, TASKS, CorpusWarning, DataError, load_task
from .cache import removed_words


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.data", description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="keywords", help="what to recognise")
    parser.add_argument("--source", choices=SOURCES, default="builtin", help="where the audio comes from")
    parser.add_argument("--path", default=None, help="corpus folder (speech_commands, transcripts)")
    parser.add_argument(
        "--size", default="small", help="built-in size: tiny, small, full or reps per speaker"
    )
    parser.add_argument("--seed", type=int, default=0, help="generation seed and speaker split")
    parser.add_argument("--classes", type=int, default=10, help="Speech Commands variant: 10, 12, 30 or 35")
    parser.add_argument("--cache-dir", default=None, help="default $GRADWATCH_CACHE/corpora or ~/.cache/...")
    args = parser.parse_args(argv)
    size = int(args.size) if args.size.isdigit() else args.size
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CorpusWarning)
            splits = load_task(
                args.task,
                args.source,
                args.path,
                size=size,
                seed=args.seed,
                classes=args.classes,
                cache_dir=args.cache_dir,
            )
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # what the loader did not name itself: a cache folder it cannot write, say
        where = f" {str(e.filename)!r}" if e.filename else ""
        print(f"error: cannot access{where} ({(e.strerror or str(e)).lower()})", file=sys.stderr)
        return 2
    for w in caught:  # what the loader skipped or changed: one line each, as the trainer prints them
        if issubclass(w.category, CorpusWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    info = splits.info
    print(f"{args.task} from {args.source}: {splits.kind}, {len(splits.labels)} labels")
    for split in ("train", "val", "test"):
        voices = info.get("voices", {}).get(split, [])
        print(f"  {split:5s} {info['counts'][split]:6d} utterances, {len(voices)} speaker(s)")
    if "generation_seconds" in info:
        state = "found in cache" if info["cache_hit"] else "generated"
        print(f"  corpus {state}; generation took {info['generation_seconds']:.1f} s")
    print(f"  features {'read from cache' if info.get('feature_cache_hit') else 'computed'}")
    print(f"  cache: {info['cache_path']}")
    if info.get("removed_caches", {}).get("folders"):  # (the features of this corpus's earlier states)
        print(f"  {removed_words(info['removed_caches'])}")
    print(f"  total {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
