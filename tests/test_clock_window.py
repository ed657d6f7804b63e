"""The hub's quick check of a message's timestamps against its clock never lets through what the full check
refuses (it only spares the named walk of every timestamp when all are well inside)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from hub.ingest.classify import ClockWindow


def test_holds_never_vouches_for_a_timestamp_that_refusal_refuses() -> None:
    window = ClockWindow(ahead_s=600.0, behind_s=86_400.0)
    rng = random.Random(12)
    now = 1_764_590_000.25
    vouched = refused = 0
    for _ in range(20_000):
        edge = rng.choice([now + window.ahead_s, now - window.behind_s])
        stamp = datetime.fromtimestamp(edge + rng.uniform(-0.003, 0.003), UTC)
        held = window.holds((stamp, stamp), now)
        refusal = window.refusal(iter((("ts", stamp),)), now)
        assert not (held and refusal), (stamp, refusal)
        vouched += held
        refused += refusal is not None
    assert vouched > 1000 and refused > 1000


def test_a_span_with_one_timestamp_outside_is_not_held() -> None:
    window = ClockWindow(ahead_s=600.0, behind_s=86_400.0)
    now = datetime(2026, 12, 1, 12, tzinfo=UTC).timestamp()
    inside = datetime.fromtimestamp(now - 10, UTC)
    assert window.holds((inside, inside), now)
    assert not window.holds((inside, datetime.fromtimestamp(now + 601, UTC)), now)
    assert not window.holds((datetime.fromtimestamp(now - 86_401, UTC), inside), now)
