"""The JSON Schema form of ingestion schemas agrees with the validator on plain JSON Schema rules."""

import pytest
from jsonschema import Draft7Validator

from schemas.json_schema import runtime_json_schema
from schemas.validation import validate_entity

EVENT_SCHEMA = "https://ns.adobe.com/xdm/context/experienceevent"
INGEST_US = 4_000_000_000_000_000
SAMPLE_EVENT = {
    "_id": "e1",
    "timestamp": "2026-11-01T09:00:00Z",
    "eventType": "web.webpagedetails.pageViews",
    "identityMap": {"ECID": [{"id": "1" * 38, "authenticatedState": "ambiguous", "primary": True}]},
    "web": {"webPageDetails": {"name": "home", "URL": "https://example.com/"}},
    "commerce": {"order": {"priceTotal": 12.5}},
    "_tenant": {"anything": ["goes"]},
}


@pytest.mark.parametrize("schema_id", [EVENT_SCHEMA, "https://ns.adobe.com/xdm/context/profile"])
def test_the_form_is_a_valid_draft7_schema(registry, schema_id):
    Draft7Validator.check_schema(runtime_json_schema(registry.get(schema_id).root))


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"bogus": 1},
        {"eventType": 3},
        {"web": {"webPageDetails": {"name": "home", "surprise": True}}},
        {"commerce": {"order": {"priceTotal": "twelve"}}},
        {"identityMap": {"ECID": [{"id": 7}]}},
    ],
)
def test_the_form_and_the_validator_agree_on_structure(registry, change):
    schema = registry.get(EVENT_SCHEMA)
    entity = {**SAMPLE_EVENT, **change}
    _, errors = validate_entity(entity, schema, INGEST_US)

    assert Draft7Validator(runtime_json_schema(schema.root)).is_valid(entity) == (not errors)


def test_required_fields_are_required(registry):
    form = runtime_json_schema(registry.get(EVENT_SCHEMA).root)
    entity = {key: value for key, value in SAMPLE_EVENT.items() if key != "timestamp"}

    assert form["required"] == ["_id", "timestamp"]
    assert not Draft7Validator(form).is_valid(entity)
