"""The raw archive: every portal response, content-addressed and append-only.

Layout under the archive root:
  packs/<pid>-<id>.pack  the bodies, appended one after another by one writer (one
                     `RawArchive` of one process; threads take turns), each distinct body
                     once per writer; where a body is, is in its index line (`blob`)
  blobs/ab/abcdef…   one file per distinct body, named by its sha256: the layout before
                     packs, still read (an archive from an earlier version stays readable)
  index.jsonl        one line per new (url, status, sha256), and again when a URL returns
                     to an earlier body: the response's URL, status, headers, when it was
                     fetched, where the body is (`blob`: [pack, offset, length]), and the
                     text encoding the body was read with and how it was chosen
                     (`encoding`, `encoding_source`: header / meta / detected); the last
                     200 line of a URL is its latest page

  index.checkpoint.arrow  what the index says up to a byte offset (each URL's latest
                     response, its encoding and where its body is), in Arrow IPC columns,
                     so that opening the archive reads only the index's tail: a night's
                     index grows to ~100,000 lines a language at issue 9's scale

Why packs and not a file per body: creating a file costs an inode, and on ext4, after many
files were deleted (a test suite's or a benchmark's temporary directories), each creation
searched the inode table for 0.3-0.7 ms of kernel time here, i.e. 2-4 CPU-s of a cold
cycle's 5,000 pages; appending to an open file costs microseconds.

A write that fails (a full disk, a file-size limit) leaves nothing half-written: a body's
bytes are appended to the pack and cut off again if they did not all go in, its index line
is written only after them and is itself appended whole or cut off again, and the error is
an `ArchiveWriteError` naming the archive. A pack's tail that no index line names (a
process killed mid-write) is never read.

Re-fetching an unchanged page stores nothing new. Any later stage can be re-run from
here without touching the portal (see `etl.normalise.rebuild_from_archive`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from etl.memory import collector_paused

log = logging.getLogger(__name__)

# Headers worth keeping: enough to replay conditional requests and explain a failure.
# Opening the archive rewrites the checkpoint when it had to read this many index lines.
CHECKPOINT_EVERY_LINES = 2000
CHECKPOINT_FORMAT = "cec-archive-checkpoint/3"
# The checkpoint's columns (Arrow IPC): one row per (URL, status) latest response.
_CHECKPOINT_COLUMNS = ("url", "status", "sha256", "etag", "last_modified", "encoding", "pack",
                       "offset", "length")
KEPT_HEADERS = ("etag", "last-modified", "content-type", "retry-after", "date", "content-length")


class ArchiveWriteError(OSError):
    """The archive could not store a response (disk full, file-size limit, permissions)."""


class ArchivedResponse(NamedTuple):
    """The archive's latest knowledge of a URL: its body and validators (a tuple: opening
    the archive makes one per URL, ~100,000 at issue 9's scale, and a frozen dataclass's
    constructor cost ~4 µs each)."""

    url: str
    status: int
    sha256: str
    etag: str | None
    last_modified: str | None
    encoding: str | None = None


class _HeldLine(NamedTuple):
    """An index line held back by `index_lines_batched`, with what its store replaced."""

    line: str
    url: str
    status: int
    latest_before: str | None
    ok_before: ArchivedResponse | None


class RawArchive:
    """Content-addressed store of raw responses, safe for threads and processes (each
    process writes its own pack)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"  # the layout before packs: read, never written
        self.packs = self.root / "packs"
        self.index_path = self.root / "index.jsonl"
        self.packs.mkdir(parents=True, exist_ok=True)
        self.checkpoint_path = self.root / "index.checkpoint.arrow"
        self._lock = threading.Lock()
        # A thread's index lines held back until its `index_lines_batched` block ends.
        self._held = threading.local()
        # The latest body of each (url, status): a response equal to it adds no index line.
        self._latest: dict[tuple[str, int], str] = {}
        self._latest_ok: dict[str, ArchivedResponse] = {}
        self._encodings: dict[tuple[str, str], str] = {}
        # Where each body is: sha256 -> (pack, offset, length); not here = a legacy blob file.
        self._locations: dict[str, tuple[str, int, int]] = {}
        self._legacy_blobs = self.blobs.is_dir()
        # This writer's pack: opened on its first new body (a cycle that stores nothing
        # makes no file), appended to by this instance only.
        self._pack: io.FileIO | None = None
        self._pack_name = ""
        self._pack_pid = 0
        self._pack_size = 0
        self._index_offset = 0  # how far of the index this instance has read
        self._whole_index_read = False
        self._load_index()

    def _load_index(self) -> None:
        # Without the cyclic collector: the ~100,000 tuples a large portal's entries make
        # set off collections that scan everything made so far (0.2 of 0.6 s at 100,000
        # URLs); nothing made here is cyclic.
        with collector_paused():
            offset = self._load_checkpoint()
            lines = self._read_index_tail(offset)
            if lines >= CHECKPOINT_EVERY_LINES:
                self._write_checkpoint(self._index_offset)

    def _read_index_tail(self, offset: int) -> int:
        """Remember the index's whole lines from `offset` on; how many there were."""
        self._index_offset = offset
        if not self.index_path.exists():
            return 0
        with self.index_path.open("rb") as index:
            index.seek(offset)
            tail = index.read()
        # Only whole lines: another process may be appending one right now.
        whole = tail[: tail.rfind(b"\n") + 1]
        lines = 0
        for entry in self._entries(whole, offset):
            self._remember(entry["url"], entry["status"], entry["sha256"], entry["headers"],
                           entry.get("encoding"), entry.get("blob"))
            lines += 1
        self._index_offset = offset + len(whole)
        return lines

    def _entries(self, whole: bytes, offset: int) -> list[dict[str, Any]]:
        """The index entries in `whole` (whole lines): parsed in one go, line by line only
        when a line is torn."""
        try:  # one JSON document of every line: ~3x faster than a json.loads per line
            entries: list[dict[str, Any]] = json.loads(
                b"[" + b",".join(line for line in whole.splitlines() if line.strip()) + b"]")
            return entries
        except json.JSONDecodeError:
            pass
        entries = []
        for number, line in enumerate(whole.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                # Only a process killed before whole-line appends existed can leave a torn
                # line; the response it described is fetched again.
                log.warning("%s line %d after offset %d is not a whole entry; ignored",
                            self.index_path, number, offset)
        return entries

    def _load_checkpoint(self) -> int:
        """Load the checkpoint; the index offset it covers (0 when there is none)."""
        import pyarrow as pa

        try:
            with pa.memory_map(str(self.checkpoint_path)) as source:
                table = pa.ipc.open_file(source).read_all()
            offset = _covered_offset(table.schema.metadata, self.index_path)
            if tuple(table.column_names) != _CHECKPOINT_COLUMNS:
                raise ValueError(f"columns {table.column_names}")
            columns = [table.column(name).to_pylist() for name in _CHECKPOINT_COLUMNS]
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:
            log.warning("ignoring the archive checkpoint %s (%s): reading the whole index",
                        self.checkpoint_path, exc)
            return 0
        urls, statuses, sha256s, etags, modified, encodings, packs, starts, lengths = columns
        self._latest.update(zip(zip(urls, statuses, strict=True), sha256s, strict=True))
        self._encodings.update(((url, sha256), encoding) for url, sha256, encoding
                               in zip(urls, sha256s, encodings, strict=True) if encoding)
        self._locations.update((sha256, (pack, start, length)) for sha256, pack, start, length
                               in zip(sha256s, packs, starts, lengths, strict=True)
                               if pack is not None)
        self._latest_ok.update(
            (row[0], ArchivedResponse._make(row)) for row
            in zip(urls, statuses, sha256s, etags, modified, encodings, strict=True)
            if row[1] == 200)
        return offset

    def _write_checkpoint(self, offset: int) -> None:
        # Only each URL's latest responses: what a crawl needs (conditional requests, a 304's
        # body), so the checkpoint stays the size of the portal however long the night.
        import pyarrow as pa

        keys = list(self._latest)
        sha256s = list(self._latest.values())
        ok = [self._latest_ok.get(url) if status == 200 else None for url, status in keys]
        where = [self._locations.get(sha256) for sha256 in sha256s]
        columns = {
            "url": pa.array([url for url, _ in keys], pa.string()),
            "status": pa.array([status for _, status in keys], pa.int32()),
            "sha256": pa.array(sha256s, pa.string()),
            "etag": pa.array([r.etag if r else None for r in ok], pa.string()),
            "last_modified": pa.array([r.last_modified if r else None for r in ok], pa.string()),
            "encoding": pa.array([self._encodings.get(key) for key in zip(
                (url for url, _ in keys), sha256s, strict=True)], pa.string()),
            "pack": pa.array([w[0] if w else None for w in where], pa.string()),
            "offset": pa.array([w[1] if w else None for w in where], pa.int64()),
            "length": pa.array([w[2] if w else None for w in where], pa.int64()),
        }
        table = pa.table(columns).replace_schema_metadata(
            {"format": CHECKPOINT_FORMAT, "offset": str(offset)})
        tmp = self.checkpoint_path.with_name(
            f".{self.checkpoint_path.name}.{os.getpid()}-{threading.get_ident()}")
        try:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            os.replace(tmp, self.checkpoint_path)
        except OSError as exc:  # only an optimisation: a full disk must not stop a reader
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.warning("could not write the archive checkpoint %s: %s", self.checkpoint_path, exc)
        # The JSON checkpoint of earlier versions, if any, is not read any more.
        with contextlib.suppress(OSError):
            (self.root / "index.checkpoint.json").unlink()

    @property
    def index_offset(self) -> int:
        """How far into the index this instance has read."""
        return self._index_offset

    def checkpoint(self) -> None:
        """Write the checkpoint of what this instance has read of the index."""
        with self._lock, collector_paused():
            self._write_checkpoint(self._index_offset)

    def _read_whole_index(self) -> None:
        """Remember every index line, once: for a body or an encoding that is no URL's
        latest (reprocessing an earlier snapshot), which the checkpoint does not keep."""
        if not self._whole_index_read:
            self._whole_index_read = True
            self._read_index_tail(0)

    def _remember(
        self, url: str, status: int, sha256: str, headers: dict[str, str],
        encoding: str | None = None, blob: list[Any] | tuple[str, int, int] | None = None,
    ) -> None:
        self._latest[(url, status)] = sha256
        if blob is not None:
            pack, start, length = blob
            self._locations[sha256] = (pack, start, length)
        if encoding:
            self._encodings[(url, sha256)] = encoding
        if status == 200:
            self._latest_ok[url] = ArchivedResponse(
                url, status, sha256, headers.get("etag"), headers.get("last-modified"), encoding
            )

    def blob_path(self, sha256: str) -> Path:
        """Where a body of the layout before packs is (or would be) stored."""
        return self.blobs / sha256[:2] / sha256

    def store(
        self, url: str, status: int, headers: dict[str, str], body: bytes, fetched_at: str,
        *, encoding: str | None = None, encoding_source: str | None = None,
    ) -> str:
        """Archive one response before anyone parses it; return the body's sha256.

        `encoding` and `encoding_source` say how the body's text is to be read (see
        `etl.parse.page_encoding`); they go into the index entry.
        """
        sha256 = hashlib.sha256(body).hexdigest()
        kept = {k: v for k, v in ((k.lower(), v) for k, v in headers.items()) if k in KEPT_HEADERS}
        with self._lock:
            where = self._locations.get(sha256)
            written = where is None and not self._in_legacy_blob(sha256)
            if written:
                where = self._append_body(body)
            # A URL back at an earlier body gets a line again, so that the last line of a
            # URL is always its latest page, for the next process that opens the archive.
            if written or self._latest.get((url, status)) != sha256:
                entry: dict[str, object] = {"url": url, "status": status, "sha256": sha256,
                                            "fetched_at": fetched_at, "headers": kept}
                if where is not None:
                    entry["blob"] = list(where)
                if encoding:
                    entry["encoding"] = encoding
                    entry["encoding_source"] = encoding_source
                line = json.dumps(entry, ensure_ascii=False)
                held: list[_HeldLine] | None = getattr(self._held, "lines", None)
                if held is None:
                    self._append_index([line])
                else:  # with what to put back if the lines cannot be written after all
                    held.append(_HeldLine(line, url, status, self._latest.get((url, status)),
                                          self._latest_ok.get(url)))
            self._remember(url, status, sha256, kept, encoding, where)
        return sha256

    @contextlib.contextmanager
    def index_lines_batched(self) -> Iterator[None]:
        """Within this block, the index lines of this thread's `store` calls are appended
        together when it ends (one locked write instead of one per response: a crawl
        worker's batch of pages), also when it ends by an exception. Bodies go to the pack
        at once as always, and this instance knows them at once; other processes find
        them once the block has ended. Nested blocks: the outermost one writes."""
        if getattr(self._held, "lines", None) is not None:
            yield
            return
        self._held.lines = []
        try:
            yield
        finally:
            held: list[_HeldLine] = self._held.lines
            self._held.lines = None
            if held:
                try:
                    self._append_index([entry.line for entry in held])
                except ArchiveWriteError:
                    self._forget(held)
                    raise

    def _forget(self, held: Sequence[_HeldLine]) -> None:
        """Unlearn what stores whose index lines could not be written taught this instance
        (latest first), so that storing those pages again writes their lines."""
        with self._lock:
            for entry in reversed(held):
                if entry.latest_before is None:
                    self._latest.pop((entry.url, entry.status), None)
                else:
                    self._latest[(entry.url, entry.status)] = entry.latest_before
                if entry.status == 200:
                    if entry.ok_before is None:
                        self._latest_ok.pop(entry.url, None)
                    else:
                        self._latest_ok[entry.url] = entry.ok_before

    def _in_legacy_blob(self, sha256: str) -> bool:
        return self._legacy_blobs and self.blob_path(sha256).exists()

    def _append_body(self, body: bytes) -> tuple[str, int, int]:
        """Append a body to this writer's pack (under the lock); where it went.

        All of it or nothing: a short or failed write is cut off again.
        """
        try:
            if self._pack is None or self._pack_pid != os.getpid():  # a forked child: its own
                self._pack_name = f"{os.getpid()}-{secrets.token_hex(4)}.pack"
                self._pack = open(self.packs / self._pack_name, "ab", buffering=0)  # noqa: SIM115
                self._pack_pid, self._pack_size = os.getpid(), 0
            start = self._pack_size
            try:
                view = memoryview(body)
                while view:
                    written = self._pack.write(view)
                    if not written:
                        raise OSError(errno.ENOSPC, "the pack took no more bytes")
                    view = view[written:]
            except OSError:
                os.ftruncate(self._pack.fileno(), start)
                raise
        except OSError as exc:
            raise ArchiveWriteError(
                exc.errno, f"cannot write to the raw archive {self.root}: {exc.strerror or exc}"
            ) from exc
        self._pack_size = start + len(body)
        return self._pack_name, start, len(body)

    def close(self) -> None:
        """Close this writer's pack (a later `store` starts another)."""
        with self._lock:
            if self._pack is not None:
                self._pack.close()
                self._pack = None

    def _append_index(self, lines: Sequence[str]) -> None:
        # Several crawl processes may append at once: an exclusive lock keeps lines whole.
        # One write of the whole lines; if the disk takes only part of them, cut it off
        # again so the index never holds half an entry.
        data = "".join(f"{line}\n" for line in lines).encode("utf-8")
        try:
            fd = os.open(self.index_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                size = os.fstat(fd).st_size
                try:
                    written = os.write(fd, data)
                    if written != len(data):
                        raise OSError(errno.ENOSPC,
                                      f"only {written} of {len(data)} bytes written")
                except OSError:
                    os.ftruncate(fd, size)
                    raise
            finally:
                os.close(fd)  # closing releases the lock
        except OSError as exc:
            raise ArchiveWriteError(
                exc.errno,
                f"cannot write to the raw archive index {self.index_path}: {exc.strerror or exc}",
            ) from exc

    def catch_up(self, max_bytes: int | None = None) -> bool:
        """Remember the index lines other processes appended since this instance read it;
        False if the index is no longer the one it read (replaced or cut short), or if more
        than `max_bytes` of it are new (then the caller had better open it anew)."""
        with self._lock:
            try:
                size = self.index_path.stat().st_size
            except FileNotFoundError:
                return self._index_offset == 0
            if size < self._index_offset:
                return False
            if max_bytes is not None and size - self._index_offset > max_bytes:
                return False
            self._read_index_tail(self._index_offset)
            return True

    def latest(self, url: str) -> ArchivedResponse | None:
        """The last 200 response archived for `url`, for a conditional request."""
        with self._lock:
            return self._latest_ok.get(url)

    def encoding_of(self, url: str, sha256: str) -> str | None:
        """The encoding the archived body of `url` was read with, if the index says."""
        with self._lock:
            if (url, sha256) not in self._encodings:
                self._read_whole_index()
            return self._encodings.get((url, sha256))

    def read(self, sha256: str) -> bytes:
        """The archived body with this digest (`FileNotFoundError` if there is none)."""
        with self._lock:
            where = self._locations.get(sha256)
            if where is None:  # another process may have stored it since this one opened
                self._read_index_tail(self._index_offset)
                where = self._locations.get(sha256)
            if where is None:  # or it is an earlier body, which the checkpoint does not keep
                self._read_whole_index()
                where = self._locations.get(sha256)
        if where is None:
            return self.blob_path(sha256).read_bytes()
        pack, start, length = where
        fd = os.open(self.packs / pack, os.O_RDONLY)
        try:
            body = os.pread(fd, length, start)
        finally:
            os.close(fd)
        if len(body) != length:
            raise ArchiveWriteError(errno.EIO, f"raw archive {self.root}: pack {pack} is shorter "
                                               f"than its index says ({sha256[:12]})")
        return body


# One open archive per root and process, shared by the change detection and the crawl,
# whose processes inherit it when they fork: opening an archive reads its checkpoint and
# remembers every URL's latest response (~0.85 s at 100,000 precincts), which each crawl
# worker used to pay again before its first fetch.
_SHARED: dict[Path, tuple[RawArchive, tuple[int, int, bytes] | None]] = {}
# About CHECKPOINT_EVERY_LINES index lines (~500 bytes each).
SHARED_CATCH_UP_BYTES = 1_000_000


def shared_archive(root: Path) -> RawArchive:
    """This process's open archive at `root` (inherited from the parent after a fork),
    caught up with what other processes appended; a new one the first time, or if the
    index was replaced meanwhile."""
    key = Path(root).resolve()
    held = _SHARED.get(key)
    identity = _index_identity(key)
    if held is not None:
        archive, known = held
        # The same index file as when it was opened (or it had none then), not cut short,
        # and not a whole cycle's lines further on: what an instance remembers of lines it
        # read grows with them (every body's location), an archive opened anew only with
        # the portal (its checkpoint keeps each URL's latest), e.g. across the DAG runs of
        # one long-lived process.
        if known in (None, identity) and archive.catch_up(max_bytes=SHARED_CATCH_UP_BYTES):
            _SHARED[key] = (archive, identity)
            return archive
    archive = RawArchive(key)
    _SHARED[key] = (archive, _index_identity(key))
    return archive


# An index tail from which folding at a cycle's end pays: opening the archive to fold it
# costs about what reading ~30,000 lines (~16 MB) does, at 100,000 precincts (reading its
# checkpoint: ~0.35 s). A cold cycle there appends ~101,000 lines; an incremental one, ~5,000.
FOLD_AFTER_BYTES = 16_000_000


def fold_index(root: Path, min_bytes: int = FOLD_AFTER_BYTES) -> bool:
    """Write the archive's checkpoint if its index grew by `min_bytes` or more since the
    last one; whether it did.

    For the end of a cycle, once its results are published: otherwise the next cycle's
    change detection, on the way to the next results, reads those lines as JSON first
    (after a cold cycle at 100,000 precincts: ~101,000 lines, ~1.2 s). A shorter tail is
    left to that opening, which costs less than opening the archive once more to fold it.
    """
    root = Path(root)
    index, checkpoint = root / "index.jsonl", root / "index.checkpoint.arrow"
    try:
        size = index.stat().st_size
    except FileNotFoundError:
        return False
    if size - _checkpoint_offset(checkpoint, index) < min_bytes:
        return False
    archive = RawArchive(root)  # reads the lines after the checkpoint; many: writes a new one
    if _checkpoint_offset(checkpoint, index) < archive.index_offset:
        archive.checkpoint()
    return True


def _checkpoint_offset(checkpoint: Path, index: Path) -> int:
    """How far into `index` the `checkpoint` reaches (its footer only); 0 if it is not one
    that opening the archive would use."""
    import pyarrow as pa

    try:
        with pa.memory_map(str(checkpoint)) as source:
            return _covered_offset(pa.ipc.open_file(source).schema.metadata, index)
    except (OSError, ValueError, KeyError, pa.ArrowException):
        return 0


def _covered_offset(metadata: dict[bytes, bytes] | None, index: Path) -> int:
    """The index offset a checkpoint's metadata says it covers; `ValueError` (or
    `KeyError`) if it is not of this format or is ahead of the index (replaced, cut short)."""
    metadata = metadata or {}
    if metadata.get(b"format") != CHECKPOINT_FORMAT.encode():
        raise ValueError(f"format {metadata.get(b'format')!r}, not {CHECKPOINT_FORMAT}")
    offset = int(metadata[b"offset"])
    if offset > index.stat().st_size:
        raise ValueError("the checkpoint is ahead of the index")
    return offset


def forget_shared_archives() -> None:
    """Drop this process's shared archives (e.g. once a forked child has taken them over)."""
    _SHARED.clear()


def _index_identity(root: Path) -> tuple[int, int, bytes] | None:
    # The file and its first line (a URL and a time): a directory wiped and made again can
    # give the new index the old one's inode number, never its first line as well.
    try:
        with (root / "index.jsonl").open("rb") as index:
            stat = os.fstat(index.fileno())
            return stat.st_dev, stat.st_ino, index.readline(4096)
    except FileNotFoundError:
        return None
