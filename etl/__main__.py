"""Command line: `python -m etl {scrape,validate,run,watch,reprocess,report} …`.

Exit codes (CONTRACT.md): 0 success / all published, 3 a critical quality failure
(quarantined), 1 any other error, 2 usage error, 4 (`run`) another cycle of the same
election is running, so this one did nothing. `watch` exits with its last cycle's code.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from etl import config
from etl.identifiers import argparse_id

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_QUARANTINED, EXIT_BUSY = 0, 1, 2, 3, 4

log = logging.getLogger("etl")
# When `etl run` warms up what its later stages need (`etl.cycle.warm`).
WHILE_CRAWLING = "while the crawl ran"


def _add_portal_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--portal", default=None,
                        help="portal base URL (default $CEC_PORTAL_URL or the local replica)")
    parser.add_argument("--election", required=True, type=argparse_id("election id"),
                        help="election id, e.g. jk2021")
    parser.add_argument("--contest", action="append", dest="contests", metavar="C",
                        type=argparse_id("contest id"),
                        help="only this contest (repeatable); default all the election lists")
    parser.add_argument("--lang", default=None, help="portal language section (default ru)")
    parser.add_argument("--raw-dir", type=Path, default=None,
                        help="raw archive (default $CEC_RAW_DIR or <data>/raw)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="requests in flight at once (default $CEC_CONCURRENCY or 8)")
    parser.add_argument("--processes", type=int, default=None,
                        help="crawl processes (default $CEC_CRAWL_PROCESSES or CPU count)")


def _add_warehouse_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--warehouse", default=None,
                        help="duckdb:///path or postgresql://… (default $CEC_WAREHOUSE_URL)")


def cmd_scrape(args: argparse.Namespace) -> int:
    """Scrape the portal into a snapshot directory and print a summary."""
    from etl.archive import ArchiveWriteError
    from etl.fetch import DeadlineExceeded, FetchError
    from etl.parse import PageParseError
    from etl.scrape import UnknownContestError, scrape

    try:
        summary = scrape(
            args.portal or config.portal_url(), args.election, args.out,
            contests=args.contests, lang=args.lang, archive_root=args.raw_dir,
            concurrency=args.concurrency, processes=args.processes,
        )
    except UnknownContestError as exc:
        print(f"usage error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (FetchError, PageParseError) as exc:
        print(f"error: cannot read the election page: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (DeadlineExceeded, ArchiveWriteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print_scrape_summary(summary.meta, summary.rows, summary.seconds)
    if summary.rows["divisions"] == 0:
        print("error: no division page could be read; see failures above", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def print_scrape_summary(meta: dict[str, object], rows: dict[str, int], seconds: float) -> None:
    """Print what a scrape fetched and where it failed."""
    failures = meta["failures"]
    assert isinstance(failures, list)
    print(f"snapshot {meta['snapshot_id']} (portal updated {meta['portal_updated_at']})")
    print(f"pages: {meta['pages_fetched']} fetched, {meta['pages_not_modified']} not modified, "
          f"{meta['pages_failed']} failed; rows: "
          + ", ".join(f"{name} {count}" for name, count in rows.items())
          + f"; {seconds:.2f}s")
    for failure in failures[:20]:
        print(f"  failed: {failure['url']}: {failure['reason']}")
    if len(failures) > 20:
        print(f"  … and {len(failures) - 20} more failures (see snapshot.json)")
    _print_limits(meta)


def _print_limits(meta: dict[str, object]) -> None:
    """What the crawl's safety limits refused or capped (snapshot.json "limits")."""
    from etl.scrape import limits_summary

    for line in limits_summary(meta):
        print(f"  {line}")


def cmd_validate(args: argparse.Namespace) -> int:
    """The quality gate on a scrape output directory (exit 3 on a critical failure)."""
    from etl.quality.cli import main_validate

    return main_validate(args.gate_args)  # set by main(): the arguments argparse left


def cmd_reprocess(args: argparse.Namespace) -> int:
    """Rebuild a snapshot from the raw archive, without touching the portal."""
    from etl.scrape import rebuild_from_archive

    summary = rebuild_from_archive(args.snapshot_dir, args.out, archive_root=args.raw_dir)
    print_scrape_summary(summary.meta, summary.rows, summary.seconds)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """One full cycle under the election's lock; exit 4 if another cycle holds it."""
    from etl import cycle

    try:
        with cycle.cycle_lock(args.election):
            return _run_cycle(args)
    except cycle.CycleBusyError as exc:
        print(f"busy: {exc}", file=sys.stderr)
        return EXIT_BUSY


def cmd_watch(args: argparse.Namespace) -> int:
    """Cycles as `run` does, each time the portal changes, from one warm process."""
    from etl.runner import watch_and_run

    return watch_and_run(args, lambda: cmd_run(args))


def _run_cycle(args: argparse.Namespace) -> int:
    """One full cycle: detect, scrape, normalise, validate, publish, alert."""
    from etl import cycle
    from etl.archive import ArchiveWriteError
    from etl.fetch import DeadlineExceeded

    portal = args.portal or config.portal_url()
    warehouse = args.warehouse or config.warehouse_url()
    deadline = cycle.cycle_deadline()
    try:
        detection = cycle.detect_change(portal, args.election, contests=args.contests,
                                        lang=args.lang, archive_root=args.raw_dir,
                                        deadline=deadline)
    except ArchiveWriteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if detection.status != cycle.CHANGED:
        sent = cycle.alert_stage(detection.to_dict(), None)
        if detection.status == cycle.UNAVAILABLE:
            print(f"error: portal unavailable: {detection.reason}", file=sys.stderr)
            _print_alerts(sent)
            return EXIT_ERROR
        print("portal unchanged since the last completed cycle: nothing to do")
        return EXIT_OK
    started = time.perf_counter()
    try:
        published = _crawl_to_publish(args, detection, portal, warehouse, deadline)
    except (DeadlineExceeded, ArchiveWriteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if isinstance(exc, DeadlineExceeded):
            print("warning: coverage: the portal was not read in full; the next run retries",
                  file=sys.stderr)
        _print_alerts(cycle.alert_stage(detection.to_dict(), None, failure=str(exc)))
        return EXIT_ERROR
    except Exception as exc:
        # The person on call hears of it (after CEC_ALERT_AFTER_FAILED_RUNS runs), as from
        # the DAG's alert task; a staged snapshot stays for the next run to publish.
        log.exception("cycle of %s failed after the portal changed", args.election)
        print(f"error: the cycle failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        _print_alerts(cycle.alert_stage(detection.to_dict(), None))
        return EXIT_ERROR
    sent = cycle.alert_stage(detection.to_dict(), published)
    cycle.fold_archive(args.raw_dir)
    statuses = {c: s["status"] for c, s in published["statuses"].items()}
    print(f"snapshot {published['snapshot_id']} (portal updated {published['portal_updated_at']})"
          f" -> {warehouse}" + ("" if published["is_new"] else " (already loaded)"))
    parsed = published["pages_parsed"]
    if parsed:
        print(f"  division pages: {parsed['fast']} parsed (fast path), {parsed['fallback']} "
              f"parsed by BeautifulSoup (fast path fell back), {parsed['reused']} reused "
              "(only their updated time changed)")
    for status in ("published", "quarantined", "failed"):
        contests = sorted(c for c, s in statuses.items() if s == status)
        if contests:
            print(f"  {status}: {len(contests)} contests: {', '.join(contests)}")
    for contest, state in sorted(published["statuses"].items()):
        if state["reason"]:
            print(f"  {contest}: {state['reason']}")
    if published.get("clock_warning"):
        print(f"  warning: {published['clock_warning']}")
    from etl.normalise import read_snapshot_meta

    _print_limits(read_snapshot_meta(Path(published["snapshot_dir"])))
    _print_alerts(sent)
    print(f"{time.perf_counter() - started:.2f}s after change detection")
    if "quarantined" in statuses.values():
        return EXIT_QUARANTINED
    if "failed" in statuses.values():
        return EXIT_ERROR
    return EXIT_OK


def _crawl_to_publish(args: argparse.Namespace, detection: Any, portal: str,
                      warehouse: str, deadline: float) -> dict[str, Any]:
    """Crawl, assemble, validate and publish within the cycle's deadline; the summary.

    The crawl runs in a forked child (`etl.forked`): the heap its millions of short-lived
    records fragment leaves with it instead of lying under the quality gate's peak.
    Meanwhile this process imports what the next stages need, and Great Expectations once
    the crawl has parsed a page (a crawl that reuses every page needs no GX: the gate memo
    has them).
    """
    import multiprocessing

    from etl import cycle
    from etl.archive import forget_shared_archives
    from etl.crawl import DEADLINE_GRACE_S
    from etl.fetch import DeadlineExceeded
    from etl.forked import ForkedTask
    from etl.memory import release_memory

    parsing = multiprocessing.get_context("fork").Event()

    def crawl() -> Path:
        return cycle.crawl_batch(
            portal, args.election, detection.contests,
            cycle.run_dir(args.election, detection.checked_at.replace(":", "")) / "batch-0.arrow",
            lang=args.lang, processes=args.processes, concurrency=args.concurrency,
            archive_root=args.raw_dir, deadline=deadline, once_parsing=parsing.set,
            batches=1)  # one crawl task: it has every core

    task = ForkedTask(crawl, "crawl")
    forget_shared_archives()  # the crawl's processes hold it now; not under the gate's peak
    cycle.warm(cycle.warm_imports, WHILE_CRAWLING)
    # What this process holds now (its modules) lives to its end: out of the cycle
    # collector's way, so `release_memory`'s collections after each stage traverse only
    # what the stages made (~40 ms each otherwise, three a cycle).
    gc.freeze()
    # The gate's previous snapshot is read from the warehouse while the crawl goes on
    # (kg2021: ~0.1 s, 100,000 precincts: ~1 s), whether or not the crawl parses (a
    # re-stamped portal's does not), in a thread: the database works without the GIL while
    # this one imports Great Expectations, the longer of the two. If it fails, the gate
    # reads it again and fails loudly there.
    read: list[cycle.PreviousPublished] = []

    def read_previous() -> None:
        try:
            read.append(cycle.read_previous_published(warehouse, args.election,
                                                      detection.contests))
            log.info("previous published snapshot read while the crawl ran")
        except Exception:
            log.exception("reading the previous published snapshot failed while the crawl ran")

    reader = threading.Thread(target=read_previous, name="read-previous", daemon=True)
    reader.start()
    while not task.done(timeout=0.05):
        if parsing.is_set():
            cycle.warm(cycle.warm_quality_gate, WHILE_CRAWLING)
            break
    # The crawl ends by its deadline on its own; the grace covers a fetch stuck past it.
    try:
        batch = task.result(timeout=max(1.0, deadline + DEADLINE_GRACE_S + 30 - time.time()))
    except TimeoutError as exc:
        raise DeadlineExceeded(f"{exc}: the cycle's deadline had passed; nothing was "
                               "published by this cycle") from None
    # Assembly works on columns (large blocks, handed back when freed), with the modules
    # this process has imported meanwhile: here, not in the child, which would import them
    # again.
    snapshot_dir = cycle.assemble_snapshot(portal, args.election, [batch], detection.checked_at,
                                           lang=args.lang, archive_root=args.raw_dir,
                                           election_page=detection.election_page)
    cycle.check_deadline(deadline, "validation")
    reader.join(timeout=max(0.0, deadline - time.time()))
    previous = read[0] if read else None  # not read in time (or failed): the gate reads it
    release_memory(after="crawl and assembly")  # the gate's peak is the run's peak
    cycle.validate_stage(snapshot_dir, warehouse, previous)
    del previous
    cycle.check_deadline(deadline, "publication")
    release_memory(after="validation")
    return cycle.publish_stage(snapshot_dir, warehouse, detection.fingerprint)


def cmd_report(args: argparse.Namespace) -> int:
    """Write or refresh the election-night report site; print the night index's path."""
    from etl.report import build_report

    summary = build_report(args.election, args.out, snapshot_id=args.snapshot,
                           warehouse_url=args.warehouse)
    print(f"{summary.runs} runs, {len(summary.pages_written)} snapshot pages written")
    print(f"night index: {summary.index}")
    return EXIT_OK


def _print_alerts(sent: list[dict[str, object]]) -> None:
    for alert in sent:
        print(f"  alert [{alert['severity']}] {alert['title']}")


def _poll_seconds(text: str) -> float:
    seconds = float(text)
    if not 0.1 <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"{text}: seconds in [0.1, 3600]")
    return seconds


def _positive_count(text: str) -> int:
    count = int(text)
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text}: at least 1")
    return count


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m etl`."""
    parser = argparse.ArgumentParser(prog="python -m etl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG")
    sub = parser.add_subparsers(dest="command", required=True)

    scrape = sub.add_parser("scrape", help="scrape the portal into a snapshot directory")
    _add_portal_args(scrape)
    scrape.add_argument("--out", type=Path, required=True, help="snapshot directory to write")
    scrape.set_defaults(func=cmd_scrape)

    # The quality gate's CLI parses its own arguments (see etl/quality/cli.py).
    validate = sub.add_parser("validate", add_help=False,
                              help="run the quality gate on a snapshot directory")
    validate.set_defaults(func=cmd_validate)

    run = sub.add_parser("run", help="one full cycle: scrape, validate, load, alert")
    _add_portal_args(run)
    _add_warehouse_arg(run)
    run.set_defaults(func=cmd_run)

    watch = sub.add_parser("watch", help="a cycle as `run` does each time the portal changes, "
                                         "from one warm process")
    _add_portal_args(watch)
    _add_warehouse_arg(watch)
    watch.add_argument("--interval", type=_poll_seconds, default=5.0,
                       help="seconds between two polls of the election page (default 5)")
    watch.add_argument("--cycles", type=_positive_count, default=None,
                       help="stop after this many cycles (default: run until stopped)")
    watch.set_defaults(func=cmd_watch)

    reprocess = sub.add_parser("reprocess", help="rebuild a snapshot from the raw archive")
    reprocess.add_argument("snapshot_dir", type=Path, help="a snapshot directory written before")
    reprocess.add_argument("--out", type=Path, required=True, help="snapshot directory to write")
    reprocess.add_argument("--raw-dir", type=Path, default=None, help="raw archive")
    reprocess.set_defaults(func=cmd_reprocess)

    report = sub.add_parser("report", help="write the election-night report site")
    report.add_argument("--election", required=True, help="election id, e.g. jk2021")
    report.add_argument("--snapshot", default=None, help="(re)build this snapshot's page too")
    report.add_argument("--out", type=Path, default=None,
                        help="site directory (default <report dir>/<election>)")
    _add_warehouse_arg(report)
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.command == "validate":
        args.gate_args = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    _configure_logging(args.verbose)
    try:
        code: int = args.func(args)
    except Exception:
        log.exception("%s failed", args.command)
        return EXIT_ERROR
    return code


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


if __name__ == "__main__":
    code = main()
    # Exiting, Python's finalisation runs full cycle collections over every object left
    # (Great Expectations' modules: ~0.8 s after a cycle); the OS frees them all at once.
    gc.freeze()
    sys.exit(code)
