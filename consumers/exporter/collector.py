"""The prometheus_client Collector: each scrape builds every family from the table as it is then."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from bus.feed import Item
from consumers.exporter.families import COUNTER, FAMILIES, GAUGE, INFO, LABELS, Family
from consumers.exporter.table import EXPIRE_AFTER_S, Key, RunTable

log = logging.getLogger(__name__)


def _family(f: Family) -> Metric:
    labels = [*LABELS, *f.labels]
    if f.kind == COUNTER:
        return CounterMetricFamily(f.name, f.help, labels=labels)
    if f.kind == GAUGE:
        return GaugeMetricFamily(f.name, f.help, labels=labels)
    return InfoMetricFamily(f.name.removesuffix("_info"), f.help, labels=LABELS)


class TamiyoCollector(Collector):
    """Folds what the bus delivers (``handle``, the main loop) and exposes it (``collect``, a scrape).

    ``clock`` is the clock ``handle`` is given ``now`` in (the consumers' ``time.monotonic``); the
    two run on different threads, so both take the lock.
    """

    def __init__(
        self,
        expire_after_s: float = EXPIRE_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
        families: list[Family] = FAMILIES,
    ) -> None:
        self.table = RunTable(expire_after_s)
        self.clock = clock
        self.families = families
        self._lock = threading.Lock()

    def handle(self, items: list[Item], now: float) -> None:
        with self._lock:
            added = self.table.apply_all(items, now)
        for run_id, rank in added:
            log.info("following run %s rank %d", run_id, rank)

    def tick(self, now: float) -> list[Key]:
        """Forget expired runs even when nobody scrapes; the (run_id, rank) keys whose series went."""
        with self._lock:
            return self.table.expire(now)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = self.clock()
            rows = self.table.rows(now)
            built = []
            for f in self.families:
                family = _family(f)
                for row in rows:
                    labels = [row.run_id, str(row.rank)]
                    for extra, value in f.read(row, now):
                        if f.kind == INFO:
                            family.add_metric(labels, dict(zip(f.labels, extra, strict=True)))
                        else:
                            family.add_metric([*labels, *extra], value * f.scale)
                built.append(family)
        yield from built
