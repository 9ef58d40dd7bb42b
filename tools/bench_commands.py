"""``make bench``'s first table: wall time of the commands that run no pipeline, each in a fresh process, beside
``python -c pass`` measured in the same run.

    python -m tools.bench_commands [--repeat 5]

Each command runs ``--repeat`` times against a small SQLite identity store, profile store and message file made for
the run; the table gives the median wall time, its ratio to the interpreter's own start, and whether it stays under
:data:`TARGET_S` (they import no Beam, which alone costs seconds).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from stores.opening import open_identity_store, open_profile_store

TARGET_S = 1.0
CLI = [sys.executable, "-m", "pipelines.cli"]


def commands(folder: Path) -> dict[str, list[str]]:
    """The commands measured, against stores and a message file made in ``folder``."""
    identity, profiles = f"sqlite:///{folder}/identity.sqlite", f"sqlite:///{folder}/profiles.sqlite"
    open_identity_store(identity).close()
    open_profile_store(profiles).close()
    message = folder / "message.json"
    message.write_text('{"not": "an envelope"}\n')
    lookup = ["--identity", "Email:ann@example.com"]
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "profilestream --help": [*CLI, "--help"],
        "profilestream validate FILE": [*CLI, "validate", str(message)],
        "profilestream profile get": [*CLI, "profile", "get", "--store", profiles, *lookup],
        "profilestream identity get": [*CLI, "identity", "get", "--store", identity, *lookup],
    }


def wall_s(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_commands", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each command; the median is shown")
    repeat = max(1, parser.parse_args(argv).repeat)
    with tempfile.TemporaryDirectory() as folder:
        measured = {
            name: statistics.median(wall_s(command) for _ in range(repeat))
            for name, command in commands(Path(folder)).items()
        }
    reference = measured["python -c pass"]
    print(f"Commands without a pipeline: median wall time of {repeat} fresh processes each")
    print(f"  {'command':<30} {'wall s':>7} {'× python -c pass':>17}  under {TARGET_S:.0f} s")
    for name, seconds in measured.items():
        verdict = "yes" if seconds < TARGET_S else "NO"
        print(f"  {name:<30} {seconds:>7.2f} {seconds / reference:>17.1f}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
