"""Integration: Label Studio killed (SIGKILL to its whole process group) in the middle of a push and of a pull.

The server is this module's own, started on a state folder of its own and started again on that same folder
after each kill, so the session's server, which the other tests share, is never touched. What Label Studio holds
is read back through label-studio-sdk's own calls (not through ``LabelingProject``, the code under test).

Two ways to land a kill mid-way:
- a watcher polls the project's task count while a push runs in a thread and kills once some, not all, of the
  tasks are in: the kill falls wherever the push happens to be, between requests or inside one;
- ``LosingProxy`` stands between client and server and loses the answer to one chosen request after Label Studio
  has done the work (committed the import, read the page): the worst case, the same on every run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from active_learning.annotators import AnnotatorsConfig, annotate
from active_learning.labelstudio import LabelingProject, annotations_of
from active_learning.loop import commit_labels, pull_labels, push_queued
from active_learning.queue import LabelQueue, QueuedPost
from components.errors import LabelingError
from infra.labelstudio import LocalLabelStudio
from infra.processes import alive
from tests.conftest import home_under, label_studio_under
from tests.test_labelstudio import LABELS, Loop, Proxy, ask, relay

POSTS, CHUNK = 300, 20  # a push of 15 imports
KILL_AT = 100  # tasks the project holds when the watcher kills the server (5 chunks of 15)
IMAGE_URL = "/data/local-files/?d=none/{image}"  # never fetched: a push only stores the URL


@pytest.fixture(scope="module")
def doomed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLabelStudio]:
    """A Label Studio for this module alone: its tests kill it and start it again on the same state folder."""
    yield from label_studio_under(tmp_path_factory.mktemp("labelstudio-killed"))


def kill(server: LocalLabelStudio) -> None:
    """SIGKILL the server's process group (uv and Label Studio under it): no shutdown, as when a machine is lost."""
    pid = int(json.loads((server.state_dir / "server.json").read_text())["pid"])
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid) and not server.healthy()


def restart(server: LocalLabelStudio) -> None:
    """Start again on the same state folder (its record names a dead pid: ``up`` starts a new server)."""
    assert server.up(timeout=300).running


class LosingProxy(Proxy):
    """Forwards HTTP to Label Studio; the ``nth`` request that ``picks`` is done by Label Studio, its answer read,
    then ``then()`` runs and the connection drops without an answer: the client never learns it was done."""

    def __init__(self, target: str, picks: Callable[[str, str], bool], nth: int, then: Callable[[], None]):
        self.picks, self.nth, self.then, self.seen = picks, nth, then, 0
        self.lost: str | None = None  # the request whose answer was lost
        self.lock = threading.Lock()
        super().__init__(target)

    def forward(self, handler: BaseHTTPRequestHandler) -> None:
        try:
            answer = ask(handler, *self.upstream)
        except OSError:  # the server is gone: so is this connection
            handler.close_connection = True
            return
        with self.lock:
            lose = self.lost is None and self.picks(handler.command, handler.path)
            self.seen += lose
            lose = lose and self.seen == self.nth
            if lose:
                self.lost = f"{handler.command} {handler.path}"
        if lose:
            self.then()
            handler.close_connection = True
            return
        relay(handler, *answer)


def synthetic_posts(count: int) -> list[QueuedPost]:
    """``count`` selected posts, highest score first in id order (a push sends them in that order)."""
    return [
        QueuedPost(
            post_id=f"post-{i:04d}",
            image=f"images/{i:04d}.jpg",
            batch="sel-faults",
            arm="active",
            strategy="entropy",
            score=1.0 - i / count,
            predicted=LABELS[i % len(LABELS)],
            confidence=0.3,
            model_version="3",
            caption=f"post {i}",
            hashtags=("fault",),
        )
        for i in range(count)
    ]


def tasks_by_post(server: LocalLabelStudio, project_id: int) -> dict[str, list[int]]:
    """post_id -> the ids of the tasks Label Studio holds for it, read with the SDK's own listing."""
    from label_studio_sdk import LabelStudio  # noqa: PLC0415

    client = LabelStudio(base_url=server.url, api_key=server.credentials().token)
    held: dict[str, list[int]] = {}
    for task in client.tasks.list(project=project_id, page_size=500):
        held.setdefault(task.data["post_id"], []).append(task.id)
    return held


def annotation_ids(server: LocalLabelStudio, project_id: int) -> list[int]:
    """Every annotation id in the project, read with the SDK's own listing."""
    from label_studio_sdk import LabelStudio  # noqa: PLC0415

    client = LabelStudio(base_url=server.url, api_key=server.credentials().token)
    tasks = client.tasks.list(project=project_id, fields="all", page_size=500)
    return sorted(int(a["id"]) for task in tasks for a in annotations_of(task))


def queue_state(queue: LabelQueue) -> dict[str, list[tuple]]:
    """Every row of the queue's file, table by table."""
    with sqlite3.connect(queue.path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in tables}


STAY_QUEUED = re.compile(r"^Label Studio at \S+ is unreachable while trying to [^:]+: .+; (\d+) posts stay queued")


def stay_queued(err: LabelingError) -> int:
    """How many posts the push's error says stay queued; the message is one line."""
    message = str(err)
    assert "\n" not in message, message
    found = STAY_QUEUED.match(message)
    assert found, message
    return int(found.group(1))


def assert_one_task_per_post(server: LocalLabelStudio, queue: LabelQueue, project_id: int) -> dict[str, list[int]]:
    """Every queued post has exactly one task, and the queue holds its id; returns post_id -> task ids."""
    held = tasks_by_post(server, project_id)
    twice = {post: ids for post, ids in held.items() if len(ids) > 1}
    posts = {p.post_id: p.task_id for p in queue.posts()}
    assert twice == {}, f"{len(twice)} posts have more than one task"
    assert set(held) == set(posts), f"lost: {sorted(set(posts) - set(held))[:5]}"
    assert queue.counts()["pending"] == 0 and posts == {post: ids[0] for post, ids in held.items()}
    return held


@pytest.mark.integration
def test_killed_mid_push_loses_and_duplicates_nothing(doomed: LocalLabelStudio, tmp_path: Path):
    queue = LabelQueue(tmp_path / "queue.db")
    queue.add(synthetic_posts(POSTS))
    project = LabelingProject(doomed.url, doomed.credentials().token, "killed mid-push")
    project_id = project.ensure(LABELS)
    outcome: dict[str, object] = {}

    def push() -> None:
        try:
            outcome["report"] = push_queued(queue, project, LABELS, image_url=IMAGE_URL, chunk=CHUNK)
        except LabelingError as err:
            outcome["error"] = err

    from label_studio_sdk import LabelStudio  # noqa: PLC0415

    watcher = LabelStudio(base_url=doomed.url, api_key=doomed.credentials().token)
    pusher = threading.Thread(target=push)
    pusher.start()
    seen, deadline = 0, time.monotonic() + 120
    while seen < KILL_AT and pusher.is_alive() and time.monotonic() < deadline:
        seen = watcher.projects.get(project_id).task_number or 0
        time.sleep(0.05)
    kill(doomed)
    pusher.join(60)
    assert KILL_AT <= seen < POSTS, f"the kill missed the push: {seen} of {POSTS} tasks in"
    error = outcome.get("error")
    assert isinstance(error, LabelingError), outcome
    counts = queue.counts()
    assert stay_queued(error) == counts["pending"] and counts["pending"] + counts["pushed"] == POSTS
    assert 0 < counts["pending"] < POSTS

    restart(doomed)
    held = tasks_by_post(doomed, project_id)
    assert counts["pushed"] <= len(held) < POSTS  # what Label Studio committed survived the kill
    assert all(len(ids) == 1 for ids in held.values())
    report = push_queued(queue, project, LABELS, image_url=IMAGE_URL, chunk=CHUNK)
    assert report.found == len(held) - counts["pushed"] and report.pushed == POSTS - len(held) and report.pending == 0
    after = assert_one_task_per_post(doomed, queue, project_id)
    print(
        f"\nkilled mid-push: {seen} tasks seen at the kill, {len(held)} held after restart "
        f"({counts['pushed']} marked pushed, {len(held) - counts['pushed']} committed unanswered), "
        f"{counts['pending']} stayed queued; after the second push {sum(map(len, after.values()))} tasks for "
        f"{POSTS} posts: {sum(len(ids) > 1 for ids in after.values())} duplicated, {POSTS - len(after)} lost"
    )


@pytest.mark.parametrize("killed", [True, False], ids=["server_killed", "answer_dropped"])
@pytest.mark.integration
def test_an_import_done_but_never_answered_is_found_not_sent_twice(
    doomed: LocalLabelStudio, tmp_path: Path, killed: bool
):
    """Label Studio commits the 4th import, then dies before answering (or the answer is lost on the way while
    it stays up, as behind a restarting ingress): the push fails, and the next one finds those 20 tasks."""
    queue = LabelQueue(tmp_path / "queue.db")
    queue.add(synthetic_posts(POSTS))
    title = f"import unanswered {'killed' if killed else 'dropped'}"
    project_id = LabelingProject(doomed.url, doomed.credentials().token, title).ensure(LABELS)
    proxy = LosingProxy(
        doomed.url,
        picks=lambda method, path: method == "POST" and path.startswith(f"/api/projects/{project_id}/import"),
        nth=4,
        then=(lambda: kill(doomed)) if killed else (lambda: None),
    )
    try:
        through = LabelingProject(proxy.url, doomed.credentials().token, title)
        with pytest.raises(LabelingError) as raised:
            push_queued(queue, through, LABELS, image_url=IMAGE_URL, chunk=CHUNK)
    finally:
        proxy.close()
    assert proxy.lost is not None
    assert stay_queued(raised.value) == queue.counts()["pending"] == POSTS - 3 * CHUNK
    if killed:
        restart(doomed)
    held = tasks_by_post(doomed, project_id)
    assert len(held) == 4 * CHUNK and all(len(ids) == 1 for ids in held.values())  # done once, not retried
    report = push_queued(queue, LabelingProject(doomed.url, doomed.credentials().token, title), LABELS,
                         image_url=IMAGE_URL, chunk=CHUNK)  # fmt: skip
    assert (report.found, report.pushed, report.pending) == (CHUNK, POSTS - 4 * CHUNK, 0)
    assert_one_task_per_post(doomed, queue, project_id)


@pytest.mark.integration
def test_killed_mid_pull_stores_nothing_and_the_next_pull_counts_each_annotation_once(
    doomed: LocalLabelStudio, small_feed: Path, request: pytest.FixtureRequest
):
    loop = Loop(doomed, home_under(doomed, request.node.name), small_feed, "killed mid-pull")
    # a first batch, one correct vote each, pulled and committed: the queue has a cursor, decisions, a snapshot
    loop.select(30, control_share=0.0)
    loop.push(overlap=2)
    annotate(loop.project, loop.truth, AnnotatorsConfig(count=2, per_task=1, error_rate=0.0))
    pull_labels(loop.queue, loop.project, LABELS)
    first = commit_labels(loop.store, loop.queue)
    assert len(first.relabelled) == 30
    # a second batch; every task brought to two votes, some wrong (ties)
    loop.select(30, control_share=0.0)
    loop.push(overlap=2)
    annotate(loop.project, loop.truth, AnnotatorsConfig(count=2, per_task=2, error_rate=0.3, seed=1))
    project_id = loop.project.id
    everything = annotation_ids(doomed, project_id)
    assert len(everything) == 30 + 30 + 60
    before = queue_state(loop.queue)

    # the pull reads 60 updated tasks, 5 a page: Label Studio is killed as it answers the 3rd page
    proxy = LosingProxy(
        doomed.url, picks=lambda method, path: method == "GET" and path.startswith("/api/tasks"), nth=3,
        then=lambda: kill(doomed),
    )  # fmt: skip
    try:
        through = LabelingProject(proxy.url, doomed.credentials().token, loop.project.title, timeout=10)
        with pytest.raises(LabelingError) as raised:
            pull_labels(loop.queue, through, LABELS, page_size=5)
    finally:
        proxy.close()
    assert "page=3" in (proxy.lost or "")
    message = str(raised.value)
    assert "\n" not in message and message.startswith(
        f"Label Studio at {proxy.url} is unreachable while trying to pull annotations: "
    )
    assert queue_state(loop.queue) == before  # annotations, decisions, cursor and commits as they were

    restart(doomed)
    again = pull_labels(loop.queue, loop.project, LABELS, page_size=5)
    assert again.new_annotations == 90 and again.tasks == 60
    assert [a.annotation_id for a in loop.queue.annotations()] == everything  # each once, none missing
    # a queue that pulls everything at once from the same project decides the same
    fresh = LabelQueue(loop.queue.path.with_name("fresh.db"))
    fresh.add(loop.queue.posts())
    pull_labels(fresh, loop.project, LABELS, page_size=100)
    assert loop.queue.decisions() == fresh.decisions() and loop.queue.annotations() == fresh.annotations()
    decided = {d.post_id: d.label for d in fresh.decisions() if d.status == "decided"}
    # the commit after it takes each new label once: a label the first commit holds is not committed again
    second = commit_labels(loop.store, loop.queue)
    assert second.relabelled == sorted(set(decided) - set(first.relabelled))
    assert commit_labels(loop.store, loop.queue).relabelled == [] and loop.queue.uncommitted() == {}
    print(
        f"\nkilled mid-pull: {len(everything)} annotations in Label Studio, {len(before['annotations'])} in the "
        f"queue before and after the killed pull, {len(loop.queue.annotations())} after the next; "
        f"{len(decided)} decided; commits: {len(first.relabelled)} then {len(second.relabelled)} then 0"
    )
