"""Arbitrary frames into decode, Subscriber._on_frames, Feed and fold: refused and counted, never raised."""

from __future__ import annotations

import uuid

import msgspec
from bus_factories import ALL_EVENTS, envelope
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.aggregator import Aggregator
from bus.contract import TOPICS, Envelope
from bus.subscribe import Subscriber, SubscriberConfig
from bus.wire import WIRE_ERROR_KINDS, WireError, decode, decode_replay_end, encode, encode_body

VALID_BODIES = [encode_body(envelope(i, ev)) for i, ev in enumerate(ALL_EVENTS)]

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=16,
)

event_like = st.dictionaries(
    st.sampled_from(["type", "reason", "update", "fps", "period_s", "phase", "head_entropy", "x"]),
    st.sampled_from([*TOPICS, "seed_germinated"]) | msgpack_values,
    max_size=6,
)

envelope_like = st.fixed_dictionaries(
    {},
    optional={
        "schema": st.integers(-2, 4) | msgpack_values,
        "run_id": st.just("run-a") | msgpack_values,
        "seq": st.integers(-3, 2**64 - 1) | msgpack_values,
        "ts": st.floats() | msgpack_values,
        "event": event_like | msgpack_values,
    },
)


@st.composite
def mutated_bodies(draw: st.DrawFn) -> bytes:
    body = bytearray(draw(st.sampled_from(VALID_BODIES)))
    how = draw(st.sampled_from(["truncate", "flip", "append"]))
    at = draw(st.integers(0, len(body) - 1))
    if how == "truncate":
        return bytes(body[:at])
    if how == "flip":
        body[at] = draw(st.integers(0, 255))
        return bytes(body)
    return bytes(body) + draw(st.binary(min_size=1, max_size=8))


bodies = st.one_of(
    st.binary(max_size=64),
    envelope_like.map(msgspec.msgpack.encode),
    mutated_bodies(),
)


@settings(max_examples=400, deadline=None)
@given(bodies)
def test_decode_returns_an_envelope_or_raises_wire_error(body: bytes) -> None:
    try:
        env = decode(body)
    except WireError as exc:
        assert exc.kind in WIRE_ERROR_KINDS
    else:
        assert isinstance(env, Envelope)


def _is_garbage(body: bytes) -> bool:
    """Refused, and not a readable header of an unknown event (that one takes a seq's place)."""
    try:
        decode(body)
    except WireError as exc:
        return exc.kind != "unknown_event" or exc.seq is None
    return False


def _refused(frames: list[bytes]) -> bool:
    if len(frames) != 2:
        return True
    if frames[0].startswith(b"~replay/") and decode_replay_end(frames[1]) is not None:
        return False
    try:
        decode(frames[1])
    except WireError:
        return True
    return False


frames_lists = st.one_of(
    st.tuples(st.sampled_from([t.encode() for t in TOPICS]) | st.binary(max_size=10), bodies).map(list),
    st.lists(st.binary(max_size=16), max_size=4).filter(lambda f: len(f) != 2),
    st.tuples(st.text(max_size=12).map(lambda t: f"~replay/{t}".encode()), bodies).map(list),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(frames_lists, max_size=8), st.integers(1, 6))
def test_garbage_between_valid_messages_is_counted_and_the_rest_is_folded(
    garbage: list[list[bytes]], n_valid: int
) -> None:
    garbage = [f for f in garbage if len(f) != 2 or f[0].startswith(b"~replay/") or _is_garbage(f[1])]
    # A real Subscriber on an inproc endpoint nobody binds: its frame path, no traffic.
    with Subscriber(SubscriberConfig(endpoint=f"inproc://tamiyo-fuzz-{uuid.uuid4().hex}")) as sub:
        _check(sub, garbage, n_valid)


def _check(sub: Subscriber, garbage: list[list[bytes]], n_valid: int) -> None:
    run = f"run-{uuid.uuid4().hex[:6]}"
    valid = [encode(envelope(i, ALL_EVENTS[i % len(ALL_EVENTS)], run_id=run)) for i in range(n_valid)]
    out = []
    for i, frames in enumerate(valid):
        for g in garbage[i::n_valid]:
            out += sub._on_frames(list(g), 0.0)
        out += sub._on_frames(frames, 0.0)
    out += sub.feed.poll(1.0)  # nobody replays: the sync times out and the held messages flow
    assert [e.seq for e in out if isinstance(e, Envelope)] == list(range(n_valid))
    assert sub.stats.received == n_valid + len(garbage)
    assert sub.stats.rejected_total == sum(1 for g in garbage if _refused(g))
    agg = Aggregator()
    for item in out:
        agg.apply(item, 0.0)
    assert agg.state.delivery.events == n_valid and agg.state.run.run_id == run
    assert agg.state.delivery.gaps == 0


def test_refusals_are_logged_at_most_once_per_kind_per_interval(caplog) -> None:  # type: ignore[no-untyped-def]
    with Subscriber(SubscriberConfig(endpoint=f"inproc://tamiyo-log-{uuid.uuid4().hex}")) as sub:
        with caplog.at_level("WARNING", logger="bus.subscribe"):
            for _ in range(50):
                sub._on_frames([b"ppo_update", b"\xc1"], 0.0)
                sub._on_frames([b"ppo_update"], 0.0)
                sub._on_frames([b"ppo_update", msgspec.msgpack.encode({"schema": 99, "event": {}})], 0.0)
        assert sub.stats.rejected == {"malformed": 100, "newer_schema": 50}
    lines = [r.getMessage() for r in caplog.records if r.name == "bus.subscribe"]
    assert len(lines) == 2, lines
    assert "malformed; 1 so far" in lines[0] and "newer_schema; 1 so far" in lines[1]
