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
        """Append one event; raises OSError only if the disk itself fails."""
        line = key.encode() + b"\t" + payload + b"\n"
        with self._lock:
            fd = self._open()
            os.write(fd, line)
            self._written += len(line)
            self.appended += 1
            if self._fsync == "always":
                os.fsync(fd)
            else:
                self._dirty = True
            if self._written >= self._max_segment_bytes:
                self._close_segment()

    def rotate(self) -> None:
        """Close the active segment so the replayer can take it."""
        with self._lock:
            self._close_segment()

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
            if not path.exists():  # replayed and removed by someone else meanwhile
                yield None
                return
            yield _records(path)
        finally:
            os.close(fd)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self._close_segment()
        if self._syncer is not None:
            self._syncer.join(timeout=5)

    def _open(self) -> int:
        if self._fd is None:
            name = f"{time.time_ns():020d}-{os.getpid()}.spool.active"
            self._path = self.directory / name
            self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._written = 0
        return self._fd

    def _close_segment(self) -> None:
        if self._fd is None or self._path is None:
            return
        os.fsync(self._fd)
        self._path.rename(self._path.with_suffix(".ready"))
        os.close(self._fd)  # releases the lock only after the rename
        self._fd, self._path, self._dirty = None, None, False

    def _sync_every(self, interval: float) -> None:
        while not self._closed.wait(interval):
            with self._lock:
                if self._dirty and self._fd is not None:
                    os.fsync(self._fd)
                    self._dirty = False


def _records(path: Path) -> Iterator[tuple[str, bytes]]:
    """The complete lines of a segment; a torn last line (crash mid-write) is skipped."""
    with path.open("rb") as segment:
        for number, line in enumerate(segment, 1):
            key, tab, payload = line.rstrip(b"\n").partition(b"\t")
            if not line.endswith(b"\n") or not tab:
                log.warning("skipping a torn line %d in spool segment %s", number, path.name)
                continue
            yield key.decode(errors="replace"), payload
