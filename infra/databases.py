"""PostgreSQL and Redis servers on 127.0.0.1 in a folder of their own: the stores a cluster deployment uses
(MLflow's backend store, Label Studio's database, Feast's SQL registry and Redis online store), run for real on
one machine for the suite and for anyone trying the cluster configuration locally.

Both run Debian's binaries (packages ``postgresql`` and ``redis-server``; ``make test`` installs them). Nothing
listens beyond 127.0.0.1; PostgreSQL takes connections with a password (SCRAM), generated on ``up``.
PostgreSQL refuses to run as root: under root the server runs as the ``postgres`` account the Debian package
creates, and its folder must be one that account can reach (e.g. under ``/tmp``, not a 0700 home).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

from components.errors import TrendloopError
from infra.processes import alive, port_taken, tail

NO_POSTGRES = "no PostgreSQL server binaries (initdb, pg_ctl): install Debian's postgresql package"
NO_REDIS = "no redis-server: install Debian's redis-server package"


class DatabaseError(TrendloopError):
    """A local PostgreSQL or Redis server could not be started, stopped or asked."""


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs: PATH's ``initdb``, else Debian's newest under /usr/lib/postgresql."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


class LocalPostgres:
    """One PostgreSQL cluster: ``data_dir`` holds its files, its socket, its log and its password."""

    user = "trendloop"

    def __init__(self, data_dir: Path, port: int):
        self.data_dir, self.port = data_dir.resolve(), port
        self._bin = postgres_bin()

    @property
    def password(self) -> str:
        return (self.data_dir / "password").read_text().strip()

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def url(self, database: str, driver: str = "postgresql+psycopg") -> str:
        """An SQLAlchemy URL (MLflow, Feast's SQL registry); ``driver="postgresql"`` for libpq's own form."""
        return f"{driver}://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _as_server_account(self, command: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command

    def _run(self, command: list[str], what: str, timeout: float = 120.0) -> str:
        try:
            done = subprocess.run(
                self._as_server_account(command), capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as err:
            raise DatabaseError(f"PostgreSQL: {what} did not finish within {timeout:.0f} s") from err
        if done.returncode != 0:
            said = tail(done.stderr or done.stdout, 3)
            raise DatabaseError(f"PostgreSQL: {what} failed (exit {done.returncode}): {said}")
        return done.stdout

    def up(self, timeout: float = 60.0) -> None:
        """Create the cluster on first use, then start it and wait until it takes connections."""
        if self._bin is None:
            raise DatabaseError(NO_POSTGRES)
        if port_taken(self.port):
            raise DatabaseError(f"port {self.port} on 127.0.0.1 is taken: pick a free port for PostgreSQL")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cluster = self.data_dir / "cluster"
        if not (cluster / "PG_VERSION").exists():
            self._init(cluster)
        self._run(
            [
                str(self._bin / "pg_ctl"), "start", "--wait", f"--timeout={int(timeout)}", "-D", str(cluster),
                "-l", str(self.log_path),
                "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data_dir} -c fsync=off",
            ],
            "start",
            timeout=timeout + 10,
        )  # fmt: skip

    def _init(self, cluster: Path) -> None:
        """initdb with a generated password for the one role; the files belong to the server's account."""
        (self.data_dir / "password").write_text(secrets.token_urlsafe(18) + "\n")
        (self.data_dir / "password").chmod(0o600)
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            for path in (self.data_dir, self.data_dir / "password"):
                os.chown(path, account.pw_uid, account.pw_gid)
            reach = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(self.data_dir)], check=False)
            if reach.returncode != 0:  # the account itself says: no guessing at modes, ACLs or mounts
                raise DatabaseError(
                    f"{self.data_dir}: the postgres account cannot reach it (a parent folder is closed to others); "
                    "give the server a folder of its own directly under /tmp"
                )
        self._run(
            [
                str(self._bin / "initdb"), "-D", str(cluster), "-U", self.user, "--auth=scram-sha-256",
                f"--pwfile={self.data_dir / 'password'}", "--encoding=UTF8", "--locale=C.UTF-8",
            ],
            "initdb",
        )  # fmt: skip

    def running(self) -> bool:
        pid = self._pid()
        return pid is not None and alive(pid)

    def _pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data_dir / "cluster" / "postmaster.pid").read_text().split()[0])
        return None

    def create_database(self, name: str, template: str | None = None) -> str:
        """A new database (a copy of ``template`` when given: PostgreSQL copies its files); returns its name."""
        import psycopg  # noqa: PLC0415 - only callers that use PostgreSQL need the driver

        copy = f" TEMPLATE {_identifier(template)}" if template else ""
        with psycopg.connect(self.url("postgres", "postgresql"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {_identifier(name)}{copy}")
        return name

    def down(self, timeout: float = 30.0) -> bool:
        """Stop the server (fast shutdown); False if it was not running."""
        if not self.running() or self._bin is None:
            return False
        try:
            self._run(
                [str(self._bin / "pg_ctl"), "stop", "-D", str(self.data_dir / "cluster"), "-m", "fast", "--wait"],
                "stop",
                timeout=timeout,
            )
        except DatabaseError:
            pid = self._pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return True


class LocalRedis:
    """One redis-server: no persistence (the online store is rebuilt by materialising), ``data_dir`` holds its log."""

    def __init__(self, data_dir: Path, port: int):
        self.data_dir, self.port = data_dir.resolve(), port
        self._process: subprocess.Popen | None = None

    @property
    def connection_string(self) -> str:
        """Feast's form: ``host:port`` then ``,key=value`` options."""
        return f"127.0.0.1:{self.port}"

    def up(self, timeout: float = 30.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise DatabaseError(NO_REDIS)
        if port_taken(self.port):
            raise DatabaseError(f"port {self.port} on 127.0.0.1 is taken: pick a free port for Redis")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with (self.data_dir / "server.log").open("ab") as log:
            self._process = subprocess.Popen(
                [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.data_dir),
                 "--save", "", "--appendonly", "no", "--protected-mode", "yes"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping():
                return
            if self._process.poll() is not None:
                raise DatabaseError(f"redis-server exited while starting (see {self.data_dir / 'server.log'})")
            time.sleep(0.1)
        raise DatabaseError(f"redis-server did not answer on port {self.port} within {timeout:.0f} s")

    def ping(self) -> bool:
        import redis  # noqa: PLC0415 - Feast's Redis extra brings the client

        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def down(self, timeout: float = 10.0) -> bool:
        if self._process is None or self._process.poll() is not None:
            return False
        self._process.terminate()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        return True


def _identifier(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise DatabaseError(f"{name!r} is not a database name (letters, digits and _ only)")
    return f'"{name}"'
