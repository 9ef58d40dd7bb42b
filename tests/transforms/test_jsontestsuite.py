"""JSONTestSuite (tests/data/jsontestsuite, nst/JSONTestSuite) through the decode stage, every file as raw bytes.

Each ``test_parsing`` file is the body of one message sent as a bare entity (``schemaRef`` attribute set):

- every ``n_*`` file (invalid JSON) becomes one failed record with a ``DECODE.*`` code;
- every ``y_*`` file (valid JSON) parses with :func:`~messages.decoding.parse_json`, and decodes to an entity when it
  is an object, else fails with ``DECODE.UNKNOWN_ENVELOPE``. Two exceptions, on purpose: ``y_object_duplicated_key``
  and ``y_object_duplicated_key_and_value`` are valid JSON (RFC 8259 says keys SHOULD be unique), but parsers
  disagree on which copy wins, so the decode stage rejects them with ``DECODE.DUPLICATE_KEY`` rather than pick one;
- every ``i_*`` file (implementation-defined) has the outcome below; "parses" means parse_json accepts it (each such
  file holds an array, so as a message it fails with ``DECODE.UNKNOWN_ENVELOPE``).

============================================  =============================  ===========================================
``i_*`` file                                  outcome                        why
============================================  =============================  ===========================================
number_double_huge_neg_exp (123.456e-789)     parses (0.0)                   underflow rounds to zero, as any double
number_real_underflow (123e-10000000)         parses (0.0)                   underflow rounds to zero, as any double
number_huge_exp (0.4e006699...)               DECODE.NON_FINITE_NUMBER       too large for a double
number_neg_int_huge_exp (-1e+9999)            DECODE.NON_FINITE_NUMBER       too large for a double
number_pos_double_huge_exp (1.5e+9999)        DECODE.NON_FINITE_NUMBER       too large for a double
number_real_neg_overflow (-123123e100000)     DECODE.NON_FINITE_NUMBER       too large for a double
number_real_pos_overflow (123123e100000)      DECODE.NON_FINITE_NUMBER       too large for a double
number_too_big_neg_int                        DECODE.INTEGER_OUT_OF_RANGE    outside int64 (Avro long, Arrow int64)
number_too_big_pos_int (1e20 as digits)       DECODE.INTEGER_OUT_OF_RANGE    outside int64
number_very_big_negative_int                  DECODE.INTEGER_OUT_OF_RANGE    outside int64
object_key_lone_2nd_surrogate                 DECODE.INVALID_STRING          a lone surrogate escape, in a key
string_1st_surrogate_but_2nd_missing          DECODE.INVALID_STRING          lone surrogate escape
string_1st_valid_surrogate_2nd_invalid        DECODE.INVALID_STRING          high surrogate not followed by a low one
string_incomplete_surrogate_and_escape_valid  DECODE.INVALID_STRING          lone surrogate escape
string_incomplete_surrogate_pair              DECODE.INVALID_STRING          lone surrogate escape
string_incomplete_surrogates_escape_valid     DECODE.INVALID_STRING          two high surrogates, no low one
string_invalid_lonely_surrogate               DECODE.INVALID_STRING          lone surrogate escape
string_invalid_surrogate                      DECODE.INVALID_STRING          lone surrogate escape
string_inverted_surrogates_U+1D11E            DECODE.INVALID_STRING          low before high: two lone surrogates
string_lone_second_surrogate                  DECODE.INVALID_STRING          lone surrogate escape
string_UTF-16LE_with_BOM                      DECODE.NOT_UTF8                UTF-16, not UTF-8 (RFC 8259 §8.1)
string_utf16BE_no_BOM                         DECODE.NOT_UTF8                UTF-16, not UTF-8
string_utf16LE_no_BOM                         DECODE.NOT_UTF8                UTF-16, not UTF-8
string_UTF-8_invalid_sequence                 DECODE.NOT_UTF8                invalid UTF-8 bytes
string_UTF8_surrogate_U+D800                  DECODE.NOT_UTF8                UTF-8 may not encode surrogates
string_invalid_utf-8                          DECODE.NOT_UTF8                invalid UTF-8 bytes
string_iso_latin_1                            DECODE.NOT_UTF8                Latin-1, not UTF-8
string_lone_utf8_continuation_byte            DECODE.NOT_UTF8                invalid UTF-8 bytes
string_not_in_unicode_range                   DECODE.NOT_UTF8                beyond U+10FFFF
string_overlong_sequence_2_bytes              DECODE.NOT_UTF8                overlong encodings are invalid UTF-8
string_overlong_sequence_6_bytes              DECODE.NOT_UTF8                overlong encodings are invalid UTF-8
string_overlong_sequence_6_bytes_null         DECODE.NOT_UTF8                overlong encodings are invalid UTF-8
string_truncated-utf-8                        DECODE.NOT_UTF8                invalid UTF-8 bytes
structure_500_nested_arrays                   DECODE.TOO_DEEP                deeper than MAX_JSON_DEPTH (64)
structure_UTF-8_BOM_empty_object              DECODE.NOT_JSON                RFC 8259 §8.1: senders MUST NOT add a BOM
============================================  =============================  ===========================================

``test_transform`` holds inputs whose parsed value differs between parsers. Ours: integers within int64 are exact and
beyond it ``DECODE.INTEGER_OUT_OF_RANGE`` (never a silent double); decimals are the nearest double (``1.0`` for
``1.000000000000000005``, ``0.0`` for ``1E-999``); a repeated key is ``DECODE.DUPLICATE_KEY`` whatever the values;
keys are not Unicode-normalised (NFC and NFD spellings stay two keys); lone surrogates, escaped or encoded, are
``DECODE.INVALID_STRING`` or ``DECODE.NOT_UTF8``; an escaped NUL is kept.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.records import DecodedEntity, FailedRecord
from messages.decoding import (
    DUPLICATE_KEY,
    INTEGER_OUT_OF_RANGE,
    INVALID_STRING,
    NON_FINITE_NUMBER,
    NOT_JSON,
    NOT_UTF8,
    TOO_DEEP,
    UNKNOWN_ENVELOPE,
    JsonRejected,
    parse_json,
)
from tests.messages.test_decoding import EVENT_ID, codes, decode_one

SUITE = Path(__file__).parents[1] / "data" / "jsontestsuite"
PARSING_FILES = sorted(path.name for path in (SUITE / "test_parsing").iterdir())
TRANSFORM_FILES = sorted(path.name for path in (SUITE / "test_transform").iterdir())
PARSES = "parses"

Y_REJECTED_ON_PURPOSE = {
    # Valid JSON whose meaning parsers disagree on (first or last copy wins): rejected rather than guessed.
    "y_object_duplicated_key.json": DUPLICATE_KEY,
    "y_object_duplicated_key_and_value.json": DUPLICATE_KEY,
}

I_OUTCOMES = {
    # Underflow: the nearest double is 0.0, the same rounding every decimal gets.
    "i_number_double_huge_neg_exp.json": PARSES,
    "i_number_real_underflow.json": PARSES,
    # Overflow: no double holds these; Python would give inf, which JSON cannot carry back out.
    "i_number_huge_exp.json": NON_FINITE_NUMBER,
    "i_number_neg_int_huge_exp.json": NON_FINITE_NUMBER,
    "i_number_pos_double_huge_exp.json": NON_FINITE_NUMBER,
    "i_number_real_neg_overflow.json": NON_FINITE_NUMBER,
    "i_number_real_pos_overflow.json": NON_FINITE_NUMBER,
    # Big integers: stored as Avro long and Arrow int64, so outside int64 is an error, not a rounded double.
    "i_number_too_big_neg_int.json": INTEGER_OUT_OF_RANGE,
    "i_number_too_big_pos_int.json": INTEGER_OUT_OF_RANGE,
    "i_number_very_big_negative_int.json": INTEGER_OUT_OF_RANGE,
    # Lone surrogate escapes (keys too): valid JSON text, but no UTF-8 string can hold the value.
    "i_object_key_lone_2nd_surrogate.json": INVALID_STRING,
    "i_string_1st_surrogate_but_2nd_missing.json": INVALID_STRING,
    "i_string_1st_valid_surrogate_2nd_invalid.json": INVALID_STRING,
    "i_string_incomplete_surrogate_and_escape_valid.json": INVALID_STRING,
    "i_string_incomplete_surrogate_pair.json": INVALID_STRING,
    "i_string_incomplete_surrogates_escape_valid.json": INVALID_STRING,
    "i_string_invalid_lonely_surrogate.json": INVALID_STRING,
    "i_string_invalid_surrogate.json": INVALID_STRING,
    "i_string_inverted_surrogates_U+1D11E.json": INVALID_STRING,
    "i_string_lone_second_surrogate.json": INVALID_STRING,
    # Other encodings (UTF-16 with or without BOM, Latin-1): messages are UTF-8 (RFC 8259 §8.1).
    "i_string_UTF-16LE_with_BOM.json": NOT_UTF8,
    "i_string_utf16BE_no_BOM.json": NOT_UTF8,
    "i_string_utf16LE_no_BOM.json": NOT_UTF8,
    "i_string_iso_latin_1.json": NOT_UTF8,
    # Bytes that are not UTF-8: invalid sequences, encoded surrogates, beyond U+10FFFF, overlong, truncated.
    "i_string_UTF-8_invalid_sequence.json": NOT_UTF8,
    "i_string_UTF8_surrogate_U+D800.json": NOT_UTF8,
    "i_string_invalid_utf-8.json": NOT_UTF8,
    "i_string_lone_utf8_continuation_byte.json": NOT_UTF8,
    "i_string_not_in_unicode_range.json": NOT_UTF8,
    "i_string_overlong_sequence_2_bytes.json": NOT_UTF8,
    "i_string_overlong_sequence_6_bytes.json": NOT_UTF8,
    "i_string_overlong_sequence_6_bytes_null.json": NOT_UTF8,
    "i_string_truncated-utf-8.json": NOT_UTF8,
    # Deep nesting: past MAX_JSON_DEPTH (64 levels), which bounds the parser's recursion.
    "i_structure_500_nested_arrays.json": TOO_DEEP,
    # A UTF-8 byte-order mark: senders MUST NOT add one (RFC 8259 §8.1); we do not strip it silently.
    "i_structure_UTF-8_BOM_empty_object.json": NOT_JSON,
}

TRANSFORM_OUTCOMES = {
    "number_-9223372036854775808.json": [-9223372036854775808],
    "number_-9223372036854775809.json": INTEGER_OUT_OF_RANGE,
    "number_1.0.json": [1.0],
    "number_1.000000000000000005.json": [1.0],
    "number_1000000000000000.json": [1000000000000000],
    "number_10000000000000000999.json": INTEGER_OUT_OF_RANGE,
    "number_1e-999.json": [0.0],
    "number_1e6.json": [1000000.0],
    "number_9223372036854775807.json": [9223372036854775807],
    "number_9223372036854775808.json": INTEGER_OUT_OF_RANGE,
    "object_key_nfc_nfd.json": {"\u00e9": "NFC", "e\u0301": "NFD"},
    "object_key_nfd_nfc.json": {"e\u0301": "NFD", "\u00e9": "NFC"},
    "object_same_key_different_values.json": DUPLICATE_KEY,
    "object_same_key_same_value.json": DUPLICATE_KEY,
    "object_same_key_unclear_values.json": DUPLICATE_KEY,
    "string_1_escaped_invalid_codepoint.json": INVALID_STRING,
    "string_1_invalid_codepoint.json": NOT_UTF8,
    "string_2_escaped_invalid_codepoints.json": INVALID_STRING,
    "string_2_invalid_codepoints.json": NOT_UTF8,
    "string_3_escaped_invalid_codepoints.json": INVALID_STRING,
    "string_3_invalid_codepoints.json": NOT_UTF8,
    "string_with_escaped_NULL.json": ["A\x00B"],
}


def read(name: str, folder: str = "test_parsing") -> bytes:
    return (SUITE / folder / name).read_bytes()


def with_prefix(prefix: str) -> list[str]:
    return [name for name in PARSING_FILES if name.startswith(prefix)]


def decode_file(name: str) -> DecodedEntity | FailedRecord:
    return decode_one(read(name), schemaRef=EVENT_ID)


def assert_decodes_as_parsed(name: str) -> None:
    """A file that parses: an object decodes to that entity, any other value fails with UNKNOWN_ENVELOPE."""
    value = parse_json(read(name))
    output = decode_file(name)
    if type(value) is dict:
        assert (type(output), output.entity) == (DecodedEntity, value)
    else:
        assert codes(output) == [UNKNOWN_ENVELOPE]


def test_the_suite_is_all_there():
    counts = {prefix: len(with_prefix(prefix)) for prefix in ("n_", "y_", "i_")}
    assert (counts, len(PARSING_FILES), len(TRANSFORM_FILES)) == ({"n_": 188, "y_": 95, "i_": 35}, 318, 22)


@pytest.mark.parametrize("name", with_prefix("n_"))
def test_invalid_json_fails_the_message_with_a_decode_code(name):
    output = decode_file(name)
    assert isinstance(output, FailedRecord)
    assert [error.code.startswith("DECODE.") for error in output.errors] == [True]
    assert (output.index, output.data) == (None, read(name))


@pytest.mark.parametrize("name", sorted(set(with_prefix("y_")) - set(Y_REJECTED_ON_PURPOSE)))
def test_valid_json_parses_and_decodes_by_its_shape(name):
    assert_decodes_as_parsed(name)


@pytest.mark.parametrize("name", sorted(Y_REJECTED_ON_PURPOSE))
def test_valid_json_with_a_duplicated_key_is_rejected_on_purpose(name):
    assert codes(decode_file(name)) == [Y_REJECTED_ON_PURPOSE[name]]


def test_every_implementation_defined_file_has_a_documented_outcome():
    assert sorted(I_OUTCOMES) == with_prefix("i_")


def test_the_docstring_table_documents_every_implementation_defined_outcome():
    rows = re.findall(r"^([\w+-]+)(?: \(.*?\))? {2,}(parses|DECODE\.\w+)", __doc__, re.MULTILINE)
    assert {f"i_{name}.json": outcome for name, outcome in rows} == I_OUTCOMES


@pytest.mark.parametrize("name", with_prefix("i_"))
def test_implementation_defined_file_has_its_documented_outcome(name):
    expected = I_OUTCOMES.get(name)
    if expected == PARSES:
        assert_decodes_as_parsed(name)
    else:
        assert codes(decode_file(name)) == [expected]


def test_every_transform_file_has_an_expected_outcome():
    assert sorted(TRANSFORM_OUTCOMES) == TRANSFORM_FILES


@pytest.mark.parametrize("name", TRANSFORM_FILES)
def test_transform_file_parses_to_its_expected_value_or_code(name):
    expected = TRANSFORM_OUTCOMES.get(name)
    try:
        found = parse_json(read(name, "test_transform"))
    except JsonRejected as rejected:
        found = rejected.code
    assert repr(found) == repr(expected)  # repr tells 1.0 from 1


def test_nfc_and_nfd_keys_stay_two_distinct_keys():
    assert len(parse_json(read("object_key_nfc_nfd.json", "test_transform"))) == 2
