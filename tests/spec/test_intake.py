"""From bytes to a callback: JSON rules, media types and the deduplication key."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.spec import intake
from app.spec.intake import (
    CallbackKind,
    Reason,
    Rejection,
    check_media_type,
    is_json_media_type,
    parse_json,
    read,
)
from tests import payloads

SAMPLE = payloads.fixture("message_status_sample.json")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"a": NaN}', "NaN"),
        (b'{"a": Infinity}', "Infinity"),
        (b'{"a": -Infinity}', "Infinity"),
        (b'{"a": 1e999}', "finite"),
        (b'{"a": "x\\u0000y"}', "NUL"),
        (b'{"x\\u0000": 1}', "NUL"),
        (b'{"a": "\\ud800"}', "surrogate"),
        (b"[" * 40 + b"]" * 40, "deeper than 32"),
        (b"[" * 100_000 + b"]" * 100_000, "deeper than 32"),
        (b"1" * 5000, "not valid JSON"),
    ],
)
def test_unstorable_json_is_refused_as_malformed(body: bytes, fragment: str) -> None:
    with pytest.raises(Rejection) as caught:
        parse_json(body, max_depth=32)
    assert caught.value.http_status == 400
    assert caught.value.reason is Reason.MALFORMED_JSON
    assert fragment in caught.value.message


# Any JSON text, with the strings and numbers that cannot be stored among the rest.
_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.sampled_from(["x\x00y", "\ud800", "\udc00z", "\ud83d\ude00"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30,
)


def _infinite(value: object) -> bool:
    """Whether a parsed document holds a non-finite number anywhere."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_infinite(item) for item in value.values())
    if isinstance(value, list):
        return any(_infinite(item) for item in value)
    return False


def _every_problem(value: object, max_depth: int) -> str | None:
    """The verdict of walking the whole document, as every body was checked before."""
    return "finite" if _infinite(value) else intake._unstorable(value, max_depth)


@settings(max_examples=300, deadline=None)
@given(_JSON_VALUES, st.integers(min_value=1, max_value=6), st.booleans())
def test_only_bodies_that_cannot_hold_a_problem_skip_the_walk(
    value: object, max_depth: int, ascii_only: bool
) -> None:
    """The shortcut in parse_json refuses exactly what walking every body refused."""
    # json.dumps writes infinity as Infinity (refused by name); 1e999 is how it comes.
    text = json.dumps(value, ensure_ascii=ascii_only, allow_nan=True).replace("Infinity", "1e999")
    try:
        body = text.encode("utf-8")
    except UnicodeEncodeError:
        return  # a raw lone surrogate is not UTF-8: refused before any of this
    meant = json.loads(text)  # what the body says (escaped surrogate pairs join)
    expected = _every_problem(meant, max_depth)
    try:
        assert parse_json(body, max_depth) == meant
    except Rejection as refused:
        assert expected is not None, refused.message
        return
    assert expected is None


def test_json_at_exactly_the_depth_limit_is_accepted() -> None:
    assert parse_json(b"[" * 32 + b"]" * 32, max_depth=32) is not None
    assert parse_json('{"a": "é✓"}'.encode(), max_depth=32) == {"a": "é✓"}


@pytest.mark.parametrize(
    ("content_type", "ok"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("application/vnd.vonage+json", True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("", False),
        (None, False),
    ],
)
def test_json_media_types(content_type: str | None, ok: bool) -> None:
    assert is_json_media_type(content_type) is ok
    if not ok:
        with pytest.raises(Rejection) as caught:
            check_media_type(content_type)
        assert caught.value.http_status == 415


def test_schema_violations_carry_string_keyed_field_errors() -> None:
    body = json.dumps(
        {
            "dispatch_uuid": "d",
            "status": "completed",
            "timestamp": "2020-01-01T00:00:00Z",
            "_links": {"messages": [{"channel": "fax"}]},
        }
    ).encode()
    with pytest.raises(Rejection) as caught:
        read(CallbackKind.FINAL_REPORT, body, max_depth=32)
    assert caught.value.http_status == 422
    assert caught.value.errors == {
        "_links": {
            "messages": {
                "0": {
                    "message_uuid": ["Missing data for required field."],
                    "channel": [
                        "Must be one of: sms, mms, messenger, viber_service_msg, whatsapp."
                    ],
                }
            }
        }
    }
    json.dumps(caught.value.errors)  # storable and sendable as is


def test_dedup_key_ignores_spacing_and_key_order_but_not_content() -> None:
    compact = json.dumps(SAMPLE, separators=(",", ":")).encode()
    spaced = json.dumps(dict(reversed(list(SAMPLE.items()))), indent=4).encode()
    changed = json.dumps({**SAMPLE, "status": "read"}).encode()
    key = read(CallbackKind.MESSAGE_STATUS, compact, 32).dedup_key
    assert read(CallbackKind.MESSAGE_STATUS, spaced, 32).dedup_key == key
    assert read(CallbackKind.MESSAGE_STATUS, changed, 32).dedup_key != key
