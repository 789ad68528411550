"""The one rate-limited logging filter: once per interval per message and key, with the suppressed count."""

from __future__ import annotations

import logging

from bus.ratelog import RateLimitFilter


def _record(msg: str, key: object = None, name: str = "bus.x") -> logging.LogRecord:
    record = logging.LogRecord(name, logging.ERROR, __file__, 1, msg, (), None)
    if key is not None:
        record.ratelimit_key = key
    return record


def test_repeats_are_suppressed_within_the_interval_and_counted_after_it() -> None:
    now = [0.0]
    f = RateLimitFilter(interval=10.0, clock=lambda: now[0])
    assert f.filter(_record("bad %s"))
    assert not any(f.filter(_record("bad %s")) for _ in range(5))
    assert f.filter(_record("other")), "another format string has its own allowance"
    assert f.filter(_record("bad %s", name="bus.y")), "and so has another logger"
    now[0] = 10.0
    passed = _record("bad %s")
    assert f.filter(passed)
    assert passed.msg == "bad %s (5 similar messages suppressed)"


def test_ratelimit_key_limits_each_key_separately() -> None:
    f = RateLimitFilter(interval=10.0, clock=lambda: 0.0)
    assert f.filter(_record("not sending a %s", key="ppo_update"))
    assert f.filter(_record("not sending a %s", key="heartbeat"))
    assert not f.filter(_record("not sending a %s", key="ppo_update"))
