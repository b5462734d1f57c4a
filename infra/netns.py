"""A second machine on this one: a Linux network namespace joined to the host by a veth pair (iproute2).

A Ray worker node started inside it (``infra.ray.RayWorker``) has its own address and
its own ports, and reaches the head only through the veth: taking the link down
(``cut``) loses the node as a pulled cable or a dead switch would (connections hang,
nothing is reset), ``restore`` brings it back. Needs root and Debian's ``iproute2``::

    host  <host_link> 10.211.N.1/24  <── veth ──>  10.211.N.2/24 <node_link>  namespace <name>

``up`` records each step it took; ``remove`` undoes whatever was set up (also after a
step failed half way), and kills what still runs inside the namespace.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from components.errors import TrendloopError
from infra.processes import alive

SUBNETS = "10.211"  # the namespaces take 10.211.N.0/24, the first N no interface of the host uses


class NetnsError(TrendloopError):
    """A network namespace could not be set up, changed or removed: the command and what it said."""


def unavailable(ip: str = "ip") -> str | None:
    """Why a namespace cannot be made here (not root, no iproute2), or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which(ip) is None:
        return f"no {ip!r} command: install Debian's iproute2"
    return None


def free_subnet(ip: str = "ip") -> int:
    """The first N in 10.211.N.0/24 that no address on the host lies in."""
    shown = subprocess.run([ip, "-4", "-o", "addr", "show"], capture_output=True, text=True, check=False).stdout
    used = {int(part.split(".")[2]) for part in shown.split() if part.startswith(f"{SUBNETS}.")}
    for n in range(256):
        if n not in used:
            return n
    raise NetnsError(f"every {SUBNETS}.N.0/24 is in use on this host")


class NetNamespace:
    """A namespace ``name`` with one veth to the host; ``up()`` makes it, ``remove()`` takes it all away."""

    def __init__(self, name: str, subnet: int | None = None, ip: str = "ip"):
        if not 1 <= len(name) <= 12:  # the links' names (name + "-h" / "-n") must fit the kernel's 15 characters
            raise NetnsError(f"namespace name {name!r} must be 1 to 12 characters")
        self.name, self.ip = name, ip
        self.subnet = free_subnet(ip) if subnet is None else subnet
        self.host_link, self.node_link = f"{name}-h", f"{name}-n"
        self.made: list[str] = []  # what up() created, in order: "netns", "veth"

    @property
    def host_ip(self) -> str:
        return f"{SUBNETS}.{self.subnet}.1"

    @property
    def node_ip(self) -> str:
        return f"{SUBNETS}.{self.subnet}.2"

    def exec_prefix(self) -> list[str]:
        """Put before a command to run it inside the namespace."""
        return [self.ip, "netns", "exec", self.name]

    def _ip(self, *args: str, inside: bool = False) -> None:
        command = [*(self.exec_prefix() if inside else []), self.ip, *args]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        except OSError as err:
            raise NetnsError(f"`{' '.join(command)}` could not run: {err}") from None
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().replace("\n", " | ")
            raise NetnsError(f"`{' '.join(command)}` failed (exit {done.returncode}): {said}")

    def up(self) -> NetNamespace:
        """Make the namespace and the veth, address both ends and bring them up; on failure, undo and raise."""
        try:
            self._ip("netns", "add", self.name)
            self.made.append("netns")
            self._ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.node_link)
            self.made.append("veth")
            self._ip("link", "set", self.node_link, "netns", self.name)
            self._ip("addr", "add", f"{self.host_ip}/24", "dev", self.host_link)
            self._ip("link", "set", self.host_link, "up")
            self._ip("addr", "add", f"{self.node_ip}/24", "dev", self.node_link, inside=True)
            self._ip("link", "set", self.node_link, "up", inside=True)
            self._ip("link", "set", "lo", "up", inside=True)  # a node's own processes talk over loopback too
        except NetnsError:
            self.remove()
            raise
        return self

    def cut(self) -> None:
        """Lose the node: the host's end of the link goes down, so nothing passes either way."""
        self._ip("link", "set", self.host_link, "down")

    def restore(self) -> None:
        self._ip("link", "set", self.host_link, "up")

    def pids(self) -> list[int]:
        done = subprocess.run(
            [self.ip, "netns", "pids", self.name], capture_output=True, text=True, timeout=30, check=False
        )
        return [int(p) for p in done.stdout.split() if p.isdigit()] if done.returncode == 0 else []

    def remove(self) -> None:
        """Kill what runs inside, delete the veth (both ends) and the namespace: whatever ``up`` got to make."""
        errors = []
        if "netns" in self.made:
            _kill(self.pids())
        if "veth" in self.made:
            try:  # the host's end: deleting it deletes its peer, wherever that is
                self._ip("link", "del", self.host_link)
            except NetnsError as err:
                if "Cannot find device" not in str(err):
                    errors.append(str(err))
        if "netns" in self.made:
            try:
                self._ip("netns", "del", self.name)
            except NetnsError as err:
                if "No such file" not in str(err):
                    errors.append(str(err))
        self.made.clear()
        if errors:
            raise NetnsError("; ".join(errors))

    def exists(self) -> bool:
        return (Path("/run/netns") / self.name).exists()


def _kill(pids: list[int], grace_s: float = 10.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.1)
        pids = [p for p in pids if alive(p)]
        if not pids:
            return
