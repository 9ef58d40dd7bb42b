"""Tests for transforms/coders.py: RecordCoder gives back every record exactly, of the same types all the way down.

"Exactly" is checked by :func:`assert_identical`: same types at every level, dict keys in the same order, floats and
decimals to the bit and digit (``-0.0``, ``Decimal("1.10")``), datetimes with the same offset.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import math
from pathlib import Path
from zoneinfo import ZoneInfo

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given
from hypothesis import strategies as st

from core.records import DecodedEntity, FailedRecord, LakeRow, Message, RecordError, ValidRecord
from identity.model import Identity, IdentityChange
from lake.rows import failed_row, valid_row
from messages.decoding import decode_message
from messages.replay_files import read_replay_file
from schemas.registry import SchemaRegistry
from schemas.validation import validate_decoded
from transforms.coders import RECORD_TYPES, RecordCoder
from transforms.lake import _BufferAndWritePanesFn
from transforms.merge_profiles import _MergeProfilesFn

SAMPLE = Path(__file__).parents[2] / "pipelines" / "samples" / "stream.jsonl"
# Later than every publish time of the sample, so none is refused as published after it was read.
READ_TIME_US = 2_000_000_000_000_000
CODER = RecordCoder()
UTC_PLUS_1 = datetime.timezone(datetime.timedelta(hours=1))


def round_trip(record):
    return CODER.decode(CODER.encode(record))


def assert_identical(expected, actual, where="record"):
    assert type(actual) is type(expected), f"{where}: {type(actual).__name__} is not {type(expected).__name__}"
    if isinstance(expected, dict):
        assert list(actual) == list(expected), f"{where}: keys or their order differ"
        for key, value in expected.items():
            assert_identical(value, actual[key], f"{where}[{key!r}]")
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), f"{where}: lengths differ"
        for position, (value, got) in enumerate(zip(expected, actual, strict=True)):
            assert_identical(value, got, f"{where}[{position}]")
    elif dataclasses.is_dataclass(expected):
        for field in dataclasses.fields(expected):
            assert_identical(getattr(expected, field.name), getattr(actual, field.name), f"{where}.{field.name}")
    elif isinstance(expected, float | decimal.Decimal):
        assert repr(actual) == repr(expected), where
    elif isinstance(expected, datetime.datetime):
        assert (actual, actual.utcoffset(), actual.fold) == (expected, expected.utcoffset(), expected.fold), where
    else:
        assert actual == expected, where


def sample_records():
    """Every record the sample stream makes on its way to the lake: messages, decoded entities, valid and failed
    records, and their lake rows."""
    registry = SchemaRegistry.load()
    for message in read_replay_file(str(SAMPLE), clock=lambda: READ_TIME_US):
        yield message
        for decoded in decode_message(message, registry.avro_schema_for):
            yield decoded
            record = validate_decoded(decoded, registry) if isinstance(decoded, DecodedEntity) else decoded
            yield record
            yield valid_row(record) if isinstance(record, ValidRecord) else failed_row(record)


def test_every_record_of_the_sample_stream_comes_back_exactly():
    records = list(sample_records())
    assert {type(record) for record in records} == {Message, DecodedEntity, ValidRecord, FailedRecord, LakeRow}
    for record in records:
        assert_identical(record, round_trip(record))


# Text without lone surrogates: orjson, like Beam's StrUtf8Coder, refuses them (see below).
keys = st.text(max_size=8)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63 - 2, max_value=2**64 + 1)
    | st.integers(min_value=-(2**63) - 2, max_value=-(2**63) + 1)
    | st.integers(min_value=2**70, max_value=2**300)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.decimals(allow_nan=False)
    | st.dates()
    | st.datetimes(timezones=st.none() | st.just(datetime.UTC) | st.just(UTC_PLUS_1)).map(lambda t: t.replace(fold=0))
    | st.builds(Identity, st.text(), st.text())
)
json_like = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(keys, children, max_size=4)
    ),
    max_leaves=20,
)
errors = st.lists(st.builds(RecordError, st.text(), st.text(), st.text()), max_size=3).map(tuple)
messages = st.builds(
    Message, st.binary(), st.dictionaries(keys, st.text(max_size=8)), st.text(), st.integers(), st.integers()
)
records = st.one_of(
    messages,
    st.builds(
        DecodedEntity, messages, st.integers(), st.none() | st.text(), st.none() | st.text(), json_like, st.binary()
    ),
    st.builds(
        ValidRecord,
        st.text(),
        st.text(),
        st.dictionaries(keys, json_like, max_size=6),
        st.text(),
        st.integers(),
        st.integers(),
        st.integers(),
        st.none() | st.text(),
        st.none() | st.lists(st.builds(Identity, st.text(), st.text()), max_size=3).map(tuple),
    ),
    st.builds(
        FailedRecord,
        st.binary(),
        st.dictionaries(keys, st.text(max_size=8)),
        st.text(),
        st.integers(),
        st.integers(),
        errors,
        st.text(),
        st.none() | st.integers(),
        st.none() | st.text(),
    ),
    st.builds(
        LakeRow,
        st.text(),
        st.none() | st.text(),
        st.integers(),
        st.text(),
        st.dictionaries(keys, json_like, max_size=6),
    ),
    st.builds(
        IdentityChange,
        st.text(),
        st.lists(st.text(), max_size=3).map(tuple),
        st.lists(st.text(), max_size=3).map(tuple),
        st.lists(st.text(), max_size=3).map(tuple),
        st.text(),
        st.text(),
        st.integers(),
        st.text(),
    ),
)


@given(records)
def test_any_record_of_json_like_values_bytes_big_integers_tuples_and_identities_comes_back_exactly(record):
    assert_identical(record, round_trip(record))


@given(records)
def test_a_record_encodes_to_the_same_bytes_every_time(record):
    assert CODER.encode(record) == CODER.encode(round_trip(record))


@pytest.mark.parametrize("number", [math.inf, -math.inf, math.nan])
def test_floats_that_are_not_finite_come_back(number):
    entity = round_trip(ValidRecord("d", "s", {"x": [number]}, "m", 0, 1, 2)).entity
    assert type(entity["x"]) is list
    assert repr(entity["x"][0]) == repr(number)


def test_a_list_stays_a_list_and_a_tuple_a_tuple_at_every_depth():
    entity = {"list": [1, (2, [3, (4,)])], "tuple": ([],), "empty": ()}
    assert_identical(entity, round_trip(ValidRecord("d", "s", entity, "m", 0, 1, 2)).entity)


def test_dict_keys_keep_their_order():
    row = {"z": 1, "a": {"y": b"\x00", "b": 2}, "m": None}
    assert list(round_trip(LakeRow("d", None, 1, "m", row)).row) == ["z", "a", "m"]
    assert list(round_trip(LakeRow("d", None, 1, "m", row)).row["a"]) == ["y", "b"]


@pytest.mark.parametrize(
    "value",
    [
        {1: "a key that is not a string"},
        {"set": {1, 2}},
        datetime.datetime(2026, 3, 5, tzinfo=ZoneInfo("Europe/Paris")),
        datetime.datetime(2026, 3, 5, fold=1),
        Path("a"),
        "\ud800",
    ],
    ids=["int key", "set", "named time zone", "fold", "other object", "lone surrogate"],
)
def test_a_value_that_would_not_come_back_exactly_is_refused(value):
    with pytest.raises(TypeError):
        CODER.encode(ValidRecord("d", "s", {"value": value}, "m", 0, 1, 2))


def test_only_the_record_types_are_encoded():
    with pytest.raises(TypeError, match="RecordCoder encodes only"):
        CODER.encode({"a": 1})


@pytest.mark.parametrize(
    ("record", "encoded"),
    [
        (
            FailedRecord(b"\xff{", {"k": "v"}, "m1", 10, 20, (RecordError("C", "/p", "text"),), "decode", 2),
            b'["FailedRecord",[0,5],[2,"\xc3\xbf{"],{"k":"v"},"m1",10,20,[1,[8,"RecordError","C","/p","text"]],"decode",'
            b"2,null]",
        ),
        (
            ValidRecord("d", "s", {"n": 2**64}, "m1", 0, 10, 20, "p1", (Identity("Email", "a@b"),)),
            # An integer orjson refuses is found by its refusal: every field is tagged then.
            b'["ValidRecord",[0,1,2,3,4,5,6,7,8],"d","s",{"n":[3,"0x10000000000000000"]},"m1",0,10,20,"p1",'
            b'[1,[9,"Email","a@b"]]]',
        ),
    ],
    ids=["failed record", "identities and a big integer"],
)
def test_the_format_is_the_recorded_one(record, encoded):
    # Bytes in a runner's state or shuffle are read back by the next worker; a change of format must be meant.
    assert CODER.encode(record) == encoded


def test_the_coder_says_it_is_not_deterministic_since_dict_order_is_part_of_the_bytes():
    assert CODER.encode(LakeRow("d", None, 1, "m", {"a": 1, "b": 2})) != CODER.encode(
        LakeRow("d", None, 1, "m", {"b": 2, "a": 1})
    )
    assert not CODER.is_deterministic()


def test_beam_encodes_every_record_type_with_it_and_so_do_the_stateful_steps():
    assert {type(beam.coders.registry.get_coder(record_type)) for record_type in RECORD_TYPES} == {RecordCoder}
    # The bags hold a bundle's records as lists (transforms.bundle_batches).
    for bag in (_MergeProfilesFn.PENDING, _BufferAndWritePanesFn.BUFFER):
        assert type(bag.coder) is beam.coders.ListCoder
        assert type(bag.coder.value_coder()) is RecordCoder


def test_lake_rows_cross_a_group_by_key_on_the_fn_api_runner_unchanged():
    rows = [
        LakeRow("failed_records", "m#1", 1, "m", {"data": b"\x00\xff", "errors": [{"code": "C"}], "n": 2**70}),
        LakeRow("events", None, 2, "m", {"tags": ("a", ["b"]), "price": -0.0, "when": datetime.date(2026, 3, 5)}),
    ]

    def types_of(value):
        if isinstance(value, dict):
            return {key: types_of(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [type(value).__name__, *map(types_of, value)]
        return type(value).__name__

    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        grouped = (
            pipeline
            | beam.Create(rows, reshuffle=False)
            | beam.Map(lambda row: (row.dataset, row)).with_output_types(tuple[str, LakeRow])
            | beam.GroupByKey()
            | beam.FlatMap(lambda keyed: [(row, types_of(row.row)) for row in keyed[1]])
        )
        assert_that(grouped, equal_to([(row, types_of(row.row)) for row in rows]))
