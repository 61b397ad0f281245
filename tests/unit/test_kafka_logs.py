"""librdkafka's repeated connection failures are logged once per client per period, with a count."""

import logging
import time

import pytest

from widelog.pipeline.kafka._logs import RepeatedConnectionFailures


@pytest.fixture
def logger() -> logging.Logger:
    logger = logging.getLogger("test.kafka.logs")
    logger.filters.clear()
    logger.addFilter(RepeatedConnectionFailures(every_s=0.2))
    return logger


def librdkafka(logger: logging.Logger, facility: str, client: str, message: str) -> None:
    """What confluent-kafka's log callback does with one librdkafka line."""
    logger.log(logging.ERROR, "%s [%s] %s", facility, client, message)


def test_one_failure_line_per_client_goes_through_then_one_with_the_count(logger, caplog):
    caplog.set_level(logging.ERROR, logger.name)
    for _ in range(20):
        librdkafka(logger, "FAIL", "w#consumer-1", "Connect failed: Connection refused")
        librdkafka(logger, "FAIL", "w#producer-2", "Connect failed: Connection refused")
    time.sleep(0.25)
    librdkafka(logger, "FAIL", "w#consumer-1", "Connect failed: Connection refused")
    assert [
        "FAIL [w#consumer-1] Connect failed: Connection refused",
        "FAIL [w#producer-2] Connect failed: Connection refused",
        "FAIL [w#consumer-1] Connect failed: Connection refused"
        " (19 more like it held back since the previous one)",
    ] == caplog.messages


def test_other_lines_are_never_held_back(logger, caplog):
    caplog.set_level(logging.INFO, logger.name)
    for _ in range(3):
        librdkafka(logger, "REQTMOUT", "w#consumer-1", "Timed out 1 in-flight")
        logger.warning("lost partitions %s (nothing committed for them)", [0])
    assert 6 == len(caplog.messages)
