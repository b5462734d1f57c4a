"""The embedded default's Label Studio: a real server on 127.0.0.1, started and stopped by trendloop.

It runs in its own environment (``uv tool run --from label-studio==<version>``:
Label Studio pins Django, pytz and pyarrow versions that our environment cannot
share), every package of it pinned by ``labelstudio-<version>.txt`` beside this
module where we ship one (a release of a package Label Studio leaves open must not
break a machine's first install); uv itself is one of our dependencies, found
beside the interpreter (``find_uv``). Everything it keeps lives under ``state_dir``::

    credentials.json   admin e-mail, password and API token, made on first start (mode 0600)
    data/              Label Studio's database and media (LABEL_STUDIO_BASE_DATA_DIR)
    server.json        pid, port and start time of the running server
    server.log         its output

The server reads task images from ``document_root`` (local-files serving), which
is the image store: nothing else on the machine is readable through it.

Its database is a SQLite file under ``data/`` unless ``database`` names a PostgreSQL
one (``postgresql://user:password@host:port/name``, as on a cluster): Label Studio
then migrates that database on its first start, and ``data/`` keeps only media.

A new state folder's database starts as a copy of an empty, migrated one that is
built once per machine and Label Studio version (``prepare``; ``make`` does it at
install): migrating Label Studio's schema takes about 35 s of CPU on 2 cores, a
copy a few milliseconds. The copy holds no user, token or secret: the server
creates the admin from ``credentials.json`` on its first start and keeps its own
secret key in ``data/.env``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sysconfig
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from components.errors import ConfigError, LabelingError
from components.files import write_atomic
from infra.processes import alive, tail

ADMIN = "admin@trendloop.local"
DATABASE = "label_studio.sqlite3"  # under LABEL_STUDIO_BASE_DATA_DIR
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 never goes through a proxy


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    token: str


@dataclass(frozen=True)
class ServerStatus:
    running: bool
    url: str
    pid: int | None
    detail: str  # one line: why not running, or since when


class LocalLabelStudio:
    def __init__(
        self,
        state_dir: Path,
        port: int,
        version: str,
        document_root: Path,
        template_dir: Path | None = None,
        database: str | None = None,
    ):
        self.state_dir = state_dir.resolve()
        self.port = port
        self.version = version
        self.document_root = document_root.resolve()
        self.template_dir = (template_dir or _machine_cache()).resolve()  # where empty migrated databases are kept
        self.database = database  # a PostgreSQL URL; None: SQLite under data/
        if database is not None:
            _postgres_environment(database)  # a malformed URL is refused here, not by a server that never starts

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "server.log"

    def credentials(self) -> Credentials:
        """The admin's credentials, generated on first use and kept readable by the owner only."""
        path = self.state_dir / "credentials.json"
        if path.exists():
            return Credentials(**json.loads(path.read_text()))
        creds = Credentials(ADMIN, secrets.token_urlsafe(18), secrets.token_hex(20))
        write_atomic(path, json.dumps(creds.__dict__, indent=2))
        path.chmod(0o600)
        return creds

    def command(self) -> list[str]:
        scripts = Path(sysconfig.get_path("scripts"))
        uv = find_uv(os.environ, scripts)
        if uv is None:
            raise ConfigError(
                "starting Label Studio needs uv (it runs in its own environment) and none was found: "
                f"UV is unset, {scripts} (beside this Python) holds none, neither does the PATH; reinstall the "
                "environment (`make sync`: uv is one of its dependencies), set UV to a uv binary, "
                "or set labelstudio.url to a running Label Studio"
            )
        pins = constraints(self.version)
        pinned = ["--constraints", str(pins)] if pins is not None else []
        return [uv, "tool", "run", *pinned, "--from", f"label-studio=={self.version}", "label-studio", "start"]

    def environment(self) -> dict[str, str]:
        creds = self.credentials()
        return {
            **os.environ,
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.state_dir / "data"),
            "LABEL_STUDIO_USERNAME": creds.username,
            "LABEL_STUDIO_PASSWORD": creds.password,
            "LABEL_STUDIO_USER_TOKEN": creds.token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(self.document_root),
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "SSRF_PROTECTION_ENABLED": "false",  # webhooks to 127.0.0.1
            "COLLECT_ANALYTICS": "false",
            **(_postgres_environment(self.database) if self.database else {}),
        }

    # -- the empty database a new state folder starts from ----------------------------------

    @property
    def template(self) -> Path:
        return self.template_dir / f"label-studio-{self.version}" / DATABASE

    def prepare(self, timeout: float = 600.0) -> Path:
        """Build, once per machine and version, the empty migrated database new state folders copy.

        ``label-studio version`` applies the migrations and exits without creating a user. It runs
        in a folder of its own; only a finished database is renamed into place, so a build that
        fails or is interrupted leaves no template behind."""
        if self.template.exists():
            return self.template
        self.template.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.template.parent, prefix=".building-") as building:
            env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": building, "COLLECT_ANALYTICS": "false"}
            log = Path(building) / "prepare.log"
            with log.open("wb") as out:
                try:
                    done = subprocess.run(
                        [*self.command(), "version"], cwd=building, env=env, stdin=subprocess.DEVNULL,
                        stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False,
                    )  # fmt: skip
                except subprocess.TimeoutExpired as err:
                    raise LabelingError(
                        f"Label Studio {self.version} did not build its database within {timeout:.0f} s"
                    ) from err
            database = Path(building) / DATABASE
            if done.returncode != 0 or not database.exists():
                said = _tail(log) or "no output"
                raise LabelingError(
                    f"Label Studio {self.version} could not build its database (exit {done.returncode}): {said}"
                )
            os.replace(database, self.template)
        return self.template

    def _seed_database(self, timeout: float) -> None:
        """A state folder without a database starts from a copy of the template (see ``prepare``)."""
        database = self.state_dir / "data" / DATABASE
        if self.database is not None or database.exists():
            return
        template = self.prepare(timeout)
        partial = database.with_name(f".{DATABASE}.copying")
        shutil.copyfile(template, partial)
        os.replace(partial, database)

    # -- lifecycle -----------------------------------------------------------------------

    def _record(self) -> dict | None:
        path = self.state_dir / "server.json"
        return json.loads(path.read_text()) if path.exists() else None

    def healthy(self) -> bool:
        try:
            with _DIRECT.open(self.url + "/health", timeout=2) as response:
                return json.loads(response.read()).get("status") == "UP"
        except (OSError, ValueError):
            return False

    def status(self) -> ServerStatus:
        record = self._record()
        pid = record["pid"] if record and alive(record["pid"]) else None
        if pid is not None and self.healthy():
            return ServerStatus(True, self.url, pid, f"up since {record['started_at']}")
        if pid is not None:
            return ServerStatus(False, self.url, pid, "started but not answering yet (see server.log)")
        if self.healthy():
            return ServerStatus(
                False, self.url, None, f"port {self.port} answers, but not with the server trendloop started"
            )
        return ServerStatus(False, self.url, None, "stopped")

    def check_port(self) -> None:
        """Raise unless the port is free or held by the server this state folder started."""
        record = self._record()
        if not (record and alive(record["pid"])) and self.healthy():
            raise LabelingError(
                f"something else answers on port {self.port}; set labelstudio.port to a free port "
                "(or labelstudio.url to use that server)"
            )

    def up(self, timeout: float = 600.0) -> ServerStatus:
        """Start the server unless it runs, and wait until it answers (a new state folder copies ``template``)."""
        record = self._record()
        if record and alive(record["pid"]):
            return self._wait(record["pid"], None, timeout)
        self.check_port()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "data").mkdir(exist_ok=True)
        self._seed_database(timeout)
        command = [*self.command(), "--no-browser", "--internal-host", "127.0.0.1", "--port", str(self.port)]
        with self.log_path.open("ab") as log:
            process = subprocess.Popen(
                command,
                cwd=self.state_dir,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: `down` stops uv and the server together
            )
        record = {"pid": process.pid, "port": self.port, "version": self.version, "started_at": _now()}
        write_atomic(self.state_dir / "server.json", json.dumps(record, indent=2))
        return self._wait(process.pid, process, timeout)

    def _wait(self, pid: int, process: subprocess.Popen | None, timeout: float) -> ServerStatus:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return self.status()
            exited = process.poll() is not None if process is not None else not alive(pid)
            if exited:
                (self.state_dir / "server.json").unlink(missing_ok=True)
                raise LabelingError(f"Label Studio exited while starting: {self._log_tail()}")
            time.sleep(1.0)
        raise LabelingError(f"Label Studio did not answer on {self.url} within {timeout:.0f} s: {self._log_tail()}")

    def down(self, timeout: float = 30.0) -> bool:
        """Stop the server this state folder started; False if none was running."""
        record = self._record()
        if record is None:
            return False
        pid = record["pid"]
        stopped = alive(pid)
        if stopped:
            _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if alive(pid):
                _signal_group(pid, signal.SIGKILL)
        (self.state_dir / "server.json").unlink(missing_ok=True)
        return stopped

    def _log_tail(self) -> str:
        if not self.log_path.exists():
            return "no log"
        return _tail(self.log_path) + f" (full log: {self.log_path})"


def _postgres_environment(url: str) -> dict[str, str]:
    """Label Studio's settings for a PostgreSQL database (its ``DJANGO_DB`` and ``POSTGRE_*`` variables)."""
    parts = urllib.parse.urlsplit(url)
    name = parts.path.lstrip("/")
    if parts.scheme not in ("postgresql", "postgres") or not (parts.hostname and parts.username and name):
        raise ConfigError(
            "labelstudio.database must be a PostgreSQL URL, postgresql://user:password@host:port/name; "
            f"got {parts.scheme or 'no scheme'}://{parts.hostname or ''}/{name}"
        )
    return {
        "DJANGO_DB": "postgresql",
        "POSTGRE_NAME": name,
        "POSTGRE_USER": urllib.parse.unquote(parts.username),
        "POSTGRE_PASSWORD": urllib.parse.unquote(parts.password or ""),
        "POSTGRE_HOST": parts.hostname,
        "POSTGRE_PORT": str(parts.port or 5432),
    }


def constraints(version: str) -> Path | None:
    """The pins of Label Studio ``version``'s whole environment, shipped beside this module; None for a version
    we ship none for (it then resolves afresh, as Label Studio's own requirements allow)."""
    pins = Path(__file__).with_name(f"labelstudio-{version}.txt")
    return pins if pins.exists() else None


def find_uv(environ: Mapping[str, str], scripts: Path) -> str | None:
    """The uv that runs Label Studio: ``$UV``, else the environment's own (in ``scripts``), else the PATH's.

    The environment's own comes before the PATH: it is the pinned version (a dependency), and it is
    there whether or not the environment is activated, e.g. for ``.venv/bin/trendloop services up``
    from a shell whose PATH holds no uv (make bootstraps one into .tools/, on nobody's PATH)."""
    if environ.get("UV"):
        return environ["UV"]
    return shutil.which("uv", path=str(scripts)) or shutil.which("uv", path=environ.get("PATH", os.defpath))


def _tail(log: Path) -> str:
    return tail(log.read_text(errors="replace"))


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _machine_cache() -> Path:
    """trendloop's cache on this machine (XDG_CACHE_HOME, else ~/.cache), shared by every checkout."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trendloop"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
