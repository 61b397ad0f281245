import datetime as dt
import subprocess
import sys

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from widelog.events.event import (
    UndecodableEventError,
    WideEvent,
    decode,
    encode,
    is_error,
    safe_key,
)


def new_event() -> WideEvent:
    return WideEvent({"event_id": "e1", "request_id": "r1"}, started_ns=0)


def test_dotted_keys_are_nested_documents():
    event = new_event()
    event.set("llm.model", "m1")
    event.set("llm.input_tokens", 12)
    assert {"model": "m1", "input_tokens": 12} == event.doc["llm"]
    assert "m1" == event.get("llm.model")


def test_operator_keys_are_escaped_at_every_level():
    event = new_event()
    event.set("$where.x", 1)
    event.set("payload", {"$gt": 1, "a.b": {"$ne": 2}, "c\x00d": 3})
    assert {"x": 1} == event.doc["\uff04where"]
    assert {"\uff04gt": 1, "a\uff0eb": {"\uff04ne": 2}, "cd": 3} == event.doc["payload"]


def test_values_json_cannot_carry_are_stringified():
    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    event = new_event()
    event.set("thing", Opaque())
    event.set("huge", 2**80)
    event.set("tags", {"b", "a"})
    assert "opaque!" == event.doc["thing"]
    assert str(2**80) == event.doc["huge"]
    assert ["a", "b"] == sorted(event.doc["tags"])


def test_a_broken_str_does_not_raise():
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError

    event = new_event()
    event.set("broken", Broken())
    assert "<unprintable Broken>" == event.doc["broken"]


def test_reference_cycles_end_at_max_depth():
    cyclic: dict[str, object] = {}
    cyclic["self"] = cyclic
    event = new_event()
    event.set("cyclic", cyclic)
    assert encode(event.doc, max_bytes=1 << 20)


def test_naive_datetimes_are_taken_as_utc():
    event = new_event()
    event.set("when", dt.datetime(2026, 1, 2, 3, 4, 5))  # noqa: DTZ001 - the naive case is the test
    assert dt.UTC == event.doc["when"].tzinfo


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def assert_storage_safe(value: object) -> None:
    if isinstance(value, dict):
        for key, child in value.items():
            assert not key.startswith("$")
            assert "." not in key
            assert "\x00" not in key
            assert_storage_safe(child)
    elif isinstance(value, list):
        for child in value:
            assert_storage_safe(child)


@given(key=st.text(min_size=1, max_size=20), value=json_values)
def test_any_field_encodes_and_every_stored_key_is_safe(key, value):
    event = new_event()
    event.set(key, value)
    doc = msgspec.json.decode(encode(event.doc, max_bytes=64 * 1024))
    assert_storage_safe(doc)


# Text where NUL is common, next to the characters that need escaping elsewhere. Lone surrogates
# are covered in test_sanitizing_properties.py (they become U+FFFD at `set()`).
nul_text = st.text(
    alphabet=st.sampled_from("a\x00.$") | st.characters(codec="utf-8"),
    max_size=12,
)
nul_values = st.recursive(
    st.none() | st.integers() | nul_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(nul_text, children, max_size=4)
    ),
    max_leaves=12,
)


def strings_in(value: object) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *strings_in(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return [value] if isinstance(value, str) else []


@given(key=nul_text.filter(bool), value=nul_values, code=nul_text, message=nul_text)
def test_no_string_set_on_an_event_comes_back_from_the_wire_with_a_nul(key, value, code, message):
    event = new_event()
    event.set(key, value)
    event.update({"session_id": message, "user_id": code, "llm.model": message})
    event.set("validation.fields", [{"loc": message, "msg": code}])
    event.error(code, message=message, kind=message)
    event.record_exception(ValueError(message))

    doc = decode(encode(event.doc, max_bytes=64 * 1024))

    assert [] == [s for s in strings_in(doc) if "\x00" in s]


def test_nul_is_removed_from_values_and_the_rest_kept():
    event = new_event()
    event.update({"session_id": "s\x00-1", "llm.model": "\x00gpt"})
    event.error("LLM\x00_TIMEOUT", message="timed\x00 out")
    assert ("s-1", "gpt", "LLM_TIMEOUT", "timed out") == (
        event.get("session_id"),
        event.get("llm.model"),
        event.get("error.code"),
        event.get("error.message"),
    )


def test_an_oversized_event_is_truncated_and_says_so():
    event = new_event()
    event.set("http.route", "/v1/chat")
    event.set("prompt", "x" * 200_000)
    payload = encode(event.doc, max_bytes=64 * 1024)
    doc = msgspec.json.decode(payload)
    assert len(payload) <= 64 * 1024
    assert doc["truncated"] is True
    assert doc["original_bytes"] > 200_000
    assert "/v1/chat" == doc["http"]["route"]


def test_an_event_with_too_many_fields_keeps_its_core_fields():
    event = new_event()
    event.set("http.status", 200)
    for i in range(20_000):
        event.set(f"extra.f{i}", i)
    doc = msgspec.json.decode(encode(event.doc, max_bytes=8 * 1024))
    assert doc["truncated"] is True
    assert "extra" not in doc
    assert 200 == doc["http"]["status"]


def test_a_small_event_is_left_alone():
    doc = msgspec.json.decode(encode(new_event().doc, max_bytes=4096))
    assert "truncated" not in doc


@pytest.mark.parametrize("payload", [b"not json", b"[1,2]", b'{"no_id": 1}', b'{"event_id": 5}'])
def test_decode_rejects_what_is_not_a_wide_event(payload):
    with pytest.raises(UndecodableEventError):
        decode(payload)


def nested(levels: int, *, open_: bytes = b"[", close: bytes = b"]") -> bytes:
    return b'{"event_id":"e","x":' + open_ * levels + close * levels + b"}"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (nested(65), "not a JSON object nested at most 64 levels"),
        (nested(10_000), "not a JSON object nested at most 64 levels"),
        (nested(300, open_=b'{"a":', close=b"}"), "not a JSON object nested at most 64 levels"),
        (b'{"event_id":"e","x":' + b"[" * 100_000, "not a JSON object nested at most 64 levels"),
        (
            b'{"event_id":"e","x":' + b"[1," * 70 + b"]",
            "not a JSON object nested at most 64 levels",
        ),
        (
            b'{"event_id":"' + b"x" * (1024 * 1024) + b'"}',
            "payload of 1048591 bytes (at most 1048576)",
        ),
    ],
)
def test_decode_refuses_payloads_too_deep_or_too_large_to_read_safely(payload, reason):
    with pytest.raises(UndecodableEventError) as refused:
        decode(payload)
    assert reason == str(refused.value)


@pytest.mark.parametrize(
    "payload",
    [
        nested(63),  # 63 lists inside the event object: 64 levels
        b'{"event_id":"e","x":"' + b"[{" * 5000 + b'"}',  # brackets inside a string are text
        b'{"event_id":"e","x":"a\\\\","z":"\\"[[[","y":[' + b"[]," * 5000 + b"[]]}",  # escapes
        b'{"event_id":"e","x":[' + b"{}," * 5000 + b"{}]}",  # wide, not deep
    ],
)
def test_decode_accepts_wide_events_and_brackets_inside_strings(payload):
    assert "e" == decode(payload)["event_id"]


def test_a_deep_payload_never_reaches_msgspec_even_with_a_huge_recursion_limit():
    """msgspec's own guard is the recursion limit: raised this far, it would overflow the stack."""
    script = (
        "import sys; sys.setrecursionlimit(10**7)\n"
        "from widelog.events.event import UndecodableEventError, decode\n"
        "try:\n"
        "    decode(b'{\"event_id\":\"e\",\"x\":' + b'[' * 2_000_000 + b']' * 2_000_000 + b'}')\n"
        "except UndecodableEventError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert (0, "payload of 4000021 bytes (at most 1048576)\n") == (done.returncode, done.stdout)
    script = script.replace("2_000_000", "400_000")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert (0, "not a JSON object nested at most 64 levels\n") == (done.returncode, done.stdout)


@given(
    payload=st.binary(max_size=200)
    | json_values.map(lambda v: msgspec.json.encode({"event_id": "e", "v": v}))
)
def test_decode_returns_an_event_or_says_why_not_and_raises_nothing_else(payload):
    try:
        doc = decode(payload)
    except UndecodableEventError:
        return
    assert isinstance(doc["event_id"], str)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"http": {"status": 200}}, False),
        ({"http": {"status": 404}}, False),
        ({"http": {"status": 503}}, True),
        ({"http": {"status": 200}, "error": {"code": "LLM_TIMEOUT"}}, True),
        ({"error": {"code": None}}, False),
    ],
)
def test_is_error_means_an_error_code_or_a_5xx(doc, expected):
    assert expected == is_error(doc)


def test_safe_key_never_returns_an_empty_name():
    assert "_" == safe_key("")
