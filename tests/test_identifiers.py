"""Identifiers from the portal, DAG params and the command line never reach a file path
unchecked (issue 10, item 9)."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from receivers import LoopbackHttpServer

from etl.__main__ import main
from etl.cycle import UNAVAILABLE, detect_change, reprocess_snapshots
from etl.identifiers import InvalidIdentifierError, checked_id

PAGES = Path(__file__).parent / "fixtures" / "pages"


@pytest.mark.parametrize("value", ["jk2021", "okrug-7", "list",
                                   "jk2021-20211128T201800-3f9a0c1b2d4e", "A_1"])
def test_plain_ids_pass(value: str) -> None:
    assert checked_id(value, "id") == value


@pytest.mark.parametrize("value", ["", ".", "..", "../x", "a/b", "/etc", "a b", "-rf", "x" * 129,
                                   "okrug\x00", "jk2021\n", "ok'rug", None, 7])
def test_odd_ids_are_refused_with_a_clear_error(value: object) -> None:
    with pytest.raises(InvalidIdentifierError, match="not a valid identifier"):
        checked_id(value, "contest id")


def test_cli_refuses_an_election_id_that_is_a_path(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--election", "../../tmp", "--portal", "http://127.0.0.1:9"])
    assert exit_.value.code == 2
    assert "election id '../../tmp' is not a valid identifier" in capsys.readouterr().err


def test_reprocess_params_never_reach_rmtree(tmp_path: Path, isolated_data_dir: Path) -> None:
    victim = isolated_data_dir / "staging" / "victim"
    victim.mkdir(parents=True)
    (victim / "snapshot.json").write_text("{}")
    warehouse = f"duckdb:///{tmp_path}/w.duckdb"
    with pytest.raises(InvalidIdentifierError, match="snapshot id"):
        reprocess_snapshots("jk2021", ["../../victim"], warehouse)
    with pytest.raises(InvalidIdentifierError, match="election_id"):
        reprocess_snapshots("../staging", [], warehouse)
    assert (victim / "snapshot.json").exists()


@pytest.fixture
def hostile_portal() -> Iterator[str]:
    """A portal whose election page lists a contest id that is a path."""
    page = (PAGES / "election_ru.html").read_bytes().replace(
        b'data-contest="okrug-1"', b'data-contest="../../../../tmp/x"')

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with LoopbackHttpServer(Handler) as server:
        yield server.url


def test_a_contest_id_from_the_portal_that_is_a_path_is_refused(hostile_portal: str) -> None:
    detection = detect_change(hostile_portal, "jk2021")
    assert detection.status == UNAVAILABLE
    assert "contest id on the election page '../../../../tmp/x' is not a valid identifier" in str(
        detection.reason)
