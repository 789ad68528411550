"""This process's place among torchrun's ranks, read from the environment (no torch import)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

FORWARDER_FRONTEND = "tcp://127.0.0.1:5556"
"""Where ranks publish under torchrun unless --connect says otherwise: ``make bus``'s frontend."""


@dataclass(frozen=True)
class World:
    """Rank ``rank`` of ``world_size`` (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def world_from_env(environ: Mapping[str, str] = os.environ) -> World:
    """RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them; a single process when they are absent."""
    return World(
        rank=int(environ.get("RANK", "0")),
        world_size=int(environ.get("WORLD_SIZE", "1")),
        local_rank=int(environ.get("LOCAL_RANK", "0")),
    )
