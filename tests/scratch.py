"""Throwaway PostgreSQL databases and schemas, for the warehouse tests and the benchmarks
(`bench/` imports this as `tests.scratch`).

A run gets its own uniquely named database, dropped afterwards, and each warehouse in it
its own empty schema, so runs never see each other's rows and nothing is left behind.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

# The server the tests and benchmarks create their databases on (documented in .env.example).
ADMIN_URL_ENV = "CEC_TEST_POSTGRES_URL"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextmanager
def scratch_database(admin_url: str, prefix: str) -> Iterator[str]:
    """A new database `<prefix>_<random>` created through `admin_url`; dropped on exit."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlsplit(admin_url)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def scratch_schema_url(database_url: str, prefix: str) -> str:
    """A URL whose connections work in a new, empty schema `<prefix>_<random>` of the database."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{name}"')
    separator = "&" if urlsplit(database_url).query else "?"
    return f"{database_url}{separator}options=-csearch_path%3D{name}"
