"""The scraper against the real replica over loopback HTTP: totals, faults, archive, reprocess."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from facts import (
    FINAL_SHARES,
    PRECINCTS,
    PRECINCTS_COUNTED_PRELIMINARY,
    PRELIMINARY_AGAINST_ALL,
    PRELIMINARY_PARTIES_SUM,
    PRELIMINARY_SHARES,
    REGISTERED,
    TOOK_PART_FINAL,
    TOOK_PART_PRELIMINARY,
)

from etl import schema
from etl.archive import RawArchive
from etl.fetch import DeadlineExceeded, FetchError, PortalClient, absolute_url
from etl.normalise import read_snapshot_frames, read_snapshot_meta
from etl.parse import PortalMaintenance, parse_division
from etl.replica import Faults, ReplicaServer, load_scenario
from etl.scrape import UnknownContestError, rebuild_from_archive, scrape
from tests.hostile.server import Response

REPO = Path(__file__).resolve().parent.parent
SMALL = ["okrug-1"]  # one contest keeps the fault tests quick
SMALL_PAGES = len(load_scenario("kg2021").contests["okrug-1"].divisions)


@pytest.fixture(scope="module")
def replica() -> Iterator[ReplicaServer]:
    with ReplicaServer(scenario="kg2021", at="final", port=0) as server:
        yield server


@pytest.fixture
def portal(replica: ReplicaServer) -> Iterator[ReplicaServer]:
    """The module's replica, reset to the final snapshot with no faults after each test."""
    yield replica
    replica.clear_faults()
    replica.goto("final")


@pytest.fixture(scope="module")
def final_scrape(replica: ReplicaServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("final")
    replica.goto("final")
    scrape(replica.base_url, "jk2021", base / "snapshot", archive_root=base / "raw")
    return base


def national(frames_dir: Path, contest: str = "list") -> tuple[pd.Series, pd.DataFrame]:
    frames = read_snapshot_frames(frames_dir)
    root = frames["divisions"][(frames["divisions"].contest_id == contest)
                            & frames["divisions"].parent_id.isna()]
    assert len(root) == 1
    root_id = root.division_id.iloc[0]
    turnout = frames["turnout"][(frames["turnout"].contest_id == contest)
                             & (frames["turnout"].division_id == root_id)].iloc[0]
    results = frames["results"][(frames["results"].contest_id == contest)
                             & (frames["results"].division_id == root_id)]
    return turnout, results


def retry_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The scraper's retry log lines (the replica logs its fault switches too)."""
    return [r.getMessage() for r in caplog.records
            if r.name == "etl.fetch" and r.getMessage().startswith("retry")]


def test_final_snapshot_national_totals_equal_facts(final_scrape: Path) -> None:
    turnout, results = national(final_scrape / "snapshot")
    assert turnout.registered == REGISTERED
    assert turnout.ballots_cast == TOOK_PART_FINAL
    assert turnout.precincts_total == PRECINCTS
    parties = results[~results.is_against_all]
    shares = dict(zip(parties.choice_position, parties.pct_published, strict=True))
    for position, pct in FINAL_SHARES.items():
        assert shares[position] == pytest.approx(pct, abs=0.02)
    assert all(pct < 5 for pos, pct in shares.items() if pos not in FINAL_SHARES)
    # pct_computed is ours: votes over everyone who took part, never the published figure.
    computed = parties.votes / TOOK_PART_FINAL * 100
    assert (parties.pct_computed - computed).abs().max() < 1e-9


def test_final_snapshot_covers_every_division_of_the_scenario(final_scrape: Path) -> None:
    scenario = load_scenario("kg2021")
    frames = read_snapshot_frames(final_scrape / "snapshot")
    meta = read_snapshot_meta(final_scrape / "snapshot")
    expected = {c: len(contest.divisions) for c, contest in scenario.contests.items()}
    assert frames["divisions"].groupby("contest_id").size().to_dict() == expected
    assert meta["pages_failed"] == 0 and meta["failures"] == []
    assert sorted(meta["contests"]) == sorted(scenario.contests)
    # Hierarchy from links: one root per contest, every other parent is a known division.
    divisions = frames["divisions"]
    assert divisions.parent_id.isna().sum() == len(expected)
    keys = set(zip(divisions.contest_id, divisions.division_id, strict=True))
    children = divisions[divisions.parent_id.notna()]
    assert all((c, p) in keys for c, p in zip(children.contest_id, children.parent_id, strict=True))
    # Precincts abroad are in the party list only.
    assert len(divisions[divisions.contest_id == "list"]) > len(
        divisions[divisions.contest_id == "okrug-1"])


def test_frames_have_the_contract_columns_and_nullable_dtypes(final_scrape: Path) -> None:
    frames = read_snapshot_frames(final_scrape / "snapshot")
    for name, columns in schema.FRAMES.items():
        frame = frames[name]
        assert list(frame.columns) == list(columns)
        assert {c: str(t) for c, t in frame.dtypes.items()} == columns
    against_all = frames["results"][frames["results"].is_against_all]
    assert against_all.choice_position.isna().all()
    assert frames["results"][~frames["results"].is_against_all].choice_position.notna().all()


def test_preliminary_snapshot_equals_the_preliminary_table(portal: ReplicaServer,
                                                           tmp_path: Path) -> None:
    portal.goto("preliminary")
    scrape(portal.base_url, "jk2021", tmp_path / "snap", contests=["list"],
           archive_root=tmp_path / "raw")
    turnout, results = national(tmp_path / "snap")
    assert turnout.precincts_counted == PRECINCTS_COUNTED_PRELIMINARY
    assert turnout.ballots_cast == TOOK_PART_PRELIMINARY
    parties = results[~results.is_against_all]
    shares = dict(zip(parties.choice_position, parties.pct_published, strict=True))
    assert shares.keys() == PRELIMINARY_SHARES.keys()
    for position, pct in PRELIMINARY_SHARES.items():
        assert shares[position] == pytest.approx(pct, abs=0.02)
    assert float(parties.pct_published.sum()) == pytest.approx(PRELIMINARY_PARTIES_SUM, abs=0.05)
    against = results[results.is_against_all].pct_published.iloc[0]
    assert against == pytest.approx(PRELIMINARY_AGAINST_ALL, abs=0.02)


def test_unchanged_portal_is_answered_304_and_stores_nothing_new(portal: ReplicaServer,
                                                                  tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    first = scrape(portal.base_url, "jk2021", tmp_path / "a", contests=SMALL, archive_root=raw)
    index_before = (raw / "index.jsonl").read_text()
    packs_before = {p.name: p.stat().st_size for p in (raw / "packs").iterdir()}
    second = scrape(portal.base_url, "jk2021", tmp_path / "b", contests=SMALL, archive_root=raw)
    assert second.meta["pages_fetched"] == 0
    assert second.meta["pages_not_modified"] == first.meta["pages_fetched"] == SMALL_PAGES + 1
    assert second.snapshot_id == first.snapshot_id
    assert (raw / "index.jsonl").read_text() == index_before
    assert {p.name: p.stat().st_size for p in (raw / "packs").iterdir()} == packs_before
    pd.testing.assert_frame_equal(read_snapshot_frames(tmp_path / "a")["results"],
                                  read_snapshot_frames(tmp_path / "b")["results"])


def test_a_new_portal_state_gets_a_new_snapshot_id(portal: ReplicaServer, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    final = scrape(portal.base_url, "jk2021", tmp_path / "a", contests=SMALL, archive_root=raw)
    portal.goto("annulment")
    earlier = scrape(portal.base_url, "jk2021", tmp_path / "b", contests=SMALL, archive_root=raw)
    assert earlier.snapshot_id != final.snapshot_id
    assert earlier.meta["portal_updated_at"] < final.meta["portal_updated_at"]
    assert earlier.meta["pages_fetched"] > 0


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_transient_errors_are_retried_logged_and_archived(
        portal: ReplicaServer, tmp_path: Path, status: int, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEC_RETRIES", "3")
    portal.set_faults(Faults(status=status, status_count=2, retry_after=0))
    with caplog.at_level(logging.WARNING, logger="etl.fetch"):
        summary = scrape(portal.base_url, "jk2021", tmp_path / "snap", contests=SMALL,
                         archive_root=tmp_path / "raw", processes=1)
    assert summary.meta["failures"] == []
    assert summary.rows["divisions"] == SMALL_PAGES
    retries = retry_messages(caplog)
    assert len(retries) == 2 * summary.meta["pages_fetched"]  # two per page, election page too
    assert all(f"HTTP {status}" in message for message in retries)
    index = [json.loads(line) for line in (tmp_path / "raw" / "index.jsonl").open()]
    assert {entry["status"] for entry in index} == {status, 200}


def test_retry_after_is_honoured(portal: ReplicaServer, tmp_path: Path,
                                 caplog: pytest.LogCaptureFixture) -> None:
    portal.set_faults(Faults(status=429, status_count=1, retry_after=2, path_regex=r"/okrug-1/$"))
    with caplog.at_level(logging.WARNING, logger="etl.fetch"):
        summary = scrape(portal.base_url, "jk2021", tmp_path / "snap", contests=SMALL,
                         archive_root=tmp_path / "raw", processes=1)
    assert summary.meta["failures"] == []
    waits = retry_messages(caplog)
    assert len(waits) == 1 and "in 2.00s" in waits[0] and "HTTP 429" in waits[0]


def test_a_page_that_keeps_failing_is_recorded_and_the_rest_goes_on(
        portal: ReplicaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEC_RETRIES", "2")
    precinct = sorted(load_scenario("kg2021").contests["okrug-1"].divisions)[-1]
    portal.set_faults(Faults(status=500, path_regex=rf"/okrug-1/{precinct}/$"))
    summary = scrape(portal.base_url, "jk2021", tmp_path / "snap", contests=SMALL,
                     archive_root=tmp_path / "raw", processes=1)
    assert summary.rows["divisions"] == SMALL_PAGES - 1
    [failure] = summary.meta["failures"]
    assert failure["url"].endswith(f"/okrug-1/{precinct}/")
    assert failure["status"] == 500 and "HTTP 500 after 3 attempts" in failure["reason"]
    assert failure["contest_id"] == "okrug-1"
    # The error response itself is in the archive: nothing the portal sent is lost.
    index = [json.loads(line) for line in (tmp_path / "raw" / "index.jsonl").open()]
    assert any(e["url"] == failure["url"] and e["status"] == 500 for e in index)


def test_a_hanging_portal_times_out_and_is_retried(
        portal: ReplicaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("CEC_TIMEOUT", "0.5")
    portal.set_faults(Faults(hang=3.0, hang_count=1, path_regex=r"/okrug-1/$"))
    with caplog.at_level(logging.WARNING, logger="etl.fetch"):
        summary = scrape(portal.base_url, "jk2021", tmp_path / "snap", contests=SMALL,
                         archive_root=tmp_path / "raw", processes=1)
    assert summary.meta["failures"] == [] and summary.rows["divisions"] == SMALL_PAGES
    assert any("timeout after 0.5s" in r.getMessage() for r in caplog.records)


def test_a_truncated_body_is_retried_and_never_archived(
        portal: ReplicaServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    portal.set_faults(Faults(truncate=True, truncate_count=1))
    with caplog.at_level(logging.WARNING, logger="etl.fetch"):
        summary = scrape(portal.base_url, "jk2021", tmp_path / "snap", contests=SMALL,
                         archive_root=tmp_path / "raw", processes=1)
    assert summary.meta["failures"] == [] and summary.rows["divisions"] == SMALL_PAGES
    truncated = retry_messages(caplog)
    assert len(truncated) == SMALL_PAGES + 1  # every page and the election page, once each
    # Every archived body is a whole page (the replica's full bodies end with </html>).
    archive = RawArchive(tmp_path / "raw")
    bodies = {json.loads(line)["sha256"] for line in (tmp_path / "raw" / "index.jsonl").open()}
    assert len(bodies) == SMALL_PAGES + 1
    assert all(archive.read(sha).rstrip().endswith(b"</html>") for sha in bodies)


def test_latency_is_absorbed_by_concurrency(portal: ReplicaServer, tmp_path: Path) -> None:
    portal.set_faults(Faults(latency=0.05))
    summary = scrape(portal.base_url, "jk2021", tmp_path / "snap", contests=SMALL,
                     archive_root=tmp_path / "raw", concurrency=16, processes=1)
    assert summary.meta["failures"] == [] and summary.rows["divisions"] == SMALL_PAGES


def test_maintenance_page_is_a_clear_error_and_is_archived(portal: ReplicaServer,
                                                           tmp_path: Path) -> None:
    portal.goto("withdrawn-maintenance")
    with pytest.raises(PortalMaintenance) as error:
        scrape(portal.base_url, "jk2021", tmp_path / "snap", archive_root=tmp_path / "raw")
    assert "/ru/results/jk2021/" in str(error.value)
    assert not (tmp_path / "snap" / "snapshot.json").exists()
    [entry] = [json.loads(line) for line in (tmp_path / "raw" / "index.jsonl").open()]
    assert entry["status"] == 200 and entry["url"].endswith("/ru/results/jk2021/")


def test_withdrawn_portal_with_a_long_retry_after_fails_fast(portal: ReplicaServer,
                                                             tmp_path: Path) -> None:
    portal.goto("withdrawn-503")
    with pytest.raises(FetchError) as error:
        scrape(portal.base_url, "jk2021", tmp_path / "snap", archive_root=tmp_path / "raw")
    assert error.value.status == 503
    assert "Retry-After 60s" in error.value.reason


def test_unknown_contest_is_a_usage_error(portal: ReplicaServer, tmp_path: Path) -> None:
    with pytest.raises(UnknownContestError, match="okrug-99"):
        scrape(portal.base_url, "jk2021", tmp_path / "snap", contests=["okrug-99"],
               archive_root=tmp_path / "raw")


def test_rebuild_from_archive_reproduces_the_snapshot_without_the_portal(
        final_scrape: Path, tmp_path: Path) -> None:
    # A closed port stands in for the portal: the rebuild must not need it.
    rebuilt = rebuild_from_archive(final_scrape / "snapshot", tmp_path / "rebuilt",
                                   archive_root=final_scrape / "raw")
    original = read_snapshot_meta(final_scrape / "snapshot")
    assert rebuilt.snapshot_id == original["snapshot_id"]
    before = read_snapshot_frames(final_scrape / "snapshot")
    after = read_snapshot_frames(tmp_path / "rebuilt")
    for name in schema.FRAMES:
        key = ["contest_id", "division_id"]
        pd.testing.assert_frame_equal(
            before[name].sort_values(key, kind="stable").reset_index(drop=True),
            after[name].sort_values(key, kind="stable").reset_index(drop=True))


def test_cli_scrape_writes_the_snapshot_and_prints_a_summary(portal: ReplicaServer,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "snap"
    result = subprocess.run(
        [sys.executable, "-m", "etl", "scrape", "--portal", portal.base_url, "--election",
         "jk2021", "--contest", "okrug-1", "--contest", "okrug-2", "--out", str(out),
         "--raw-dir", str(tmp_path / "raw")],
        capture_output=True, text=True, cwd=REPO, check=False)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "divisions.parquet", "results.parquet", "snapshot.json", "turnout.parquet"]
    pages = sum(len(load_scenario("kg2021").contests[c].divisions) for c in ("okrug-1", "okrug-2"))
    assert "0 failed" in result.stdout and f"divisions {pages}" in result.stdout


def test_cli_scrape_exit_codes(portal: ReplicaServer, tmp_path: Path) -> None:
    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "etl", "scrape", "--portal", portal.base_url,
             "--out", str(tmp_path / "snap"), "--raw-dir", str(tmp_path / "raw"), *extra],
            capture_output=True, text=True, cwd=REPO, check=False)

    assert run().returncode == 2  # --election missing: usage error
    assert run("--election", "jk2021", "--contest", "okrug-99").returncode == 2
    portal.goto("withdrawn-maintenance")
    withdrawn = run("--election", "jk2021")
    assert withdrawn.returncode == 1
    assert "maintenance" in withdrawn.stderr.lower() or "notice" in withdrawn.stderr.lower()


# --------------------------------------------------------------------------- issue 10: limits


def test_a_trickling_body_ends_at_the_request_deadline(portal: ReplicaServer,
                                                      tmp_path: Path) -> None:
    # One byte every 20 ms: each read returns well within the read timeout, so only a
    # total deadline can end it (the whole page would take about a minute).
    portal.set_faults(Faults(trickle=0.02, path_regex=r"/okrug-1/$"))
    client = PortalClient(portal.base_url, RawArchive(tmp_path / "raw"), retries=0,
                          timeout=5, request_deadline=1.5)
    started = time.monotonic()
    with pytest.raises(FetchError, match="deadline"):
        client.fetch("/ru/results/jk2021/okrug-1/")
    assert time.monotonic() - started < 10
    assert not (tmp_path / "raw" / "index.jsonl").exists()  # half a body is never archived


def test_the_replica_trickle_fault_sends_the_whole_page_slowly(portal: ReplicaServer,
                                                               tmp_path: Path) -> None:
    portal.set_faults(Faults(trickle=0.0005, path_regex=r"/okrug-1/1001/$"))
    client = PortalClient(portal.base_url, RawArchive(tmp_path / "raw"), retries=0)
    page = client.fetch("/ru/results/jk2021/okrug-1/1001/")
    assert page.body.rstrip().endswith(b"</html>")


def test_a_crawl_that_hits_its_deadline_fails_and_says_what_it_did_not_cover(
        portal: ReplicaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEC_CRAWL_DEADLINE", "3")
    monkeypatch.setenv("CEC_REQUEST_DEADLINE", "60")
    portal.set_faults(Faults(trickle=0.05, path_regex=r"/okrug-1/\d+/$"))
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="coverage incomplete") as error:
        scrape(portal.base_url, "jk2021", tmp_path / "snap", contests=SMALL,
               archive_root=tmp_path / "raw", processes=1, concurrency=4)
    assert time.monotonic() - started < 30
    assert "jk2021" in str(error.value)
    assert not (tmp_path / "snap" / "snapshot.json").exists()


def test_absolute_urls_to_another_host_are_refused() -> None:
    base = "http://127.0.0.1:8765"
    assert absolute_url(base, "/ru/results/") == f"{base}/ru/results/"
    assert absolute_url(base, f"{base}/ru/x/") == f"{base}/ru/x/"
    for elsewhere in ("http://evil.example/ru/", "https://127.0.0.1:8765/ru/",
                      "http://127.0.0.1:9999/ru/", "//evil.example/ru/"):
        with pytest.raises(FetchError, match="refused"):
            absolute_url(base, elsewhere)


def test_a_redirect_to_another_host_is_refused_and_never_followed(tmp_path: Path) -> None:
    from tests.hostile.cases import PRECINCT, on, redirect
    from tests.hostile.server import HostileServer

    with HostileServer() as elsewhere, HostileServer(
            on(PRECINCT, redirect(lambda p: elsewhere.base_url + p))) as portal:
        client = PortalClient(portal.base_url, RawArchive(tmp_path / "raw"), retries=0)
        with pytest.raises(FetchError) as error:
            client.fetch(PRECINCT)
    assert error.value.reason.startswith("refused: a redirect to another host")
    assert elsewhere.base_url in error.value.reason
    assert elsewhere.hits.paths == []
    # The redirect itself is archived under the URL that sent it.
    [entry] = [json.loads(line) for line in (tmp_path / "raw" / "index.jsonl").open()]
    assert (entry["url"], entry["status"]) == (portal.base_url + PRECINCT, 302)


def test_a_same_host_redirect_is_archived_under_the_url_that_answered(tmp_path: Path) -> None:
    from tests.hostile.cases import PRECINCT, on, redirect
    from tests.hostile.server import HostileServer

    with HostileServer(on(PRECINCT, redirect(lambda p: p + "?moved=1", 301))) as portal:
        client = PortalClient(portal.base_url, RawArchive(tmp_path / "raw"), retries=0)
        page = client.fetch(PRECINCT)
    assert page.url == portal.base_url + PRECINCT + "?moved=1"
    entries = [json.loads(line) for line in (tmp_path / "raw" / "index.jsonl").open()]
    assert [(e["url"], e["status"]) for e in entries] == [(page.url, 200)]


@pytest.mark.parametrize("with_length", [True, False])
def test_a_body_over_the_size_cap_is_refused(tmp_path: Path, with_length: bool) -> None:
    from dataclasses import replace

    from tests.hostile.cases import PRECINCT, on
    from tests.hostile.server import HostileServer

    def huge(_: str, response: Response) -> Response:
        return replace(response, body=response.body + b"<!--" + b"x" * 2_000_000 + b"-->",
                       content_length=with_length)

    with HostileServer(on(PRECINCT, huge)) as portal:
        client = PortalClient(portal.base_url, RawArchive(tmp_path / "raw"), retries=0,
                              max_bytes=100_000)
        with pytest.raises(FetchError, match=r"refused: .*100000-byte cap"):
            client.fetch(PRECINCT)
        assert client.fetch("/ru/results/jk2021/okrug-1/").status == 200  # others still fine


def test_a_windows_1251_page_is_read_with_its_declared_encoding(tmp_path: Path) -> None:
    from tests.hostile.cases import PRECINCT, cp1251, on
    from tests.hostile.server import HostileServer

    with HostileServer(on(PRECINCT, cp1251("text/html; charset=windows-1251", meta=None))) as portal:
        client = PortalClient(portal.base_url, RawArchive(tmp_path / "raw"), retries=0)
        page = client.fetch(PRECINCT)
    assert page.encoding == "windows-1251"
    assert parse_division(page.body, page.url, page.encoding).name == "УИК №1001"
    [entry] = [json.loads(line) for line in (tmp_path / "raw" / "index.jsonl").open()]
    assert (entry["encoding"], entry["encoding_source"]) == ("windows-1251", "header")


def test_query_string_variants_and_the_page_cap_are_limited_and_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.hostile.cases import PRECINCT, _query_variants, on, text
    from tests.hostile.server import HostileServer

    # Precinct 1001 links its 27 siblings again as `…/1002/?sort=votes`: each would be
    # the same division a second time.
    with HostileServer(on(PRECINCT, text(_query_variants))) as portal:
        summary = scrape(portal.base_url, "jk2021", tmp_path / "snap", contests=SMALL,
                         archive_root=tmp_path / "raw", processes=1)
        assert not any("?sort=" in hit for hit in portal.hits.paths)
        monkeypatch.setenv("CEC_MAX_PAGES", "5")
        capped = scrape(portal.base_url, "jk2021", tmp_path / "capped", contests=SMALL,
                        archive_root=tmp_path / "raw", processes=1)
    limits = summary.meta["limits"]
    assert summary.rows["divisions"] == SMALL_PAGES and summary.meta["failures"] == []
    assert len(limits["refused_links"]) == SMALL_PAGES - 2
    assert all("CEC_MAX_QUERY_VARIANTS=1" in r["reason"] for r in limits["refused_links"])
    assert capped.rows["divisions"] == 5
    assert len(capped.meta["limits"]["refused_pages"]) == SMALL_PAGES - 5
    assert capped.meta["pages_failed"] == SMALL_PAGES - 5  # lost pages are coverage failures
    written = json.loads((tmp_path / "capped" / "snapshot.json").read_text())
    assert written["limits"] == capped.meta["limits"]


def test_crawl_batches_are_staged_as_arrow_columns_and_a_pickle_is_never_loaded(
        portal: ReplicaServer, tmp_path: Path) -> None:
    import pickle

    import pyarrow as pa
    import pyarrow.compute as pc

    from etl.crawl import SourceSpec, crawl_contests
    from etl.cycle import STAGING_FORMAT, crawl_batch, read_crawl_table

    staged = crawl_batch(portal.base_url, "jk2021", SMALL, tmp_path / "batch-0.arrow",
                         processes=1, archive_root=tmp_path / "raw")
    with pa.OSFile(str(staged), "rb") as source:  # a plain Arrow IPC file
        table = pa.ipc.open_file(source).read_all()
    document = json.loads(table.schema.metadata[b"cec.crawl_batch"])
    assert document["format"] == STAGING_FORMAT
    assert table.num_rows == SMALL_PAGES
    assert pa.types.is_list(table.schema.field("lines").type)  # ballot lines as columns
    direct = crawl_contests(SourceSpec(portal.base_url, tmp_path / "raw"), "ru", "jk2021", SMALL,
                            concurrency=4, processes=2)

    # The round trip loses nothing: the same rows in the same (tree) order, whatever order
    # the pages arrived in; the same failures. (How each page was read differs: the second
    # crawl's pages were answered 304.)
    read = read_crawl_table(staged)
    assert read.pages.equals(direct.pages)
    assert [(c.contest_id, c.failures, c.refused) for c in read.contests] == [
        (c.contest_id, c.failures, c.refused) for c in direct.contests]
    assert pc.sum(pc.list_value_length(direct.pages["lines"])).as_py() > 0
    hostile = tmp_path / "batch-1.arrow"
    hostile.write_bytes(pickle.dumps(direct))
    with pytest.raises(ValueError):
        read_crawl_table(hostile)


def test_records_put_into_columns_as_they_come_end_in_tree_order(
        portal: ReplicaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The coordinator turns records into columns every few thousand pages (a whole
    # contest's Python objects were the memory peak at 100,000 precincts); pages arrive in
    # whatever order the workers finish them, and the table must still list them in tree
    # order, exactly as when a contest fits in one chunk.
    from etl import crawl
    from etl.crawl import SourceSpec, crawl_contests

    spec = SourceSpec(portal.base_url, tmp_path / "raw")
    whole = crawl_contests(spec, "ru", "jk2021", SMALL, concurrency=4, processes=2)
    assert max(whole.pages.column("contest_id").value_counts().field("counts").to_pylist()
               ) < crawl._COLUMNS_EVERY  # one chunk per contest
    monkeypatch.setattr(crawl, "_COLUMNS_EVERY", 7)
    chunked = crawl_contests(spec, "ru", "jk2021", SMALL, concurrency=4, processes=2)
    assert chunked.pages.num_rows == whole.pages.num_rows > 7 * 3
    assert chunked.pages.equals(whole.pages)


def test_a_page_record_lands_in_the_columns_named_after_its_fields() -> None:
    # page_record writes values in the records' field order; the crawl table names its
    # columns and struct fields from the same field lists: every value by its own name.
    from dataclasses import asdict
    from datetime import datetime

    from etl.normalise import crawl_table
    from etl.parse import BISHKEK_TZ
    from etl.records import BallotLine, CrawledDivision, DivisionPage, Link, ProtocolFigures, page_record

    protocol = ProtocolFigures(registered=9, ballots_issued=8, ballots_cast=7, invalid=1,
                               valid=6, turnout_pct_published=77.7, precincts_counted=3,
                               precincts_total=4)
    line = BallotLine(choice_position=2, choice_name="B", is_against_all=False, votes=5,
                      pct_published=55.5)
    link = Link(segment="7", name="Seven", href="/ru/results/x/list/7/")
    page = DivisionPage("1", "district", "One", datetime(2021, 11, 28, 20, tzinfo=BISHKEK_TZ),
                        protocol, True, (line,), (link,), (("registered", "9.5"),))
    row = crawl_table((), [CrawledDivision("list", "1", None, "u", "s", page_record(page))]
                      ).pages.to_pylist()[0]
    assert {name: row[name] for name in asdict(protocol)} == asdict(protocol)
    assert row["lines"] == [asdict(line)]
    assert row["children"] == [asdict(link)]
    assert row["fractional_counts"] == [{"figure": "registered", "text": "9.5"}]


def test_snapshot_meta_read_again_is_what_the_file_says_now(tmp_path: Path) -> None:
    # Parsed once per content: a file rewritten in place, same size, is read anew, and a
    # caller changing its copy does not change the next one's.
    from etl.normalise import read_snapshot_meta

    meta_file = tmp_path / "snapshot.json"
    meta_file.write_text('{"snapshot_id": "jk2021-a", "contests": ["list"]}')
    first = read_snapshot_meta(tmp_path)
    first["contests"] = ["changed by a caller"]
    assert read_snapshot_meta(tmp_path)["contests"] == ["list"]
    meta_file.write_text('{"snapshot_id": "jk2021-b", "contests": ["list"]}')
    assert read_snapshot_meta(tmp_path)["snapshot_id"] == "jk2021-b"
