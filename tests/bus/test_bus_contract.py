"""The wire contract: frames, the envelope map, evolution rules and every WireError kind."""

from __future__ import annotations

import re
import typing

import msgspec
import pytest
from bus_factories import ALL_EVENTS, envelope, heartbeat, ppo_update, replay_end, training_finished

from bus.contract import (
    EVENT_TYPES,
    LIVE_TOPIC_PREFIXES,
    REPLAY_TOPIC_PREFIX,
    SCHEMA_VERSION,
    TOPICS,
    Envelope,
)
from bus.wire import (
    MAX_MESSAGE_BYTES,
    WIRE_ERROR_KINDS,
    WireError,
    decode,
    decode_replay_end,
    encode,
    encode_body,
    encode_replay_end,
    replay_topic,
)

ENVELOPE_KEYS = {"schema", "run_id", "seq", "ts", "event", "rank"}


def _raw(body: bytes) -> dict:
    """Decode as an untyped MessagePack client in any language would."""
    return msgspec.msgpack.decode(body)


def _body(**envelope_map: object) -> bytes:
    return msgspec.msgpack.encode(envelope_map)


def _good_map(**event: object) -> dict:
    return {"schema": SCHEMA_VERSION, "run_id": "r", "seq": 3, "ts": 1.5, "event": event}


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: type(e).__name__)
def test_every_event_round_trips(event: msgspec.Struct) -> None:
    env = envelope(7, event)
    topic, body = encode(env)
    assert topic == type(event).__struct_config__.tag.encode()
    assert decode(body) == env


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: type(e).__name__)
def test_body_is_a_messagepack_map_with_the_documented_keys(event: msgspec.Struct) -> None:
    body = encode_body(envelope(7, event, run_id="run-x"))
    assert body[0] & 0xF0 == 0x80, "a fixmap: maps, not arrays, so any client can read it"
    raw = _raw(body)
    assert set(raw) == ENVELOPE_KEYS
    assert raw["schema"] == SCHEMA_VERSION and raw["run_id"] == "run-x" and raw["seq"] == 7
    assert isinstance(raw["ts"], float)
    ev = raw["event"]
    assert isinstance(ev, dict)
    assert ev["type"] == type(event).__struct_config__.tag
    assert set(ev) == {"type", *type(event).__struct_fields__}


def test_ppo_update_carries_every_field_the_issue_names() -> None:
    names = {
        "policy_loss", "value_loss", "entropy", "grad_norm", "kl_divergence", "clip_fraction",
        "clip_fraction_positive", "clip_fraction_negative", "gradient_cv", "cuda_memory_allocated_gb",
        "cuda_memory_reserved_gb", "cuda_memory_peak_gb", "cuda_memory_fragmentation",
        "explained_variance", "dead_layers", "exploding_layers", "total_layers", "nan_grad_count",
        "head_entropy", "head_grad_norm", "lr", "update_time_ms", "train_steps",
    }  # fmt: skip
    raw = _raw(encode_body(envelope(0, ppo_update())))["event"]
    assert names <= set(raw)
    assert raw["head_entropy"]["blueprint"] == 0.5


def test_topics_are_lowercase_names_the_live_prefixes_cover_and_replay_never_matches() -> None:
    assert tuple(t.__struct_config__.tag for t in EVENT_TYPES) == TOPICS
    for topic in TOPICS:
        assert re.fullmatch(r"[a-z][a-z_]*", topic)
        assert any(topic.startswith(p) for p in LIVE_TOPIC_PREFIXES)
    token_topic = replay_topic("abc123")
    assert token_topic.startswith(REPLAY_TOPIC_PREFIX)
    assert not any(token_topic.startswith(p) for p in LIVE_TOPIC_PREFIXES)


def test_unknown_fields_are_skipped() -> None:
    raw = _raw(encode_body(envelope(3, ppo_update(update=9))))
    raw["added_later"] = {"nested": [1, 2, 3]}
    raw["event"]["new_metric"] = 1.25
    env = decode(msgspec.msgpack.encode(raw))
    assert env.seq == 3 and env.event == ppo_update(update=9)


@pytest.mark.parametrize(
    ("make", "field"), [(heartbeat, "phase"), (training_finished, "reason")], ids=["phase", "reason"]
)
def test_closed_sets_decode_every_known_value_and_refuse_others(make, field) -> None:  # type: ignore[no-untyped-def]
    """``phase`` and ``reason`` are Literals: each value of the set round-trips, any other is invalid."""
    values = typing.get_args(
        typing.get_args(typing.get_type_hints(type(make()), include_extras=True)[field])[0]
    )
    assert values  # the set itself, read from the contract
    for value in values:
        body = encode_body(envelope(1, make(**{field: value})))
        assert getattr(decode(body).event, field) == value
        assert _raw(body)["event"][field] == value  # on the wire: the plain string
    raw = _raw(encode_body(envelope(1, make())))
    raw["event"][field] = "from-a-newer-producer"
    with pytest.raises(WireError) as err:
        decode(msgspec.msgpack.encode(raw))
    assert err.value.kind == "invalid"


def test_the_catalogue_annotations_leave_the_wire_bytes_unchanged() -> None:
    """Units and meanings live in the type hints only: the body is the plain map of the field values."""
    for event in ALL_EVENTS:
        env = envelope(5, event)
        plain = {"schema": env.schema, "run_id": env.run_id, "seq": env.seq, "ts": env.ts}
        plain["event"] = {"type": type(event).__struct_config__.tag, **msgspec.structs.asdict(event)}
        plain["rank"] = env.rank
        assert encode_body(env) == msgspec.msgpack.encode(plain)


def test_missing_optional_fields_take_their_defaults() -> None:
    raw = _raw(encode_body(envelope(0, ALL_EVENTS[0])))
    for name in ("compile_enabled", "compile_backend", "action_heads", "world_size"):
        del raw["event"][name]
    ev = decode(msgspec.msgpack.encode(raw)).event
    assert ev.compile_enabled is False and ev.compile_backend == "" and ev.world_size == 1


def test_unknown_event_type_is_refused_and_says_which_message_it_was() -> None:
    with pytest.raises(WireError) as info:
        decode(_body(**_good_map(type="seed_germinated", slot="slot_0")))
    err = info.value
    assert err.kind == "unknown_event"
    assert err.detail == "seed_germinated"
    assert (err.run_id, err.seq, err.ts) == ("r", 3, 1.5)


def test_newer_schema_is_refused_whether_or_not_its_event_decodes() -> None:
    decodable = _raw(encode_body(envelope(0, ppo_update())))
    decodable["schema"] = SCHEMA_VERSION + 1
    with pytest.raises(WireError) as info:
        decode(msgspec.msgpack.encode(decodable))
    assert info.value.kind == "newer_schema"
    reshaped = {"schema": SCHEMA_VERSION + 1, "event": {"type": "ppo_update", "loss": "now a string"}}
    with pytest.raises(WireError) as info:
        decode(msgspec.msgpack.encode(reshaped))
    assert info.value.kind == "newer_schema"


def test_oversized_body_is_refused_before_decoding() -> None:
    raw = _raw(encode_body(envelope(0, ppo_update())))
    raw["padding"] = "x" * MAX_MESSAGE_BYTES
    with pytest.raises(WireError) as info:
        decode(msgspec.msgpack.encode(raw))
    assert info.value.kind == "oversized"


FINISHED = {"type": "training_finished"}
GARBAGE = [
    pytest.param(b"", "malformed", id="empty"),
    pytest.param(b"\xc1", "malformed", id="bad-opcode"),
    pytest.param(b"\x93\x01\x02\x03", "malformed", id="array-not-map"),
    pytest.param(encode_body(envelope(0, ppo_update()))[:-5], "malformed", id="truncated"),
    pytest.param(b"\x91" * 200_000 + b"\x00", "malformed", id="nested-past-recursion-limit"),
    pytest.param(_body(**_good_map(type="heartbeat", period_s="soon")), "invalid", id="wrong-type"),
    pytest.param(_body(schema=1, run_id="r", seq=-1, ts=1.0, event=FINISHED), "invalid", id="negative-seq"),
    pytest.param(_body(schema=1, run_id="r", seq=1, ts=float("nan"), event=FINISHED), "invalid", id="nan-ts"),
    pytest.param(_body(schema=1, run_id=5, seq=1, ts=1.0, event=FINISHED), "invalid", id="int-run-id"),
    pytest.param(_body(schema=1, run_id="r", seq=1, ts=1.0, event={}), "invalid", id="no-type-tag"),
]


@pytest.mark.parametrize(("body", "kind"), GARBAGE)
def test_garbage_raises_wire_error_of_its_kind(body: bytes, kind: str) -> None:
    with pytest.raises(WireError) as info:
        decode(body)
    assert info.value.kind == kind
    assert kind in WIRE_ERROR_KINDS


def test_deep_nesting_inside_an_unknown_field_is_refused_not_raised() -> None:
    deep = msgspec.Raw(b"\x91" * 200_000 + b"\x00")
    body = msgspec.msgpack.encode(_good_map(type="heartbeat", extra=deep))
    with pytest.raises(WireError) as info:
        decode(body)
    assert info.value.kind == "malformed"


def test_replay_end_round_trips_and_is_told_apart_from_envelopes() -> None:
    end = replay_end(41, count=7)
    assert decode_replay_end(encode_replay_end(end)) == end
    assert decode_replay_end(encode_body(envelope(1))) is None
    assert decode_replay_end(b"\xc1") is None
    with pytest.raises(WireError):
        decode(encode_replay_end(end))


def test_envelope_field_names_are_the_documented_ones() -> None:
    assert set(Envelope.__struct_fields__) == ENVELOPE_KEYS
