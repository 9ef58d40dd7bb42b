"""The schema registry: built-in and user schemas, datasets and schema-file errors (schemas.registry)."""

import json

import pytest

from schemas.registry import SchemaFileError, SchemaRegistry

EXPERIENCE_EVENT = "https://ns.adobe.com/xdm/context/experienceevent"
PROFILE = "https://ns.adobe.com/xdm/context/profile"
IDENTITY_MAP = "https://ns.adobe.com/xdm/context/identitymap"
LOYALTY_SCHEMA = {
    "$id": "https://example.com/schemas/loyalty-event",
    "class": EXPERIENCE_EVENT,
    "fieldGroups": [IDENTITY_MAP],
    "tenant": {"type": "object", "properties": {"loyaltyTier": {"type": "string"}}},
    "dataset": {"name": "loyalty_events", "identity": True, "profile": False},
}
CRM_SCHEMA = {
    "$id": "https://example.com/schemas/crm-record",
    "class": PROFILE,
    "dataset": {"name": "crm_records"},
}


def _write(directory, name: str, content) -> None:
    text = content if isinstance(content, str) else json.dumps(content)
    (directory / name).write_text(text, encoding="utf-8")


def _load_error(schema_dir) -> SchemaFileError:
    with pytest.raises(SchemaFileError) as caught:
        SchemaRegistry.load(schema_dir)
    return caught.value


@pytest.mark.parametrize(
    ("schema_id", "dataset"), [(EXPERIENCE_EVENT, "experience_events"), (PROFILE, "profile_records")]
)
def test_built_in_schema_is_registered_under_its_class_id(registry, schema_id, dataset):
    schema = registry.get(schema_id)
    assert (schema.class_id, schema.dataset.name) == (schema_id, dataset)


@pytest.mark.parametrize("dataset", ["experience_events", "profile_records"])
def test_built_in_datasets_feed_identity_and_profiles(registry, dataset):
    assert (registry.datasets[dataset].identity, registry.datasets[dataset].profile) == (True, True)


def test_only_the_built_in_schemas_are_registered_by_default(registry):
    assert {schema.schema_id for schema in registry.schemas} == {EXPERIENCE_EVENT, PROFILE}


def test_experience_event_is_time_series_and_profile_is_not(registry):
    assert (registry.get(EXPERIENCE_EVENT).time_series, registry.get(PROFILE).time_series) == (True, False)


def test_built_in_field_groups_are_the_contract_s(registry):
    assert IDENTITY_MAP in registry.get(EXPERIENCE_EVENT).field_groups
    assert "https://ns.adobe.com/xdm/mixins/profile-consents" in registry.get(PROFILE).field_groups


@pytest.mark.parametrize("schema_id", [None, "https://example.com/unknown"])
def test_get_of_an_unknown_id_is_none(registry, schema_id):
    assert registry.get(schema_id) is None


def test_tenant_key_defaults_to_underscore_tenant(registry):
    assert registry.tenant_key == "_tenant"


def test_tenant_id_names_the_tenant_object():
    registry = SchemaRegistry.load(tenant_id="acme")
    assert registry.tenant_key == "_acme"
    assert "_acme" in registry.get(EXPERIENCE_EVENT).root.children


def test_avro_schema_for_an_unknown_id_is_none(registry):
    assert registry.avro_schema_for("https://example.com/unknown") is None


def test_avro_schema_for_a_built_in_is_the_schema_s(registry):
    assert registry.avro_schema_for(PROFILE) is registry.get(PROFILE).avro_schema


def test_user_schema_is_registered_with_its_dataset(tmp_path):
    _write(tmp_path, "loyalty.json", LOYALTY_SCHEMA)
    schema = SchemaRegistry.load(tmp_path).get(LOYALTY_SCHEMA["$id"])
    assert (schema.class_id, schema.field_groups) == (EXPERIENCE_EVENT, (IDENTITY_MAP,))
    assert (schema.dataset.name, schema.dataset.identity, schema.dataset.profile) == ("loyalty_events", True, False)


def test_user_schema_dataset_is_listed_beside_the_built_ins(tmp_path):
    _write(tmp_path, "loyalty.json", LOYALTY_SCHEMA)
    assert set(SchemaRegistry.load(tmp_path).datasets) == {"experience_events", "profile_records", "loyalty_events"}


def test_user_schema_tenant_object_is_composed(tmp_path):
    _write(tmp_path, "loyalty.json", LOYALTY_SCHEMA)
    tenant = SchemaRegistry.load(tmp_path).get(LOYALTY_SCHEMA["$id"]).root.children["_tenant"]
    assert (tenant.kind, list(tenant.children)) == ("object", ["loyaltyTier"])


def test_user_schema_keeps_only_its_field_groups(tmp_path):
    _write(tmp_path, "loyalty.json", LOYALTY_SCHEMA)
    root = SchemaRegistry.load(tmp_path).get(LOYALTY_SCHEMA["$id"]).root
    assert "identityMap" in root.children
    assert "web" not in root.children


def test_user_schema_dataset_switches_default_to_on(tmp_path):
    _write(tmp_path, "crm.json", CRM_SCHEMA)
    dataset = SchemaRegistry.load(tmp_path).datasets["crm_records"]
    assert (dataset.identity, dataset.profile) == (True, True)


def test_user_schema_of_a_time_series_class_is_time_series(tmp_path):
    _write(tmp_path, "loyalty.json", LOYALTY_SCHEMA)
    _write(tmp_path, "crm.json", CRM_SCHEMA)
    registry = SchemaRegistry.load(tmp_path)
    assert (registry.get(LOYALTY_SCHEMA["$id"]).time_series, registry.get(CRM_SCHEMA["$id"]).time_series) == (
        True,
        False,
    )


def test_only_json_files_are_read(tmp_path):
    _write(tmp_path, "notes.txt", "not a schema")
    assert len(SchemaRegistry.load(tmp_path).schemas) == 2


def test_dataset_aliases_name_the_dataset():
    registry = SchemaRegistry.load(dataset_aliases={"experience_events": ["5f0c2a1b9e"]})
    dataset = registry.get(EXPERIENCE_EVENT).dataset
    assert (dataset.aliases, dataset.is_named_by("5f0c2a1b9e"), dataset.is_named_by("experience_events")) == (
        ("5f0c2a1b9e",),
        True,
        True,
    )


def test_an_alias_names_only_its_own_dataset():
    registry = SchemaRegistry.load(dataset_aliases={"experience_events": ["5f0c2a1b9e"]})
    assert not registry.get(PROFILE).dataset.is_named_by("5f0c2a1b9e")


def test_a_dataset_is_not_named_by_another_dataset_s_name(registry):
    assert not registry.get(PROFILE).dataset.is_named_by("experience_events")


# Schema-file errors: a SchemaFileError whose message is one line naming the file.

SCHEMA_FILE_ERRORS = {
    "not_json": "{not json",
    "not_an_object": "[1, 2]",
    "missing_keys": {"$id": "https://example.com/schemas/x"},
    "unknown_class": {**CRM_SCHEMA, "class": "https://example.com/no-such-class"},
    "unknown_field_group": {**LOYALTY_SCHEMA, "fieldGroups": ["https://example.com/no-such-group"]},
    "field_group_not_an_id": {**LOYALTY_SCHEMA, "fieldGroups": [{"$ref": IDENTITY_MAP}]},
    "field_groups_not_a_list": {**LOYALTY_SCHEMA, "fieldGroups": IDENTITY_MAP},
    "class_not_a_string": {**CRM_SCHEMA, "class": [PROFILE]},
    "tenant_not_an_object": {**LOYALTY_SCHEMA, "tenant": "loyaltyTier"},
    "duplicate_built_in_id": {**CRM_SCHEMA, "$id": PROFILE},
    "reserved_dataset_failed_records": {**CRM_SCHEMA, "dataset": {"name": "failed_records"}},
    "reserved_dataset_identity_changes": {**CRM_SCHEMA, "dataset": {"name": "identity_changes"}},
    "dataset_name_with_capitals": {**CRM_SCHEMA, "dataset": {"name": "CrmRecords"}},
    "dataset_not_an_object": {**CRM_SCHEMA, "dataset": "crm_records"},
    "dataset_name_clash_with_built_in": {**CRM_SCHEMA, "dataset": {"name": "profile_records"}},
}


@pytest.mark.parametrize("content", SCHEMA_FILE_ERRORS.values(), ids=SCHEMA_FILE_ERRORS.keys())
def test_unusable_schema_file_is_a_one_line_error_naming_the_file(tmp_path, content):
    _write(tmp_path, "bad.json", content)
    message = str(_load_error(tmp_path))
    assert message.startswith(f"{tmp_path / 'bad.json'}: ")
    assert "\n" not in message


def test_missing_keys_are_named(tmp_path):
    _write(tmp_path, "bad.json", {"$id": "https://example.com/schemas/x"})
    assert str(_load_error(tmp_path)).endswith("missing class, dataset")


def test_unknown_field_group_is_named(tmp_path):
    _write(tmp_path, "bad.json", {**LOYALTY_SCHEMA, "fieldGroups": ["https://example.com/no-such-group"]})
    assert "https://example.com/no-such-group" in str(_load_error(tmp_path))


def test_duplicate_id_across_user_files_names_the_second_file(tmp_path):
    _write(tmp_path, "a.json", LOYALTY_SCHEMA)
    _write(tmp_path, "b.json", {**LOYALTY_SCHEMA, "dataset": {"name": "other_events"}})
    message = str(_load_error(tmp_path))
    assert message.startswith(f"{tmp_path / 'b.json'}: ")
    assert "defined twice" in message


def test_dataset_name_clash_across_user_files_names_the_second_file(tmp_path):
    _write(tmp_path, "a.json", LOYALTY_SCHEMA)
    _write(tmp_path, "b.json", {**CRM_SCHEMA, "dataset": {"name": "loyalty_events"}})
    message = str(_load_error(tmp_path))
    assert message.startswith(f"{tmp_path / 'b.json'}: ")
    assert "loyalty_events" in message


def test_reserved_dataset_name_is_refused_by_name(tmp_path):
    _write(tmp_path, "bad.json", {**CRM_SCHEMA, "dataset": {"name": "failed_records"}})
    assert "failed_records" in str(_load_error(tmp_path))


def test_missing_schema_directory_is_an_error(tmp_path):
    assert "not found" in str(_load_error(tmp_path / "absent"))
