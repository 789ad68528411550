"""The one encode and the one decode of the wire: two frames, [topic, MessagePack envelope]."""

from __future__ import annotations

import msgspec

from bus.contract import (
    REPLAY_TOPIC_PREFIX,
    SCHEMA_VERSION,
    TOPICS,
    Envelope,
    ReplayEnd,
    topic_of,
)

MAX_MESSAGE_BYTES = 1 << 20
"""Sockets refuse larger messages; the largest real envelope is a few KiB."""


class WireError(ValueError):
    """A message that is not a valid envelope of this contract; ``kind`` says why."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class _Probe(msgspec.Struct):
    """Just enough of an envelope to tell a newer schema or unknown event from garbage."""

    schema: int
    event: dict[str, msgspec.Raw]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)
_probe_decoder = msgspec.msgpack.Decoder(_Probe)
_replay_end_decoder = msgspec.msgpack.Decoder(ReplayEnd)


def encode(envelope: Envelope) -> list[bytes]:
    """Frames for one envelope: the event type as topic, then the MessagePack map."""
    return [topic_of(envelope.event).encode(), _encoder.encode(envelope)]


def encode_body(envelope: Envelope) -> bytes:
    """The body frame alone (the publisher sends it under a replay topic too)."""
    return _encoder.encode(envelope)


def decode(body: bytes | memoryview) -> Envelope:
    """Decode one body frame, or raise WireError naming what was wrong with it."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise WireError("oversized", f"{len(body)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        envelope = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise _classify(body, exc) from None
    if envelope.schema > SCHEMA_VERSION:
        raise WireError("newer_schema", f"schema {envelope.schema} > {SCHEMA_VERSION}")
    return envelope


def _classify(body: bytes | memoryview, exc: msgspec.DecodeError) -> WireError:
    try:
        probe = _probe_decoder.decode(body)
    except msgspec.DecodeError:
        return WireError("malformed", str(exc))
    if probe.schema > SCHEMA_VERSION:
        return WireError("newer_schema", f"schema {probe.schema} > {SCHEMA_VERSION}")
    tag = probe.event.get("type")
    if tag is not None:
        try:
            name = msgspec.msgpack.decode(tag, type=str)
        except msgspec.DecodeError:
            name = None
        if name is not None and name not in TOPICS:
            return WireError("unknown_event", name)
    return WireError("invalid", str(exc))


def replay_topic(token: str) -> str:
    """The topic a consumer subscribes to so the publisher replays its history on it alone."""
    return REPLAY_TOPIC_PREFIX + token


def encode_replay_end(end: ReplayEnd) -> bytes:
    return _encoder.encode(end)


def decode_replay_end(body: bytes | memoryview) -> ReplayEnd | None:
    """The replay-end marker, or None when the body is an ordinary envelope."""
    try:
        end = _replay_end_decoder.decode(body)
    except msgspec.DecodeError:
        return None
    return end if end.replay_end else None
