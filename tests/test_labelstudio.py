"""Integration: the labelling loop against a real Label Studio server (started once per session)."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import skimage.data  # a development dependency: real photos shipped in the package
import torch
from personal import PSEUDONYMS
from PIL import Image

from active_learning.annotators import AnnotatorsConfig, annotate
from active_learning.consensus import OTHER
from active_learning.labelstudio import LabelingProject, config_labels
from active_learning.loop import commit_labels, offered_labels, pull_labels, push_queued, select_posts
from active_learning.queue import LabelQueue
from active_learning.strategies import SelectionConfig
from components.data.ingest import ingest, read_labels
from components.data.snapshot import Store
from components.errors import LabelingError
from components.model.predict import Predictor
from components.model.preprocess import Preprocessing
from components.model.tagger import TaggerSpec, build_tagger
from infra.labelstudio import LocalLabelStudio, constraints, find_uv
from tests.conftest import SMALL_FEED, free_port, home_under
from tests.databases import BACKENDS
from trendloop.settings import LabelStudioSettings

LABELS = ("food", "pets", "selfie", "cars", "fitness", "flowers", "landscape", "city")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"  # git-ignored: pictures for people (and docs)


def untrained_tagger() -> Predictor:
    """A small tagger over LABELS with seeded random weights: real predictions to attach, no training."""
    torch.manual_seed(0)
    spec = TaggerSpec("resnet18", LABELS, Preprocessing(image_size=32, resize=36))
    return Predictor(build_tagger(spec).eval())


class Loop:
    """One test's store, queue, project and model, over the session's server."""

    def __init__(self, server: LocalLabelStudio, home: Path, feed: Path, title: str):
        self.store = Store(home / "store")
        ingest(
            feed, self.store, PSEUDONYMS, labels=read_labels(feed / "oracle" / "labels"), until=SMALL_FEED.day_start(2)
        )
        ingest(feed, self.store, PSEUDONYMS, since=SMALL_FEED.day_start(2))
        self.truth = read_labels(feed / "oracle" / "labels")
        self.queue = LabelQueue(home / "labeling" / "queue.db")
        self.project = LabelingProject(server.url, server.credentials().token, title)
        self.predictor = untrained_tagger()
        self.images = (self.store.root / "images").resolve()
        # images are served from the server's document root; this test's store sits one folder below it
        self.image_url = f"/data/local-files/?d={home.name}/store/{{image}}"

    def select(self, budget: int, **config) -> None:
        select_posts(
            self.store, self.store.head(), self.predictor, "3", self.queue, SelectionConfig(**config), budget=budget
        )

    def push(self, overlap: int = 1, project: LabelingProject | None = None, chunk: int = 500):
        return push_queued(
            self.queue,
            project or self.project,
            offered_labels(self.store, LABELS),
            image_url=self.image_url,
            overlap=overlap,
            local_files=self.images,
            chunk=chunk,
        )

    def tasks(self) -> pd.DataFrame:
        rows = [
            {"task": t.id, "post_id": t.data["post_id"], "annotations": len(t.annotations or []), "raw": t}
            for t in self.project.tasks_below(10**6)
        ]
        return pd.DataFrame(rows)


@pytest.fixture(params=BACKENDS)
def server(request: pytest.FixtureRequest) -> LocalLabelStudio:
    """The session's Label Studio on SQLite (the embedded default), then the one on PostgreSQL (a cluster's)."""
    return request.getfixturevalue("label_studio" if request.param == "sqlite" else "label_studio_pg")


@pytest.fixture
def loop(server: LocalLabelStudio, small_feed: Path, request: pytest.FixtureRequest) -> Loop:
    name = request.node.name
    return Loop(
        server, home_under(server, name), small_feed, f"{name[:40]} {hashlib.sha256(name.encode()).hexdigest()[:8]}"
    )


@pytest.mark.integration
def test_project_is_created_once_and_only_grows(loop: Loop, server: LocalLabelStudio):
    project = loop.project
    first = project.ensure(["food", "pets"], overlap=3, local_files=loop.images)
    again = LabelingProject(project.url, server.credentials().token, project.title)
    assert again.ensure(["pets", "food"], local_files=loop.images) == first  # found by title, not made twice
    assert project.labels() == ["food", "pets"]
    project.ensure(["food", "pets", "meme"], overlap=3)
    raw = project.client.projects.get(first)
    assert config_labels(raw.label_config) == ["food", "pets", "meme"] and OTHER in raw.label_config
    assert raw.maximum_annotations == 3 and raw.sampling == "Uncertainty sampling"
    storages = project.client.import_storage.local.list(project=first)
    assert [Path(s.path) for s in storages] == [loop.images]  # the store is connected once


@pytest.mark.integration
def test_push_creates_pre_annotated_tasks_once(loop: Loop, server: LocalLabelStudio):
    loop.select(12, strategy="entropy", control_share=0.25)
    queued = {p.post_id: p for p in loop.queue.posts()}
    report = loop.push()
    assert (report.pushed, report.found, report.pending) == (12, 0, 0)
    tasks = loop.tasks()
    assert sorted(tasks.post_id) == sorted(queued)
    task = tasks.raw.iloc[0]
    post = queued[task.data["post_id"]]
    [prediction] = task.predictions
    prediction = prediction if isinstance(prediction, dict) else prediction.model_dump()
    assert prediction["model_version"] == "3" and prediction["score"] == pytest.approx(post.confidence)
    assert loop.project.client.projects.get(report.project_id).model_version == "3"  # tasks ordered by its scores
    assert prediction["result"][0]["value"]["choices"] == [post.predicted]
    assert task.data["arm"] == post.arm and task.data["caption"] == (post.caption or "")
    assert sum(p.arm == "control" for p in queued.values()) == 3
    # Label Studio serves the stored image itself, byte for byte
    request = urllib.request.Request(
        server.url + task.data["image"], headers={"Authorization": f"Token {server.credentials().token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.read() == (loop.store.root / post.image).read_bytes()
    # pushing again sends nothing; a queue that lost its state finds the tasks instead of duplicating them
    assert loop.push().project_id is None
    fresh = LabelQueue(loop.queue.path.with_name("fresh.db"))
    fresh.add(replace(p, task_id=None, project_id=None, pushed_at=None) for p in loop.queue.posts())
    recovered = push_queued(fresh, loop.project, LABELS, image_url=loop.image_url)
    assert (recovered.pushed, recovered.found, recovered.pending) == (0, 12, 0)
    assert len(loop.tasks()) == 12
    # a new selection never picks a queued post
    loop.select(5)
    assert len(loop.queue.posts()) == 17 and loop.push().pushed == 5 and len(loop.tasks()) == 17


@pytest.mark.integration
def test_pull_decides_by_majority_names_new_classes_and_commits_once(loop: Loop):
    loop.select(6, diversity=False, control_share=0.0)
    loop.push(overlap=3)
    tasks = loop.tasks().sort_values("post_id").reset_index(drop=True)
    people = list(loop.project.annotator_ids(["ann-a", "ann-b", "ann-c"]).values())
    votes = [
        [("food", None), ("food", None), ("pets", None)],  # food, 2 of 3
        [(OTHER, "Meme"), (OTHER, "#meme"), ("food", None)],  # a new class, named twice
        [(OTHER, "meme"), (OTHER, "meme "), (OTHER, "meme")],  # the same new class
        [("food", None), ("pets", None)],  # tied so far: waits for a third vote
        [(OTHER, None), (OTHER, None), ("cars", None)],  # other, but nobody named it
    ]
    for row, answers in zip(tasks.itertuples(), votes, strict=False):
        for person, (choice, trend) in zip(people, answers, strict=False):
            loop.project.annotate(row.task, choice, trend, annotator=person)
    report = pull_labels(loop.queue, loop.project, LABELS, min_votes=2)
    ids = tasks.post_id.tolist()
    assert (report.tasks, report.annotations, report.new_annotations) == (5, 14, 14)
    assert loop.queue.uncommitted() == {ids[0]: "food", ids[1]: "meme", ids[2]: "meme"}
    assert report.new_classes == {"meme": 2} and report.undecided == {"tied": 1, "unnamed": 1}
    assert report.agreement.posts == 5 and 0 < report.agreement.pairwise < 1
    # pulling again adds nothing
    again = pull_labels(loop.queue, loop.project, LABELS, min_votes=2)
    assert again.new_annotations == 0 and len(loop.queue.annotations()) == 14
    # the tie is broken by a third annotator on the next pull
    loop.project.annotate(tasks.task[3], "pets", annotator=people[2])
    third = pull_labels(loop.queue, loop.project, LABELS, min_votes=2)
    assert third.new_annotations == 1 and loop.queue.uncommitted()[ids[3]] == "pets"
    # committed once: the labels land in a snapshot, a second commit finds nothing new
    head = loop.store.head()
    committed = commit_labels(loop.store, loop.queue)
    assert committed.new_snapshot and committed.relabelled == sorted(ids[:4])
    rows = {r["post_id"]: r for r in loop.store.head().manifest().to_pylist()}
    assert rows[ids[1]]["label"] == "meme" and rows[ids[1]]["label_source"] == "annotators"
    assert loop.store.head().parent == head.id
    assert commit_labels(loop.store, loop.queue).relabelled == [] and loop.queue.uncommitted() == {}
    # the named class is offered to annotators from the next push on
    loop.select(2)
    loop.push(overlap=3)
    assert "meme" in loop.project.labels()


@pytest.mark.integration
def test_simulated_annotators_label_through_label_studio(loop: Loop):
    loop.select(10, control_share=0.2)
    loop.push(overlap=3)
    report = annotate(loop.project, loop.truth, AnnotatorsConfig(count=3, per_task=3, error_rate=0.0))
    assert (report.tasks, report.annotations, report.wrong) == (10, 30, 0)
    assert (loop.tasks().annotations == 3).all()
    assert annotate(loop.project, loop.truth, AnnotatorsConfig(count=3, per_task=3)).annotations == 0  # all done
    pulled = pull_labels(loop.queue, loop.project, LABELS, min_votes=2)
    decided = loop.queue.uncommitted()
    assert len(decided) == 10 and all(label == loop.truth[post] for post, label in decided.items())
    assert pulled.agreement.kappa == pytest.approx(1.0)
    assert set(pulled.accuracy) <= {"active", "control"} and pulled.accuracy
    named = {post for post in decided if loop.truth[post] not in LABELS}
    assert report.named == 3 * len(named) and pulled.new_classes == ({"meme": len(named)} if named else {})


@pytest.mark.integration
def test_simulated_annotators_make_the_errors_they_are_told_to(loop: Loop):
    loop.select(8, control_share=0.0)
    loop.push()
    report = annotate(loop.project, loop.truth, AnnotatorsConfig(count=2, per_task=1, error_rate=1.0))
    assert report.annotations == report.wrong == 8
    pull_labels(loop.queue, loop.project, LABELS)
    assert all(label != loop.truth[post] for post, label in loop.queue.uncommitted().items())


def ask(handler: BaseHTTPRequestHandler, host: str, port: int) -> tuple[int, list[tuple[str, str]], bytes]:
    """Send the request ``handler`` received on to ``host``:``port``; its answer's status, headers and body."""
    body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
    upstream = http.client.HTTPConnection(host, port, timeout=60)
    upstream.request(handler.command, handler.path, body=body, headers=dict(handler.headers))
    answer = upstream.getresponse()
    return answer.status, answer.getheaders(), answer.read()


def relay(handler: BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
    """Answer ``handler``'s client with an answer ``ask`` got."""
    handler.send_response(status)
    for key, value in headers:
        if key.lower() not in ("transfer-encoding", "connection", "content-length"):
            handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class Proxy:
    """An HTTP proxy on a free port in front of Label Studio at ``target``; ``forward`` handles each request."""

    def __init__(self, target: str):
        host, port = target.removeprefix("http://").split(":")
        self.upstream = host, int(port)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def handle_request(self) -> None:
                proxy.forward(self)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = handle_request

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def forward(self, handler: BaseHTTPRequestHandler) -> None:
        relay(handler, *ask(handler, *self.upstream))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FlakyProxy(Proxy):
    """Forwards HTTP to Label Studio, then drops every connection after ``limit`` requests: the server going down."""

    def __init__(self, target: str, limit: int):
        self.limit, self.seen = limit, 0
        super().__init__(target)

    def forward(self, handler: BaseHTTPRequestHandler) -> None:
        self.seen += 1
        if self.seen > self.limit:
            handler.close_connection = True
            handler.connection.close()
            return
        super().forward(handler)


@pytest.mark.integration
def test_push_when_label_studio_is_down_keeps_the_batch_queued(loop: Loop, server: LocalLabelStudio):
    loop.select(9, control_share=0.0)
    token = server.credentials().token
    down = LabelingProject(f"http://127.0.0.1:{free_port()}", token, loop.project.title, timeout=5)
    with pytest.raises(LabelingError, match=r"unreachable while trying to list projects.*9 posts stay queued"):
        loop.push(project=down)
    assert len(loop.queue.pending()) == 9
    # the server goes down half-way: the chunks it took are marked pushed, the rest stay queued
    proxy = FlakyProxy(server.url, limit=8)
    try:
        flaky = LabelingProject(proxy.url, token, loop.project.title, timeout=5)
        with pytest.raises(LabelingError, match="stay queued"):
            loop.push(project=flaky, chunk=3)
    finally:
        proxy.close()
    left = len(loop.queue.pending())
    assert 0 < left < 9 and len(loop.tasks()) == 9 - left
    report = loop.push(chunk=3)
    assert report.pushed == left and report.pending == 0
    assert sorted(loop.tasks().post_id) == sorted(p.post_id for p in loop.queue.posts())  # one task per post


@pytest.mark.integration
def test_pull_when_label_studio_is_down_changes_nothing(loop: Loop, server: LocalLabelStudio):
    loop.select(6, control_share=0.0)
    loop.push()
    annotate(loop.project, loop.truth, AnnotatorsConfig(count=1, per_task=1, error_rate=0.0))
    token = server.credentials().token
    down = LabelingProject(f"http://127.0.0.1:{free_port()}", token, loop.project.title, timeout=5)
    with pytest.raises(LabelingError, match="unreachable"):
        pull_labels(loop.queue, down, LABELS)
    # down after the first page: nothing of the half-read pull is stored, not even the cursor
    proxy = FlakyProxy(server.url, limit=2)
    try:
        flaky = LabelingProject(proxy.url, token, loop.project.title, timeout=5)
        with pytest.raises(LabelingError, match="unreachable while trying to pull annotations"):
            pull_labels(loop.queue, flaky, LABELS, page_size=2)
    finally:
        proxy.close()
    assert loop.queue.annotations() == [] and loop.queue.get("pull_cursor") is None
    assert loop.queue.counts()["decided"] == 0
    report = pull_labels(loop.queue, loop.project, LABELS)
    assert report.new_annotations == 6 and len(loop.queue.uncommitted()) == 6


@pytest.mark.integration
def test_wrong_token_is_a_clear_error(label_studio: LocalLabelStudio):
    project = LabelingProject(label_studio.url, "not-a-token", "whatever")
    with pytest.raises(LabelingError, match=r"refused to list projects: HTTP 401"):
        project.ensure(["food"])


@pytest.mark.integration
def test_server_status_credentials_and_restart(label_studio: LocalLabelStudio, tmp_path: Path):
    status = label_studio.status()
    assert status.running and status.pid is not None
    creds_file = label_studio.state_dir / "credentials.json"
    assert creds_file.stat().st_mode & 0o077 == 0  # the token is readable by its owner only
    assert label_studio.up(timeout=5).pid == status.pid  # up again: the same server, nothing started
    squatter = LocalLabelStudio(tmp_path / "other", label_studio.port, label_studio.version, tmp_path)
    assert not squatter.status().running and "not with the server trendloop started" in squatter.status().detail
    with pytest.raises(LabelingError, match="something else answers on port"):
        squatter.up(timeout=5)
    assert LocalLabelStudio(tmp_path / "never", free_port(), label_studio.version, tmp_path).down() is False
    # stop and start again: projects and the token survive (they live under the state folder)
    project = LabelingProject(label_studio.url, label_studio.credentials().token, "survives a restart")
    made = project.ensure(["food"])
    try:
        assert label_studio.down() and not label_studio.healthy() and label_studio.status().detail == "stopped"
        assert label_studio.up(timeout=300).running
        assert (
            LabelingProject(label_studio.url, label_studio.credentials().token, "survives a restart").ensure(["food"])
            == made
        )
    finally:
        if not label_studio.healthy():  # the session's server, which the tests after this one use
            label_studio.up(timeout=300)


@pytest.mark.integration
def test_a_new_state_folder_starts_from_the_migrated_template(label_studio: LocalLabelStudio, tmp_path: Path):
    """No server migrates its own database: each copies the template, then makes its own admin and token."""
    template = label_studio.template.read_bytes()
    assert "Initializing database" not in label_studio.log_path.read_text()
    other = LocalLabelStudio(tmp_path / "state", free_port(), label_studio.version, tmp_path)
    try:
        assert other.up(timeout=300).running
        assert "Initializing database" not in other.log_path.read_text()
        own, session = other.credentials().token, label_studio.credentials().token
        assert own != session
        assert LabelingProject(other.url, own, "only on the other server").ensure(["food"]) == 1
        with pytest.raises(LabelingError, match=r"HTTP 401"):  # the session server's token means nothing here
            LabelingProject(other.url, session, "only on the other server").ensure(["food"])
    finally:
        other.down()
    assert label_studio.template.read_bytes() == template  # a server writes to its copy, never to the template


@pytest.mark.unit
def test_a_template_that_fails_to_build_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    server = LocalLabelStudio(tmp_path / "state", free_port(), "0.0.0", tmp_path, template_dir=tmp_path / "cache")
    monkeypatch.setattr(server, "command", lambda: ["sh", "-c", "echo 'no such release' >&2; exit 3"])
    with pytest.raises(LabelingError, match=r"could not build its database \(exit 3\): no such release"):
        server.up(timeout=30)
    assert not server.template.exists() and list(server.template.parent.iterdir()) == []
    assert not (server.state_dir / "data" / "label_studio.sqlite3").exists()
    assert not server.status().running


# -- finding uv the way a newcomer's shell does ---------------------------------------------

SCRIPTS = Path(sysconfig.get_path("scripts"))  # this environment's bin/: trendloop, and its own uv
SYSTEM_PATH = [d for d in ("/usr/local/bin", "/usr/bin", "/bin") if not (Path(d) / "uv").exists()]  # no uv there


def newcomer_env(path: list[str], port: int) -> dict[str, str]:
    """A fresh shell's environment: no UV, no TRENDLOOP_ settings, PATH as given; the embedded server on ``port``."""
    keep = {k: v for k, v in os.environ.items() if k not in ("UV", "VIRTUAL_ENV") and not k.startswith("TRENDLOOP_")}
    return {**keep, "PATH": os.pathsep.join(path), "TRENDLOOP_LABELSTUDIO__PORT": str(port), "COLUMNS": "200"}


def run_cli(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run a trendloop command as a shell would; the caller checks its exit code and output."""
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.integration
def test_label_studio_runs_in_the_environment_its_pin_file_names(tmp_path: Path):
    """Every package of the server's environment at its pinned version: left to resolve afresh, sentry-sdk 3.0
    (which refuses an option Label Studio 1.23.2 passes) stopped the server from starting on a new machine."""
    version = LabelStudioSettings().version
    pins = constraints(version)
    assert pins is not None, f"no pin file for the default Label Studio {version}"
    pinned = dict(line.split("==") for line in pins.read_text().splitlines() if line and not line.startswith("#"))
    assert pinned["label-studio"] == version and int(pinned["sentry-sdk"].split(".")[0]) < 3
    server = LocalLabelStudio(tmp_path / "ls", free_port(), version, tmp_path)
    start = server.command()
    assert start[-1] == "start" and start[start.index("--constraints") + 1] == str(pins)
    listing = "import importlib.metadata as m, json; print(json.dumps({d.name: d.version for d in m.distributions()}))"
    done = subprocess.run(
        [*start[:-2], "python", "-c", listing], capture_output=True, text=True, timeout=300, check=True
    )
    installed = json.loads(done.stdout.strip().splitlines()[-1])
    norm = {name.lower().replace("_", "-"): v for name, v in installed.items()}
    differing = {name: (norm.get(name), want) for name, want in pinned.items() if norm.get(name, want) != want}
    assert not differing, f"installed vs pinned: {differing}"
    assert norm["label-studio"] == version and norm["sentry-sdk"] == pinned["sentry-sdk"]


@pytest.mark.unit
def test_find_uv_prefers_the_variable_then_the_environments_own_then_the_path(tmp_path: Path):
    own, on_path, empty = tmp_path / "own", tmp_path / "on_path", tmp_path / "empty"
    for folder in (own, on_path):
        folder.mkdir()
        (folder / "uv").write_text("#!/bin/sh\n")
        (folder / "uv").chmod(0o755)
    empty.mkdir()
    assert find_uv({"UV": "/opt/uv", "PATH": str(on_path)}, own) == "/opt/uv"
    assert find_uv({"PATH": str(on_path)}, own) == str(own / "uv")
    assert find_uv({"PATH": str(on_path)}, empty) == str(on_path / "uv")
    assert find_uv({"PATH": str(empty)}, empty) is None


@pytest.mark.parametrize("activated", [True, False], ids=["activated", "not_activated"])
@pytest.mark.integration
def test_the_installed_cli_starts_label_studio_with_the_environments_own_uv(tmp_path: Path, activated: bool):
    """`make demo`, then `trendloop services up` from a shell whose PATH holds no uv (make's is in .tools/):
    with the environment activated (its bin/ on the PATH), or its entry point called by path."""
    port = free_port()
    env = newcomer_env([str(SCRIPTS), *SYSTEM_PATH] if activated else SYSTEM_PATH, port)
    cli = [str(SCRIPTS / "trendloop"), "services"]
    server = LocalLabelStudio(
        tmp_path / ".trendloop" / "services" / "labelstudio", port, LabelStudioSettings().version, tmp_path
    )
    try:
        up = run_cli([*cli, "up"], tmp_path, env, timeout=600)
        assert up.returncode == 0, up.stderr
        assert f"label-studio: running on http://127.0.0.1:{port}" in up.stdout
        assert server.status().running
        pid = server.status().pid
        started = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert started[:3] == [str(SCRIPTS / "uv").encode(), b"tool", b"run"]  # the environment's uv, pinned
    finally:
        down = run_cli([*cli, "down"], tmp_path, env, timeout=60)
    assert down.stdout.strip() == "label-studio stopped" and not server.healthy()


@pytest.mark.unit
def test_without_any_uv_starting_label_studio_says_where_it_looked(tmp_path: Path):
    """An environment without uv (installed without it), no UV, no uv on the PATH: one precise line, nothing started."""
    bare = tmp_path / "bare"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    bare_site = Path(sysconfig.get_path("purelib", vars={"base": str(bare), "platbase": str(bare)}))
    # the bare environment sees our packages (not our bin/, which holds uv) through a .pth file
    (bare_site / "trendloop_packages.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_path('purelib')!r})\n"
    )
    port = free_port()
    command = [str(bare / "bin" / "python"), "-c", "from trendloop.cli import main; main()", "services", "up"]
    run = run_cli(command, tmp_path, newcomer_env(SYSTEM_PATH, port), timeout=120)
    assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert run.stderr.startswith(
        "error: starting Label Studio needs uv (it runs in its own environment) and none was found: "
        f"UV is unset, {bare / 'bin'} (beside this Python) holds none, neither does the PATH; "
    )
    assert "`make sync`" in run.stderr and "labelstudio.url" in run.stderr
    server = LocalLabelStudio(tmp_path / ".trendloop" / "services" / "labelstudio", port, "x", tmp_path)
    assert not (server.state_dir / "server.json").exists() and not server.healthy()


# -- the labelling page an annotator sees -----------------------------------------------------

SCREENS = [(1366, 768), (1440, 900), (1920, 1080)]  # common laptop and desktop sizes
CAPTION = (
    "Finally made it to the launch site after three years of waiting!! Suit fitting took all morning, the "
    "coffee was terrible and the view from the gantry was worth every minute. Huge thanks to the whole crew "
    "for putting up with my questions. Next stop: orbit. Who else watched the livestream last night?"
)  # long, as real captions are: it must not push the choices down

# Where an element lies (left, top, right, bottom in CSS pixels), the part of the window that shows it (the viewport
# cut by every ancestor that clips its overflow: Label Studio scrolls its panels, not the page), and whether it is on
# top at its centre and four corners (2 px in): nothing, such as the bar that holds Submit, lies over it; ``owner``
# (a CSS selector) names an ancestor whose own layers count as the element's (the canvas over the image).
BOX_AND_VIEW = """(el, owner) => {
  const r = el.getBoundingClientRect();
  let view = [0, 0, window.innerWidth, window.innerHeight];
  for (let a = el.parentElement; a; a = a.parentElement) {
    const s = getComputedStyle(a);
    if (s.overflowX !== "visible" || s.overflowY !== "visible") {
      const c = a.getBoundingClientRect();
      view = [Math.max(view[0], c.left), Math.max(view[1], c.top),
              Math.min(view[2], c.right), Math.min(view[3], c.bottom)];
    }
  }
  const points = [[(r.left + r.right) / 2, (r.top + r.bottom) / 2], [r.left + 2, r.top + 2],
                  [r.right - 2, r.top + 2], [r.left + 2, r.bottom - 2], [r.right - 2, r.bottom - 2]];
  const mine = owner ? el.closest(owner) : el;
  const onTop = points.every(([x, y]) => mine.contains(document.elementFromPoint(x, y)));
  return {box: [r.left, r.top, r.right, r.bottom], view: view, on_top: onTop};
}"""


def outside(box: list[float], view: list[float], slack: float = 1.0) -> bool:
    """Whether ``box`` sticks out of ``view`` (each left, top, right, bottom) by more than ``slack`` (sub-pixels)."""
    return box[0] < view[0] - slack or box[1] < view[1] - slack or box[2] > view[2] + slack or box[3] > view[3] + slack


@pytest.mark.unit
def test_outside_needs_more_than_a_pixel():
    assert not outside([10, 10, 100.5, 200], [0, 0, 100, 200])
    assert outside([10, 10, 100, 202], [0, 0, 100, 200])
    assert outside([-3, 10, 50, 50], [0, 0, 100, 200])


def photo_posts(folder: Path) -> Path:
    """Two real photos as posts (a manifest): a 4:5 portrait, stored 864x1080 as ingest caps the longer side at 1080
    (the tallest a post gets), and a 3:2 landscape. Both carry the long caption and hashtags."""
    folder.mkdir()
    astronaut = Image.fromarray(skimage.data.astronaut())  # 512x512
    portrait = astronaut.crop((51, 0, 461, 512)).resize((1080, 1350), Image.Resampling.LANCZOS)
    portrait.save(folder / "portrait.jpg", quality=90)
    Image.fromarray(skimage.data.coffee()).save(folder / "landscape.jpg", quality=90)  # 600x400
    rows = [
        {
            "post_id": shape,
            "image": f"{shape}.jpg",
            "user_id": "u1",
            "created_at": "2026-01-08T10:00:00Z",
            "caption": CAPTION,
            "hashtags": ["launchday", "space", "nofilter"],
        }
        for shape in ("portrait", "landscape")
    ]
    manifest = folder / "posts.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest


def log_in(page: Any, server: LocalLabelStudio) -> None:
    """Through Label Studio's own login form, with the account `trendloop services status` names."""
    creds = server.credentials()
    page.goto(server.url + "/user/login/")
    page.fill("input[name=email]", creds.username)
    page.fill("input[name=password]", creds.password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/user/login" not in url)


def wait_until_still(element: Any, timeout: float = 10.0) -> None:
    """Until ``element``'s box stops changing: Label Studio sizes the image in steps after it loads."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        box = element.bounding_box()
        if box is not None and box == last:
            return
        last = box
        element.page.wait_for_timeout(250)
    raise AssertionError(f"the image kept moving for {timeout:.0f} s")


@pytest.mark.integration
def test_the_labelling_page_fits_one_screen(label_studio: LocalLabelStudio, ls_home: Path, browser: Any):
    """At each size the image, every choice and Submit show at once, with nothing scrolled; choosing
    "other / new trend" shows the box to name it, also in view. Screenshots: test-artifacts/labelstudio-*.png."""
    store = Store(ls_home / "store")
    ingest(photo_posts(ls_home / "feed"), store, PSEUDONYMS)
    queue = LabelQueue(ls_home / "labeling" / "queue.db")
    select_posts(store, store.head(), untrained_tagger(), "3", queue, SelectionConfig(control_share=0.0), budget=2)
    labels = [*LABELS, "meme", "vintage_cars", "street_food"]  # the seed labels and three trends annotators named
    project = LabelingProject(label_studio.url, label_studio.credentials().token, "labelling page fits one screen")
    images = (store.root / "images").resolve()
    report = push_queued(
        queue, project, labels, image_url=f"/data/local-files/?d={ls_home.name}/store/{{image}}", local_files=images
    )
    assert report.pushed == 2
    tasks = project.tasks_for(["portrait", "landscape"])
    stored = {}
    for post in queue.posts():
        with Image.open(store.root / post.image) as stored_image:
            stored[post.post_id] = stored_image.size
    assert stored["portrait"] == (864, 1080)
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context()
    try:
        page = context.new_page()
        log_in(page, label_studio)
        for (width, height), shape in [(size, shape) for size in SCREENS for shape in ("portrait", "landscape")]:
            page.set_viewport_size({"width": width, "height": height})
            page.goto(f"{label_studio.url}/projects/{report.project_id}/data?task={tasks[shape]}")
            image = page.locator('img[src^="blob:"]')  # Label Studio fetches the task's image into a blob
            image.wait_for()
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
            assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == list(stored[shape])
            wait_until_still(image)
            # the image's frame: Label Studio draws the image inside it and clips it there (an image it scales up
            # comes out a few per cent too large, its edges cut by the frame: so it does with any layout)
            shown = {"image": image.locator("xpath=.."), "Submit": page.get_by_test_id("bottombar-submit-button")}
            for choice in [*labels, OTHER]:
                shown[choice] = page.locator(f"label:has(input[type=radio][name={json.dumps(choice)}])")
            where = {
                name: element.evaluate(BOX_AND_VIEW, ".lsf-object" if name == "image" else None)
                for name, element in shown.items()
            }
            page.screenshot(path=str(ARTIFACTS / f"labelstudio-{shape}-{width}x{height}.png"))
            hidden = {n: w for n, w in where.items() if outside(w["box"], w["view"]) or not w["on_top"]}
            assert hidden == {}, f"{shape} {width}x{height}"
            assert page.evaluate("[window.scrollX, window.scrollY]") == [0, 0]
            # and the image is as large as the screen allows: it reaches the choices column (only the gap and Label
            # Studio's zoom toolbar, 24 + 42 px, lie between) or Label Studio's height cap, calc(100vh - 194px)
            _, top, right, bottom = where["image"]["box"]
            assert where[OTHER]["box"][0] - right <= 24 + 42 + 2 or bottom - top >= height - 194 - 1
            shown[OTHER].click()
            trend = page.locator('input[name="trend"]')
            trend.wait_for()
            name_box = trend.evaluate(BOX_AND_VIEW)
            assert name_box["on_top"] and not outside(name_box["box"], name_box["view"]), f"{shape} {width}x{height}"
    finally:
        context.close()
