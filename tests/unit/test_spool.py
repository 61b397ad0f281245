"""The spool keeps what the message queue refused; replay is all-or-nothing per segment."""

import subprocess
import sys
from collections.abc import Sequence

import pytest

from widelog.pipeline.fallback import SpoolFallback
from widelog.pipeline.replayer import SpoolReplayer
from widelog.pipeline.spool import FileSpool


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
from widelog.pipeline.spool import FileSpool
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
