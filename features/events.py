"""Impression and click events: the wire schema of design.md, decoded and validated.

Events arrive as JSON on Kafka and as rows of Parquet files. Both paths end in the
same frozen ``msgspec`` structs, so every later stage sees validated values only.

>>> imp = decode_impression(b'{"impression_id": "i1", "request_id": "r1", "user_id": "u1",'
...                         b' "item_id": "it9", "category_id": "c3", "position": 0, "ts": 1000}')
>>> imp.item_id, imp.position, imp.context
('it9', 0, {})
>>> decode_click(b'{"impression_id": "i1", "user_id": "u1", "ts": "soon"}')
Traceback (most recent call last):
...
features.events.InvalidEvent: Expected `int`, got `str` - at `$.ts`
"""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = [
    "CLICK_FIELDS",
    "IMPRESSION_FIELDS",
    "Click",
    "Impression",
    "InvalidEvent",
    "decode_click",
    "decode_impression",
    "encode_event",
]

NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]


class Impression(msgspec.Struct, frozen=True, gc=False):
    """One item shown to one user at one position of a ranked list (topic ``impressions``)."""

    impression_id: NonEmptyStr
    request_id: NonEmptyStr
    user_id: NonEmptyStr
    item_id: NonEmptyStr
    category_id: NonEmptyStr
    position: NonNegativeInt
    ts: NonNegativeInt
    context: dict[str, str] = {}


class Click(msgspec.Struct, frozen=True, gc=False):
    """A click on a shown item (topic ``clicks``); ``ts`` is the click's own event time."""

    impression_id: NonEmptyStr
    user_id: NonEmptyStr
    ts: NonNegativeInt


IMPRESSION_FIELDS: tuple[str, ...] = Impression.__struct_fields__
CLICK_FIELDS: tuple[str, ...] = Click.__struct_fields__


class InvalidEvent(ValueError):
    """A record that does not match the event schema; the message says why in one line."""


_impression_decoder = msgspec.json.Decoder(Impression)
_click_decoder = msgspec.json.Decoder(Click)
_encoder = msgspec.json.Encoder()


def decode_impression(raw: bytes | str | None) -> Impression:
    """Decode and validate one JSON impression; raise :class:`InvalidEvent` on bad input
    (``None``, a Kafka record without a value — a tombstone — included)."""
    if raw is None:
        raise InvalidEvent("no value")
    try:
        return _impression_decoder.decode(raw)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise InvalidEvent(str(exc)) from None


def decode_click(raw: bytes | str | None) -> Click:
    """Decode and validate one JSON click; raise :class:`InvalidEvent` on bad input
    (``None`` included, as :func:`decode_impression`)."""
    if raw is None:
        raise InvalidEvent("no value")
    try:
        return _click_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidEvent(str(exc)) from None


def encode_event(event: Impression | Click) -> bytes:
    """JSON bytes of an event, as published to Kafka."""
    return _encoder.encode(event)
