"""Profile model (profiles.model), without Beam: fragments, merge policies, views and identity changes."""

from __future__ import annotations

import collections
import dataclasses
import functools
import heapq
import json
from typing import Any, NamedTuple

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.clock import parse_rfc3339_us
from identity.graph import GraphRules, record_person, resolve
from identity.model import GraphFacts, Identity, Observation, Stamp
from identity.namespaces import EXPERIENCE_EVENT_CLASS, record_time_us
from profiles.model import (
    DEFAULT_LIMITS,
    DatasetPrecedence,
    DistinctCount,
    Fragment,
    MergePolicy,
    ProfileLimits,
    TimestampOrdered,
    apply,
    build_view,
    build_view_bytes,
    fragment_from_bytes,
    fragment_identity,
    fragment_to_bytes,
    merge_fragments,
    record_fragment,
    regroup,
    view_from_bytes,
    view_to_bytes,
)

PROFILE_CLASS = "https://ns.adobe.com/xdm/context/profile"
PROFILES = "profile_records"
CRM_EXPORT = "crm_export"
LOYALTY = "loyalty_records"
EVENTS = "experience_events"
RULES = GraphRules(
    unique_namespaces=frozenset({"CRMID"}),
    priority={"CRMID": 100, "Email": 80, "ECID": 10},
    quarantine_links=3,
)

ANN_CRM = Identity("CRMID", "CRM-ANN")
ANN_EMAIL = Identity("Email", "ann@example.com")
BOB_CRM = Identity("CRMID", "CRM-BOB")
KIOSK = Identity("ECID", "1" * 38)

MINUTE_US = 60_000_000
T0_US = parse_rfc3339_us("2026-11-01T09:00:00Z")
TIMESTAMP_ORDERED = TimestampOrdered()
PAGE_VIEW = "web.webpagedetails.pageViews"
CHECKOUT = "commerce.checkouts"

SAMPLE_PROFILE = {
    "_id": "523cb258-9d88-490b-9ac2-57f7f9ea4efb",
    "identityMap": {"CRMID": [{"id": "CRM-ANN", "authenticatedState": "authenticated", "primary": True}]},
    "person": {"name": {"firstName": "Ann", "lastName": "Lee"}},
    "personalEmail": {"address": "ann@example.com"},
    "homeAddress": {"city": "Paris", "countryCode": "FR"},
    "interests": ["jazz", "skiing"],
    "extSourceSystemAudit": {"lastUpdatedDate": "2026-11-01T09:01:00Z"},
    "repo:createDate": "2026-11-01T09:01:05Z",
    "createdByBatchID": "batch-7",
}
SAMPLE_EVENT = {
    "_id": "09918f4a-220f-4217-8751-ba45ec26621a",
    "timestamp": "2026-11-01T09:03:00Z",
    "eventType": PAGE_VIEW,
    "identityMap": {"ECID": [{"id": "1" * 38, "authenticatedState": "ambiguous", "primary": True}]},
    "web": {"webPageDetails": {"name": "help", "URL": "https://shop.example.com/help"}},
}


class Rec(NamedTuple):
    """A valid record as the stage hands it over: its fragment's identity and dataset, entity and message."""

    identity: Identity
    dataset: str
    entity: dict[str, Any]
    is_event: bool
    ingest_us: int = T0_US
    message_id: str = "m1"


def at(minute: int) -> str:
    return f"2026-11-01T09:{minute:02d}:00Z"


def profile(
    identity: Identity,
    updated: int | None,
    *,
    dataset: str = PROFILES,
    ingest_minute: int = 30,
    message: str = "m1",
    **fields: Any,
) -> Rec:
    audit = {} if updated is None else {"extSourceSystemAudit": {"lastUpdatedDate": at(updated)}}
    return Rec(identity, dataset, {**fields, **audit}, False, T0_US + ingest_minute * MINUTE_US, message)


def event(
    identity: Identity, event_id: str, minute: int, event_type: str = PAGE_VIEW, *, message: str = "m1", **fields: Any
) -> Rec:
    entity = {"_id": event_id, "timestamp": at(minute), "eventType": event_type, **fields}
    return Rec(identity, EVENTS, entity, True, T0_US + 30 * MINUTE_US, message)


def applied(fragment: Fragment, record: Rec, limits: ProfileLimits = DEFAULT_LIMITS) -> Fragment:
    schema = EXPERIENCE_EVENT_CLASS if record.is_event else PROFILE_CLASS
    return apply(
        fragment,
        record.entity,
        is_event=record.is_event,
        record_time_us=record_time_us(record.entity, schema, record.ingest_us),
        ingest_time_us=record.ingest_us,
        message_id=record.message_id,
        policy_limits=limits,
    )


def fragments_of(records: list[Rec], limits: ProfileLimits = DEFAULT_LIMITS) -> dict[str, Fragment]:
    """What the stage keeps: one fragment per (identity, dataset), every record applied in the order given."""
    fragments: dict[str, Fragment] = {}
    for record in records:
        key = f"{record.identity}|{record.dataset}"
        fragments[key] = applied(fragments.get(key) or Fragment(record.identity, record.dataset), record, limits)
    return fragments


def fragment_of(*records: Rec, limits: ProfileLimits = DEFAULT_LIMITS) -> Fragment:
    [fragment] = fragments_of(list(records), limits).values()
    return fragment


def view_of(*records: Rec, policy: MergePolicy = TIMESTAMP_ORDERED, **options: Any) -> dict[str, Any]:
    fragments = fragments_of(list(records)).values()
    return build_view("p-ann", {fragment.identity for fragment in fragments}, fragments, policy, **options)


def as_bytes(fragments: dict[str, Fragment]) -> dict[str, bytes]:
    return {key: fragment_to_bytes(fragment) for key, fragment in fragments.items()}


# Fragment identity


def test_a_records_fragment_identity_is_its_highest_priority_identity():
    assert fragment_identity([KIOSK, ANN_EMAIL, ANN_CRM], RULES) == ANN_CRM


def test_a_record_without_identities_has_no_fragment_identity():
    assert fragment_identity([], RULES) is None


def test_the_fragment_identity_belongs_to_the_records_person_when_its_identities_are_apart():
    # Two CRM ids cannot share a graph, so this record's identities end in two persons; ties of priority go by id.
    identities = [BOB_CRM, ANN_CRM]
    graph = resolve(GraphFacts.empty().merged_with([Observation(tuple(identities), Stamp(T0_US, "m1"))]), RULES)

    assert graph.person_of[fragment_identity(identities, RULES)] == record_person(identities, graph, RULES)


# Attributes


def test_a_profile_records_leaves_become_dot_paths_and_arrays_stay_whole():
    fragment = fragment_of(Rec(ANN_CRM, PROFILES, SAMPLE_PROFILE, False))

    assert {path: attribute.value for path, attribute in fragment.attributes.items()} == {
        "person.name.firstName": "Ann",
        "person.name.lastName": "Lee",
        "personalEmail.address": "ann@example.com",
        "homeAddress.city": "Paris",
        "homeAddress.countryCode": "FR",
        "interests": ["jazz", "skiing"],
        "extSourceSystemAudit.lastUpdatedDate": "2026-11-01T09:01:00Z",
    }


def test_identities_record_ids_and_lineage_are_not_attributes():
    fragment = fragment_of(Rec(ANN_CRM, PROFILES, SAMPLE_PROFILE, False))

    assert not {"_id", "identityMap", "repo:createDate", "createdByBatchID"} & {
        path.split(".")[0] for path in fragment.attributes
    }


def test_names_holding_dots_come_back_whole_in_the_view():
    consents = {"idSpecific": {"Email": {"ann.lee@example.com": {"marketing": {"val": "y"}}}}}

    view = view_of(profile(ANN_EMAIL, 1, consents=consents))

    assert view["attributes"]["consents"] == consents


def test_events_set_no_attributes():
    assert fragment_of(event(KIOSK, "e1", 1, web={"webPageDetails": {"name": "home"}})).attributes == {}


# Timestamp-ordered merge


def test_a_late_record_with_an_older_update_time_never_overwrites_a_newer_value():
    newer = profile(ANN_CRM, 5, ingest_minute=6, message="m1", person={"name": {"firstName": "Anna"}})
    late_older = profile(ANN_CRM, 2, ingest_minute=40, message="m2", person={"name": {"firstName": "Ann"}})

    assert view_of(newer, late_older)["attributes"] == {
        "person": {"name": {"firstName": "Anna"}},
        "extSourceSystemAudit": {"lastUpdatedDate": at(5)},
    }


def test_a_newer_record_replaces_only_the_fields_it_holds():
    first = profile(ANN_CRM, 1, homeAddress={"city": "Paris", "countryCode": "FR"})
    moved = profile(ANN_CRM, 2, homeAddress={"city": "Lyon"})

    assert view_of(first, moved)["attributes"]["homeAddress"] == {"city": "Lyon", "countryCode": "FR"}


def test_equal_record_times_are_ordered_by_ingestion_time():
    later = profile(ANN_CRM, 1, ingest_minute=20, message="m1", loyalty={"tier": "gold"})
    earlier = profile(ANN_CRM, 1, ingest_minute=10, message="m2", loyalty={"tier": "silver"})

    assert view_of(later, earlier)["attributes"]["loyalty"] == {"tier": "gold"}


def test_equal_record_and_ingestion_times_are_ordered_by_message_id():
    higher = profile(ANN_CRM, 1, message="m2", loyalty={"tier": "gold"})
    lower = profile(ANN_CRM, 1, message="m1", loyalty={"tier": "silver"})

    assert view_of(higher, lower)["attributes"]["loyalty"] == {"tier": "gold"}


def test_equal_stamps_give_the_same_value_in_either_order():
    # Two entities of one batch message share every part of the stamp.
    gold = profile(ANN_CRM, 1, message="batch", loyalty={"tier": "gold"})
    silver = profile(ANN_CRM, 1, message="batch", loyalty={"tier": "silver"})

    assert view_of(gold, silver)["attributes"] == view_of(silver, gold)["attributes"]


def test_timestamp_ordered_takes_the_newest_value_across_datasets():
    crm = profile(ANN_CRM, 4, dataset=CRM_EXPORT, loyalty={"tier": "gold"})
    web = profile(ANN_EMAIL, 2, loyalty={"tier": "silver"})

    assert view_of(web, crm)["attributes"]["loyalty"] == {"tier": "gold"}


def test_the_preferred_value_wins_where_another_fragment_holds_an_object():
    # A field whose type changed between sources: the newer shape wins whole, the older is left out.
    old_object = profile(ANN_CRM, 1, loyalty={"tier": {"name": "gold"}})
    new_value = profile(ANN_EMAIL, 2, loyalty={"tier": "silver"})

    assert view_of(old_object, new_value)["attributes"]["loyalty"] == {"tier": "silver"}


def test_the_preferred_object_wins_where_another_fragment_holds_a_value():
    old_value = profile(ANN_CRM, 1, loyalty={"tier": "silver"})
    new_object = profile(ANN_EMAIL, 2, loyalty={"tier": {"name": "gold"}})

    assert view_of(old_value, new_object)["attributes"]["loyalty"] == {"tier": {"name": "gold"}}


# Dataset precedence


def test_dataset_precedence_takes_the_first_listed_dataset_even_when_older():
    crm = profile(ANN_CRM, 1, dataset=CRM_EXPORT, loyalty={"tier": "gold"})
    web = profile(ANN_EMAIL, 9, loyalty={"tier": "silver"})

    view = view_of(web, crm, policy=DatasetPrecedence((CRM_EXPORT, PROFILES)))

    assert view["attributes"]["loyalty"] == {"tier": "gold"}


def test_dataset_precedence_falls_through_to_a_dataset_that_has_the_path():
    crm = profile(ANN_CRM, 1, dataset=CRM_EXPORT, loyalty={"tier": "gold"})
    web = profile(ANN_EMAIL, 9, homeAddress={"city": "Lyon"})

    view = view_of(web, crm, policy=DatasetPrecedence((CRM_EXPORT, PROFILES)))

    assert view["attributes"]["homeAddress"] == {"city": "Lyon"}


def test_unlisted_datasets_come_after_the_listed_ones_and_by_stamp_among_themselves():
    listed = profile(ANN_CRM, 1, dataset=CRM_EXPORT, loyalty={"tier": "gold"}, person={"name": {"firstName": "A"}})
    newest = profile(ANN_EMAIL, 9, dataset=LOYALTY, loyalty={"tier": "platinum"}, homeAddress={"city": "Nice"})
    older = profile(ANN_EMAIL, 5, homeAddress={"city": "Lyon"})

    view = view_of(older, newest, listed, policy=DatasetPrecedence((CRM_EXPORT,)))

    assert (view["attributes"]["loyalty"], view["attributes"]["homeAddress"]) == ({"tier": "gold"}, {"city": "Nice"})


# Events


def test_events_are_deduplicated_on_id():
    resent = [event(KIOSK, "e1", 1, message="m1"), event(KIOSK, "e1", 1, message="m9"), event(KIOSK, "e2", 2)]

    assert view_of(*resent)["events"]["count"] == 2


def test_by_type_counts_the_events_of_each_type():
    events = [event(KIOSK, "e1", 1), event(KIOSK, "e2", 2, CHECKOUT), event(KIOSK, "e3", 3)]

    assert view_of(*events)["events"]["by_type"] == {CHECKOUT: 1, PAGE_VIEW: 2}


def test_an_event_without_a_type_counts_under_the_empty_name():
    untyped = Rec(KIOSK, EVENTS, {"_id": "e1", "timestamp": at(1)}, True)

    assert view_of(untyped)["events"]["by_type"] == {"": 1}


def test_first_and_last_seen_are_the_earliest_and_latest_timestamps_in_rfc3339():
    events = view_of(event(KIOSK, "e2", 7), event(KIOSK, "e1", 2), event(KIOSK, "e3", 4))["events"]

    assert (events["first_seen"], events["last_seen"]) == ("2026-11-01T09:02:00Z", "2026-11-01T09:07:00Z")


def test_a_person_without_events_has_an_empty_summary():
    assert view_of(profile(ANN_CRM, 1, loyalty={"tier": "gold"}))["events"] == {
        "count": 0,
        "first_seen": None,
        "last_seen": None,
        "by_type": {},
        "recent": [],
    }


def test_recent_holds_the_newest_event_bodies_first_up_to_the_limit():
    events = [event(KIOSK, f"e-{name}", minute) for name, minute in (("a", 3), ("d", 1), ("b", 4), ("c", 2))]

    recent = view_of(*events, recent_limit=2)["events"]["recent"]

    assert recent == [events[2].entity, events[0].entity]


def test_recent_events_of_one_time_are_ordered_by_id():
    events = [event(KIOSK, "e-a", 1), event(KIOSK, "e-b", 1)]

    assert [body["_id"] for body in view_of(*events)["events"]["recent"]] == ["e-b", "e-a"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([KIOSK, ANN_EMAIL]), st.integers(0, 4), st.sampled_from([PAGE_VIEW, CHECKOUT, ""])),
        max_size=12,
    ),
    st.integers(0, 8),
)
def test_recent_and_by_type_are_what_ranking_and_counting_every_event_give(
    draws: list[tuple[Identity, int, str]], limit: int
) -> None:
    events = [event(identity, f"e{n}", minute, event_type) for n, (identity, minute, event_type) in enumerate(draws)]

    summary = view_of(*events, recent_limit=limit)["events"]

    newest = heapq.nlargest(limit, events, key=lambda record: (record.entity["timestamp"], record.entity["_id"]))
    counts = collections.Counter(record.entity["eventType"] for record in events)
    assert summary["recent"] == [record.entity for record in newest]
    assert summary["by_type"] == dict(sorted(counts.items()))


def test_a_fragment_keeps_only_its_recent_limit_of_bodies():
    limits = ProfileLimits(recent_events=2)

    fragment = fragment_of(*(event(KIOSK, f"e{minute}", minute) for minute in (3, 1, 4, 2)), limits=limits)

    assert (sorted(fragment.recent), len(fragment.events)) == (["e3", "e4"], 4)


def test_recent_leaves_out_events_older_than_the_ttl():
    events = [event(KIOSK, "e1", 1), event(KIOSK, "e5", 5), event(KIOSK, "e9", 9)]

    summary = view_of(*events, now_us=T0_US + 10 * MINUTE_US, event_ttl_us=5 * MINUTE_US)["events"]

    assert ([body["_id"] for body in summary["recent"]], summary["count"]) == (["e9", "e5"], 3)


def test_now_and_ttl_go_together():
    with pytest.raises(ValueError):
        view_of(event(KIOSK, "e1", 1), now_us=T0_US)


def test_copies_of_one_id_that_differ_keep_the_latest_in_either_order():
    early = event(KIOSK, "e1", 1, web={"webPageDetails": {"name": "home"}})
    late = event(KIOSK, "e1", 6, CHECKOUT, web={"webPageDetails": {"name": "cart"}})

    assert view_of(early, late)["events"] == view_of(late, early)["events"]
    assert view_of(early, late)["events"]["recent"] == [late.entity]


def test_one_event_in_two_fragments_counts_once_in_the_view():
    view = view_of(event(KIOSK, "e1", 1), event(ANN_EMAIL, "e1", 1), event(ANN_EMAIL, "e2", 2))

    assert (view["events"]["count"], len(view["events"]["recent"])) == (2, 2)


# Guardrails


def test_an_oversize_event_keeps_its_summary_and_a_stub_and_is_counted():
    big = event(KIOSK, "e1", 1, web={"webPageDetails": {"name": "x" * 11_000}})

    fragment = fragment_of(big)

    assert fragment.recent == {"e1": {"_id": "e1", "timestamp": at(1), "eventType": PAGE_VIEW}}
    assert (view_of(big)["events"]["count"], fragment.oversize_events.estimate()) == (1, 1)


def test_an_event_of_exactly_the_limit_keeps_its_body():
    body = {"_id": "e1", "timestamp": at(1), "web": ""}
    body["web"] = "x" * (10 * 1024 - len(json.dumps(body, separators=(",", ":"))))

    assert fragment_of(Rec(KIOSK, EVENTS, body, True)).recent == {"e1": body}


def test_an_oversize_record_sets_no_attributes_and_is_counted():
    big = profile(ANN_CRM, 1, _tenant={"notes": "x" * 103_000})

    fragment = fragment_of(big)

    assert (fragment.attributes, fragment.oversize_records.estimate()) == ({}, 1)


def test_oversize_records_of_one_batch_message_count_apart():
    first = profile(ANN_CRM, 1, message="batch", _tenant={"notes": "x" * 103_000})
    second = profile(ANN_CRM, 1, message="batch", _tenant={"notes": "y" * 103_000})

    assert fragment_of(first, second, first).oversize_records.estimate() == 2


def test_beyond_max_events_the_most_recent_are_kept_and_the_cut_counted():
    limits = ProfileLimits(max_events=3, recent_events=2)

    names = {5: "a", 1: "e", 4: "b", 2: "d", 3: "c"}  # ids in the reverse order of time

    fragment = fragment_of(*(event(KIOSK, f"e-{names[minute]}", minute) for minute in names), limits=limits)

    assert (sorted(fragment.events), fragment.events_dropped.estimate()) == (["e-a", "e-b", "e-c"], 2)


def test_beyond_max_events_the_view_counts_the_cut_but_types_only_the_kept():
    limits = ProfileLimits(max_events=3, recent_events=2)
    fragment = fragment_of(*(event(KIOSK, f"e{minute}", minute) for minute in (5, 1, 4, 2, 3)), limits=limits)

    summary = build_view("p-kiosk", [KIOSK], [fragment], TIMESTAMP_ORDERED)["events"]

    assert (summary["count"], summary["by_type"], summary["first_seen"]) == (5, {PAGE_VIEW: 3}, at(1))


def test_a_replayed_cut_event_is_not_counted_again():
    limits = ProfileLimits(max_events=2, recent_events=1)
    events = [event(KIOSK, f"e{minute}", minute) for minute in (1, 2, 3)]

    replayed = fragment_of(*events, events[0], limits=limits)

    assert replayed.events_dropped.estimate() == 1


def test_a_distinct_count_is_exact_below_256_keys():
    assert DistinctCount.of(f"event-{n}" for n in range(255)).estimate() == 255


def test_a_distinct_count_counts_a_key_in_both_sides_of_a_union_once():
    left = DistinctCount.of(["e1", "e2", "e3"])

    assert left.union(DistinctCount.of(["e3", "e4"])).estimate() == 4


def test_a_distinct_count_estimates_large_counts_without_bias():
    # One estimate errs by about 6% (1/sqrt(254)); the mean of twenty by about 1.3%, so 4% is three of those.
    estimates = [DistinctCount.of(f"set{s}-event-{n}" for n in range(5_000)).estimate() for s in range(20)]

    assert sum(estimates) / len(estimates) == pytest.approx(5_000, rel=0.04)


def test_limits_keep_recent_bodies_among_the_kept_events():
    with pytest.raises(ValueError):
        ProfileLimits(max_events=10, recent_events=11)


# Following identity changes

ANN_PROFILE = profile(ANN_CRM, 1, loyalty={"tier": "gold"}, person={"name": {"firstName": "Ann"}})
ANN_NEWSLETTER = profile(ANN_EMAIL, 2, dataset=LOYALTY, preferences={"newsletter": True})
KIOSK_VISIT = event(KIOSK, "e1", 3, web={"webPageDetails": {"name": "home"}})
KIOSK_PROFILE = profile(KIOSK, 4, environment={"browser": "Safari"})
BOB_PROFILE = profile(BOB_CRM, 1, loyalty={"tier": "bronze"})
STORY_FRAGMENTS = fragments_of([ANN_PROFILE, ANN_NEWSLETTER, KIOSK_VISIT, KIOSK_PROFILE, BOB_PROFILE])


def graph(*observations: tuple[int, tuple[Identity, ...]]):
    facts = GraphFacts.empty().merged_with(
        Observation(identities, Stamp(T0_US + minute * MINUTE_US, f"m{minute}")) for minute, identities in observations
    )
    return resolve(facts, RULES)


def views(persons: dict[str, list[Fragment]]) -> dict[str, bytes]:
    return {
        person: view_to_bytes(build_view(person, {f.identity for f in fragments}, fragments, TIMESTAMP_ORDERED))
        for person, fragments in persons.items()
    }


APART = ((1, (ANN_CRM, ANN_EMAIL)), (3, (KIOSK,)), (1, (BOB_CRM,)))
ANN_AT_THE_KIOSK = (5, (KIOSK, ANN_CRM))
KIOSK_HUB = tuple((6, (KIOSK, Identity("CRMID", f"CRM-{n}"))) for n in range(3))


def test_merged_persons_fold_their_fragments_into_one_view():
    merged = graph(*APART, ANN_AT_THE_KIOSK)

    ann = regroup(STORY_FRAGMENTS, merged.person_of)[merged.person_of[ANN_CRM]]
    view = build_view("p-ann", {ANN_CRM, ANN_EMAIL, KIOSK}, ann, TIMESTAMP_ORDERED)

    assert (view["attributes"]["environment"], view["attributes"]["loyalty"], view["events"]["count"]) == (
        {"browser": "Safari"},
        {"tier": "gold"},
        1,
    )


def test_a_split_gives_each_side_exactly_its_fragments_back():
    before = regroup(STORY_FRAGMENTS, graph(*APART).person_of)

    # The kiosk then links to more users than the rules allow in an hour: it is quarantined and stands alone again.
    after = regroup(STORY_FRAGMENTS, graph(*APART, ANN_AT_THE_KIOSK, *KIOSK_HUB).person_of)

    assert after == before


def test_a_split_gives_each_side_its_view_back():
    before = views(regroup(STORY_FRAGMENTS, graph(*APART).person_of))
    merged = views(regroup(STORY_FRAGMENTS, graph(*APART, ANN_AT_THE_KIOSK).person_of))

    after = views(regroup(STORY_FRAGMENTS, graph(*APART, ANN_AT_THE_KIOSK, *KIOSK_HUB).person_of))

    assert (len(merged), after) == (2, before)


def test_a_shared_device_takes_its_fragments_to_its_last_user():
    shared = graph(*APART, ANN_AT_THE_KIOSK, (8, (KIOSK, BOB_CRM)))

    persons = regroup(STORY_FRAGMENTS, shared.person_of)

    assert {person: [fragment.identity for fragment in fragments] for person, fragments in persons.items()} == {
        shared.person_of[ANN_CRM]: [ANN_CRM, ANN_EMAIL],
        shared.person_of[BOB_CRM]: [BOB_CRM, KIOSK, KIOSK],
    }


# JSON


def test_a_fragment_survives_its_json_round_trip():
    fragment = fragment_of(
        Rec(ANN_CRM, PROFILES, SAMPLE_PROFILE, False),
        Rec(ANN_CRM, PROFILES, SAMPLE_EVENT, True),
        event(ANN_CRM, "e-big", 4, web={"webPageDetails": {"name": "x" * 11_000}})._replace(dataset=PROFILES),
        profile(ANN_CRM, 1, _tenant={"notes": "x" * 103_000}),
        limits=ProfileLimits(max_events=1, recent_events=1),
    )

    assert fragment_from_bytes(fragment_to_bytes(fragment)) == fragment


def test_fragment_bytes_are_compact_json_with_sorted_keys():
    fragment = fragment_of(
        profile(ANN_EMAIL, None, ingest_minute=0, message="m1", loyalty={"tier": "gold"}),
        Rec(ANN_EMAIL, PROFILES, {"_id": "e1", "timestamp": at(1), "eventType": CHECKOUT}, True, T0_US, "m2"),
    )

    assert fragment_to_bytes(fragment) == (
        b'{"attributes":{"loyalty.tier":["gold",1793523600000000,1793523600000000,"m1"]},"dataset":"profile_records",'
        b'"events":{"e1":["commerce.checkouts",1793523660000000]},"events_dropped":[],'
        b'"first_seen_us":1793523660000000,"identity":{"id":"ann@example.com","namespace":"Email"},'
        b'"oversize_events":[],"oversize_records":[],'
        b'"recent":{"e1":{"_id":"e1","eventType":"commerce.checkouts","timestamp":"2026-11-01T09:01:00Z"}}}'
    )


def test_a_view_has_exactly_the_profile_get_shape_without_lookup():
    view = view_of(profile(ANN_CRM, 1, loyalty={"tier": "gold"}), event(ANN_CRM, "e1", 2))

    assert (list(view), list(view["events"]), view["identities"]) == (
        ["person_id", "identities", "attributes", "events"],
        ["count", "first_seen", "last_seen", "by_type", "recent"],
        [{"namespace": "CRMID", "id": "CRM-ANN"}],
    )


def test_a_view_lists_the_persons_identities_in_order():
    view = build_view("p-ann", [KIOSK, ANN_EMAIL, ANN_CRM, ANN_EMAIL], [], TIMESTAMP_ORDERED)

    assert view["identities"] == [
        {"namespace": "CRMID", "id": "CRM-ANN"},
        {"namespace": "ECID", "id": "1" * 38},
        {"namespace": "Email", "id": "ann@example.com"},
    ]


def test_a_view_survives_its_json_round_trip():
    view = view_of(Rec(ANN_CRM, PROFILES, SAMPLE_PROFILE, False), Rec(ANN_CRM, EVENTS, SAMPLE_EVENT, True))

    assert view_from_bytes(view_to_bytes(view)) == view


def test_fragments_of_different_keys_do_not_merge():
    with pytest.raises(ValueError):
        merge_fragments(Fragment(ANN_CRM, PROFILES), Fragment(ANN_CRM, LOYALTY))


# Properties

TIGHT = ProfileLimits(max_events=3, recent_events=2, max_event_bytes=300, max_record_bytes=400)
profile_fields = st.fixed_dictionaries(
    {},
    optional={
        "person": st.fixed_dictionaries(
            {"name": st.fixed_dictionaries({"firstName": st.sampled_from(["Ann", "Anna"])})}
        ),
        "homeAddress": st.fixed_dictionaries(
            {}, optional={"city": st.sampled_from(["Paris", "Lyon"]), "countryCode": st.just("FR")}
        ),
        "interests": st.lists(st.sampled_from(["jazz", "skiing"]), min_size=1, max_size=2),
        "loyalty": st.fixed_dictionaries({"tier": st.sampled_from(["gold", {"name": "silver"}])}),
        "_tenant": st.fixed_dictionaries({"notes": st.just("x" * 500)}),  # over TIGHT's record limit
    },
)
profile_records = st.builds(
    lambda identity, dataset, updated, ingest, message, fields: profile(
        identity, updated, dataset=dataset, ingest_minute=ingest, message=f"m{message}", **fields
    ),
    st.sampled_from([ANN_CRM, ANN_EMAIL]),
    st.sampled_from([PROFILES, CRM_EXPORT]),
    st.one_of(st.none(), st.integers(0, 1)),
    st.integers(0, 1),
    st.integers(0, 1),  # few stamps, so that equal stamps with different values are common
    profile_fields,
)


def _replayable_event(identity: Identity, number: int, message: int) -> Rec:
    # An event's content depends on its id alone, as in a replay: every copy of one _id is the same.
    fields = {"web": {"webPageDetails": {"name": "x" * 400}}} if number == 6 else {}
    return event(
        identity, f"e{number}", number * 7 % 5, [PAGE_VIEW, CHECKOUT, "x"][number % 3], message=f"m{message}", **fields
    )


replayable_events = st.builds(
    _replayable_event, st.sampled_from([ANN_EMAIL, KIOSK]), st.integers(0, 6), st.integers(0, 3)
)
conflicting_events = st.builds(
    lambda identity, number, minute, event_type, page: event(
        identity, f"e{number}", minute, event_type, web={"webPageDetails": {"name": page}}
    ),
    st.sampled_from([ANN_EMAIL, KIOSK]),
    st.integers(0, 3),
    st.integers(0, 3),
    st.sampled_from([PAGE_VIEW, CHECKOUT]),
    st.sampled_from(["home", "cart"]),
)
replayable_records = st.lists(st.one_of(profile_records, replayable_events), max_size=14)
one_key_records = st.lists(
    st.one_of(profile_records, replayable_events).map(
        lambda record: record._replace(identity=ANN_EMAIL, dataset=PROFILES)
    ),
    max_size=8,
)
POLICIES = (TimestampOrdered(), DatasetPrecedence((CRM_EXPORT,)))
# Whole pipelines of records per example: a busy shared machine must not fail them on time.
PROPERTY_SETTINGS = settings(deadline=None)


def all_views(fragments: dict[str, Fragment]) -> list[bytes]:
    identities = {fragment.identity for fragment in fragments.values()}
    return [
        view_to_bytes(build_view("p-ann", identities, fragments.values(), policy, recent_limit=2))
        for policy in POLICIES
    ]


@PROPERTY_SETTINGS
@given(replayable_records, st.data())
def test_any_order_of_the_records_gives_the_same_fragments_and_views(records, data):
    shuffled = data.draw(st.permutations(records))

    ordered, reordered = fragments_of(records, TIGHT), fragments_of(shuffled, TIGHT)

    assert (as_bytes(reordered), all_views(reordered)) == (as_bytes(ordered), all_views(ordered))


@PROPERTY_SETTINGS
@given(st.lists(st.one_of(profile_records, conflicting_events), max_size=14), st.data())
def test_any_order_gives_the_same_fragments_when_copies_of_an_event_differ(records, data):
    shuffled = data.draw(st.permutations(records))

    assert as_bytes(fragments_of(shuffled)) == as_bytes(fragments_of(records))


@PROPERTY_SETTINGS
@given(st.lists(st.one_of(profile_records, replayable_events, conflicting_events), max_size=14))
def test_applying_the_input_twice_gives_the_same_bytes_as_once(records):
    assert as_bytes(fragments_of(records + records, TIGHT)) == as_bytes(fragments_of(records, TIGHT))


@PROPERTY_SETTINGS
@given(replayable_records, st.integers(0, 14))
def test_fragments_built_in_parts_and_merged_equal_one_built_from_all(records, cut):
    first, second = fragments_of(records[:cut], TIGHT), fragments_of(records[cut:], TIGHT)

    merged = {
        key: merge_fragments(first[key], second[key], policy_limits=TIGHT)
        if key in first and key in second
        else first.get(key) or second[key]
        for key in first.keys() | second.keys()
    }

    assert as_bytes(merged) == as_bytes(fragments_of(records, TIGHT))


def one_key_fragment(records: list[Rec]) -> Fragment:
    return fragments_of(records, TIGHT).get(f"{ANN_EMAIL}|{PROFILES}") or Fragment(ANN_EMAIL, PROFILES)


def merged(a: Fragment, b: Fragment) -> Fragment:
    return merge_fragments(a, b, policy_limits=TIGHT)


@PROPERTY_SETTINGS
@given(one_key_records, one_key_records)
def test_merging_fragments_is_commutative(left, right):
    a, b = one_key_fragment(left), one_key_fragment(right)

    assert fragment_to_bytes(merged(a, b)) == fragment_to_bytes(merged(b, a))


@PROPERTY_SETTINGS
@given(one_key_records, one_key_records, one_key_records)
def test_merging_fragments_is_associative(left, middle, right):
    a, b, c = one_key_fragment(left), one_key_fragment(middle), one_key_fragment(right)

    assert fragment_to_bytes(merged(merged(a, b), c)) == fragment_to_bytes(merged(a, merged(b, c)))


@PROPERTY_SETTINGS
@given(one_key_records)
def test_merging_a_fragment_with_itself_changes_nothing(records):
    a = one_key_fragment(records)

    assert fragment_to_bytes(merged(a, a)) == fragment_to_bytes(a)


NO_BODIES = ProfileLimits(max_events=3, recent_events=0)


@PROPERTY_SETTINGS
@given(st.one_of(profile_records, replayable_events, conflicting_events), st.sampled_from([TIGHT, NO_BODIES]))
def test_a_record_s_own_fragment_is_the_record_applied_to_an_empty_one(record, limits):
    schema = EXPERIENCE_EVENT_CLASS if record.is_event else PROFILE_CLASS
    own = record_fragment(
        record.identity,
        record.dataset,
        record.entity,
        is_event=record.is_event,
        record_time_us=record_time_us(record.entity, schema, record.ingest_us),
        ingest_time_us=record.ingest_us,
        message_id=record.message_id,
        policy_limits=limits,
    )

    assert fragment_to_bytes(own) == fragment_to_bytes(
        applied(Fragment(record.identity, record.dataset), record, limits)
    )


# Records split in two batches at a drawn point, under limits that cut events and bodies or not.
two_batches_of_records = given(
    st.lists(st.one_of(profile_records, replayable_events, conflicting_events), max_size=14),
    st.integers(0, 14),
    st.sampled_from([TIGHT, NO_BODIES, DEFAULT_LIMITS]),
)


def without_known_json(fragment: Fragment) -> Fragment:
    return dataclasses.replace(fragment, recent_json={})


@PROPERTY_SETTINGS
@two_batches_of_records
def test_the_json_fragments_keep_of_their_bodies_gives_the_bytes_of_encoding_them(records, cut, limits):
    first, second = fragments_of(records[:cut], limits), fragments_of(records[cut:], limits)
    # Merged in both orders, and with one side read back from its bytes, as the writer's cache and store give them.
    merged = [
        merge_fragments(first[key], second[key], policy_limits=limits)
        if key in first and key in second
        else first.get(key) or second[key]
        for key in first.keys() | second.keys()
    ] + [
        merge_fragments(second[key], fragment_from_bytes(fragment_to_bytes(first[key])), policy_limits=limits)
        for key in first.keys() & second.keys()
    ]

    for fragment in merged:
        assert fragment.recent_json == {
            event_id: orjson.dumps(fragment.recent[event_id], option=orjson.OPT_SORT_KEYS)
            for event_id in fragment.recent_json
        }
        assert fragment_to_bytes(fragment) == fragment_to_bytes(without_known_json(fragment))
    identities = {fragment.identity for fragment in merged}
    for policy in POLICIES:
        plain = build_view("p-ann", identities, map(without_known_json, merged), policy, recent_limit=3)
        assert build_view_bytes("p-ann", identities, merged, policy, recent_limit=3) == view_to_bytes(plain)


def with_plain_bodies(fragment: Fragment) -> Fragment:
    """The fragment with its bodies read out as objects, and without their JSON, so that encoding it encodes them."""
    return dataclasses.replace(fragment, recent=dict(fragment.recent.items()), recent_json={})


@PROPERTY_SETTINGS
@two_batches_of_records
def test_bodies_held_as_their_json_merge_encode_and_view_as_the_bodies_themselves(records, cut, limits):
    first, second = fragments_of(records[:cut], limits), fragments_of(records[cut:], limits)

    def merged_all(fragments: list[Fragment]) -> Fragment:
        return functools.reduce(lambda a, b: merge_fragments(a, b, policy_limits=limits), fragments)

    stub_names = ("_id", "timestamp", "eventType")
    bodies = [record.entity for record in records if record.is_event]
    bodies += [{name: body[name] for name in stub_names if name in body} for body in bodies]
    for key in first.keys() | second.keys():
        sides = [side[key] for side in (first, second) if key in side]
        merged = merged_all(sides)
        assert all(body in bodies for body in merged.recent.values())
        # Merged from bodies held as objects, and the merge's bodies read out as objects.
        same = [merged_all([with_plain_bodies(side) for side in sides]), with_plain_bodies(merged)]
        assert all(fragment == merged for fragment in same)
        assert all(fragment_to_bytes(fragment) == fragment_to_bytes(merged) for fragment in same)
        for policy in POLICIES:
            views = {build_view_bytes("p-ann", [merged.identity], [one], policy) for one in (merged, *same)}
            assert len(views) == 1


def test_a_merge_that_takes_the_other_copy_s_body_of_an_event_takes_its_json():
    home, cart = (event(ANN_EMAIL, "e1", 1, web={"webPageDetails": {"name": page}}) for page in ("home", "cart"))
    a, b = fragment_of(home), fragment_of(cart)

    for merged_fragment in (merge_fragments(a, b), merge_fragments(b, a)):
        assert merged_fragment.recent_json == {
            "e1": orjson.dumps(merged_fragment.recent["e1"], option=orjson.OPT_SORT_KEYS)
        }
        assert build_view_bytes("p-ann", [ANN_EMAIL], [merged_fragment], TIMESTAMP_ORDERED) == view_to_bytes(
            build_view("p-ann", [ANN_EMAIL], [without_known_json(merged_fragment)], TIMESTAMP_ORDERED)
        )
    assert build_view_bytes("p-ann", [ANN_EMAIL], [a, b], TIMESTAMP_ORDERED) == view_to_bytes(
        build_view("p-ann", [ANN_EMAIL], [without_known_json(a), without_known_json(b)], TIMESTAMP_ORDERED)
    )
