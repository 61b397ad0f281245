"""The durable local spool: where events go when the message queue cannot take them.

An append-only file of `key<TAB>payload<NEWLINE>` lines (payloads are JSON, which never contains a
raw newline). Writing is one `write()` to an `O_APPEND` descriptor — page cache, microseconds — so
it is allowed on the request path; `fsync` follows the configured policy:

- `always`: fsync every line (durable against power loss; each append waits on the disk),
- `interval` (default): a background thread fsyncs every `fsync_interval_s` (a process crash loses
  nothing already appended; a power loss loses at most that interval),
- `never`: leave it to the OS.

Segments: a process appends to its own `*.active` file, locked with `flock` for as long as it
lives. `rotate()` closes it as `*.ready`. The replayer takes any segment it can lock — ready ones,
and active ones whose process died — publishes it again, waits for confirmation, and only then
deletes it. A crash halfway through a replay leaves the segment to be replayed again; the store's
idempotency (`event_id` is the key) turns that into duplicates that are counted, not stored.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Iterator

log = logging.getLogger("widelog.spool")

FsyncPolicy = Literal["always", "interval", "never"]


class FileSpool:
    def __init__(
        self,
        directory: str | Path,
        *,
        fsync: FsyncPolicy = "interval",
        fsync_interval_s: float = 1.0,
        max_segment_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._max_segment_bytes = max_segment_bytes
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._written = 0
        self._dirty = False
        self.appended = 0
        self._closed = threading.Event()
        self._syncer: threading.Thread | None = None
        if fsync == "interval":
            self._syncer = threading.Thread(
                target=self._sync_every,
                args=(fsync_interval_s,),
                name="widelog-spool-fsync",
                daemon=True,
            )
            self._syncer.start()

    def append(self, key: str, payload: bytes) -> None:
        """Append one event; raises OSError only if the disk itself fails.

        Only the write happens under the lock: the periodic fsync and a full segment's fsync run
        outside it, so a slow disk does not stall the caller (the request path). With
        `fsync="always"` the caller does wait for its own line, by choice.
        """
        line = key.encode() + b"\t" + payload + b"\n"
        full = None
        with self._lock:
            fd = self._open()
            _write_all(fd, line)
            self._written += len(line)
            self.appended += 1
            if self._fsync == "always":
                os.fsync(fd)
            else:
                self._dirty = True
            if self._written >= self._max_segment_bytes:
                full = self._detach()
        if full is not None:
            _seal(*full)

    def rotate(self) -> None:
        """Close the active segment so the replayer can take it."""
        with self._lock:
            full = self._detach()
        if full is not None:
            _seal(*full)

    def segments(self) -> list[Path]:
        return sorted(self.directory.glob("*.spool*"))

    def has_pending(self) -> bool:
        return any(True for _ in self.directory.glob("*.spool*"))

    @contextlib.contextmanager
    def claim(self, path: Path) -> Iterator[Iterator[tuple[str, bytes]] | None]:
        """Lock a segment for replay; yields its records, or None if a live writer holds it."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            yield None
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            try:
                same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:  # replayed and removed (or renamed) by someone else meanwhile
                yield None
                return
            yield _records(path)
        finally:
            os.close(fd)

    def close(self) -> None:
        self._closed.set()
        self.rotate()
        if self._syncer is not None:
            self._syncer.join(timeout=5)

    def _open(self) -> int:
        if self._fd is None:
            # Created under a name the replayer does not list, and locked, before it becomes a
            # segment: a replayer must never claim (and delete) a file its writer has not locked.
            stem = f"{time.time_ns():020d}-{os.getpid()}"
            creating = self.directory / f"{stem}.creating"
            fd = os.open(creating, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._path = creating.rename(self.directory / f"{stem}.spool.active")
            self._fd = fd
            self._written = 0
        return self._fd

    def _detach(self) -> tuple[int, Path] | None:
        """Take the active segment out of use (under the lock); `_seal` it outside the lock."""
        if self._fd is None or self._path is None:
            return None
        detached = (self._fd, self._path)
        self._fd, self._path, self._dirty = None, None, False
        return detached

    def _sync_every(self, interval: float) -> None:
        while not self._closed.wait(interval):
            with self._lock:
                if not self._dirty or self._fd is None:
                    continue
                fd = os.dup(self._fd)  # fsync a duplicate outside the lock: appends go on
                self._dirty = False
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _seal(fd: int, path: Path) -> None:
    """Make a detached segment durable and ready; the lock goes only after the rename."""
    try:
        os.fsync(fd)
        path.rename(path.with_suffix(".ready"))
    finally:
        os.close(fd)


def _records(path: Path) -> Iterator[tuple[str, bytes]]:
    """The complete lines of a segment; a torn last line (crash mid-write) is skipped."""
    with path.open("rb") as segment:
        for number, line in enumerate(segment, 1):
            key, tab, payload = line.rstrip(b"\n").partition(b"\t")
            if not line.endswith(b"\n") or not tab:
                log.warning("skipping a torn line %d in spool segment %s", number, path.name)
                continue
            yield key.decode(errors="replace"), payload
