"""The raw archive: every portal response, content-addressed and append-only.

Layout under the archive root:
  blobs/ab/abcdef…   one file per distinct body, named by its sha256
  index.jsonl        one line per new (url, status, sha256), and again when a URL returns
                     to an earlier body: the response's URL, status, headers and when it
                     was fetched; the last 200 line of a URL is its latest page

  index.checkpoint.json  what the index says up to a byte offset (each URL's latest
                     response), so that opening the archive reads only the index's tail:
                     a night's index grows to ~100,000 lines, read by every crawl process

Re-fetching an unchanged page stores nothing new. Any later stage can be re-run from
here without touching the portal (see `etl.normalise.rebuild_from_archive`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Headers worth keeping: enough to replay conditional requests and explain a failure.
# Opening the archive rewrites the checkpoint when it had to read this many index lines.
CHECKPOINT_EVERY_LINES = 2000
KEPT_HEADERS = ("etag", "last-modified", "content-type", "retry-after", "date", "content-length")


@dataclass(frozen=True)
class ArchivedResponse:
    """The archive's latest knowledge of a URL: its body and validators."""

    url: str
    status: int
    sha256: str
    etag: str | None
    last_modified: str | None


class RawArchive:
    """Content-addressed store of raw responses, safe for threads and processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.index_path = self.root / "index.jsonl"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.checkpoint_path = self.root / "index.checkpoint.json"
        self._lock = threading.Lock()
        # The latest body of each (url, status): a response equal to it adds no index line.
        self._latest: dict[tuple[str, int], str] = {}
        self._latest_ok: dict[str, ArchivedResponse] = {}
        self._dirs: set[str] = set()
        self._load_index()

    def _load_index(self) -> None:
        offset = self._load_checkpoint()
        if not self.index_path.exists():
            return
        with self.index_path.open("rb") as index:
            index.seek(offset)
            tail = index.read()
        # Only whole lines: another process may be appending one right now.
        whole = tail[: tail.rfind(b"\n") + 1]
        lines = 0
        for line in whole.splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            self._remember(entry["url"], entry["status"], entry["sha256"], entry["headers"])
            lines += 1
        if lines >= CHECKPOINT_EVERY_LINES:
            self._write_checkpoint(offset + len(whole))

    def _load_checkpoint(self) -> int:
        """Load the checkpoint; the index offset it covers (0 when there is none)."""
        try:
            checkpoint = json.loads(self.checkpoint_path.read_text(encoding="utf-8"))
            offset = int(checkpoint["offset"])
            if offset > self.index_path.stat().st_size:
                raise ValueError("the checkpoint is ahead of the index")
            for url, status, sha256, etag, last_modified in checkpoint["latest"]:
                self._latest[(url, status)] = sha256
                if status == 200:
                    self._latest_ok[url] = ArchivedResponse(url, status, sha256, etag,
                                                            last_modified)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the archive checkpoint %s (%s): reading the whole index",
                        self.checkpoint_path, exc)
            self._latest.clear()
            self._latest_ok.clear()
            return 0
        return offset

    def _write_checkpoint(self, offset: int) -> None:
        latest = []
        for (url, status), sha256 in self._latest.items():
            ok = self._latest_ok.get(url) if status == 200 else None
            latest.append([url, status, sha256, ok.etag if ok else None,
                           ok.last_modified if ok else None])
        tmp = self.checkpoint_path.with_name(
            f".{self.checkpoint_path.name}.{os.getpid()}-{threading.get_ident()}")
        tmp.write_text(json.dumps({"offset": offset, "latest": latest}, ensure_ascii=False),
                       encoding="utf-8")
        os.replace(tmp, self.checkpoint_path)

    def _remember(self, url: str, status: int, sha256: str, headers: dict[str, str]) -> None:
        self._latest[(url, status)] = sha256
        if status == 200:
            self._latest_ok[url] = ArchivedResponse(
                url, status, sha256, headers.get("etag"), headers.get("last-modified")
            )

    def blob_path(self, sha256: str) -> Path:
        """Where the body with this digest is (or would be) stored."""
        return self.blobs / sha256[:2] / sha256

    def store(
        self, url: str, status: int, headers: dict[str, str], body: bytes, fetched_at: str
    ) -> str:
        """Archive one response before anyone parses it; return the body's sha256."""
        sha256 = hashlib.sha256(body).hexdigest()
        kept = {k: v for k, v in ((k.lower(), v) for k, v in headers.items()) if k in KEPT_HEADERS}
        blob = self.blob_path(sha256)
        if not blob.exists():
            if blob.parent.name not in self._dirs:
                blob.parent.mkdir(exist_ok=True)
                self._dirs.add(blob.parent.name)
            # Write then rename, so a killed process never leaves a truncated blob behind.
            # The temporary name is unique per process and thread: no mkstemp (slow here).
            tmp = blob.parent / f".tmp-{os.getpid()}-{threading.get_ident()}"
            tmp.write_bytes(body)
            os.replace(tmp, blob)
        with self._lock:
            # A URL back at an earlier body gets a line again, so that the last line of a
            # URL is always its latest page, for the next process that opens the archive.
            if self._latest.get((url, status)) != sha256:
                line = json.dumps(
                    {"url": url, "status": status, "sha256": sha256, "fetched_at": fetched_at,
                     "headers": kept},
                    ensure_ascii=False,
                )
                self._append_index(line)
            self._remember(url, status, sha256, kept)
        return sha256

    def _append_index(self, line: str) -> None:
        # Several crawl processes may append at once: an exclusive lock keeps lines whole.
        with self.index_path.open("a", encoding="utf-8") as index:
            fcntl.flock(index, fcntl.LOCK_EX)
            index.write(line + "\n")
            index.flush()
            fcntl.flock(index, fcntl.LOCK_UN)

    def latest(self, url: str) -> ArchivedResponse | None:
        """The last 200 response archived for `url`, for a conditional request."""
        with self._lock:
            return self._latest_ok.get(url)

    def read(self, sha256: str) -> bytes:
        """The archived body with this digest."""
        return self.blob_path(sha256).read_bytes()
