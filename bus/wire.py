"""The one encode and the one decode of the wire: two frames, [topic, MessagePack envelope]."""

from __future__ import annotations

import numbers
from typing import Annotated

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


WIRE_ERROR_KINDS = ("malformed", "invalid", "unknown_event", "newer_schema", "oversized")
"""Every ``WireError.kind``: not MessagePack / not an envelope of this contract / an event type
this consumer does not know / a schema newer than this consumer / over MAX_MESSAGE_BYTES."""


class WireError(ValueError):
    """A message that is not a valid envelope of this contract; ``kind`` says why.

    For ``unknown_event`` the envelope header was readable: ``run_id``, ``seq``, ``ts`` and ``rank``
    say which message was skipped, so a consumer can count it as skipped rather than missing.
    """

    def __init__(
        self,
        kind: str,
        detail: str,
        *,
        run_id: str | None = None,
        seq: int | None = None,
        ts: float | None = None,
        rank: int = 0,
    ) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.run_id = run_id
        self.seq = seq
        self.ts = ts
        self.rank = rank


class _Probe(msgspec.Struct):
    """Just enough of an envelope to tell a newer schema or unknown event from garbage."""

    schema: int
    event: dict[str, msgspec.Raw]


class _Header(msgspec.Struct):
    """The envelope without its event: which message of which run an unknown event was."""

    run_id: str
    seq: Annotated[int, msgspec.Meta(ge=0)]
    ts: Annotated[float, msgspec.Meta(ge=0)]
    rank: Annotated[int, msgspec.Meta(ge=0)] = 0


_DECODE_ERRORS = (msgspec.DecodeError, RecursionError, ValueError, OverflowError)
"""What msgspec raises on bad input: DecodeError mostly, but RecursionError for deep nesting
and UnicodeDecodeError (a ValueError) for invalid UTF-8 in a string."""


def _enc_hook(obj: object) -> object:
    """Plain values in disguise (``torch.__version__``, numpy scalars) are sent as what they are."""
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    raise TypeError(f"cannot encode a {type(obj).__module__}.{type(obj).__qualname__}; send plain numbers")


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_decoder = msgspec.msgpack.Decoder(Envelope)
_probe_decoder = msgspec.msgpack.Decoder(_Probe)
_header_decoder = msgspec.msgpack.Decoder(_Header)
_replay_end_decoder = msgspec.msgpack.Decoder(ReplayEnd)


ENCODE_ERRORS = (TypeError, ValueError, OverflowError, msgspec.EncodeError)
"""What ``encode``/``encode_body`` raise for an event holding something MessagePack cannot carry."""


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
    except _DECODE_ERRORS as exc:
        raise _classify(body, exc) from None
    if envelope.schema > SCHEMA_VERSION:
        raise WireError("newer_schema", f"schema {envelope.schema} > {SCHEMA_VERSION}")
    return envelope


def _classify(body: bytes | memoryview, exc: Exception) -> WireError:
    if isinstance(exc, RecursionError):
        return WireError("malformed", "nested too deeply")
    try:
        probe = _probe_decoder.decode(body)
    except _DECODE_ERRORS:
        return WireError("malformed", str(exc))
    if probe.schema > SCHEMA_VERSION:
        return WireError("newer_schema", f"schema {probe.schema} > {SCHEMA_VERSION}")
    tag = probe.event.get("type")
    if tag is not None:
        try:
            name = msgspec.msgpack.decode(tag, type=str)
        except _DECODE_ERRORS:
            name = None
        if name is not None and name not in TOPICS:
            try:
                header = _header_decoder.decode(body)
            except _DECODE_ERRORS:
                return WireError("unknown_event", name)
            return WireError(
                "unknown_event", name, run_id=header.run_id, seq=header.seq, ts=header.ts, rank=header.rank
            )
    return WireError("invalid", str(exc))


def replay_topic(token: str) -> str:
    """The topic a consumer subscribes to so the publisher replays its history on it alone."""
    return REPLAY_TOPIC_PREFIX + token


def encode_replay_end(end: ReplayEnd) -> bytes:
    """The body of the frame that closes a replay burst."""
    return _encoder.encode(end)


def decode_replay_end(body: bytes | memoryview) -> ReplayEnd | None:
    """The replay-end marker, or None when the body is an ordinary envelope."""
    if len(body) > MAX_MESSAGE_BYTES:
        return None
    try:
        end = _replay_end_decoder.decode(body)
    except _DECODE_ERRORS:
        return None
    return end if end.replay_end else None
