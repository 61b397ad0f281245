"""The short soak (`scripts/soak.py`, `SHORT`): two API processes and two workers under steady
traffic while each kind of fault but a Kafka restart hits once; every answered request stored
exactly once.

`make soak` runs the long one and regenerates docs/soak.md; this one prints its report.
`WIDELOG_SOAK_SEED` repeats a fault schedule (the seed is printed either way).
"""

from __future__ import annotations

import os
import random

import pytest

from scripts.soak import SHORT, run
from scripts.soak_report import render

pytestmark = [
    pytest.mark.slow,
    pytest.mark.faults,
    pytest.mark.kafka,
    pytest.mark.redis,
    pytest.mark.mongo,
    pytest.mark.timeout(300),
]


async def test_a_short_soak_stores_every_answered_request_exactly_once(live_services, tmp_path):
    seed = int(os.environ.get("WIDELOG_SOAK_SEED", random.randrange(10**6)))
    print(f"soak seed {seed}")
    result = await run(SHORT, seed=seed, workdir=tmp_path)
    print(render(result, command="pytest tests/integration/test_soak_live.py"))
    # Each kind once; on a busy machine the time bound may end the run before all six.
    assert len(result.faults) == len({fault.kind for fault in result.faults}) <= len(SHORT.kinds)
    assert result.faults
    assert [] == result.problems()
