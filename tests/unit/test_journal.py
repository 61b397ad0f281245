"""The in-flight journal keeps what a killed process had accepted but not handed on (issue #10).

Dead processes are real ones: a subprocess journals events and SIGKILLs itself, or stays alive
holding its journal's lock while the test tries to take it over.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.unit.test_spool import RecordingBroker
from widelog.pipeline.fallback import SpoolFallback
from widelog.pipeline.journal import (
    DATA_AT,
    OLDEST_AT,
    RECORD,
    SUFFIX,
    InflightJournal,
    take_over,
)
from widelog.pipeline.replayer import SpoolReplayer
from widelog.pipeline.spool import FileSpool

SMALL = 4096  # a ring of a few dozen events: laps come quickly


def event(i: int, pad: int = 40) -> tuple[str, bytes]:
    return f"req-{i}", json.dumps({"event_id": f"e{i}", "pad": "x" * pad}).encode()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[InflightJournal]:
    journal = InflightJournal(tmp_path / "journal", capacity=SMALL, warn_every_s=3600)
    yield journal
    journal.close()


def oldest(journal: InflightJournal) -> int:
    return int(struct.unpack_from("<Q", journal.path.read_bytes(), OLDEST_AT)[0])


def test_released_events_leave_nothing_and_close_deletes_the_file(journal):
    for i in range(10):
        journal.hold(*event(i))
    for i in range(10):
        journal.release(f"req-{i}".encode())
    assert [] == journal.unreleased()
    assert 0 == journal.held
    journal.close()
    assert not journal.path.exists()


def test_releases_out_of_order_keep_exactly_the_unreleased_and_move_the_oldest(journal):
    records = [event(i) for i in range(6)]
    for key, payload in records:
        journal.hold(key, payload)
    for i in (2, 0, 4):
        journal.release(f"req-{i}".encode())
    assert [records[1], records[3], records[5]] == journal.unreleased()
    first_size = (RECORD.size + len(records[0][0]) + len(records[0][1]) + 7) & ~7
    assert first_size == oldest(journal)  # req-0 released: req-1 is the oldest now
    journal.release(b"req-1")
    assert 3 * first_size == oldest(journal)  # past req-1 and the released req-2


def test_the_ring_wraps_around_many_times_and_keeps_the_unreleased(journal):
    for i in range(500):  # ~60 laps of the ring, each event released two later
        journal.hold(*event(i, pad=i % 70))
        if i >= 2:
            journal.release(f"req-{i - 2}".encode())
    assert [event(498, 498 % 70), event(499, 499 % 70)] == journal.unreleased()
    assert 0 == journal.full


def test_a_full_ring_journals_nothing_more_counts_it_and_has_room_again_once_released(
    journal, caplog
):
    held = 0
    while journal.full == 0:
        journal.hold(*event(held))
        held += 1
    held -= 1  # the last one did not fit
    assert held == journal.held > 10
    journal.hold(*event(held + 1))
    assert 2 == journal.full
    assert 1 == sum("in-flight journal full" in r.message for r in caplog.records)  # once per 1 h
    journal.release(b"req-0")
    journal.release(b"req-1")
    journal.hold(*event(1000))
    assert 2 == journal.full
    assert event(1000) == journal.unreleased()[-1]


def test_one_key_held_twice_is_released_in_the_order_it_was_held(journal):
    first, again = ("req-1", b'{"n": 1}'), ("req-1", b'{"n": 2}')
    journal.hold(*first)
    journal.hold(*again)
    journal.release(b"req-1")
    assert [again] == journal.unreleased()
    journal.release(b"req-1")
    assert [] == journal.unreleased()
    journal.release(b"req-1")  # an event that was not journaled (a full ring): nothing happens


def test_a_forked_child_journals_nothing_into_its_parents_ring(journal):
    journal.hold(*event(1))
    child = os.fork()
    if child == 0:  # the child: its hold must leave the parent's ring alone
        journal.hold(*event(2))
        journal.close()
        os._exit(0 if journal.journaled == 1 else 1)
    assert 0 == os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
    assert journal.path.exists()
    journal.hold(*event(3))
    assert [event(1), event(3)] == journal.unreleased()


# --- dead processes ------------------------------------------------------------------------------


JOURNALING = """
import json, os, signal, sys
from widelog.pipeline.journal import InflightJournal
journal = InflightJournal(sys.argv[1], capacity=int(sys.argv[2]))
for key, payload in json.loads(sys.argv[3]):
    if payload is None:
        journal.release(key.encode())
    else:
        journal.hold(key, payload.encode())
print(journal.path, flush=True)
if sys.argv[4] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.read()  # alive, its journal locked, until the test closes stdin
"""


def journaling_process(
    directory: Path,
    steps: Sequence[tuple[str, bytes | None]],
    *,
    then: str = "kill",
    capacity: int = SMALL,
) -> tuple[subprocess.Popen[str], Path]:
    """A process that holds (key, payload) and releases (key, None) in order, then SIGKILLs
    itself or waits (its stdin open) while the test goes on."""
    args = [
        str(directory),
        str(capacity),
        json.dumps([(k, None if p is None else p.decode()) for k, p in steps]),
        then,
    ]
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(JOURNALING), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert process.stdout is not None
    path = Path(process.stdout.readline().strip())
    if then == "kill":
        assert -signal.SIGKILL == process.wait(30)
        process.stdout.close()
        process.stdin.close()  # type: ignore[union-attr]
    return process, path


def released(key: str) -> tuple[str, None]:
    return key, None


def spooled(spool: FileSpool) -> list[tuple[str, bytes]]:
    records = []
    for path in spool.segments():
        with spool.claim(path) as lines:
            assert lines is not None
            records += list(lines)
    return records


def test_a_killed_process_journal_goes_to_the_spool_and_is_deleted(tmp_path):
    records = [event(i) for i in range(200)]  # several laps of the ring
    steps: list[tuple[str, bytes | None]] = []
    kept = {175, 185, 198, 199}  # not acknowledged when the process died
    for i, record in enumerate(records):  # each released two later, out of order with others
        steps.append(record)
        if i >= 2 and i - 2 not in kept:
            steps.append(released(f"req-{i - 2}"))
    _, path = journaling_process(tmp_path / "journal", steps)
    assert path.exists()
    spool = FileSpool(tmp_path / "spool", fsync="never")
    recovery = take_over(tmp_path / "journal", spool)
    expected = [records[i] for i in sorted(kept)]
    assert (1, len(expected), 0) == (recovery.journals, recovery.records, recovery.corrupt)
    assert expected == spooled(spool)
    assert [] == list((tmp_path / "journal").iterdir())
    spool.close()


async def test_recovered_events_are_replayed_by_the_spool_replayer(tmp_path):
    records = [event(i) for i in range(5)]
    journaling_process(tmp_path / "journal", [*records, released("req-1")], capacity=1 << 20)
    spool = FileSpool(tmp_path / "spool", fsync="never")
    fallback = SpoolFallback(spool)
    assert 4 == fallback.take_over_journals(tmp_path / "journal").records
    assert 4 == fallback.recovered.records
    broker = RecordingBroker()
    assert 4 == await SpoolReplayer(spool, broker).replay_once()
    assert [records[0], *records[2:]] == broker.received
    spool.close()


def test_a_live_process_journal_is_never_taken_over(tmp_path):
    records = [event(i) for i in range(5)]
    alive, path = journaling_process(tmp_path / "journal", records, then="wait")
    spool = FileSpool(tmp_path / "spool", fsync="never")
    try:
        assert 0 == take_over(tmp_path / "journal", spool).journals
        assert path.exists()
        assert [] == spooled(spool)
    finally:
        alive.communicate()  # stdin closed: it exits
    assert 5 == take_over(tmp_path / "journal", spool).records
    assert records == spooled(spool)
    spool.close()


def test_a_corrupt_record_ends_the_scan_and_is_counted(tmp_path):
    records = [event(i) for i in range(6)]
    _, path = journaling_process(tmp_path / "journal", records)
    size = (RECORD.size + len(records[0][0]) + len(records[0][1]) + 7) & ~7
    with path.open("r+b") as file:  # one flipped payload byte in the third record
        file.seek(DATA_AT + 2 * size + RECORD.size + 12)
        byte = file.read(1)
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0xFF]))
    spool = FileSpool(tmp_path / "spool", fsync="never")
    recovery = take_over(tmp_path / "journal", spool)
    assert (2, 1) == (recovery.records, recovery.corrupt)
    assert records[:2] == spooled(spool)
    spool.close()


def test_a_record_whose_header_was_never_written_is_the_clean_end(tmp_path):
    records = [event(i) for i in range(6)]
    _, path = journaling_process(tmp_path / "journal", records)
    size = (RECORD.size + len(records[0][0]) + len(records[0][1]) + 7) & ~7
    with path.open("r+b") as file:  # killed while copying the last one: its header not written
        file.seek(DATA_AT + 5 * size)
        file.write(bytes(RECORD.size))
    spool = FileSpool(tmp_path / "spool", fsync="never")
    recovery = take_over(tmp_path / "journal", spool)
    assert (5, 0) == (recovery.records, recovery.corrupt)
    assert records[:5] == spooled(spool)
    spool.close()


# --- owned by the fallback ----------------------------------------------------------------------


def test_a_spilled_held_event_is_released_and_close_spools_what_is_still_held(tmp_path):
    journal = InflightJournal(tmp_path / "journal", capacity=SMALL)
    spool = FileSpool(tmp_path / "spool", fsync="never")
    fallback = SpoolFallback(spool, journal=journal)
    for i in range(3):
        fallback.hold(*event(i))
    fallback.spill(*event(0), "delivery failed", held=True)
    fallback.release(b"req-1")
    assert [event(2)] == journal.unreleased()
    fallback.close()
    assert [event(0), event(2)] == spooled(spool)
    assert [] == list((tmp_path / "journal").glob(f"*{SUFFIX}*"))
