"""Poison records fuzzed with hypothesis: the decoders accept exactly the valid events.

Every verdict is checked against an independent model of the schema built on Python's
own ``json`` module (:func:`expected_fields`): a record decodes if and only if the
model says it is valid, to the fields the model read; otherwise it raises
:class:`InvalidEvent` with a non-empty, printable one-line reason — never any other
exception, since one would stop the service's loop.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import event, given, reject, settings
from hypothesis import strategies as st

from features.events import MAX_EVENT_BYTES, Click, Impression, InvalidEvent, encode_event
from tests.features.events_strategies import (
    CLICK,
    IMPRESSION,
    DuplicateKey,
    Schema,
    dumps,
    expected_fields,
    json_values,
    mutated_fields,
    valid_fields,
)

# Decoding takes microseconds; drawing the records is what costs (~12 s for the file).
MANY = settings(max_examples=500, deadline=None)
SCHEMAS = pytest.mark.parametrize("schema", [IMPRESSION, CLICK], ids=["impression", "click"])


def assert_one_line_reason(exc: InvalidEvent) -> None:
    reason = str(exc)
    assert reason and reason.isprintable() and len(reason) <= 200, repr(reason)


def check(raw: bytes, schema: Schema, *, as_text: bool = False) -> Impression | Click | None:
    """Decode ``raw`` (as bytes, or as text); assert the verdict is the model's."""
    try:
        expected = expected_fields(raw, schema)
    except DuplicateKey:
        reject()
    value = raw.decode("utf-8") if as_text else raw
    if expected is None:
        with pytest.raises(InvalidEvent) as exc:
            schema.decode(value)
        assert_one_line_reason(exc.value)
        event("invalid")  # hypothesis statistics: both verdicts are exercised
        return None
    decoded = schema.decode(value)
    assert decoded == schema.kind(**expected)
    # Never longer re-encoded: a joiner snapshot of accepted records decodes again.
    assert len(encode_event(decoded)) <= len(raw)
    event("valid")
    return decoded


# -- properties ---------------------------------------------------------------------------

@SCHEMAS
@MANY
@given(data=st.data())
def test_a_record_with_wrong_missing_or_unknown_fields_decodes_only_if_valid(schema, data):
    fields = data.draw(mutated_fields(schema))
    check(dumps(fields, data.draw(st.booleans())), schema, as_text=data.draw(st.booleans()))


@SCHEMAS
@MANY
@given(value=json_values)
def test_json_of_the_wrong_shape_is_invalid(schema, value):
    raw = dumps(value, ascii_only=False)
    with pytest.raises(InvalidEvent) as exc:
        schema.decode(raw)
    assert_one_line_reason(exc.value)


@SCHEMAS
@MANY
@given(data=st.data())
def test_a_corrupted_record_decodes_only_if_still_valid(schema, data):
    """A valid record truncated, with bytes overwritten or inserted: often still JSON."""
    raw = bytearray(dumps(data.draw(valid_fields(schema)), data.draw(st.booleans())))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw)))
        how = data.draw(st.sampled_from(["truncate", "overwrite", "insert"]))
        if how == "truncate":
            del raw[at:]
        elif how == "overwrite" and at < len(raw):
            raw[at] = data.draw(st.integers(0, 255))
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=3)
                                   | st.sampled_from([b'"', b"{", b"}", b",", b"-", b"0",
                                                      b"\\", b"\xc3", b"\xed\xa0\x80"]))
    check(bytes(raw), schema)


@SCHEMAS
@MANY
@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes_are_invalid_or_a_valid_event(schema, raw):
    check(raw, schema)


@SCHEMAS
@MANY
@given(text=st.text(st.characters(exclude_categories=()), max_size=100))
def test_arbitrary_text_even_with_lone_surrogates_never_crashes(schema, text):
    try:
        schema.decode(text)
    except InvalidEvent as exc:
        assert_one_line_reason(exc)


@SCHEMAS
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_the_size_limit_is_exact_and_checked_before_anything_else(schema, data):
    """Padding a field to just below, at or above the limit: only the size decides."""
    fields = data.draw(valid_fields(schema))
    base = len(dumps(fields, ascii_only=True))
    target = data.draw(st.integers(MAX_EVENT_BYTES - 3, MAX_EVENT_BYTES + 3)
                       | st.integers(MAX_EVENT_BYTES + 4, 4 * MAX_EVENT_BYTES))
    fields["user_id"] += "x" * (target - base)
    raw = dumps(fields, ascii_only=True)
    assert len(raw) == target
    if data.draw(st.booleans()):  # broken as well: the size is still the reason given
        raw = raw[:-1]
    if len(raw) <= MAX_EVENT_BYTES:
        check(raw, schema)
    else:
        with pytest.raises(InvalidEvent, match=rf"^oversized: {len(raw)} bytes > "
                                               rf"{MAX_EVENT_BYTES}$"):
            schema.decode(raw)


@SCHEMAS
@MANY
@given(data=st.data())
def test_what_is_encoded_decodes_to_itself_and_never_grows(schema, data):
    """Every event the Parquet path, the generator or a snapshot encodes is accepted again.

    ``encode_event`` writes only schema fields, so no published event is ever an
    unknown-field reject; and re-encoding a decoded record never makes it longer, so a
    joiner snapshot of accepted records stays within the size limit.
    """
    fields = data.draw(valid_fields(schema))
    event = schema.kind(**fields)
    assert schema.decode(encode_event(event)) == event
    # The same event as some producer may have written it: spaced, escaped, keys reordered.
    keys = data.draw(st.permutations(sorted(fields)))
    raw = json.dumps({k: fields[k] for k in keys}, ensure_ascii=data.draw(st.booleans()),
                     indent=data.draw(st.none() | st.integers(0, 2))).encode()
    decoded = schema.decode(raw)
    assert decoded == event and len(encode_event(decoded)) <= len(raw)
