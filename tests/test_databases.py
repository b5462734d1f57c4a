"""The local PostgreSQL and Redis servers (infra/databases.py): what they keep across restarts, how they fail."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import psycopg
import pytest
import redis

from components.errors import ConfigError
from infra.databases import DatabaseError, LocalPostgres, LocalRedis
from infra.labelstudio import LocalLabelStudio
from tests.browsers import missing
from tests.conftest import free_port
from tests.databases import copy_database, fresh_name


@pytest.mark.integration
def test_a_restarted_postgres_keeps_its_databases_and_password(postgres_binaries: Path) -> None:
    folder = Path(tempfile.mkdtemp(prefix="trendloop-pg-"))
    server = LocalPostgres(folder, free_port())
    try:
        server.up()
        server.create_database("kept")
        with psycopg.connect(server.url("kept", "postgresql"), autocommit=True) as conn:
            conn.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (41), (1)")
        password = server.password
        assert server.down() is True and server.running() is False and server.down() is False
        server.up()
        assert server.password == password
        with psycopg.connect(server.url("kept", "postgresql")) as conn:
            assert conn.execute("SELECT sum(x) FROM t").fetchone() == (42,)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(server.url("kept", "postgresql").replace(password, "wrong"))
    finally:
        server.down()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.integration
def test_a_folder_the_server_account_cannot_reach_is_refused_before_initdb(
    postgres_binaries: Path, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        missing("only root hands the server's folder to the postgres account", os.environ, "this test")
    closed = tmp_path / "closed"  # pytest's folders are 0700 root's: closed to the postgres account
    closed.mkdir(mode=0o700)
    server = LocalPostgres(closed / "pg", free_port())
    with pytest.raises(DatabaseError, match=r"closed/pg: the postgres account cannot reach it.*directly under /tmp"):
        server.up()
    assert not (closed / "pg" / "cluster").exists()
    assert server.running() is False


@pytest.mark.integration
def test_a_copied_database_holds_the_rows_and_goes_its_own_way(postgres: LocalPostgres) -> None:
    source = postgres.create_database(fresh_name("source"))
    with psycopg.connect(postgres.url(source, "postgresql"), autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        copy = copy_database(postgres, source, "copy")  # a connection to the source is open: it is ended
    with psycopg.connect(postgres.url(copy, "postgresql"), autocommit=True) as conn:
        conn.execute("INSERT INTO t VALUES (2)")
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (2,)
    with psycopg.connect(postgres.url(source, "postgresql")) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)


@pytest.mark.integration
def test_servers_refuse_a_taken_port_and_a_bad_database_name(postgres: LocalPostgres, tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(DatabaseError, match=f"port {port} on 127.0.0.1 is taken.*PostgreSQL"):
            LocalPostgres(tmp_path / "pg", port).up()
        with pytest.raises(DatabaseError, match=f"port {port} on 127.0.0.1 is taken.*Redis"):
            LocalRedis(tmp_path / "redis", port).up()
    assert not (tmp_path / "pg" / "cluster").exists()  # nothing initialised for a server that never started
    with pytest.raises(DatabaseError, match="not a database name"):
        postgres.create_database('x"; DROP DATABASE postgres; --')


@pytest.mark.integration
def test_a_stopped_redis_is_gone_and_a_new_one_starts_empty(tmp_path: Path) -> None:
    server = LocalRedis(tmp_path, free_port())
    server.up()
    redis.Redis(host="127.0.0.1", port=server.port).set("k", "v")
    assert server.down() is True and server.ping() is False and server.down() is False
    server.up()
    try:
        assert redis.Redis(host="127.0.0.1", port=server.port).get("k") is None  # no persistence: rebuilt online
    finally:
        server.down()


@pytest.mark.unit
@pytest.mark.parametrize(
    "url",
    ["sqlite:///ls.db", "postgresql://127.0.0.1:5432/ls", "postgresql://user:pw@127.0.0.1:5432/", "host:5432/db"],
)
def test_label_studio_refuses_a_database_that_is_not_a_postgresql_url(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"labelstudio\.database must be a PostgreSQL URL"):
        LocalLabelStudio(tmp_path, 1, "1.23.2", tmp_path, database=url)


@pytest.mark.unit
def test_label_studio_on_postgresql_gets_djangos_settings_and_no_sqlite_seed(tmp_path: Path) -> None:
    url = "postgresql://label%40studio:p%2Fw@db.example:6432/labels"
    server = LocalLabelStudio(tmp_path / "state", 1, "1.23.2", tmp_path, template_dir=tmp_path / "none", database=url)
    env = server.environment()
    assert {k: env[k] for k in env if k.startswith(("POSTGRE_", "DJANGO_DB"))} == {
        "DJANGO_DB": "postgresql",
        "POSTGRE_NAME": "labels",
        "POSTGRE_USER": "label@studio",
        "POSTGRE_PASSWORD": "p/w",
        "POSTGRE_HOST": "db.example",
        "POSTGRE_PORT": "6432",
    }
    server._seed_database(timeout=1)  # no template is built or copied: Label Studio migrates PostgreSQL itself
    assert not (tmp_path / "state" / "data").exists() and not (tmp_path / "none").exists()
