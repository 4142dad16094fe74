"""One election-night cycle, stage by stage: detect → crawl → assemble → validate → publish → alert.

The CLI (`python -m etl run`) calls these functions in order; the Airflow DAG calls each
from its own task. Stages hand each other paths and small dicts, never frames.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from etl import config
from etl.archive import RawArchive
from etl.crawl import ContestCrawl, SourceSpec, contest_path, crawl_contests, election_path
from etl.fetch import FetchedPage, FetchError, PortalClient, utc_now
from etl.normalise import build_frames, write_snapshot
from etl.parse import PageParseError, parse_election
from etl.scrape import snapshot_meta

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

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, for XCom."""
        return asdict(self)


def _state_path(election_id: str) -> Path:
    return config.data_dir() / "state" / f"{election_id}.json"


def last_completed_fingerprint(election_id: str) -> str | None:
    """Fingerprint of the portal state the last completed cycle processed."""
    path = _state_path(election_id)
    if not path.exists():
        return None
    value = json.loads(path.read_text(encoding="utf-8")).get("fingerprint")
    return str(value) if value else None


def mark_completed(election_id: str, fingerprint: str | None, snapshot_id: str | None) -> None:
    """Remember that the cycle for this portal state finished (published or quarantined)."""
    path = _state_path(election_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"fingerprint": fingerprint, "snapshot_id": snapshot_id,
                               "completed_at": utc_now()}), encoding="utf-8")
    os.replace(tmp, path)


def detect_change(
    portal: str, election_id: str, *, contests: Sequence[str] | None = None,
    lang: str | None = None, archive_root: Path | None = None,
) -> Detection:
    """Conditional requests for the election page and each contest's root page.

    The portal's `updated` time is on every page, so a root page that did not change means
    its contest did not change. The fingerprint of those pages is compared with the last
    *completed* cycle's, so a cycle that died half-way is retried, not skipped.
    """
    lang = lang or config.portal_lang()
    client = PortalClient(portal, RawArchive(archive_root or config.raw_dir()))
    checked_at = utc_now()
    try:
        election_page = client.fetch(election_path(lang, election_id))
        election = parse_election(election_page.body, election_page.url)
        listed = [link.segment for link in election.contests]
        selected = [c for c in listed if not contests or c in set(contests)]
        roots: list[FetchedPage] = [client.fetch(contest_path(lang, election_id, c))
                                    for c in selected]
    except (FetchError, PageParseError) as exc:
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
    return Detection(status, election_id, tuple(selected), fingerprint, None, checked_at)


def plan_batches(contests: Sequence[str], batches: int) -> list[list[str]]:
    """Split contests into at most `batches` groups for mapped crawl tasks (round robin)."""
    count = max(1, min(batches, len(contests)))
    return [list(contests[i::count]) for i in range(count)]


def run_dir(election_id: str, run_key: str) -> Path:
    """Staging directory of one cycle (crawled batches, then the snapshot)."""
    return config.staging_dir() / election_id / "runs" / run_key


def crawl_batch(
    portal: str, election_id: str, contests: Sequence[str], out_path: Path, *,
    lang: str | None = None, processes: int | None = None, concurrency: int | None = None,
) -> Path:
    """Crawl a batch of contests and stage the parsed pages (a pickle for the next task)."""
    spec = SourceSpec(portal, config.raw_dir(), pool_size=concurrency or config.concurrency())
    crawls = crawl_contests(spec, lang or config.portal_lang(), election_id, contests,
                            concurrency=concurrency or config.concurrency(),
                            processes=processes or config.crawl_processes())
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp")
    # Pickle, not JSON: this file lives only between two tasks of the same code version.
    with tmp.open("wb") as staged:
        pickle.dump(crawls, staged, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, out_path)
    return out_path


def assemble_snapshot(
    portal: str, election_id: str, batch_paths: Sequence[Path], fetched_at: str, *,
    lang: str | None = None,
) -> Path:
    """Normalise staged batches into the snapshot directory `staging/<election>/<snapshot_id>`.

    The same portal state always lands in the same directory, so re-running adds nothing.
    """
    lang = lang or config.portal_lang()
    crawls: list[ContestCrawl] = []
    for path in batch_paths:
        with Path(path).open("rb") as staged:
            crawls.extend(pickle.load(staged))  # our own staging file, written by crawl_batch
    # The election page was fetched (and archived) by detect_change: this stage reads the
    # archive only, so it can be re-run without the portal.
    archive = RawArchive(config.raw_dir())
    election_url = portal.rstrip("/") + election_path(lang, election_id)
    latest = archive.latest(election_url)
    if latest is None:
        raise FileNotFoundError(f"{election_url} is not in the raw archive: run detect_change first")
    election_page = FetchedPage(election_url, 200, archive.read(latest.sha256), latest.sha256,
                                not_modified=True)
    meta = snapshot_meta(portal, lang, election_id, election_page, crawls, fetched_at)
    target = config.staging_dir() / election_id / "snapshots" / meta["snapshot_id"]
    if (target / "snapshot.json").exists():
        log.info("snapshot %s already assembled at %s", meta["snapshot_id"], target)
        return target
    incoming = target.parent / f".incoming-{uuid.uuid4().hex}"
    write_snapshot(incoming, build_frames(meta["snapshot_id"], election_id, crawls), meta)
    try:
        incoming.rename(target)
    except OSError:  # another run assembled the same state meanwhile
        shutil.rmtree(incoming, ignore_errors=True)
    return target

