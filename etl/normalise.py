"""Turn crawled pages into the tidy frames of one snapshot, and read/write snapshot dirs.

A snapshot directory holds `divisions.parquet`, `turnout.parquet`, `results.parquet` and
`snapshot.json` (metadata, failures and the archived page of every URL used). The JSON
is written last: a directory without it is an interrupted write, not a snapshot.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from etl import schema
from etl.records import FetchFailure, PageRef

if TYPE_CHECKING:
    from etl.crawl import ContestCrawl

log = logging.getLogger(__name__)

SNAPSHOT_META_FILE = "snapshot.json"


@dataclass(frozen=True)
class SnapshotFrames:
    """The three normalised frames of one snapshot (columns per `etl.schema`)."""

    divisions: pd.DataFrame
    turnout: pd.DataFrame
    results: pd.DataFrame

    def row_counts(self) -> dict[str, int]:
        """Rows per frame, for logs and summaries."""
        return {name: len(getattr(self, name)) for name in schema.FRAMES}


def snapshot_id_for(
    election_id: str,
    portal_updated_at: datetime | None,
    pages: Iterable[PageRef],
    failures: Iterable[FetchFailure],
) -> str:
    """Deterministic id: the same portal state (time and page contents) gives the same id."""
    digest = hashlib.sha256()
    for url, sha256 in sorted((p.url, p.sha256) for p in pages):
        digest.update(f"{url}\t{sha256}\n".encode())
    for url in sorted(f.url for f in failures):
        digest.update(f"{url}\tfailed\n".encode())
    stamp = portal_updated_at.strftime("%Y%m%dT%H%M%S") if portal_updated_at else "undated"
    return f"{election_id}-{stamp}-{digest.hexdigest()[:12]}"


def portal_time(crawls: Sequence[ContestCrawl]) -> datetime | None:
    """The portal's own `updated` time of a snapshot: the latest any page declares."""
    times = [d.page.portal_updated_at for c in crawls for d in c.divisions if d.page.portal_updated_at]
    return max(times) if times else None


def build_frames(snapshot_id: str, election_id: str, crawls: Sequence[ContestCrawl]) -> SnapshotFrames:
    """Build the divisions, turnout and results frames from crawled contests."""
    div_cols: dict[str, list[Any]] = {c: [] for c in schema.DIVISIONS}
    turn_cols: dict[str, list[Any]] = {c: [] for c in schema.TURNOUT}
    res_cols: dict[str, list[Any]] = {c: [] for c in schema.RESULTS}
    for crawl in crawls:
        for division in crawl.divisions:
            page = division.page
            key = (snapshot_id, election_id, crawl.contest_id, division.division_id)
            for column, value in zip(("snapshot_id", "election_id", "contest_id", "division_id"),
                                     key, strict=True):
                div_cols[column].append(value)
                turn_cols[column].append(value)
            div_cols["parent_id"].append(division.parent_id)
            div_cols["level"].append(page.level)
            div_cols["name"].append(page.name)
            protocol = page.protocol
            for column in schema.TURNOUT:
                if column not in div_cols:
                    turn_cols[column].append(getattr(protocol, column))
            cast = protocol.ballots_cast
            for line in page.lines:
                for column, value in zip(("snapshot_id", "election_id", "contest_id",
                                          "division_id"), key, strict=True):
                    res_cols[column].append(value)
                res_cols["choice_position"].append(line.choice_position)
                res_cols["choice_name"].append(line.choice_name)
                res_cols["is_against_all"].append(line.is_against_all)
                res_cols["votes"].append(line.votes)
                res_cols["pct_published"].append(line.pct_published)
                res_cols["pct_computed"].append(
                    line.votes / cast * 100 if line.votes is not None and cast else None
                )
    return SnapshotFrames(
        divisions=_typed(div_cols, schema.DIVISIONS),
        turnout=_typed(turn_cols, schema.TURNOUT),
        results=_typed(res_cols, schema.RESULTS),
    )


def _typed(columns: dict[str, list[Any]], dtypes: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({name: pd.array(values, dtype=dtypes[name]) for name, values in columns.items()})


def write_snapshot(out_dir: Path, frames: SnapshotFrames, meta: dict[str, Any]) -> None:
    """Write the frames and `snapshot.json` (last, so its presence means complete)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SNAPSHOT_META_FILE).unlink(missing_ok=True)
    for name in schema.FRAMES:
        tmp = out_dir / f".{name}.parquet.tmp"
        getattr(frames, name).to_parquet(tmp, index=False)
        os.replace(tmp, out_dir / f"{name}.parquet")
    tmp_meta = out_dir / f".{SNAPSHOT_META_FILE}.tmp"
    tmp_meta.write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp_meta, out_dir / SNAPSHOT_META_FILE)


class SnapshotDirError(ValueError):
    """A directory that is not a complete, readable snapshot; the message says why."""


def read_snapshot_meta(snapshot_dir: Path) -> dict[str, Any]:
    """`snapshot.json` of a snapshot directory, or a SnapshotDirError saying why not."""
    if not snapshot_dir.is_dir():
        raise SnapshotDirError(f"{snapshot_dir} is not a directory")
    path = snapshot_dir / SNAPSHOT_META_FILE
    if not path.is_file():
        raise SnapshotDirError(
            f"{snapshot_dir} is not a complete snapshot: {SNAPSHOT_META_FILE} missing "
            "(an interrupted scrape writes it last)"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SnapshotDirError(f"{path} is unreadable: {exc}") from exc
    if not isinstance(meta, dict) or not meta.get("snapshot_id"):
        raise SnapshotDirError(f"{path} has no snapshot_id")
    return meta


def read_snapshot_frames(snapshot_dir: Path) -> dict[str, pd.DataFrame]:
    """The divisions, turnout and results frames of a snapshot directory, typed."""
    frames = {}
    for name, columns in schema.FRAMES.items():
        path = snapshot_dir / f"{name}.parquet"
        if not path.is_file():
            raise SnapshotDirError(f"{snapshot_dir} is not a snapshot: {path.name} missing")
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise SnapshotDirError(f"{path} is unreadable: {exc}") from exc
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise SnapshotDirError(f"{path} lacks columns {', '.join(missing)}")
        frames[name] = frame[list(columns)].astype(columns)
    return frames
