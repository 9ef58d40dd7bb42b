"""The ``profiles`` key of the configuration file: its defaults, its parsing, its errors, and a run it steers.

The end-to-end test runs ``profilestream run --batch`` on a replay of two profile records of one person from two
datasets, the newer one from the dataset ``dataset_order`` ranks lower, then reads the person back with
``profilestream profile get``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import pipelines
from pipelines.cli import main
from pipelines.config import Config, ConfigError, ProfilesSettings, load_config
from profiles.model import DatasetPrecedence, ProfileLimits
from profiles.writer import ProfileSettings
from tests.helpers import PROFILE_SCHEMA, START, envelope, rest_line

CRM_SCHEMA = "https://example.com/schemas/crm-profile"
# A second profile-class dataset beside the built-in profile_records, its records carrying a name and an audit date.
CRM_SCHEMA_FILE = {
    "$id": CRM_SCHEMA,
    "class": "https://ns.adobe.com/xdm/context/profile",
    "fieldGroups": [
        "https://ns.adobe.com/xdm/context/identitymap",
        "https://ns.adobe.com/xdm/context/profile-person-details",
        "https://ns.adobe.com/xdm/common/external-source-system-audit-details",
    ],
    "dataset": {"name": "crm_profiles"},
}
ANN_EMAIL = "ann@example.com"
PRECEDENCE = "profiles:\n  merge_policy: dataset_precedence\n  dataset_order: [crm_profiles, profile_records]\n"


def write(tmp_path: Path, text: str, name: str = "profilestream.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_without_the_key_profiles_merge_as_merge_profiles_does_by_default_and_keep_every_event():
    config = load_config(None)
    assert config.profiles == ProfilesSettings()
    assert config.profile_settings() == ProfileSettings()
    assert config.event_ttl_us() is None


def test_the_example_file_sets_every_default_of_profiles():
    assert load_config(Path(pipelines.__path__[0]) / "profilestream.example.yaml").profiles == ProfilesSettings()


def test_the_example_file_sets_the_default_limits_per_message():
    config = load_config(Path(pipelines.__path__[0]) / "profilestream.example.yaml")
    assert (config.max_message_bytes, config.max_batch_entries) == (Config().max_message_bytes, 1024)


def test_max_batch_entries_reads_from_the_file(tmp_path):
    assert load_config(write(tmp_path, "max_batch_entries: 50\n")).max_batch_entries == 50


@pytest.mark.parametrize(
    ("text", "message"),
    [("max_batch_entries: 0", "max_batch_entries must be positive"), ("max_batch_entries: many", "must be int")],
)
def test_a_bad_max_batch_entries_is_one_line_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_every_key_reaches_the_settings_of_merge_profiles(tmp_path):
    config = load_config(
        write(
            tmp_path,
            PRECEDENCE + "  recent_events: 20\n  max_events: 100\n  max_event_bytes: 2048\n  max_record_bytes: 4096\n"
            "  event_ttl_days: 1.5\n  flush_interval_seconds: 0.25\n  max_buffered: 10\n  shards: 4\n",
        )
    )
    assert config.profile_settings() == ProfileSettings(
        policy=DatasetPrecedence(("crm_profiles", "profile_records")),
        limits=ProfileLimits(max_events=100, recent_events=20, max_event_bytes=2048, max_record_bytes=4096),
        flush_interval_s=0.25,
        max_buffered=10,
        shards=4,
    )
    assert config.event_ttl_us() == 36 * 3_600_000_000


def test_the_key_reads_from_toml_too(tmp_path):
    text = '[profiles]\nmerge_policy = "dataset_precedence"\ndataset_order = ["crm_profiles"]\nevent_ttl_days = 30\n'
    profiles = load_config(write(tmp_path, text, "profilestream.toml")).profiles
    assert (profiles.policy(), profiles.event_ttl_days) == (DatasetPrecedence(("crm_profiles",)), 30)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("profiles: []", "profiles must be dict"),
        ("profiles: {ttl: 3}", "profiles: unknown key 'ttl' (known: merge_policy, dataset_order,"),
        ("profiles: {merge_policy: newest}", "merge_policy must be timestamp_ordered or dataset_precedence, not 'new"),
        ("profiles: {merge_policy: dataset_precedence}", "profiles.dataset_order must name the datasets"),
        ("profiles: {dataset_order: [crm_profiles]}", "dataset_order applies only to merge_policy: dataset_precedence"),
        ("profiles: {merge_policy: dataset_precedence, dataset_order: crm}", "profiles.dataset_order must be list"),
        ("profiles: {merge_policy: dataset_precedence, dataset_order: [a, '']}", "must be a list of dataset names"),
        ("profiles: {merge_policy: dataset_precedence, dataset_order: [a, 3]}", "must be a list of dataset names"),
        ("profiles: {merge_policy: dataset_precedence, dataset_order: [a, a]}", "dataset_order names a dataset twice"),
        ("profiles: {recent_events: 60, max_events: 50}", "profiles: need 0 <= recent_events <= max_events"),
        ("profiles: {recent_events: -1}", "profiles: need 0 <= recent_events <= max_events"),
        ("profiles: {max_events: 0, recent_events: 0}", "and max_events >= 1"),
        ("profiles: {max_event_bytes: 0}", "profiles.max_event_bytes must be positive"),
        ("profiles: {max_record_bytes: -1}", "profiles.max_record_bytes must be positive"),
        ("profiles: {flush_interval_seconds: 0}", "profiles.flush_interval_seconds must be positive"),
        ("profiles: {flush_interval_seconds: soon}", 'profiles.flush_interval_seconds must be number, not "soon"'),
        ("profiles: {max_buffered: 0}", "profiles.max_buffered must be positive"),
        ("profiles: {shards: 1.5}", "profiles.shards must be int, not 1.5"),
        ("profiles: {shards: true}", "profiles.shards must be int, not true"),
        ("profiles: {event_ttl_days: 0}", "profiles.event_ttl_days must be positive (or null: no TTL)"),
        ("profiles: {event_ttl_days: 7d}", 'profiles.event_ttl_days must be number, not "7d"'),
    ],
)
def test_a_bad_profiles_section_is_one_line_naming_the_file_and_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    [line] = str(raised.value).splitlines()
    assert line.startswith(f"{path}: ")
    assert message in line


def test_a_bad_profiles_section_stops_the_command_with_exit_2(tmp_path, capsys):
    path = write(tmp_path, "profiles: {shards: 0}")
    assert main(["profile", "get", "--config", str(path), "--identity", f"Email:{ANN_EMAIL}"]) == 2
    assert capsys.readouterr().err.splitlines() == [f"profilestream: error: {path}: profiles.shards must be positive"]


def test_settings_made_in_code_are_checked_as_those_of_a_file():
    with pytest.raises(ConfigError, match=r"^profiles\.dataset_order must name"):
        Config(profiles=ProfilesSettings(merge_policy="dataset_precedence"))


# --- a run the key steers -------------------------------------------------------------------------------------------


def profile_record(record_id: str, minute: int, first_name: str) -> dict:
    return {
        "_id": record_id,
        "identityMap": {"Email": [{"id": ANN_EMAIL, "primary": True}]},
        "person": {"name": {"firstName": first_name}},
        "extSourceSystemAudit": {"lastUpdatedDate": f"2026-11-01T09:{minute:02d}:00Z"},
    }


@pytest.fixture
def two_datasets(tmp_path: Path) -> tuple[Path, Path]:
    """A schema directory adding crm_profiles, and a replay of Ann's name from it (older) then from profile_records."""
    schema_dir = tmp_path / "schemas"
    schema_dir.mkdir()
    (schema_dir / "crm.json").write_text(json.dumps(CRM_SCHEMA_FILE))
    replay = tmp_path / "replay.jsonl"
    ranked = envelope(profile_record("crm-1", 1, "Ranked"), CRM_SCHEMA)
    newer = envelope(profile_record("rec-1", 5, "Newer"), PROFILE_SCHEMA)
    replay.write_text(f"{rest_line(ranked, 'm1', START)}\n{rest_line(newer, 'm2', START)}\n")
    return schema_dir, replay


@pytest.mark.parametrize(
    ("profiles", "first_name"),
    [("", "Newer"), (PRECEDENCE, "Ranked")],
    ids=["timestamp_ordered", "dataset_precedence"],
)
def test_the_merge_policy_of_the_file_decides_the_profile_a_run_writes(
    tmp_path, capsys, two_datasets, profiles, first_name
):
    schema_dir, replay = two_datasets
    config = write(tmp_path, profiles)
    store = f"sqlite:///{tmp_path}/profiles.sqlite"
    run = ["run", "--source", f"replay:{replay}", "--batch", "--schema-dir", str(schema_dir), "--config", str(config)]
    stores = ["--lake", str(tmp_path / "lake"), "--identity-store", f"sqlite:///{tmp_path}/identity.sqlite"]
    assert main([*run, *stores, "--profile-store", store]) == 0
    capsys.readouterr()

    assert main(["profile", "get", "--store", store, "--config", str(config), "--identity", f"Email:{ANN_EMAIL}"]) == 0
    [answer] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert answer["attributes"]["person"]["name"]["firstName"] == first_name
