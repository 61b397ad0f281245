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

Creating a segment also fsyncs the directory (unless `fsync="never"`): a file's data can be on
disk while its name is not, and a power loss would then lose the whole segment.

Records the broker refuses for good (too large for the topic, not authorized) are quarantined in
`*.rejected` files beside the segments: the same line format, never replayed automatically, only
by `widelog replay --rejected` once the broker's or topic's configuration is fixed.
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
    from collections.abc import Callable, Iterator

log = logging.getLogger("widelog.spool")

FsyncPolicy = Literal["always", "interval", "never"]
REJECTED = ".rejected"


def sync_directory(directory: Path) -> None:
    """Flush a directory to disk, so the names created or renamed in it survive a power loss."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileSpool:
    def __init__(
        self,
        directory: str | Path,
        *,
        fsync: FsyncPolicy = "interval",
        fsync_interval_s: float = 1.0,
        max_segment_bytes: int = 64 * 1024 * 1024,
        rescan_s: float = 1.0,
        directory_sync: Callable[[Path], None] = sync_directory,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._max_segment_bytes = max_segment_bytes
        self._sync_directory = directory_sync
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._written = 0
        self._dirty = False
        self.appended = 0
        # What the directory holds: scanned at most every `rescan_s` (other processes write and
        # replay too), plus what this one appended since.
        self._rescan_s = rescan_s
        self._scanned_at = -float("inf")
        self._scanned_bytes = 0
        self._appended_bytes = 0
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
            self._appended_bytes += len(line)
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

    def bytes_used(self) -> int:
        """Bytes in the directory (segments, quarantined records), at most `rescan_s` old."""
        with self._lock:
            now = time.monotonic()
            if now - self._scanned_at >= self._rescan_s:
                self._scanned_bytes = _directory_bytes(self.directory)
                self._appended_bytes = 0
                self._scanned_at = now
            return self._scanned_bytes + self._appended_bytes

    def segments(self) -> list[Path]:
        return sorted(self.directory.glob("*.spool*"))

    def rejected(self) -> list[Path]:
        """Files of records the broker refused for good, oldest first."""
        return sorted(self.directory.glob(f"*{REJECTED}"))

    def quarantine(self, of: Path) -> Quarantine:
        """Where the refused records of segment (or rejected file) `of` go while it is replayed."""
        return Quarantine(
            self.directory / (of.name.split(".", 1)[0] + REJECTED),
            sync=None if self._fsync == "never" else self._sync_directory,
        )

    def has_pending(self) -> bool:
        return any(True for _ in self.directory.glob("*.spool*"))

    @contextlib.contextmanager
    def claim(self, path: Path) -> Iterator[Iterator[tuple[str, bytes]] | None]:
        """Lock a segment for replay; yields its records, or None if a live writer holds it."""
        with claim_if_abandoned(path) as fd:
            yield None if fd is None else _records(path)

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
            if self._fsync != "never":
                self._sync_directory(self.directory)
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


class Quarantine:
    """The refused records of one replay, written beside the spool's segments.

    Written to a `.partial` file first and renamed over `*.rejected` only by `commit()`, after
    every other record of the segment was acknowledged: a replay that fails or crashes halfway
    leaves the previous state, and replaying the segment again writes the same records again.
    """

    def __init__(self, path: Path, *, sync: Callable[[Path], None] | None) -> None:
        self.path = path
        self._partial = path.with_name(path.name + ".partial")
        self._sync = sync
        self._fd: int | None = None
        self.count = 0

    def add(self, key: str, payload: bytes) -> None:
        if self._fd is None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND
            self._fd = os.open(self._partial, flags, 0o600)
        _write_all(self._fd, key.encode() + b"\t" + payload + b"\n")
        self.count += 1

    def commit(self) -> None:
        """Make the refused records the `*.rejected` file; with none, remove the old one."""
        if self._fd is None:
            self.path.unlink(missing_ok=True)
            return
        try:
            if self._sync is not None:
                os.fsync(self._fd)
        finally:
            os.close(self._fd)
            self._fd = None
        self._partial.rename(self.path)
        if self._sync is not None:
            self._sync(self.path.parent)

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._partial.unlink(missing_ok=True)


def _directory_bytes(directory: Path) -> int:
    total = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):  # replayed and deleted since it was listed
                if entry.is_file():  # not the in-flight journals' directory
                    total += entry.stat().st_size
    return total


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


@contextlib.contextmanager
def claim_if_abandoned(path: Path) -> Iterator[int | None]:
    """`path` opened read-only and locked, if the process that wrote it is gone; else None.

    Spool segments and in-flight journals are locked (`flock`) by their writer for its life, so a
    free lock means a dead or finished writer. None too if the file went, or was replaced
    (another process took it over and removed it) between the open and the lock.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
        except (BlockingIOError, FileNotFoundError):
            same_file = False
        yield fd if same_file else None
    finally:
        os.close(fd)
