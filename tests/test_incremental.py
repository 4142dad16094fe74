"""Incremental cycles: pages that only changed their `updated` stamp are not parsed again,
and the snapshot is the one a cold run makes of the same portal state, frame for frame."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from etl import cycle
from etl.normalise import PAGE_SCHEMA, crawl_table, read_snapshot_frames, read_snapshot_meta
from etl.pagecache import (
    PLACE_COLUMNS,
    cache_path,
    cacheable,
    page_key,
    read_pages,
    reused_row,
    with_reused,
    write_pages,
)
from etl.parse import parse_division
from etl.records import CrawledDivision, page_record
from etl.replica import ReplicaServer
from etl.replica.render import PortalRenderer

CONTESTS = ["okrug-2", "okrug-30"]  # two constituencies: ~140 pages, seconds per cycle
# Portal states a cycle can read (the withdrawn ones are "unavailable", not a snapshot).
LABELS = ["counting-1", "counting-4", "formula-error", "preliminary", "counting-5",
          "counting-complete", "recount-1", "annulment", "duplicate-candidate", "final"]
FIXTURES = Path(__file__).parent / "fixtures" / "pages"


@pytest.fixture(scope="module")
def replica() -> Iterator[ReplicaServer]:
    with ReplicaServer(scenario="kg2021", at="counting-4", port=0) as server:
        yield server


def run_cycle(portal: str, data: Path, monkeypatch: pytest.MonkeyPatch,
              processes: int) -> Path:
    """detect → crawl → assemble → mark completed, as `etl run` does (no gate, no load)."""
    monkeypatch.setenv("CEC_DATA_DIR", str(data))
    detection = cycle.detect_change(portal, "jk2021", contests=CONTESTS)
    assert detection.status == cycle.CHANGED, detection
    batch = cycle.crawl_batch(portal, "jk2021", detection.contests,
                              cycle.run_dir("jk2021", detection.checked_at.replace(":", ""))
                              / "batch-0.arrow", processes=processes, concurrency=4)
    snapshot_dir = cycle.assemble_snapshot(portal, "jk2021", [batch], detection.checked_at,
                                           election_page=detection.election_page)
    meta = read_snapshot_meta(snapshot_dir)
    cycle.mark_completed("jk2021", detection.fingerprint, meta["snapshot_id"],
                         meta["portal_updated_at"], snapshot_dir=snapshot_dir)
    return snapshot_dir


def portal_states(seed: int, steps: int) -> list[tuple[str, int]]:
    """A seeded walk over the night: jumps between snapshots and re-stamps of one."""
    rng = random.Random(seed)
    label = rng.choice(LABELS)
    states = [(label, 0), (label, 90)]  # always one pure re-stamp
    while len(states) < steps:
        if rng.random() < 0.4:
            states.append((states[-1][0], states[-1][1] + rng.choice([60, 3600, 86400])))
        else:
            label = rng.choice([lb for lb in LABELS if lb != states[-1][0]])
            states.append((label, rng.choice([0, 0, 30])))
    return states


@pytest.mark.parametrize("seed", [20211128, 7])
def test_an_incremental_snapshot_equals_the_cold_one_frame_for_frame(
        replica: ReplicaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        seed: int) -> None:
    reused_total = 0
    for step, (label, seconds) in enumerate(portal_states(seed, steps=6)):
        replica.goto(label)
        if seconds:
            replica.restamp(seconds)
        processes = 1 + step % 2  # in-process and forked workers both read the cache
        incremental = run_cycle(replica.base_url, tmp_path / "incremental", monkeypatch,
                                processes)
        cold = run_cycle(replica.base_url, tmp_path / f"cold-{step}", monkeypatch, processes)
        state = f"step {step}: {label} re-stamped {seconds}s"
        inc_meta, cold_meta = read_snapshot_meta(incremental), read_snapshot_meta(cold)
        assert inc_meta["snapshot_id"] == cold_meta["snapshot_id"], state
        inc_frames, cold_frames = read_snapshot_frames(incremental), read_snapshot_frames(cold)
        for name, frame in cold_frames.items():
            assert len(frame), f"{state}: empty {name}"
            pd.testing.assert_frame_equal(inc_frames[name], frame, check_exact=True, obj=name)
        divisions = len(cold_frames["divisions"])
        assert cold_meta["pages_parsed"]["reused"] == 0, state
        assert sum(cold_meta["pages_parsed"].values()) == divisions, state
        assert sum(inc_meta["pages_parsed"].values()) == divisions, state
        if step and seconds and portal_states(seed, 6)[step - 1][0] == label:
            # Only the stamp changed since the last completed cycle: nothing is parsed.
            assert inc_meta["pages_parsed"]["reused"] == divisions, state
        reused_total += inc_meta["pages_parsed"]["reused"]
    assert reused_total > 0


def test_five_percent_of_precincts_changed_reparses_only_the_changed_pages(
        replica: ReplicaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    replica.goto("preliminary")
    run_cycle(replica.base_url, tmp_path / "data", monkeypatch, processes=2)
    replica.goto("counting-5")  # late automatic counts: ~6% of precincts change
    snapshot_dir = run_cycle(replica.base_url, tmp_path / "data", monkeypatch, processes=2)
    parsed = read_snapshot_meta(snapshot_dir)["pages_parsed"]
    renderer, scenario = PortalRenderer(replica.scenario), replica.scenario
    before, after = scenario.index_of("preliminary"), scenario.index_of("counting-5")
    changed = 0
    for contest_id in CONTESTS:
        for division_id in scenario.contests[contest_id].divisions:
            path = f"/ru/results/jk2021/{contest_id}/{division_id}/"
            old, new = (page_key(path, page.body) for page in (
                renderer.render(before, path), renderer.render(after, path)))
            assert old is not None and new is not None
            changed += old.key != new.key
    assert 0 < changed < parsed["reused"]
    assert parsed["fast"] + parsed["fallback"] == changed


def crawled_row(url: str, html: bytes, sha256: str = "digest") -> CrawledDivision:
    """A page of contest `list` as the crawl records it after parsing it."""
    return CrawledDivision("list", "7", "list", url, sha256, page_record(parse_division(html, url)))


def test_a_changed_parser_reuses_nothing(tmp_path: Path) -> None:
    html = (FIXTURES / "spec_example_ru.html").read_bytes()
    url = "http://portal/ru/results/jk2021/list/7/"
    keyed = page_key(url, html)
    assert keyed is not None and cacheable(keyed, parse_division(html, url))
    pages = crawl_table((), [crawled_row(url, html), crawled_row(url + "x/", html)]).pages
    path = write_pages(tmp_path / "pages.parquet", pages, [keyed.key, None])  # None: not kept
    cache = read_pages(path)
    assert cache is not None and cache.rows == {keyed.key: 0} and cache.records.num_rows == 1
    assert cache.declared_ids == [pages.column("declared_id")[0].as_py()]
    other_contests = read_pages(path, ["okrug-1"])
    assert other_contests is not None and other_contests.rows == {}

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({b"cec.parser_version": b"older"}), path)
    assert read_pages(path) is None
    # The right version and columns, but a page without its list of links: unreadable too.
    children = table.schema.get_field_index("children")
    pq.write_table(table.set_column(children, table.schema.field(children),
                                    pa.nulls(table.num_rows, table.schema.field(children).type)),
                   path)
    assert read_pages(path) is None
    path.write_bytes(b"not parquet")
    assert read_pages(path) is None  # unreadable: every page is parsed, nothing breaks


def test_reused_records_carry_the_new_stamp_and_equal_a_fresh_parse(tmp_path: Path) -> None:
    html = (FIXTURES / "spec_example_ru.html").read_bytes()
    url = "http://portal/ru/results/jk2021/list/7/"
    keyed = page_key(url, html)
    assert keyed is not None
    cache = read_pages(write_pages(tmp_path / "pages.parquet",
                                   crawl_table((), [crawled_row(url, html)]).pages, [keyed.key]))
    assert cache is not None
    restamped = html.replace(b"2021-11-28T21:05:13+06:00", b"2021-11-29T08:00:00+06:00")
    new_key = page_key(url, restamped)
    assert new_key is not None and new_key.key == keyed.key
    row = reused_row(cache, new_key)
    assert row == 0
    fresh = crawl_table((), [crawled_row(url, restamped, "new digest")]).pages
    place = fresh.select(list(PLACE_COLUMNS)).to_pylist()[0]
    assert place["portal_updated_at"] == new_key.stamp.isoformat()
    reused = with_reused(PAGE_SCHEMA.empty_table(), cache, [row],
                         {name: [value] for name, value in place.items()}, [0])
    assert reused.equals(fresh)
    assert cache.children == {0: page_record(parse_division(html, url)).children}
    # Another URL with the same body is another page (links resolve against the URL).
    other = page_key("http://portal/ru/results/jk2021/list/8/", html)
    assert other is not None and other.key != keyed.key
    # Any other byte changed: another key.
    changed = page_key(url, html.replace(b"421 315", b"421 316"))
    assert changed is not None and changed.key != keyed.key


@pytest.mark.parametrize("stamp", [
    b'<time class="updated">28.11.2021 21:05:13</time>',  # no datetime: read from the text
    b'<time class="updated" datetime="2021-11-28T21:05:13+06:00">x</time>'
    b'<time datetime="2021-11-28T21:06:00+06:00">y</time>',  # two times
    b'<time class="updated" datetime="not a time">x</time>',
    b'<!-- <time class="updated" datetime="2021-11-28T21:05:13+06:00">x</time> -->',
])
def test_pages_whose_stamp_is_not_plain_are_always_parsed(stamp: bytes) -> None:
    html = (FIXTURES / "spec_example_ru.html").read_bytes()
    start, end = html.index(b"<time"), html.index(b"</time>") + len(b"</time>")
    page = html[:start] + stamp + html[end:]
    url = "http://portal/ru/results/jk2021/list/7/"
    keyed = page_key(url, page)
    # Not keyed at all, or keyed but the parser of record did not take its time from that
    # element: either way the page is never reused.
    assert keyed is None or not cacheable(keyed, parse_division(page, url))


def test_the_cache_follows_the_last_completed_cycle(
        replica: ReplicaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    replica.goto("final")
    snapshot_dir = run_cycle(replica.base_url, tmp_path / "data", monkeypatch, processes=1)
    cached = cache_path(tmp_path / "data" / "state", "jk2021")
    assert cached.read_bytes() == (snapshot_dir / cycle.PARSED_PAGES_FILE).read_bytes()
    state = json.loads((tmp_path / "data" / "state" / "jk2021.json").read_text())
    assert state["snapshot_id"] == read_snapshot_meta(snapshot_dir)["snapshot_id"]
    pages = read_pages(cached)
    assert pages is not None
    assert len(pages.rows) == len(read_snapshot_frames(snapshot_dir)["divisions"])


def test_the_replica_restamp_control_changes_only_the_stamp(replica: ReplicaServer) -> None:
    import urllib.request

    from etl.replica.process import control

    replica.goto("final")
    url = f"{replica.base_url}/ru/results/jk2021/okrug-2/"

    def get() -> tuple[bytes, str]:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read(), response.headers["Last-Modified"]

    before, modified_before = get()
    state = control("POST", f"{replica.base_url}/_replica/restamp?seconds=3600")
    assert state["restamp_seconds"] == 3600.0
    assert state["portal_time"] == "2021-12-15T17:00:00+06:00"
    after, modified_after = get()
    assert b'datetime="2021-12-15T17:00:00+06:00"' in after
    assert before != after and modified_before != modified_after
    old_key, new_key = page_key(url, before), page_key(url, after)
    assert old_key is not None and new_key is not None and old_key.key == new_key.key
    replica.goto("final")  # goto shows the snapshot's own time again
    assert get() == (before, modified_before)


def test_a_re_stamped_portal_is_validated_and_published_without_importing_gx(
        replica: ReplicaServer, tmp_path: Path) -> None:
    """`etl run` after a re-stamp: no page parsed, so no GX warm-up during the crawl, and
    every frame's outcome comes from the gate memo; the snapshot is still validated (its
    dq_results are the last one's under the new id) and published."""
    from etl_process import etl_env, run_etl

    replica.goto("final")
    env = etl_env(tmp_path / "data")
    args = ("run", "--portal", replica.base_url, "--election", "jk2021", *[
        part for contest in CONTESTS for part in ("--contest", contest)],
        "--warehouse", f"duckdb:///{tmp_path}/warehouse.duckdb")
    first = run_etl(*args, env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "GX ephemeral context" in first.stderr  # a cold cycle validates with GX
    replica.restamp(60)
    # Division pages answer slowly: the crawl outlasts the parent's warm-up.
    replica.set_faults(latency=0.06, path_regex=r"/results/")
    try:
        second = run_etl(*args, env=env, timeout=300)
    finally:
        replica.clear_faults()
        replica.goto("final")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "GX ephemeral context" not in second.stderr
    # Nothing parsed, yet the gate's previous snapshot was read while the crawl ran.
    assert "previous published snapshot read while the crawl ran" in second.stderr
    assert "0 validated by GX" in second.stderr
    assert "published: 2 contests" in second.stdout
    snapshots = sorted((tmp_path / "data" / "staging" / "jk2021" / "snapshots").iterdir(),
                       key=lambda d: read_snapshot_meta(d)["portal_updated_at"])
    assert len(snapshots) == 2
    before, after = (pd.read_parquet(d / "dq_results.parquet") for d in snapshots)
    new_id = read_snapshot_meta(snapshots[1])["snapshot_id"]
    assert set(after["snapshot_id"]) == {new_id}
    # W2 and W4 now compare the snapshot with an equal one; the first had nothing to compare

    def within(dq: pd.DataFrame) -> pd.DataFrame:
        return (dq[~dq["check_id"].isin(["W2", "W4"])].drop(columns="snapshot_id")
                .reset_index(drop=True))

    pd.testing.assert_frame_equal(within(after), within(before))
    compared = after[after["check_id"].isin(["W2", "W4"])]
    assert len(compared) and compared["success"].all() and compared["division_id"].isna().all()


def test_assembly_takes_the_election_page_from_the_detection_or_else_from_the_archive(
        replica: ReplicaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    replica.goto("final")
    monkeypatch.setenv("CEC_DATA_DIR", str(tmp_path / "data"))
    detection = cycle.detect_change(replica.base_url, "jk2021", contests=CONTESTS)
    assert detection.election_page is not None
    batch = cycle.crawl_batch(replica.base_url, "jk2021", detection.contests,
                              tmp_path / "run" / "batch-0.arrow", processes=1, concurrency=4)
    # With the detection's page the raw archive is not opened (here: an empty one).
    monkeypatch.setenv("CEC_STAGING_DIR", str(tmp_path / "from-detection"))
    from_detection = read_snapshot_meta(cycle.assemble_snapshot(
        replica.base_url, "jk2021", [batch], detection.checked_at,
        archive_root=tmp_path / "empty", election_page=detection.election_page))
    monkeypatch.setenv("CEC_STAGING_DIR", str(tmp_path / "from-archive"))
    from_archive = read_snapshot_meta(cycle.assemble_snapshot(
        replica.base_url, "jk2021", [batch], detection.checked_at))
    assert from_detection["snapshot_id"] == from_archive["snapshot_id"]
    assert from_detection["pages"] == from_archive["pages"]
    assert {"url": detection.election_page["url"], "sha256": detection.election_page["sha256"],
            "status": 200} in from_detection["pages"]
    with pytest.raises(FileNotFoundError, match="not in the raw archive"):
        cycle.assemble_snapshot(replica.base_url, "jk2021", [batch], detection.checked_at,
                                archive_root=tmp_path / "empty")


def test_a_page_answered_304_is_reused_by_its_digest_without_reading_its_body(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from etl import crawl
    from etl.archive import RawArchive
    from etl.fetch import FetchedPage

    html = (FIXTURES / "spec_example_ru.html").read_bytes()
    url = "http://portal/ru/results/jk2021/list/7/"
    archive = RawArchive(tmp_path / "raw")
    sha256 = archive.store(url, 200, {}, html, "t1")
    keyed = page_key(url, html)
    assert keyed is not None
    cache = read_pages(write_pages(tmp_path / "pages.parquet", crawl_table((), [
        crawled_row(url, html, sha256)]).pages, [keyed.key]))
    monkeypatch.setattr(crawl, "_cache", cache)
    # The same body as a 200: found by its key, as before.
    by_key = crawl._parse(FetchedPage(url, 200, html, sha256, not_modified=False))
    assert by_key.reused_row == 0 and by_key.read_as == "reused"
    # As a 304: found by its URL and digest; the archive's packs are gone, so reading the
    # body would fail the test.
    (tmp_path / "raw" / "packs").rename(tmp_path / "packs-away")
    by_digest = crawl._parse(FetchedPage(url, 200, None, sha256, not_modified=True,
                                         archive=archive))
    assert by_digest == by_key._replace(not_modified=True)
    # A 304 for another body than the cache's (re-stamped since) is read and keyed.
    (tmp_path / "packs-away").rename(tmp_path / "raw" / "packs")
    restamped = html.replace(b"2021-11-28T21:05:13+06:00", b"2021-11-29T08:00:00+06:00")
    other = archive.store(url, 200, {}, restamped, "t2")
    by_body = crawl._parse(FetchedPage(url, 200, None, other, not_modified=True, archive=archive))
    new_key = page_key(url, restamped)
    assert new_key is not None
    assert (by_body.reused_row, by_body.page_key, by_body.stamp) == (
        0, keyed.key, new_key.stamp.isoformat())
