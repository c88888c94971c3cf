"""NVFlare's FedAvg and FedOpt, made to end every round and survive lost sites.

Stock NVFlare behaviour that does not suit a consortium, and what fedseg does instead:

* ``FedAvgRecipe`` passes its ``min_clients`` as FedAvg's ``num_clients``, so with more sites
  connected than the minimum only a random subset trains each round. Here every live site trains
  every round; ``min_clients`` is the minimum.
* FedAvg sends each round with ``timeout=0`` ("never time out") and waits for every site: one site
  that dies or hangs stops the whole consortium forever. Here every round ends: at the latest at
  ``round_timeout`` seconds; once ``min_clients`` usable updates are in, after at most
  ``straggler_grace`` more seconds for the rest; at once when the sites still missing have gone
  silent (no heartbeat for ``heartbeat_timeout``, see :mod:`fedseg.flare.liveness`) or when the
  minimum can no longer be reached.
* A failed site's error aborted the job. Here a site that fails, withholds its update, misses the
  round or leaves is left out of that round's average and named in the server log and in
  ``fedseg_federation.json``; a silent site is not sent the next round until it beats again.
  An update that arrives after its round closed is never averaged into a later round: NVFlare's
  clients ask whether their task still stands before sending and drop the result if not; one
  that arrives anyway is refused here and recorded.
* Below ``min_clients`` usable updates (or live sites at a round's start) the job does not panic:
  training stops cleanly with the last global model saved, cross-site evaluation runs on the
  sites that are left, and the reason, naming the sites, is logged and recorded.

Aggregation itself is NVFlare's (weighted by each site's ``NUM_STEPS_CURRENT_ROUND``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from nvflare.apis.client import Client
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.workflows.fedavg import FedAvg

from fedseg.flare.constants import KEY_METRIC, LEAVING, WITHHELD
from fedseg.flare.federation_record import ABORTED, COMPLETED, RECORD_FILE, TOO_FEW_SITES, FederationRecord
from fedseg.flare.liveness import LIVENESS_ID, SiteLiveness


class TooFewSites(RuntimeError):
    """Training cannot go on with the job's minimum of sites; the message names them, ``sites`` lists them."""

    def __init__(self, message: str, sites: list[str]):
        super().__init__(message)
        self.sites = sorted(sites)


@dataclass
class _Round:
    """One training round's bookkeeping."""

    number: int
    targets: list[str]
    start: float = field(default_factory=time.monotonic)
    responded: set[str] = field(default_factory=set)
    delivered: list[str] = field(default_factory=list)
    withheld: dict[str, str] = field(default_factory=dict)
    left: dict[str, str] = field(default_factory=dict)
    min_reached: float | None = None
    closed_because: str | None = None
    unreachable: bool = False  # closed early because the minimum could no longer be reached
    unscored: list[str] = field(default_factory=list)  # delivered without validation Dice


class ConsortiumRounds:
    """Mixin for NVFlare's FedAvg family: deadlines, stragglers, lost and leaving sites (see module doc)."""

    def __init__(self, *args, min_clients: int = 1, round_timeout: int = 3600, straggler_grace: int = 300, **kwargs):
        kwargs["num_clients"] = 0  # 0: every connected client, every round
        kwargs["ignore_result_error"] = True
        super().__init__(*args, **kwargs)
        for name, value, low in (("min_clients", min_clients, 1), ("round_timeout", round_timeout, 1),
                                 ("straggler_grace", straggler_grace, 0)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be a whole number of at least {low}, got {value!r}")
        self.min_clients = min_clients
        self.round_timeout = round_timeout
        self.straggler_grace = straggler_grace
        self._round: _Round | None = None
        self._left: dict[str, str] = {}
        self._unscored_sites: set[str] = set()
        self._record: FederationRecord | None = None
        self._liveness: SiteLiveness | None = None

    # Run ------------------------------------------------------------------------------------------
    def run(self) -> None:
        self._liveness = self._find_liveness()
        self._record = FederationRecord(Path(self.get_app_dir()) / RECORD_FILE, {
            "min_clients": self.min_clients, "round_timeout_s": self.round_timeout,
            "straggler_grace_s": self.straggler_grace,
            "heartbeat_timeout_s": self._liveness.heartbeat_timeout if self._liveness else None,
            "start_round": self.start_round, "num_rounds": self.num_rounds,
        })
        try:
            super().run()
        except TooFewSites as stop:
            # Not a panic: the last global model is saved and cross-site evaluation still runs.
            self.error(str(stop))
            self._record.end(TOO_FEW_SITES, str(stop), sites=stop.sites, round_=self.current_round)
            return
        if self.abort_signal is not None and self.abort_signal.triggered:
            self._record.end(ABORTED, "the job was aborted", round_=self.current_round)
        else:
            self._record.end(COMPLETED, "all rounds done", round_=self.current_round)

    def _find_liveness(self) -> SiteLiveness | None:
        component = self.get_component(LIVENESS_ID)
        if not isinstance(component, SiteLiveness):
            self.warning("fedseg: no site heartbeats in this job; lost sites are found by the round deadline only")
            return None
        return component

    # Round start ----------------------------------------------------------------------------------
    def sample_clients(self, num_clients: int | None = None) -> list[str]:
        connected = super().sample_clients(num_clients)
        silent = sorted(c for c in connected if c not in self._left and self._is_silent(c))
        live = [c for c in connected if c not in self._left and c not in silent]
        if silent:
            self.warning(f"fedseg: round {self.current_round}: {', '.join(silent)} silent for over "
                         f"{self._liveness.heartbeat_timeout:g} s (no heartbeat); not sent this round")
        self._round = _Round(self.current_round, live)
        if len(live) < self.min_clients:
            gone = sorted(set(silent) | set(self._left))
            raise TooFewSites(f"fedseg: round {self.current_round}: only {len(live)} live site(s) "
                              f"({', '.join(live) or 'none'}; lost or left: {', '.join(gone) or 'none'}), fewer than "
                              f"the job's minimum of {self.min_clients}; training stops here, the last global model "
                              f"is kept and cross-site evaluation runs on the sites that are left", gone)
        return live

    def send_model(self, task_name: str = "train", data: FLModel | None = None, targets=None,
                   min_responses: int | None = None, timeout: int = 0, callback=None) -> None:
        # FedAvg sends with timeout 0 (never); every round here has a deadline.
        super().send_model(task_name=task_name, data=data, targets=targets, min_responses=min_responses,
                           timeout=self.round_timeout, callback=callback)

    # Results --------------------------------------------------------------------------------------
    def _process_result(self, client_task, fl_ctx: FLContext) -> None:
        site = client_task.client.name
        if self._liveness:
            self._liveness.seen(site)
        try:
            super()._process_result(client_task, fl_ctx)
        finally:
            # Only now: while its update is being averaged the site counts as still working.
            if self._round is not None:
                self._round.responded.add(site)

    def _aggregate_one_result(self, result: FLModel) -> bool:
        meta = result.meta or {}
        site = meta.get("client_name", "unknown site")
        if meta.get(LEAVING):
            reason = str(meta.get(WITHHELD) or "the site left the job")
            self._left[site] = reason
            if self._round is not None:
                self._round.left[site] = reason
            self.warning(f"fedseg: {site} leaves the job: {reason}")
        if not result.params:
            if self._round is not None:
                self._round.withheld[site] = str(meta.get(WITHHELD) or "empty update")
            return False
        accepted = super()._aggregate_one_result(result)
        if accepted and self._round is not None:
            self._round.delivered.append(site)
            if KEY_METRIC not in (result.metrics or {}):
                self._round.unscored.append(site)
                if site not in self._unscored_sites:
                    self._unscored_sites.add(site)
                    self.warning(f"fedseg: {site} reports no {KEY_METRIC} (no validation cases: a training-only "
                                 f"site); best-model selection uses the other sites' validation cases")
        return accepted

    def process_result_of_unknown_task(self, client: Client, task_name: str, client_task_id: str, result: Shareable,
                                       fl_ctx: FLContext) -> None:
        site = client.name
        if self._liveness:
            self._liveness.seen(site)
        late_round = result.get_header(AppConstants.CURRENT_ROUND, None)
        self.warning(f"fedseg: {task_name} result from {site} for round {late_round} arrived after that round "
                     f"closed; refused (never averaged into a later round)")
        if self._record is not None and task_name == self.task_name:
            self._record.add_late(site, late_round, self.current_round)

    # Closing a round ------------------------------------------------------------------------------
    def get_num_standing_tasks(self) -> int:
        """FedAvg polls this while a round is open; closing the round early happens here."""
        standing = super().get_num_standing_tasks()
        r = self._round
        if standing and r is not None and r.closed_because is None:
            reason = self._close_reason(r)
            if reason:
                r.closed_because = reason
                self.info(f"fedseg: round {r.number} closes: {reason}")
                self.cancel_all_tasks()
        return standing

    def _close_reason(self, r: _Round) -> str | None:
        now = time.monotonic()
        usable = len(r.delivered)
        outstanding = [s for s in r.targets if s not in r.responded]
        if not outstanding:
            return None  # every site answered; the task ends by itself
        silent = [s for s in outstanding if self._is_silent(s)]
        waiting = [s for s in outstanding if s not in silent]
        if now - r.start >= self.round_timeout:
            return f"round deadline of {self.round_timeout} s reached"
        if usable >= self.min_clients:
            r.min_reached = r.min_reached or now
            if not waiting:
                return f"the minimum of {self.min_clients} update(s) is in and {', '.join(silent)} went silent"
            if now - r.min_reached >= self.straggler_grace:
                return (f"the minimum of {self.min_clients} update(s) is in and the straggler grace of "
                        f"{self.straggler_grace} s is over")
        elif usable + len(waiting) < self.min_clients:
            r.unreachable = True
            return (f"only {usable} usable update(s) and {len(waiting)} site(s) still working: the minimum of "
                    f"{self.min_clients} cannot be reached")
        return None

    def _round_info(self) -> dict:
        """What an algorithm adds to the round's entry in ``fedseg_federation.json``."""
        return {}

    def _is_silent(self, site: str) -> bool:
        return self._liveness is not None and self._liveness.is_silent(site)

    def _get_aggregated_result(self) -> FLModel:
        r = self._round
        if r is None:  # aggregation outside a sent round (bench/aggregation.py): no bookkeeping to do
            return super()._get_aggregated_result()
        unanswered = sorted(set(r.targets) - r.responded)
        # Sites still working when the round was closed for want of the minimum are not at fault.
        cut_short = [s for s in unanswered if not self._is_silent(s)] if r.unreachable else []
        missed = [s for s in unanswered if s not in cut_short]
        failed = sorted(r.responded - set(r.delivered) - set(r.withheld))
        self._record.add_round({
            "round": r.number, "sent_to": r.targets, "delivered": sorted(r.delivered), "withheld": r.withheld,
            "failed": failed, "missed": missed, "cut_short": cut_short, "left": r.left,
            "not_in_best_model_selection": sorted(r.unscored),
            "closed_because": r.closed_because or "all answered", "seconds": round(time.monotonic() - r.start, 1),
            **self._round_info(),
        })
        if missed:
            self.warning(f"fedseg: round {r.number}: no answer from {', '.join(missed)} by the round's close "
                         f"({r.closed_because}); left out of this round")
        if len(r.delivered) < self.min_clients:
            at_fault = sorted(set(missed) | set(failed) | set(r.withheld))
            raise TooFewSites(f"fedseg: round {r.number}: only {len(r.delivered)} usable site update(s) "
                              f"({', '.join(sorted(r.delivered)) or 'none'}; failed, withheld or missed: "
                              f"{', '.join(at_fault) or 'none'}), fewer than the job's minimum of {self.min_clients}; "
                              f"training stops here, the last global model is kept and cross-site evaluation runs on "
                              f"the sites that are left", at_fault)
        not_averaged = sorted(set(r.targets) - set(r.delivered))
        if not_averaged:
            self.warning(f"fedseg: round {r.number}: no usable update from {', '.join(not_averaged)}; "
                         f"averaging {', '.join(sorted(r.delivered))}")
        return super()._get_aggregated_result()


class ConsortiumFedAvg(ConsortiumRounds, FedAvg):
    """NVFlare's FedAvg (also FedProx: the server only sends ``fedprox_mu``) with fedseg's round rules."""


