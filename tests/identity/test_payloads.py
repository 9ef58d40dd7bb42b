"""The Postman identity-link payloads and the XDM identityMap examples stitch as their names describe.

The payloads (``tests/data/xdm/payloads``, see MANIFEST.md there) are the request bodies of two Postman collections
that test the reference platform's identity linking (``postman-identitylink__*``, ``postman-checkstreaming__*``) and
the identityMap examples of the XDM documentation. As published they use ``{{placeholders}}`` that Postman fills from
its environment, namespace codes in several cases (``EMAIL``, ``Email``, ``crmid``, ``email``), and four are not JSON.
``tests/data/identity`` holds a copy of each, repaired only as far as JSON needs and with the placeholders mapped
(``REPAIRS``, ``PLACEHOLDERS``; README.md there); the first tests keep every copy exactly its original with those
edits, so a copy cannot drift from its source.

The copies name test schemas (``tests/data/identity/schemas``, in the ``--schema-dir`` format) composed as the
collections composed theirs: ExperienceEvent with IdentityMap and Campaign Marketing Details (the events carry
``marketing.trackingCode``), Profile with IdentityMap, and the demo org's profile schema with its tenant object. The
registry is loaded as that org's deployment would load it: tenant id ``acpccedemo``, its dataset id an alias.

Every payload runs the real chain in plain Python: ``decode_message`` -> ``validate_decoded`` ->
``extract_identities`` -> an :class:`Observation` per record -> ``GraphFacts.merged_with`` in the order the collection
sends them -> ``resolve``. The events keep their own time (all ``2019-02-06T18:23:32Z``); the profile records have no
``lastUpdatedDate``, so theirs is their ingestion time, a minute apart in collection order. What the series show:

- "3 records in identityMap": a profile record with an ECID, an Email and a CRMID is one person of three namespaces.
- "<namespace> 3 <namespace> link": an event carrying one of those identities joins that person.
- "1 <namespace> record in identityMap" and "<namespace> 1 <namespace> link": a profile record with one identity, and
  an event with the same one, are one person. Except "CRM ID 1 Profile Link": in the collection it carries series 3's
  CRM id (``march720193prorecords``, a copy of the series-3 request), so it joins series 3's person and the
  "1 CRMID record" profile stays a person of its own.

None of these identities is rejected by normalisation: every ECID is 38 digits, the Check Streaming one too because
``{{RUNDESIGNATION}}`` is ``Date.now()``, 13 digits. Left unfilled, that placeholder makes an ECID our rules reject,
and the record still goes on. The demo org's profile (``...-santhosh``) is invalid here: its ``optInOut._channels``
is a shape the public XDM library's ``optInOut`` (channel URIs as keys) does not have.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from core.records import FailedRecord, Message, ValidRecord
from identity.graph import Resolution, person_id, record_person, resolve
from identity.model import GraphFacts, Identity, Observation, Stamp
from identity.namespaces import ECID_LENGTH, Extraction, extract_identities, record_time_us
from messages.decoding import JsonRejected, decode_message, parse_json
from pipelines.config import Config
from schemas.registry import SchemaRegistry
from schemas.validation import UNKNOWN_FIELD, validate_decoded
from stores.opening import identity_store_handler
from transforms.decode import Decode
from transforms.stitch import StitchIdentities
from transforms.validate import Validate

DATA = Path(__file__).parents[1] / "data"
ORIGINALS = DATA / "xdm" / "payloads"
COPIES = DATA / "identity"
SCHEMA_DIR = COPIES / "schemas"

PROFILE_CLASS = "https://ns.adobe.com/xdm/context/profile"
POSTMAN_EVENT_SCHEMA = "https://example.com/schemas/postman-identity-link-event"
POSTMAN_PROFILE_SCHEMA = "https://example.com/schemas/postman-identity-link-profile"
DEMO_TENANT = "acpccedemo"
DEMO_DATASET = "acpccedemo_profiles"
DEMO_DATASET_ID = "5de952059edecf18a837c44f"
RUN_DESIGNATION = "1549508853000"  # Date.now() (ms) at 2019-02-07T03:07:33Z, as the collection's script sets it
PLACEHOLDERS = {
    "{{EXPEVENTSCHEMAURL}}": POSTMAN_EVENT_SCHEMA,
    "{{PROFILESCHEMAURL}}": POSTMAN_PROFILE_SCHEMA,
    "{{NEWEXPEVENTDATASETID}}": "postman_events",
    "{{NEWPROFILEDATASETID}}": "postman_profiles",
    "{{IMS_ORG}}": "0123456789ABCDEF01234567@AdobeOrg",
    "{{RUNDESIGNATION}}": RUN_DESIGNATION,
}
CONFIG = Config(tenant_id=DEMO_TENANT, datasets={DEMO_DATASET: {"aliases": [DEMO_DATASET_ID]}})
SETTINGS = CONFIG.stitch_settings()
BASE_US = 1_793_523_600_000_000  # 2026-11-01T09:00:00Z
MINUTE_US = 60_000_000


def identity_link(request: str) -> str:
    return f"postman-identitylink__streaming-{request}.json"


def check_streaming(request: str) -> str:
    return f"postman-checkstreaming__streaming-{request}.json"


LINK_PROFILE_3 = identity_link("profile-ingest-3-records-in-identitymap")
LINK_PROFILE_1_EMAIL = identity_link("profile-ingest-1-email-record-in-identitymap")
LINK_PROFILE_1_CRMID = identity_link("profile-ingest-1-crmid-record-in-identitymap")
LINK_PROFILE_1_ECID = identity_link("profile-ingest-1-ecid-record-in-identitymap")
LINK_CRMID_1 = identity_link("expevent-ingest-crm-id-1-profile-link")
LINK_CRMID_3 = identity_link("expevent-ingest-crm-id-3-profile-link")
LINK_EMAIL_1 = identity_link("expevent-ingest-email-1-email-link")
LINK_EMAIL_3 = identity_link("expevent-ingest-email-3-email-link")
LINK_ECID_1 = identity_link("expevent-ingest-ecid-1-ecid-link")
LINK_ECID_3 = identity_link("expevent-ingest-ecid-3-ecid-link")
CHECK_PROFILE_3 = check_streaming("profile-ingest-3-records-in-identitymap")
CHECK_CRMID_3 = check_streaming("expevent-ingest-crm-id-3-profile-link")
CHECK_EMAIL_3 = check_streaming("expevent-ingest-email-3-email-link")
CHECK_ECID_3 = check_streaming("expevent-ingest-ecid-3-ecid-link")
DEMO_PROFILE = check_streaming("profile-ingest-3-records-in-identitymap-santhosh")
FIELD_GROUP_EXAMPLE = "aepdocs__xdm-field-group-identitymap__example.json"
COMPOSITION_EXAMPLE = "aepdocs__xdm-schema-composition__identityMap.fragment.json"

# The order each collection sends its requests in (its "Load Streaming Data" folder).
IDENTITY_LINK_RUN = (
    LINK_PROFILE_3,
    LINK_PROFILE_1_EMAIL,
    LINK_PROFILE_1_CRMID,
    LINK_PROFILE_1_ECID,
    LINK_CRMID_1,
    LINK_CRMID_3,
    LINK_EMAIL_1,
    LINK_EMAIL_3,
    LINK_ECID_1,
    LINK_ECID_3,
)
CHECK_STREAMING_RUN = (CHECK_PROFILE_3, CHECK_CRMID_3, CHECK_EMAIL_3, CHECK_ECID_3)

# Only what JSON needs: (text as published, text in the copy), each found once in the original.
REPAIRS = {
    # The body's schemaRef lacks its "xdmMeta": { wrapper, which also leaves one closing brace over at the end.
    LINK_PROFILE_1_CRMID: (
        ('    "body": {\n        "schemaRef"', '    "body": {\n        "xdmMeta": {\n        "schemaRef"'),
    ),
    LINK_PROFILE_1_ECID: (("        }\n    }\n    }\n}", "        }\n    }\n}"),),  # one closing brace too many
    LINK_PROFILE_3: (("        }\n    }\n    }\n}", "        }\n    }\n}"),),
    # A fragment: the identityMap member of an entity, wrapped into that entity.
    COMPOSITION_EXAMPLE: (
        ('"identityMap": {\n  "email"', '{"identityMap": {\n  "email"'),
        ("    }\n  ]\n}\n", "    }\n  ]\n}}\n"),
    ),
}
# Payloads that carry no envelope: bare entities, whose schema a message attribute names.
BARE_ENTITY_ATTRIBUTES = {name: {"schemaRef": PROFILE_CLASS} for name in (FIELD_GROUP_EXAMPLE, COMPOSITION_EXAMPLE)}

SERIES_3_CRMID = Identity("CRMID", "march720193prorecords")
SERIES_3_ECID = Identity("ECID", "10000000000000000000000020190207030733")
SERIES_3_EMAIL = Identity("Email", "march720193prorecords@adobe.com")
SERIES_1_CRMID = Identity("CRMID", "march7201931crmidprorecord")
SERIES_1_ECID = Identity("ECID", "20000000000000000000000020190207030711")
SERIES_1_EMAIL = Identity("Email", "march720191emailprorecord@adobe.com")
CHECK_CRMID = Identity("CRMID", f"{RUN_DESIGNATION}prorecords")
CHECK_ECID = Identity("ECID", f"100000000000000000000000{RUN_DESIGNATION}1")
CHECK_EMAIL = Identity("Email", f"prorecords{RUN_DESIGNATION}@adobe.com")
DEMO_IDENTITIES = {
    Identity("CRMID", "YnJ1bm9tYXJzQGFkb2JlLmNvbQ=="),
    Identity("ECID", "78311988187408304103774933770464817827"),
    Identity("Email", "brunomars@adobe.com"),
}


def original_names() -> list[str]:
    names = [
        path.name
        for pattern in ("postman-identitylink__*", "postman-checkstreaming__*")
        for path in ORIGINALS.glob(pattern)
    ]
    return sorted([*names, FIELD_GROUP_EXAMPLE, COMPOSITION_EXAMPLE])


COPY_NAMES = original_names()
VALID_NAMES = [name for name in COPY_NAMES if name != DEMO_PROFILE]


def derived_copy(name: str, placeholders: Mapping[str, str] = PLACEHOLDERS) -> str:
    """The original's text with its repairs made and the placeholders mapped: what its copy must hold."""
    text = (ORIGINALS / name).read_text(encoding="utf-8")
    for published, repaired in REPAIRS.get(name, ()):
        assert text.count(published) == 1, f"{name}: a repair must match the original once: {published!r}"
        text = text.replace(published, repaired)
    for placeholder, value in placeholders.items():
        text = text.replace(placeholder, value)
    return text


@functools.cache
def registry() -> SchemaRegistry:
    return SchemaRegistry.load(SCHEMA_DIR, tenant_id=CONFIG.tenant_id, dataset_aliases=CONFIG.dataset_aliases())


def message_id(name: str) -> str:
    return name.removesuffix(".json").partition("__")[2]


def message(name: str, position: int = 0, data: bytes | None = None) -> Message:
    publish_us = BASE_US + position * MINUTE_US
    payload = (COPIES / name).read_bytes() if data is None else data
    return Message(payload, BARE_ENTITY_ATTRIBUTES.get(name, {}), message_id(name), publish_us, publish_us)


def verdict(name: str, position: int = 0, data: bytes | None = None) -> ValidRecord | FailedRecord:
    [decoded] = decode_message(message(name, position, data), registry().avro_schema_for)
    return decoded if isinstance(decoded, FailedRecord) else validate_decoded(decoded, registry())


def valid_record(name: str, position: int = 0, data: bytes | None = None) -> ValidRecord:
    record = verdict(name, position, data)
    assert isinstance(record, ValidRecord), f"{name}: {record.errors}"
    return record


def extraction_of(record: ValidRecord) -> Extraction:
    return extract_identities(record.entity, SETTINGS.namespaces, SETTINGS.rules)


@dataclasses.dataclass(frozen=True)
class Stitched:
    """A run's records by message id: their identities and their person under the final resolution."""

    identities: Mapping[str, tuple[Identity, ...]]
    resolution: Resolution

    def person(self, name: str) -> str | None:
        return record_person(self.identities[message_id(name)], self.resolution, SETTINGS.graph)

    def members(self, name: str) -> set[Identity]:
        return self.resolution.members()[self.person(name)]


def stitch(records: list[ValidRecord]) -> Stitched:
    facts = GraphFacts.empty()
    identities = {}
    for record in records:
        extraction = extraction_of(record)
        schema = registry().get(record.schema_id)
        stamp = Stamp(record_time_us(record.entity, schema.class_id, record.publish_time_us), record.message_id)
        facts = facts.merged_with([Observation(extraction.identities, stamp)])
        identities[record.message_id] = extraction.identities
    return Stitched(identities, resolve(facts, SETTINGS.graph))


@functools.cache
def stitched_run(run: tuple[str, ...]) -> Stitched:
    return stitch([valid_record(name, position) for position, name in enumerate(run)])


def case_id(value: object) -> str | None:
    """A payload parameter's test id: its request name (pytest numbers the rest)."""
    return message_id(value) if isinstance(value, str) else None


def demo_profile_without_consent() -> bytes:
    payload = json.loads((COPIES / DEMO_PROFILE).read_bytes())
    del payload["body"]["xdmEntity"]["optInOut"]
    return json.dumps(payload).encode()


# The copies.


def test_every_identity_payload_has_a_copy():
    assert sorted(path.name for path in COPIES.glob("*.json")) == COPY_NAMES


@pytest.mark.parametrize("name", COPY_NAMES)
def test_copy_is_its_original_repaired_and_mapped(name):
    assert (COPIES / name).read_text(encoding="utf-8") == derived_copy(name)


@pytest.mark.parametrize("name", COPY_NAMES)
def test_copy_is_strict_json(name):
    assert isinstance(parse_json((COPIES / name).read_bytes()), dict)


@pytest.mark.parametrize("name", COPY_NAMES)
def test_copy_keeps_no_placeholder(name):
    assert "{{" not in (COPIES / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", COPY_NAMES)
def test_a_copy_is_repaired_only_when_its_original_is_not_json(name):
    try:
        parse_json((ORIGINALS / name).read_bytes())
        original_is_json = True
    except JsonRejected:
        original_is_json = False
    assert (name in REPAIRS) is not original_is_json


# Validation.


@pytest.mark.parametrize("name", VALID_NAMES)
def test_payload_is_valid_under_its_schema(name):
    assert isinstance(verdict(name), ValidRecord)


def test_the_demo_profile_is_invalid_only_for_its_consent_channels():
    """``optInOut._channels.email`` is how the demo org's schema held consent; the public library's ``optInOut``
    (Profile Preferences Details, deprecated) keys channels by URI (``https://ns.adobe.com/xdm/channels/email``)."""
    record = verdict(DEMO_PROFILE)
    assert [(error.code, error.path) for error in record.errors] == [(UNKNOWN_FIELD, "/optInOut/_channels")]


# Normalisation.


@pytest.mark.parametrize("name", VALID_NAMES)
def test_no_identity_of_the_payloads_is_rejected(name):
    assert extraction_of(valid_record(name)).rejections == ()


@pytest.mark.parametrize(
    ("name", "key_as_sent", "identity"),
    [
        (LINK_PROFILE_3, "EMAIL", SERIES_3_EMAIL),
        (LINK_EMAIL_1, "Email", SERIES_1_EMAIL),
        (CHECK_PROFILE_3, "EMAIL", CHECK_EMAIL),
        (COMPOSITION_EXAMPLE, "email", Identity("Email", "jsmith@example.com")),
        (FIELD_GROUP_EXAMPLE, "ECID", Identity("ECID", "83238819066235616291057085344313877718")),
    ],
)
def test_a_namespace_code_in_any_case_resolves_to_the_configured_code(name, key_as_sent, identity):
    record = valid_record(name)
    assert key_as_sent in record.entity["identityMap"]
    assert identity in extraction_of(record).identities


def test_the_demo_profiles_lower_case_crmid_resolves_to_the_configured_code():
    record = valid_record(DEMO_PROFILE, data=demo_profile_without_consent())
    assert "crmid" in record.entity["identityMap"]
    assert Identity("CRMID", "YnJ1bm9tYXJzQGFkb2JlLmNvbQ==") in extraction_of(record).identities


def test_an_unfilled_run_designation_makes_an_ecid_that_normalisation_rejects_and_the_record_goes_on():
    unfilled = {
        placeholder: value for placeholder, value in PLACEHOLDERS.items() if placeholder != "{{RUNDESIGNATION}}"
    }
    record = valid_record(CHECK_PROFILE_3, data=derived_copy(CHECK_PROFILE_3, unfilled).encode())
    rejections = [(rejection.namespace_key, rejection.code) for rejection in extraction_of(record).rejections]
    assert rejections == [("ECID", ECID_LENGTH)]


def test_without_the_rejected_ecid_the_unfilled_profiles_email_and_crm_id_still_make_one_person():
    unfilled = {
        placeholder: value for placeholder, value in PLACEHOLDERS.items() if placeholder != "{{RUNDESIGNATION}}"
    }
    stitched = stitch([valid_record(CHECK_PROFILE_3, data=derived_copy(CHECK_PROFILE_3, unfilled).encode())])
    assert stitched.members(CHECK_PROFILE_3) == {
        Identity("CRMID", "{{RUNDESIGNATION}}prorecords"),
        Identity("Email", "prorecords{{rundesignation}}@adobe.com"),  # e-mail is lower-cased
    }


# Stitching: the Postman series.


@pytest.mark.parametrize(
    ("run", "identities"),
    [
        (IDENTITY_LINK_RUN, {SERIES_3_CRMID, SERIES_3_ECID, SERIES_3_EMAIL}),
        (CHECK_STREAMING_RUN, {CHECK_CRMID, CHECK_ECID, CHECK_EMAIL}),
    ],
    ids=["identitylink", "checkstreaming"],
)
def test_three_records_in_identity_map_make_one_person_of_three_namespaces(run, identities):
    assert stitched_run(run).members(run[0]) == identities


@pytest.mark.parametrize(
    ("run", "event", "profile", "identity"),
    [
        (IDENTITY_LINK_RUN, LINK_CRMID_3, LINK_PROFILE_3, SERIES_3_CRMID),
        (IDENTITY_LINK_RUN, LINK_EMAIL_3, LINK_PROFILE_3, SERIES_3_EMAIL),
        (IDENTITY_LINK_RUN, LINK_ECID_3, LINK_PROFILE_3, SERIES_3_ECID),
        (IDENTITY_LINK_RUN, LINK_EMAIL_1, LINK_PROFILE_1_EMAIL, SERIES_1_EMAIL),
        (IDENTITY_LINK_RUN, LINK_ECID_1, LINK_PROFILE_1_ECID, SERIES_1_ECID),
        (CHECK_STREAMING_RUN, CHECK_CRMID_3, CHECK_PROFILE_3, CHECK_CRMID),
        (CHECK_STREAMING_RUN, CHECK_EMAIL_3, CHECK_PROFILE_3, CHECK_EMAIL),
        (CHECK_STREAMING_RUN, CHECK_ECID_3, CHECK_PROFILE_3, CHECK_ECID),
    ],
    ids=case_id,
)
def test_an_event_joins_its_profile_records_person_through_the_identity_its_name_says(run, event, profile, identity):
    stitched = stitched_run(run)
    assert stitched.identities[message_id(event)] == (identity,)
    assert stitched.person(event) == stitched.person(profile)


@pytest.mark.parametrize(
    ("profile", "identity"),
    [
        (LINK_PROFILE_1_EMAIL, SERIES_1_EMAIL),
        (LINK_PROFILE_1_ECID, SERIES_1_ECID),
        (LINK_PROFILE_1_CRMID, SERIES_1_CRMID),
    ],
    ids=case_id,
)
def test_a_series_1_profile_record_is_a_person_of_its_one_identity(profile, identity):
    assert stitched_run(IDENTITY_LINK_RUN).members(profile) == {identity}


def test_the_crm_id_1_event_carries_the_series_3_crm_id_and_joins_that_person():
    stitched = stitched_run(IDENTITY_LINK_RUN)
    assert stitched.identities[message_id(LINK_CRMID_1)] == (SERIES_3_CRMID,)
    assert stitched.person(LINK_CRMID_1) == stitched.person(LINK_PROFILE_3) != stitched.person(LINK_PROFILE_1_CRMID)


def test_the_identity_link_collection_makes_four_persons():
    persons = stitched_run(IDENTITY_LINK_RUN).resolution.members().values()
    assert sorted(map(sorted, persons)) == sorted(
        [sorted({SERIES_3_CRMID, SERIES_3_ECID, SERIES_3_EMAIL}), [SERIES_1_CRMID], [SERIES_1_ECID], [SERIES_1_EMAIL]]
    )


def test_the_series_3_person_is_anchored_by_its_crm_id_as_the_earliest_event_carried_it():
    # The events share one timestamp, years before the profile records' ingestion time, so the earliest sighting is
    # that of the lowest message id among them: the crm-id-1 event's.
    assert stitched_run(IDENTITY_LINK_RUN).person(LINK_PROFILE_3) == person_id(SERIES_3_CRMID)


# Stitching: the documentation's examples and the demo profile.


def test_the_identitymap_field_group_example_is_a_person_of_its_ecid():
    ecid = Identity("ECID", "83238819066235616291057085344313877718")
    assert stitch([valid_record(FIELD_GROUP_EXAMPLE)]).members(FIELD_GROUP_EXAMPLE) == {ecid}


def test_the_composition_example_links_an_email_two_ecids_and_a_crm_id_into_one_person():
    assert stitch([valid_record(COMPOSITION_EXAMPLE)]).members(COMPOSITION_EXAMPLE) == {
        Identity("CRMID", "2e33192000007456-0365c00000000000"),
        Identity("ECID", "55019962992006103186215643814973128178"),
        Identity("ECID", "87098882279810196101440938110216748923"),
        Identity("Email", "jsmith@example.com"),
    }


def test_the_demo_profile_without_its_consent_field_is_one_person_of_three_namespaces():
    # personalEmail.address is an identity field too; it repeats the identityMap's Email, so it adds nothing.
    record = valid_record(DEMO_PROFILE, data=demo_profile_without_consent())
    assert stitch([record]).members(DEMO_PROFILE) == DEMO_IDENTITIES


# The same run through the Beam stage.


def test_the_stitch_stage_on_sqlite_gives_the_identity_link_records_the_persons_of_the_plain_chain(tmp_path):
    store = f"sqlite:///{tmp_path}/identity.sqlite"
    messages = [message(name, position) for position, name in enumerate(IDENTITY_LINK_RUN)]
    stitched = stitched_run(IDENTITY_LINK_RUN)
    expected = [(message_id(name), stitched.person(name)) for name in IDENTITY_LINK_RUN]
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        decoded = pipeline | beam.Create(messages) | Decode(registry().avro_schema_for)
        validated = decoded.entities | Validate(registry())
        result = validated.valid | StitchIdentities(registry(), identity_store_handler(store), SETTINGS)
        persons = result.records | beam.Map(lambda record: (record.message_id, record.person_id))
        assert_that(persons, equal_to(expected))
