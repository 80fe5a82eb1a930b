"""Impression and click events: the wire schema of design.md, decoded and validated.

Events arrive as JSON on Kafka and as rows of Parquet files. Both paths end in the
same frozen ``msgspec`` structs, so every later stage sees validated values only.

A JSON record is rejected (:class:`InvalidEvent`, with a one-line reason) when it

* has no value (a Kafka tombstone): ``no value``;
* is longer than :data:`MAX_EVENT_BYTES`, checked before parsing:
  ``oversized: N bytes > 65536``;
* is not UTF-8 JSON, or not one JSON object;
* lacks a required field, or has a field the schema does not know (the reason names it);
* has a value of the wrong type: a string where an int is due or the reverse, a bool
  or a float for an int, a non-string context value, an empty id;
* has a negative ``position`` or ``ts``, or one beyond int64 (the joiner's arrays are
  int64: a larger value would stop the loop, not just this record).

>>> imp = decode_impression(b'{"impression_id": "i1", "request_id": "r1", "user_id": "u1",'
...                         b' "item_id": "it9", "category_id": "c3", "position": 0, "ts": 1000}')
>>> imp.item_id, imp.position, imp.context
('it9', 0, {})
>>> decode_click(b'{"impression_id": "i1", "user_id": "u1", "ts": "soon"}')
Traceback (most recent call last):
...
features.events.InvalidEvent: Expected `int`, got `str` - at `$.ts`
>>> decode_click(b'{"impression_id": "i1", "user_id": "u1", "ts": 5, "session": "s9"}')
Traceback (most recent call last):
...
features.events.InvalidEvent: Object contains unknown field `session`
"""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = [
    "CLICK_FIELDS",
    "IMPRESSION_FIELDS",
    "MAX_EVENT_BYTES",
    "Click",
    "Impression",
    "InvalidEvent",
    "decode_click",
    "decode_impression",
    "encode_event",
    "invalid_event",
    "unparsed_event",
]

# A record's size limit, checked before parsing. A real impression is ~250 bytes and
# even a hundred context entries stay under 10 KiB, so anything near the limit is a
# producer's bug (a user_id of megabytes), and parsing it would only cost the hot path
# time and memory. 64 KiB also keeps the DLQ working: a rejected record within the
# limit, copied into a DLQ message as JSON text, stays under Kafka's default 1 MiB
# message size even when every byte needs a six-byte ``\u00XX`` escape.
MAX_EVENT_BYTES = 64 * 1024

_INT64_MAX = 2**63 - 1
# Longer than any reason msgspec gives for a schema field: only a long unknown field
# name (echoed by msgspec) is cut.
_MAX_REASON_CHARS = 200

NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1)]
NonNegativeInt64 = Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX)]


# forbid_unknown_fields: a field we do not know is a producer speaking another schema;
# silently dropping it would hide that (issue 7 lists unknown fields as poison). It also
# means msgspec never skips an arbitrary value, so nesting depth is bounded by the
# schema: a deeply nested value cannot hit the recursion limit. omit_defaults: an empty
# context is not written, so encode_event never makes a record longer than the one it
# was decoded from, and what was accepted once (a joiner snapshot) decodes again.
class Impression(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True,
                 omit_defaults=True):
    """One item shown to one user at one position of a ranked list (topic ``impressions``)."""

    impression_id: NonEmptyStr
    request_id: NonEmptyStr
    user_id: NonEmptyStr
    item_id: NonEmptyStr
    category_id: NonEmptyStr
    position: NonNegativeInt64
    ts: NonNegativeInt64
    context: dict[str, str] = {}


class Click(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    """A click on a shown item (topic ``clicks``); ``ts`` is the click's own event time."""

    impression_id: NonEmptyStr
    user_id: NonEmptyStr
    ts: NonNegativeInt64


IMPRESSION_FIELDS: tuple[str, ...] = Impression.__struct_fields__
CLICK_FIELDS: tuple[str, ...] = Click.__struct_fields__


class InvalidEvent(ValueError):
    """A record that does not match the event schema; the message says why in one line."""


_impression_decoder = msgspec.json.Decoder(Impression)
_click_decoder = msgspec.json.Decoder(Click)
_encoder = msgspec.json.Encoder()

Raw = bytes | bytearray | memoryview | str | None


# decode_impression and decode_click repeat their three lines of checks rather than call a
# shared helper: decoding is on the hot path, and this keeps it at one Python call per
# record (what is left costs ~5 % over msgspec's own decode).
def decode_impression(raw: Raw) -> Impression:
    """Decode and validate one JSON impression (UTF-8 bytes, or text).

    Raises :class:`InvalidEvent` on bad input (the rules above), ``None`` — a Kafka
    record without a value, a tombstone — included.
    """
    if raw is None or len(raw) > MAX_EVENT_BYTES:
        raise unparsed_event(raw)
    try:
        return _impression_decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeEncodeError) as exc:
        raise invalid_event(exc) from None


def decode_click(raw: Raw) -> Click:
    """Decode and validate one JSON click; as :func:`decode_impression`."""
    if raw is None or len(raw) > MAX_EVENT_BYTES:
        raise unparsed_event(raw)
    try:
        return _click_decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeEncodeError) as exc:
        raise invalid_event(exc) from None


def unparsed_event(raw: Raw, limit: int = MAX_EVENT_BYTES) -> InvalidEvent:
    """Why a record is rejected before parsing: no value, or longer than ``limit``."""
    if raw is None:
        return InvalidEvent("no value")
    # Text (tests, joiner snapshots) is measured in characters: Kafka values are bytes,
    # and a str is this process's own re-encoding of a record it accepted.
    unit = "characters" if isinstance(raw, str) else "bytes"
    return InvalidEvent(f"oversized: {len(raw)} {unit} > {limit}")


def invalid_event(exc: msgspec.DecodeError | UnicodeEncodeError) -> InvalidEvent:
    """msgspec's reason as one short printable line (a UnicodeEncodeError: text with a lone
    surrogate, which msgspec cannot encode as UTF-8)."""
    reason = str(exc) if isinstance(exc, msgspec.DecodeError) else f"not UTF-8 text: {exc}"
    if not reason.isprintable():  # msgspec echoes an unknown field's name as given
        reason = reason.encode("unicode_escape").decode("ascii")
    if len(reason) > _MAX_REASON_CHARS:
        reason = reason[:_MAX_REASON_CHARS - 1] + "…"
    return InvalidEvent(reason)


def encode_event(event: Impression | Click) -> bytes:
    """JSON bytes of an event, as published to Kafka (an empty context is left out)."""
    return _encoder.encode(event)
