"""``profilestream`` command-line contracts: one-line errors with exit 2, and ``validate`` output and exit codes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipelines.cli import main
from tests.helpers import PROFILE_SCHEMA, envelope, event

DATA = Path(__file__).parents[1] / "data" / "xdm"
NOW = datetime.now(UTC)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["run", "--source", "kafka:topic"], "unknown source 'kafka'"),
        (["run", "--source", "replay:/no/such/file.jsonl"], "/no/such/file.jsonl"),
        (["run"], "--source"),
        (["run", "--source", "replay:x.jsonl", "--workers", "2"], "--workers sets the worker processes of a --batch"),
        (["run", "--source", "replay:x.jsonl", "--batch", "--workers", "0"], "--workers"),
        (["frobnicate"], "invalid choice"),
        (["validate", "--conformance", "x.json"], "--conformance needs --schema"),
        (["validate", "/no/such.json"], "/no/such.json: no such file"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, fragment, capsys):
    assert main(args) == 2
    assert fragment in one_line_error(capsys)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("x" * 100_000, "… (100,000 characters): file name too long"), (".", "is a directory, not a file")],
)
def test_validate_on_a_path_that_is_no_file_is_one_line(name, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["validate", name]) == 2
    line = one_line_error(capsys)
    assert fragment in line
    assert len(line) < 300


def test_validate_on_an_empty_file_says_so_and_exits_1(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")

    assert main(["validate", str(empty)]) == 1

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == f"profilestream: {empty}: holds no message to validate"


def test_unwritable_lake_is_a_usage_error(tmp_path, capsys):
    stream = tmp_path / "s.jsonl"
    stream.write_text("{}\n")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["run", "--source", f"replay:{stream}", "--lake", str(blocker / "lake")]) == 2
    assert "lake directory" in one_line_error(capsys)


def test_a_lake_with_a_linked_temporary_folder_is_refused_in_one_line_and_the_link_target_kept(tmp_path, capsys):
    stream = tmp_path / "s.jsonl"
    stream.write_text("{}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.db").write_bytes(b"bystander")
    lake = tmp_path / "lake"
    lake.mkdir()
    (lake / ".tmp").symlink_to(elsewhere)

    assert main(["run", "--source", f"replay:{stream}", "--lake", str(lake)]) == 2

    assert f"{lake / '.tmp'} is a symbolic link" in one_line_error(capsys)
    assert (elsewhere / "keep.db").read_bytes() == b"bystander"


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("bad.yaml", "tenant_id: [unclosed", "not valid YAML"),
        ("bad.toml", "tenant_id = ", "not valid TOML"),
        ("unknown.yaml", "colour: blue", "unknown key 'colour'"),
        ("interval.yaml", "commit_interval_seconds: 7", "must divide an hour"),
        ("type.yaml", "max_errors: many", "max_errors must be int"),
    ],
)
def test_malformed_config_is_a_usage_error(name, text, fragment, tmp_path, capsys):
    config = tmp_path / name
    config.write_text(text)
    stream = tmp_path / "s.jsonl"
    stream.write_text("{}\n")
    assert main(["run", "--source", f"replay:{stream}", "--config", str(config), "--lake", str(tmp_path)]) == 2
    assert fragment in one_line_error(capsys)


def verdicts(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_validate_prints_a_line_per_entity_and_exits_0_when_all_valid(tmp_path, capsys):
    path = tmp_path / "one.json"
    path.write_text(json.dumps(envelope(event("e1", NOW))))

    assert main(["validate", str(path)]) == 0
    assert verdicts(capsys) == [
        {
            "file": str(path),
            "index": 0,
            "valid": True,
            "schema": envelope({})["header"]["schemaRef"]["id"],
            "errors": [],
        }
    ]


def test_validate_numbers_batch_entries_in_file_order_and_exits_1_on_any_invalid(tmp_path, capsys):
    bad = event("e2", NOW)
    bad["eventType"] = 7
    path = tmp_path / "messages.jsonl"
    batch = {"messages": [envelope(event("e1", NOW)), envelope(bad)]}
    path.write_text(json.dumps(batch) + "\n" + json.dumps(envelope(event("e3", NOW))) + "\n")

    assert main(["validate", str(path)]) == 1
    lines = verdicts(capsys)
    assert [(line["index"], line["valid"]) for line in lines] == [(0, True), (1, False), (2, True)]
    assert lines[1]["errors"] == [
        {"code": "SCHEMA.TYPE", "path": "/eventType", "message": "expected string, got integer"}
    ]


def test_validate_bare_entity_with_schema_flag(tmp_path, capsys):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"_id": "p1", "person": {"name": {"firstName": ""}}}))

    assert main(["validate", "--schema", PROFILE_SCHEMA, str(path)]) == 1
    [line] = verdicts(capsys)
    assert line["schema"] == PROFILE_SCHEMA
    assert [(error["code"], error["path"]) for error in line["errors"]] == [
        ("SCHEMA.EMPTY_VALUE", "/person/name/firstName")
    ]


def test_validate_conformance_mode_reports_plain_json_schema_errors(capsys):
    example = DATA / "examples" / "components" / "datatypes" / "namespace.invalid.1.json"

    assert (
        main(["validate", "--conformance", "--schema", "https://ns.adobe.com/xdm/context/namespace", str(example)]) == 1
    )
    [line] = verdicts(capsys)
    assert [error["message"] for error in line["errors"]] == ["'xdm:code' is a required property"]
