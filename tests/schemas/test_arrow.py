"""The derived Arrow schema and the columnar table builder (schemas.arrow)."""

import json
from datetime import UTC, date, datetime, timedelta, timezone

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.arrow import LINEAGE_FIELDS, PERSON_FIELD, TIMESTAMP, record_arrow_schema, table_from_rows
from schemas.names import name_from_storage

EXPERIENCE_EVENT = "https://ns.adobe.com/xdm/context/experienceevent"
PROFILE = "https://ns.adobe.com/xdm/context/profile"
IDENTITY_ITEM = pa.struct([("id", pa.string()), ("authenticatedState", pa.string()), ("primary", pa.bool_())])
JSON_COLUMNS = {"_tenant", "doc"}  # json-kind columns: string columns holding JSON text

# Lake rows: runtime names, date-times as RFC 3339 text; sparse and mixed on purpose.
EVENT_ROWS = [
    {
        "_id": "evt-1",
        "timestamp": "2024-05-01T12:00:00Z",
        "eventType": "web.webpagedetails.pageViews",
        "identityMap": {"ECID": [{"id": "1" * 38, "authenticatedState": "ambiguous", "primary": True}]},
        "web": {"webPageDetails": {"name": "Home", "pageViews": {"value": 1.0}}},
        "placeContext": {"geo": {"schema:latitude": 48.8566}, "localTime": "2024-05-01T14:00:00+02:00"},
        "_tenant": {"loyalty": {"tier": "gold"}},
        "_message_id": "m-1",
        "_ingest_time": "2024-05-01T12:00:01Z",
    },
    {
        "_id": "evt-2",
        "timestamp": "2024-05-01T12:00:02.5Z",
        "identityMap": {
            "ECID": [{"id": "2" * 38}],
            "Email": [{"id": "jane@example.com", "authenticatedState": "authenticated"}, {"id": "j@example.com"}],
        },
        "commerce": {
            "order": {
                "priceTotal": 159.0,
                "payments": [{"paymentAmount": 159.0}],
                "createdDate": "2024-04-30T23:00:00-01:00",
            }
        },
        "productListItems": [{"SKU": "sku-1", "quantity": 2}, {"SKU": "sku-2", "selectedOptions": [{"value": "M"}]}],
        "_message_id": "m-2",
        "_ingest_time": "2024-05-01T12:00:03Z",
    },
    {"_id": "evt-3", "timestamp": "2024-05-01T12:00:04Z", "_message_id": "m-3", "_ingest_time": "2024-05-01T12:00:05Z"},
    {
        "_id": "evt-4",
        "timestamp": "2024-05-01T12:00:06Z",
        "web": {"webReferrer": {"type": "internal"}},
        "environment": {"browserDetails": {"viewportHeight": 900, "cookiesEnabled": False}},
        "_tenant": [1, "two"],
        "_message_id": "m-4",
        "_ingest_time": "2024-05-01T12:00:07Z",
    },
]


def _reference(value, arrow: pa.DataType):
    """One runtime-named value as ``pa.Table.from_pylist`` takes it: storage names, datetimes, dates, JSON text."""
    if value is None:
        return None
    if pa.types.is_struct(arrow):
        return {child.name: _reference(value.get(name_from_storage(child.name)), child.type) for child in arrow}
    if pa.types.is_map(arrow):
        return [(key, _reference(item, arrow.item_type)) for key, item in value.items()]
    if pa.types.is_list(arrow):
        return [_reference(item, arrow.value_type) for item in value]
    if pa.types.is_timestamp(arrow):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    if pa.types.is_date(arrow):
        return date.fromisoformat(value)
    if pa.types.is_string(arrow) and not isinstance(value, str):
        return json.dumps(value)
    return value


def _reference_table(rows, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([_reference(row, pa.struct(list(schema))) for row in rows], schema=schema)


def _comparable(table: pa.Table) -> list[dict]:
    """Rows of a table with JSON-text columns parsed, so that JSON formatting does not matter."""
    return [
        {
            name: json.loads(value) if name in JSON_COLUMNS and value is not None else value
            for name, value in row.items()
        }
        for row in table.to_pylist()
    ]


@pytest.fixture(scope="module")
def event_schema(registry) -> pa.Schema:
    return registry.get(EXPERIENCE_EVENT).arrow_schema


# The derived schema.


def test_identity_map_is_a_map_of_lists_of_identity_structs(event_schema):
    assert event_schema.field("identityMap").type == pa.map_(pa.string(), pa.list_(IDENTITY_ITEM))


def test_timestamp_column_is_utc_microseconds(event_schema):
    assert event_schema.field("timestamp").type == pa.timestamp("us", tz="UTC")


def test_nested_date_times_are_timestamps(event_schema):
    assert event_schema.field("placeContext").type.field("localTime").type == TIMESTAMP


def test_every_row_carries_message_id_ingest_time_and_person(event_schema):
    assert list(event_schema)[-3:] == [*LINEAGE_FIELDS, PERSON_FIELD]
    assert (event_schema.field("_message_id").nullable, event_schema.field("_ingest_time").type) == (False, TIMESTAMP)


def test_tenant_json_object_is_a_string_column(event_schema):
    assert event_schema.field("_tenant").type == pa.string()


def test_scalar_kinds_map_to_arrow_types(event_schema):
    browser = event_schema.field("environment").type.field("browserDetails").type
    price = event_schema.field("commerce").type.field("order").type.field("priceTotal").type
    assert (browser.field("viewportHeight").type, browser.field("cookiesEnabled").type, price) == (
        pa.int64(),
        pa.bool_(),
        pa.float64(),
    )


def test_columns_use_storage_names(event_schema):
    geo = event_schema.field("placeContext").type.field("geo").type
    assert geo.get_field_index("schema__3alatitude") >= 0
    assert geo.get_field_index("schema:latitude") == -1


def test_date_format_is_date32(registry):
    person = registry.get(PROFILE).arrow_schema.field("person").type
    assert person.field("birthDate").type == pa.date32()


def test_record_arrow_schema_of_the_root_is_the_registry_s(registry):
    schema = registry.get(PROFILE)
    assert record_arrow_schema(schema.root) == schema.arrow_schema


# table_from_rows against pa.Table.from_pylist.


def test_table_from_rows_equals_from_pylist_on_sparse_event_rows(event_schema):
    actual = table_from_rows(EVENT_ROWS, event_schema)
    assert _comparable(actual) == _comparable(_reference_table(EVENT_ROWS, event_schema))


def test_table_from_rows_keeps_the_schema(event_schema):
    assert table_from_rows(EVENT_ROWS, event_schema).schema == event_schema


def test_table_from_rows_of_no_rows_is_empty(event_schema):
    assert table_from_rows([], event_schema).num_rows == 0


def test_column_no_row_holds_is_all_null(event_schema):
    column = table_from_rows(EVENT_ROWS, event_schema).column("device")
    assert column.null_count == len(EVENT_ROWS)


def test_json_value_given_as_dict_is_written_as_json_text(event_schema):
    tenant = table_from_rows(EVENT_ROWS, event_schema).column("_tenant").to_pylist()
    assert json.loads(tenant[0]) == {"loyalty": {"tier": "gold"}}
    assert json.loads(tenant[3]) == [1, "two"]


SMALL_SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("when", TIMESTAMP),
        ("day", pa.date32()),
        ("doc", pa.string()),
        ("tags", pa.list_(pa.string())),
        ("counts", pa.map_(pa.string(), pa.int64())),
        (
            "point",
            pa.struct(
                [
                    ("schema__3alatitude", pa.float64()),
                    ("seen", TIMESTAMP),
                    ("label", pa.struct([("text", pa.string()), ("lang", pa.string())])),
                    ("aliases", pa.list_(pa.string())),
                ]
            ),
        ),
        ("items", pa.list_(pa.struct([("sku", pa.string()), ("qty", pa.int64())]))),
        ("ids", pa.map_(pa.string(), pa.list_(pa.struct([("id", pa.string()), ("primary", pa.bool_())])))),
    ]
)


def _sparse(fields: dict) -> st.SearchStrategy:
    """Objects whose every field is missing, null or present."""
    return st.fixed_dictionaries({}, optional={name: st.none() | values for name, values in fields.items()})


ZONES = st.sampled_from([UTC, timezone(timedelta(hours=13)), timezone(-timedelta(hours=8, minutes=30))])
TIMES = st.datetimes(datetime(1900, 1, 1), datetime(2200, 1, 1), timezones=ZONES).map(
    lambda moment: moment.isoformat().replace("+00:00", "Z")
)
TEXT = st.text(max_size=6)
SMALL_ROWS = st.lists(
    _sparse(
        {
            "name": TEXT,
            "when": TIMES,
            "day": st.dates(date(1900, 1, 1), date(2200, 1, 1)).map(date.isoformat),
            "doc": st.dictionaries(TEXT, st.integers() | TEXT, min_size=1, max_size=3)
            | st.lists(st.integers(), min_size=1),
            "tags": st.lists(TEXT | st.none(), max_size=3),
            "counts": st.dictionaries(TEXT, st.integers(-(2**63), 2**63 - 1) | st.none(), max_size=3),
            "point": _sparse(
                {
                    "schema:latitude": st.floats(-90, 90),
                    "seen": TIMES,
                    "label": _sparse({"text": TEXT, "lang": TEXT}),
                    "aliases": st.lists(TEXT, max_size=2),
                }
            ),
            "items": st.lists(_sparse({"sku": TEXT, "qty": st.integers(0, 10)}) | st.none(), max_size=3),
            "ids": st.dictionaries(
                TEXT, st.lists(_sparse({"id": TEXT, "primary": st.booleans()}), max_size=2), max_size=2
            ),
        }
    ),
    max_size=6,
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(SMALL_ROWS)
def test_table_from_rows_equals_from_pylist_on_random_sparse_rows(rows):
    assert _comparable(table_from_rows(rows, SMALL_SCHEMA)) == _comparable(_reference_table(rows, SMALL_SCHEMA))


def test_null_struct_and_struct_of_nulls_differ():
    rows = [{"point": None}, {"point": {}}, {"point": {"seen": None}}, {}]
    points = table_from_rows(rows, SMALL_SCHEMA).column("point").to_pylist()
    empty = {"schema__3alatitude": None, "seen": None, "label": None, "aliases": None}
    assert points == [None, empty, empty, None]


def test_null_map_and_empty_map_differ():
    counts = table_from_rows([{"counts": {}}, {"counts": None}, {"counts": {"a": 1}}, {}], SMALL_SCHEMA).column(
        "counts"
    )
    assert counts.to_pylist() == [[], None, [("a", 1)], None]


def test_null_map_as_the_last_row():
    counts = table_from_rows([{"counts": {"a": 1}}, {"counts": None}], SMALL_SCHEMA).column("counts")
    assert counts.to_pylist() == [[("a", 1)], None]


def test_null_list_and_empty_list_differ():
    tags = table_from_rows([{"tags": []}, {"tags": None}, {"tags": ["x", None]}], SMALL_SCHEMA).column("tags")
    assert tags.to_pylist() == [[], None, ["x", None]]


def test_storage_named_child_is_read_from_its_runtime_name():
    point = table_from_rows([{"point": {"schema:latitude": 1.5}}], SMALL_SCHEMA).column("point").to_pylist()[0]
    assert point["schema__3alatitude"] == 1.5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T12:00:00+02:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T00:30:00-08:30", datetime(2024, 5, 1, 9, tzinfo=UTC)),
        ("2024-05-01T12:00:00.123456789+02:00", datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2024-05-01T12:00:00.5Z", datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=UTC)),
        ("2024-05-01t12:00:00z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
    ],
)
def test_rfc_3339_text_converts_to_the_utc_instant(text, expected):
    assert table_from_rows([{"when": text}], SMALL_SCHEMA).column("when").to_pylist() == [expected]


def test_nanosecond_text_beside_plain_text_converts_every_row():
    rows = [{"when": "2024-05-01T12:00:00Z"}, {"when": "2024-05-01T12:00:00.000000999+00:00"}, {"when": None}]
    expected = [datetime(2024, 5, 1, 12, tzinfo=UTC), datetime(2024, 5, 1, 12, tzinfo=UTC), None]
    assert table_from_rows(rows, SMALL_SCHEMA).column("when").to_pylist() == expected


@pytest.mark.parametrize(
    "value", [datetime(2024, 5, 1, 12, tzinfo=UTC), 1_714_564_800_000_000], ids=["datetime", "epoch_microseconds"]
)
def test_timestamps_may_be_given_as_datetimes_or_epoch_microseconds(value):
    column = table_from_rows([{"when": value}], SMALL_SCHEMA).column("when")
    assert column.to_pylist() == [datetime(2024, 5, 1, 12, tzinfo=UTC)]


def test_date_text_converts_to_a_date():
    assert table_from_rows([{"day": "2024-02-29"}], SMALL_SCHEMA).column("day").to_pylist() == [date(2024, 2, 29)]


# Parquet and DuckDB.


def test_parquet_read_back_with_duckdb_gives_the_same_rows(tmp_path, event_schema):
    table = table_from_rows(EVENT_ROWS, event_schema)
    pq.write_table(table, tmp_path / "part.parquet")
    read = duckdb.sql(f"SELECT * FROM read_parquet('{tmp_path / 'part.parquet'}')").to_arrow_table()
    assert read.to_pylist() == table.to_pylist()


def test_duckdb_reads_nested_columns_by_storage_name(tmp_path, event_schema):
    pq.write_table(table_from_rows(EVENT_ROWS, event_schema), tmp_path / "part.parquet")
    query = f"""
        SELECT _id, identityMap['Email'][1].id, placeContext.geo.schema__3alatitude, epoch_us("timestamp")
        FROM read_parquet('{tmp_path / "part.parquet"}') ORDER BY _id
    """
    assert duckdb.sql(query).fetchall() == [
        ("evt-1", None, 48.8566, 1_714_564_800_000_000),
        ("evt-2", "jane@example.com", None, 1_714_564_802_500_000),
        ("evt-3", None, None, 1_714_564_804_000_000),
        ("evt-4", None, None, 1_714_564_806_000_000),
    ]
