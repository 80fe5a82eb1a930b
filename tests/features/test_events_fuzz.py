"""Poison records fuzzed with hypothesis: the decoders accept exactly the valid events.

Every verdict is checked against an independent model of the schema built on Python's
own ``json`` module (:func:`expected_fields`): a record decodes if and only if the
model says it is valid, to the fields the model read; otherwise it raises
:class:`InvalidEvent` with a non-empty, printable one-line reason — never any other
exception, since one would stop the service's loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import event, given, reject, settings
from hypothesis import strategies as st

from features.events import (
    MAX_EVENT_BYTES,
    Click,
    Impression,
    InvalidEvent,
    decode_click,
    decode_impression,
    encode_event,
)

INT64_MAX = 2**63 - 1
# Decoding takes microseconds; drawing the records is what costs (~12 s for the file).
MANY = settings(max_examples=500, deadline=None)


@dataclass(frozen=True)
class Schema:
    kind: type[Impression] | type[Click]
    texts: tuple[str, ...]  # non-empty strings
    ints: tuple[str, ...]  # 0 <= value <= INT64_MAX
    has_context: bool

    @property
    def fields(self) -> tuple[str, ...]:
        return (*self.texts, *self.ints, *(("context",) if self.has_context else ()))

    def decode(self, raw: Any) -> Impression | Click:
        return (decode_impression if self.kind is Impression else decode_click)(raw)


IMPRESSION = Schema(Impression, ("impression_id", "request_id", "user_id", "item_id",
                                 "category_id"), ("position", "ts"), has_context=True)
CLICK = Schema(Click, ("impression_id", "user_id"), ("ts",), has_context=False)
SCHEMAS = pytest.mark.parametrize("schema", [IMPRESSION, CLICK], ids=["impression", "click"])


class DuplicateKey(ValueError):
    pass


def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Python's json keeps the last of duplicate keys; msgspec validates every one. No
    # producer of ours writes duplicates, so the model leaves such records undecided.
    keys = [k for k, _ in pairs]
    if len(set(keys)) < len(keys):
        raise DuplicateKey(keys)
    return dict(pairs)


def is_text(value: Any) -> bool:
    """A str that UTF-8 can carry (json reads a lone ``\\ud800`` escape; UTF-8 cannot)."""
    return type(value) is str and not any("\ud800" <= c <= "\udfff" for c in value)


def expected_fields(raw: bytes, schema: Schema) -> dict[str, Any] | None:
    """The model: the event's fields if ``raw`` is a valid event, else None."""
    if len(raw) > MAX_EVENT_BYTES:
        return None
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except DuplicateKey:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if type(obj) is not dict or not set(obj) <= set(schema.fields):
        return None
    if not all(k in obj for k in (*schema.texts, *schema.ints)):
        return None
    if not all(is_text(obj[k]) and obj[k] for k in schema.texts):
        return None
    if not all(type(obj[k]) is int and 0 <= obj[k] <= INT64_MAX for k in schema.ints):
        return None
    context = obj.get("context", {})
    if type(context) is not dict or not all(is_text(k) and is_text(v)
                                            for k, v in context.items()):
        return None
    return obj


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


# -- strategies -------------------------------------------------------------------------

ids = st.text(min_size=1, max_size=12)
times = st.integers(min_value=0, max_value=INT64_MAX)
contexts = st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4)
json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8)
                | st.floats(allow_nan=False, allow_infinity=False))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=12)
# Values a producer with a bug would write: wrong types, the edges of int64, empties.
poison_values = (json_values | st.sampled_from([
    "", 0.0, 1.5, -1, True, False, None, [], {}, INT64_MAX, INT64_MAX + 1, -(2**63),
    2**64, 10**30, "1700000000000", [1], {"ts": 1}]))
near_field_names = st.sampled_from(["Ts", "ts ", "user-id", "userId", "context_",
                                    "impressionId", "extra", ""])


@st.composite
def valid_fields(draw: st.DrawFn, schema: Schema) -> dict[str, Any]:
    fields: dict[str, Any] = {k: draw(ids) for k in schema.texts}
    fields.update({k: draw(times) for k in schema.ints})
    if schema.has_context and draw(st.booleans()):
        fields["context"] = draw(contexts)
    return fields


@st.composite
def mutated_fields(draw: st.DrawFn, schema: Schema) -> dict[str, Any]:
    """A valid event with up to three bugs: a field dropped, retyped, added, a bad context."""
    fields = draw(valid_fields(schema))
    for _ in range(draw(st.integers(0, 3))):
        mutation = draw(st.sampled_from(["drop", "set", "add", "context"]))
        if mutation == "drop" and fields:
            fields.pop(draw(st.sampled_from(sorted(fields))))
        elif mutation == "set":
            fields[draw(st.sampled_from(schema.fields))] = draw(poison_values)
        elif mutation == "add":
            fields[draw(near_field_names | st.text(max_size=10))] = draw(poison_values)
        elif mutation == "context":
            fields["context"] = draw(st.dictionaries(st.text(max_size=6), poison_values,
                                                     max_size=3) | poison_values)
    return fields


def dumps(fields: Any, ascii_only: bool) -> bytes:
    return json.dumps(fields, ensure_ascii=ascii_only).encode("utf-8")


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
