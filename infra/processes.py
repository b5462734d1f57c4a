"""Whether a process of a local service still runs (Linux), and whether a port is free, for the services trendloop
starts and stops."""

from __future__ import annotations

import os
import socket
from pathlib import Path


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


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """True when something holds ``port`` on ``host`` (a listener on 0.0.0.0 counts): a bind there fails."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free to a server
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False
