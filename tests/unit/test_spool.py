"""The spool keeps what the message queue refused; replay is all-or-nothing per segment."""

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from widelog.pipeline.fallback import SpoolFallback
from widelog.pipeline.replayer import Delivery, SpoolReplayer
from widelog.pipeline.spool import FileSpool, sync_directory


class RecordingBroker:
    """A `ConfirmingPublisher` that acknowledges, or fails on the delivery number `fail_on`."""

    def __init__(self, *, fail_on: int | None = None) -> None:
        self.fail_on = fail_on
        self.deliveries = 0
        self.received: list[tuple[str, bytes]] = []

    async def deliver(self, records: Sequence[tuple[str, bytes]], timeout: float) -> bool:
        self.deliveries += 1
        if self.deliveries == self.fail_on:
            return False
        self.received += records
        return True


def fill(spool: FileSpool, count: int) -> list[tuple[str, bytes]]:
    records = [(f"req-{i}", f'{{"event_id": "e{i}"}}'.encode()) for i in range(count)]
    for key, payload in records:
        spool.append(key, payload)
    return records


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
async def test_every_appended_event_is_replayed_once_and_the_spool_is_emptied(tmp_path, fsync):
    spool = FileSpool(tmp_path, fsync=fsync)
    records = fill(spool, 100)
    broker = RecordingBroker()
    assert 100 == await SpoolReplayer(spool, broker).replay_once()
    assert records == broker.received
    assert not spool.has_pending()
    spool.close()


class FakeClock:
    """Time that passes only when the replayer sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_a_rate_limited_replay_sends_small_chunks_no_faster_than_the_rate(tmp_path):
    spool = FileSpool(tmp_path)
    records = fill(spool, 2000)
    broker, clock = RecordingBroker(), FakeClock()
    replayer = SpoolReplayer(spool, broker, rate=1000, sleep=clock.sleep, clock=clock)
    assert 2000 == await replayer.replay_once()
    assert (records, 10) == (broker.received, broker.deliveries)  # 200 a chunk: 0.2 s of rate
    assert 1.8 == pytest.approx(clock.now)  # the first chunk at once, nine more 0.2 s apart
    spool.close()


async def test_without_a_rate_the_replay_never_waits(tmp_path):
    spool = FileSpool(tmp_path)
    fill(spool, 2000)
    broker, clock = RecordingBroker(), FakeClock()
    replayer = SpoolReplayer(spool, broker, sleep=clock.sleep, clock=clock)
    assert (2000, 1, []) == (await replayer.replay_once(), broker.deliveries, clock.sleeps)
    spool.close()


async def test_a_failed_replay_keeps_the_segment_and_a_later_one_delivers_it(tmp_path):
    spool = FileSpool(tmp_path)
    records = fill(spool, 25)
    broker = RecordingBroker(fail_on=2)
    replayer = SpoolReplayer(spool, broker, chunk=10)
    assert 0 == await replayer.replay_once()  # the second chunk failed: the segment stays
    assert spool.has_pending()
    assert 25 == await replayer.replay_once()
    assert set(records) == set(broker.received)  # the first chunk twice: the store dedups it
    assert not spool.has_pending()
    spool.close()


async def test_a_live_writers_segment_is_left_alone_until_it_rotates(tmp_path):
    writer = FileSpool(tmp_path)
    fill(writer, 3)
    other_process_view = FileSpool(tmp_path)
    [active] = other_process_view.segments()
    with other_process_view.claim(active) as records:
        assert records is None  # flocked by its writer
    writer.rotate()
    broker = RecordingBroker()
    assert 3 == await SpoolReplayer(other_process_view, broker).replay_once()
    writer.close()
    other_process_view.close()


async def test_a_crashed_writers_segment_is_replayed_with_its_torn_last_line_skipped(tmp_path):
    crashing_writer = f"""
import os
from widelog.pipeline.spool import FileSpool, sync_directory
spool = FileSpool({str(tmp_path)!r}, fsync="always")
spool.append("req-1", b'{{"event_id": "e1"}}')
spool.append("req-2", b'{{"event_id": "e2"}}')
os.write(spool._fd, b'req-3\\t{{"event_id": "e3')  # the crash hits mid-write
os._exit(9)
"""
    assert 9 == subprocess.run([sys.executable, "-c", crashing_writer], check=False).returncode
    spool = FileSpool(tmp_path)
    broker = RecordingBroker()
    assert 2 == await SpoolReplayer(spool, broker).replay_once()
    assert ["req-1", "req-2"] == [key for key, _ in broker.received]
    assert not spool.has_pending()
    spool.close()


def test_a_full_segment_rolls_over_to_a_new_one(tmp_path):
    spool = FileSpool(tmp_path, max_segment_bytes=200)
    fill(spool, 20)  # 26-byte lines: rolls over after 8 of them
    assert 3 == len(spool.segments())
    spool.close()


def test_a_failing_disk_is_counted_as_lost_and_logged(tmp_path, caplog):
    spool = FileSpool(tmp_path / "spool")
    fallback = SpoolFallback(spool)
    (tmp_path / "spool").rmdir()
    (tmp_path / "spool").write_text("not a directory any more")  # every open() now fails
    fallback.spill("req-1", b"{}", "broker down")
    spool.close()
    assert (0, 1) == (fallback.spooled, fallback.lost)
    assert "event req-1 is lost" in caplog.text


def test_spilling_warns_once_per_interval_with_a_count(tmp_path, caplog):
    spool = FileSpool(tmp_path)
    fallback = SpoolFallback(spool, warn_every_s=3600)
    for i in range(5):
        fallback.spill(f"req-{i}", b"{}", "broker down")
    spool.close()
    warnings = [r for r in caplog.records if "MQ publish failed" in r.getMessage()]
    assert 1 == len(warnings)
    assert "falling back to direct logging" in warnings[0].getMessage()
    assert 5 == fallback.spooled


async def test_appends_racing_with_rotations_and_replays_lose_nothing(tmp_path):
    import asyncio
    import threading

    writer = FileSpool(tmp_path, fsync="never", max_segment_bytes=2000)
    replayer_view = FileSpool(tmp_path)
    broker = RecordingBroker()
    replayer = SpoolReplayer(replayer_view, broker, chunk=7)
    keys = [f"req-{i}" for i in range(3000)]

    def write() -> None:
        for i, key in enumerate(keys):
            writer.append(key, b"{}")
            if i % 50 == 0:
                writer.rotate()

    thread = threading.Thread(target=write)
    thread.start()
    while thread.is_alive():
        await replayer.replay_once()
        await asyncio.sleep(0)
    thread.join()
    writer.close()
    await replayer.replay_once()
    assert set(keys) == {key for key, _ in broker.received}
    assert not replayer_view.has_pending()
    replayer_view.close()


def event(request_id: str, *, status: int = 200, code: str | None = None, pad: int = 0) -> bytes:
    doc: dict[str, object] = {
        "request_id": request_id,
        "http": {"status": status},
        "pad": "x" * pad,
    }
    if code is not None:
        doc["error"] = {"code": code}
    return json.dumps(doc).encode()


def test_a_spool_past_nine_tenths_keeps_errors_and_drops_the_rest_loudly(tmp_path, caplog):
    spool = FileSpool(tmp_path, rescan_s=3600)
    fallback = SpoolFallback(spool, max_bytes=10_000, warn_every_s=3600)
    ok = [(f"ok-{i}", event(f"ok-{i}", pad=800)) for i in range(20)]
    for key, payload in ok:
        fallback.spill(key, payload, "broker down")
    failed_5xx = event("e-5xx", status=503, pad=100)
    failed_code = event("e-code", code="LLM_TIMEOUT", pad=100)
    # "code" inside a message is no error: only the event's own error.code and status count.
    lookalike = event("lookalike", pad=100).replace(b'"pad"', b'"error_code_note":"code","pad"')
    for key, payload in [("e-5xx", failed_5xx), ("e-code", failed_code), ("lookalike", lookalike)]:
        fallback.spill(key, payload, "broker down")
    spool.rotate()
    kept = [key for path in spool.segments() for key, _ in _read(spool, path)]
    assert 9_000 < spool.bytes_used() <= 10_000
    assert ["e-5xx", "e-code"] == [k for k in kept if k.startswith("e-")]
    assert "lookalike" not in kept
    assert fallback.dropped["other"] == 20 - sum(k.startswith("ok-") for k in kept) + 1
    assert 0 == fallback.dropped["error"]
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert 1 == len(errors)  # rate-limited: one line for the first drop
    assert "spool full: dropped 1 non-error events" in errors[0].getMessage()
    spool.close()


def test_a_spool_at_its_limit_drops_errors_too_and_counts_them(tmp_path):
    spool = FileSpool(tmp_path, rescan_s=3600)
    fallback = SpoolFallback(spool, max_bytes=5_000, warn_every_s=3600)
    for i in range(20):
        fallback.spill(f"e-{i}", event(f"e-{i}", status=500, pad=400), "broker down")
    assert spool.bytes_used() <= 5_000
    assert 20 == fallback.spooled + fallback.dropped["error"]
    assert fallback.dropped["error"] > 0
    assert 0 == fallback.dropped["other"]
    spool.close()


def test_the_size_counts_other_processes_segments_once_rescanned(tmp_path):
    other = FileSpool(tmp_path)
    fill(other, 50)
    other.rotate()
    spool = FileSpool(tmp_path, rescan_s=0)
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) == spool.bytes_used()
    other.close()
    spool.close()


def _read(spool: FileSpool, path: Path) -> list[tuple[str, bytes]]:
    with spool.claim(path) as records:
        assert records is not None
        return list(records)


class RecordingDirectorySync:
    """The directory fsync seam: records each call, then really fsyncs."""

    def __init__(self) -> None:
        self.synced: list[Path] = []

    def __call__(self, directory: Path) -> None:
        self.synced.append(directory)
        sync_directory(directory)


@pytest.mark.parametrize("fsync", ["always", "interval"])
def test_a_new_segment_is_made_durable_by_an_fsync_of_its_directory(tmp_path, fsync):
    sync = RecordingDirectorySync()
    spool = FileSpool(tmp_path, fsync=fsync, max_segment_bytes=1000, directory_sync=sync)
    fill(spool, 1)
    assert [tmp_path] == sync.synced  # once the `.spool.active` name exists
    fill(spool, 60)  # rolls over into new segments: one directory fsync per segment
    spool.close()
    assert len(spool.segments()) == len(sync.synced)


def test_with_fsync_never_the_directory_is_left_to_the_os(tmp_path):
    sync = RecordingDirectorySync()
    spool = FileSpool(tmp_path, fsync="never", directory_sync=sync)
    fill(spool, 5)
    spool.close()
    assert [] == sync.synced


class RefusingBroker:
    """Acknowledges records, except those whose payload is longer than `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.received: list[tuple[str, bytes]] = []

    async def deliver(self, records: Sequence[tuple[str, bytes]], timeout: float) -> Delivery:
        refused = [
            (i, "MSG_SIZE_TOO_LARGE") for i, r in enumerate(records) if len(r[1]) > self.max_bytes
        ]
        self.received += [r for r in records if len(r[1]) <= self.max_bytes]
        return Delivery(ok=True, refused=refused)


async def test_refused_records_are_quarantined_and_replayed_only_on_demand(tmp_path, caplog):
    spool = FileSpool(tmp_path)
    small = [(f"small-{i}", event(f"small-{i}")) for i in range(30)]
    big = [(f"big-{i}", event(f"big-{i}", pad=5000)) for i in range(4)]
    for key, payload in small[:15] + big[:2] + small[15:] + big[2:]:
        spool.append(key, payload)
    broker = RefusingBroker(max_bytes=1000)
    replayer = SpoolReplayer(spool, broker, chunk=7)
    assert 30 == await replayer.replay_once()
    assert small == broker.received
    assert not spool.has_pending()  # the segment is complete: the big ones do not block it
    assert 1 == len(spool.rejected())
    assert 4 == replayer.stats.rejected
    assert "refused 4 events" in caplog.text
    assert 0 == await replayer.replay_once()  # never retried automatically
    assert 0 == await replayer.replay_once(rejected=True)  # refused again: still quarantined
    assert big == _read(spool, spool.rejected()[0])
    broker.max_bytes = 10_000  # the topic's limit was raised
    assert 4 == await replayer.replay_once(rejected=True)
    assert small + big == broker.received
    assert [] == spool.rejected()
    assert [] == list(tmp_path.iterdir())
    spool.close()


class RefusingThenFailingBroker(RefusingBroker):
    """Refuses the big records, and fails the whole delivery number `fail_on`."""

    def __init__(self, max_bytes: int, *, fail_on: int) -> None:
        super().__init__(max_bytes)
        self.fail_on = fail_on
        self.deliveries = 0

    async def deliver(self, records: Sequence[tuple[str, bytes]], timeout: float) -> Delivery:
        self.deliveries += 1
        if self.deliveries == self.fail_on:
            return Delivery(ok=False)
        return await super().deliver(records, timeout)


async def test_a_failed_replay_quarantines_nothing(tmp_path):
    spool = FileSpool(tmp_path)
    spool.append("big", event("big", pad=5000))
    fill(spool, 10)
    replayer = SpoolReplayer(spool, RefusingThenFailingBroker(1000, fail_on=2), chunk=5)
    assert 0 == await replayer.replay_once()
    assert [] == spool.rejected()
    assert 1 == len(spool.segments())
    assert [] == list(tmp_path.glob("*.partial"))
    spool.close()
