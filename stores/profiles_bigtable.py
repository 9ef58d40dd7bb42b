"""The profile store on Bigtable: a table that every worker shares, for profiles past what one Redis server holds.

Opened by :func:`~stores.opening.open_profile_store` from ``bigtable://PROJECT/INSTANCE/TABLE``; Google's
emulator through ``BIGTABLE_EMULATOR_HOST``, as Google's client does it. The table and its column families are created
when missing (the admin API works on the emulator too).

One table; a row key starts with its kind: ``f#<fragment key>`` (the fragment's base, and its deltas in a family of
their own, one column per delta name), ``v#<person>`` (the view, its
identities and the rows holding copies of it), ``i#<identity key>`` (the identity's person, the person whose view it
shows, and a copy of that view), ``r#<person>`` (a retired person's survivor and a copy of its view). A lookup by
identity is one ``read_row``, by person one ``read_rows``. A write is one ``read_rows`` and one ``mutate_rows`` batch
(deltas are appended in it unguarded: a delta is never lost), after a conditional put of each base it replaces, which
also drops the deltas folded into it (:class:`~profiles.writer.ProfileWriteConflict` if a fragment changed). A table
of the layout before deltas gets the deltas' family when opened, and its bases are read as they are.
Bigtable has no multi-row transactions: a reader may see some rows of a write before the others, and a write that
fails part-way raises and is finished by its retry.

An erase (:meth:`BigtableProfileStore.erase`) deletes whole rows, found from the persons' view rows; Bigtable removes
deleted cells from its storage at a compaction, up to a week later.

Why views are copied into identity rows, the columns, and what a failed write leaves:
docs/decisions/0019-bigtable-copies-views-into-identity-rows.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping

from google.api_core import exceptions
from google.auth.exceptions import GoogleAuthError
from google.cloud import bigtable
from google.cloud.bigtable.data import (
    BigtableDataClient,
    DeleteAllFromFamily,
    DeleteAllFromRow,
    DeleteRangeFromColumn,
    Mutation,
    ReadRowsQuery,
    Row,
    RowMutationEntry,
    RowRange,
    SetCell,
)
from google.cloud.bigtable.data.row_filters import (
    CellsColumnLimitFilter,
    CellsRowLimitFilter,
    ColumnQualifierRegexFilter,
    FamilyNameRegexFilter,
    RowFilterChain,
    StripValueTransformerFilter,
    ValueRangeFilter,
)
from google.cloud.bigtable_admin_v2.types import GcRule, Table

from profiles.writer import ProfileWrite, ProfileWriteConflict, StoredFragment, delta_id
from stores.errors import StoreUnavailableError
from stores.profiles import ProfileStore, changed_since_read, changes_nothing

ADMIN_TIMEOUT_S = 10.0

_FRAGMENT, _VIEW, _IDENTITY, _REDIRECT = b"f#", b"v#", b"i#", b"r#"
_DATA, _COPY, _COPIES, _MEMBERS, _DELTAS = "d", "v", "c", "m", "x"
_DOC, _PERSON, _HOLDER = b"doc", b"person", b"holder"
_FAMILIES = (_DATA, _COPY, _COPIES, _MEMBERS, _DELTAS)
# A view row's copies and members are bookkeeping for writes: a lookup by person reads its document only.
_LOOKUP_FAMILIES = FamilyNameRegexFilter(f"{_DATA}|{_COPY}")


class BigtableProfileStore(ProfileStore):
    """Fragments, views, the identity index and redirects in one Bigtable table."""

    def __init__(self, project: str, instance: str, table: str, *, create: bool = True) -> None:
        with warnings.catch_warnings():
            # Google's clients warn on every connection to the emulator; the URL and environment already say it.
            warnings.filterwarnings("ignore", "Connecting to Bigtable emulator", RuntimeWarning)
            try:
                if create:
                    _create_if_missing(project, instance, table)
                self._client = BigtableDataClient(project=project)
            except (exceptions.GoogleAPIError, GoogleAuthError) as error:
                message = " ".join(str(error).split())
                url = f"bigtable://{project}/{instance}/{table}"
                raise StoreUnavailableError(f"profile store {url} cannot be reached: {message}") from None
        self._table = self._client.get_table(instance, table)

    def fragments(self, keys: Iterable[str]) -> dict[str, StoredFragment]:
        wanted = {_key(_FRAGMENT, key): key for key in keys}
        if not wanted:
            return {}
        rows = self._table.read_rows(ReadRowsQuery(row_keys=list(wanted)))
        found = {wanted[row.row_key]: _fragment(_latest(row)) for row in rows}
        return {key: stored for key, stored in found.items() if stored.base is not None or stored.deltas}

    def write(self, change: ProfileWrite) -> None:
        if changes_nothing(change):
            return
        persons, identities, fragments = self._stored(change)
        if changed_since_read(change, fragments):
            raise ProfileWriteConflict(f"{len(change.expected)} fragments changed since they were read")
        # A base the change expects is put only while it still holds what was read, in a mutation of its own.
        guarded = {key: doc for key, doc in change.fragments.items() if key in change.expected}
        for key, doc in guarded.items():
            if not self._put_if_unchanged(key, doc, change.expected[key] or StoredFragment(None, {})):
                # Not the key: it names an identity, which no message may show.
                raise ProfileWriteConflict("a fragment changed since it was read")
        plan = _Plan(persons, identities)
        unguarded = {key: doc for key, doc in change.fragments.items() if key not in guarded}
        plan.apply(dataclasses.replace(change, fragments=unguarded))
        entries = plan.entries()
        if entries:
            self._table.bulk_mutate_rows(entries)

    def view_by_identity(self, identity_key: str) -> bytes | None:
        row = self._table.read_row(_key(_IDENTITY, identity_key))
        return None if row is None else _copy(_latest(row))

    def view_by_person(self, person_id: str) -> bytes | None:
        view_key, redirect_key = _key(_VIEW, person_id), _key(_REDIRECT, person_id)
        query = ReadRowsQuery(row_keys=[view_key, redirect_key], row_filter=_LOOKUP_FAMILIES)
        rows = {row.row_key: _latest(row) for row in self._table.read_rows(query)}
        if redirect_key in rows:
            return _copy(rows[redirect_key])
        return rows.get(view_key, {}).get((_DATA, _DOC))

    def erase(self, person_ids: Iterable[str], identity_keys: Iterable[str]) -> dict[str, int]:
        """See :meth:`ProfileStore.erase`. Deletes whole rows: the persons' view and redirect rows, the rows their
        views list (the copies, in the identity rows of their members and the redirect rows of the persons merged
        into them; the identity rows of their members), the identities' rows and their fragments' rows, in one
        ``mutate_rows`` batch after two reads; and the names of deleted rows from the lists of the view rows of other
        persons. A row that holds a copy of one of the views goes whoever its person is; a row a list names that is
        another person's by now stays. Like every write here it is not one transaction; run again, it finishes what a
        failed run left.

        Deleted cells cannot be read at once; Bigtable removes them from its storage at a compaction, up to a week
        later (https://cloud.google.com/bigtable/docs/delete-data), and a backup of the table keeps them until it
        expires."""
        persons, keys = set(person_ids), set(identity_keys)
        named = [_key(kind, person) for person in persons for kind in (_VIEW, _REDIRECT)]
        rows = self._latest_of([*named, *(_key(_IDENTITY, key) for key in keys)])
        listed = set()
        for person in persons:
            for family, qualifier in rows.get(_key(_VIEW, person), {}):
                if family == _COPIES:
                    listed.add(qualifier)
                elif family == _MEMBERS:
                    listed.add(_key(_IDENTITY, qualifier.decode()))
        for row, cells in self._latest_of(listed - rows.keys()).items():
            # A list may name a row that is another person's by now (a write that failed part-way left it): it stays.
            if {_text(cells.get((_DATA, _PERSON))), _text(cells.get((_DATA, _HOLDER)))} & persons:
                rows[row] = cells

        mutations: defaultdict[bytes, list[Mutation]] = defaultdict(list)
        counts = {"views": 0, "fragments": 0, "index": 0, "redirects": 0}
        for row, cells in rows.items():
            kind, name = row[:2], row[2:].decode()
            mutations[row].append(DeleteAllFromRow())
            if kind == _VIEW:
                counts["views"] += (_DATA, _DOC) in cells
                continue
            counts["index" if kind == _IDENTITY else "redirects"] += 1
            # The lists of live persons that name the row: whose view it copies, and, for an identity, its person.
            holder, person = _text(cells.get((_DATA, _HOLDER))), _text(cells.get((_DATA, _PERSON)))
            if holder is not None and holder not in persons:
                mutations[_key(_VIEW, holder)].append(DeleteRangeFromColumn(_COPIES, row))
            if person is not None and person not in persons:
                mutations[_key(_VIEW, person)].append(DeleteRangeFromColumn(_MEMBERS, name.encode()))
        for row in self._fragment_rows(keys):
            mutations[row].append(DeleteAllFromRow())
            counts["fragments"] += 1
        if mutations:
            self._table.bulk_mutate_rows([RowMutationEntry(row, changes) for row, changes in mutations.items()])
        return counts

    def retired_into(self, person_ids: Iterable[str]) -> set[str]:
        # The redirect rows of the persons merged into a person hold copies of its view, so its row lists them.
        copies = RowFilterChain([FamilyNameRegexFilter(_COPIES), StripValueTransformerFilter(True)])
        query_keys = [_key(_VIEW, person) for person in set(person_ids)]
        if not query_keys:
            return set()
        rows = self._table.read_rows(ReadRowsQuery(row_keys=query_keys, row_filter=copies))
        return {
            cell.qualifier[2:].decode() for row in rows for cell in row.cells if cell.qualifier.startswith(_REDIRECT)
        }

    def close(self) -> None:
        self._client.close()

    def is_transient(self, error: BaseException) -> bool:
        return isinstance(error, (exceptions.ServiceUnavailable, exceptions.DeadlineExceeded))

    def _put_if_unchanged(self, key: str, doc: bytes, read: StoredFragment) -> bool:
        """Puts a fragment's base and drops the deltas it was read with, if its base is the one read (or absent if it
        was); whether it did. A delta appended since stays."""
        expected = read.base
        stored_doc = RowFilterChain([FamilyNameRegexFilter(_DATA), ColumnQualifierRegexFilter(_DOC)])
        mutations = [
            *_replace(_DATA, _DOC, doc),
            *(DeleteRangeFromColumn(_DELTAS, name.encode()) for name in read.deltas),
        ]
        if expected is None:
            return not self._table.check_and_mutate_row(
                _key(_FRAGMENT, key), stored_doc, false_case_mutations=mutations
            )
        same = RowFilterChain(
            [*stored_doc.filters, CellsColumnLimitFilter(1), ValueRangeFilter(expected, expected, True, True)]
        )
        return self._table.check_and_mutate_row(_key(_FRAGMENT, key), same, true_case_mutations=mutations)

    def _latest_of(self, keys: Iterable[bytes]) -> dict[bytes, dict[tuple[str, bytes], bytes]]:
        """The newest cells of each of these rows that exists, in one read."""
        wanted = list(keys)
        if not wanted:
            return {}
        return {row.row_key: _latest(row) for row in self._table.read_rows(ReadRowsQuery(row_keys=wanted))}

    def _fragment_rows(self, identity_keys: Iterable[str]) -> list[bytes]:
        """The keys of the rows of the identities' fragments (``f#<identity key>|...``), in one read."""
        # From "<key>|" up to "<key>}", "}" following "|".
        ranges = [RowRange(_key(_FRAGMENT, f"{key}|"), _key(_FRAGMENT, f"{key}}}")) for key in identity_keys]
        if not ranges:
            return []
        keys_only = RowFilterChain([CellsRowLimitFilter(1), StripValueTransformerFilter(True)])
        return [row.row_key for row in self._table.read_rows(ReadRowsQuery(row_ranges=ranges, row_filter=keys_only))]

    def _stored(
        self, change: ProfileWrite
    ) -> tuple[dict[str, _StoredPerson], dict[str, _StoredIdentity], dict[str, bytes]]:
        """What is stored of the persons, identities and expected fragments the change names, read in one request."""
        named = (
            *change.views,
            *change.drop_views,
            *change.index.values(),
            *change.redirects,
            *change.redirects.values(),
        )
        persons = {person: _StoredPerson() for person in named}
        identities = {identity: _StoredIdentity() for identity in (*change.index, *change.unindex)}
        keys = [_key(kind, person) for person in persons for kind in (_VIEW, _REDIRECT)]
        keys += [_key(_IDENTITY, identity) for identity in identities]
        keys += [_key(_FRAGMENT, key) for key in change.expected]
        fragments: dict[str, StoredFragment] = {}
        if not keys:
            return persons, identities, fragments
        for row in self._table.read_rows(ReadRowsQuery(row_keys=keys)):
            kind, name, cells = row.row_key[:2], row.row_key[2:].decode(), _latest(row)
            if kind == _FRAGMENT:
                fragments[name] = _fragment(cells)
            elif kind == _VIEW:
                persons[name].doc = cells.get((_DATA, _DOC))
                persons[name].copies = {qualifier for family, qualifier in cells if family == _COPIES}
                persons[name].members = {qualifier.decode() for family, qualifier in cells if family == _MEMBERS}
            elif kind == _REDIRECT:
                persons[name].redirect = _text(cells.get((_DATA, _HOLDER)))
                persons[name].redirect_copy = _copy(cells)
            else:
                identities[name] = _StoredIdentity(
                    _text(cells.get((_DATA, _PERSON))), _text(cells.get((_DATA, _HOLDER)))
                )
        return persons, identities, fragments


@dataclasses.dataclass
class _StoredPerson:
    doc: bytes | None = None
    copies: set[bytes] = dataclasses.field(default_factory=set)
    members: set[str] = dataclasses.field(default_factory=set)
    redirect: str | None = None
    redirect_copy: bytes | None = None


@dataclasses.dataclass(frozen=True)
class _StoredIdentity:
    person: str | None = None
    holder: str | None = None


class _Plan:
    """The rows one write changes, worked out from what is stored of the persons and identities it names.

    It follows where each row's copy comes from (its holder) as the change is applied in the order the other backends
    apply it, and then writes every row that moved or whose holder's view changed.
    """

    def __init__(self, persons: Mapping[str, _StoredPerson], identities: Mapping[str, _StoredIdentity]) -> None:
        self._docs: dict[str, bytes | None] = {}
        self._holder: dict[bytes, str | None] = {}
        self._first_holder: dict[bytes, str | None] = {}
        self._held: defaultdict[str, set[bytes]] = defaultdict(set)
        self._members: defaultdict[str, set[str]] = defaultdict(set)
        self._person_of = {identity: stored.person for identity, stored in identities.items()}
        self._mutations: defaultdict[bytes, list[Mutation]] = defaultdict(list)
        self._moved: set[bytes] = set()
        self._changed_views: set[str] = set()
        self._indexed: set[str] = set()
        # The rows read are the truth about themselves; a copy list or a member list that disagrees with them is
        # left over from a write that failed part-way, and is mended here.
        for identity, stored in identities.items():
            self._track(_key(_IDENTITY, identity), stored.holder)
        for person, stored in persons.items():
            self._track(_key(_REDIRECT, person), stored.redirect)
            if stored.redirect is not None:
                self._docs[stored.redirect] = stored.redirect_copy
        for person, stored in persons.items():
            self._docs[person] = stored.doc
            view_key = _key(_VIEW, person)
            for row in stored.copies:
                if row not in self._holder:
                    self._track(row, person)
                if self._holder[row] != person:
                    self._mutations[view_key].append(DeleteRangeFromColumn(_COPIES, row))
            for identity in stored.members:
                if self._person_of.get(identity, person) == person:
                    self._members[person].add(identity)
                else:
                    self._mutations[view_key].append(DeleteRangeFromColumn(_MEMBERS, identity.encode()))

    def apply(self, change: ProfileWrite) -> None:
        for person in change.drop_views:
            self._set_view(person, None)
        for identity in change.unindex:
            self._index(identity, None)
        for person, doc in change.views.items():
            self._set_view(person, doc)
        for identity, person in change.index.items():
            self._index(identity, person)
        for person in change.views:
            self._revive(person)
        for retired, survivor in change.redirects.items():
            if retired != survivor:
                self._redirect(retired, survivor)
        for key, doc in change.fragments.items():
            self._mutations[_key(_FRAGMENT, key)] += _replace(_DATA, _DOC, doc)
        for key, doc in change.deltas.items():
            self._mutations[_key(_FRAGMENT, key)] += _replace(_DELTAS, delta_id(doc).encode(), doc)

    def entries(self) -> list[RowMutationEntry]:
        for row in self._moved:
            first, holder = self._first_holder[row], self._holder[row]
            if first is not None and first != holder:
                self._mutations[_key(_VIEW, first)].append(DeleteRangeFromColumn(_COPIES, row))
            if holder is not None:
                # Set even when the holder stays, so that a list a failed write left short is mended.
                self._mutations[_key(_VIEW, holder)].append(SetCell(_COPIES, row, b""))
        for row in self._moved.union(*(self._held[person] for person in self._changed_views)):
            holder = self._holder[row]
            if holder is None:
                self._mutations[row].append(DeleteAllFromRow())
                continue
            self._mutations[row] += [DeleteAllFromFamily(_COPY), *_replace(_DATA, _HOLDER, holder.encode())]
            doc = self._docs.get(holder)
            if doc is not None:
                self._mutations[row].append(SetCell(_COPY, holder.encode(), doc))
        for identity in self._indexed:
            person = self._person_of[identity]
            if person is not None:
                self._mutations[_key(_IDENTITY, identity)] += _replace(_DATA, _PERSON, person.encode())
        for person in self._changed_views:
            doc = self._docs[person]
            replace = [DeleteRangeFromColumn(_DATA, _DOC)] if doc is None else _replace(_DATA, _DOC, doc)
            self._mutations[_key(_VIEW, person)] += replace
        return [RowMutationEntry(row, mutations) for row, mutations in self._mutations.items()]

    def _set_view(self, person: str, doc: bytes | None) -> None:
        self._docs[person] = doc
        self._changed_views.add(person)

    def _index(self, identity: str, person: str | None) -> None:
        previous = self._person_of.get(identity)
        if previous is not None:
            self._members[previous].discard(identity)
            self._mutations[_key(_VIEW, previous)].append(DeleteRangeFromColumn(_MEMBERS, identity.encode()))
        self._person_of[identity] = person
        self._indexed.add(identity)
        if person is not None:
            self._members[person].add(identity)
            self._mutations[_key(_VIEW, person)].append(SetCell(_MEMBERS, identity.encode(), b""))
        self._move(_key(_IDENTITY, identity), None if person is None else self._holder_of(person))

    def _revive(self, person: str) -> None:
        """A person given a view is live: its identities show its view again, and its redirect goes."""
        if self._holder[_key(_REDIRECT, person)] is None:
            return
        for row in self._member_rows(person):
            self._move(row, person)
        self._move(_key(_REDIRECT, person), None)

    def _redirect(self, retired: str, survivor: str) -> None:
        target = self._holder_of(survivor)
        if target == retired:
            # The retired person had absorbed the survivor earlier (merged one way, split, merged the other way now):
            # the newer redirect wins.
            self._move(_key(_REDIRECT, survivor), None)
            target = survivor
        # What the retired person held (its identities' rows when it was live, and those of the persons merged into
        # it); or, when it was merged away before, the rows of its identities that its old survivor held.
        for row in self._held[retired] | set(self._member_rows(retired)):
            self._move(row, target)
        self._move(_key(_REDIRECT, retired), target)

    def _holder_of(self, person: str) -> str:
        return self._holder.get(_key(_REDIRECT, person)) or person

    def _member_rows(self, person: str) -> list[bytes]:
        """The rows of the identities indexed to this person, which the person's holder holds now."""
        rows = [_key(_IDENTITY, identity) for identity in self._members[person]]
        for row in rows:
            if row not in self._holder:
                self._track(row, self._holder_of(person))
        return rows

    def _track(self, row: bytes, holder: str | None) -> None:
        self._holder[row] = self._first_holder[row] = holder
        if holder is not None:
            self._held[holder].add(row)

    def _move(self, row: bytes, holder: str | None) -> None:
        previous = self._holder[row]
        if previous is not None:
            self._held[previous].discard(row)
        if holder is not None:
            self._held[holder].add(row)
        self._holder[row] = holder
        self._moved.add(row)


def _create_if_missing(project: str, instance: str, table: str) -> None:
    """Creates the table, or the column families it lacks; fails fast (no retries) on a store that is not there."""
    admin = bigtable.Client(project=project, admin=True).table_admin_client
    name = admin.table_path(project, instance, table)
    one_version = GcRule(max_num_versions=1)
    try:
        try:
            stored = admin.get_table(
                request={"name": name, "view": Table.View.SCHEMA_VIEW}, retry=None, timeout=ADMIN_TIMEOUT_S
            )
        except exceptions.NotFound:
            families = {family: {"gc_rule": one_version} for family in _FAMILIES}
            # Another worker may have created it a moment ago.
            with contextlib.suppress(exceptions.AlreadyExists):
                admin.create_table(
                    request={
                        "parent": admin.instance_path(project, instance),
                        "table_id": table,
                        "table": {"column_families": families},
                    },
                    retry=None,
                    timeout=ADMIN_TIMEOUT_S,
                )
            return
        missing = [family for family in _FAMILIES if family not in stored.column_families]
        if missing:
            admin.modify_column_families(
                request={
                    "name": name,
                    "modifications": [{"id": id_, "create": {"gc_rule": one_version}} for id_ in missing],
                },
                retry=None,
                timeout=ADMIN_TIMEOUT_S,
            )
    finally:
        admin.transport.close()


def _key(kind: bytes, name: str) -> bytes:
    return kind + name.encode()


def _latest(row: Row) -> dict[tuple[str, bytes], bytes]:
    """The newest value of each column of a row (the client lists a column's cells newest first)."""
    cells: dict[tuple[str, bytes], bytes] = {}
    for cell in row.cells:
        cells.setdefault((cell.family, cell.qualifier), cell.value)
    return cells


def _fragment(cells: Mapping[tuple[str, bytes], bytes]) -> StoredFragment:
    deltas = {qualifier.decode(): doc for (family, qualifier), doc in cells.items() if family == _DELTAS}
    return StoredFragment(cells.get((_DATA, _DOC)), deltas)


def _copy(cells: Mapping[tuple[str, bytes], bytes]) -> bytes | None:
    """The copy of the view an identity or redirect row holds: the one named after its holder."""
    holder = cells.get((_DATA, _HOLDER))
    return None if holder is None else cells.get((_COPY, holder))


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _replace(family: str, qualifier: bytes, value: bytes) -> list[Mutation]:
    return [DeleteRangeFromColumn(family, qualifier), SetCell(family, qualifier, value)]
