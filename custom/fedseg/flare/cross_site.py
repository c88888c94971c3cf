"""NVFlare's cross-site evaluation, bounded and told which sites are gone.

Stock ``CrossSiteModelEval`` asks every connected site for its model and to score every model,
and waits up to 600 s per submission and 6000 s per validation for each. Here:

* sites that left the job or were lost during training (``fedseg_federation.json``) and sites
  silent at its start (no heartbeat) are not asked at all;
* the whole evaluation ends as soon as every site still owing an answer has gone silent, and at
  the latest after the job's timeouts;
* which sites took part, which were skipped and which cells stayed empty is added to
  ``fedseg_federation.json``, so a report marks missing cells as missing.
"""

from __future__ import annotations

from pathlib import Path

from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal
from nvflare.app_common.workflows.cross_site_model_eval import CrossSiteModelEval

from fedseg.flare.federation_record import RECORD_FILE, FederationRecord
from fedseg.flare.liveness import LIVENESS_ID, SiteLiveness


class ConsortiumCrossSiteEval(CrossSiteModelEval):
    """Cross-site evaluation over the sites that are still there (see module doc)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._gone: set[str] = set()
        self._record: FederationRecord | None = None
        self._liveness: SiteLiveness | None = None

    def start_controller(self, fl_ctx: FLContext) -> None:
        liveness = self._engine.get_component(LIVENESS_ID)
        self._liveness = liveness if isinstance(liveness, SiteLiveness) else None
        app_dir = Path(self._engine.get_workspace().get_app_dir(fl_ctx.get_job_id()))
        self._record = FederationRecord(app_dir / RECORD_FILE, {})
        skipped = dict(self._record.excluded_sites())
        connected = [c.name for c in self._engine.get_clients()]
        for site in connected:
            if site not in skipped and self._silent(site):
                skipped[site] = "silent (no heartbeat)"
        if not self._participating_clients:
            self._participating_clients = [c for c in connected if c not in skipped]
        else:
            self._participating_clients = [c for c in self._participating_clients if c not in skipped]
        if skipped:
            self.log_warning(fl_ctx, "fedseg: cross-site evaluation without " + ", ".join(
                f"{site} ({why})" for site, why in sorted(skipped.items())))
        self._record.set_cross_site({"participants": list(self._participating_clients), "skipped": skipped,
                                     "stopped_waiting_for": []})
        super().start_controller(fl_ctx)

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        if not self._participating_clients:
            self.log_warning(fl_ctx, "fedseg: no site is left to run cross-site evaluation")
            return
        super().control_flow(abort_signal, fl_ctx)

    def get_num_standing_tasks(self) -> int:
        standing = super().get_num_standing_tasks()
        if standing and self._liveness is not None:
            owing = self._owing()
            if owing and all(self._silent(site) for site in owing):
                self._gone |= owing
                self.logger.warning(f"fedseg: cross-site evaluation stops waiting for {', '.join(sorted(owing))} "
                                    f"(silent for over {self._liveness.heartbeat_timeout:g} s); their cells stay empty")
                entry = dict(self._record.data.get("cross_site") or {})
                entry["stopped_waiting_for"] = sorted(self._gone)
                self._record.set_cross_site(entry)
                self.cancel_all_tasks()
        return standing

    def _owing(self) -> set[str]:
        """Sites that still owe an answer to a standing task."""
        owing = set()
        # The communicator keeps its standing tasks privately; NVFlare 2.9 offers no public list.
        for task in list(getattr(self.communicator, "_tasks", [])):
            answered = {ct.client.name for ct in task.client_tasks if ct.result_received_time}
            owing |= set(task.targets or []) - answered
        return owing

    def _silent(self, site: str) -> bool:
        return self._liveness is not None and self._liveness.is_silent(site)
