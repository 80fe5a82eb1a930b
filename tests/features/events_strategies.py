"""The event schema as a model on Python's ``json``, and hypothesis strategies of records.

Shared by the decoder fuzz tests (``test_events_fuzz.py``) and the service's poison
test (``tests/pipeline/test_poison.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from features.events import MAX_EVENT_BYTES, Click, Impression, decode_click, decode_impression

INT64_MAX = 2**63 - 1


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


def is_poison(raw: bytes | None, schema: Schema) -> bool:
    """Whether the decoder must reject ``raw`` (``None``: a tombstone)."""
    if raw is None:
        return True
    try:
        return expected_fields(raw, schema) is None
    except DuplicateKey:  # undecided by the model: not used as poison
        return False


@st.composite
def oversized(draw: st.DrawFn, schema: Schema) -> bytes:
    """A valid event but for its size: a user_id that takes it past the limit."""
    fields = draw(valid_fields(schema))
    over = MAX_EVENT_BYTES - len(dumps(fields, ascii_only=True)) + draw(st.integers(1, 4096))
    fields["user_id"] += "x" * over
    return dumps(fields, ascii_only=True)


def poison_records(schema: Schema) -> st.SearchStrategy[bytes | None]:
    """Small records a producer with a bug might write, each one invalid for ``schema``.

    Oversized ones are drawn apart (:func:`oversized`): here they would be a third of all.
    """
    return st.one_of(
        st.none(),  # a tombstone
        st.binary(max_size=40),
        json_values.map(lambda value: dumps(value, ascii_only=False)),
        mutated_fields(schema).map(lambda fields: dumps(fields, ascii_only=False)),
        valid_fields(schema).map(  # not UTF-8
            lambda fields: dumps(fields, ascii_only=False).replace(b'"user_id": "',
                                                                 b'"user_id": "\xff', 1)),
    ).filter(lambda raw: is_poison(raw, schema))
