"""The derived Avro schema and the entity <-> Avro datum conversions (schemas.avro)."""

import io
import re

import fastavro
import pytest

from schemas.avro import entity_from_avro, to_avro_datum
from schemas.names import storage_name
from schemas.registry import SchemaRegistry

EXPERIENCE_EVENT = "https://ns.adobe.com/xdm/context/experienceevent"
PROFILE = "https://ns.adobe.com/xdm/context/profile"
AVRO_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

RICH_EVENT = {
    "_id": "evt-0001",
    "timestamp": "2024-05-01T12:00:00.123Z",
    "eventType": "commerce.purchases",
    "identityMap": {
        "ECID": [{"id": "64510271835961519562341328460734924212", "authenticatedState": "ambiguous", "primary": True}],
        "Email": [{"id": "jane@example.com", "authenticatedState": "authenticated"}, {"id": "j@example.com"}],
    },
    "web": {
        "webPageDetails": {"name": "Checkout", "URL": "https://shop.example.com/checkout", "pageViews": {"value": 1.0}},
        "webReferrer": {"URL": "https://search.example.com/", "type": "search_engine"},
    },
    "environment": {"type": "browser", "browserDetails": {"viewportHeight": 900, "cookiesEnabled": True}},
    "placeContext": {"geo": {"schema:latitude": 48.8566, "schema:longitude": 2.3522, "countryCode": "FR"}},
    "commerce": {
        "order": {
            "priceTotal": 159.0,
            "currencyCode": "EUR",
            "payments": [{"transactionID": "t-1", "paymentAmount": 159.0, "paymentType": "credit_card"}],
        },
        "purchases": {"value": 1.0},
    },
    "productListItems": [
        {"SKU": "sku-1", "quantity": 2, "priceTotal": 100.0, "selectedOptions": [{"attribute": "size", "value": "M"}]},
        {"SKU": "sku-2", "quantity": 1, "priceTotal": 59.0},
    ],
    "_tenant": {"loyalty": {"tier": "gold", "points": [120, 30], "flags": {"vip": True, "note": None}}},
}
SAMPLE_PROFILE = {
    "_id": "crm-42",
    "repo:createDate": "2024-05-01T12:00:00Z",
    "identityMap": {"Email": [{"id": "jane@example.com", "primary": True}]},
    "person": {"name": {"firstName": "Jane", "lastName": "Doe"}, "birthYear": 1983},
    "personalEmail": {"address": "jane@example.com"},
    "extSourceSystemAudit": {"lastUpdatedDate": "2024-05-01T12:00:00Z"},
    "consents": {"marketing": {"email": {"val": "y"}}},
}


def _round_trip(schema, entity):
    """entity -> datum -> Avro binary -> datum -> entity."""
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema.avro_schema, to_avro_datum(entity, schema.root))
    buffer.seek(0)
    return entity_from_avro(fastavro.schemaless_reader(buffer, schema.avro_schema), schema.root)


def _record_fields(avro_type) -> dict:
    """The fields of a record type (or of the record in a ``["null", record]`` union), by name."""
    if isinstance(avro_type, list):
        avro_type = next(branch for branch in avro_type if branch != "null")
    return {field["name"]: field for field in avro_type["fields"]}


def _names(avro_type):
    """Every record field name in an Avro type, at any depth."""
    if isinstance(avro_type, list):
        for branch in avro_type:
            yield from _names(branch)
    elif isinstance(avro_type, dict):
        for field in avro_type.get("fields", ()):
            yield field["name"]
            yield from _names(field["type"])
        for key in ("items", "values"):
            if key in avro_type:
                yield from _names(avro_type[key])


@pytest.mark.parametrize("schema_id", [EXPERIENCE_EVENT, PROFILE])
def test_avro_schema_parses(registry, schema_id):
    avro = registry.get(schema_id).avro_schema
    assert fastavro.parse_schema(avro)["name"] == "profilestream.Entity"


def test_avro_schema_doc_is_the_schema_id(registry):
    assert registry.get(PROFILE).avro_schema["doc"] == PROFILE


@pytest.mark.parametrize("schema_id", [EXPERIENCE_EVENT, PROFILE])
def test_every_avro_name_is_a_valid_avro_name(registry, schema_id):
    names = list(_names(registry.get(schema_id).avro_schema))
    assert names
    assert [name for name in names if not AVRO_NAME.fullmatch(name)] == []


def test_every_field_is_optional_with_a_null_default(registry):
    fields = _record_fields(registry.get(EXPERIENCE_EVENT).avro_schema)
    assert all(field["type"][0] == "null" and field["default"] is None for field in fields.values())


def test_names_outside_the_avro_alphabet_use_storage_names(registry):
    geo = _record_fields(_record_fields(registry.get(EXPERIENCE_EVENT).avro_schema)["placeContext"]["type"])["geo"]
    assert {"schema__3alatitude", "schema__3alongitude"} <= set(_record_fields(geo["type"]))


def test_profile_repository_fields_use_storage_names(registry):
    assert storage_name("repo:createDate") in _record_fields(registry.get(PROFILE).avro_schema)


def test_scalar_kinds_map_to_avro_types(registry):
    fields = _record_fields(registry.get(EXPERIENCE_EVENT).avro_schema)
    browser = _record_fields(_record_fields(fields["environment"]["type"])["browserDetails"]["type"])
    assert (fields["timestamp"]["type"][1], fields["_tenant"]["type"][1]) == ("string", "string")
    assert (browser["viewportHeight"]["type"][1], browser["cookiesEnabled"]["type"][1]) == ("long", "boolean")


def test_identity_map_is_a_map_of_arrays_of_records(registry):
    identity_map = _record_fields(registry.get(EXPERIENCE_EVENT).avro_schema)["identityMap"]["type"][1]
    item = identity_map["values"]["items"]
    assert (identity_map["type"], identity_map["values"]["type"]) == ("map", "array")
    assert set(_record_fields(item)) == {"id", "authenticatedState", "primary"}


def test_rich_event_round_trips(registry):
    assert _round_trip(registry.get(EXPERIENCE_EVENT), RICH_EVENT) == RICH_EVENT


def test_profile_round_trips(registry):
    assert _round_trip(registry.get(PROFILE), SAMPLE_PROFILE) == SAMPLE_PROFILE


def test_datum_uses_storage_names(registry):
    datum = to_avro_datum(RICH_EVENT, registry.get(EXPERIENCE_EVENT).root)
    assert datum["placeContext"]["geo"]["schema__3alatitude"] == 48.8566


def test_datum_holds_the_free_form_tenant_object_as_json_text(registry):
    datum = to_avro_datum(RICH_EVENT, registry.get(EXPERIENCE_EVENT).root)
    assert isinstance(datum["_tenant"], str)


def test_absent_fields_stay_absent(registry):
    entity = {"_id": "e", "timestamp": "2024-05-01T12:00:00Z"}
    assert _round_trip(registry.get(EXPERIENCE_EVENT), entity) == entity


def test_identity_map_keys_are_kept_verbatim(registry):
    entity = {"_id": "e", "identityMap": {"https://data.adobe.io/entities/namespace/4": [{"id": "x"}]}}
    assert _round_trip(registry.get(EXPERIENCE_EVENT), entity) == entity


def test_tenant_text_that_is_not_json_is_left_as_text(registry):
    root = registry.get(EXPERIENCE_EVENT).root
    assert entity_from_avro({"_id": "e", "_tenant": "{not json"}, root) == {"_id": "e", "_tenant": "{not json"}


def test_tenant_object_under_a_storage_name_round_trips():
    schema = SchemaRegistry.load(tenant_id="acme-co").get(EXPERIENCE_EVENT)
    entity = {"_id": "e", "_acme-co": {"tier": "gold"}}
    assert _round_trip(schema, entity) == entity
