"""The cluster's backing stores for the suite: a real PostgreSQL and a real Redis (Debian's), one of each per
session on 127.0.0.1 in temporary folders, and the fresh databases tests take from them.

The registry, feature and labelling tests run once on the embedded default's stores (SQLite files) and once on
these (``BACKENDS``). Where the servers' binaries are missing those runs skip on a developer's machine and FAIL
under CI (``make test`` installs both packages). The fixtures are imported by ``tests/conftest.py``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.databases import NO_POSTGRES, NO_REDIS, LocalPostgres, LocalRedis, postgres_bin
from tests.browsers import missing

BACKENDS = ("sqlite", "postgresql")  # the embedded default's stores, then the cluster's
_NAMES = itertools.count()


def fresh_name(prefix: str) -> str:
    """A database name no other test of the session has."""
    return f"{prefix}_{next(_NAMES)}"


@pytest.fixture(scope="session")
def postgres_binaries() -> Path:
    """Where Debian's PostgreSQL programs are, for tests that start servers of their own."""
    found = postgres_bin()
    if found is None:
        missing(NO_POSTGRES, os.environ, "the PostgreSQL-backed tests")
    return found


@pytest.fixture(scope="session")
def postgres(postgres_binaries: Path) -> Iterator[LocalPostgres]:
    """A PostgreSQL server for the session (its folder under /tmp: under root the server runs as `postgres`)."""
    from tests.conftest import free_port  # noqa: PLC0415 - conftest imports this module

    folder = Path(tempfile.mkdtemp(prefix="trendloop-pg-"))
    server = LocalPostgres(folder, free_port())
    try:
        server.up()
        yield server
    finally:
        server.down()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    from tests.conftest import free_port  # noqa: PLC0415 - conftest imports this module

    if shutil.which("redis-server") is None:
        missing(NO_REDIS, os.environ, "the Redis-backed tests")
    server = LocalRedis(tmp_path_factory.mktemp("redis"), free_port())
    try:
        server.up()
        yield server
    finally:
        server.down()


def copy_database(server: LocalPostgres, source: str, prefix: str) -> str:
    """A copy of ``source`` under a new name. PostgreSQL copies from a database nobody is connected to: the
    connections a client left open to ``source`` (MLflow's pooled ones) are ended first."""
    import psycopg  # noqa: PLC0415

    with psycopg.connect(server.url("postgres", "postgresql"), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (source,),
        )
    return server.create_database(fresh_name(prefix), template=source)
