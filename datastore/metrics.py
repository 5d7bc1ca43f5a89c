"""Prometheus plumbing shared by tabby's agents: the datastore syncer's series and the server.

Role: ``SyncerCollector`` turns one ``Syncer``'s counters and status into series named
``<prefix>_datastore_*`` (felix and bgp each register one in their own registry);
``MetricsServer`` serves a ``CollectorRegistry`` at ``GET /metrics`` from the agent's asyncio
loop. Inputs: a syncer, a registry. Outputs: Prometheus text exposition (or OpenMetrics when the
scraper asks for it).
Invariants:
- every agent uses its own ``CollectorRegistry`` (never prometheus_client's global one), so
  several agents can run in one process (tests) without colliding;
- collection runs on the agent's event loop (the server is an asyncio server): collectors may
  read agent state without locks, and a scrape that answers proves the loop is alive. A scrape
  waits while the loop is busy (a long dataplane apply);
- nothing here writes anything but the HTTP answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from datastore.syncer import Syncer, SyncStatus

log = logging.getLogger(__name__)

# tabby_<agent>_datastore_resync_state: one number per syncer status.
RESYNC_STATE = {
    SyncStatus.WAIT_FOR_DATASTORE: 0,
    SyncStatus.RESYNC: 1,
    SyncStatus.IN_SYNC: 2,
}


class SyncerCollector:
    """``<prefix>_datastore_*`` series read from ``syncer.stats()`` at scrape time.

    ``last_update`` gives the wall-clock time of the last batch of updates the agent applied
    (None: none yet); it yields both the timestamp and the seconds since (watch lag as seen by
    the consumer)."""

    def __init__(
        self,
        prefix: str,
        syncer: Syncer,
        last_update: Callable[[], float | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.prefix = prefix
        self.syncer = syncer
        self.last_update = last_update
        self.clock = clock

    def collect(self) -> Iterable[Metric]:
        p = f"{self.prefix}_datastore"
        st = self.syncer.stats()
        counters = (
            ("updates_emitted", st.emitted, "Updates the syncer put in flight."),
            ("updates_coalesced", st.coalesced, "In-flight updates replaced by newer ones."),
            ("updates_delivered", st.delivered, "Updates handed to the agent."),
            ("lists", st.lists, "Prefix listings (initial loads and re-lists)."),
            ("compactions", st.compactions, "Watches that found their revision compacted."),
            ("reconnects", st.reconnects, "Datastore connections made after the first."),
        )
        for name, value, doc in counters:
            yield CounterMetricFamily(f"{p}_{name}", doc, value=value)
        yield GaugeMetricFamily(
            f"{p}_revision", "Newest datastore revision seen.", value=st.last_revision
        )
        status = self.syncer.status
        yield GaugeMetricFamily(
            f"{p}_resync_state",
            "Syncer status: 0 wait-for-datastore, 1 resync, 2 in-sync.",
            value=RESYNC_STATE[status],
        )
        last = self.last_update()
        if last is not None:
            yield GaugeMetricFamily(
                f"{p}_last_update_timestamp_seconds",
                "Unix time of the last datastore update the agent applied.",
                value=last,
            )
            yield GaugeMetricFamily(
                f"{p}_seconds_since_update",
                "Seconds since the last datastore update the agent applied.",
                value=max(0.0, self.clock() - last),
            )


class MetricsServer:
    """``GET /metrics`` for one registry, on the running asyncio loop (HTTP/1.0, one request
    per connection). Any other path: 404."""

    def __init__(self, registry: CollectorRegistry, name: str) -> None:
        self.registry = registry
        self.name = name
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port)
        log.info("metrics.listen agent=%s addr=%s:%d", self.name, host, port)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await asyncio.wait_for(reader.readline(), 5)
            accept = ""
            while True:
                line = await asyncio.wait_for(reader.readline(), 5)
                if line in (b"\r\n", b"\n", b""):
                    break
                key, _, value = line.decode(errors="replace").partition(":")
                if key.strip().lower() == "accept":
                    accept = value.strip()
            parts = first.decode(errors="replace").split()
            path = parts[1] if len(parts) > 1 else "/"
            if parts[:1] != ["GET"] or path.split("?")[0] != "/metrics":
                writer.write(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                return
            encoder, content_type = choose_encoder(accept)
            try:
                body = encoder(self.registry)
            except Exception as exc:  # a broken collector must not kill the agent
                log.exception("metrics.collect_failed agent=%s", self.name)
                msg = f"collection failed: {exc}\n".encode()
                writer.write(
                    b"HTTP/1.0 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
                    + f"Content-Length: {len(msg)}\r\n\r\n".encode()
                    + msg
                )
                return
            writer.write(
                f"HTTP/1.0 200 OK\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
        except (TimeoutError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
