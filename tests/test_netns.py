"""The second node's plumbing: namespace set-up and clean-up against a scripted ``ip`` and against the kernel's
(root and iproute2: skipped without them, failed under CI), and the worker's ``ray start`` line in a namespace
and on the host fallback."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from infra.netns import NetNamespace, NetnsError, unavailable
from infra.ray import RayError, RayWorker
from tests.browsers import missing


def scripted_ip(tmp_path: Path, fail_on: str | None) -> tuple[str, Path]:
    """An ``ip`` that logs each call and fails (exit 2, with iproute2's kind of message) on the one containing
    ``fail_on``; ``ip netns pids`` lists nothing."""
    calls = tmp_path / "calls"
    script = tmp_path / "ip"
    fail = f'case "$*" in *"{fail_on}"*) echo "RTNETLINK answers: File exists" >&2; exit 2;; esac' if fail_on else ""
    script.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n{fail}\nexit 0\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script), calls


@pytest.mark.unit
def test_a_failed_step_names_its_command_and_what_was_made_is_removed(tmp_path: Path) -> None:
    ip, calls = scripted_ip(tmp_path, fail_on="addr add 10.211.7.1/24")
    ns = NetNamespace("tlx", subnet=7, ip=ip)
    with pytest.raises(NetnsError) as err:
        ns.up()
    assert str(err.value) == (
        f"`{ip} addr add 10.211.7.1/24 dev tlx-h` failed (exit 2): RTNETLINK answers: File exists"
    )
    done = calls.read_text().splitlines()
    # what up() got to make (the namespace, then the veth) is undone: the veth first, the namespace last
    assert done == [
        "netns add tlx",
        "link add tlx-h type veth peer name tlx-n",
        "link set tlx-n netns tlx",
        "addr add 10.211.7.1/24 dev tlx-h",
        "netns pids tlx",
        "link del tlx-h",
        "netns del tlx",
    ]
    assert ns.made == []


@pytest.mark.unit
def test_a_namespace_that_failed_at_once_removes_nothing_it_did_not_make(tmp_path: Path) -> None:
    ip, calls = scripted_ip(tmp_path, fail_on="netns add")
    with pytest.raises(NetnsError, match=r"netns add tlx` failed \(exit 2\)"):
        NetNamespace("tlx", subnet=7, ip=ip).up()
    assert calls.read_text().splitlines() == ["netns add tlx"]  # no `link del` of a link someone else may own


@pytest.mark.unit
def test_a_missing_ip_command_is_named_and_names_are_checked_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(NetnsError, match=r"`/no/such/ip netns add tlx` could not run"):
        NetNamespace("tlx", subnet=7, ip="/no/such/ip").up()
    with pytest.raises(NetnsError, match="1 to 12 characters"):
        NetNamespace("a-name-too-long", subnet=7)


@pytest.mark.unit
def test_up_cut_restore_and_remove_run_the_commands_a_node_loss_needs(tmp_path: Path) -> None:
    ip, calls = scripted_ip(tmp_path, fail_on=None)
    ns = NetNamespace("tly", subnet=9, ip=ip).up()
    assert (ns.host_ip, ns.node_ip) == ("10.211.9.1", "10.211.9.2")
    ns.cut()
    ns.restore()
    ns.remove()
    done = calls.read_text().splitlines()
    assert done[4:] == [
        "link set tly-h up",
        "netns exec tly " + ip + " addr add 10.211.9.2/24 dev tly-n",
        "netns exec tly " + ip + " link set tly-n up",
        "netns exec tly " + ip + " link set lo up",
        "link set tly-h down",
        "link set tly-h up",
        "netns pids tly",
        "link del tly-h",
        "netns del tly",
    ]


@pytest.mark.unit
def test_the_worker_joins_from_its_namespace_or_beside_the_head_on_ports_of_its_own(tmp_path: Path) -> None:
    ns = NetNamespace("tlz", subnet=3, ip="ip")
    inside = RayWorker("10.211.3.1:6390", tmp_path, 2, {"arm_node": 2}, ns).command()
    assert inside[:4] == ["ip", "netns", "exec", "tlz"] and inside[5:8] == ["start", "--block", "--address"]
    assert inside[inside.index("--node-ip-address") + 1] == "10.211.3.2"
    assert json.loads(inside[inside.index("--resources") + 1]) == {"arm_node": 2}

    ports = {"dashboard-agent-listen-port": 21001, "dashboard-agent-grpc-port": 21002, "runtime-env-agent-port": 21003}
    beside = RayWorker("127.0.0.1:6390", tmp_path, 1, {"arm_node": 2}, None, ports).command()
    assert "netns" not in beside and beside[beside.index("--node-ip-address") + 1] == "127.0.0.1"
    assert [beside[beside.index(f"--{o}") + 1] for o in sorted(ports)] == [str(ports[o]) for o in sorted(ports)]
    assert beside[beside.index("--num-cpus") + 1] == "1"
    with pytest.raises(RayError, match="needs ports of its own"):
        RayWorker("127.0.0.1:6390", tmp_path, 1, {"arm_node": 2})


def real_namespaces() -> None:
    why = unavailable()
    if why is not None:
        missing(why, os.environ, "network namespace tests")


def connects(ns: NetNamespace, port: int) -> bool:
    """Whether a process inside ``ns`` reaches the host's end of the veth on ``port`` within a second."""
    probe = f"import socket; socket.create_connection(({ns.host_ip!r}, {port}), timeout=1).close()"
    done = subprocess.run(
        [*ns.exec_prefix(), sys.executable, "-c", probe], capture_output=True, timeout=30, check=False
    )
    return done.returncode == 0


@pytest.mark.integration
def test_a_real_namespace_reaches_the_host_until_cut_and_again_once_restored() -> None:
    real_namespaces()
    ns = NetNamespace(f"tlt{os.getpid() % 100_000}").up()
    try:
        with socket.socket() as server:
            server.bind((ns.host_ip, 0))
            server.listen(8)
            port = server.getsockname()[1]
            assert connects(ns, port)
            ns.cut()
            assert not connects(ns, port)  # silence, as a lost node's: the connect times out
            ns.restore()
            assert connects(ns, port)
    finally:
        ns.remove()
    assert not ns.exists()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert ns.host_link not in links


@pytest.mark.integration
def test_a_real_set_up_that_fails_half_way_leaves_nothing_of_its_own_and_names_the_command() -> None:
    real_namespaces()
    name = f"tlf{os.getpid() % 100_000}"
    # someone else's link, under the name the namespace's host end would take
    subprocess.run(["ip", "link", "add", f"{name}-h", "type", "veth", "peer", "name", f"{name}-x"], check=True)
    try:
        ns = NetNamespace(name)
        with pytest.raises(NetnsError, match=rf"`ip link add {name}-h type veth peer name {name}-n` failed \(exit 2\)"):
            ns.up()
        assert not ns.exists()  # the namespace it made is gone
        shown = subprocess.run(["ip", "link", "show", f"{name}-h"], capture_output=True, check=False)
        assert shown.returncode == 0  # the link it did not make is left alone
    finally:
        subprocess.run(["ip", "link", "del", f"{name}-h"], check=False)
