"""``python -m tools.pubsub_emulator up`` (what ``make pubsub-up`` runs) on a port another program holds.

A readiness check that only connects would take the other program for the emulator, make the topics there and print
the ``export`` line; this test holds the port with a plain listening socket and expects one line and no emulator.
"""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import missing_prerequisite
from tools import pubsub_emulator as pubsub

# Refusing a held port takes no emulator start; the bound only stops a run that did start one (and hung on it).
REFUSAL_TIMEOUT_S = 45.0


def emulator_pids(port: int) -> list[int]:
    """The emulator processes started for ``port`` (its JVM's command line ends in ``--host=... --port=PORT``)."""
    found = subprocess.run(["pgrep", "-f", f"--host=127.0.0.1 --port={port}$"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def test_up_on_a_port_another_listener_holds_is_one_line_and_leaves_no_emulator(tmp_path: Path):
    try:
        pubsub.emulator_binary()
    except pubsub.EmulatorNotFoundError as missing:
        missing_prerequisite(str(missing))
    state_dir = tmp_path / "pubsub"
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        command = [sys.executable, "-m", "tools.pubsub_emulator", "up", "--port", str(port)]
        command += ["--state-dir", str(state_dir)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=REFUSAL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            result = None
        finally:
            left_behind = emulator_pids(port)
            for pid in left_behind:  # only emulators this test's command started
                os.kill(pid, signal.SIGKILL)
    assert result is not None, f"up did not finish within {REFUSAL_TIMEOUT_S} s on a held port"
    assert result.returncode != 0
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert f"port {port}" in result.stderr
    assert left_behind == []
    assert not (state_dir / "emulator.pid").exists()
