"""The tracking server going down in the middle of a promotion or a rollback.

A real ``mlflow server`` (SQLite backend store) sits behind a TCP proxy written here, which
counts the HTTP requests it forwards and, from the k-th on, drops them unsent and cuts every
connection (the server "goes down" at request k). For every k from 0 to the number of
requests the uncut command makes, the command must fail with one line naming the tracking
server; the registry, reachable again, must be the old state or one a rerun finishes (never
deployed by serving meanwhile); the rerun must end in the new state, and the experiment
record must agree with the registry.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from components.data.predlog import PredictionLog
from components.model.registry import (
    CHALLENGER,
    CHAMPION,
    HISTORY_TAG,
    PROMOTED_FROM_TAG,
    ROLLED_BACK_TAG,
    AliasState,
    Registry,
    RegistryUnreachable,
)
from serving import control
from serving.abtest import DecisionRule
from serving.deploy import ServeAdmin, ServingError
from serving.eventlog import FeedbackLog
from serving.experiment import Experiment, Experiments
from tests.conftest import free_port, mlflow_server
from tests.models import register_untrained
from tests.test_serving_units import write_test_traffic

pytestmark = pytest.mark.integration


class CuttingProxy:
    """127.0.0.1:<port> -> the server, forwarding whole HTTP requests (headers + Content-Length body) until
    ``cut_at`` of them have passed; from then on every request is dropped unsent and its connection closed,
    and new connections are closed as they arrive, until ``heal``."""

    def __init__(self, upstream: int):
        self.upstream, self.cut_at = upstream, None
        self.sent: list[str] = []  # "METHOD path body" of each forwarded request
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self, at: int | None) -> None:
        with self._lock:
            self.cut_at, self.sent = at, []

    def heal(self) -> None:
        self.cut(None)

    def down(self) -> bool:
        return self.cut_at is not None and len(self.sent) >= self.cut_at

    def _accept(self) -> None:
        while True:
            client, _ = self._listener.accept()
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self.down():
            client.close()
            return
        server = socket.create_connection(("127.0.0.1", self.upstream))
        threading.Thread(target=_pump, args=(server, client), daemon=True).start()
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, rest = buffer.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                length = next((int(x.split(":", 1)[1]) for x in lines if x.lower().startswith("content-length:")), 0)
                while len(rest) < length:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    rest += chunk
                body, buffer = rest[:length], rest[length:]
                with self._lock:
                    if self.down():
                        return  # the request never reaches the server
                    self.sent.append(f"{lines[0].rsplit(' ', 1)[0]} {body.decode()}")
                    server.sendall(head + b"\r\n\r\n" + body)
        except OSError:
            return
        finally:
            for end in (client, server):
                _close(end)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    _close(sink)


def _close(end: socket.socket) -> None:
    with contextlib.suppress(OSError):
        end.shutdown(socket.SHUT_RDWR)
    end.close()


@dataclass
class Site:
    direct: Registry  # straight to the server: sets states up and reads them, never cut
    cut: Registry  # through the proxy
    proxy: CuttingProxy
    versions: list[int]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("mlflow-faults")
    with mlflow_server(
        f"sqlite:///{root / 'mlflow.db'}", root / "mlflow-server.log",
        "--default-artifact-root", (root / "art").as_uri(), "--no-serve-artifacts",
    ) as url:  # fmt: skip
        # one retry without backoff: a dropped request fails at once (the budget itself: the CLI test below)
        direct = Registry(url, cache_dir=root / "models", retries=1, backoff=0, timeout=20)
        proxy = CuttingProxy(int(url.rsplit(":", 1)[1]))
        cut = Registry(proxy.url, cache_dir=root / "models", retries=1, backoff=0, timeout=20)
        yield Site(direct, cut, proxy, [register_untrained(direct, seed) for seed in range(4)])


def _place(site: Site, state: AliasState) -> None:
    """Put the registry in ``state``, with no trace of an earlier move on any version."""
    client, name = site.direct.client, site.direct.model_name
    for version in site.versions:
        tags = client.get_model_version(name, str(version)).tags
        for tag in (PROMOTED_FROM_TAG, ROLLED_BACK_TAG):
            if tag in tags:
                client.delete_model_version_tag(name, str(version), tag)
    for alias, version in ((CHAMPION, state.champion), (CHALLENGER, state.challenger)):
        if version is None:
            if site.direct.alias(alias) is not None:
                client.delete_registered_model_alias(name, alias)
        else:
            client.set_registered_model_alias(name, alias, str(version))
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(state.history))
    assert site.direct.state() == state


def _serving(registry: Registry, root: Path) -> control.Serving:
    """Serving without Ray: its admin's dashboard refuses, so ``follow`` changes only the experiment record."""
    return control.Serving(
        admin=ServeAdmin(f"http://127.0.0.1:{free_port()}", timeout=5),
        registry=registry,
        experiments=Experiments(root / "experiments"),
        config_for=lambda versions, traffic: {"versions": dict(versions), "experiment": traffic.experiment},
        split=0.1,
        rule=DecisionRule(),
        predictions=PredictionLog(root / "predictions"),
        feedback=FeedbackLog(root / "feedback"),
    )


def _faults(
    site: Site,
    tmp_path: Path,
    old: AliasState,
    new: AliasState,
    command: Callable[[control.Serving], object],
    traffic: Callable[[control.Serving, Experiment], None] | None = None,
) -> tuple[list[str], list[str]]:
    """Run ``command`` uncut once (counting its requests), then once per k with the server down from request k
    (each time on a fresh experiment record of ``old``, with ``traffic`` logged for it);
    returns the uncut run's requests and each k's outcome: ``old``, ``unfinished`` or ``new`` (the registry
    as the fault left it) or ``inconsistent``."""
    experiment_of = {}

    def prepared(name: str) -> control.Serving:
        _place(site, old)
        s = _serving(site.cut, tmp_path / name)
        experiment_of[name] = s.experiments.start(old.champion, old.challenger, 0.5, DecisionRule().to_dict())
        if traffic is not None:
            traffic(s, experiment_of[name])
        return s

    s = prepared("uncut")
    site.proxy.cut(None)
    command(s)
    requests = list(site.proxy.sent)
    assert site.direct.state() == new
    outcomes = []
    for k in range(len(requests)):
        s = prepared(f"k{k}")
        site.proxy.cut(k)
        with pytest.raises(RegistryUnreachable) as failed:
            command(s)
        assert len(site.proxy.sent) == k
        site.proxy.heal()
        message = str(failed.value)
        assert "\n" not in message and "urllib3" not in message and "HTTPConnectionPool" not in message
        assert message.startswith(f"cannot reach the MLflow tracking server at {site.proxy.url} (")
        # the record and serving: untouched by a failed command; a half-moved registry is not deployed
        assert s.experiments.current() == experiment_of[f"k{k}"]
        found = site.direct.state()
        if found in (old, new):
            outcome = "old" if found == old else "new"
            assert control.current_config(s)["versions"] == {CHAMPION: found.champion, CHALLENGER: found.challenger}
        elif found.unfinished() is not None and found.champion is not None:
            outcome = "unfinished"
            with pytest.raises(ServingError, match="stopped half-way"):
                control.current_config(s)
        else:
            outcome = "inconsistent"
        outcomes.append(outcome)
        command(s)  # the server is back: the same command again finishes the move
        assert site.direct.state() == new, f"k={k}: {outcome}, then {site.direct.state()}"
        running = s.experiments.current()
        if new.challenger is None:
            assert running is None
        else:
            assert (running.champion_version, running.challenger_version) == (new.champion, new.challenger)
    return requests, outcomes


def test_the_server_down_at_any_request_of_a_promotion_leaves_a_state_its_rerun_finishes(
    site: Site, tmp_path: Path
) -> None:
    v1, v2, v3, _ = site.versions
    old, new = AliasState(v2, v3, [v1]), AliasState(v3, None, [v1, v2])
    requests, outcomes = _faults(site, tmp_path, old, new, control.promote)
    model, version, alias = (
        f"/api/2.0/mlflow/{p}" for p in ("registered-models/get", "model-versions", "registered-models/alias")
    )
    # the uncut promotion: read @challenger, the version, @champion; note v2 on v3; move @champion (the commit);
    # read the history, extend it; read @challenger, drop it. MLflow reads the model before each write (is it a
    # prompt?). Then nothing more from the registry.
    assert [_route(r) for r in requests] == [
        ["GET", alias], ["GET", f"{version}/get"], ["GET", alias],
        ["GET", model], ["POST", f"{version}/set-tag"],
        ["GET", model], ["POST", alias],
        ["GET", model], ["GET", model], ["POST", "/api/2.0/mlflow/registered-models/set-tag"],
        ["GET", alias], ["GET", model], ["DELETE", alias],
    ]  # fmt: skip
    assert json.loads(requests[6].split(" ", 2)[2]) == {
        "name": site.direct.model_name,
        "alias": CHAMPION,
        "version": "3",
    }
    # down before @champion moves (k <= 6): the old state; after it, before @challenger goes (k = 7..12): a
    # state serving refuses and the rerun finishes; never inconsistent
    assert outcomes == ["old"] * 7 + ["unfinished"] * 6
    assert Counter(outcomes) == {"old": 7, "unfinished": 6}
    experiments = _serving(site.direct, tmp_path / "k0").experiments.all()
    assert [e.outcome for e in experiments] == ["promote"]


def test_the_server_down_at_any_request_of_an_applied_decision_leaves_a_state_its_rerun_finishes(
    site: Site, tmp_path: Path
) -> None:
    """``ab decide --apply`` on a test the challenger wins: the same registry moves as a promotion."""
    v1, v2, v3, _ = site.versions
    old, new = AliasState(v2, v3, [v1]), AliasState(v3, None, [v1, v2])

    def decide(s: control.Serving) -> control.Outcome:
        outcome = control.decide(s, apply=True)
        assert outcome.action == f"promoted version {v3} to @champion"
        return outcome

    requests, outcomes = _faults(site, tmp_path, old, new, decide, partial(write_test_traffic, lift=0.6))
    model, alias = "/api/2.0/mlflow/registered-models/get", "/api/2.0/mlflow/registered-models/alias"
    assert [_route(r) for r in requests][:2] == [["GET", model], ["GET", "/api/2.0/mlflow/model-versions/get"]]
    assert [_route(r) for r in requests][6:7] == [["POST", alias]]  # @champion moves
    assert len(requests) == 13
    assert outcomes == ["old"] * 7 + ["unfinished"] * 6
    experiments = _serving(site.direct, tmp_path / "k7").experiments.all()
    assert [(e.champion_version, e.challenger_version, e.outcome) for e in experiments] == [(v2, v3, "promote")]


def test_the_server_down_at_any_request_of_a_rollback_leaves_a_state_its_rerun_finishes(
    site: Site, tmp_path: Path
) -> None:
    v1, v2, v3, v4 = site.versions
    old, new = AliasState(v3, v4, [v1, v2]), AliasState(v2, v4, [v1])
    requests, outcomes = _faults(site, tmp_path, old, new, control.rollback)
    model, alias = "/api/2.0/mlflow/registered-models/get", "/api/2.0/mlflow/registered-models/alias"
    # read @challenger, the model (aliases + history); mark v3 rolled back; move @champion (the commit); shorten
    # the history. MLflow reads the model before each write. Then nothing more from the registry.
    assert [_route(r) for r in requests] == [
        ["GET", alias], ["GET", model],
        ["GET", model], ["POST", "/api/2.0/mlflow/model-versions/set-tag"],
        ["GET", model], ["POST", alias],
        ["GET", model], ["POST", "/api/2.0/mlflow/registered-models/set-tag"],
    ]  # fmt: skip
    assert json.loads(requests[5].split(" ", 2)[2]) == {
        "name": site.direct.model_name,
        "alias": CHAMPION,
        "version": "2",
    }
    # down before @champion moves (k <= 5): the old state; after it (k = 6, 7): a state serving refuses (the
    # history ends with the champion) and the rerun finishes, rather than rolling back one further
    assert outcomes == ["old"] * 6 + ["unfinished"] * 2
    assert Counter(outcomes) == {"old": 6, "unfinished": 2}
    # the test of v3 against v4 stopped; v2 against v4 runs, keeping its salt (users stay in their arms)
    experiments = _serving(site.direct, tmp_path / "k4").experiments.all()
    assert [(e.champion_version, e.challenger_version, e.outcome) for e in experiments] == [
        (v2, v4, None),
        (v3, v4, "stopped"),
    ]
    assert experiments[0].salt == experiments[1].salt


def test_the_command_line_gives_up_on_a_dead_tracking_server_within_the_retry_budget(tmp_path: Path) -> None:
    """MLflow's own budget (7 retries at backoff 2) took 254 s to fail; [registry]'s default (4 retries at
    backoff 1: waits of 0, 2, 4 and 8 s, each plus under 1 s of jitter) adds under 18 s to what the same
    command costs with no retries (starting, importing MLflow, and the Feast plugin MLflow loads on its
    first request: 20 to 50 s on a busy 2-core machine)."""
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens: every connection is refused
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_HTTP_", "TRENDLOOP_"))}

    def promote(retries: str) -> tuple[float, subprocess.CompletedProcess]:
        config = tmp_path / f"trendloop-{retries or 'default'}.toml"
        config.write_text(f'[registry]\ntracking_uri = "{uri}"\n{retries}\n')
        started = time.monotonic()
        done = subprocess.run(
            [str(Path(sys.executable).with_name("trendloop")), "--config", str(config),
             "--home", str(tmp_path / "home"), "ab", "promote"],
            capture_output=True, text=True, env=env, timeout=300, check=False,
        )  # fmt: skip
        return time.monotonic() - started, done

    (bare, without), (took, done) = promote("request_retries = 0"), promote("")
    assert (done.returncode, done.stdout, without.returncode) == (1, "", 1)
    assert done.stderr == (
        f"error: cannot reach the MLflow tracking server at {uri} (connection refused, after 4 retries): "
        "is it running?\n"
    )
    assert without.stderr == done.stderr.replace("after 4 retries", "after 0 retries")
    # the waits, plus 12 s for how much two starts of the same command differ on a busy machine
    assert took - bare < 18 + 12, (took, bare)


def _route(request: str) -> list[str]:
    """``[method, path]`` of a logged request, without its query."""
    method, path, _ = request.split(" ", 2)
    return [method, path.split("?")[0]]
