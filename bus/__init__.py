"""Tamiyo's telemetry bus: wire contract, sockets and the aggregator; no torch, no textual."""
