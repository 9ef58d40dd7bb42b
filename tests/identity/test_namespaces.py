"""Tests for identity/namespaces.py and the namespace part of pipelines/config.py: namespace lookup,
normalisation and rejection tables, extraction from identityMap and identity fields, record time, and properties
that hold for any identityMap (nothing raises; every item becomes exactly one identity or one rejection).
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pipelines
from core.clock import parse_rfc3339_us
from identity.model import Identity
from identity.namespaces import (
    BLOCKED,
    ECID_LENGTH,
    EXPERIENCE_EVENT_CLASS,
    HASH_NOT_SHA256,
    INVALID_EMAIL,
    INVALID_PHONE,
    MALFORMED,
    NAMESPACE_URL_PREFIX,
    STANDARD_NAMESPACES,
    TOO_LONG,
    UNKNOWN_NAMESPACE,
    Extraction,
    IdentityRules,
    Namespace,
    NamespaceRegistry,
    extract_identities,
    phone_normal_form,
    record_time_us,
)
from pipelines.config import Config, ConfigError, load_config

REGISTRY = NamespaceRegistry()
RULES = IdentityRules()
PROFILE_CLASS = "https://ns.adobe.com/xdm/context/profile"
INGEST_US = 1_793_523_600_000_000  # 2026-11-01T09:00:00Z

SAMPLE_ECID = "12345678901234567890123456789012345678"
SAMPLE_SHA256 = hashlib.sha256(b"alice@example.com").hexdigest()
SAMPLE_E164 = "+14155552671"
SAMPLE_PROFILE = {
    "personalEmail": {"address": " Alice@Example.com "},
    "mobilePhone": {"number": "(415) 555-2671"},
    "homePhone": {"number": "+44 20 7946 0958"},
}


def extract(entity: dict[str, Any], rules: IdentityRules = RULES) -> Extraction:
    return extract_identities(entity, REGISTRY, rules)


def outcome(namespace_key: str, raw_id: str, rules: IdentityRules = RULES) -> Identity | str:
    """The identity one identityMap item becomes, or its rejection code."""
    extraction = extract({"identityMap": {namespace_key: [{"id": raw_id, "authenticatedState": "ambiguous"}]}}, rules)
    [result] = extraction.identities or [rejection.code for rejection in extraction.rejections]
    return result


# Namespaces


@pytest.mark.parametrize(
    ("key", "code"),
    [
        ("ECID", "ECID"),
        ("ecid", "ECID"),
        ("eMaIl", "Email"),
        ("email_lc_sha256", "Email_LC_SHA256"),
        ("crmId", "CRMID"),
        (NAMESPACE_URL_PREFIX + "4", "ECID"),
        (NAMESPACE_URL_PREFIX + "10", "AAID"),
        (NAMESPACE_URL_PREFIX + "6", "Email"),
        (NAMESPACE_URL_PREFIX + "20915", "IDFA"),
    ],
)
def test_a_namespace_is_found_by_code_in_any_case_or_by_the_url_of_its_numeric_id(key, code):
    namespace = REGISTRY.resolve(key)
    assert namespace is not None and namespace.code == code


@pytest.mark.parametrize(
    "key",
    ["Loyalty", "", NAMESPACE_URL_PREFIX + "12345", NAMESPACE_URL_PREFIX + "ECID", NAMESPACE_URL_PREFIX, "4"],
)
def test_an_unconfigured_key_resolves_to_nothing(key):
    assert REGISTRY.resolve(key) is None


def test_the_standard_set_makes_crmid_the_only_unique_namespace_and_the_most_important():
    assert [namespace.code for namespace in STANDARD_NAMESPACES if namespace.unique] == ["CRMID"]
    assert max(STANDARD_NAMESPACES, key=lambda namespace: namespace.priority).code == "CRMID"


@pytest.mark.parametrize(
    ("namespaces", "fragment"),
    [
        ([Namespace("Email", 6, "person"), Namespace("EMAIL", None, "person")], "given twice"),
        ([Namespace("Email", 6, "person"), Namespace("Mail", 6, "person")], "numeric id 6 is given twice"),
        ([Namespace("Email_SHA", None, "hashed", hash_of="Email")], "hash_of names no configured namespace"),
    ],
)
def test_a_registry_refuses_ambiguous_namespaces(namespaces, fragment):
    with pytest.raises(ValueError, match=fragment):
        NamespaceRegistry(namespaces)


@pytest.mark.parametrize(("code", "type_"), [("Loyalty", "phone"), ("Loyalty:ID", "person"), ("", "person")])
def test_a_namespace_needs_a_plain_code_and_a_known_type(code, type_):
    with pytest.raises(ValueError):
        Namespace(code, None, type_)


# Normalisation and rejection


@pytest.mark.parametrize(
    ("key", "raw_id", "expected"),
    [
        ("Email", "Alice@Example.COM", Identity("Email", "alice@example.com")),
        ("Email", " \talice@example.com \n", Identity("Email", "alice@example.com")),
        ("Email", "alice.example.com", INVALID_EMAIL),
        ("Email", "alice@home@example.com", INVALID_EMAIL),
        ("Email", "@example.com", INVALID_EMAIL),
        ("Email", "alice@", INVALID_EMAIL),
        ("Phone", "(415) 555-2671", Identity("Phone", SAMPLE_E164)),
        ("Phone", "415.555.2671", Identity("Phone", SAMPLE_E164)),
        ("Phone", "4155552671", Identity("Phone", SAMPLE_E164)),
        ("Phone", "+1 415 555 2671", Identity("Phone", SAMPLE_E164)),
        ("Phone", SAMPLE_E164, Identity("Phone", SAMPLE_E164)),
        ("Phone", "+44 20 7946 0958", Identity("Phone", "+442079460958")),
        ("Phone", "+49 30 901820", Identity("Phone", "+4930901820")),
        ("Phone", "+44 7911 505315", Identity("Phone", "+447911505315")),  # possible, though not allocated
        ("Phone", "+44 79", INVALID_PHONE),  # too short for any UK number
        ("Phone", "020 7946 0958", INVALID_PHONE),  # a UK national number, read in the default region US
        ("Phone", "12", INVALID_PHONE),
        ("Phone", "call me", INVALID_PHONE),
        ("Email_LC_SHA256", SAMPLE_SHA256, Identity("Email_LC_SHA256", SAMPLE_SHA256)),
        ("Email_LC_SHA256", f" {SAMPLE_SHA256.upper()} ", Identity("Email_LC_SHA256", SAMPLE_SHA256)),
        ("Phone_SHA256", SAMPLE_SHA256, Identity("Phone_SHA256", SAMPLE_SHA256)),
        ("Email_LC_SHA256", SAMPLE_SHA256[:63], HASH_NOT_SHA256),
        ("Email_LC_SHA256", SAMPLE_SHA256 + "0", HASH_NOT_SHA256),
        ("Email_LC_SHA256", "g" * 64, HASH_NOT_SHA256),
        ("Email_LC_SHA256", "alice@example.com", HASH_NOT_SHA256),
        ("ECID", SAMPLE_ECID, Identity("ECID", SAMPLE_ECID)),
        ("ECID", f" {SAMPLE_ECID} ", Identity("ECID", SAMPLE_ECID)),
        ("ECID", SAMPLE_ECID[:37], ECID_LENGTH),
        ("ECID", SAMPLE_ECID + "9", ECID_LENGTH),
        ("ECID", SAMPLE_ECID[:37] + "a", ECID_LENGTH),
        ("ECID", "\u0661" * 38, ECID_LENGTH),  # Arabic-Indic digits are digits to str.isdigit, not to an ECID
        ("CRMID", "  C-42  ", Identity("CRMID", "C-42")),
        ("CRMID", "Case-Kept", Identity("CRMID", "Case-Kept")),
        ("AAID", "2394509340-30453470347", Identity("AAID", "2394509340-30453470347")),
    ],
)
def test_each_namespace_normalises_its_ids_or_rejects_them(key, raw_id, expected):
    assert outcome(key, raw_id) == expected


@pytest.mark.parametrize(
    ("key", "raw_id"),
    [
        ("CRMID", "null"),
        ("CRMID", "NULL"),
        ("CRMID", " Anonymous "),
        ("Email", "inVALID"),
        ("CRMID", ""),
        ("CRMID", " \t "),
        ("ECID", "null"),  # blocked before its length is judged
    ],
)
def test_blocked_values_are_rejected_in_any_case_and_with_whitespace(key, raw_id):
    assert outcome(key, raw_id) == BLOCKED


@pytest.mark.parametrize(("raw_id", "expected"), [("N/A", BLOCKED), (" unknown ", BLOCKED), ("known", "known")])
def test_configured_blocked_values_add_to_the_built_in_ones(raw_id, expected):
    rules = IdentityRules(blocked_values=("n/a", "  Unknown "))
    result = outcome("CRMID", raw_id, rules)
    assert result == (Identity("CRMID", expected) if expected != BLOCKED else BLOCKED)


@pytest.mark.parametrize(("raw_id", "expected"), [("0000", BLOCKED), ("TEST-1", BLOCKED), ("a0000", "a0000")])
def test_a_blocked_pattern_blocks_ids_it_matches_in_full_ignoring_case(raw_id, expected):
    rules = IdentityRules(blocked_patterns=(r"0+", r"test-.*"))
    result = outcome("CRMID", raw_id, rules)
    assert result == (Identity("CRMID", expected) if expected != BLOCKED else BLOCKED)


@pytest.mark.parametrize(
    ("raw_id", "expected"),
    [
        ("x" * 1024, Identity("CRMID", "x" * 1024)),
        ("x" * 1025, TOO_LONG),
        (f" {'x' * 1024} ", Identity("CRMID", "x" * 1024)),
    ],
)
def test_ids_longer_than_1024_characters_after_trimming_are_rejected(raw_id, expected):
    assert outcome("CRMID", raw_id) == expected


def test_numbers_without_a_country_code_are_read_in_the_configured_region():
    assert outcome("Phone", "020 7946 0958", IdentityRules(phone_region="GB")) == Identity("Phone", "+442079460958")


def test_a_phone_number_seen_again_is_not_parsed_again_and_keeps_its_normal_form_and_its_rejection():
    phone_normal_form.cache_clear()
    raws = ["+1 415 555 0100", "(415) 555-0100", "not a phone", "+1 415"]

    first = [outcome("Phone", raw) for raw in raws]
    # Other rules, which remember no identity of their own yet: the phone cache is what spares the parse.
    again = [outcome("Phone", raw, IdentityRules()) for raw in raws]

    assert first == again == [Identity("Phone", "+14155550100")] * 2 + [INVALID_PHONE] * 2
    assert phone_normal_form.cache_info().hits == len(raws)
    assert [phone_normal_form.__wrapped__(raw, "US") for raw in raws] == [phone_normal_form(raw, "US") for raw in raws]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (NAMESPACE_URL_PREFIX + "4", Identity("ECID", SAMPLE_ECID)),
        ("ecid", Identity("ECID", SAMPLE_ECID)),
        ("Loyalty", UNKNOWN_NAMESPACE),
        (NAMESPACE_URL_PREFIX + "12345", UNKNOWN_NAMESPACE),
    ],
)
def test_an_identity_takes_the_configured_code_whatever_key_named_its_namespace(key, expected):
    assert outcome(key, SAMPLE_ECID) == expected


def test_a_rejection_keeps_the_key_and_the_id_as_the_record_gave_them():
    [rejection] = extract({"identityMap": {"loyalty": [{"id": " L1 "}]}}).rejections
    assert (rejection.namespace_key, rejection.raw_id, rejection.code) == ("loyalty", " L1 ", UNKNOWN_NAMESPACE)


@pytest.mark.parametrize(
    "identity_map",
    [
        {"ECID": SAMPLE_ECID},
        {"ECID": [SAMPLE_ECID]},
        {"ECID": [{"authenticatedState": "ambiguous"}]},
        {"ECID": [{"id": 12345678901234567890123456789012345678}]},
        [{"id": SAMPLE_ECID}],
    ],
)
def test_an_identity_map_of_the_wrong_shape_is_rejected_never_read(identity_map):
    extraction = extract({"identityMap": identity_map})
    assert extraction.identities == ()
    assert [rejection.code for rejection in extraction.rejections] == [MALFORMED]


# Extraction


def test_identity_fields_are_read_from_their_runtime_paths():
    assert extract(SAMPLE_PROFILE).identities == (
        Identity("Email", "alice@example.com"),
        Identity("Phone", "+14155552671"),
        Identity("Phone", "+442079460958"),
    )


def test_a_bad_identity_field_is_rejected_under_its_namespace_naming_its_path():
    [rejection] = extract({"personalEmail": {"address": "alice"}}).rejections
    assert (rejection.namespace_key, rejection.code) == ("Email", INVALID_EMAIL)
    assert "personalEmail.address" in rejection.message


def test_every_rejection_names_where_its_id_was_found_before_why():
    entity = {
        "identityMap": {
            "ECID": [{"id": 5}, {"id": "123"}, {"id": "1" * 1025}, "not an item"],
            "Nope": [{"id": "x"}],
            "CRMID": [{"id": "  Anonymous "}, {"id": "000"}],
            "Email_LC_SHA256": [{"id": "xyz"}],
            "AAID": "not a list",
        },
        "personalEmail": {"address": "alice"},
        "mobilePhone": {"number": "12"},
    }
    malformed = "an identity id is a string, in an item {id, authenticatedState, primary}"
    rejections = extract(entity, IdentityRules(blocked_patterns=("0+",))).rejections
    assert [(rejection.code, rejection.message) for rejection in rejections] == [
        (MALFORMED, f"identityMap.ECID: {malformed}"),
        (ECID_LENGTH, "identityMap.ECID: an ECID is exactly 38 digits"),
        (TOO_LONG, "identityMap.ECID: 1025 characters; at most 1024"),
        (MALFORMED, f"identityMap.ECID: {malformed}"),
        (UNKNOWN_NAMESPACE, "identityMap.Nope: 'Nope' is not a configured namespace"),
        (BLOCKED, "identityMap.CRMID: 'Anonymous' is a blocked value"),
        (BLOCKED, "identityMap.CRMID: '000' is a blocked value"),
        (HASH_NOT_SHA256, "identityMap.Email_LC_SHA256: Email_LC_SHA256 holds a SHA-256 as 64 hexadecimal characters"),
        (MALFORMED, f"identityMap.AAID: {malformed}"),
        (INVALID_EMAIL, "personalEmail.address: an e-mail address has one '@' between a local part and a domain"),
        (INVALID_PHONE, "mobilePhone.number: not a possible phone number (default region US)"),
    ]
    [rejection] = extract({"identityMap": ["x"]}).rejections
    assert (rejection.namespace_key, rejection.message) == ("", f"identityMap: {malformed}")


def test_configured_identity_fields_replace_the_defaults():
    rules = IdentityRules(fields={"_tenant.loyalty.memberId": "CRMID"})
    entity = {**SAMPLE_PROFILE, "_tenant": {"loyalty": {"memberId": "M-7"}}}
    assert extract(entity, rules).identities == (Identity("CRMID", "M-7"),)


def test_duplicates_across_identity_map_keys_and_identity_fields_collapse():
    entity = {
        "identityMap": {
            "Email": [{"id": "alice@example.com"}],
            "email": [{"id": "ALICE@example.com"}],
            NAMESPACE_URL_PREFIX + "6": [{"id": " Alice@Example.com"}],
        },
        "personalEmail": {"address": "alice@EXAMPLE.com"},
    }
    assert extract(entity) == Extraction((Identity("Email", "alice@example.com"),), ())


def test_identities_come_out_sorted():
    entity = {"identityMap": {"ECID": [{"id": SAMPLE_ECID}], "CRMID": [{"id": "c2"}, {"id": "c1"}]}}
    assert extract(entity).identities == (
        Identity("CRMID", "c1"),
        Identity("CRMID", "c2"),
        Identity("ECID", SAMPLE_ECID),
    )


def test_a_record_without_identities_yields_nothing():
    assert extract({"_id": "e1", "timestamp": "2026-11-01T08:59:00Z"}) == Extraction((), ())


def test_rules_and_namespaces_survive_pickling_into_workers():
    rules = pickle.loads(pickle.dumps(IdentityRules(blocked_patterns=(r"0+",))))
    registry = pickle.loads(pickle.dumps(REGISTRY))
    assert (
        extract_identities({"identityMap": {"crmid": [{"id": "000"}]}}, registry, rules).rejections[0].code == BLOCKED
    )


def test_rules_travel_without_the_identities_they_remember():
    used = IdentityRules()
    extract_identities({"identityMap": {"ECID": [{"id": SAMPLE_ECID}]}}, REGISTRY, used)
    assert pickle.dumps(used) == pickle.dumps(IdentityRules())


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"phone_region": "XX"}, "phone_region"), ({"blocked_patterns": ("(",)}, "not a regular expression")],
)
def test_rules_refuse_an_unknown_region_and_a_broken_pattern(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        IdentityRules(**kwargs)


# Properties

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=6,
)
# Mostly well-shaped input, so that most examples reach normalisation; odd JSON values exercise the shape checks.
KNOWN_KEYS = st.sampled_from(
    ["ECID", "ecid", "Email", "PHONE", "Email_LC_SHA256", "Phone_SHA256", "CRMID", "GAID", "Loyalty"]
    + [NAMESPACE_URL_PREFIX + number for number in ("4", "6", "7", "11", "99", "x")]
)
NAMESPACE_KEYS = st.one_of(KNOWN_KEYS, KNOWN_KEYS, KNOWN_KEYS, st.text(max_size=12))
SAMPLE_IDS = st.sampled_from(
    [SAMPLE_ECID, SAMPLE_SHA256, SAMPLE_E164, "(415) 555-2671", "Alice@Example.com", "null", " ", "x" * 1025]
)
IDS = st.one_of(
    SAMPLE_IDS,
    SAMPLE_IDS,
    st.emails(),
    st.from_regex(r"\+?[0-9 ()\-.]{1,20}", fullmatch=True),
    st.text(max_size=40),
    JSON_VALUES,
)
WELL_SHAPED_ITEMS = st.fixed_dictionaries(
    {"id": IDS},
    optional={
        "authenticatedState": st.sampled_from(["ambiguous", "authenticated", "loggedOut"]),
        "primary": st.booleans(),
    },
)
ITEM_LISTS = st.lists(
    st.one_of(WELL_SHAPED_ITEMS, WELL_SHAPED_ITEMS, WELL_SHAPED_ITEMS, JSON_VALUES), min_size=1, max_size=4
)
IDENTITY_MAPS = st.dictionaries(NAMESPACE_KEYS, st.one_of(ITEM_LISTS, ITEM_LISTS, ITEM_LISTS, JSON_VALUES), max_size=5)


def single_items(identity_map: dict[str, Any]) -> list[dict[str, Any]]:
    """One identityMap per item of ``identity_map`` (an entry that is not a list counts as one item)."""
    return [
        {key: [item]} if isinstance(items, list) else {key: items}
        for key, items in identity_map.items()
        for item in (items if isinstance(items, list) else [items])
    ]


@given(IDENTITY_MAPS)
@settings(max_examples=300, deadline=None)
def test_every_item_becomes_exactly_one_identity_or_one_rejection(identity_map):
    for single in single_items(identity_map):
        extraction = extract({"identityMap": single})
        assert len(extraction.identities) + len(extraction.rejections) == 1


@given(IDENTITY_MAPS)
@settings(max_examples=300, deadline=None)
def test_a_whole_identity_map_extracts_as_its_items_do_one_by_one(identity_map):
    singles = [extract({"identityMap": single}) for single in single_items(identity_map)]
    whole = extract({"identityMap": identity_map})
    assert whole.identities == tuple(sorted({identity for one in singles for identity in one.identities}))
    assert whole.rejections == tuple(rejection for one in singles for rejection in one.rejections)


# The same codes as the standard namespaces, of other types: what one registry's namespaces make of an id, another's
# may not.
OTHER_REGISTRY = NamespaceRegistry(
    [Namespace("Email", None, "hashed"), Namespace("ECID", 6, "cookie"), Namespace("Phone", 4, "person")]
)


@given(IDENTITY_MAPS)
@settings(max_examples=300, deadline=None)
def test_remembered_identities_are_what_a_fresh_normalisation_gives(identity_map):
    """Rules remember each id they normalised, with the namespaces that read it: extracting again, under either
    registry, gives what rules that remember nothing give."""
    shared = IdentityRules()
    entity = {"identityMap": identity_map}
    for registry in (REGISTRY, OTHER_REGISTRY, REGISTRY, OTHER_REGISTRY):
        assert extract_identities(entity, registry, shared) == extract_identities(entity, registry, IdentityRules())


@given(NAMESPACE_KEYS, IDS)
@settings(max_examples=300, deadline=None)
def test_normalisation_is_idempotent(key, raw_id):
    first = extract({"identityMap": {key: [{"id": raw_id}]}})
    for identity in first.identities:
        assert outcome(identity.namespace, identity.id) == identity


# Record time


@pytest.mark.parametrize(
    ("entity", "class_id", "expected"),
    [
        ({"timestamp": "2026-11-01T08:59:00Z"}, EXPERIENCE_EVENT_CLASS, parse_rfc3339_us("2026-11-01T08:59:00Z")),
        ({"_id": "e1"}, EXPERIENCE_EVENT_CLASS, INGEST_US),
        (
            {"extSourceSystemAudit": {"lastUpdatedDate": "2026-10-31T12:00:00+02:00"}},
            PROFILE_CLASS,
            parse_rfc3339_us("2026-10-31T10:00:00Z"),
        ),
        ({"extSourceSystemAudit": {"createdDate": "2026-10-31T12:00:00Z"}}, PROFILE_CLASS, INGEST_US),
        ({"timestamp": "2026-11-01T08:59:00Z"}, PROFILE_CLASS, INGEST_US),
        ({"extSourceSystemAudit": {"lastUpdatedDate": "yesterday"}}, PROFILE_CLASS, INGEST_US),
    ],
)
def test_record_time_is_the_event_timestamp_or_the_records_last_update_else_ingestion(entity, class_id, expected):
    assert record_time_us(entity, class_id, INGEST_US) == expected


# Configuration

SAMPLE_CONFIG = """
namespaces:
  - {code: ECID, numeric_id: 4, type: cookie, priority: 10}
  - {code: Email, numeric_id: 6, type: person, priority: 80}
  - {code: LoyaltyID, type: cross-device, unique: true, priority: 90}
identity:
  blocked_values: [N/A]
  phone_region: GB
  fields: {personalEmail.address: Email, _tenant.loyaltyId: loyaltyid}
"""


def write(tmp_path, text: str, name: str = "profilestream.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_example_file_states_the_built_in_namespaces_and_identity_settings():
    example = load_config(Path(pipelines.__file__).parent / "profilestream.example.yaml")
    assert (example.namespaces, example.identity) == (Config().namespaces, Config().identity)


def test_a_configuration_with_custom_namespaces_loads(tmp_path):
    config = load_config(write(tmp_path, SAMPLE_CONFIG))
    assert config.namespace_registry().resolve("loyaltyid") == Namespace("LoyaltyID", None, "cross-device", True, 90)
    assert config.namespace_registry().resolve("Phone") is None


def test_the_identity_settings_of_a_configuration_drive_extraction(tmp_path):
    config = load_config(write(tmp_path, SAMPLE_CONFIG))
    entity = {"identityMap": {"Email": [{"id": "n/a"}]}, "_tenant": {"loyaltyId": "L-1"}}
    extraction = extract_identities(entity, config.namespace_registry(), config.identity_rules())
    assert extraction.identities == (Identity("LoyaltyID", "L-1"),)
    assert [rejection.code for rejection in extraction.rejections] == [BLOCKED]


def test_a_toml_configuration_lists_namespaces_as_an_array_of_tables(tmp_path):
    text = '[[namespaces]]\ncode = "ECID"\nnumeric_id = 4\ntype = "cookie"\n\n[identity]\nfields = {}\n'
    config = load_config(write(tmp_path, text, "profilestream.toml"))
    assert config.namespaces == (Namespace("ECID", 4, "cookie"),)


def test_a_bad_namespace_type_is_a_one_line_error_naming_file_and_entry(tmp_path):
    path = write(tmp_path, "namespaces:\n  - {code: ECID, type: cookie}\n  - {code: Loyalty, type: phone}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: namespaces[1]: type must be one of cookie, device, cross-device, person")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("namespaces: []", "at least one namespace"),
        ("namespaces: {ECID: cookie}", "namespaces must be list"),
        ("namespaces: [ECID]", "namespaces[0] must be a mapping"),
        ("namespaces: [{code: ECID, type: cookie, colour: blue}]", "namespaces[0]: unknown key 'colour'"),
        ("namespaces: [{code: ECID}]", "namespaces[0] needs type"),
        ("namespaces: [{code: ECID, type: cookie, numeric_id: four}]", "namespaces[0].numeric_id must be int"),
        ("namespaces: [{code: ECID, type: cookie, unique: 1}]", "namespaces[0].unique must be bool"),
        ("namespaces: [{code: ECID, type: cookie}, {code: ecid, type: cookie}]", "'ecid' is given twice"),
        ("namespaces: [{code: ECID, type: cookie}]", "identity.fields.personalEmail.address names 'Email'"),
        ("identity: {colour: blue}", "identity: unknown key 'colour'"),
        ("identity: {quarantine_links: 0}", "identity.quarantine_links must be positive"),
        ("identity: {max_identities_per_graph: true}", "identity.max_identities_per_graph must be int"),
        ("identity: {blocked_values: [1]}", "identity.blocked_values must be a list of strings"),
        ("identity: {blocked_patterns: ['(']}", "not a regular expression"),
        ("identity: {phone_region: Narnia}", "phone_region 'Narnia'"),
        ("identity: {fields: {personalEmail.address: Mail}}", "names 'Mail', which is not a configured namespace"),
        ("identity: {fields: {'a..b': Email}}", "identity.fields maps dot-separated field paths"),
    ],
)
def test_a_malformed_namespace_or_identity_setting_is_a_one_line_error(tmp_path, text, fragment):
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, text))
    assert fragment in str(raised.value)
    assert "\n" not in str(raised.value)
