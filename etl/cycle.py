"""One election-night cycle, stage by stage: detect → crawl → assemble → validate → publish → alert.

The CLI (`python -m etl run`) calls these functions in order; the Airflow DAG calls each
from its own task. Stages hand each other paths and small dicts, never frames.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, astuple, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from etl import config
from etl.archive import RawArchive, shared_archive
from etl.crawl import ContestCrawl, SourceSpec, contest_path, crawl_contests, election_path
from etl.fetch import (
    DeadlineExceeded,
    FetchedPage,
    FetchError,
    PortalClient,
    absolute_url,
    utc_now,
)
from etl.identifiers import InvalidIdentifierError, checked_id, checked_ids
from etl.normalise import (
    PAGE_SCHEMA,
    CrawlTable,
    read_snapshot_meta,
    write_snapshot,
)
from etl.pagecache import cache_path, read_pages, write_pages
from etl.parse import PageParseError, parse_election
from etl.records import FetchFailure, SeenPage
from etl.scrape import assemble

# The parsed pages of a snapshot, kept in its directory and, once its cycle completes,
# in the state directory for the next cycle to reuse (see etl.pagecache).
PARSED_PAGES_FILE = "parsed_pages.parquet"

log = logging.getLogger(__name__)

CHANGED, UNCHANGED, UNAVAILABLE = "changed", "unchanged", "unavailable"


@dataclass(frozen=True)
class Detection:
    """Whether the portal shows a state this pipeline has not completed a cycle for."""

    status: str  # changed / unchanged / unavailable
    election_id: str
    contests: tuple[str, ...]
    fingerprint: str | None
    reason: str | None
    checked_at: str
    # The election page this detection read (`SeenPage` fields), for the snapshot's pages.
    election_page: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, for XCom."""
        return asdict(self)


class CycleBusyError(RuntimeError):
    """Another cycle of the same election holds the lock; this one did nothing."""


def _state_dir() -> Path:
    return config.data_dir() / "state"


def _state_path(election_id: str) -> Path:
    return _state_dir() / f"{checked_id(election_id, 'election id')}.json"


@contextlib.contextmanager
def cycle_lock(election_id: str) -> Iterator[Path]:
    """Hold `<data>/state/<election>.lock` for one cycle; `CycleBusyError` if another holds it.

    An exclusive POSIX record lock (`lockf`), released by the kernel when the holding
    process exits, even on SIGKILL, so a killed cycle never leaves a stale lock behind.
    Not `flock`: that lock belongs to the open file, which the cycle's forked children
    (the crawl and its workers) share, so it outlived a killed cycle until they had all
    exited. A record lock is the process's own; a process takes it once (a second
    `cycle_lock` in the same process would not conflict). Never waits: a second cycle of
    the same election on a busy portal would only repeat the first one's work.
    """
    path = _state_path(election_id).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):  # EAGAIN or EACCES, as the kernel says
            handle.seek(0)
            holder = handle.read().strip() or "unknown holder"
            raise CycleBusyError(
                f"another cycle of {election_id} is running ({holder}; lock {path}): "
                "this one did nothing"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {utc_now()}")
        handle.flush()
        try:
            yield path
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


def last_completed_fingerprint(election_id: str) -> str | None:
    """Fingerprint of the portal state the last completed cycle processed."""
    path = _state_path(election_id)
    if not path.exists():
        return None
    value = json.loads(path.read_text(encoding="utf-8")).get("fingerprint")
    return str(value) if value else None


def mark_completed(election_id: str, fingerprint: str | None, snapshot_id: str | None,
                   portal_updated_at: str | None = None,
                   snapshot_dir: Path | None = None) -> None:
    """Remember that the cycle for this portal state finished (published or quarantined).

    The latest portal time seen is kept (never lowered), to notice a clock going backwards.
    The snapshot's parsed pages become the ones the next cycle may reuse.
    """
    path = _state_path(election_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    latest = latest_portal_time(election_id)
    if portal_updated_at and (latest is None or _instant(portal_updated_at) > _instant(latest)):
        latest = portal_updated_at
    parsed = snapshot_dir / PARSED_PAGES_FILE if snapshot_dir is not None else None
    if parsed is not None and parsed.is_file():
        cached = cache_path(_state_dir(), election_id)
        tmp_cache = cached.with_name(f".{cached.name}.tmp")
        shutil.copyfile(parsed, tmp_cache)
        os.replace(tmp_cache, cached)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"fingerprint": fingerprint, "snapshot_id": snapshot_id,
                               "completed_at": utc_now(), "latest_portal_updated_at": latest}),
                   encoding="utf-8")
    os.replace(tmp, path)


def latest_portal_time(election_id: str) -> str | None:
    """The latest portal `updated` time a completed cycle of this election has seen."""
    path = _state_path(election_id)
    if not path.exists():
        return None
    value = json.loads(path.read_text(encoding="utf-8")).get("latest_portal_updated_at")
    return str(value) if value else None


def clock_went_backwards(election_id: str, portal_updated_at: str | None) -> str | None:
    """A warning when the portal's `updated` time is older than one already processed.

    Such a snapshot is kept (history) but never becomes "latest": the latest_* views order
    by the portal's time. The warning goes to the log, the summary and `cycles.jsonl`.
    """
    latest = latest_portal_time(election_id)
    if not portal_updated_at or latest is None:
        return None
    if _instant(portal_updated_at) >= _instant(latest):
        return None
    return (f"portal clock went backwards: this snapshot says updated {portal_updated_at}, "
            f"an earlier cycle saw {latest}; it is kept but does not become the latest")


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


def detect_change(
    portal: str, election_id: str, *, contests: Sequence[str] | None = None,
    lang: str | None = None, archive_root: Path | None = None, deadline: float | None = None,
) -> Detection:
    """Conditional requests for the election page and each contest's root page.

    The portal's `updated` time is on every page, so a root page that did not change means
    its contest did not change. The fingerprint of those pages is compared with the last
    *completed* cycle's, so a cycle that died half-way is retried, not skipped.
    """
    lang = lang or config.portal_lang()
    checked_id(election_id, "election id")
    client = PortalClient(portal, shared_archive(archive_root or config.raw_dir()),
                          deadline=deadline)
    checked_at = utc_now()
    try:
        election_page = client.fetch(election_path(lang, election_id))
        election = parse_election(election_page.body, election_page.url, election_page.encoding)
        # The portal's contest ids become directory and file names: refuse odd ones.
        listed = checked_ids((link.segment for link in election.contests),
                             "contest id on the election page")
        selected = [c for c in listed if not contests or c in set(contests)]
        # Root pages fetched before are asked again all at once on one connection (most
        # cycles: a 304 or a re-stamped page each); any not settled so, one by one.
        paths = [contest_path(lang, election_id, c) for c in selected]
        roots: list[FetchedPage] = [
            page if page is not None else client.fetch(path)
            for path, page in zip(paths, client.revalidate(paths), strict=True)]
    except (FetchError, PageParseError, InvalidIdentifierError) as exc:
        log.warning("portal unavailable for %s: %s", election_id, exc)
        return Detection(UNAVAILABLE, election_id, (), None, str(exc), checked_at)
    finally:
        client.close()
    digest = hashlib.sha256()
    for page in [election_page, *roots]:
        digest.update(f"{page.url}\t{page.sha256}\n".encode())
    fingerprint = digest.hexdigest()
    status = UNCHANGED if fingerprint == last_completed_fingerprint(election_id) else CHANGED
    log.info("%s: portal %s (fingerprint %s, %d contests)", election_id, status, fingerprint[:12],
             len(selected))
    return Detection(status, election_id, tuple(selected), fingerprint, None, checked_at,
                     SeenPage(election_page.url, election_page.sha256,
                              election_page.not_modified)._asdict())


def plan_batches(contests: Sequence[str], batches: int) -> list[list[str]]:
    """Split contests into at most `batches` groups for mapped crawl tasks (round robin)."""
    count = max(1, min(batches, len(contests)))
    return [list(contests[i::count]) for i in range(count)]


def run_dir(election_id: str, run_key: str) -> Path:
    """Staging directory of one cycle (crawled batches, then the snapshot)."""
    checked_id(election_id, "election id")
    if not run_key or "/" in run_key or run_key in (".", "..") or "\0" in run_key:
        raise InvalidIdentifierError(f"run key {run_key!r} cannot name a directory")
    return config.staging_dir() / election_id / "runs" / run_key


def cycle_deadline(started: float | None = None) -> float:
    """When a cycle started at `started` (epoch seconds, default now) must have ended."""
    return (time.time() if started is None else started) + config.cycle_deadline()


def check_deadline(deadline: float | None, stage: str) -> None:
    """Raise `DeadlineExceeded` if the cycle's deadline has passed before `stage`."""
    if deadline is not None and time.time() > deadline:
        raise DeadlineExceeded(
            f"the cycle hit its deadline (CEC_CYCLE_DEADLINE={config.cycle_deadline():g}s) "
            f"before {stage}; nothing was published by this cycle")


def crawl_batch(
    portal: str, election_id: str, contests: Sequence[str], out_path: Path, *,
    lang: str | None = None, processes: int | None = None, concurrency: int | None = None,
    archive_root: Path | None = None, once_parsing: Callable[[], object] | None = None,
    deadline: float | None = None, batches: int | None = None,
) -> Path:
    """Crawl a batch of contests and stage the parsed pages (Arrow IPC) for the next task.

    Arrow, not pickle: the parsed pages came from the portal, and unpickling a file runs
    whatever it says; reading an Arrow file only reads columns. Pages that changed only
    their `updated` stamp since the last completed cycle are not parsed again; the batch's
    parsed pages go beside it (`_parsed_pages_path`) for the cache.

    `batches` is how many crawl tasks of this run may run at once (default
    `CEC_CRAWL_BATCHES`, the DAG's mapped crawl; `etl run` passes 1): the run's processes
    and requests in flight are shared among them, so the machine's cores are not
    oversubscribed (`etl.config.crawl_processes`).
    """
    shares = config.crawl_batches() if batches is None else batches
    concurrency = concurrency or config.concurrency(shares)
    spec = SourceSpec(portal, archive_root or config.raw_dir(), pool_size=concurrency)
    cache = read_pages(cache_path(_state_dir(), election_id), contests)
    crawled = crawl_contests(spec, lang or config.portal_lang(), election_id, contests,
                             concurrency=concurrency,
                             processes=processes or config.crawl_processes(shares), cache=cache,
                             once_parsing=once_parsing,
                             deadline=deadline)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_pages(_parsed_pages_path(out_path), crawled.pages,
                [key for crawl in crawled.contests for key in crawl.page_keys])
    write_crawl_table(out_path, crawled)
    return out_path


def _parsed_pages_path(batch_path: Path) -> Path:
    return batch_path.with_name(f"{batch_path.stem}.pages.parquet")


STAGING_FORMAT = "cec-crawl-batch/2"
_STAGING_KEY = b"cec.crawl_batch"


def write_crawl_table(path: Path, crawled: CrawlTable) -> Path:
    """Stage crawled pages as one Arrow IPC file (written whole, then renamed)."""
    import pyarrow as pa

    document = {"format": STAGING_FORMAT,
                "contests": [_contest_to_json(contest) for contest in crawled.contests]}
    table = crawled.pages.replace_schema_metadata(
        {_STAGING_KEY: json.dumps(document, ensure_ascii=False).encode()})
    tmp = path.with_name(path.name + ".tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(
            sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(table)
    os.replace(tmp, path)
    return path


def read_crawl_table(path: Path) -> CrawlTable:
    """The crawled pages a `crawl_batch` staged (Arrow IPC; never executes anything)."""
    import pyarrow as pa

    try:
        with pa.OSFile(str(path), "rb") as source:
            table = pa.ipc.open_file(source).read_all()
        document = json.loads((table.schema.metadata or {})[_STAGING_KEY])
    except (pa.ArrowInvalid, KeyError, ValueError) as exc:
        raise ValueError(f"{path} is not a staged crawl batch ({STAGING_FORMAT}): {exc}") from None
    if not isinstance(document, dict) or document.get("format") != STAGING_FORMAT:
        raise ValueError(f"{path} is not a staged crawl batch ({STAGING_FORMAT})")
    if not table.schema.equals(PAGE_SCHEMA):
        raise ValueError(f"{path} has columns {table.schema.names}, not those of {STAGING_FORMAT}")
    return CrawlTable(table.replace_schema_metadata(None),
                      tuple(_contest_from_json(c) for c in document["contests"]))


def _contest_to_json(crawl: ContestCrawl) -> dict[str, Any]:
    return {
        "election_id": crawl.election_id,
        "contest_id": crawl.contest_id,
        "failures": [astuple(f) for f in crawl.failures],
        "pages_fetched": crawl.pages_fetched,
        "pages_not_modified": crawl.pages_not_modified,
        "pages_parsed_fast": crawl.pages_parsed_fast,
        "pages_parsed_fallback": crawl.pages_parsed_fallback,
        "pages_reused": crawl.pages_reused,
        "refused": [astuple(f) for f in crawl.refused],
    }


def _contest_from_json(doc: dict[str, Any]) -> ContestCrawl:
    return ContestCrawl(
        election_id=doc["election_id"],
        contest_id=doc["contest_id"],
        failures=tuple(FetchFailure(*f) for f in doc["failures"]),
        pages_fetched=doc["pages_fetched"],
        pages_not_modified=doc["pages_not_modified"],
        pages_parsed_fast=doc["pages_parsed_fast"],
        pages_parsed_fallback=doc["pages_parsed_fallback"],
        pages_reused=doc["pages_reused"],
        refused=tuple(FetchFailure(*f) for f in doc["refused"]),
    )


def assemble_snapshot(
    portal: str, election_id: str, batch_paths: Sequence[Path], fetched_at: str, *,
    lang: str | None = None, archive_root: Path | None = None,
    election_page: dict[str, Any] | None = None,
) -> Path:
    """Normalise staged batches into the snapshot directory `staging/<election>/<snapshot_id>`.

    `election_page` is what `detect_change` read of the election page (its detection's
    `election_page`); without it, the raw archive's latest response for its URL. The same
    portal state always lands in the same directory, so re-running adds nothing.
    """
    lang = lang or config.portal_lang()
    crawled = CrawlTable.concat([read_crawl_table(Path(path)) for path in batch_paths])
    seen = (SeenPage(**election_page) if election_page is not None
            else _archived_election_page(portal, lang, election_id, archive_root))
    meta, frames = assemble(portal, lang, election_id, seen, crawled, fetched_at)
    target = config.staging_dir() / election_id / "snapshots" / meta["snapshot_id"]
    if (target / "snapshot.json").exists():
        log.info("snapshot %s already assembled at %s", meta["snapshot_id"], target)
        return target
    incoming = target.parent / f".incoming-{uuid.uuid4().hex}"
    incoming.mkdir(parents=True)
    _merge_parsed_pages([_parsed_pages_path(Path(p)) for p in batch_paths],
                        incoming / PARSED_PAGES_FILE)
    write_snapshot(incoming, frames, meta)
    try:
        incoming.rename(target)
    except OSError:  # another run assembled the same state meanwhile
        shutil.rmtree(incoming, ignore_errors=True)
    log.info("snapshot %s assembled from %d staged batches at %s", meta["snapshot_id"],
             len(batch_paths), target)
    return target


def _archived_election_page(portal: str, lang: str, election_id: str,
                            archive_root: Path | None) -> SeenPage:
    # The election page was fetched (and archived) by detect_change: this reads the archive
    # only, so the stage can be re-run without the portal (opening the archive reads its
    # index: ~0.4 s at 50,000 precincts, which a detection's `election_page` saves).
    archive = RawArchive(archive_root or config.raw_dir())
    election_url = absolute_url(portal, election_path(lang, election_id))
    latest = archive.latest(election_url)
    if latest is None:
        raise FileNotFoundError(f"{election_url} is not in the raw archive: run detect_change first")
    return SeenPage(election_url, latest.sha256, not_modified=True)


def _merge_parsed_pages(parts: Sequence[Path], target: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    present = [part for part in parts if part.is_file()]
    if len(present) == 1:  # `etl run`'s one batch: its file is the merge (0.5 s less at 50,000 precincts)
        shutil.copyfile(present[0], target)
        return
    tables = [pq.ParquetFile(part).read() for part in present]
    if tables:
        pq.write_table(pa.concat_tables(tables), target, compression="zstd")


def warm(step: Callable[[], object], when: str) -> None:
    """Run a warm-up step ahead of the stage that needs it (`when` says when, for the log);
    if it fails, that is logged, and the stage that needs what it prepares fails loudly in
    its turn."""
    try:
        step()
    except Exception:
        log.exception("%s failed %s", getattr(step, "__name__", step), when)


def warm_imports() -> None:
    """Import what assembling, validating and loading a snapshot need (pandas, Parquet,
    DuckDB), e.g. while the crawl runs in another process: ~0.5 s off the critical path."""
    import duckdb  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import etl.alerts
    import etl.quality.gate
    import etl.warehouse.load  # noqa: F401


def warm_quality_gate() -> None:
    """Import Great Expectations and build its context now (once per process), e.g. while
    the crawl runs in another process; `validate_stage` then reuses it."""
    import pyarrow.dataset  # noqa: F401 - what pandas reads Parquet with, in the gate

    from etl.quality.suites import EXPECTATIONS_DIR, suite_runner

    suite_runner(EXPECTATIONS_DIR).warm()  # the same cache key as the gate's call


def gate_memo_path(election_id: str) -> Path:
    """The election's gate memo (`etl.quality.memo`): what GX found in the last validation."""
    return _state_dir() / f"{checked_id(election_id, 'election id')}.gate-memo.json"


@dataclass(frozen=True)
class PreviousPublished:
    """The previous published snapshot's (turnout, results) of these contests, read from
    the warehouse ahead of the gate (`etl run` reads it while its crawl runs)."""

    warehouse_url: str
    election_id: str
    contests: tuple[str, ...]
    frames: tuple[Any, Any]


def read_previous_published(warehouse_url: str, election_id: str,
                            contests: Sequence[str]) -> PreviousPublished:
    """What `validate_stage` compares a snapshot of these contests with."""
    from etl.warehouse import previous_published

    return PreviousPublished(warehouse_url, election_id, tuple(contests),
                             previous_published(warehouse_url, election_id, list(contests)))


def validate_stage(snapshot_dir: Path, warehouse_url: str,
                   previous: PreviousPublished | None = None) -> Path:
    """Run the quality gate against the previous published snapshot in the warehouse
    (`previous`, if it was read for this warehouse, election and contests, else read now).

    Writes `dq_results.parquet` into the snapshot directory and the HTML report.
    """
    from etl.memory import bound_heap_retention
    from etl.quality import validate_snapshot

    bound_heap_retention()  # the gate's frames are where a cycle's memory peaks
    meta = read_snapshot_meta(snapshot_dir)
    wanted = (warehouse_url, meta["election_id"], tuple(meta["contests"]))
    if previous is None or (previous.warehouse_url, previous.election_id,
                            previous.contests) != wanted:
        previous = read_previous_published(*wanted)
    frames = previous.frames
    outcome = validate_snapshot(snapshot_dir, previous=frames if len(frames[0]) else None,
                                memo_path=gate_memo_path(meta["election_id"]))
    log.info("snapshot %s validated: %d critical contests %s, report %s", meta["snapshot_id"],
             len(outcome.critical_contests), sorted(outcome.critical_contests),
             outcome.report_path)
    return snapshot_dir


def publish_stage(snapshot_dir: Path, warehouse_url: str, fingerprint: str | None) -> dict[str, Any]:
    """Load the validated snapshot (write-audit-publish) and remember the cycle as done."""
    from etl.warehouse import load_snapshot

    summary = load_snapshot(warehouse_url, snapshot_dir)
    meta = read_snapshot_meta(snapshot_dir)
    clock_warning = clock_went_backwards(meta["election_id"], meta["portal_updated_at"])
    if clock_warning:
        log.warning("snapshot %s: %s", summary.snapshot_id, clock_warning)
    # The cycle is marked completed by the alert stage, once its alerts are out: a cycle
    # killed between publishing and alerting is re-run (the load is idempotent, the
    # alert book sends each problem once), so no alert is lost.
    return {
        "fingerprint": fingerprint,
        "clock_warning": clock_warning,
        "snapshot_id": summary.snapshot_id,
        "election_id": summary.election_id,
        "portal_updated_at": meta["portal_updated_at"],
        "snapshot_dir": str(snapshot_dir),
        "is_new": summary.is_new,
        "pages_parsed": meta.get("pages_parsed", {}),
        "statuses": {c.contest_id: {"status": c.status, "reason": c.reason}
                     for c in summary.contests},
    }


def alert_stage(
    detection: dict[str, Any], published: dict[str, Any] | None, failure: str | None = None,
) -> list[dict[str, Any]]:
    """Send the alerts this cycle calls for, once each; log the cycle to `cycles.jsonl`.

    `failure` says why a changed portal's cycle published nothing (e.g. a deadline).
    """
    import pandas as pd

    from etl.alerts import alert_on_failed_run, alert_on_snapshot, alert_on_unchanged_portal
    from etl.report import site_dir, snapshot_page_path

    election_id = detection["election_id"]
    if detection["status"] == UNAVAILABLE:
        result = alert_on_failed_run(election_id, f"portal unavailable: {detection['reason']}")
    elif detection["status"] == UNCHANGED:
        result = alert_on_unchanged_portal(election_id)
    elif published is None:
        result = alert_on_failed_run(
            election_id, failure or "the cycle failed after the portal changed; see the Airflow task logs")
    else:
        snapshot_dir = Path(published["snapshot_dir"])
        meta = read_snapshot_meta(snapshot_dir)
        dq_results = pd.read_parquet(snapshot_dir / "dq_results.parquet")
        statuses = {c: (s["status"], s["reason"]) for c, s in published["statuses"].items()}
        # Alerts link to the snapshot's page of the night report (the `report` step writes it).
        report_page = snapshot_page_path(site_dir(election_id), meta["snapshot_id"])
        result = alert_on_snapshot(
            meta, dq_results, statuses, str(report_page),
            divisions=pd.read_parquet(snapshot_dir / "divisions.parquet"))
    sent = [{"kind": a.kind, "severity": a.severity, "contest_id": a.contest_id,
             "checks": list(a.checks), "title": a.title} for a in result.sent]
    _append_cycle_log(detection, published, sent)
    if published is not None:
        mark_completed(election_id, published.get("fingerprint", detection["fingerprint"]),
                       published["snapshot_id"], published["portal_updated_at"],
                       snapshot_dir=Path(published["snapshot_dir"]))
    return sent


def fold_archive(archive_root: Path | None = None, min_bytes: int | None = None) -> bool:
    """After a cycle's publication: checkpoint the raw archive's index if the cycle added
    much to it (`etl.archive.fold_index`; `min_bytes`, default `FOLD_AFTER_BYTES`), so
    the next change detection does not read it all first; whether it did. Only an
    optimisation: a failure is logged, never raised."""
    from etl.archive import FOLD_AFTER_BYTES, fold_index

    started = time.perf_counter()
    root = archive_root or config.raw_dir()
    try:
        if fold_index(root, FOLD_AFTER_BYTES if min_bytes is None else min_bytes):
            log.info("raw archive index at %s checkpointed in %.2fs", root,
                     time.perf_counter() - started)
            return True
    except Exception:
        log.exception("could not checkpoint the raw archive index at %s", root)
    return False


def latest_seats(warehouse_url: str, election_id: str, contest_id: str) -> list[dict[str, Any]]:
    """The seat allocation of a contest's latest published snapshot."""
    from etl.warehouse import seat_allocation

    return seat_allocation(warehouse_url, election_id, contest_id)


def reprocess_snapshots(
    election_id: str, snapshot_ids: Sequence[str], warehouse_url: str,
) -> list[dict[str, Any]]:
    """Rebuild staged snapshots from the raw archive, re-check them and reload them.

    For after a parser or gate fix: no portal access; the warehouse rows of each snapshot
    are replaced in one transaction. Alerts are not re-sent for past portal states.
    """
    from etl.quality import validate_snapshot
    from etl.scrape import rebuild_from_archive
    from etl.warehouse import load_snapshot

    # DAG params reach `rmtree` below: only plain identifiers are accepted.
    root = config.staging_dir() / checked_id(election_id, "election_id") / "snapshots"
    wanted = set(checked_ids(snapshot_ids, "snapshot id"))
    done = []
    for snapshot_dir in sorted(p for p in root.glob("*") if (p / "snapshot.json").exists()):
        if wanted and snapshot_dir.name not in wanted:
            continue
        rebuilt = snapshot_dir.parent / f".rebuild-{uuid.uuid4().hex}"
        summary = rebuild_from_archive(snapshot_dir, rebuilt)
        validate_snapshot(rebuilt)
        loaded = load_snapshot(warehouse_url, rebuilt, replace=True)
        shutil.rmtree(snapshot_dir)
        rebuilt.rename(snapshot_dir)
        done.append({"snapshot_id": summary.snapshot_id, "statuses": loaded.statuses})
        log.info("reprocessed %s: %s", summary.snapshot_id, loaded.statuses)
    missing = wanted - {d["snapshot_id"] for d in done}
    if missing:
        raise FileNotFoundError(f"no staged snapshot {', '.join(sorted(missing))} under {root}")
    return done


def cycle_log_path() -> Path:
    """One JSON line per cycle: what the portal showed, what was published, what alerted."""
    return config.data_dir() / "cycles.jsonl"


def _append_cycle_log(detection: dict[str, Any], published: dict[str, Any] | None,
                      sent: list[dict[str, Any]]) -> None:
    path = cycle_log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "checked_at": detection["checked_at"],
        "election_id": detection["election_id"],
        "portal": detection["status"],
        "reason": detection["reason"],
        "snapshot_id": published["snapshot_id"] if published else None,
        "portal_updated_at": published["portal_updated_at"] if published else None,
        "statuses": published["statuses"] if published else {},
        "clock_warning": published.get("clock_warning") if published else None,
        "pages_parsed": published.get("pages_parsed", {}) if published else {},
        "alerts": sent,
    }
    with path.open("a", encoding="utf-8") as log_file:
        log_file.write(json.dumps(record, ensure_ascii=False) + "\n")
