"""The raw archive: every portal response, content-addressed and append-only.

Layout under the archive root:
  blobs/ab/abcdef…   one file per distinct body, named by its sha256
  index.jsonl        one line per new (url, status, sha256), and again when a URL returns
                     to an earlier body: the response's URL, status, headers and when it
                     was fetched; the last 200 line of a URL is its latest page

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
        self._lock = threading.Lock()
        self._seen: set[tuple[str, int, str]] = set()
        self._latest_ok: dict[str, ArchivedResponse] = {}
        self._dirs: set[str] = set()
        self._load_index()

    def _load_index(self) -> None:
        if not self.index_path.exists():
            return
        with self.index_path.open(encoding="utf-8") as index:
            for line in index:
                if not line.strip():
                    continue
                entry = json.loads(line)
                self._remember(entry["url"], entry["status"], entry["sha256"], entry["headers"])

    def _remember(self, url: str, status: int, sha256: str, headers: dict[str, str]) -> None:
        self._seen.add((url, status, sha256))
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
            key = (url, status, sha256)
            latest = self._latest_ok.get(url)
            # A URL back at an earlier body gets a line again, so that the last line of a
            # URL is always its latest page, for the next process that opens the archive.
            if key not in self._seen or (status == 200 and latest is not None
                                         and latest.sha256 != sha256):
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
