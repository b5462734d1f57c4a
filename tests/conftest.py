"""Shared fixtures: a small simulated feed (made once per session) and a fresh store per test."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from components.data.snapshot import Store
from components.simulator.feed import FeedSpec, simulate
from components.simulator.trends import NewClass, PriorShift, StyleShift
from infra import processes
from infra.databases import LocalPostgres
from infra.labelstudio import LocalLabelStudio
from infra.ray import RayPorts
from tests.browsers import browser, chromium  # noqa: F401 - fixtures for every test module
from tests.databases import fresh_name, postgres, postgres_binaries, redis_server  # noqa: F401 - fixtures for every test module
from tests.kinds import pytest_collection_modifyitems  # noqa: F401 - every test carries one kind
from trendloop.settings import LabelStudioSettings

SMALL_FEED = FeedSpec(
    seed=3,
    posts_per_day=40,
    users=60,
    exif_share=0.4,
    corrupt_share=0.08,
    repost_share=0.08,
    trends=[
        PriorShift(start_day=1, ramp_days=1, weights={"fitness": 2.0}),
        NewClass(name="meme", look="meme", start_day=2, ramp_days=1, share=0.3),
        StyleShift(filter="noir", start_day=3, ramp_days=0, share=0.4),
    ],
)
SMALL_DAYS = range(5)


@pytest.fixture(scope="session")
def small_feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five days x 40 posts with broken uploads, reposts, EXIF and all three trend types."""
    out = tmp_path_factory.mktemp("feed")
    simulate(SMALL_FEED, out, SMALL_DAYS)
    return out


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def free_port() -> int:
    """A free port for a server a test starts (infra.processes.free_port), never the local Ray head's client
    port, which every test's settings default to."""
    return processes.free_port(avoid={RayPorts().client})


@contextmanager
def mlflow_server(backend_store_uri: str, log: Path, *options: str) -> Iterator[str]:
    """A real ``mlflow server`` on a free loopback port, its output in ``log``: yields its URL once /health
    answers, and stops it after."""
    port = free_port()
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", backend_store_uri,
             *options, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while not _answers(url + "/health"):
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:  # kept-alive client connections can hold its workers
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(30)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLabelStudio]:
    """A real Label Studio server for the session; tests keep their stores under its document root."""
    yield from label_studio_under(tmp_path_factory.mktemp("labelstudio"))


def label_studio_under(root: Path) -> Iterator[LocalLabelStudio]:
    """A real Label Studio with its state in ``root``/state, reading images from ``root``/homes; stopped after."""
    (root / "homes").mkdir()
    server = LocalLabelStudio(root / "state", free_port(), LabelStudioSettings().version, root / "homes")
    try:
        server.up(timeout=600)
        yield server
    finally:
        server.down()


@pytest.fixture(scope="session")
def label_studio_pg(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[LocalLabelStudio]:
    """A second real Label Studio for the session, on a database of the session's PostgreSQL (the cluster's)."""
    pg: LocalPostgres = request.getfixturevalue("postgres")
    root = tmp_path_factory.mktemp("labelstudio-pg")
    (root / "homes").mkdir()
    database = pg.url(pg.create_database(fresh_name("labelstudio")), "postgresql")
    server = LocalLabelStudio(
        root / "state", free_port(), LabelStudioSettings().version, root / "homes", database=database
    )
    try:
        server.up(timeout=900)  # the first start migrates the empty database (37 s on 2 cores, idle)
        yield server
    finally:
        server.down()


@pytest.fixture
def ls_home(label_studio: LocalLabelStudio, request: pytest.FixtureRequest) -> Path:
    """A state folder for one test, inside what the session's Label Studio may read images from."""
    return home_under(label_studio, request.node.name)


def home_under(server: LocalLabelStudio, test: str) -> Path:
    """A new folder for ``test`` under what ``server`` may read images from."""
    home = server.document_root / re.sub(r"\W+", "_", test)[:80]
    home.mkdir()
    return home
