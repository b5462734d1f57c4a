"""The control plane: write the Serve config, apply it through Ray's REST API, and follow the registry.

The config is Ray Serve's declarative one (the same document a KubeRay RayService
takes as ``serveConfigV2``), applied with ``PUT /api/serve/applications/`` on the
Ray dashboard: locally the head trendloop starts, on a cluster the RayService's.
What changes often lives in ``user_config`` (the router's split, salt and
experiment; each arm's model version and batching), so applying a new config that
differs only there reconfigures running replicas: no restart, no dropped request.
Anything else (args, resources, replicas) rolls the replicas.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from components.errors import TrendloopError
from serving.experiment import CHALLENGER, CHAMPION

if TYPE_CHECKING:
    from serving.router import Traffic

APP = "trendloop"
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServingError(TrendloopError):
    """The serving application could not be deployed, reached or stopped."""


@dataclass(frozen=True)
class ArmSpec:
    """How one arm's deployment runs."""

    replicas: int = 1
    num_cpus: float = 0.5  # per replica; fractions let several replicas share a core
    num_gpus: float = 0.0  # per replica; 0.5 puts two arms on one GPU (memory is not isolated)
    max_batch_size: int = 32  # requests one forward pass takes (@serve.batch)
    batch_wait_ms: float = 5.0  # how long a batch waits to fill
    max_ongoing_requests: int = 64
    # custom Ray resources each replica requires, e.g. {"arm_node": 1}: only nodes advertising them
    # (``ray start --resources``) take it, as ``num_gpus`` keeps an arm on a GPU node of a cluster
    resources: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RouterSpec:
    replicas: int = 1
    num_cpus: float = 0.25
    max_ongoing_requests: int = 256
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources, e.g. {"router_node": 0.01}


def serve_config(
    args: dict,
    versions: dict[str, int | str | None],
    traffic: Traffic,
    arms: dict[str, ArmSpec],
    router: RouterSpec = RouterSpec(),
    host: str = "127.0.0.1",
    port: int = 8000,
    route_prefix: str = "/",
) -> dict:
    """The Serve config (ServeDeploySchema) for the app ``serving.app:build`` with ``args``."""
    args = {**args, "num_gpus": {arm: arms[arm].num_gpus for arm in (CHAMPION, CHALLENGER)}}
    deployments = [
        {
            "name": "router",
            "num_replicas": router.replicas,
            "max_ongoing_requests": router.max_ongoing_requests,
            "ray_actor_options": actor_options(router.num_cpus, None, router.resources),
            "user_config": asdict(traffic),
            "graceful_shutdown_timeout_s": 30,
        }
    ]
    for arm in (CHAMPION, CHALLENGER):
        spec = arms[arm]
        deployments.append(
            {
                "name": arm,
                "num_replicas": spec.replicas,
                "max_ongoing_requests": spec.max_ongoing_requests,
                "ray_actor_options": actor_options(spec.num_cpus, spec.num_gpus, spec.resources),
                "user_config": {
                    "version": versions.get(arm),
                    "max_batch_size": spec.max_batch_size,
                    "batch_wait_ms": spec.batch_wait_ms,
                },
            }
        )
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": host, "port": port},
        "applications": [
            {
                "name": APP,
                "route_prefix": route_prefix,
                "import_path": "serving.app:build",
                "args": args,
                "deployments": deployments,
            }
        ],
    }


def actor_options(num_cpus: float, num_gpus: float | None, resources: dict[str, float]) -> dict:
    """A replica's ``ray_actor_options``: what it reserves on the node that takes it."""
    options: dict = {"num_cpus": num_cpus}
    if num_gpus is not None:
        options["num_gpus"] = num_gpus
    if resources:
        options["resources"] = dict(resources)
    return options


class ServeAdmin:
    """Ray Serve's REST API on a Ray dashboard (``http://127.0.0.1:8265`` for the local head)."""

    # a deploy's first PUT starts Serve's controller: on a busy 2-core machine that took over 30 s
    def __init__(self, dashboard_url: str, timeout: float = 120.0):
        self.url, self.timeout = dashboard_url.rstrip("/"), timeout

    def _call(self, method: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.url}/api/serve/applications/",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with _DIRECT.open(request, timeout=self.timeout) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as err:
            raise ServingError(f"Ray refused {method} of the Serve config: {err.read().decode()[:500]}") from None
        except OSError as err:
            raise ServingError(f"cannot reach the Ray dashboard at {self.url}: {err}") from None
        return json.loads(text) if text.strip() else {}

    def reachable(self) -> bool:
        try:
            self._call("GET")
        except ServingError:
            return False
        return True

    def deploy(self, config: dict) -> None:
        self._call("PUT", config)

    def applications(self) -> dict:
        return self._call("GET").get("applications", {})

    def config(self) -> dict | None:
        """The Serve config in force (what the last deploy applied), or None when nothing is deployed."""
        found = self._call("GET")
        app = found.get("applications", {}).get(APP)
        if not app or not app.get("deployed_app_config"):
            return None
        http = found.get("http_options") or {}
        return {
            "proxy_location": found.get("proxy_location", "HeadOnly"),
            "http_options": {"host": http.get("host", "127.0.0.1"), "port": http.get("port", 8000)},
            "applications": [app["deployed_app_config"]],
        }

    def wait_running(self, timeout: float = 300.0) -> dict:
        """Wait until the app runs with every deployment healthy; returns its status."""
        deadline = time.monotonic() + timeout
        last = "not deployed"
        while time.monotonic() < deadline:
            app = self.applications().get(APP)
            if app:
                last = app.get("status", "?")
                deployments = app.get("deployments", {})
                if last == "RUNNING" and all(d.get("status") == "HEALTHY" for d in deployments.values()):
                    return app
                if last == "DEPLOY_FAILED":
                    raise ServingError(f"the serving app failed to deploy: {app.get('message', '')[-2000:]}")
                unhealthy = [
                    f"{n}: {d.get('message')}" for n, d in deployments.items() if d.get("status") == "UNHEALTHY"
                ]
                if unhealthy:
                    last = f"{last} ({'; '.join(unhealthy)[-500:]})"
            time.sleep(0.5)
        raise ServingError(f"the serving app is not running after {timeout:.0f} s: {last}")

    def shutdown(self) -> None:
        """Delete every Serve application (replicas shut down gracefully, flushing their logs)."""
        self._call("DELETE")

    def wait_gone(self, timeout: float = 120.0) -> None:
        """Wait until no application is left (every replica has shut down)."""
        deadline = time.monotonic() + timeout
        while self.applications():
            if time.monotonic() > deadline:
                raise ServingError(f"the serving app is still shutting down after {timeout:.0f} s")
            time.sleep(0.5)


def with_user_config(config: dict, traffic: Traffic, versions: dict[str, int | None]) -> dict:
    """``config`` with new live knobs only: applying it reconfigures running replicas in place."""
    config = json.loads(json.dumps(config))
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "router":
            deployment["user_config"] = asdict(traffic)
        elif deployment["name"] in versions:
            deployment["user_config"] = {**deployment.get("user_config", {}), "version": versions[deployment["name"]]}
    return config
