"""`sesame`, the command line.

    sesame batch requests.jsonl --out results.jsonl [--concurrency 64] [--address auto]

Runs every request of a JSON Lines file (one `POST /` body per line) on the Ray cluster through
the engine directly — not an HTTP call each — with at most `--concurrency` in flight, a progress
line on stderr (done, failed, rate, ETA) and a summary at the end. Each outcome is appended to
`--out` as one JSON line `{"line", "run_id", "status", "run"}` (or `{"line", "status": "invalid",
"error"}` for a bad line, which never stops the batch). Re-running the same command resumes:
lines already in the output file are skipped (`--retry-failed` runs failed ones again).

Batch runs are independent: they neither read nor extend conversation memory, and their record
is the output file (they are not in the server's store).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from graph.batch import FAILED_STATUSES, Progress, read_items, run_batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sesame", description="Sesame on the command line.")
    commands = parser.add_subparsers(dest="command", required=True)
    batch = commands.add_parser("batch", help="run many workflows from a JSON Lines file")
    batch.add_argument("input", type=Path, help="JSON Lines: one request (a POST / body) per line")
    batch.add_argument("--out", type=Path, required=True, help="where outcomes are appended (resumable)")
    batch.add_argument("--concurrency", type=int, default=64, help="workflows in flight at once (64)")
    batch.add_argument("--retry-failed", action="store_true",
                       help="run lines again whose earlier outcome failed (failed, cancelled, ...)")
    batch.add_argument("--address", help="Ray cluster to use (default: SESAME_RAY_ADDRESS, else a local Ray)")
    batch.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    if not args.input.is_file():
        parser.error(f"{args.input} is not a file")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    try:
        return asyncio.run(_batch(args))
    except KeyboardInterrupt:
        print("\nstopped; outcomes so far are in the output file (run the same command to resume)",
              file=sys.stderr)
        return 130


def done_lines(out: Path, retry_failed: bool) -> set[int]:
    """Line numbers the output file already has an outcome for (the last outcome counts)."""
    latest: dict[int, str] = {}
    if out.exists():
        with out.open(encoding="utf-8") as handle:
            for text in handle:
                try:
                    record = json.loads(text)
                    latest[int(record["line"])] = str(record["status"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by an earlier crash: that item runs again
    return {line for line, status in latest.items() if not (retry_failed and status in FAILED_STATUSES)}


async def _batch(args: argparse.Namespace) -> int:
    import ray

    from graph.engine import run_workflow
    from graph.runtime import RayRunner
    from graph.settings import Settings
    from nodes.registry import build_registry

    settings = Settings()
    skip = done_lines(args.out, args.retry_failed)
    with args.input.open(encoding="utf-8", errors="surrogateescape") as handle:
        total = sum(1 for number, line in enumerate(handle, 1) if line.strip() and number not in skip)
    progress = Progress(total=total, skipped=len(skip))
    print(f"sesame batch: {total} to run, {len(skip)} already done in {args.out}", file=sys.stderr)
    ray.init(address=args.address or settings.ray_address, include_dashboard=False,
             log_to_driver=False, logging_level="WARNING")
    runner = RayRunner(settings, build_registry)
    known = build_registry(settings).known()
    ticker = asyncio.ensure_future(_show(progress, args.quiet))
    try:
        with args.input.open(encoding="utf-8", errors="surrogateescape") as lines, \
                args.out.open("a", encoding="utf-8") as out:
            await run_batch(read_items(lines, known, skip, settings.limits), lambda item: run_workflow(item.workflow, runner),
                            args.concurrency, lambda result: _write(out, result), progress)
    finally:
        ticker.cancel()
        ray.shutdown()
    _show_line(progress, final=True)
    print(json.dumps({"summary": progress.summary()}), file=sys.stderr)
    return 0


def _write(out: TextIO, result: dict[str, Any]) -> None:
    out.write(json.dumps(result, ensure_ascii=False) + "\n")
    out.flush()
    if result["status"] == "invalid":
        first = result["error"]["problems"][0]
        print(f"\nline {result['line']}: {first['field']}: {first['message']}", file=sys.stderr)


async def _show(progress: Progress, quiet: bool) -> None:
    while not quiet:
        _show_line(progress)
        await asyncio.sleep(0.5)


def _show_line(progress: Progress, final: bool = False) -> None:
    eta = progress.eta_s()
    text = (f"\r{progress.done}/{progress.total} done, {progress.failed} failed, "
            f"{progress.rate():.1f}/s, ETA {time.strftime('%H:%M:%S', time.gmtime(eta)) if eta is not None else '?'}")
    print(text + ("\n" if final else ""), end="", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
