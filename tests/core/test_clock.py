"""``parse_rfc3339`` remembers its answers: what it remembers must be what it would have parsed."""

from hypothesis import given
from hypothesis import strategies as st

from core.clock import parse_rfc3339

# Texts near the RFC 3339 form, so that most draws are date-times or just miss being one (a day or an hour out of
# range, a lower-case separator, a missing offset, ten fractional digits).
_NEAR_RFC3339 = st.from_regex(
    r"\A[0-9]{4}-[01][0-9]-[0-3][0-9][Tt ][0-2][0-9]:[0-6][0-9]:[0-6][0-9]"
    r"(\.[0-9]{1,10})?([Zz]|[+-][0-2][0-9]:[0-6][0-9])?\Z"
)


@given(st.lists(_NEAR_RFC3339 | st.text(max_size=40), max_size=20))
def test_a_remembered_answer_is_the_answer_parsing_gives(texts):
    for text in texts + texts:  # each text read twice: the second read is answered from memory
        assert repr(parse_rfc3339(text)) == repr(parse_rfc3339.__wrapped__(text))  # offsets too, not just instants


def test_memory_is_bounded():
    texts = [f"2026-11-01T09:00:{second % 60:02d}.{second:06d}Z" for second in range(5000)]
    for text in texts:
        parse_rfc3339(text)
    assert parse_rfc3339.cache_info().currsize <= 4096
