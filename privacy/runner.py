"""Carrying out a privacy job: find the person through the identity graph, then erase or export them everywhere.

In: a :class:`~privacy.jobs.JobRequest` and the deployment's :class:`PrivacySettings`. Out: what the job's receipt
records (counts per store, lake files rewritten; for ``access``, where the export went).

Whom (:func:`find_subject`): each identity given is normalised as ingestion does; the identity store's facts of their
components, resolved by the linking rules, name their persons; the request then covers every identity of those
persons (an identity given that the graph does not know is covered too: the lake may hold it in failed records), every
person id they have had (the current ones and those a merge retired, from the profile store's redirects), and the ids
as given, for bytes that never decoded.

A delete erases, in this order, so that a run interrupted anywhere and run again ends as an uninterrupted one does:
the suppression list first (with ``suppress``: a running pipeline stops taking the person's new messages), then the
lake (every matching row, each file rewritten atomically), the profile store, and the identity store last, since the
graph is what finds the person again on a rerun; then the lake once more, for rows a running pipeline wrote meanwhile.
A dry run reads the same and changes nothing. An access writes to its folder: ``identities.json`` (the person's
identities and the links touching them, with first and last seen), ``profile.json`` (each person id's merged view),
``lake/<dataset>.parquet`` (their rows) and ``manifest.json`` (counts).
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from core.clock import EPOCH
from identity.graph import resolve
from identity.model import GraphFacts, Identity, LinkFact, Stamp
from identity.namespaces import extract_identities
from identity.stitching import StitchSettings
from privacy import lake as privacy_lake
from privacy.jobs import JobRequest, JobRequestError, PrivacySettings, privacy_store_path
from privacy.keys import identity_hashes
from privacy.lake import LakeMatcher
from privacy.subjects import Subject
from privacy.suppression import SuppressionList
from profiles.model import view_from_bytes
from stores import opening
from stores.identity import IdentityStore
from stores.profiles import ProfileStore


def normalised_identities(request: JobRequest, stitch: StitchSettings) -> list[Identity]:
    """The request's identities as ingestion normalises them; raises :class:`JobRequestError` when none can be (an
    identity that cannot be normalised is left out, as ingestion leaves it out of the graph)."""
    found = {
        identity
        for namespace, identity_id in request.identities
        for identity in _normalised(namespace, identity_id, stitch)
    }
    if not found:
        raise JobRequestError("none of the identities given is of a configured namespace and a usable id")
    return sorted(found)


def find_subject(
    request: JobRequest, identities: IdentityStore, profiles: ProfileStore, stitch: StitchSettings
) -> tuple[Subject, GraphFacts]:
    """The person(s) the request covers, and the facts of their components (see the module docstring)."""
    given = normalised_identities(request, stitch)
    facts = identities.facts_of(given)
    resolution = resolve(facts, stitch.graph)
    persons = {resolution.person_of[identity] for identity in given if identity in resolution.person_of}
    members = {identity for identity, person in resolution.person_of.items() if person in persons}
    person_ids = persons | profiles.retired_into(persons)
    subject = Subject(
        identities=frozenset(members | set(given)),
        person_ids=frozenset(person_ids),
        given=frozenset(identity_id.strip() for _, identity_id in request.identities),
    )
    return subject, facts


def run_job(job_id: str, request: JobRequest, settings: PrivacySettings, out_dir: str | None = None) -> dict[str, Any]:
    """Carries out the job; what its receipt records. ``out_dir`` is where an access writes (by default the
    settings' ``access_out`` / job id)."""
    identities = opening.open_identity_store(settings.identity_store)
    try:
        profiles = opening.open_profile_store(settings.profile_store)
        try:
            subject, facts = find_subject(request, identities, profiles, settings.stitch)
            matcher = LakeMatcher(subject, settings.stitch)
            if request.action == "access":
                folder = out_dir or os.path.join(settings.access_out, job_id)
                return _export(subject, facts, profiles, matcher, settings, folder)
            if request.dry_run:
                return _dry_run(subject, facts, profiles, matcher, settings)
            return _delete(job_id, request, subject, identities, profiles, matcher, settings)
        finally:
            profiles.close()
    finally:
        identities.close()


def _delete(
    job_id: str,
    request: JobRequest,
    subject: Subject,
    identities: IdentityStore,
    profiles: ProfileStore,
    matcher: LakeMatcher,
    settings: PrivacySettings,
) -> dict[str, Any]:
    suppressed = 0
    if request.suppress:
        suppression = SuppressionList(privacy_store_path(settings.privacy_store))
        try:
            suppressed = suppression.add(identity_hashes(settings.key, subject.identities), job_id)
        finally:
            suppression.close()
    first = privacy_lake.erase(settings.lake_dir, matcher)
    profile_counts = profiles.erase(subject.person_ids, subject.identity_keys)
    identity_counts = identities.erase(subject.identities)
    # Rows a running pipeline wrote while the stores still knew the person.
    second = privacy_lake.erase(settings.lake_dir, matcher)
    removed = {
        dataset: first.rows_removed.get(dataset, 0) + second.rows_removed.get(dataset, 0)
        for dataset in sorted({*first.rows_removed, *second.rows_removed})
    }
    counts = {
        "identity_store": identity_counts,
        "profile_store": profile_counts,
        "lake": removed,
        "lake_bytes_rewritten": first.bytes_rewritten + second.bytes_rewritten,
        "persons": len(subject.person_ids),
    }
    if request.suppress:
        counts["suppression_list"] = {"added": suppressed}
    return {"counts": counts, "files_rewritten": sorted({*first.files_rewritten, *second.files_rewritten})}


def _dry_run(
    subject: Subject, facts: GraphFacts, profiles: ProfileStore, matcher: LakeMatcher, settings: PrivacySettings
) -> dict[str, Any]:
    hits = privacy_lake.scan(settings.lake_dir, matcher)
    lake: dict[str, int] = {}
    for hit in hits:
        lake[hit.dataset] = lake.get(hit.dataset, 0) + hit.matched
    known, links, views = _held(subject, facts, profiles)
    counts = _counts(subject, known, links, views, lake)
    files = sorted(hit.path for hit in hits)
    return {"counts": counts, "would_rewrite": files}


def _export(
    subject: Subject,
    facts: GraphFacts,
    profiles: ProfileStore,
    matcher: LakeMatcher,
    settings: PrivacySettings,
    folder: str,
) -> dict[str, Any]:
    os.makedirs(folder, exist_ok=True)
    known, links, views = _held(subject, facts, profiles)
    identities = [
        {"namespace": identity.namespace, "id": identity.id, "first_seen": _rfc3339(facts.sightings[identity])}
        for identity in known
    ]
    exported_links = [
        {"a": str(link.a), "b": str(link.b), "first_seen": _rfc3339(link.first), "last_seen": _rfc3339(link.last)}
        for link in links
    ]
    _write_json(os.path.join(folder, "identities.json"), {"identities": identities, "links": exported_links})
    _write_json(os.path.join(folder, "profile.json"), {person: view_from_bytes(view) for person, view in views.items()})
    rows = privacy_lake.export(settings.lake_dir, matcher, os.path.join(folder, "lake"))
    counts = _counts(subject, known, links, views, rows)
    _write_json(os.path.join(folder, "manifest.json"), counts)
    return {"counts": counts, "out_dir": folder}


def _held(
    subject: Subject, facts: GraphFacts, profiles: ProfileStore
) -> tuple[list[Identity], list[LinkFact], dict[str, bytes]]:
    """What the stores hold of the subject, in order: the identities the graph has seen, the links touching them, and
    the stored view of each person id that has one."""
    known = sorted(identity for identity in subject.identities if identity in facts.sightings)
    links = [
        link for _, link in sorted(facts.links.items()) if link.a in subject.identities or link.b in subject.identities
    ]
    views = {
        person: view for person in sorted(subject.person_ids) if (view := profiles.view_by_person(person)) is not None
    }
    return known, links, views


def _counts(
    subject: Subject,
    known: Sequence[Identity],
    links: Sequence[LinkFact],
    views: Mapping[str, bytes],
    lake: Mapping[str, int],
) -> dict[str, Any]:
    """The counts of a dry run's or an access's receipt."""
    return {
        "identity_store": {"identities": len(known), "links": len(links)},
        "profile_store": {"views": len(views)},
        "lake": dict(sorted(lake.items())),
        "persons": len(subject.person_ids),
    }


def _normalised(namespace: str, identity_id: str, stitch: StitchSettings) -> Sequence[Identity]:
    entity = {"identityMap": {namespace: [{"id": identity_id}]}}
    return extract_identities(entity, stitch.namespaces, stitch.rules).identities


def _write_json(path: str, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as out:
        json.dump(value, out, ensure_ascii=False, indent=2, sort_keys=True)


def _rfc3339(stamp: Stamp) -> str:
    return (EPOCH + datetime.timedelta(microseconds=stamp.time_us)).isoformat().replace("+00:00", "Z")
