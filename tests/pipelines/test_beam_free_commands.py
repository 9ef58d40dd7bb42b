"""The commands that run no pipeline do without Apache Beam: a fresh process runs each and imports no
``apache_beam`` module (importing it costs seconds of CPU, which ``--help`` and a lookup should not pay)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from stores.opening import open_identity_store, open_profile_store

# Runs the CLI in-process, then prints whether any apache_beam module was imported.
PROBE = """
import json, sys
from pipelines.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as leaving:
    code = leaving.code
print(json.dumps({"code": code, "beam": sorted(m for m in sys.modules if m.split(".")[0] == "apache_beam")[:3]}))
"""


def probe(*args: str) -> dict:
    run = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60)
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.fixture
def stores(tmp_path) -> tuple[str, str]:
    identity, profiles = f"sqlite:///{tmp_path}/identity.sqlite", f"sqlite:///{tmp_path}/profiles.sqlite"
    open_identity_store(identity).close()
    open_profile_store(profiles).close()
    return identity, profiles


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["run", "--help"],
        ["serve", "--help"],
        ["validate", "MESSAGE"],
        ["profile", "get", "--store", "PROFILES", "--identity", "Email:ann@example.com"],
        ["identity", "get", "--store", "IDENTITY", "--identity", "Email:ann@example.com"],
    ],
    ids=["help", "run-help", "serve-help", "validate", "profile-get", "identity-get"],
)
def test_a_command_that_runs_no_pipeline_imports_no_beam(args, stores, tmp_path):
    message = tmp_path / "message.json"
    message.write_text('{"not": "an envelope"}\n')
    identity, profiles = stores
    named = {"MESSAGE": str(message), "PROFILES": profiles, "IDENTITY": identity}

    answer = probe(*(named.get(arg, arg) for arg in args))

    assert answer["code"] in (0, 1)  # help, or an answer (valid or not, found or not): no usage error
    assert answer["beam"] == []
