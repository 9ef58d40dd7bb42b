"""Generate the sample stream: a deterministic replay file of web-shop traffic as Pub/Sub messages.

In: a seed and sizes (``--seed 7 --people 300 --messages 2500`` by default). Out: ``--out``, a JSONL file with one
Pub/Sub message per line in REST form (``{"data": base64, "attributes", "messageId", "publishTime"}``), and a one-line
JSON summary on stderr. ``pipelines/samples/stream.jsonl`` is this module's output with the defaults
(``make sample``); a test keeps the two equal.

What the stream holds
---------------------
Publish times spread over two hours from 2026-11-01T09:00:00Z, so a replay fills two hourly partitions and many
5-minute windows; every time comes from the seeded generator, never the clock. People (1-3 browser devices each,
identified by ECID; most with an Email login, many with a CRMID) browse, view, add and buy products:

- about 85% of the valid messages carry ExperienceEvents (dataset ``experience_events``), 15% Profile records
  (dataset ``profile_records``, for people with a CRMID; later records move house or change phone);
- most are streaming envelopes, about 4% batch envelopes of 2-5 messages, about 12% bare entities with the schema
  id in the ``schemaRef`` attribute;
- events carry the device's ECID; a logged-in device adds the CRMID (primary) and, on the login event and now and
  then after it, the Email, sometimes in mixed case; after a logout the CRMID or Email stays as ``loggedOut``. So a
  person's devices are linked through their logins, and a few devices are shared by two people;
- event timestamps fall a little before their publish time, and about 3% of them days before;
- about 3% of the lines are invalid: not JSON, truncated JSON, no ``timestamp``, a number as ``eventType``, an
  unknown field, an empty string, two primary identities, or an unknown schema id;
- about 2% are Pub/Sub redeliveries (a copy of an earlier line, same message id, publish time and data, a few lines
  later) and about 1% producer resends (an earlier message's data again, under a new message id and publish time).

Only fields of the built-in ingestion schemas' field groups are used (IdentityMap, Web Details, Environment Details,
Commerce Details; Demographic Details, Personal Contact Details, External Source System Audit Details), in runtime
names.

Building blocks
---------------
The load generator (:mod:`tools.loadgen`) draws its traffic from the same pieces: :class:`Person` and
:class:`Device`, :func:`draw_person`, :func:`draw_event_type` with :func:`add_event_details`, :func:`profile_entity`,
:func:`envelope`, :func:`not_json_payload` and the small formatting helpers. Each takes the random source it draws
from, so a caller's own seeded ``Random`` decides what it gets.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime
import json
import sys
import unicodedata
import uuid
from collections.abc import Sequence
from random import Random
from typing import Any

EXPERIENCE_EVENT_SCHEMA = "https://ns.adobe.com/xdm/context/experienceevent"
PROFILE_SCHEMA = "https://ns.adobe.com/xdm/context/profile"
UNKNOWN_SCHEMA = "https://ns.adobe.com/acme/schemas/9f0c2b7e41d5"
CONTENT_TYPE = "application/vnd.adobe.xed-full+json;version=1"
IMS_ORG = "6C1D7F2E5A9B4C3D0E8F1A2B@AdobeOrg"
BASE_TIME = datetime.datetime(2026, 11, 1, 9, 0, 0, tzinfo=datetime.UTC)
SPAN_US = 2 * 3600 * 1_000_000

# (dataset, source name, flow id) per schema: one dataflow each, as a streaming connection has.
_DATAFLOWS = {
    EXPERIENCE_EVENT_SCHEMA: ("experience_events", "web-sdk", "2f9d1c4e-7a3b-4e8f-9c6d-0b1a2e3f4d5c"),
    PROFILE_SCHEMA: ("profile_records", "crm-export", "8b7a6c5d-4e3f-4a1b-9c2d-3e4f5a6b7c8d"),
    # A misconfigured web SDK names a schema nobody registered.
    UNKNOWN_SCHEMA: ("experience_events", "web-sdk", "2f9d1c4e-7a3b-4e8f-9c6d-0b1a2e3f4d5c"),
}
_SITE = "https://shop.example.com"
_PAGES = [("home", "/"), ("deals", "/deals"), ("new arrivals", "/new"), ("stores", "/stores"), ("help", "/help")]
_REFERRERS = ["https://www.google.com/", "https://www.bing.com/", "https://news.example.org/picks", None, None]
_PRODUCTS = [
    ("SKU-1001", "Trail running shoe", 119.0),
    ("SKU-1002", "Rain shell jacket", 189.5),
    ("SKU-1003", "Merino base layer", 74.9),
    ("SKU-1004", "Insulated bottle", 29.99),
    ("SKU-1005", "Headlamp 400lm", 44.0),
    ("SKU-1006", "Trekking poles", 89.0),
    ("SKU-1007", "Daypack 22L", 99.95),
    ("SKU-1008", "Wool socks (3 pairs)", 24.5),
]
_FIRST_NAMES = ["Jane", "John", "Amara", "Łukasz", "Zoë", "José", "Mei", "Noah", "Ines", "Ravi", "Olga", "Sam", "Aiko"]
_LAST_NAMES = ["Doe", "Smith", "Okafor", "Nowak", "Müller", "García", "Chen", "Brown", "Rossi", "Patel", "Ivanova"]
_CITIES = [("Paris", "FR", "EUR"), ("Berlin", "DE", "EUR"), ("London", "GB", "GBP"), ("Austin", "US", "USD")]
# Mobile prefixes and subscriber-number lengths that make valid numbers (the identity stage checks them).
_MOBILE_NUMBERS = {"FR": ("+33 6", 8), "DE": ("+49 151", 8), "GB": ("+44 7911", 6), "US": ("+1 512", 7)}
_BROWSERS = [("Chrome", "Windows"), ("Safari", "macOS"), ("Safari", "iOS"), ("Chrome", "Android"), ("Firefox", "Linux")]
_EVENT_TYPES = [
    ("web.webpagedetails.pageViews", 50),
    ("web.webinteraction.linkClicks", 20),
    ("commerce.productViews", 15),
    ("commerce.productListAdds", 8),
    ("commerce.purchases", 7),
]
_INVALID_KINDS = [
    "not_json",
    "truncated_json",
    "missing_timestamp",
    "numeric_event_type",
    "unknown_field",
    "empty_value",
    "two_primaries",
    "unknown_schema",
]
_INVALID_SHARE = 0.03
_RESEND_SHARE = 0.01
_REDELIVERED_SHARE = 0.02
_PROFILE_SHARE = 0.15
_BATCH_SHARE = 0.04
_BARE_SHARE = 0.12
_OLD_EVENT_SHARE = 0.03


@dataclasses.dataclass(frozen=True)
class SampleSummary:
    """What a generated stream holds; entity counts cover valid first sendings only (no redeliveries or resends)."""

    lines: int
    events: int
    profiles: int
    invalid: int
    redelivered: int
    resent: int
    batch_envelopes: int
    bare_entities: int


@dataclasses.dataclass
class Person:
    """Someone who browses the shop: who they are, their accounts (either may be missing) and their devices."""

    first_name: str
    last_name: str
    email: str | None
    crm_id: str | None
    city: str
    country: str
    currency: str
    phone: str
    devices: list[Device] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Device:
    """A browser, identified by its ECID."""

    ecid: str
    browser: str
    operating_system: str
    # Who is logged in on the device, and who last logged out of it: the states its next events report.
    logged_in: Person | None = None
    logged_out: Person | None = None


def rfc3339(time_us: int, digits: int = 6, base: datetime.datetime = BASE_TIME) -> str:
    """``time_us`` µs after ``base`` as RFC 3339 in UTC with ``digits`` fractional digits (truncated)."""
    moment = base + datetime.timedelta(microseconds=time_us)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[: 20 + digits] + "Z"


def _ascii(name: str) -> str:
    # Addresses stay ASCII: an internationalised local part is legal but not what this sample means to exercise.
    folded = unicodedata.normalize("NFKD", name.replace("Ł", "L").replace("ł", "l"))
    return folded.encode("ascii", "ignore").decode("ascii")


def json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON, as producers send it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def identity_item(identity: str, state: str, primary: bool) -> list[dict[str, Any]]:
    """An identityMap entry's list holding one identity."""
    return [{"id": identity, "authenticatedState": state, "primary": primary}]


def draw_person(
    rng: Random, number: int, *, email_share: float, crm_share: float, device_counts: Sequence[int]
) -> Person:
    """Person ``number``: an Email for an ``email_share`` of people, a CRMID for a ``crm_share`` (the same draw
    decides both, so the smaller share holds both ids), and one of ``device_counts`` devices."""
    first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
    city, country, currency = rng.choice(_CITIES)
    # The first person always has both accounts, so that even a tiny stream can hold Profile records.
    account = rng.random() if number else 0.0
    email = f"{_ascii(first)}.{_ascii(last)}{number}@example.com".lower() if account < email_share else None
    person = Person(
        first_name=first,
        last_name=last,
        email=email,
        crm_id=f"CRM{rng.randrange(10**7, 10**8)}" if account < crm_share else None,
        city=city,
        country=country,
        currency=currency,
        phone=_phone(rng, country),
    )
    for _ in range(rng.choice(device_counts)):
        browser, operating_system = rng.choice(_BROWSERS)
        person.devices.append(Device(str(rng.randrange(10**37, 10**38)), browser, operating_system))
    return person


def _phone(rng: Random, country: str) -> str:
    prefix, digits = _MOBILE_NUMBERS[country]
    return f"{prefix} {rng.randrange(2 * 10 ** (digits - 1), 10**digits)}"


def random_uuid(rng: Random) -> str:
    """A version-4 UUID drawn from ``rng``, so a seeded run repeats its ids."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def draw_event_type(rng: Random) -> str:
    """An ExperienceEvent type, weighted as a shop's traffic is: mostly page views, a few purchases."""
    return rng.choices([name for name, _ in _EVENT_TYPES], weights=[weight for _, weight in _EVENT_TYPES])[0]


def add_event_details(rng: Random, entity: dict[str, Any], device: Device, currency: str) -> None:
    """Adds to an event entity the web, commerce and environment details its ``eventType`` calls for."""
    event_type = entity["eventType"]
    if event_type.startswith("web."):
        page_name, page_path = rng.choice(_PAGES)
        web: dict[str, Any] = {"webPageDetails": {"name": page_name, "URL": _SITE + page_path}}
        if event_type == "web.webpagedetails.pageViews":
            web["webPageDetails"]["pageViews"] = {"value": 1}
            referrer = rng.choice(_REFERRERS)
            if referrer is not None:
                web["webReferrer"] = {"URL": referrer}
        else:
            target_name, target_path = rng.choice(_PAGES)
            web["webInteraction"] = {
                "name": target_name,
                "URL": _SITE + target_path,
                "type": "other",
                "linkClicks": {"value": 1},
            }
    else:
        items = _products(rng, rng.randint(1, 3) if event_type == "commerce.purchases" else 1)
        web = {"webPageDetails": {"name": items[0]["name"], "URL": f"{_SITE}/p/{items[0]['SKU'].lower()}"}}
        commerce: dict[str, Any] = {event_type.removeprefix("commerce."): {"value": 1}}
        if event_type == "commerce.purchases":
            total = round(sum(item["priceTotal"] for item in items), 2)
            commerce["order"] = {"priceTotal": total, "currencyCode": currency}
        entity["commerce"] = commerce
        entity["productListItems"] = items
    entity["web"] = web
    entity["environment"] = {
        "type": "browser",
        "browserDetails": {"name": device.browser},
        "operatingSystem": device.operating_system,
    }


def _products(rng: Random, count: int) -> list[dict[str, Any]]:
    items = []
    for sku, name, price in rng.sample(_PRODUCTS, count):
        quantity = rng.choice([1, 1, 1, 2])
        items.append({"SKU": sku, "name": name, "quantity": quantity, "priceTotal": round(price * quantity, 2)})
    return items


def move_house(rng: Random, person: Person) -> None:
    """The person moves to another of the shop's cities (maybe the same) and takes a local phone number."""
    person.city, person.country, person.currency = rng.choice(_CITIES)
    person.phone = _phone(rng, person.country)


def profile_entity(record_id: str, person: Person, updated: str) -> dict[str, Any]:
    """A customer's Profile record as the CRM exports it, last updated at ``updated`` (RFC 3339)."""
    return {
        "_id": record_id,
        "identityMap": {
            "CRMID": identity_item(person.crm_id, "authenticated", True),
            "Email": identity_item(person.email, "authenticated", False),
        },
        "person": {"name": {"firstName": person.first_name, "lastName": person.last_name}},
        "personalEmail": {"address": person.email},
        "mobilePhone": {"number": person.phone},
        "homeAddress": {"city": person.city, "countryCode": person.country},
        "extSourceSystemAudit": {"lastUpdatedDate": updated},
    }


def not_json_payload(rng: Random) -> bytes:
    """What a broken producer sends instead of JSON: a proxy's error page, a query string or gzip bytes."""
    return rng.choice(
        [
            b"<html><body><h1>502 Bad Gateway</h1></body></html>",
            b"ev=pageview&page=home&ecid=" + str(rng.randrange(10**37, 10**38)).encode(),
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xcb\x48\xcd\xc9\xc9\x07\x00",
        ]
    )


class _StreamGenerator:
    """Draws people and their traffic from one seeded random source; every call advances it, so order matters."""

    def __init__(self, seed: int, people: int):
        self._rng = Random(seed)
        self._people = [
            draw_person(self._rng, number, email_share=0.85, crm_share=0.7, device_counts=(1, 1, 2, 2, 3))
            for number in range(people)
        ]
        self._customers = [person for person in self._people if person.crm_id is not None]
        # Activity is skewed, as on a real site: a few people make much of the traffic.
        self._activity = [self._rng.paretovariate(1.5) for _ in self._people]
        for person in self._rng.sample(self._people, max(1, people // 50)):
            household = self._rng.choice(self._people)
            if household is not person:
                person.devices.append(household.devices[0])

    def _mixed_case(self, email: str) -> str:
        if self._rng.random() < 0.2:
            return "".join(char.upper() if self._rng.random() < 0.3 else char for char in email)
        return email

    def pick_person(self) -> Person:
        return self._rng.choices(self._people, weights=self._activity)[0]

    def _identity_map(self, person: Person, device: Device) -> dict[str, Any]:
        rng = self._rng
        logging_in = False
        if device.logged_in is person and rng.random() < 0.08:
            device.logged_in, device.logged_out = None, person
        elif device.logged_in is not person and person.email is not None and rng.random() < 0.2:
            device.logged_in, device.logged_out, logging_in = person, None, True
        elif device.logged_in is not None and device.logged_in is not person:
            device.logged_in, device.logged_out = None, device.logged_in
        if device.logged_in is person:
            identities = {"ECID": identity_item(device.ecid, "ambiguous", False)}
            if person.crm_id is not None:
                identities["CRMID"] = identity_item(person.crm_id, "authenticated", True)
            if person.crm_id is None or logging_in or rng.random() < 0.3:
                identities["Email"] = identity_item(
                    self._mixed_case(person.email), "authenticated", person.crm_id is None
                )
            return identities
        identities = {"ECID": identity_item(device.ecid, "ambiguous", True)}
        if device.logged_out is person:
            namespace, identity = ("CRMID", person.crm_id) if person.crm_id else ("Email", person.email)
            identities[namespace] = identity_item(identity, "loggedOut", False)
        return identities

    def event(self, person: Person, device: Device, time_us: int) -> dict[str, Any]:
        """One ExperienceEvent of ``person`` on ``device`` at ``time_us`` (µs after the base time)."""
        rng = self._rng
        event_type = draw_event_type(rng)
        entity: dict[str, Any] = {
            "_id": random_uuid(rng),
            "timestamp": rfc3339(time_us, digits=3),
            "eventType": event_type,
            "identityMap": self._identity_map(person, device),
        }
        add_event_details(rng, entity, device, person.currency)
        return entity

    def event_time(self, publish_us: int) -> int:
        """An event time shortly before ``publish_us``, or days before it for a few events sent late."""
        if self._rng.random() < _OLD_EVENT_SHARE:
            return publish_us - self._rng.randrange(86_400_000_000, 5 * 86_400_000_000)
        return publish_us - self._rng.randrange(50_000, 3_000_000)

    def session(self, publish_us: int) -> list[dict[str, Any]]:
        """2-5 consecutive events of one person on one device, as a web SDK batches them."""
        person = self.pick_person()
        device = self._rng.choice(person.devices)
        count = self._rng.randint(2, 5)
        start_us = self.event_time(publish_us) - count * 4_000_000
        return [self.event(person, device, start_us + index * 4_000_000) for index in range(count)]

    def profile(self, publish_us: int) -> dict[str, Any]:
        """A customer's Profile record as the CRM exports it; now and then the customer has moved or changed phone."""
        rng = self._rng
        person = rng.choice(self._customers)
        if rng.random() < 0.15:
            move_house(rng, person)
        updated_us = publish_us - rng.randrange(1_000_000, 600_000_000)
        return profile_entity(random_uuid(rng), person, rfc3339(updated_us, digits=3))

    def invalid(self, kind: str, publish_us: int) -> bytes:
        """The payload of an invalid message of ``kind`` (one of ``_INVALID_KINDS``)."""
        rng = self._rng
        if kind == "not_json":
            return not_json_payload(rng)
        person = rng.choice(self._customers) if kind == "two_primaries" else self.pick_person()
        device = rng.choice(person.devices)
        entity = self.event(person, device, self.event_time(publish_us))
        if kind == "missing_timestamp":
            del entity["timestamp"]
        elif kind == "numeric_event_type":
            entity["eventType"] = rng.randrange(1, 100)
        elif kind == "unknown_field":
            entity["xdm:locationContext"] = {"city": person.city}
        elif kind == "empty_value":
            entity["web"]["webPageDetails"]["name"] = ""
        elif kind == "two_primaries":
            entity["identityMap"] = {
                "ECID": identity_item(device.ecid, "ambiguous", True),
                "CRMID": identity_item(person.crm_id, "authenticated", True),
            }
        schema = UNKNOWN_SCHEMA if kind == "unknown_schema" else EXPERIENCE_EVENT_SCHEMA
        payload = json_bytes(envelope(schema, entity))
        if kind == "truncated_json":
            return payload[: rng.randrange(20, len(payload) - 1)]
        return payload


def envelope(schema_id: str, entity: dict[str, Any], source: str | None = None) -> dict[str, Any]:
    """The streaming envelope of one XDM entity of ``schema_id``, from ``source`` (else the schema's usual one)."""
    dataset, usual_source, flow_id = _DATAFLOWS[schema_id]
    source = source or usual_source
    schema_ref = {"id": schema_id, "contentType": CONTENT_TYPE}
    return {
        "header": {
            "schemaRef": schema_ref,
            "imsOrgId": IMS_ORG,
            "datasetId": dataset,
            "flowId": flow_id,
            "source": {"name": source},
        },
        "body": {"xdmMeta": {"schemaRef": schema_ref}, "xdmEntity": entity},
    }


def _rest_line(data: bytes, attributes: dict[str, str], message_id: str, publish_us: int) -> bytes:
    message = {
        "data": base64.b64encode(data).decode("ascii"),
        "attributes": attributes,
        "messageId": message_id,
        "publishTime": rfc3339(publish_us),
    }
    return json_bytes(message)


def generate_sample_stream(
    *, seed: int = 7, people: int = 300, messages: int = 2500
) -> tuple[list[bytes], SampleSummary]:
    """The stream's lines (REST-form messages, no newline) in file order, and what they hold."""
    generator = _StreamGenerator(seed, people)
    rng = Random(seed + 1)
    redelivered = round(messages * _REDELIVERED_SHARE)
    first_sendings = messages - redelivered
    publish_times = sorted(rng.randrange(SPAN_US) for _ in range(first_sendings))
    message_number = rng.randrange(10**16, 2 * 10**16)
    lines: list[bytes] = []
    resendable: list[tuple[bytes, dict[str, str]]] = []
    counts = dict.fromkeys(("events", "profiles", "invalid", "resent", "batch_envelopes", "bare_entities"), 0)
    for publish_us in publish_times:
        message_number += rng.randrange(1, 5000)
        draw = rng.random()
        attributes: dict[str, str] = {}
        if draw < _INVALID_SHARE:
            data = generator.invalid(rng.choice(_INVALID_KINDS), publish_us)
            counts["invalid"] += 1
        elif draw < _INVALID_SHARE + _RESEND_SHARE and resendable:
            data, attributes = rng.choice(resendable[-50:])
            counts["resent"] += 1
        else:
            schema = PROFILE_SCHEMA if rng.random() < _PROFILE_SHARE else EXPERIENCE_EVENT_SCHEMA
            form = rng.random()
            if form < _BATCH_SHARE:
                if schema == PROFILE_SCHEMA:
                    entities = [generator.profile(publish_us) for _ in range(rng.randint(2, 5))]
                else:
                    entities = generator.session(publish_us)
                data = json_bytes({"messages": [envelope(schema, entity) for entity in entities]})
                counts["batch_envelopes"] += 1
            else:
                if schema == PROFILE_SCHEMA:
                    entities = [generator.profile(publish_us)]
                else:
                    person = generator.pick_person()
                    device = rng.choice(person.devices)
                    entities = [generator.event(person, device, generator.event_time(publish_us))]
                if form < _BATCH_SHARE + _BARE_SHARE:
                    data = json_bytes(entities[0])
                    attributes = {"schemaRef": schema}
                    counts["bare_entities"] += 1
                else:
                    data = json_bytes(envelope(schema, entities[0]))
                if schema == EXPERIENCE_EVENT_SCHEMA:
                    resendable.append((data, attributes))
            counts["profiles" if schema == PROFILE_SCHEMA else "events"] += len(entities)
        lines.append(_rest_line(data, attributes, str(message_number), publish_us))
    # Pub/Sub redelivers an unacknowledged message a little later, unchanged.
    copies: dict[int, list[bytes]] = {}
    for original in rng.sample(range(first_sendings), redelivered):
        position = min(original + rng.randint(3, 40), first_sendings - 1)
        copies.setdefault(position, []).append(lines[original])
    stream = []
    for position, line in enumerate(lines):
        stream.append(line)
        stream.extend(copies.get(position, []))
    return stream, SampleSummary(lines=len(stream), redelivered=redelivered, **counts)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--out", required=True, help="the JSONL file to write")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--people", type=int, default=300, help="number of people (default 300)")
    parser.add_argument("--messages", type=int, default=2500, help="number of lines (default 2500)")
    args = parser.parse_args(argv)
    lines, summary = generate_sample_stream(seed=args.seed, people=args.people, messages=args.messages)
    with open(args.out, "wb") as out:
        out.write(b"".join(line + b"\n" for line in lines))
    print(json.dumps(dataclasses.asdict(summary)), file=sys.stderr)


if __name__ == "__main__":
    main()
