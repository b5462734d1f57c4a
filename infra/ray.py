"""The embedded default's Ray: a local head node on 127.0.0.1 that outlives the command that started it.

``ray start --head`` with every port named (two trendloop homes on one machine do
not collide), the dashboard bound to 127.0.0.1 (Serve configs are applied through
its REST API, as on a cluster), usage stats off, and token auth off: nothing
listens beyond this machine. Ray's session files go to a short folder under the
system temp dir (its Unix socket paths must stay under 108 bytes); the rest under
``state_dir``::

    ray.json    ports and temp dir of the running head
    ray.log     ``ray start`` / ``ray stop`` output
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from components.errors import TrendloopError
from components.files import write_atomic
from infra.netns import NetNamespace
from infra.processes import alive, port_taken, tail


class RayError(TrendloopError):
    """The local Ray head could not be started or stopped."""


@dataclass(frozen=True)
class RayPorts:
    gcs: int = 6380
    dashboard: int = 8265
    agent: int = 52366
    client: int = 23001  # outside Ray's worker port range (10002-19999 by default)


class LocalRay:
    """The head. ``node_ip``: the address it listens on and gives other nodes (127.0.0.1 alone; a veth's host end
    for a worker in a network namespace); ``resources``: custom resources it advertises (``{"router_node": 1}``)."""

    def __init__(
        self,
        state_dir: Path,
        ports: RayPorts,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        node_ip: str = "127.0.0.1",
        resources: dict[str, float] | None = None,
    ):
        self.state_dir = state_dir.resolve()
        self.ports, self.num_cpus, self.num_gpus = ports, num_cpus, num_gpus
        self.node_ip, self.resources = node_ip, dict(resources or {})
        key = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:8]
        self.temp_dir = Path(tempfile.gettempdir()) / f"tl-ray-{key}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.node_ip}:{self.ports.dashboard}"

    @property
    def address(self) -> str:
        return f"{self.node_ip}:{self.ports.gcs}"

    def environment(self) -> dict[str, str]:
        return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}

    def _ray(self) -> str:
        found = Path(sys.executable).parent / "ray"
        return str(found) if found.exists() else (shutil.which("ray") or "ray")

    def running(self) -> bool:
        return (self.state_dir / "ray.json").exists() and self._status_ok()

    def _status_ok(self) -> bool:
        done = subprocess.run(
            [self._ray(), "status", "--address", self.address],
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return done.returncode == 0

    def up(self, serve_port: int | None = None) -> bool:
        """Start the head unless it runs; returns whether it was started now. ``serve_port``: Serve's HTTP port,
        which the head's proxy will bind, checked free with the head's own."""
        if self.running():
            return False
        self.check_ports(serve_port)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        p = self.ports
        command = [
            self._ray(), "start", "--head", "--disable-usage-stats",
            "--node-ip-address", self.node_ip,
            "--port", str(p.gcs),
            "--include-dashboard", "true", "--dashboard-host", self.node_ip, "--dashboard-port", str(p.dashboard),
            "--dashboard-agent-listen-port", str(p.agent),
            "--ray-client-server-port", str(p.client),
            "--temp-dir", str(self.temp_dir),
        ]  # fmt: skip
        if self.num_cpus is not None:
            command += ["--num-cpus", str(self.num_cpus)]
        if self.num_gpus is not None:
            command += ["--num-gpus", str(self.num_gpus)]
        if self.resources:
            command += ["--resources", json.dumps(self.resources)]
        done = self._run(command)
        if done.returncode != 0:
            raise RayError(f"`ray start` failed: {tail(done.stdout)} (full log: {self.state_dir / 'ray.log'})")
        write_atomic(self.state_dir / "ray.json", json.dumps({**asdict(p), "temp_dir": str(self.temp_dir)}))
        return True

    def check_ports(self, serve_port: int | None = None) -> None:
        """Raise, naming each taken port and its setting, unless every port the head binds is free.

        Found late, a taken port fails ``ray start`` with a long log or, for Serve's HTTP port, leaves the
        app deploying forever; a second trendloop home on the default ports would deploy over the first's app.
        """
        wanted = {f"serving.ray_ports.{name}": port for name, port in asdict(self.ports).items()}
        if serve_port is not None:
            wanted["serving.port"] = serve_port
        hosts = dict.fromkeys(["127.0.0.1", self.node_ip])
        taken = [f"{setting} = {port}" for setting, port in wanted.items() if any(port_taken(port, h) for h in hosts)]
        if taken:
            raise RayError(
                f"port taken on {' or '.join(hosts)}, perhaps by another trendloop home's Ray: {', '.join(taken)}; "
                "set free ports there (or stop what holds them: `trendloop serve down` in that home)"
            )

    def down(self) -> bool:
        """Stop the head this state folder started; False if none ran."""
        record = self.state_dir / "ray.json"
        if not record.exists():
            return False
        # `ray stop` stops every Ray process of this user on the machine: only the head's own
        # processes are ours to stop, so stop them by the session folder they share.
        self._stop_own()
        record.unlink(missing_ok=True)
        return True

    def _stop_own(self) -> None:
        pids = _with_descendants(_pids_using(str(self.temp_dir), f"--port={self.ports.client}"))
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and any(alive(pid) for pid in pids):
                time.sleep(0.2)
            pids = [pid for pid in pids if alive(pid)]
            if not pids:
                return

    def _run(self, command: list[str]) -> subprocess.CompletedProcess:
        done = subprocess.run(command, env=self.environment(), capture_output=True, text=True, timeout=300, check=False)
        with (self.state_dir / "ray.log").open("a") as log:
            log.write(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}\n")
        done.stdout += done.stderr
        return done


class RayWorker:
    """A worker node joined to a running head with ``ray start --address``: a second machine in all but hardware.

    In ``namespace`` (``ip netns exec``) it has the namespace's address and ports of its own. Without one (where
    namespaces cannot be made: no root, no iproute2) it runs on 127.0.0.1 beside the head, and ``ports`` must name
    free ones for the agents the head already holds (``--dashboard-agent-listen-port`` and the like). ``stop`` kills
    the node (as losing its machine would) and everything it started.
    """

    def __init__(
        self,
        head: str,
        state_dir: Path,
        num_cpus: int,
        resources: dict[str, float],
        namespace: NetNamespace | None = None,
        ports: dict[str, int] | None = None,
    ):
        if namespace is None and not ports:
            raise RayError("a worker beside the head on 127.0.0.1 needs ports of its own")
        self.head, self.state_dir, self.num_cpus, self.resources = head, state_dir.resolve(), num_cpus, resources
        self.namespace, self.ports = namespace, dict(ports or {})
        self.process: subprocess.Popen | None = None

    @property
    def node_ip(self) -> str:
        return self.namespace.node_ip if self.namespace is not None else "127.0.0.1"

    def command(self) -> list[str]:
        ray = str(Path(sys.executable).parent / "ray")
        command = [
            *(self.namespace.exec_prefix() if self.namespace is not None else []),
            ray if Path(ray).exists() else (shutil.which("ray") or "ray"), "start", "--block",
            "--address", self.head, "--node-ip-address", self.node_ip,
            "--num-cpus", str(self.num_cpus), "--resources", json.dumps(self.resources), "--disable-usage-stats",
        ]  # fmt: skip
        for option, port in sorted(self.ports.items()):
            command += [f"--{option}", str(port)]
        return command

    def start(self, timeout: float = 120.0) -> None:
        """Start the node and return once ``ray start`` says it runs; raise with its log's tail if it exits."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.state_dir / "worker.log"
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
        with log_path.open("a") as log:
            log.write(f"$ {' '.join(self.command())}\n")
            log.flush()
            start = log.tell()
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            said = log_path.read_text()[start:]
            if "Ray runtime started" in said:
                return
            if self.process.poll() is not None:
                raise RayError(f"the worker node's `ray start` exited {self.process.returncode}: {tail(said)}")
            time.sleep(0.2)
        self.stop()
        raise RayError(f"the worker node did not start in {timeout:.0f} s (log: {log_path})")

    def stop(self) -> None:
        """Kill the node's processes (every one below ``ray start``): the node is gone, as with a lost machine."""
        if self.process is None:
            return
        pids = _with_descendants([self.process.pid])
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # its session: what left the tree, reparented
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(alive(pid) for pid in pids):
            time.sleep(0.1)
        self.process.wait(timeout=15)
        self.process = None


def _pids_using(*needles: str) -> list[int]:
    """Processes whose command line contains any of ``needles`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(n in cmdline for n in needles):
            found.append(int(entry.name))
    return found


def _with_descendants(roots: list[int]) -> list[int]:
    """``roots`` and every process below them (Ray's workers and agents rename themselves)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.append(pid)
            todo.extend(children.get(pid, []))
    return found
