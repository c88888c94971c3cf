"""Site heartbeats: how the server tells a working site from a lost one, within a bounded time.

NVFlare notices a dead client only in some deployments and only after minutes (a dead job's
parent reports it, then ``dead_client_grace`` of 60 s passes; in the simulator a killed client
is never reported, see the README's fault-tolerance section). fedseg therefore adds its own
heartbeat, the same everywhere: every site's job process fires a federated event every
``interval`` seconds from a thread of its own (so a site busy training still beats), and the
server records when it last heard from each site. A site silent for longer than the job's
``heartbeat_timeout`` is treated as lost until it beats again.

A SIGSTOPped, killed or cut-off site stops beating; a site that is merely slow keeps beating and
is bounded by the round deadline instead.
"""

from __future__ import annotations

import threading
import time

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FedEventHeader, FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

HEARTBEAT_EVENT = "fedseg.heartbeat"
# A site's job process may take a while to start (deployment, imports, a busy machine): until its
# first beat it counts as silent only after this much more than the heartbeat timeout.
STARTUP_GRACE_S = 120.0
LIVENESS_ID = "fedseg_liveness"  # the server component's id; controllers look it up by this


class SiteHeartbeat(FLComponent):
    """Client side: fire :data:`HEARTBEAT_EVENT` to the server every ``interval`` seconds."""

    def __init__(self, interval: float = 5.0):
        super().__init__()
        if interval <= 0:
            raise ValueError(f"heartbeat interval must be positive, got {interval}")
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN and self._thread is None:
            engine = fl_ctx.get_engine()
            self._thread = threading.Thread(target=self._beat, args=(engine,), name="fedseg_heartbeat", daemon=True)
            self._thread.start()
        elif event_type in (EventType.ABOUT_TO_END_RUN, EventType.END_RUN):
            self._stop.set()

    def _beat(self, engine) -> None:
        while not self._stop.is_set():
            try:
                with engine.new_context() as ctx:
                    self.fire_fed_event(HEARTBEAT_EVENT, Shareable(), ctx)
            except Exception as exc:  # a missed beat must never take the site down
                self.logger.debug(f"fedseg heartbeat not sent: {exc}")
            self._stop.wait(self.interval)


class SiteLiveness(FLComponent):
    """Server side: when each site was last heard from (heartbeats and task results)."""

    def __init__(self, heartbeat_timeout: float = 60.0):
        super().__init__()
        if heartbeat_timeout <= 0:
            raise ValueError(f"heartbeat_timeout must be positive, got {heartbeat_timeout}")
        self.heartbeat_timeout = heartbeat_timeout
        self._last_seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._started = time.monotonic()

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            self._started = time.monotonic()
        if event_type != HEARTBEAT_EVENT:
            return
        data = fl_ctx.get_prop(FLContextKey.EVENT_DATA)
        site = data.get_header(FedEventHeader.ORIGIN) if isinstance(data, Shareable) else None
        if site:
            self.seen(site)

    def seen(self, site: str) -> None:
        with self._lock:
            self._last_seen[site] = time.monotonic()

    def last_seen(self, site: str) -> float | None:
        with self._lock:
            return self._last_seen.get(site)

    def silent_for(self, site: str) -> float:
        """Seconds since ``site`` was last heard from, or since the job started if never."""
        last = self.last_seen(site)
        return time.monotonic() - (last if last is not None else self._started)

    def is_silent(self, site: str) -> bool:
        never_heard = self.last_seen(site) is None
        return self.silent_for(site) > self.heartbeat_timeout + (STARTUP_GRACE_S if never_heard else 0.0)
