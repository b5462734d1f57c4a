"""Whether a process of a local service still runs (Linux), whether a port is free, and a free one, for the
services trendloop starts and stops (and the suite's and benchmarks' own)."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Collection
from pathlib import Path

_HANDED_OUT: set[int] = set()  # ports this process gave out: not given twice, whether bound yet or not


def alive(pid: int) -> bool:
    """True while ``pid`` runs: our exited child is reaped, a zombie someone else will reap counts as gone."""
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished == pid:
            return False
    except ChildProcessError:
        pass  # not our child: ask the kernel
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc to ask: the kernel said it exists
    return state != "Z"


def tail(text: str, lines: int = 5) -> str:
    """The last ``lines`` lines of a command's or a log's output, on one line: what an error message quotes."""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """True when something holds ``port`` on ``host`` (a listener on 0.0.0.0 counts): a bind there fails."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free to a server
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def free_port(avoid: Collection[int] = ()) -> int:
    """A port nothing listens on, for a server about to start, from below the ephemeral range.

    A port the kernel lends to outgoing connections (``bind(0)``'s kind) can be taken between this check and
    the server's own bind: seen as Ray's dashboard failing on a port a client connection held. Ports from
    20000 up to the ephemeral range are never lent out; Ray's workers stay below 20000. SystemRandom: the
    suite's test order plugin reseeds ``random`` for every test, which would hand two tests the same guesses.
    """
    pick = random.SystemRandom()
    for _ in range(500):
        port = pick.randrange(20000, _ephemeral_low())
        if port in _HANDED_OUT or port in avoid or port_taken(port):
            continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free port between 20000 and the ephemeral range")


def _ephemeral_low() -> int:
    """Where the kernel starts handing out ports for outgoing connections (Linux: 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
