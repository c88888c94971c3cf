"""Read a finished NVFlare job's server workspace: cross-site matrix, per-round metrics, best round."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from fedseg.engine.metrics import metric_key
from fedseg.errors import FedsegError
from fedseg.flare.federation_record import COMPLETED, RECORD_FILE
from fedseg.results import SiteScore, with_pooled

FINAL_MODEL = "SRV_FL_global_model.pt"
BEST_MODEL = "SRV_best_FL_global_model.pt"


@dataclass
class JobResults:
    job_dir: Path
    cross_site: dict[str, dict[str, dict]]  # evaluating site -> model -> metrics
    rounds: list[dict]
    best_round: int | None
    federation: dict | None = None  # fedseg_federation.json: per-round participation, why the job ended

    @property
    def sites(self) -> list[str]:
        return sorted(self.cross_site)

    @property
    def ended(self) -> dict:
        """How training ended: ``reason`` (completed, too_few_sites, aborted), ``message``, ``sites``."""
        return (self.federation or {}).get("ended") or {"reason": COMPLETED if self.federation is None else "unknown",
                                                        "message": "", "sites": []}

    @property
    def finished(self) -> bool:
        return self.ended.get("reason") == COMPLETED

    def participation(self) -> dict[str, dict[str, list[int]]]:
        """Per site, the rounds it missed, withheld, failed or left in (from the federation record)."""
        out: dict[str, dict[str, list[int]]] = {}
        for entry in (self.federation or {}).get("rounds", []):
            for what in ("missed", "withheld", "failed", "left"):
                for site in entry.get(what, []):
                    out.setdefault(site, {}).setdefault(what, []).append(entry["round"])
        return out

    def model_names(self) -> list[str]:
        names: list[str] = []
        for per_model in self.cross_site.values():
            names += [m for m in per_model if m not in names]
        return names

    def scores(self, model: str, class_names: tuple[str, ...]) -> dict[str, SiteScore]:
        """One model's test scores on every site, plus the pooled figure."""
        by_site = {site: SiteScore.from_metrics(self.cross_site[site][model], "test", class_names)
                   for site in self.sites if model in self.cross_site[site]}
        return with_pooled(by_site)

    def click_curve(self, model: str) -> dict[int, float]:
        """Deepgrow: the model's test Dice after each number of clicks, pooled over sites by samples scored.

        Empty for tasks that report no ``test_dice_click<N>`` metrics.
        """
        totals: dict[int, list[float]] = {}
        for site in self.sites:
            metrics = self.cross_site[site].get(model, {})
            cases = float(metrics.get("test_cases", 0))
            for key, value in metrics.items():
                found = re.fullmatch(r"test_dice_click(\d+)", key)
                if found and cases and math.isfinite(value):
                    acc = totals.setdefault(int(found.group(1)), [0.0, 0.0])
                    acc[0], acc[1] = acc[0] + value * cases, acc[1] + cases
        return {n: total / cases for n, (total, cases) in sorted(totals.items())}

    def click_curves(self, model: str, class_names: tuple[str, ...]) -> dict[str, dict[int, float]]:
        """Deepgrow: each object's test Dice after N clicks, pooled over sites by its samples, plus ``"mean"``.

        Empty for tasks that report no click metrics.
        """
        curves: dict[str, dict[int, float]] = {}
        for name in class_names:
            key = metric_key(name)
            totals: dict[int, list[float]] = {}
            for site in self.sites:
                metrics = self.cross_site[site].get(model, {})
                weight = float(metrics.get(f"test_n_{key}", 0))
                for metric, value in metrics.items():
                    found = re.fullmatch(rf"test_dice_{re.escape(key)}_click(\d+)", metric)
                    if found and weight and math.isfinite(value):
                        acc = totals.setdefault(int(found.group(1)), [0.0, 0.0])
                        acc[0], acc[1] = acc[0] + value * weight, acc[1] + weight
            if totals:
                curves[name] = {n: total / weight for n, (total, weight) in sorted(totals.items())}
        mean = self.click_curve(model)
        if mean:
            curves["mean"] = mean
        return curves

    def missing(self) -> list[str]:
        """Cells absent from the cross-site matrix (every site should score every model)."""
        models = self.model_names()
        return [f"{site} x {m}" for site in self.sites for m in models if m not in self.cross_site[site]]


def find_server_job_dir(path: Path) -> Path:
    """Accept a run folder, a simulator or server workspace, a downloaded result or the job folder itself."""
    path = Path(path)
    if (path / "cross_site_val" / "cross_val_results.json").is_file():
        return path
    for depth in ("*", "*/*", "*/*/*", "*/*/*/*"):  # a run folder: workspace/<job>/server/simulate_job
        found = sorted(path.glob(f"{depth}/cross_site_val/cross_val_results.json"))
        if found:
            return found[0].parent.parent
    raise FedsegError(f"{path}: no finished job found (looked for cross_site_val/cross_val_results.json)")


def round_records(job_dir: Path, *, running: bool = False) -> list[dict]:
    """The server's per-round metric records (NVFlare's ``MetricsArtifactWriter``) in a server job folder.

    ``running``: the job is still going, so a last line that does not parse is one being written and
    is left out; for a finished job such a line is an error.
    """
    path = Path(job_dir) / "metrics" / "round_metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in (line for line in path.read_text().splitlines() if line.strip()):
        try:
            out.append(json.loads(line))
        except ValueError:
            if not running:
                raise
            break
    return out


def read_job_results(path: Path) -> JobResults:
    job_dir = find_server_job_dir(path)
    cross = json.loads((job_dir / "cross_site_val" / "cross_val_results.json").read_text())
    rounds = round_records(job_dir)
    best = None
    summary = job_dir / "metrics" / "metrics_summary.json"
    if summary.is_file():
        best = json.loads(summary.read_text()).get("best_round")
    record = next(iter(sorted(job_dir.glob(f"app_*/{RECORD_FILE}"))), None)
    federation = json.loads(record.read_text()) if record else None
    return JobResults(job_dir, cross, rounds, best, federation)
