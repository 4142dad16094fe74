"""The raw archive: content-addressed, append-only, nothing new for an unchanged page."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import resource
import signal
from pathlib import Path
from typing import Any

import pytest

from etl.archive import ArchiveWriteError, RawArchive, forget_shared_archives, shared_archive


def _pack_sizes(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (root / "packs").iterdir()}


def _index_lines(root: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (root / "index.jsonl").read_text().splitlines()]


def test_store_is_content_addressed_and_idempotent(tmp_path: Path) -> None:
    archive = RawArchive(tmp_path / "raw")
    body = "<h1>Чуйская область</h1>".encode()
    headers = {"ETag": '"abc"', "Last-Modified": "Sun, 28 Nov 2021 15:05:13 GMT", "X-Other": "1"}
    sha = archive.store("http://p/ru/results/jk2021/list/7/", 200, headers, body, "t1")
    assert sha == hashlib.sha256(body).hexdigest()
    assert archive.read(sha) == body

    # The same response again (a later cycle on an unchanged page) stores nothing new.
    packs_before = _pack_sizes(tmp_path / "raw")
    archive.store("http://p/ru/results/jk2021/list/7/", 200, headers, body, "t2")
    RawArchive(tmp_path / "raw").store("http://p/ru/results/jk2021/list/7/", 200, headers, body, "t3")
    assert _pack_sizes(tmp_path / "raw") == packs_before
    assert sum(packs_before.values()) == len(body)  # the body, once
    lines = _index_lines(tmp_path / "raw")
    assert len(lines) == 1
    assert lines[0]["headers"] == {"etag": '"abc"', "last-modified": headers["Last-Modified"]}
    assert lines[0]["fetched_at"] == "t1"


def test_error_responses_are_archived_and_latest_tracks_ok_pages(tmp_path: Path) -> None:
    archive = RawArchive(tmp_path / "raw")
    url = "http://p/ru/results/jk2021/"
    archive.store(url, 503, {"Retry-After": "2"}, b"busy", "t1")
    assert archive.latest(url) is None  # a 503 body is kept, but never used as the page
    archive.store(url, 200, {"ETag": '"v1"'}, b"v1", "t2")
    archive.store(url, 200, {"ETag": '"v2"'}, b"v2", "t3")
    assert archive.latest(url) is not None
    assert archive.latest(url).etag == '"v2"'  # type: ignore[union-attr]
    assert [line["status"] for line in _index_lines(tmp_path / "raw")] == [503, 200, 200]

    # A new process reading the archive knows the same latest page.
    reopened = RawArchive(tmp_path / "raw")
    latest = reopened.latest(url)
    assert latest is not None and reopened.read(latest.sha256) == b"v2"


def _store_many(root: str, worker: int) -> None:
    archive = RawArchive(Path(root))
    for i in range(200):
        archive.store(f"http://p/{worker}/{i}", 200, {}, f"{worker}-{i}".encode(), "t")


def test_concurrent_processes_keep_every_index_line_whole(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    RawArchive(root)
    procs = [multiprocessing.Process(target=_store_many, args=(str(root), w)) for w in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    lines = _index_lines(root)  # json.loads fails on an interleaved line
    assert len(lines) == 600
    assert len({line["url"] for line in lines}) == 600


def test_a_url_back_at_an_earlier_body_is_its_latest_after_reopening(tmp_path: Path) -> None:
    archive = RawArchive(tmp_path / "raw")
    url = "http://p/ru/results/jk2021/"
    for version in (b"v1", b"v2", b"v1"):  # the portal went back to an earlier page
        archive.store(url, 200, {"ETag": version.decode()}, version, "t")
    assert archive.latest(url).etag == "v1"  # type: ignore[union-attr]
    reopened = RawArchive(tmp_path / "raw").latest(url)
    assert reopened is not None and reopened.etag == "v1"
    assert reopened.sha256 == hashlib.sha256(b"v1").hexdigest()


def _checkpoint(root: Path) -> dict[str, int]:
    """The checkpoint's index offset and how many responses it holds."""
    import pyarrow as pa

    with pa.memory_map(str(root / "index.checkpoint.arrow")) as source:
        table = pa.ipc.open_file(source).read_all()
    return {"offset": int(table.schema.metadata[b"offset"]), "rows": table.num_rows}


def test_opening_reads_only_the_index_tail_after_a_checkpoint(tmp_path: Path) -> None:
    from etl.archive import CHECKPOINT_EVERY_LINES

    root = tmp_path / "raw"
    archive = RawArchive(root)
    urls = [f"http://p/ru/results/jk2021/list/{i}/" for i in range(CHECKPOINT_EVERY_LINES + 10)]
    for url in urls:
        archive.store(url, 200, {"ETag": f'"{url}"'}, url.encode(), "t")
    assert not (root / "index.checkpoint.arrow").exists()
    RawArchive(root)  # read the whole index once: it writes the checkpoint
    checkpoint = _checkpoint(root)
    assert checkpoint["offset"] == (root / "index.jsonl").stat().st_size
    archive.store(urls[0], 200, {"ETag": '"new"'}, b"new", "t2")  # after the checkpoint

    # The checkpoint stands for the lines before its offset: opening does not read them
    # (here they are made unreadable, and opening still knows every URL's latest page).
    index = (root / "index.jsonl").read_bytes()
    head, tail = index[: checkpoint["offset"]], index[checkpoint["offset"]:]
    (root / "index.jsonl").write_bytes(b"#" * (len(head) - 1) + b"\n" + tail)
    reopened = RawArchive(root)
    assert reopened.latest(urls[0]).etag == '"new"'  # type: ignore[union-attr]
    assert all(reopened.latest(url).etag == f'"{url}"'  # type: ignore[union-attr]
               for url in urls[1:])

    # A damaged checkpoint is ignored: the whole index is read instead, with the same result.
    (root / "index.jsonl").write_bytes(index)
    (root / "index.checkpoint.arrow").write_text("not Arrow")
    again = RawArchive(root)
    assert again.latest(urls[0]).etag == '"new"'  # type: ignore[union-attr]
    assert again.latest(urls[-1]).etag == f'"{urls[-1]}"'  # type: ignore[union-attr]


def test_a_cycle_that_added_much_to_the_index_folds_it_into_the_checkpoint(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from etl.archive import fold_index
    from etl.cycle import fold_archive

    root = tmp_path / "raw"
    assert not fold_index(root, min_bytes=1)  # no index yet
    archive = RawArchive(root)
    urls = [f"http://p/ru/results/jk2021/list/{i}/" for i in range(30)]
    for url in urls:
        archive.store(url, 200, {"ETag": f'"{url}"'}, url.encode(), "t")
    size = (root / "index.jsonl").stat().st_size
    assert not fold_index(root, min_bytes=size + 1)  # grew by less: left to the next opening
    assert not (root / "index.checkpoint.arrow").exists()
    assert fold_index(root, min_bytes=size)
    assert _checkpoint(root)["offset"] == size
    assert not fold_index(root, min_bytes=1)  # nothing since
    # A checkpoint ahead of the index (an index replaced by a shorter one) counts as none.
    index = (root / "index.jsonl").read_bytes()
    (root / "index.jsonl").write_bytes(index[: index.index(b"\n") + 1])
    assert fold_index(root, min_bytes=1)
    assert _checkpoint(root)["offset"] == (root / "index.jsonl").stat().st_size
    (root / "index.jsonl").write_bytes(index)
    assert fold_index(root, min_bytes=1)
    # The next opening reads no line: the checkpoint says it all (the lines are made
    # unreadable here, and opening still knows every URL's latest page).
    (root / "index.jsonl").write_bytes(b"#" * (size - 1) + b"\n")
    reopened = RawArchive(root)
    assert reopened.index_offset == size
    assert all(reopened.latest(url).etag == f'"{url}"'  # type: ignore[union-attr]
               for url in urls)
    # The cycle's step after publication: a failure to fold is logged, never raised.
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with caplog.at_level(logging.ERROR, logger="etl.cycle"):
        fold_archive(not_a_directory)
    assert "could not checkpoint the raw archive index" in caplog.text


def test_index_entry_records_the_encoding_and_how_it_was_chosen(tmp_path: Path) -> None:
    archive = RawArchive(tmp_path / "raw")
    body = "<h1>Чуйская область</h1>".encode("windows-1251")
    sha = archive.store("http://p/a/", 200, {"Content-Type": "text/html; charset=windows-1251"},
                        body, "t1", encoding="windows-1251", encoding_source="header")
    (line,) = _index_lines(tmp_path / "raw")
    assert (line["encoding"], line["encoding_source"]) == ("windows-1251", "header")
    reopened = RawArchive(tmp_path / "raw")
    assert reopened.encoding_of("http://p/a/", sha) == "windows-1251"
    assert reopened.latest("http://p/a/").encoding == "windows-1251"  # type: ignore[union-attr]


def _fill_until_full(root: str, limit: int, results: Any) -> None:
    # A file-size limit stands in for a full disk; with SIGXFSZ ignored a write past it
    # fails with EFBIG instead of killing the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    archive = RawArchive(Path(root))
    stored = 0
    try:
        archive.store("http://p/big/", 200, {}, b"x" * (limit + 10), "t")  # a blob too large
    except ArchiveWriteError as exc:
        results.put(("blob", str(exc)))
    for i in range(1000):
        try:
            archive.store(f"http://p/{i}/" + "q" * 150, 200, {}, f"page {i}".encode(), "t")
        except ArchiveWriteError as exc:
            results.put(("index", str(exc)))
            break
        except OSError as exc:  # the wrong error: not the archive's own
            results.put(("other", repr(exc)))
            break
        stored += 1
    results.put(("stored", stored))


def test_a_full_disk_is_a_clear_error_and_leaves_nothing_half_written(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    RawArchive(root)
    results: Any = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(
        target=_fill_until_full, args=(str(root), 6_000, results))
    child.start()
    child.join(60)
    events = dict(results.get(timeout=5) for _ in range(3))
    assert "raw archive" in events["blob"] and str(root) in events["blob"]
    assert "raw archive index" in events["index"]
    assert "other" not in events
    assert 0 < events["stored"] < 1000
    # Every index line is whole and names a body that is whole.
    lines = _index_lines(root)
    assert len(lines) == events["stored"]
    reader = RawArchive(root)
    for line in lines:
        assert hashlib.sha256(reader.read(str(line["sha256"]))).hexdigest() == line["sha256"]
    # Space is back: the next run stores where the last one stopped.
    archive = RawArchive(root)
    archive.store("http://p/after/", 200, {}, b"x" * 10_000, "t")
    assert len(_index_lines(root)) == events["stored"] + 1


def test_index_lines_batched_are_written_together_when_the_block_ends(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    archive = RawArchive(root)
    archive.store("http://p/before/", 200, {}, b"before", "t0")
    with archive.index_lines_batched():
        first = archive.store("http://p/a/", 200, {"ETag": '"a"'}, b"page a", "t1")
        with archive.index_lines_batched():  # nested: the outer block writes
            archive.store("http://p/b/", 200, {}, b"page b", "t1")
        assert [line["url"] for line in _index_lines(root)] == ["http://p/before/"]
        # This instance knows the pages at once; another process finds them afterwards.
        assert archive.read(first) == b"page a" and archive.latest("http://p/a/").etag == '"a"'
        assert RawArchive(root).latest("http://p/a/") is None
    assert [line["url"] for line in _index_lines(root)] == [
        "http://p/before/", "http://p/a/", "http://p/b/"]
    assert RawArchive(root).read(first) == b"page a"
    # Left by an exception, the block still writes what it held (the bodies are in the pack).
    with pytest.raises(RuntimeError), archive.index_lines_batched():
        archive.store("http://p/c/", 200, {}, b"page c", "t2")
        raise RuntimeError("a parse failed")
    assert _index_lines(root)[-1]["url"] == "http://p/c/"
    assert RawArchive(root).latest("http://p/c/") is not None
    # Outside a block, each store appends its line at once, as before.
    archive.store("http://p/d/", 200, {}, b"page d", "t3")
    assert _index_lines(root)[-1]["url"] == "http://p/d/"


def test_index_lines_that_could_not_be_written_are_written_when_stored_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "raw"
    archive = RawArchive(root)
    archive.store("http://p/a/", 200, {"ETag": '"1"'}, b"page a, first", "t0")
    write = archive._append_index

    def full_disk(lines: list[str]) -> None:
        raise ArchiveWriteError(28, "cannot write to the raw archive index: disk full")

    monkeypatch.setattr(archive, "_append_index", full_disk)
    with pytest.raises(ArchiveWriteError), archive.index_lines_batched():
        archive.store("http://p/a/", 200, {"ETag": '"2"'}, b"page a, second", "t1")
        archive.store("http://p/b/", 200, {}, b"page b", "t1")
    # The instance does not believe what the index does not say ...
    assert archive.latest("http://p/a/").etag == '"1"'  # type: ignore[union-attr]
    assert archive.latest("http://p/b/") is None
    # ... so once there is room again, storing the same pages writes their lines.
    monkeypatch.setattr(archive, "_append_index", write)
    archive.store("http://p/a/", 200, {"ETag": '"2"'}, b"page a, second", "t2")
    archive.store("http://p/b/", 200, {}, b"page b", "t2")
    reopened = RawArchive(root)
    assert reopened.latest("http://p/a/").etag == '"2"'  # type: ignore[union-attr]
    assert reopened.latest("http://p/b/") is not None


def _store_in_child(body: bytes, parent: RawArchive) -> None:
    parent.store("http://p/child/", 200, {}, body, "t")  # the parent's instance, forked


def test_writers_append_to_their_own_packs_and_read_each_others_bodies(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    first, second = RawArchive(root), RawArchive(root)
    a = first.store("http://p/a/", 200, {}, b"<html>a</html>", "t")
    b = second.store("http://p/b/", 200, {}, b"<html>b</html>", "t")
    # Each instance reads what the other stored after it opened (it reads the index again).
    assert first.read(b) == b"<html>b</html>" and second.read(a) == b"<html>a</html>"
    assert len(_pack_sizes(root)) == 2
    # A forked child storing through its parent's instance starts a pack of its own: two
    # processes never append to one file.
    child = multiprocessing.get_context("fork").Process(
        target=_store_in_child, args=(b"<html>c</html>", first))
    child.start()
    child.join(30)
    assert child.exitcode == 0 and len(_pack_sizes(root)) == 3
    first.store("http://p/d/", 200, {}, b"<html>d</html>", "t")
    assert len(_pack_sizes(root)) == 3  # the parent goes on with its own pack
    reopened = RawArchive(root)
    for url, body in (("a", b"<html>a</html>"), ("b", b"<html>b</html>"),
                      ("child", b"<html>c</html>"), ("d", b"<html>d</html>")):
        latest = reopened.latest(f"http://p/{url}/")
        assert latest is not None and reopened.read(latest.sha256) == body
    with pytest.raises(FileNotFoundError):
        reopened.read(hashlib.sha256(b"never stored").hexdigest())


def test_an_archive_of_one_file_per_body_stays_readable(tmp_path: Path) -> None:
    # The layout before packs: blobs/ab/<sha256>, index lines without "blob".
    root = tmp_path / "raw"
    body = b"<html>old</html>"
    sha = hashlib.sha256(body).hexdigest()
    (root / "blobs" / sha[:2]).mkdir(parents=True)
    (root / "blobs" / sha[:2] / sha).write_bytes(body)
    (root / "index.jsonl").write_text(json.dumps(
        {"url": "http://p/old/", "status": 200, "sha256": sha, "fetched_at": "t",
         "headers": {"etag": '"e"'}}) + "\n")
    archive = RawArchive(root)
    assert archive.read(sha) == body
    assert archive.latest("http://p/old/").etag == '"e"'  # type: ignore[union-attr]
    # The same body under another URL is not written again: it is in its old file.
    archive.store("http://p/other/", 200, {}, body, "t")
    assert _pack_sizes(root) == {}
    assert RawArchive(root).read(sha) == body


def test_the_checkpoint_keeps_each_urls_latest_and_earlier_bodies_stay_readable(
        tmp_path: Path) -> None:
    from etl.archive import CHECKPOINT_EVERY_LINES

    # A night of re-stamps: every page changes at every update. The checkpoint, which every
    # crawl process reads when it opens the archive, holds one entry per URL whatever the
    # number of updates; an earlier body (reprocessing an earlier snapshot) is still found.
    root = tmp_path / "raw"
    urls = [f"http://p/ru/results/jk2021/list/{i}/" for i in range(CHECKPOINT_EVERY_LINES // 2)]
    for update in range(3):
        archive = RawArchive(root)  # each update's crawl opens the archive anew
        for url in urls:
            archive.store(url, 200, {"ETag": f'"{update}"'}, f"{url} {update}".encode(), "t",
                          encoding="utf-8", encoding_source="header")
    checkpoint = _checkpoint(root)  # of two updates
    assert checkpoint["offset"] > 0
    assert checkpoint["rows"] == len(urls)
    reopened = RawArchive(root)
    latest = reopened.latest(urls[7])
    assert latest is not None and reopened.read(latest.sha256) == f"{urls[7]} 2".encode()
    assert (latest.etag, latest.encoding) == ('"2"', "utf-8")
    first = hashlib.sha256(f"{urls[7]} 0".encode()).hexdigest()
    assert reopened.read(first) == f"{urls[7]} 0".encode()
    assert RawArchive(root).encoding_of(urls[7], first) == "utf-8"


def _latest_in_a_fork_without_reopening(root: Path, url: str, conn: Any) -> None:
    # In a forked child: the inherited archive answers; reading the index from its
    # checkpoint again (what opening does) would fail the test.
    RawArchive._load_index = lambda self: (_ for _ in ()).throw(  # type: ignore[method-assign]
        AssertionError("the archive was opened again"))
    try:
        latest = shared_archive(root).latest(url)
        conn.send(latest.sha256 if latest else None)
    except AssertionError as exc:
        conn.send(str(exc))


def test_the_shared_archive_is_opened_once_and_inherited_by_forked_processes(
        tmp_path: Path) -> None:
    root = tmp_path / "raw"
    url = "http://p/ru/results/jk2021/list/7/"
    shared = shared_archive(root)
    first = shared.store(url, 200, {}, b"first", "t1")
    assert shared_archive(root) is shared
    # Another process's line is seen by the shared instance when it is asked for again.
    second = RawArchive(root).store(url, 200, {}, b"second", "t2")
    assert shared_archive(root) is shared and shared.latest(url).sha256 == second  # type: ignore[union-attr]

    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_latest_in_a_fork_without_reopening, args=(root, url, send))
    child.start()
    assert receive.recv() == second
    child.join()

    # An index replaced meanwhile (the raw directory recreated) is opened anew.
    (root / "index.jsonl").rename(tmp_path / "old-index.jsonl")
    (root / "index.checkpoint.arrow").unlink(missing_ok=True)
    fresh = RawArchive(root)
    fresh.store(url, 200, {}, b"first", "t3")
    reopened = shared_archive(root)
    assert reopened is not shared and reopened.latest(url).sha256 == first  # type: ignore[union-attr]
    forget_shared_archives()
    assert shared_archive(root) is not reopened


def test_the_crawl_and_its_workers_use_the_shared_archive(tmp_path: Path) -> None:
    from etl import archive as archive_module
    from etl.crawl import SourceSpec, _worker_pool

    root = tmp_path / "raw"
    forget_shared_archives()
    spec = SourceSpec("http://127.0.0.1:9", root)
    pool = _worker_pool(spec, processes=2, concurrency=2)  # opens it before forking workers
    try:
        assert root.resolve() in archive_module._SHARED
    finally:
        pool.shutdown()
    source = spec.open()
    assert source.archive is shared_archive(root)  # type: ignore[attr-defined]
    forget_shared_archives()


def test_a_shared_archive_far_behind_the_index_is_opened_anew(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from etl import archive as archive_module

    root = tmp_path / "raw"
    url = "http://p/ru/results/jk2021/list/7/"
    forget_shared_archives()
    shared = shared_archive(root)
    shared.store(url, 200, {}, b"first", "t1")
    RawArchive(root).store(url, 200, {}, b"second", "t2")  # one line: caught up with
    assert shared_archive(root) is shared
    monkeypatch.setattr(archive_module, "SHARED_CATCH_UP_BYTES", 10)
    third = RawArchive(root).store(url, 200, {}, b"third", "t3")  # more than 10 bytes behind
    reopened = shared_archive(root)
    assert reopened is not shared and reopened.latest(url).sha256 == third  # type: ignore[union-attr]
    forget_shared_archives()


def test_a_checkpoint_of_an_earlier_version_is_replaced(tmp_path: Path) -> None:
    from etl.archive import CHECKPOINT_EVERY_LINES

    root = tmp_path / "raw"
    archive = RawArchive(root)
    urls = [f"http://p/ru/results/jk2021/list/{i}/" for i in range(CHECKPOINT_EVERY_LINES)]
    for url in urls:
        archive.store(url, 200, {"ETag": f'"{url}"'}, url.encode(), "t")
    (root / "index.checkpoint.json").write_text('{"format": "cec-archive-checkpoint/2"}')
    reopened = RawArchive(root)  # the whole index read, the checkpoint written anew
    assert all(reopened.latest(url).etag == f'"{url}"' for url in urls)  # type: ignore[union-attr]
    assert not (root / "index.checkpoint.json").exists()
    assert _checkpoint(root)["rows"] == len(urls)
