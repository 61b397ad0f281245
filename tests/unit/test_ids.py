import os
import uuid

import pytest

from widelog.events.ids import accept_request_id, new_event_id, parse_traceparent


def test_event_ids_are_uuid7_unique_and_sorted_in_creation_order():
    ids = [new_event_id() for _ in range(20_000)]
    assert sorted(ids) == ids
    assert len(set(ids)) == len(ids)
    parsed = uuid.UUID(ids[0])
    assert 7 == parsed.version
    assert uuid.RFC_4122 == parsed.variant


# Python >= 3.12 warns about fork() while other threads run; the child here only writes a pipe.
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_a_forked_child_never_repeats_the_parents_random_bits():
    new_event_id()  # the parent has random bits buffered
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then gone without running the test session's exit
        os.write(write, new_event_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    parent = new_event_id()
    assert child[-12:] != parent[-12:]  # the random tail (counters may match)


def test_a_valid_traceparent_gives_trace_and_parent_span():
    header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7") == parse_traceparent(header)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    ],
)
def test_an_invalid_traceparent_is_ignored(header):
    assert parse_traceparent(header) is None


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        ("req-123", "req-123"),
        ("a" * 128, "a" * 128),
        ("a" * 129, None),
        ("has space", None),
        ("$bad", None),
        (None, None),
        ("abc\n", None),  # `$` matches before a final newline: the id must match in full
        ("abc\r\n", None),
        ("\nabc", None),
        ("abc\x00", None),
        ("", None),
    ],
)
def test_only_plain_bounded_request_ids_are_accepted(candidate, expected):
    assert expected == accept_request_id(candidate)
