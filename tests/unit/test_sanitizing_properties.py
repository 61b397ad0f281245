"""Whatever enters an event, or reaches the consumer, ends stored safely or set aside with a reason.

Properties over arbitrary input (hypothesis; the seed is printed on failure):

- `WideEvent.set/update/error/record_exception` never raise, whatever the keys and values;
- `finalize()` then publishes exactly one payload, at most `max_event_bytes`, that `decode` reads
  back, with `truncated` when it had to shrink, and no key anywhere that MongoDB would read as an
  operator or a path (`$…`, `.`, NUL);
- `decode` returns such a document or says why not, and the consumer stores or dead-letters
  every message it is given: nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import math
import tempfile
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from widelog import LoggingService
from widelog.events.event import UndecodableEventError, WideEvent, decode, encode
from widelog.events.redaction import RedactionPolicy, Redactor
from widelog.pipeline.consumer import BatchConsumer
from widelog.pipeline.memory import InProcessEventPublisher, InProcessEventSource, InProcessQueue
from widelog.pipeline.sqlite_store import SQLiteEventStore
from widelog.sampling.policy import TailSampler
from widelog.testing import RecordingPublisher, keep_all

# A fixed, small budget: these run in `make test` on a shared 2-core machine.
BUDGET = settings(max_examples=60, deadline=None)


class BrokenStr:
    """Its repr works: hypothesis prints the examples it found."""

    def __str__(self) -> str:
        raise RuntimeError("no str")


class BrokenRepr:
    """`str()` falls back on `__repr__`, which fails too."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class SurrogateStr:
    def __str__(self) -> str:
        return "half \ud83d of an emoji"


class BrokenMapping(dict[str, Any]):
    def items(self) -> Any:
        raise RuntimeError("items() fails")


class BrokenList(list[Any]):
    def __iter__(self) -> Any:
        raise RuntimeError("iteration fails")


class BrokenException(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")

    @property
    def code(self) -> str:
        raise RuntimeError("no code")


# Characters that break things: operators, path separators, NUL, lone surrogates, full-width
# look-alikes, newlines, and any other character.
awkward = st.sampled_from('$.\x00\ud800\udfff\uff04\uff0e\n"\\ é😀') | st.characters()
text = st.text(alphabet=awkward, max_size=12)
huge_text = st.integers(1, 300_000).map(lambda n: "x\ud800$." * (n // 4))
keys = text | huge_text | st.integers() | st.tuples(st.integers(), text) | st.just(BrokenStr())
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | text
    | huge_text
    | st.binary(max_size=16)  # invalid UTF-8 included
    | st.datetimes(timezones=st.none() | st.timezones())
    | st.sampled_from([dt.datetime.min, dt.datetime.max, dt.date.min, dt.date.max])  # noqa: DTZ901 - naive on purpose
    | st.decimals(allow_nan=True)
    | st.sampled_from([BrokenStr(), SurrogateStr(), BrokenMapping(a=1), BrokenList([1]), ...])
    | st.builds(BrokenException, text)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.frozensets(st.integers(), max_size=3)
        | st.dictionaries(keys, children, max_size=4)
    ),
    max_leaves=16,
)
exceptions = st.builds(ValueError, text | huge_text) | st.just(BrokenException())


def assert_storage_safe(value: object) -> None:
    """No key anywhere that MongoDB reads as an operator or a path, or that BSON cannot carry."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key in node:
                assert not key.startswith("$"), key
                assert "." not in key, key
                assert "\x00" not in key, key
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def service(publisher: RecordingPublisher, *, max_bytes: int) -> LoggingService:
    return LoggingService(
        publisher=publisher,
        service="s",
        env="t",
        version="1",
        instance="i",
        max_event_bytes=max_bytes,
        sampler=TailSampler(keep_all()),
        redactor=Redactor(RedactionPolicy(emails=True)),
    )


@BUDGET
@given(
    fields=st.lists(st.tuples(keys, values), max_size=6),
    dotted=st.lists(st.tuples(text, values), max_size=3),
    failure=st.tuples(
        st.none() | text | st.just(BrokenStr()),  # error code
        st.none() | text | huge_text | st.integers(),  # its message
        st.none() | exceptions,
    ),
    max_bytes=st.sampled_from([4096, 64 * 1024]),
)
def test_anything_set_on_an_event_is_published_once_storage_safe_and_decodable(
    fields, dotted, failure, max_bytes
):
    code, message, exc = failure
    publisher = RecordingPublisher()
    logging_service = service(publisher, max_bytes=max_bytes)
    event = logging_service.begin()
    for key, value in fields:
        event.set(key, value)
    event.update({".".join(("a", k, k)): v for k, v in dotted})
    if code is not None:
        event.error(code, message=message, kind=message)
    if exc is not None:
        event.record_exception(exc)

    logging_service.finalize(event)

    assert (1, 0) == (logging_service.stats.published, logging_service.stats.finalize_failed)
    [(_key, payload)] = publisher.records
    assert len(payload) <= max_bytes
    doc = decode(payload)
    assert_storage_safe(doc)
    assert event.event_id == doc["event_id"]
    original = msgspec.json.encode(event.doc)
    assert (len(original) > max_bytes) == doc.get("truncated", False)


def test_a_lone_surrogate_is_replaced_at_set_time_so_the_event_is_not_lost():
    publisher = RecordingPublisher()
    logging_service = service(publisher, max_bytes=64 * 1024)
    event = logging_service.begin()
    event.set("path\udc80", "caf\udce9 \ud83d\ude00")  # surrogateescape'd bytes, a split pair
    event.set("thing", SurrogateStr())
    logging_service.finalize(event)
    assert 0 == logging_service.stats.finalize_failed
    [doc] = publisher.events
    assert ("caf\ufffd \ufffd\ufffd", "half \ufffd of an emoji") == (
        doc["path\ufffd"],
        doc["thing"],
    )


def test_values_json_cannot_carry_say_what_they_were():
    event = WideEvent({"event_id": "e"}, started_ns=0)
    event.update({"nan": math.nan, "inf": -math.inf, "big": 2**64, "bytes": b"\xff\x00"})
    event.update(
        {
            "mapping": BrokenMapping(a=1),
            "list": BrokenList([1]),
            "obj": BrokenStr(),
            "r": BrokenRepr(),
        }
    )
    doc = decode(encode(event.doc, max_bytes=4096))
    assert {
        "nan": None,
        "inf": None,
        "big": "18446744073709551616",
        "bytes": "b'\\xff\\x00'",
        "mapping": "<unstorable BrokenMapping>",
        "list": "<unstorable BrokenList>",
        "obj": "<unprintable BrokenStr>",
        "r": "<unprintable BrokenRepr>",
    } == {k: doc[k] for k in ("nan", "inf", "big", "bytes", "mapping", "list", "obj", "r")}


def test_an_event_whose_core_fields_alone_are_too_big_keeps_its_ids_and_says_so():
    event = WideEvent({"event_id": "e1", "request_id": "r1"}, started_ns=0)
    event.set("http." + "k" * 100_000, 1)  # one huge key under a core field
    event.set("error", {f"f{i}": i for i in range(5000)})  # a core field with many keys
    payload = encode(event.doc, max_bytes=4096)
    assert len(payload) <= 4096
    assert {"event_id": "e1", "request_id": "r1", "truncated": True} == {
        k: v for k, v in decode(payload).items() if k != "original_bytes"
    }


# --- what the consumer is given ---------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.sampled_from("$.\x00ab") | st.characters(codec="utf-8"), max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(
                alphabet=st.sampled_from("$.\x00ab") | st.characters(codec="utf-8"), max_size=6
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)
events_on_the_wire = st.builds(
    lambda fields, event_id: msgspec.json.encode({**fields, "event_id": str(event_id)}),
    st.dictionaries(st.text(max_size=6), json_values, max_size=5),
    st.uuids() | st.just("same-id"),  # re-deliveries too
)
payloads = (
    events_on_the_wire
    | st.binary(max_size=64)
    | st.sampled_from(
        [
            b'{"event_id":"e-s","a":"\\ud800"}',  # a lone surrogate, escaped
            b'{"event_id":"e-u","a":"\xff\xfe"}',  # invalid UTF-8
            b'{"event_id":"e-n","n":1e400}',  # a number no float holds
            b'{"event_id":"e-b","n":123456789012345678901234567890}',  # beyond int64
            b'{"event_id":"e-op","$where":"1","a.b":{"$gt":""},"c\\u0000":1}',
            b'{"event_id":"e-deep","x":' + b"[" * 100 + b"]" * 100 + b"}",
            b'{"event_id":""}',
            b'{"event_id":"e-big","x":"' + b"y" * (1024 * 1024) + b'"}',
        ]
    )
)


@BUDGET
@given(payload=payloads)
def test_decode_returns_a_storage_safe_event_or_says_why_not(payload):
    try:
        doc = decode(payload)
    except UndecodableEventError as exc:
        reason = str(exc)
    else:
        assert isinstance(doc["event_id"], str)
        assert_storage_safe(doc)
        return
    assert reason  # dead-lettered with it


def test_keys_another_producer_did_not_escape_are_escaped_and_counted():
    doc = decode(b'{"event_id":"e","$where":"1","a.b":{"$gt":""},"c\\u0000":1}')
    assert {"event_id", "\uff04where", "a\uff0eb", "c", "keys_escaped"} == set(doc)
    assert ({"\uff04gt": ""}, 4) == (doc["a\uff0eb"], doc["keys_escaped"])


async def consume(payloads: list[bytes], folder: Path) -> tuple[int, int, int]:
    """Everything through the in-process transport into SQLite: (stored, duplicates, letters)."""
    queue = InProcessQueue()
    store = SQLiteEventStore(folder / "events.sqlite3")
    consumer = BatchConsumer(
        InProcessEventSource(queue), store, source_name="memory", flush_interval=0.01
    )
    for payload in payloads:
        InProcessEventPublisher(queue).publish("k", payload)
    stop = asyncio.Event()
    stop.set()  # drain what is queued, then return
    try:
        await asyncio.wait_for(consumer.run(stop), timeout=30)
        assert 0 == queue.depth
        stored = await store.count_events()
    finally:
        await store.close()
    stats = consumer.stats
    assert stored == stats.stored
    return stats.stored, stats.duplicates + stats.conflicts, stats.dead_lettered


@settings(max_examples=15, deadline=None)
@given(batch=st.lists(payloads, min_size=1, max_size=12))
def test_the_consumer_stores_or_dead_letters_every_message_it_is_given(batch):
    with tempfile.TemporaryDirectory() as folder:
        stored, duplicates, letters = asyncio.run(consume(batch, Path(folder)))  # + conflicts
    assert len(batch) == stored + duplicates + letters


def test_the_known_poison_is_dead_lettered_and_the_rest_stored(tmp_path):
    batch = [
        b'{"event_id":"ok-1"}',
        b'{"event_id":"e-s","a":"\\ud800"}',
        b'{"event_id":"e-u","a":"\xff\xfe"}',
        b'{"event_id":"e-op","$where":"1"}',
        b'{"event_id":"e-b","n":123456789012345678901234567890}',
        b"not json",
    ]
    assert (3, 0, 3) == asyncio.run(consume(batch, tmp_path))


def test_a_decimal_and_datetimes_at_the_ends_of_time_encode():
    event = WideEvent({"event_id": "e"}, started_ns=0)
    # DTZ901: the naive end of time is the case under test.
    event.update({"d": decimal.Decimal("NaN"), "max": dt.datetime.max, "min": dt.date.min})  # noqa: DTZ901
    doc = decode(encode(event.doc, max_bytes=4096))
    assert ("NaN", "9999-12-31T23:59:59.999999Z", "0001-01-01") == (
        doc["d"],
        doc["max"],
        doc["min"],
    )
