from __future__ import annotations

import json

import pytest

from features.events import (
    MAX_EVENT_BYTES,
    Click,
    Impression,
    InvalidEvent,
    decode_click,
    decode_impression,
    encode_event,
)

GOOD_IMPRESSION = {
    "impression_id": "i1",
    "request_id": "r1",
    "user_id": "u1",
    "item_id": "it1",
    "category_id": "c1",
    "position": 3,
    "ts": 1_700_000_000_000,
    "context": {"device": "ios"},
}


def test_impression_round_trips_through_json():
    imp = decode_impression(json.dumps(GOOD_IMPRESSION))
    assert imp == Impression(**GOOD_IMPRESSION)
    assert decode_impression(encode_event(imp)) == imp


def test_missing_context_means_empty():
    raw = {k: v for k, v in GOOD_IMPRESSION.items() if k != "context"}
    assert decode_impression(json.dumps(raw)).context == {}


def test_an_unknown_field_is_rejected_by_name():
    raw = dict(GOOD_IMPRESSION, experiment="x7")
    with pytest.raises(InvalidEvent, match=r"^Object contains unknown field `experiment`$"):
        decode_impression(json.dumps(raw))


def test_an_empty_context_is_left_out_of_the_encoded_event():
    raw = {k: v for k, v in GOOD_IMPRESSION.items() if k != "context"}
    assert json.loads(encode_event(Impression(**raw))) == raw


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"position": "3"}, "Expected `int`, got `str` - at `$.position`"),
        ({"position": -1}, "Expected `int` >= 0 - at `$.position`"),
        ({"ts": 1.5}, "Expected `int`, got `float` - at `$.ts`"),
        ({"user_id": ""}, "Expected `str` of length >= 1 - at `$.user_id`"),
        ({"item_id": None}, "Expected `str`, got `null` - at `$.item_id`"),
        ({"context": {"device": 1}}, "Expected `str`, got `int` - at `$.context[...]`"),
        ({"position": True}, "Expected `int`, got `bool` - at `$.position`"),
        ({"ts": 2**63}, "Expected `int` <= 9223372036854775807 - at `$.ts`"),
        ({"position": 2**64}, "Expected `int` <= 9223372036854775807 - at `$.position`"),
        ({"ts": -(2**63) - 1}, "Expected `int` >= 0 - at `$.ts`"),
    ],
)
def test_bad_impression_field_gives_one_line_reason(change, reason):
    with pytest.raises(InvalidEvent) as exc:
        decode_impression(json.dumps(dict(GOOD_IMPRESSION, **change)))
    assert str(exc.value) == reason


def test_missing_required_field_is_named():
    raw = {k: v for k, v in GOOD_IMPRESSION.items() if k != "request_id"}
    with pytest.raises(InvalidEvent, match="missing required field `request_id`"):
        decode_impression(json.dumps(raw))


def test_non_json_bytes_are_invalid_not_a_crash():
    with pytest.raises(InvalidEvent, match="JSON"):
        decode_click(b"\xff\x00garbage")


@pytest.mark.parametrize("decode", [decode_impression, decode_click])
def test_a_record_without_a_value_is_invalid_not_a_crash(decode):
    with pytest.raises(InvalidEvent, match=r"^no value$"):  # a Kafka tombstone
        decode(None)


def test_click_decodes_and_validates():
    assert decode_click(b'{"impression_id":"i1","user_id":"u1","ts":5}') == Click("i1", "u1", 5)
    with pytest.raises(InvalidEvent, match="impression_id"):
        decode_click(b'{"user_id":"u1","ts":5}')


def test_the_largest_int64_time_is_accepted():
    assert decode_click(b'{"impression_id":"i","user_id":"u","ts":9223372036854775807}').ts == (
        2**63 - 1)


@pytest.mark.parametrize("decode", [decode_impression, decode_click])
def test_a_record_over_the_size_limit_is_rejected_before_parsing(decode):
    raw = b"{" + b" " * MAX_EVENT_BYTES + b"}"  # not even an event: the size decides first
    with pytest.raises(InvalidEvent, match=rf"^oversized: {len(raw)} bytes > {MAX_EVENT_BYTES}$"):
        decode(raw)


def test_deep_nesting_under_an_unknown_field_is_rejected_not_a_recursion_error():
    raw = b'{"impression_id":"i","user_id":"u","ts":1,"x":' + b'{"a":' * 10_000 + b"1" + (
        b"}" * 10_001)
    with pytest.raises(InvalidEvent, match="unknown field `x`"):
        decode_click(raw)


def test_text_with_a_lone_surrogate_is_invalid_not_a_crash():
    with pytest.raises(InvalidEvent, match=r"^not UTF-8 text: .*surrogates not allowed$"):
        decode_click('{"impression_id":"\ud800","user_id":"u","ts":1}')


def test_a_reason_echoing_a_field_name_stays_one_short_line():
    name = "bad\nname" + "x" * 1_000
    with pytest.raises(InvalidEvent) as exc:
        decode_click(json.dumps({"impression_id": "i", "user_id": "u", "ts": 1, name: 0}))
    reason = str(exc.value)
    assert reason.startswith("Object contains unknown field `bad\\nname")
    assert reason.isprintable() and len(reason) <= 200
