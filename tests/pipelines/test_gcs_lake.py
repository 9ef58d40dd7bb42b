"""``profilestream run --lake gs://bucket/path``: the lake on Cloud Storage, as a Dataflow job writes it, here against
fake-gcs-server (``gcs_emulator``), holds the very files and rows a local run writes, and nothing else.

Beam looks Google credentials up once per process and, where there are none, retries for about 25 s before it goes
on anonymously; the emulator wants none, so the test records the lookup as done with no credentials.
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from apache_beam.internal.gcp import auth

from pipelines.cli import main
from tests.pipelines.test_cli import one_line_error
from tests.pipelines.test_run import stores_beside

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def bucket(gcs_emulator, monkeypatch) -> str:
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    monkeypatch.setattr(auth._Credentials, "_credentials_init", True)
    monkeypatch.setattr(auth._Credentials, "_credentials", None)
    client = storage.Client.create_anonymous_client()
    client.project = "profilestream-test"
    return client.create_bucket(f"lake-{uuid.uuid4().hex[:12]}").name


def objects(bucket: str, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix``, by its name below it."""
    from google.cloud import storage

    client = storage.Client.create_anonymous_client()
    blobs = client.list_blobs(bucket, prefix=f"{prefix}/")
    return {blob.name.removeprefix(f"{prefix}/"): blob.download_as_bytes() for blob in blobs}


def local_files(lake: Path) -> dict[str, Path]:
    return {str(path.relative_to(lake)): path for path in lake.rglob("*.parquet") if ".tmp" not in path.parts}


# One batch worker: with more, which worker's pane of a window holds which rows is a race, file by file.
@pytest.mark.parametrize("mode", [["--batch", "--workers", "1"], []], ids=["batch", "streaming"])
def test_a_lake_on_cloud_storage_holds_the_files_and_rows_of_a_local_lake(mode, bucket, small_stream, tmp_path, capsys):
    replay = ["run", "--source", f"replay:{small_stream}", *mode]
    assert main([*replay, "--lake", f"gs://{bucket}/lake", *stores_beside(tmp_path / "remote")]) == 0
    assert main([*replay, "--lake", str(tmp_path / "local"), *stores_beside(tmp_path / "local")]) == 0

    remote, local = objects(bucket, "lake"), local_files(tmp_path / "local")
    assert len(local) > 4
    assert sorted(remote) == sorted(local)
    for name, path in local.items():
        assert pq.read_table(io.BytesIO(remote[name])).equals(pq.read_table(path)), name


def test_a_bucket_that_does_not_exist_is_one_line_and_exit_2(bucket, small_stream, tmp_path, capsys):
    lake = f"gs://{bucket}-missing/lake"

    assert main(["run", "--source", f"replay:{small_stream}", "--lake", lake, *stores_beside(tmp_path / "x")]) == 2
    assert f"lake {lake} cannot be reached" in one_line_error(capsys)
