"""Linking rules: from the facts about some identities to the persons they form, as plain Python.

:func:`resolve` takes :class:`~identity.model.GraphFacts` and :class:`GraphRules` and returns a
:class:`Resolution`: the person of every identity, the identities in quarantine and the links the rules removed.
It depends only on the facts, never on the order they arrived in, so every runner, every parallelism and every
replay builds the same graph. :func:`changes` compares two resolutions and names what happened between them.

The rules, applied in this order (README, "Linking rules, in order"): **quarantine** of an identity whose links reach
``quarantine_links`` (50) distinct other identities first seen within one ``quarantine_window_us`` (an hour of record
time): its links are ignored and it stands alone; **links, most recent first** by their latest observation (ties: the
higher namespace priority, then the identities' order), each joining two groups unless that would put two identities
of one *unique* namespace into one group or make a group larger than ``max_identities`` (50): such a link is removed;
**persons**: each group is one, named ``p-`` and 24 hex digits of the SHA-256 of its *anchor*, the identity seen first
(earliest sighting, then the highest namespace priority, then namespace and id).

Why the most recent link wins and persons are named by their anchor:
docs/decisions/0026-persons-are-named-by-their-anchor.md.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping

from identity.model import GraphFacts, Identity, IdentityChange, LinkFact, Stamp
from identity.namespaces import QUARANTINED

UNIQUE_NAMESPACE = "unique_namespace"
GRAPH_LIMIT = "graph_limit"
ANCHOR = "anchor"
PERSON_ID_CACHE_SIZE = 65_536


@dataclasses.dataclass(frozen=True)
class GraphRules:
    """The linking rules' settings; ``priority`` maps namespace codes to their priority (higher wins)."""

    unique_namespaces: frozenset[str] = frozenset({"CRMID"})
    priority: Mapping[str, int] = dataclasses.field(default_factory=dict)
    max_identities: int = 50
    quarantine_links: int = 50
    quarantine_window_us: int = 3600 * 1_000_000


@dataclasses.dataclass(frozen=True)
class Resolution:
    """Persons by identity, the quarantined identities, and the links removed with the rule that removed each."""

    person_of: Mapping[Identity, str]
    quarantined: frozenset[Identity]
    removed: Mapping[tuple[Identity, Identity], str]

    def members(self) -> dict[str, set[Identity]]:
        groups: dict[str, set[Identity]] = defaultdict(set)
        for identity, person in self.person_of.items():
            groups[person].add(identity)
        return groups


@functools.lru_cache(maxsize=PERSON_ID_CACHE_SIZE)
def person_id(anchor: Identity) -> str:
    """Remembered: a batch names each person it touches twice (before and after), mostly with the same anchor."""
    return "p-" + hashlib.sha256(str(anchor).encode()).hexdigest()[:24]


def resolve(facts: GraphFacts, rules: GraphRules) -> Resolution:
    """The persons the facts form under the rules; see the module docstring.

    Almost every raw component (identities linked by any link) is one where no rule can fire: it has at most
    ``quarantine_links`` identities, so none of them links to that many others; at most ``max_identities``; and no two
    of one unique namespace. Every link of such a component joins, so it is one person, named by its anchor, with
    nothing sorted. The other components go through :func:`resolve_by_rules`, which gives the same answer for all.
    """
    # Each identity's component, one list its members share; a link moves the smaller one's members into the larger.
    # Components are small (a few identities), so this beats a union-find forest and its root-finding calls.
    component_of = {identity: [identity] for identity in facts.sightings}
    for a, b in facts.links:
        left, right = component_of[a], component_of[b]
        if left is not right:
            if len(left) < len(right):
                left, right = right, left
            left += right
            for identity in right:
                component_of[identity] = left

    largest_simple = min(rules.quarantine_links, rules.max_identities)
    person_of: dict[Identity, str] = {}
    involved: set[Identity] = set()
    for identity, component in component_of.items():
        if component[0] is not identity:
            continue  # Each component once: at its first member.
        size = len(component)
        if size > largest_simple or (size > 1 and _has_two_of_a_unique_namespace(component, rules)):
            involved.update(component)
        elif size == 1:
            person_of[identity] = person_id(identity)
        else:
            person_of.update(dict.fromkeys(component, person_id(_anchor(component, facts.sightings, rules))))
    if not involved:
        return Resolution(person_of, frozenset(), {})
    ruled = resolve_by_rules(
        GraphFacts(
            {identity: stamp for identity, stamp in facts.sightings.items() if identity in involved},
            {pair: link for pair, link in facts.links.items() if pair[0] in involved},
        ),
        rules,
    )
    return Resolution({**person_of, **ruled.person_of}, ruled.quarantined, ruled.removed)


def resolve_by_rules(facts: GraphFacts, rules: GraphRules) -> Resolution:
    """:func:`resolve` applying every rule to every component: links sorted newest first, each tested."""
    quarantined = _quarantined(facts.links.values(), rules)
    parent = {identity: identity for identity in facts.sightings}
    members = {identity: [identity] for identity in facts.sightings}
    unique = {identity: _unique_part(identity, rules) for identity in facts.sightings}
    removed: dict[tuple[Identity, Identity], str] = {}
    eligible = [link for link in facts.links.values() if link.a not in quarantined and link.b not in quarantined]
    for link in sorted(eligible, key=lambda link: _newest_first(link, rules)):
        left, right = _root(parent, link.a), _root(parent, link.b)
        if left == right:
            continue
        if any(unique[left].get(namespace, identity) != identity for namespace, identity in unique[right].items()):
            removed[(link.a, link.b)] = UNIQUE_NAMESPACE
            continue
        if len(members[left]) + len(members[right]) > rules.max_identities:
            removed[(link.a, link.b)] = GRAPH_LIMIT
            continue
        if len(members[left]) < len(members[right]):
            left, right = right, left
        parent[right] = left
        members[left].extend(members.pop(right))
        unique[left] = {**unique.pop(right), **unique[left]}

    person_of = {}
    for group in members.values():
        person_of.update(dict.fromkeys(group, person_id(_anchor(group, facts.sightings, rules))))
    return Resolution(person_of, frozenset(quarantined), removed)


def record_person(identities: Iterable[Identity], resolution: Resolution, rules: GraphRules) -> str | None:
    """The person a record belongs to: that of its highest-priority identity (then namespace and id) that has one."""
    person_of = resolution.person_of
    known = [identity for identity in identities if identity in person_of]
    if len(known) < 2:
        return person_of[known[0]] if known else None
    return person_of[min(known, key=lambda identity: (-rules.priority.get(identity.namespace, 0), identity))]


def changes(before: Resolution, after: Resolution, cause: Stamp) -> list[IdentityChange]:
    """Merges, renames, splits, removed links and new quarantines between two resolutions of the same identities.

    A rename is a person whose identities all stay together under another id, which no person keeps: a late record
    moved its anchor (rule ``anchor``)."""
    found: list[IdentityChange] = []
    members_before = before.members()
    # A person id no person has after, which was one whole person before: renamed, unless it merged.
    persons_after = set(after.person_of.values())
    for person, group in sorted(after.members().items()):
        previous = sorted({before.person_of[identity] for identity in group if identity in before.person_of})
        if len(previous) > 1:
            found.append(_change("merge", group, previous, [person], "link", cause))
        elif previous and previous[0] not in persons_after and members_before[previous[0]] <= group:
            found.append(_change("rename", group, previous, [person], ANCHOR, cause))
    new_removals = {link: rule for link, rule in after.removed.items() if link not in before.removed}
    for person, group in sorted(members_before.items()):
        following = sorted({after.person_of[identity] for identity in group if identity in after.person_of})
        if len(following) > 1:
            rule = next((rule for (a, b), rule in sorted(new_removals.items()) if a in group and b in group), "link")
            found.append(_change("split", group, [person], following, rule, cause))
    for (a, b), rule in sorted(new_removals.items()):
        persons = sorted({after.person_of[a], after.person_of[b]})
        found.append(_change("link_removed", {a, b}, persons, persons, rule, cause))
    for identity in sorted(after.quarantined - before.quarantined):
        persons = [after.person_of[identity]]
        found.append(_change("quarantined", {identity}, persons, persons, QUARANTINED, cause))
    return found


def _change(kind: str, identities, before: list[str], after: list[str], rule: str, cause: Stamp) -> IdentityChange:
    return IdentityChange(
        kind=kind,
        identities=tuple(sorted(map(str, identities))),
        persons_before=tuple(before),
        persons_after=tuple(after),
        rule=rule,
        message_id=cause.message_id,
        time_us=cause.time_us,
    )


def _quarantined(links: Iterable[LinkFact], rules: GraphRules) -> set[Identity]:
    first_link_times: dict[Identity, list[int]] = defaultdict(list)
    for link in links:
        first_link_times[link.a].append(link.first.time_us)
        first_link_times[link.b].append(link.first.time_us)
    suspect = set()
    needed = rules.quarantine_links
    for identity, times in first_link_times.items():
        if len(times) < needed:
            continue
        times.sort()
        # Each link joins a distinct neighbour, so `needed` first-link times inside one window are enough.
        window = rules.quarantine_window_us
        if any(times[end] - times[end - needed + 1] <= window for end in range(needed - 1, len(times))):
            suspect.add(identity)
    return suspect


def _newest_first(link: LinkFact, rules: GraphRules) -> tuple:
    priority = max(rules.priority.get(link.a.namespace, 0), rules.priority.get(link.b.namespace, 0))
    return (-link.last.time_us, _descending(link.last.message_id), -priority, link.a, link.b)


def _descending(text: str) -> tuple[int, ...]:
    # Newest first means the higher message id first among links of one record time.
    return (*(-ord(char) for char in text), 1)


def _anchor(group: Iterable[Identity], sightings: Mapping[Identity, Stamp], rules: GraphRules) -> Identity:
    """The identity seen first (then the highest namespace priority, then namespace and id)."""
    return min(group, key=lambda identity: (sightings[identity], -rules.priority.get(identity.namespace, 0), identity))


def _root(parent: dict[Identity, Identity], identity: Identity) -> Identity:
    """The root of ``identity``'s tree in the union-find forest ``parent``, halving the path on the way."""
    while parent[identity] != identity:
        parent[identity] = parent[parent[identity]]
        identity = parent[identity]
    return identity


def _has_two_of_a_unique_namespace(component: list[Identity], rules: GraphRules) -> bool:
    namespaces = [identity.namespace for identity in component if identity.namespace in rules.unique_namespaces]
    return len(namespaces) != len(set(namespaces))


def _unique_part(identity: Identity, rules: GraphRules) -> dict[str, Identity]:
    return {identity.namespace: identity} if identity.namespace in rules.unique_namespaces else {}
