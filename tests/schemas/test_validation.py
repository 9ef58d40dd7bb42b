"""Ingestion validation against the built-in schemas (schemas.validation)."""

import copy
import gc
import io
import json
import re
import weakref
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.records import DecodedEntity, FailedRecord, Message, RecordError, ValidRecord
from schemas import validation
from schemas.avro import to_avro_datum
from schemas.names import runtime_name
from schemas.registry import SchemaRegistry
from schemas.validation import ValidationPolicy, validate_decoded, validate_entity

EXPERIENCE_EVENT = "https://ns.adobe.com/xdm/context/experienceevent"
PROFILE = "https://ns.adobe.com/xdm/context/profile"
CLASS_EXAMPLES = Path(__file__).parents[1] / "data" / "xdm" / "examples" / "components" / "classes"

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
INGEST_US = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z
FAR_FUTURE_US = 2**62
DEFAULT_SKEW = timedelta(microseconds=ValidationPolicy().timestamp_skew_us)
ECID = "64510271835961519562341328460734924212"
NAMESPACE_URL = "https://data.adobe.io/entities/namespace/4"
PLUS_13 = timezone(timedelta(hours=13))

SAMPLE_EVENT = {
    "_id": "evt-0001",
    "timestamp": "2023-11-14T22:00:00Z",
    "eventType": "web.webpagedetails.pageViews",
    "identityMap": {"ECID": [{"id": ECID, "authenticatedState": "ambiguous", "primary": True}]},
    "web": {"webPageDetails": {"name": "Home"}},
}
SAMPLE_PROFILE = {
    "identityMap": {"Email": [{"id": "jane@example.com", "primary": True}]},
    "person": {"name": {"firstName": "Jane"}},
}


def _event(**fields) -> dict:
    """The sample event with top-level fields replaced (or added)."""
    return {**copy.deepcopy(SAMPLE_EVENT), **fields}


def _without(entity: dict, *names: str) -> dict:
    return {name: value for name, value in entity.items() if name not in names}


def _identities(*items) -> dict:
    return _event(identityMap={"ECID": list(items)})


def _at(moment_us: int) -> str:
    return (EPOCH + timedelta(microseconds=moment_us)).isoformat()


def _validate(registry, entity, schema_id=EXPERIENCE_EVENT, ingest_us=INGEST_US, policy=validation.DEFAULT_POLICY):
    return validate_entity(entity, registry.get(schema_id), ingest_us, policy)


def _codes(registry, entity, schema_id=EXPERIENCE_EVENT, ingest_us=INGEST_US) -> list[tuple[str, str]]:
    _, errors = _validate(registry, entity, schema_id, ingest_us)
    return [(error.code, error.path) for error in errors]


def _decoded(entity, *, schema_id=EXPERIENCE_EVENT, dataset_id=None, attributes=None) -> DecodedEntity:
    message = Message(
        data=b"{}",
        attributes=attributes or {},
        message_id="m-1",
        publish_time_us=INGEST_US,
        read_time_us=INGEST_US + 1_000,
    )
    return DecodedEntity(message, index=0, schema_id=schema_id, dataset_id=dataset_id, entity=entity, raw=b"raw")


# Baselines.


def test_sample_event_is_valid(registry):
    assert _codes(registry, SAMPLE_EVENT) == []


def test_sample_profile_is_valid(registry):
    assert _codes(registry, SAMPLE_PROFILE, PROFILE) == []


def test_valid_entity_comes_back_unchanged_in_runtime_names(registry):
    assert _validate(registry, SAMPLE_EVENT) == (SAMPLE_EVENT, [])


# Every code of the module docstring's table, each shown by one minimal entity.

SCHEMA_CASES = {
    "type": (_event(eventType=5), [("SCHEMA.TYPE", "/eventType")]),
    "type_of_an_object": (_event(web="home"), [("SCHEMA.TYPE", "/web")]),
    "type_of_an_array": (_event(productListItems={"SKU": "s"}), [("SCHEMA.TYPE", "/productListItems")]),
    "required_id": (_without(SAMPLE_EVENT, "_id"), [("SCHEMA.REQUIRED", "/_id")]),
    "required_timestamp": (_without(SAMPLE_EVENT, "timestamp"), [("SCHEMA.REQUIRED", "/timestamp")]),
    "required_nested": (
        _event(web={"webPageDetails": {"pageViews": {"id": "pv"}}}),
        [("SCHEMA.REQUIRED", "/web/webPageDetails/pageViews/value")],
    ),
    "enum": (_event(environment={"type": "desktop"}), [("SCHEMA.ENUM", "/environment/type")]),
    "format_date_time": (_event(timestamp="yesterday"), [("SCHEMA.FORMAT", "/timestamp")]),
    "format_date_time_without_offset": (_event(timestamp="2023-11-14T22:00:00"), [("SCHEMA.FORMAT", "/timestamp")]),
    "format_date_time_impossible_day": (_event(timestamp="2023-02-30T22:00:00Z"), [("SCHEMA.FORMAT", "/timestamp")]),
    "range_above_maximum": (
        _event(placeContext={"geo": {"schema:latitude": 90.5}}),
        [("SCHEMA.RANGE", "/placeContext/geo/schema:latitude")],
    ),
    "range_below_minimum": (_event(environment={"colorDepth": -1}), [("SCHEMA.RANGE", "/environment/colorDepth")]),
    "pattern": (
        _event(commerce={"order": {"currencyCode": "usd"}}),
        [("SCHEMA.PATTERN", "/commerce/order/currencyCode")],
    ),
    "unknown_field": (_event(colour="red"), [("SCHEMA.UNKNOWN_FIELD", "/colour")]),
    "unknown_nested_field": (
        _event(web={"webPageDetails": {"name": "Home", "errorPage": False}}),
        [("SCHEMA.UNKNOWN_FIELD", "/web/webPageDetails/errorPage")],
    ),
    "duplicate_field": (_event(**{"@id": "evt-0002"}), [("SCHEMA.DUPLICATE_FIELD", "/_id")]),
    "null_value": (_event(eventType=None), [("SCHEMA.NULL_VALUE", "/eventType")]),
    "empty_string": (_event(eventType=""), [("SCHEMA.EMPTY_VALUE", "/eventType")]),
    "empty_object": (_event(web={}), [("SCHEMA.EMPTY_VALUE", "/web")]),
    "empty_array": (_event(productListItems=[]), [("SCHEMA.EMPTY_VALUE", "/productListItems")]),
    "empty_tenant_object": (_event(_tenant={}), [("SCHEMA.EMPTY_VALUE", "/_tenant")]),
    "tenant_not_an_object": (_event(_tenant="gold"), [("SCHEMA.TYPE", "/_tenant")]),
    "identity_item": (
        _identities({"authenticatedState": "ambiguous"}),
        [("SCHEMA.IDENTITY_ITEM", "/identityMap/ECID/0/id")],
    ),
    "multiple_primary": (
        _event(
            identityMap={"ECID": [{"id": ECID, "primary": True}], "Email": [{"id": "a@example.com", "primary": True}]}
        ),
        [("SCHEMA.MULTIPLE_PRIMARY", "/identityMap")],
    ),
    "too_many_identities": (
        _identities(*({"id": f"{index:038d}"} for index in range(21))),
        [("SCHEMA.TOO_MANY_IDENTITIES", "/identityMap")],
    ),
    "future_timestamp": (_event(timestamp="2023-11-14T23:00:00Z"), [("SCHEMA.FUTURE_TIMESTAMP", "/timestamp")]),
    "timestamp_before_1970": (
        _event(timestamp="1969-12-31T23:59:59.999999Z"),
        [("SCHEMA.TIME_BEFORE_EPOCH", "/timestamp")],
    ),
    "timestamp_in_year_1": (_event(timestamp="0001-01-01T00:00:00Z"), [("SCHEMA.TIME_BEFORE_EPOCH", "/timestamp")]),
    "timestamp_before_1970_by_its_offset": (
        _event(timestamp="1970-01-01T00:59:59+01:00"),
        [("SCHEMA.TIME_BEFORE_EPOCH", "/timestamp")],
    ),
}
PROFILE_CASES = {
    "format_date": ({"person": {"birthDate": "2020-02-30"}}, [("SCHEMA.FORMAT", "/person/birthDate")]),
    "format_email": ({"personalEmail": {"address": "jane"}}, [("SCHEMA.FORMAT", "/personalEmail/address")]),
    "length": ({"homeAddress": {"postOfficeBox": "P" * 21}}, [("SCHEMA.LENGTH", "/homeAddress/postOfficeBox")]),
    "enum": ({"person": {"gender": "f"}}, [("SCHEMA.ENUM", "/person/gender")]),
    "last_updated_before_1970": (
        {"extSourceSystemAudit": {"lastUpdatedDate": "0001-01-01T00:00:00Z"}},
        [("SCHEMA.TIME_BEFORE_EPOCH", "/extSourceSystemAudit/lastUpdatedDate")],
    ),
    "required_in_a_data_type": (
        {"consents": {"collect": {}}},
        [("SCHEMA.EMPTY_VALUE", "/consents/collect"), ("SCHEMA.REQUIRED", "/consents/collect/val")],
    ),
}


@pytest.mark.parametrize(("entity", "expected"), SCHEMA_CASES.values(), ids=SCHEMA_CASES.keys())
def test_experience_event_rule(registry, entity, expected):
    assert _codes(registry, entity) == expected


@pytest.mark.parametrize(("entity", "expected"), PROFILE_CASES.values(), ids=PROFILE_CASES.keys())
def test_profile_rule(registry, entity, expected):
    assert _codes(registry, entity, PROFILE) == expected


def test_every_documented_code_is_demonstrated():
    documented = set(re.findall(r"``(SCHEMA\.[A-Z_]+)``", validation.__doc__))
    demonstrated = {code for _, expected in [*SCHEMA_CASES.values(), *PROFILE_CASES.values()] for code, _ in expected}
    # Shown by their own tests below: the cap, and the two codes validate_decoded gives before validation.
    demonstrated |= {validation.TOO_MANY_ERRORS, validation.UNKNOWN_SCHEMA, validation.UNKNOWN_DATASET}
    assert demonstrated == documented


# JSON pointers.


def test_paths_use_runtime_names_for_compatibility_input(registry):
    entity = _event(**{"xdm:web": {"xdm:webPageDetails": {"xdm:name": 5}}})
    del entity["web"]
    assert _codes(registry, entity) == [("SCHEMA.TYPE", "/web/webPageDetails/name")]


def test_unknown_compatibility_field_is_reported_under_its_runtime_name(registry):
    assert _codes(registry, _event(**{"xdm:dataSource": {"xdm:code": "x"}})) == [
        ("SCHEMA.UNKNOWN_FIELD", "/dataSource")
    ]


def test_identity_namespace_with_slashes_is_escaped_in_the_path(registry):
    entity = _event(identityMap={NAMESPACE_URL: []})
    assert _codes(registry, entity) == [
        ("SCHEMA.IDENTITY_ITEM", "/identityMap/https:~1~1data.adobe.io~1entities~1namespace~14")
    ]


def test_unknown_field_with_slash_and_tilde_is_escaped_in_the_path(registry):
    assert _codes(registry, _event(**{"a/b~c": 1})) == [("SCHEMA.UNKNOWN_FIELD", "/a~1b~0c")]


def test_array_positions_appear_in_the_path(registry):
    entity = _event(productListItems=[{"SKU": "a"}, {"SKU": "b", "quantity": "two"}])
    assert _codes(registry, entity) == [("SCHEMA.TYPE", "/productListItems/1/quantity")]


def test_entity_that_is_not_an_object_is_a_type_error_at_the_root(registry):
    assert _codes(registry, [SAMPLE_EVENT]) == [("SCHEMA.TYPE", "")]


# Every violation, up to the cap.


def test_all_violations_are_reported(registry):
    entity = _event(eventType=5, colour="red", web={"webPageDetails": {"name": ""}})
    assert sorted(_codes(registry, entity)) == [
        ("SCHEMA.EMPTY_VALUE", "/web/webPageDetails/name"),
        ("SCHEMA.TYPE", "/eventType"),
        ("SCHEMA.UNKNOWN_FIELD", "/colour"),
    ]


def test_errors_beyond_the_cap_are_cut_with_too_many_errors(registry):
    entity = _event(**{f"unknown{index}": index for index in range(150)})
    normalised, errors = _validate(registry, entity)
    assert normalised is None
    assert [error.code for error in errors] == ["SCHEMA.UNKNOWN_FIELD"] * 100 + ["SCHEMA.TOO_MANY_ERRORS"]


def test_exactly_the_cap_is_not_cut(registry):
    entity = _event(**{f"unknown{index}": index for index in range(100)})
    _, errors = _validate(registry, entity)
    assert (len(errors), errors[-1].code) == (100, "SCHEMA.UNKNOWN_FIELD")


def test_the_cap_is_the_policy_s(registry):
    entity = _event(**{f"unknown{index}": index for index in range(5)})
    _, errors = _validate(registry, entity, policy=ValidationPolicy(max_errors=3))
    assert [error.code for error in errors] == ["SCHEMA.UNKNOWN_FIELD"] * 3 + ["SCHEMA.TOO_MANY_ERRORS"]


# Timestamps.


def test_timestamp_exactly_at_ingestion_time_plus_skew_is_valid(registry):
    limit_us = INGEST_US + ValidationPolicy().timestamp_skew_us
    assert _codes(registry, _event(timestamp=_at(limit_us))) == []


def test_timestamp_one_microsecond_after_ingestion_time_plus_skew_is_in_the_future(registry):
    limit_us = INGEST_US + ValidationPolicy().timestamp_skew_us
    assert _codes(registry, _event(timestamp=_at(limit_us + 1))) == [("SCHEMA.FUTURE_TIMESTAMP", "/timestamp")]


def test_future_check_converts_offsets_to_utc(registry):
    # The limit, written in UTC+13: the same instant, so still valid.
    limit = EPOCH + timedelta(microseconds=INGEST_US) + DEFAULT_SKEW
    assert _codes(registry, _event(timestamp=limit.astimezone(PLUS_13).isoformat())) == []


def test_future_check_of_a_later_instant_in_another_offset(registry):
    later = EPOCH + timedelta(microseconds=INGEST_US) + DEFAULT_SKEW + timedelta(seconds=1)
    entity = _event(timestamp=later.astimezone(PLUS_13).isoformat())
    assert _codes(registry, entity) == [("SCHEMA.FUTURE_TIMESTAMP", "/timestamp")]


def test_skew_is_the_policy_s(registry):
    entity = _event(timestamp=_at(INGEST_US + 1))
    _, errors = _validate(registry, entity, policy=ValidationPolicy(timestamp_skew_us=0))
    assert [error.code for error in errors] == ["SCHEMA.FUTURE_TIMESTAMP"]


def test_days_old_timestamp_is_valid(registry):
    assert _codes(registry, _event(timestamp=_at(INGEST_US - 30 * 86_400_000_000))) == []


@pytest.mark.parametrize("timestamp", ["1970-01-01T00:00:00Z", "1970-01-01T01:00:00+01:00"])
def test_an_event_timestamp_at_the_epoch_is_valid(registry, timestamp):
    assert _codes(registry, _event(timestamp=timestamp)) == []


def test_a_profile_record_updated_at_the_epoch_is_valid(registry):
    entity = {**SAMPLE_PROFILE, "extSourceSystemAudit": {"lastUpdatedDate": "1970-01-01T00:00:00Z"}}
    assert _codes(registry, entity, PROFILE) == []


def test_profile_is_not_time_series_so_no_future_check(registry):
    entity = {**SAMPLE_PROFILE, "extSourceSystemAudit": {"lastUpdatedDate": "2999-01-01T00:00:00Z"}}
    assert _codes(registry, entity, PROFILE) == []


@pytest.mark.parametrize(
    "timestamp",
    [
        "2023-11-14T22:00:00.123456789Z",
        "2023-11-14t22:00:00z",
        "2023-11-14T22:00:00.5-08:00",
        "2023-11-14T22:00:00+00:00",
    ],
)
def test_rfc_3339_date_time_forms_are_valid(registry, timestamp):
    assert _codes(registry, _event(timestamp=timestamp), ingest_us=FAR_FUTURE_US) == []


@pytest.mark.parametrize(
    "timestamp", ["2023-11-14 22:00:00Z", "2023-11-14T22:00Z", "2023-11-14T25:00:00Z", "١٢٣٤-11-14T22:00:00Z"]
)
def test_non_rfc_3339_date_times_are_format_errors(registry, timestamp):
    assert _codes(registry, _event(timestamp=timestamp), ingest_us=FAR_FUTURE_US) == [("SCHEMA.FORMAT", "/timestamp")]


# Names: compatibility in, runtime out.


def test_compatibility_names_are_normalised_to_runtime_names(registry):
    entity = {
        "@id": "evt-0001",
        "xdm:timestamp": "2023-11-14T22:00:00Z",
        "xdm:identityMap": {"ECID": [{"xdm:id": ECID, "xdm:authenticatedState": "ambiguous", "xdm:primary": True}]},
        "xdm:web": {"xdm:webPageDetails": {"xdm:name": "Home"}},
        "xdm:eventType": "web.webpagedetails.pageViews",
    }
    assert _validate(registry, entity) == (SAMPLE_EVENT, [])


def test_storage_names_are_normalised_to_runtime_names(registry):
    entity = _event(placeContext={"geo": {"schema__3alatitude": 48.85}})
    normalised, _ = _validate(registry, entity)
    assert normalised["placeContext"] == {"geo": {"schema:latitude": 48.85}}


@pytest.mark.parametrize(("first", "second"), [("@id", "_id"), ("xdm:timestamp", "timestamp")])
def test_one_field_under_two_names_is_a_duplicate(registry, first, second):
    entity = _event(**{first: SAMPLE_EVENT[second]})
    assert _codes(registry, entity) == [("SCHEMA.DUPLICATE_FIELD", f"/{runtime_name(first)}")]


# identityMap.

IDENTITY_CASES = {
    "item_without_id": ([{"primary": False}], "/identityMap/ECID/0/id"),
    "empty_id": ([{"id": ""}], "/identityMap/ECID/0/id"),
    "id_not_a_string": ([{"id": 42}], "/identityMap/ECID/0/id"),
    "bad_authenticated_state": (
        [{"id": ECID, "authenticatedState": "loggedIn"}],
        "/identityMap/ECID/0/authenticatedState",
    ),
    "authenticated_state_not_a_string": (
        [{"id": ECID, "authenticatedState": ["ambiguous"]}],
        "/identityMap/ECID/0/authenticatedState",
    ),
    "primary_not_a_boolean": ([{"id": ECID, "primary": "true"}], "/identityMap/ECID/0/primary"),
    "unknown_item_field": ([{"id": ECID, "namespace": "ECID"}], "/identityMap/ECID/0/namespace"),
    "item_not_an_object": ([ECID], "/identityMap/ECID/0"),
    "empty_list": ([], "/identityMap/ECID"),
    "not_a_list": ({"id": ECID}, "/identityMap/ECID"),
    "null_list": (None, "/identityMap/ECID"),
    "second_item_bad": ([{"id": ECID}, {"id": ""}], "/identityMap/ECID/1/id"),
}


@pytest.mark.parametrize(("items", "path"), IDENTITY_CASES.values(), ids=IDENTITY_CASES.keys())
def test_identity_item_rule(registry, items, path):
    assert _codes(registry, _event(identityMap={"ECID": items})) == [("SCHEMA.IDENTITY_ITEM", path)]


def test_identity_item_field_under_two_names_is_a_duplicate(registry):
    entity = _identities({"id": ECID, "xdm:id": ECID})
    assert _codes(registry, entity) == [("SCHEMA.DUPLICATE_FIELD", "/identityMap/ECID/0/id")]


def test_twenty_identities_are_allowed(registry):
    entity = _event(
        identityMap={"ECID": [{"id": f"{i:038d}"} for i in range(15)], "Email": [{"id": f"{i}@x.io"} for i in range(5)]}
    )
    assert _codes(registry, entity) == []


def test_twenty_one_identities_across_namespaces_are_too_many(registry):
    entity = _event(
        identityMap={"ECID": [{"id": f"{i:038d}"} for i in range(15)], "Email": [{"id": f"{i}@x.io"} for i in range(6)]}
    )
    assert _codes(registry, entity) == [("SCHEMA.TOO_MANY_IDENTITIES", "/identityMap")]


def test_one_primary_per_namespace_is_still_multiple_primaries(registry):
    entity = _identities({"id": f"{1:038d}", "primary": True}, {"id": f"{2:038d}", "primary": True})
    assert _codes(registry, entity) == [("SCHEMA.MULTIPLE_PRIMARY", "/identityMap")]


def test_primary_false_does_not_count_as_primary(registry):
    entity = _identities({"id": f"{1:038d}", "primary": True}, {"id": f"{2:038d}", "primary": False})
    assert _codes(registry, entity) == []


def test_empty_identity_map_is_an_empty_value(registry):
    assert _codes(registry, _event(identityMap={})) == [("SCHEMA.EMPTY_VALUE", "/identityMap")]


def test_identity_map_that_is_not_an_object_is_a_type_error(registry):
    assert _codes(registry, _event(identityMap=[{"id": ECID}])) == [("SCHEMA.TYPE", "/identityMap")]


def test_identity_item_names_are_normalised(registry):
    normalised, _ = _validate(registry, _identities({"xdm:id": ECID, "xdm:primary": True}))
    assert normalised["identityMap"] == {"ECID": [{"id": ECID, "primary": True}]}


# Null and empty values at depth.

NESTED_NULL_AND_EMPTY = {
    "null_in_object": (
        _event(web={"webPageDetails": {"name": None}}),
        [("SCHEMA.NULL_VALUE", "/web/webPageDetails/name")],
    ),
    "null_in_array": (
        _event(commerce={"order": {"payments": [{"paymentAmount": 1.0}, None]}}),
        [("SCHEMA.NULL_VALUE", "/commerce/order/payments/1")],
    ),
    "empty_string_in_array_item": (
        _event(productListItems=[{"SKU": ""}]),
        [("SCHEMA.EMPTY_VALUE", "/productListItems/0/SKU")],
    ),
    "empty_object_in_object": (
        _event(web={"webPageDetails": {"name": "Home"}, "webReferrer": {}}),
        [("SCHEMA.EMPTY_VALUE", "/web/webReferrer")],
    ),
    "empty_object_in_array": (
        _event(commerce={"order": {"payments": [{"paymentAmount": 1.0}, {}]}}),
        [("SCHEMA.EMPTY_VALUE", "/commerce/order/payments/1")],
    ),
    "empty_object_in_array_missing_its_required_field": (
        _event(productListItems=[{"SKU": "a"}, {}]),
        [("SCHEMA.EMPTY_VALUE", "/productListItems/1"), ("SCHEMA.REQUIRED", "/productListItems/1/SKU")],
    ),
    "empty_array_in_array_item": (
        _event(productListItems=[{"SKU": "a", "selectedOptions": []}]),
        [("SCHEMA.EMPTY_VALUE", "/productListItems/0/selectedOptions")],
    ),
    "null_nested_four_deep": (
        _event(commerce={"order": {"payments": [{"paymentType": None}]}}),
        [("SCHEMA.NULL_VALUE", "/commerce/order/payments/0/paymentType")],
    ),
}


@pytest.mark.parametrize(("entity", "expected"), NESTED_NULL_AND_EMPTY.values(), ids=NESTED_NULL_AND_EMPTY.keys())
def test_null_and_empty_values_at_depth(registry, entity, expected):
    assert _codes(registry, entity) == expected


# Numbers and booleans.


def _viewport_height(value) -> dict:
    return _event(environment={"browserDetails": {"viewportHeight": value}})


def test_integer_field_takes_an_integral_float_as_an_integer(registry):
    normalised, errors = _validate(registry, _viewport_height(1.0))
    height = normalised["environment"]["browserDetails"]["viewportHeight"]
    assert (errors, height, type(height)) == ([], 1, int)


@pytest.mark.parametrize("value", [1.5, True, "1"])
def test_integer_field_refuses_non_integers(registry, value):
    assert _codes(registry, _viewport_height(value)) == [("SCHEMA.TYPE", "/environment/browserDetails/viewportHeight")]


def test_integer_field_refuses_values_beyond_64_bits(registry):
    assert _codes(registry, _viewport_height(2**63)) == [("SCHEMA.RANGE", "/environment/browserDetails/viewportHeight")]


def test_integer_field_takes_the_largest_64_bit_integer(registry):
    assert _codes(registry, _viewport_height(2**63 - 1)) == []


def test_number_field_takes_an_integer(registry):
    assert _codes(registry, _event(commerce={"order": {"priceTotal": 12}})) == []


def test_number_field_refuses_a_boolean(registry):
    assert _codes(registry, _event(commerce={"order": {"priceTotal": True}})) == [
        ("SCHEMA.TYPE", "/commerce/order/priceTotal")
    ]


@pytest.mark.parametrize("value", ["true", 1, 0])
def test_boolean_field_refuses_non_booleans(registry, value):
    entity = _event(environment={"browserDetails": {"cookiesEnabled": value}})
    assert _codes(registry, entity) == [("SCHEMA.TYPE", "/environment/browserDetails/cookiesEnabled")]


def test_tenant_object_is_kept_whole(registry):
    tenant = {"loyalty": {"tier": "gold", "points": [1, 2]}}
    normalised, errors = _validate(registry, _event(_tenant=tenant))
    assert (errors, normalised["_tenant"]) == ([], tenant)


# validate_decoded.


def test_decoded_valid_entity_becomes_a_valid_record(registry):
    record = validate_decoded(_decoded(SAMPLE_EVENT, dataset_id="experience_events"), registry)
    assert record == ValidRecord(
        dataset="experience_events",
        schema_id=EXPERIENCE_EVENT,
        entity=SAMPLE_EVENT,
        message_id="m-1",
        index=0,
        publish_time_us=INGEST_US,
        read_time_us=INGEST_US + 1_000,
    )


def test_decoded_invalid_entity_becomes_a_failed_record_with_its_errors(registry):
    record = validate_decoded(_decoded(_event(eventType="")), registry)
    assert isinstance(record, FailedRecord)
    assert (record.stage, record.data, record.schema_id) == ("validate", b"raw", EXPERIENCE_EVENT)
    assert [(error.code, error.path) for error in record.errors] == [("SCHEMA.EMPTY_VALUE", "/eventType")]


def test_decoded_entity_is_judged_by_its_publish_time(registry):
    entity = _event(timestamp=_at(INGEST_US + ValidationPolicy().timestamp_skew_us + 1))
    record = validate_decoded(_decoded(entity), registry)
    assert [error.code for error in record.errors] == ["SCHEMA.FUTURE_TIMESTAMP"]


@pytest.mark.parametrize("schema_id", ["https://example.com/unknown", None])
def test_decoded_entity_of_an_unknown_schema_fails(registry, schema_id):
    record = validate_decoded(_decoded(SAMPLE_EVENT, schema_id=schema_id), registry)
    assert [(error.code, error.path) for error in record.errors] == [("SCHEMA.UNKNOWN_SCHEMA", "")]


@pytest.mark.parametrize("dataset_id", ["no_such_dataset", "profile_records"])
def test_decoded_entity_naming_a_dataset_not_registered_for_its_schema_fails(registry, dataset_id):
    record = validate_decoded(_decoded(SAMPLE_EVENT, dataset_id=dataset_id), registry)
    assert [(error.code, error.path) for error in record.errors] == [("SCHEMA.UNKNOWN_DATASET", "")]


def test_decoded_entity_naming_a_dataset_alias_is_accepted():
    registry = SchemaRegistry.load(dataset_aliases={"experience_events": ["5f0c2a1b9e"]})
    record = validate_decoded(_decoded(SAMPLE_EVENT, dataset_id="5f0c2a1b9e"), registry)
    assert isinstance(record, ValidRecord)
    assert record.dataset == "experience_events"


def _avro_round_trip(registry, entity) -> dict:
    schema = registry.get(EXPERIENCE_EVENT)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema.avro_schema, to_avro_datum(entity, schema.root))
    buffer.seek(0)
    return fastavro.schemaless_reader(buffer, schema.avro_schema)


@pytest.mark.parametrize("content_type", ["avro/binary", "AVRO/BINARY"])
def test_avro_entity_validates_as_its_json_form(registry, content_type):
    entity = _event(_tenant={"loyalty": {"tier": "gold"}}, placeContext={"geo": {"schema:latitude": 48.85}})
    decoded = _decoded(_avro_round_trip(registry, entity), attributes={"contentType": content_type})
    assert validate_decoded(decoded, registry) == validate_decoded(_decoded(entity), registry)


def test_invalid_avro_entity_fails_as_its_json_form(registry):
    entity = _event(eventType="", environment={"type": "desktop"})
    decoded = _decoded(_avro_round_trip(registry, entity), attributes={"contentType": "avro/binary"})
    assert validate_decoded(decoded, registry).errors == validate_decoded(_decoded(entity), registry).errors


def test_avro_record_is_not_taken_as_json_without_the_content_type(registry):
    # Without contentType the storage-named Avro record is taken as JSON; its all-null fields are nulls.
    record = validate_decoded(_decoded(_avro_round_trip(registry, SAMPLE_EVENT)), registry)
    assert isinstance(record, FailedRecord)


# Random input never raises.

NAMES = [
    "_id", "@id", "timestamp", "xdm:timestamp", "eventType", "identityMap", "ECID", "id", "xdm:id",
    "authenticatedState", "primary", "web", "webPageDetails", "name", "URL", "pageViews", "value", "commerce",
    "order", "payments", "priceTotal", "productListItems", "quantity", "environment", "browserDetails",
    "viewportHeight", "_tenant", "placeContext", "geo", "schema:latitude",
]  # fmt: skip
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5)
JSON_VALUES = st.recursive(
    JSON_SCALARS | st.sampled_from(["2023-11-14T22:00:00Z", "ambiguous", ""]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=4), children, max_size=5)
    ),
    max_leaves=30,
)
ENTITIES = JSON_VALUES | st.dictionaries(st.sampled_from(NAMES), JSON_VALUES, max_size=8)
KNOWN_CODES = set(re.findall(r"``(SCHEMA\.[A-Z_]+)``", validation.__doc__))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(ENTITIES)
def test_random_json_never_raises_and_gives_entity_or_errors(registry, entity):
    normalised, errors = _validate(registry, entity)
    assert normalised is None or isinstance(normalised, dict)
    assert all(isinstance(error, RecordError) for error in errors)
    assert all(error.code in KNOWN_CODES and (error.path == "" or error.path.startswith("/")) for error in errors)
    if not errors:
        assert isinstance(normalised, dict)
    assert isinstance(validate_decoded(_decoded(entity), registry), ValidRecord) == (not errors)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(ENTITIES)
def test_valid_random_entity_stays_valid_once_normalised(registry, entity):
    normalised, errors = _validate(registry, entity)
    if not errors:
        assert _validate(registry, normalised) == (normalised, [])


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(NAMES), JSON_VALUES, max_size=6))
def test_random_fields_on_the_sample_event_never_raise(registry, fields):
    normalised, errors = _validate(registry, {**SAMPLE_EVENT, **fields})
    assert (normalised is not None) or errors


IDENTITY_ITEMS = st.dictionaries(
    st.sampled_from(["id", "xdm:id", "authenticatedState", "xdm:authenticatedState", "primary", "xdm:primary"]),
    JSON_VALUES,
    max_size=4,
)
IDENTITY_MAPS = st.dictionaries(
    st.sampled_from(["ECID", "Email", "", NAMESPACE_URL]),
    st.lists(IDENTITY_ITEMS | JSON_VALUES, max_size=4) | JSON_VALUES,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(IDENTITY_MAPS)
def test_random_identity_maps_never_raise(registry, identity_map):
    normalised, errors = _validate(registry, _event(identityMap=identity_map))
    assert errors or isinstance(normalised["identityMap"], dict)


# Identity items with values often right and keys mostly runtime names: the identity map passes an item that is right
# as it is without the item-by-item check, which must then keep what that check would have kept.
IDENTITY_VALUES = st.sampled_from([ECID, "", "ambiguous", "authenticated", "loggedOut", "away", True, False, None, 0])
LIKELY_IDENTITY_ITEMS = st.fixed_dictionaries(
    {"id": IDENTITY_VALUES},
    optional=dict.fromkeys(["authenticatedState", "primary", "xdm:id", "xdm:primary", "namespace"], IDENTITY_VALUES),
)


def _uncapped_errors() -> validation._Errors:
    errors = validation._Errors()
    errors.cap = 1_000
    return errors


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(LIKELY_IDENTITY_ITEMS | IDENTITY_ITEMS | JSON_VALUES, min_size=1, max_size=3))
def test_identity_map_keeps_what_the_item_by_item_check_keeps(items):
    errors, expected = _uncapped_errors(), _uncapped_errors()
    normalised = validation._identity_map({"ECID": items}, "/identityMap", errors)
    checked = [validation._identity_item(item, f"/identityMap/ECID/{at}", expected) for at, item in enumerate(items)]
    kept = [identity for identity in checked if identity is not None]
    assert normalised == {"ECID": kept}
    if sum(identity.get("primary") is True for identity in kept) > 1:
        expected.add("SCHEMA.MULTIPLE_PRIMARY", "/identityMap", errors[-1].message)
    assert errors == expected


# Acceptance: the XDM class examples (compatibility names) in ingestion mode.

UNKNOWN = "SCHEMA.UNKNOWN_FIELD"
CLASS_EXAMPLE_ERRORS = {
    "experienceevent.example.1.json": [
        (UNKNOWN, "/dataSource"),
        (UNKNOWN, "/channel"),
        (UNKNOWN, "/productListItems/0/lineItemId"),  # productlistitem has no lineItemId
        (UNKNOWN, "/commerce/order/payments/1/transactionId"),  # paymentitem spells it transactionID
        (UNKNOWN, "/web/webPageDetails/errorPage"),  # webinfo: isErrorPage
        (UNKNOWN, "/web/webPageDetails/homePage"),  # webinfo: isHomePage
        (UNKNOWN, "/web/webReferrer/referrerType"),  # webinfo: webReferrer.type
        (UNKNOWN, "/marketing"),
        (UNKNOWN, "/profileStitch"),
        (UNKNOWN, "/segmentMemberships"),
    ],
    "experienceevent.example.2.json": [
        (UNKNOWN, "/dataSource"),
        (UNKNOWN, "/locationContext"),
        (UNKNOWN, "/web/webPageView"),
        (UNKNOWN, "/web/webReferrer/domain"),
        (UNKNOWN, "/advertising"),
    ],
    "experienceevent.example.3.json": [
        (UNKNOWN, "/dataSource"),
        # placecontext's POIinteraction holds poiDetail/POIDetail, poiEntries and poiExits, not the POI's own fields.
        (UNKNOWN, "/placeContext/POIinteraction/POIID"),
        (UNKNOWN, "/placeContext/POIinteraction/name"),
        (UNKNOWN, "/placeContext/POIinteraction/category"),
        (UNKNOWN, "/placeContext/POIinteraction/type"),
        (UNKNOWN, "/placeContext/POIinteraction/locatingType"),
        (UNKNOWN, "/placeContext/POIinteraction/beaconInteractionDetails"),
        (UNKNOWN, "/placeContext/activePOIs/2/geoInteractionDetails/accuracy"),  # poi-detail: deviceGeoAccuracy
        # Environment fields written under placeContext.
        (UNKNOWN, "/placeContext/type"),
        (UNKNOWN, "/placeContext/browserDetails"),
        (UNKNOWN, "/placeContext/operatingSystem"),
        (UNKNOWN, "/placeContext/operatingSystemVersion"),
        (UNKNOWN, "/placeContext/connectionType"),
        (UNKNOWN, "/locationContext"),
        (UNKNOWN, "/web/webPageView"),
        (UNKNOWN, "/web/webReferrer/domain"),
        (UNKNOWN, "/advertising"),
    ],
    "experienceevent.example.4.json": [(UNKNOWN, "/media")],
    "experienceevent.example.5.json": [(UNKNOWN, "/media"), (UNKNOWN, "/advertising")],
    "experienceevent.example.6.json": [(UNKNOWN, "/media")],
    "experienceevent.example.7.json": [(UNKNOWN, "/pushNotificationTracking")],
    "profile.example.1.json": [
        (UNKNOWN, "/workAddress"),  # Work Details field group, not in the default set
        (UNKNOWN, "/workEmail"),
        (UNKNOWN, "/optInOut"),
        (UNKNOWN, "/orgUnit"),
        (UNKNOWN, "/geoUnit"),
        (UNKNOWN, "/segments"),
    ],
}


def test_every_class_example_has_expected_errors():
    assert sorted(path.name for path in CLASS_EXAMPLES.glob("*.example.*.json")) == sorted(CLASS_EXAMPLE_ERRORS)


@pytest.mark.parametrize(("name", "expected"), CLASS_EXAMPLE_ERRORS.items(), ids=CLASS_EXAMPLE_ERRORS.keys())
def test_class_example_gives_the_expected_record_errors(registry, name, expected):
    class_id = EXPERIENCE_EVENT if name.startswith("experienceevent.") else PROFILE
    entity = json.loads((CLASS_EXAMPLES / name).read_text(encoding="utf-8"))
    assert _codes(registry, entity, class_id, ingest_us=FAR_FUTURE_US) == expected


def test_a_schema_s_checks_are_made_once_and_go_with_the_schema():
    registry = SchemaRegistry.load()
    root = registry.get(EXPERIENCE_EVENT).root
    key = id(root)
    _validate(registry, SAMPLE_EVENT)
    check = validation._ROOT_CHECKS[key]
    assert (_validate(registry, SAMPLE_EVENT), validation._ROOT_CHECKS[key]) == ((SAMPLE_EVENT, []), check)
    gone = weakref.ref(root)
    del registry, root, check
    gc.collect()
    assert (gone(), key in validation._ROOT_CHECKS) == (None, False)
