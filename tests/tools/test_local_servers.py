"""tools.local_servers: a server counts as started only on a port that was free and that it alone listens on."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools import local_servers
from tools.local_servers import Listener, PortTakenError, ServerStartError

# Another program: it listens on a loopback port of its own and prints the port.
LISTENER = (
    "import socket, time\n"
    "server = socket.socket()\n"
    "server.bind(('127.0.0.1', 0))\n"
    "server.listen()\n"
    "print(server.getsockname()[1], flush=True)\n"
    "time.sleep(60)\n"
)
GIVE_UP_S = 10.0


@pytest.fixture
def another_listener() -> Iterator[tuple[subprocess.Popen, int]]:
    """A process (leading a group of its own) listening on a loopback port; the process and the port."""
    process = subprocess.Popen(
        [sys.executable, "-c", LISTENER], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        yield process, int(process.stdout.readline())
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


def group_is_gone(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_port_another_process_listens_on_is_refused_in_one_line(another_listener):
    _, port = another_listener
    with pytest.raises(PortTakenError) as refused:
        local_servers.refuse_taken_port(port)
    assert str(refused.value).splitlines() == [
        f"port {port} on 127.0.0.1 is in use by another program; stop it or choose another port"
    ]


def test_a_free_port_passes():
    local_servers.refuse_taken_port(local_servers.free_port())


def test_who_listens_tells_the_listeners_group_from_any_other(another_listener):
    listener, port = another_listener
    assert local_servers.who_listens(listener.pid, port) is Listener.OURS
    assert local_servers.who_listens(os.getpgrp(), port) is Listener.ANOTHER
    assert local_servers.who_listens(listener.pid, local_servers.free_port()) is Listener.NOBODY


def test_a_server_that_is_not_the_one_listening_on_its_port_is_stopped_in_one_line(another_listener, tmp_path):
    # A plain connect to the port would succeed at once: the other program answers there.
    _, port = another_listener
    silent = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        started = time.monotonic()
        with pytest.raises(ServerStartError) as failed:
            local_servers.wait_until_serving("sleep", silent, tmp_path / "sleep.log", port=port, timeout_s=GIVE_UP_S)
        assert time.monotonic() - started < GIVE_UP_S
        assert str(failed.value).splitlines() == [f"sleep: another program listens on port {port} too; stopped ours"]
        assert group_is_gone(silent.pid)
    finally:
        if silent.poll() is None:  # the check failed: the test still stops what it started
            silent.kill()
            silent.wait()


def test_a_server_alone_on_its_free_port_runs_for_the_block_and_its_group_is_gone_after(tmp_path: Path):
    port = local_servers.free_port()
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    with local_servers.local_server("http.server", command, tmp_path / "http.log", port=port) as server:
        assert local_servers.who_listens(server.pid, port) is Listener.OURS
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert group_is_gone(server.pid)
    local_servers.refuse_taken_port(port)
