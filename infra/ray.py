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
from infra.processes import alive, port_taken


class RayError(TrendloopError):
    """The local Ray head could not be started or stopped."""


@dataclass(frozen=True)
class RayPorts:
    gcs: int = 6380
    dashboard: int = 8265
    agent: int = 52366
    client: int = 23001  # outside Ray's worker port range (10002-19999 by default)


class LocalRay:
    def __init__(self, state_dir: Path, ports: RayPorts, num_cpus: int | None = None, num_gpus: int | None = None):
        self.state_dir = state_dir.resolve()
        self.ports, self.num_cpus, self.num_gpus = ports, num_cpus, num_gpus
        key = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:8]
        self.temp_dir = Path(tempfile.gettempdir()) / f"tl-ray-{key}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.dashboard}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports.gcs}"

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
            "--node-ip-address", "127.0.0.1",
            "--port", str(p.gcs),
            "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(p.dashboard),
            "--dashboard-agent-listen-port", str(p.agent),
            "--ray-client-server-port", str(p.client),
            "--temp-dir", str(self.temp_dir),
        ]  # fmt: skip
        if self.num_cpus is not None:
            command += ["--num-cpus", str(self.num_cpus)]
        if self.num_gpus is not None:
            command += ["--num-gpus", str(self.num_gpus)]
        done = self._run(command)
        if done.returncode != 0:
            raise RayError(f"`ray start` failed: {_tail(done.stdout)} (full log: {self.state_dir / 'ray.log'})")
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
        taken = [f"{setting} = {port}" for setting, port in wanted.items() if port_taken(port)]
        if taken:
            raise RayError(
                f"port taken on 127.0.0.1, perhaps by another trendloop home's Ray: {', '.join(taken)}; "
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


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])
