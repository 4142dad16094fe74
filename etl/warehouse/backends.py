"""The two warehouse backends behind one small interface, chosen by URL.

`duckdb:///path/file.duckdb` (an embedded file; one writer at a time, so every call opens,
works and closes) or `postgresql://user@host:port/db` (psycopg 3). SQL is written once with
`?` placeholders; the PostgreSQL backend turns them into psycopg's `%s`.
"""

from __future__ import annotations

import io
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

log = logging.getLogger(__name__)

# A DuckDB file is locked by its writer; a reader (or a loader) that finds it locked waits
# this long for the other process to close it before giving up.
DUCKDB_LOCK_WAIT_SECONDS = 30.0
# PostgreSQL's work_mem for the load transaction's joins with a staged snapshot (SET LOCAL:
# the transaction only). A snapshot of 100,000 precincts hashes ~2.4 M result keys.
STAGED_WORK_MEM = "256MB"
# Rows per CSV chunk sent to PostgreSQL's COPY.
COPY_BATCH_ROWS = 50_000


class WarehouseURLError(ValueError):
    """A warehouse URL this project cannot use."""


class Backend(ABC):
    """An open connection to one warehouse; use as a context manager."""

    dialect: str

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one statement."""

    @abstractmethod
    def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one INSERT, UPDATE or DELETE; return the rows it changed."""

    @abstractmethod
    def staged(self, rows: pa.Table, like: str) -> AbstractContextManager[str]:
        """Make an Arrow table readable by SQL with the column types of table `like`.

        Inside a transaction; the context gives the relation's name and drops it on exit.
        """

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a query and return all its rows."""

    @abstractmethod
    def query_frame(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        """Run a query and return its rows as a pandas frame (column names from the query)."""

    def query_typed(self, sql: str, params: Sequence[Any], columns: Mapping[str, str]) -> pd.DataFrame:
        """Run a query; its rows as a frame of exactly `columns` (name -> pandas dtype)."""
        return typed_frame(self.query_frame(sql, params), columns)

    @abstractmethod
    def bulk_insert(self, table: str, rows: pa.Table) -> int:
        """Append an Arrow table's rows to `table` (columns by name) in bulk; return the count."""

    @abstractmethod
    def begin(self) -> None:
        """Start a transaction."""

    @abstractmethod
    def commit(self) -> None:
        """Commit the transaction."""

    @abstractmethod
    def rollback(self) -> None:
        """Roll the transaction back."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection."""

    def lock(self, key: str) -> None:  # noqa: B027 — a no-op is right for DuckDB
        """Serialise transactions on `key` until commit (DuckDB has one writer anyway)."""

    def refresh_statistics(self, written: Mapping[str, int]) -> list[str]:
        """After a committed load, bring the planner's statistics of the tables it wrote
        (`written`: table -> rows written) up to date where needed; the tables refreshed.
        DuckDB keeps its statistics as it writes: nothing to do."""
        return []

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything inside commits together, or not at all."""
        self.begin()
        try:
            yield
        except BaseException:
            self.rollback()
            raise
        self.commit()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(url: str) -> Backend:
    """Open the backend a warehouse URL names."""
    scheme = urlsplit(url).scheme
    if scheme == "duckdb":
        return DuckDBBackend(duckdb_path(url))
    if scheme in ("postgresql", "postgres"):
        return PostgresBackend(url)
    raise WarehouseURLError(
        f"unsupported warehouse URL {redact(url)!r}: use duckdb:///path/to/file.duckdb "
        "or postgresql://user@host:port/database"
    )


def duckdb_path(url: str) -> Path:
    """The file of a DuckDB URL, SQLAlchemy style like `etl.config.warehouse_url()`.

    `duckdb:///data/warehouse.duckdb` is relative to the working directory;
    `duckdb:////srv/cec/warehouse.duckdb` (four slashes) is absolute.
    """
    parts = urlsplit(url)
    if parts.netloc or not parts.path.startswith("/") or parts.path.rstrip("/") == "":
        raise WarehouseURLError(
            f"bad DuckDB URL {url!r}: use duckdb:///relative/file.duckdb "
            "or duckdb:////absolute/file.duckdb"
        )
    return Path(unquote(parts.path[1:]))


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def typed_frame(frame: pd.DataFrame, columns: Mapping[str, str]) -> pd.DataFrame:
    """`frame` with exactly `columns` (name -> pandas dtype), in that order."""
    typed = frame.reindex(columns=list(columns)).astype(dict(columns))
    return typed.reset_index(drop=True)


# Arrow types read straight into pandas' nullable dtypes (no NaN or object detour).
_ARROW_TO_PANDAS = {
    pa.string(): pd.StringDtype("pyarrow"),
    pa.large_string(): pd.StringDtype("pyarrow"),
    pa.string_view(): pd.StringDtype("pyarrow"),
    pa.int64(): pd.Int64Dtype(),
    pa.int32(): pd.Int64Dtype(),
    pa.bool_(): pd.BooleanDtype(),
    pa.float64(): pd.Float64Dtype(),
}


class DuckDBBackend(Backend):
    """A DuckDB file, opened for one call and closed after it."""

    dialect = "duckdb"

    def __init__(self, path: Path, lock_wait_seconds: float = DUCKDB_LOCK_WAIT_SECONDS) -> None:
        import duckdb

        path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + lock_wait_seconds
        while True:
            try:
                self.connection = duckdb.connect(str(path))
                break
            except duckdb.IOException as error:
                # Another process has the file open: wait for it rather than fail the load.
                if "lock" not in str(error).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.path = path
        self._staged = 0

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.connection.execute(sql, list(params))

    def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        changed = self.connection.execute(sql, list(params)).fetchone()
        return int(changed[0]) if changed else 0

    @contextmanager
    def staged(self, rows: pa.Table, like: str) -> Iterator[str]:
        # DuckDB reads the Arrow table in place: no copy into a temporary table.
        self._staged += 1
        view = f"staged_{like}_{self._staged}"
        self.connection.register(view, rows)
        try:
            yield view
        finally:
            self.connection.unregister(view)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.connection.execute(sql, list(params)).fetchall()

    def query_frame(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        return self.connection.execute(sql, list(params)).df()

    def query_typed(self, sql: str, params: Sequence[Any], columns: Mapping[str, str]) -> pd.DataFrame:
        # Through Arrow: `.df()` makes a Python object of every string first. A previous
        # snapshot of 1.9 M result rows: peak 1.7 GiB and 3.4 s that way, 0.8 GiB and 0.5 s so.
        table = self.connection.sql(sql, params=list(params)).to_arrow_table()
        frame = table.to_pandas(types_mapper=_ARROW_TO_PANDAS.get, self_destruct=True,
                                split_blocks=True)
        del table
        return typed_frame(frame, columns)

    def bulk_insert(self, table: str, rows: pa.Table) -> int:
        # The Arrow table as a view (`staged`), copied in one INSERT … SELECT.
        columns = ", ".join(rows.column_names)
        with self.staged(rows, table) as view:
            self.connection.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {view}")
        return rows.num_rows

    def begin(self) -> None:
        self.connection.begin()

    def commit(self) -> None:
        self.connection.commit()

    def rollback(self) -> None:
        self.connection.rollback()

    def close(self) -> None:
        self.connection.close()


# A table whose rows a load grew by more than this share of the planner's estimate is
# analyzed right after the load (autovacuum's default analyze scale factor).
ANALYZE_GROWTH = 0.1


class PostgresBackend(Backend):
    """A PostgreSQL database through psycopg 3; bulk rows go through COPY."""

    dialect = "postgres"

    def __init__(self, url: str) -> None:
        import psycopg

        try:
            # autocommit: transactions are explicit (BEGIN … COMMIT), as in DuckDB.
            self.connection = psycopg.connect(url, autocommit=True)
        except psycopg.OperationalError as error:
            raise ConnectionError(f"cannot connect to {redact(url)}: {error}") from error

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.connection.execute(self._sql(sql), list(params))

    def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.connection.execute(self._sql(sql), list(params)).rowcount

    @contextmanager
    def staged(self, rows: pa.Table, like: str) -> Iterator[str]:
        name = f"staged_{like}"
        columns = ", ".join(rows.column_names)
        self.execute(f"CREATE TEMPORARY TABLE {name} AS SELECT {columns} FROM {like} LIMIT 0")
        self.bulk_insert(name, rows)
        # Memory for the hash join with the current versions (the default work_mem, 4 MB,
        # spills millions of rows to disk in batches). No ANALYZE: the planner sizes the
        # table from its pages, and at kg2021's size ANALYZE cost more than it saved.
        self.execute(f"SET LOCAL work_mem = '{STAGED_WORK_MEM}'")
        yield name
        # Not in a `finally`: after an error the transaction is aborted and its rollback
        # takes the table with it.
        self.execute(f"DROP TABLE {name}")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = self.connection.execute(self._sql(sql), list(params))
        return cursor.fetchall()

    def query_frame(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        cursor = self.connection.execute(self._sql(sql), list(params))
        columns = [column.name for column in cursor.description or ()]
        return pd.DataFrame(cursor.fetchall(), columns=columns)

    def bulk_insert(self, table: str, rows: pa.Table) -> int:
        if rows.num_rows == 0:
            return 0
        # CSV written by Arrow: nulls are empty and unquoted, every string is quoted, so
        # COPY tells NULL from '' and quotes, commas and newlines in names round-trip.
        # Sent in batches: the server parses one while Arrow writes the next (two processes,
        # two cores), and no CSV of the whole table is held in memory.
        options = pa_csv.WriteOptions(include_header=False)
        columns = ", ".join(rows.column_names)
        with self.connection.cursor() as cursor, cursor.copy(
            f"COPY {table} ({columns}) FROM STDIN (FORMAT csv)"
        ) as copy:
            for batch in rows.to_batches(max_chunksize=COPY_BATCH_ROWS):
                buffer = io.BytesIO()
                pa_csv.write_csv(batch, buffer, options)
                copy.write(buffer.getbuffer())
        return rows.num_rows

    def lock(self, key: str) -> None:
        self.execute("SELECT pg_advisory_xact_lock(hashtext(?))", [key])

    def refresh_statistics(self, written: Mapping[str, int]) -> list[str]:
        """ANALYZE each table a load grew by more than a tenth (or never analyzed).

        Autovacuum would, but up to a minute later (its naptime): until then the planner
        sizes freshly loaded tables from stale statistics and joins the versioned tables
        row by row. On the kg2021 night's 17 snapshots `results_history` took 5.2 s
        instead of 0.7 s. ANALYZE reads a sample (30,000 rows a table), not the table.
        Only tables this role may analyze (their owner's rights: PostgreSQL merely warns
        otherwise), and never waiting for a lock (SKIP_LOCKED: a VACUUM or another
        loader's ANALYZE of the table is at work; its statistics come from that).
        """
        refreshed = []
        for table, rows in written.items():
            if rows <= 0:
                continue
            found = self.query("SELECT reltuples, pg_has_role(relowner, 'USAGE') FROM pg_class"
                               " WHERE oid = to_regclass(?)", [table])
            if not found or not found[0][1]:
                continue
            estimate = float(found[0][0]) if found[0][0] is not None else -1.0
            if estimate < 0 or rows > ANALYZE_GROWTH * estimate:
                self.execute(f"ANALYZE (SKIP_LOCKED) {table}")
                refreshed.append(table)
        return refreshed

    def begin(self) -> None:
        self.connection.execute("BEGIN")

    def commit(self) -> None:
        self.connection.execute("COMMIT")

    def rollback(self) -> None:
        self.connection.execute("ROLLBACK")

    def close(self) -> None:
        self.connection.close()
