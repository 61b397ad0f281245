"""The in-flight journal: what a publisher accepted and the broker has not acknowledged yet.

librdkafka's queue and the Redis publisher's buffer are memory: a SIGKILLed (or OOM-killed) API
lost the events it had answered but not yet handed to the broker (issue #10). Each accepted event
is first copied into this process's journal, a memory-mapped file, and released once it is
durable elsewhere (acknowledged by the broker, or appended to the spool). A copy into a shared
file mapping is a memcpy into the page cache, with no system call, and the page cache belongs to
the file, not to the process: the record outlives a SIGKILL. It does not outlive a machine crash
or power loss, since nothing is fsynced: the spool's fsync policy covers those, the journal not.

The file is a ring of `capacity` bytes after a header that keeps the position of the oldest
unreleased record. Releases come out of order (partitions are acknowledged independently), so a
released record is flagged in place and the oldest position moves on once its record is released;
nothing is erased. When the ring is full of unreleased records (the broker unreachable for long),
new events are not journaled, counted in `full` and logged at most once per `warn_every_s`.

Each process journals in its own `*.journal` file, locked with `flock` for its whole life, in the
spool directory's `journal/`. A starting process takes over every journal whose lock it can get
(its process is dead): the unreleased records that pass their checksum go to the spool, whose
replayer publishes them; one the broker had acknowledged after all is a duplicate, absorbed by
its `event_id`. Positions only grow, and a record stores its own: a record from an earlier lap
of the ring, or never written, ends the scan; one whose checksum fails ends it too, counted.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import functools
import logging
import mmap
import os
import struct
import threading
import time
import weakref
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from widelog.pipeline.spool import claim_if_abandoned

if TYPE_CHECKING:
    from collections.abc import Iterator

    from widelog.pipeline.ports import Spool

log = logging.getLogger("widelog.journal")

JOURNALS: Final = "journal"  # the spool directory's subdirectory of journals
SUFFIX: Final = ".journal"
FILE_MAGIC: Final = b"WLJ1"
# magic, ring capacity, position of the oldest unreleased record (positions count from 0 up)
FILE_HEADER: Final = struct.Struct("<4sxxxxQQ")
OLDEST: Final = struct.Struct("<Q")  # at offset 16 of the file header
OLDEST_AT: Final = 16
DATA_AT: Final = 4096  # the ring starts on a page of its own
# magic, crc32 of key and payload, the record's position, key length, payload length, state
RECORD: Final = struct.Struct("<IIQIIB7x")
RECORD_MAGIC: Final = 0x574C4A52
STATE_AT: Final = 24  # of RECORD: one byte, set in place when the record is released
HELD, RELEASED = 0, 1
WRAP: Final = 0xFFFFFFFF  # a key length that says: the ring goes on at its start


class InflightJournal:
    """A process's journal: `hold()` before an event leaves for the broker, `release()` after.

    Keyed by the event's key (its request id). Two events held under one key are released in the
    order they were held, which is the order in which the broker acknowledges them (one key, one
    partition) and in which the Redis publisher sends them.
    """

    def __init__(
        self, directory: str | Path, *, capacity: int = 32 << 20, warn_every_s: float = 5.0
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.capacity = capacity
        self.path, self._fd = _create(self.directory, DATA_AT + capacity)
        self._map = mmap.mmap(self._fd, DATA_AT + capacity)
        FILE_HEADER.pack_into(self._map, 0, FILE_MAGIC, capacity, 0)
        self._head = 0  # where the next record goes
        self._oldest = 0  # the oldest unreleased record, or the head when none is held
        self._order: collections.deque[int] = collections.deque()  # held positions, oldest first
        self._held: dict[bytes, int] = {}  # key → position of its oldest held record
        self._held_again: dict[bytes, collections.deque[int]] = {}  # rare: one key held twice
        self._lock = threading.Lock()
        self.journaled = 0
        self.full = 0
        self._warn_every_s = warn_every_s
        self._last_full_log = -float("inf")
        self._unlogged_full = 0
        os.register_at_fork(after_in_child=functools.partial(_forsake, weakref.ref(self)))

    @property
    def held(self) -> int:
        """Records held now: accepted, neither acknowledged nor spooled."""
        return len(self._held) + sum(map(len, self._held_again.values()))

    def hold(self, key: str, payload: bytes) -> None:
        """Copy the event into the ring (no system call); if it is full, count and go on."""
        key_bytes = key.encode()
        key_length, payload_length = len(key_bytes), len(payload)
        crc = zlib.crc32(payload, zlib.crc32(key_bytes))
        size = (RECORD.size + key_length + payload_length + 7) & ~7
        capacity, ring = self.capacity, self._map
        with self._lock:
            if ring.closed:  # an event published after close: the spool has the others
                return
            position = self._head
            offset = position % capacity
            skip = capacity - offset if offset + size > capacity else 0
            if position + skip + size - self._oldest > capacity:
                self._count_full()
                return
            if skip:
                if skip >= RECORD.size:
                    RECORD.pack_into(ring, DATA_AT + offset, RECORD_MAGIC, 0, position, WRAP, 0, 0)
                position += skip
                offset = 0
            body = DATA_AT + offset + RECORD.size
            ring[body : body + key_length] = key_bytes
            ring[body + key_length : body + key_length + payload_length] = payload
            # The header last: a record cut short by a kill has no header for its position.
            RECORD.pack_into(
                ring,
                DATA_AT + offset,
                RECORD_MAGIC,
                crc,
                position,
                key_length,
                payload_length,
                HELD,
            )
            self._head = position + size
            if not self._order:
                self._set_oldest(position)
            self._order.append(position)
            if self._held.setdefault(key_bytes, position) != position:
                self._held_again.setdefault(key_bytes, collections.deque()).append(position)
            self.journaled += 1

    def release(self, key: bytes) -> None:
        """The oldest record held under `key` is durable elsewhere; nothing if none is held."""
        with self._lock:
            position = self._held.pop(key, None)
            if position is None or self._map.closed:
                return
            if self._held_again:
                self._next_held_under(key)
            ring, capacity = self._map, self.capacity
            ring[DATA_AT + position % capacity + STATE_AT] = RELEASED
            if position == self._oldest:
                order = self._order
                while order and ring[DATA_AT + order[0] % capacity + STATE_AT] == RELEASED:
                    order.popleft()
                self._set_oldest(order[0] if order else self._head)

    def unreleased(self) -> list[tuple[str, bytes]]:
        """The records still held, oldest first (at close: the spool takes them)."""
        with self._lock:
            return list(_unreleased(self._map, self.capacity, self._oldest, Recovery()))

    def close(self) -> None:
        """Delete the journal; call once what `unreleased()` returned is durable elsewhere."""
        with self._lock:
            if self._map.closed:
                return
            self._map.close()
            self.path.unlink(missing_ok=True)
            os.close(self._fd)  # the lock goes with the last descriptor, after the unlink

    def _next_held_under(self, key: bytes) -> None:
        again = self._held_again.get(key)
        if again:
            self._held[key] = again.popleft()
            if not again:
                del self._held_again[key]

    def _set_oldest(self, position: int) -> None:
        self._oldest = position
        OLDEST.pack_into(self._map, OLDEST_AT, position)

    def _count_full(self) -> None:
        """Under the lock; the log line says how many were not journaled since the last one."""
        self.full += 1
        self._unlogged_full += 1
        now = time.monotonic()
        if now - self._last_full_log < self._warn_every_s:
            return
        self._last_full_log = now
        log.error(
            "in-flight journal full (%d bytes, WIDELOG_JOURNAL_MAX_BYTES): %d events not"
            " journaled, a SIGKILL of this process before the broker acknowledges them loses them",
            self.capacity,
            self._unlogged_full,
        )
        self._unlogged_full = 0


def _forsake(journal: weakref.ref[InflightJournal]) -> None:
    """In a child forked after the journal was made: two processes must not write one ring.

    The child journals nothing (its parent's file and lock stay the parent's); build the
    pipeline in each worker process instead, as `widelog serve` does.
    """
    forsaken = journal()
    if forsaken is None or forsaken._map.closed:
        return
    forsaken._lock = threading.Lock()  # a thread of the parent may have held it at the fork
    forsaken._map.close()
    os.close(forsaken._fd)
    log.warning(
        "process %d forked from the one that made in-flight journal %s: its events are not"
        " journaled (build the pipeline after the fork)",
        os.getpid(),
        forsaken.path.name,
    )


@dataclass
class Recovery:
    """What taking over dead processes' journals found."""

    journals: int = 0
    records: int = 0  # unreleased, valid: appended to the spool
    corrupt: int = 0  # records whose checksum failed (the scan of their journal stops there)


def take_over(directory: Path, spool: Spool, *, own: Path | None = None) -> Recovery:
    """Spool the unreleased records of every journal whose process is dead; delete the journal.

    A live process holds its journal's lock, so its journal is left alone. The spool is sealed
    (fsynced) before a journal is deleted.
    """
    recovery = Recovery()
    if not directory.is_dir():
        return recovery
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        if path == own:
            continue
        with _claim(path) as ring:
            if ring is None:
                continue
            found = Recovery()
            capacity, oldest = _ring_header(ring, path)
            try:
                for key, payload in _unreleased(ring, capacity, oldest, found):
                    spool.append(key, payload)
                spool.rotate()
            except OSError:  # the disk: the journal stays for the next start to take over
                log.exception("taking over in-flight journal %s failed", path.name)
                continue
            path.unlink()
            recovery.journals += 1
            recovery.records += found.records
            recovery.corrupt += found.corrupt
    if recovery.journals:
        log.info(
            "took over %d in-flight journal(s) of dead processes: %d events spooled for replay%s",
            recovery.journals,
            recovery.records,
            f", {recovery.corrupt} corrupt record(s) skipped" if recovery.corrupt else "",
        )
    return recovery


def _create(directory: Path, size: int) -> tuple[Path, int]:
    """A new journal file, locked before it gets the name that others take journals over by."""
    stem = f"{time.time_ns():020d}-{os.getpid()}"
    creating = directory / f"{stem}{SUFFIX}.creating"
    fd = os.open(creating, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, size)  # sparse: only the pages the ring reaches take memory and disk
        return creating.rename(directory / f"{stem}{SUFFIX}"), fd
    except BaseException:
        os.close(fd)
        creating.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _claim(path: Path) -> Iterator[mmap.mmap | None]:
    """The journal's mapping if its process is dead (its lock is free); None otherwise."""
    with claim_if_abandoned(path) as fd:
        if fd is None or os.fstat(fd).st_size < DATA_AT:
            yield None
        else:
            with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as ring:
                yield ring


def _ring_header(ring: mmap.mmap, path: Path) -> tuple[int, int]:
    """Capacity and oldest unreleased position; (0, 0), an empty ring, if the header is bad."""
    magic, capacity, oldest = FILE_HEADER.unpack_from(ring, 0)
    if magic != FILE_MAGIC or capacity < RECORD.size or DATA_AT + capacity != len(ring):
        log.warning("in-flight journal %s has no valid header: nothing recovered", path.name)
        return 0, 0
    return capacity, oldest


def _unreleased(
    ring: mmap.mmap, capacity: int, position: int, recovery: Recovery
) -> Iterator[tuple[str, bytes]]:
    """The held records from `position` on, until a record that is not this lap's or is torn."""
    while capacity:
        offset = position % capacity
        if offset + RECORD.size > capacity:
            position += capacity - offset
            continue
        magic, crc, stored_at, key_length, payload_length, state = RECORD.unpack_from(
            ring, DATA_AT + offset
        )
        if magic != RECORD_MAGIC or stored_at != position:
            return  # never written, or from an earlier lap: the end
        if key_length == WRAP:
            position += capacity - offset
            continue
        body = DATA_AT + offset + RECORD.size
        end = body + key_length + payload_length
        if end > DATA_AT + capacity or zlib.crc32(ring[body:end]) != crc:
            recovery.corrupt += 1
            log.warning("corrupt in-flight journal record at position %d: the scan ends", position)
            return
        if state == HELD:
            recovery.records += 1
            key = ring[body : body + key_length].decode(errors="replace")
            yield key, ring[body + key_length : end]
        position += (RECORD.size + key_length + payload_length + 7) & ~7
