"""A real two-node Ray on this machine: the head on the host, a worker node in its own network namespace.

The worker advertises ``arm_node`` (standing in for a cluster's GPU node) and the arms require it through
settings, as they would require ``num_gpus``; the head advertises ``router_node``, which the router requires.
Everything goes through the head's dashboard address, as with a cluster: ``trendloop serve up``, a live
promotion and ``serve down`` by the CLI, placement read back from Ray's state API. Losing the worker (its veth
cut under traffic) is survived: every request ends 200 or 503 with Retry-After, none hangs, and the arms come back
once the node does. The namespace needs root and iproute2: without them (or with ``TRENDLOOP_TEST_NETNS=0``) the
worker runs on 127.0.0.1 beside the head on ports of its own and is lost by killing it; under CI a missing
namespace fails the module instead (tests/browsers.py).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from PIL import Image

from components.model.registry import Registry
from infra.netns import NetNamespace, unavailable
from infra.ray import LocalRay, RayPorts, RayWorker
from serving import control
from serving.control import Serving
from serving.experiment import CHALLENGER, CHAMPION
from tests.browsers import under_ci
from tests.conftest import free_port
from tests.models import register_untrained
from trendloop import wiring
from trendloop.cli import main
from trendloop.settings import Settings, load_settings

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ARM_TIMEOUT_S = 2.0  # the router's wait for one arm: a cut node costs a request at most two of these
RETRY_AFTER_S = 1
# the GCS declares a silent node dead after about period x threshold (Ray's defaults: about a minute)
HEALTH_CHECK = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                "RAY_health_check_failure_threshold": "4"}  # fmt: skip


def png(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), (shade, 90, 200 - shade)).save(buf, "PNG")
    return buf.getvalue()


IMAGES = [png(25 * i) for i in range(8)]


@dataclass
class Cluster:
    ns: NetNamespace | None  # None: the host fallback, the worker on 127.0.0.1
    head: LocalRay
    worker: RayWorker
    config: Path  # the trendloop.toml the CLI reads: serving.ray_dashboard is the head's
    settings: Settings
    s: Serving


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    why = unavailable() or ("TRENDLOOP_TEST_NETNS=0" if os.environ.get("TRENDLOOP_TEST_NETNS") == "0" else None)
    if why is not None and under_ci(os.environ):
        pytest.fail(f"{why}: the multi-node Ray tests put the worker in a network namespace (CI is set)", pytrace=False)
    root = tmp_path_factory.mktemp("multinode")
    with pytest.MonkeyPatch.context() as env:
        for key, value in {**HEALTH_CHECK, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}.items():
            env.setenv(key, value)
        ns = NetNamespace(f"tlmn{os.getpid() % 100_000}") if why is None else None
        if ns is not None:
            ns.up()
        ports = RayPorts(gcs=free_port(), dashboard=free_port(), agent=free_port(), client=free_port())
        head = LocalRay(root / "ray", ports, num_cpus=2, node_ip=ns.host_ip if ns else "127.0.0.1",
                        resources={"router_node": 1})  # fmt: skip
        worker = RayWorker(head.address, root / "worker", num_cpus=2, resources={"arm_node": 2}, namespace=ns,
                           ports=None if ns else worker_ports())  # fmt: skip
        try:
            head.up()
            worker.start()
            config = root / "trendloop.toml"
            config.write_text(
                f'home = "{root / "home"}"\n'
                "[serving]\n"
                f'ray_dashboard = "{head.dashboard_url}"\n'
                f"port = {free_port()}\n"
                f"arm_timeout_s = {ARM_TIMEOUT_S}\nretry_after_s = {RETRY_AFTER_S}\nflush_every_s = 0.2\n"
                "start_timeout = 300\n"
                "[serving.champion]\nresources = {arm_node = 1}\n"
                "[serving.challenger]\nresources = {arm_node = 1}\n"
                "[serving.router]\nresources = {router_node = 0.01}\n"
            )
            settings = load_settings(config)
            s = wiring.serving_control(settings)
            for seed in (1, 2, 3):  # the champion, the challenger, and one more to test when one was promoted
                register_untrained(s.registry, seed)
            s.registry.promote(1)
            s.registry.set_challenger(2)
            yield Cluster(ns, head, worker, config, settings, s)
        finally:
            try:
                if head.running() and s.admin.reachable():
                    s.admin.shutdown()
                    s.admin.wait_gone()
            except Exception:  # noqa: BLE001 - stopping Ray below ends the app anyway
                pass
            finally:
                worker.stop()
                head.down()
                if ns is not None:
                    ns.remove()


def worker_ports() -> dict[str, int]:
    """The ports a second node on the head's address must not share with it."""
    options = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
               "metrics-export-port", "node-manager-port", "object-manager-port")  # fmt: skip
    return {option: free_port() for option in options}


def cli(capsys: pytest.CaptureFixture, config: Path, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(config), *args])
    out, err = capsys.readouterr()
    assert (exit_.value.code or 0) == 0, err
    return out


def with_challenger(registry: Registry) -> None:
    """A challenger in place (a test may have promoted the last one): the newest version not champion."""
    if registry.alias(CHALLENGER) is None:
        champion = registry.alias(CHAMPION)
        registry.set_challenger(max(v for v in (1, 2, 3) if v != champion))


def placement(c: Cluster) -> dict[str, str]:
    """Each live replica's deployment -> the node it runs on, "worker" (it advertises arm_node) or "head"
    (router_node), from Ray's state API."""
    from ray.util.state import list_actors, list_nodes  # noqa: PLC0415 - Ray's client: only these tests need it

    alive = [("state", "=", "ALIVE")]
    found = list_nodes(address=c.head.dashboard_url, filters=alive, limit=1000, raise_on_missing_output=False)
    nodes = {n.node_id: "worker" if "arm_node" in n.resources_total else "head" for n in found}
    actors = list_actors(address=c.head.dashboard_url, filters=alive, limit=1000, raise_on_missing_output=False)
    return {
        a.class_name.rsplit(":", 1)[-1]: nodes.get(a.node_id, "?")
        for a in actors
        if a.class_name.startswith("ServeReplica:trendloop:")
    }


def post_all(url: str, users: list[str], concurrency: int = 4) -> list[httpx.Response]:
    with httpx.Client(base_url=url, trust_env=False, timeout=60) as client, ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda i: client.post("/predict", params={"user_id": users[i]},
                                                    content=IMAGES[i % 8]), range(len(users))))  # fmt: skip


def test_serve_up_puts_the_arms_on_the_worker_and_promotion_and_serve_down_work_through_the_dashboard(
    cluster: Cluster, capsys: pytest.CaptureFixture
) -> None:
    c = cluster
    with_challenger(c.s.registry)
    out = cli(capsys, c.config, "serve", "up")
    assert f"serving on {c.settings.serving.url}" in out
    # the arms where their resource is (the worker's own address), the router beside the head's HTTP proxy
    assert placement(c) == {CHAMPION: "worker", CHALLENGER: "worker", "router": "head"}
    versions = {CHAMPION: c.s.registry.alias(CHAMPION), CHALLENGER: c.s.registry.alias(CHALLENGER)}
    answered = post_all(c.settings.serving.url, [f"u{i}" for i in range(60)])
    assert [r.status_code for r in answered] == [200] * 60
    served = Counter((r.json()["arm"], r.json()["model_version"], r.json()["fallback"]) for r in answered)
    assert set(served) == {(CHAMPION, versions[CHAMPION], False), (CHALLENGER, versions[CHALLENGER], False)}

    out = cli(capsys, c.config, "ab", "promote")  # live, through the cluster's dashboard: no replica restarts
    assert f"@champion is version {versions[CHALLENGER]}" in out
    after = post_all(c.settings.serving.url, [f"late{i}" for i in range(20)])
    assert {(r.status_code, r.json()["arm"], r.json()["model_version"]) for r in after} == {
        (200, CHAMPION, versions[CHALLENGER])
    }
    assert placement(c)[CHAMPION] == "worker"

    out = cli(capsys, c.config, "serve", "down")
    assert "serving app stopped" in out and "local Ray" not in out  # a cluster's Ray is not ours to stop
    assert c.s.admin.applications() == {}
    assert c.head.running()  # the cluster stays up


@dataclass
class Episode:
    """Every request of a traffic run, by when it ended and how."""

    ended: list[tuple[float, str, str | None]] = field(default_factory=list)  # (time, outcome, arm that answered)
    outcomes: Counter = field(default_factory=Counter)  # ok, 503 (with Retry-After), other, hung

    def record(self, when: float, outcome: str, arm: str | None) -> None:
        self.ended.append((when, outcome, arm))
        self.outcomes[outcome] += 1


async def load(url: str, stop: threading.Event, episode: Episode, workers: int, timeout: float) -> None:
    """``workers`` users posting one request after another until ``stop``; each request's end is recorded."""

    async def user(n: int, client: httpx.AsyncClient) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                r = await client.post("/predict", params={"user_id": f"w{n}-{i % 50}"}, content=IMAGES[i % 8])
            except httpx.TimeoutException:
                episode.record(time.monotonic(), "hung", None)
                continue
            except httpx.HTTPError:
                episode.record(time.monotonic(), "other", None)
                await asyncio.sleep(0.1)
                continue
            if r.status_code == 200 and not r.json()["fallback"]:
                episode.record(time.monotonic(), "ok", r.json()["arm"])
            elif r.status_code == 200:
                episode.record(time.monotonic(), "ok (fallback)", r.json()["arm"])
            elif r.status_code == 503 and r.headers.get("retry-after") == str(RETRY_AFTER_S):
                episode.record(time.monotonic(), "503", None)
                await asyncio.sleep(0.2)  # a client honouring Retry-After would wait longer; this keeps pressure on
            else:
                episode.record(time.monotonic(), "other", None)

    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=timeout) as client:
        await asyncio.gather(*(user(n, client) for n in range(workers)))


def wait_until(check, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what}: not after {timeout:.0f} s")
        time.sleep(0.5)
    return time.monotonic() - start


def test_losing_the_worker_node_under_traffic_loses_no_request_and_the_arms_come_back(cluster: Cluster) -> None:
    from ray.util.state import list_nodes  # noqa: PLC0415

    c = cluster
    with_challenger(c.s.registry)
    if c.s.admin.applications():  # the other test stopped before its `serve down`: a fresh router counts from 0
        c.s.admin.shutdown()
        c.s.admin.wait_gone()
    control.up(c.s, timeout=300)
    url = c.settings.serving.url
    assert placement(c)[CHAMPION] == "worker"

    def node_state() -> str:
        nodes = list_nodes(address=c.head.dashboard_url, limit=1000)
        return "ALIVE" if any(n.state == "ALIVE" and "arm_node" in n.resources_total for n in nodes) else "DEAD"

    episode, stop = Episode(), threading.Event()
    # no request may take longer than two arm timeouts and the router's own work: past 15 s it counts as hung
    driver = threading.Thread(target=asyncio.run, args=(load(url, stop, episode, workers=6, timeout=15.0),))
    started = time.monotonic()
    driver.start()
    try:
        wait_until(lambda: episode.outcomes["ok"] >= 30, 60, "30 answers before the cut")
        cut_at = time.monotonic()
        if c.ns is not None:
            c.ns.cut()  # silence: connections hang until the GCS misses enough health checks
        else:
            c.worker.stop()  # the host fallback: the node's processes die (connections are refused)
        dead_after = wait_until(lambda: node_state() == "DEAD", 60, "Ray declaring the lost node dead")
        if c.ns is not None:
            c.ns.restore()  # the node's raylet learns it was declared dead and exits: a lost machine rejoins afresh
        c.worker.stop()
        c.worker.start()
        back_at = time.monotonic()

        def both_arms_answer() -> bool:
            since = [arm for when, outcome, arm in list(episode.ended) if when > back_at and outcome == "ok"]
            return CHAMPION in since and CHALLENGER in since

        recovery_s = wait_until(both_arms_answer, 120, "both arms answering again after the node rejoined")
        time.sleep(3)  # traffic goes on a while on the recovered cluster
    finally:
        stop.set()
        driver.join(timeout=60)
    assert not driver.is_alive()
    outcomes = episode.outcomes
    during = Counter(outcome for when, outcome, _ in episode.ended if cut_at < when <= back_at)
    numbers = {
        "node": "network namespace, veth cut" if c.ns is not None else "127.0.0.1, worker killed",
        "requests": sum(outcomes.values()),
        "ok": outcomes["ok"],
        "ok_fallback": outcomes["ok (fallback)"],
        "503_retry_after": outcomes["503"],
        "other": outcomes["other"],
        "hung": outcomes["hung"],
        "seconds": round(time.monotonic() - started, 1),
        "node_declared_dead_s": round(dead_after, 1),
        "recovery_s_after_rejoin": round(recovery_s, 1),
        "during_the_loss": dict(during),
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "multinode-node-loss.json").write_text(json.dumps(numbers, indent=2))
    print("node-loss episode:", numbers)
    assert outcomes["other"] == 0 and outcomes["hung"] == 0, numbers
    # the router (deployed fresh above) counted each request as it ended: none went unrecorded
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
        counted = client.get("/readyz").json()["outcomes"]
    assert counted == {"served": outcomes["ok"], "fallback": outcomes["ok (fallback)"], "unavailable": outcomes["503"]}
    assert during["503"] > 0, numbers  # both arms lived on the lost node: neither could stand in, and it said so
    assert placement(c) == {CHAMPION: "worker", CHALLENGER: "worker", "router": "head"}
    assert recovery_s < 120
