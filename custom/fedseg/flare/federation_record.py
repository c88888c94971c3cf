"""``fedseg_federation.json``: what happened to each site in each round, written by the server.

The server's controllers rewrite this file in the job's app folder (next to
``FL_global_model.pt``) after every round and at the end, so a stopped or killed job still
leaves an account of itself: which sites each round was sent to, which delivered, withheld,
failed or missed it, late updates that were refused, the job's deadlines, and why it ended.
``fedseg simulate``, ``fedseg poc`` and ``fedseg report`` read it; it names sites, never files.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

RECORD_FILE = "fedseg_federation.json"

# How a job ended (the "reason" of the record's "ended" entry).
COMPLETED = "completed"
TOO_FEW_SITES = "too_few_sites"
ABORTED = "aborted"


class FederationRecord:
    """The record of one job, kept in memory and rewritten to ``path`` on every change."""

    def __init__(self, path: Path, settings: dict):
        self.path = Path(path)
        self.data: dict = {"settings": settings, "rounds": [], "late_updates": [], "ended": None,
                           "cross_site": None}
        if self.path.is_file():  # the cross-site workflow adds to what training wrote
            try:
                self.data.update(json.loads(self.path.read_text()))
            except (OSError, ValueError):
                pass
        self.write()

    def add_round(self, entry: dict) -> None:
        self.data["rounds"].append(entry)
        self.write()

    def add_late(self, site: str, round_: int | None, current_round: int | None) -> None:
        self.data["late_updates"].append({"site": site, "round": round_, "arrived_in_round": current_round})
        self.write()

    def end(self, reason: str, message: str, sites: list[str] | None = None, round_: int | None = None) -> None:
        self.data["ended"] = {"reason": reason, "message": message, "sites": sorted(sites or []), "round": round_,
                              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.write()

    def set_cross_site(self, entry: dict) -> None:
        self.data["cross_site"] = entry
        self.write()

    def excluded_sites(self) -> dict[str, str]:
        """Sites that left the job or were lost by its end, with why: cross-site evaluation skips them."""
        excluded = {}
        for entry in self.data["rounds"]:
            excluded.update(entry.get("left", {}))
        ended = self.data.get("ended") or {}
        for site in ended.get("sites", []):
            excluded.setdefault(site, ended.get("reason", "lost"))
        return excluded

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader (or a kill mid-write) never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".fedseg_record")
        with os.fdopen(fd, "w") as fh:
            json.dump(self.data, fh, indent=2)
        os.replace(tmp, self.path)


def read_record(app_dir: Path) -> dict | None:
    """The record in a server app folder, or None when the job wrote none (an older job)."""
    path = Path(app_dir) / RECORD_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())
