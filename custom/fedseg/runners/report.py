"""Reading and reporting ``fedseg train`` runs (single-site and centralized), alone or beside a federated run.

A run is its folder: ``results.json`` (what :func:`fedseg.runners.local.run_local` or the Ray
runner wrote), the models, and the figures written here. Runs are named by their folder, so two
runs in one parent folder stay two runs.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

from fedseg.engine.metrics import metric_key
from fedseg.errors import FedsegError
from fedseg.results import POOLED, SiteScore, render_table, with_pooled

log = logging.getLogger("fedseg")

LOCAL_MODES = ("single-site", "pooled")
RESULTS = "results.json"


def score_from_json(cell: dict) -> SiteScore:
    """A :class:`SiteScore` back from ``models_to_json`` (``None`` Dice is NaN)."""
    return SiteScore(cell["cases"], {k: (float("nan") if v is None else v) for k, v in cell["dice"].items()},
                     cell["counts"], cell.get("false_positive_cases"))


@dataclass
class LocalRun:
    """A finished ``fedseg train`` run."""

    path: Path
    body: dict

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def setting(self) -> str:
        if self.body.get("mode") == "pooled":
            return f"centralized ({' + '.join(self.body.get('sites', []))} pooled)"
        return f"{'+'.join(self.body.get('sites', []))} alone"

    @property
    def schedule(self) -> str:
        backend = self.body.get("backend", "local")
        return f"{self.body.get('epochs', '?')} epochs ({backend})"

    @property
    def training_cases(self) -> int | None:
        return self.body.get("training_cases")

    @property
    def best_key(self) -> str | None:
        return next((k for k in self.body.get("models", {}) if k.startswith("best")), None)

    def scores(self, model: str = "final") -> dict[str, SiteScore]:
        cells = self.body["models"][model]
        return with_pooled({s: score_from_json(c) for s, c in cells.items() if s != POOLED})

    def per_case(self, model: str = "final") -> dict[str, dict[str, list]] | None:
        return (self.body.get("per_case_dice") or {}).get(model)


def read_local_run(path: Path) -> LocalRun:
    """The run in ``path`` (its folder or its ``results.json``).

    Raises:
        FedsegError: no ``results.json``, or one that is not a single-site or centralized run's.
    """
    path = Path(path)
    results = path if path.is_file() else path / RESULTS
    if not results.is_file():
        raise FedsegError(f"{path}: not a run folder (no {RESULTS})")
    body = json.loads(results.read_text())
    if body.get("mode") not in LOCAL_MODES:
        raise FedsegError(f"{results}: not a fedseg train run (mode {body.get('mode')!r})")
    return LocalRun(results.parent, body)


def find_local_runs(root: Path, task: str | None, variant: str | None = None) -> list[LocalRun]:
    """Single-site and centralized runs in ``root`` for ``task``: the newest of each setting.

    Runs of another variant, runs that trained no epoch, and older runs of the same setting are
    left out, each with a log line saying so.
    """
    newest: dict[tuple, LocalRun] = {}
    for results in sorted(Path(root).glob(f"*/{RESULTS}")):
        try:
            run = read_local_run(results)
        except (FedsegError, ValueError):
            continue
        if task is not None and run.body.get("task") != task:
            continue
        if variant is not None and run.body.get("variant") not in (None, variant):
            log.info("fedseg report: %s left out: %s variant, the federated run is %s", run.name,
                     run.body.get("variant"), variant)
            continue
        if not run.body.get("epochs"):
            log.info("fedseg report: %s left out: it trained no epoch", run.name)
            continue
        key = (run.body.get("mode"), tuple(run.body.get("sites", [])))
        older = newest.get(key)
        if older is None or results.stat().st_mtime > (older.path / RESULTS).stat().st_mtime:
            if older is not None:
                log.info("fedseg report: %s left out: %s is a newer run of the same setting", older.name, run.name)
            newest[key] = run
    return sorted(newest.values(), key=lambda r: (r.body.get("mode") != "pooled", r.name))


def pooled_cases(per_site: dict[str, dict[str, list]] | None, class_names) -> dict[str, list]:
    """Every site's per-case values of each class, pooled."""
    out: dict[str, list] = {name: [] for name in class_names}
    for classes in (per_site or {}).values():
        for name in class_names:
            out[name] += classes.get(name, [])
    return out


def history_curves(history: list[dict], class_names) -> tuple[list[int], dict[str, list]]:
    """Epochs and validation Dice per class from a run's history (rows without validation skipped)."""
    rows = [r for r in history if f"val_dice_{metric_key(class_names[0])}" in r] if class_names else []
    return [r["epoch"] for r in rows], {n: [r.get(f"val_dice_{metric_key(n)}") for r in rows] for n in class_names}


def click_curves(metrics: dict, prefix: str, class_names) -> dict[str, dict[int, float]]:
    """Deepgrow: ``{object or "mean": {clicks: Dice}}`` from flat metrics (``<prefix>_dice[_<obj>]_click<N>``)."""
    pattern = re.compile(rf"^{re.escape(prefix)}_dice(?:_(.+))?_click(\d+)$")
    by_key = {metric_key(n): n for n in class_names}
    curves: dict[str, dict[int, float]] = {}
    for key, value in metrics.items():
        found = pattern.match(key)
        if not found or value is None or not math.isfinite(float(value)):
            continue
        name = "mean" if found.group(1) is None else by_key.get(found.group(1))
        if name is not None:
            curves.setdefault(name, {})[int(found.group(2))] = float(value)
    return {k: dict(sorted(v.items())) for k, v in curves.items()}


def write_local_report(run_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """``report.md`` and the figures of one ``fedseg train`` run; returns the files written."""
    from fedseg.plots import (figure_case_spread, figure_class_curves, figure_click_curves, figure_heatmap,
                              save_figure)

    run = read_local_run(run_dir)
    out = Path(out_dir or run.path)
    classes = tuple(run.body.get("classes", []))
    written: list[Path] = []
    epochs, per_class = history_curves(run.body.get("history", []), classes)
    best = run.body.get("best_epoch") or None
    if epochs:
        fig = figure_class_curves(epochs, {"validation cases": per_class}, classes, xlabel="epoch",
                                  title=f"{run.name}: validation Dice per class per epoch", mark=best,
                                  mark_label=f"best epoch {best}")
        written.append(save_figure(fig, out / "validation_dice_per_class.png"))
    models = list(run.body.get("models", {}))
    panels = _heatmap_panels({m: run.scores(m) for m in models}, classes)
    written.append(save_figure(figure_heatmap(panels, title=f"{run.name}: test Dice per model and site",
                                              cases={m: {s: c.cases for s, c in run.scores(m).items()}
                                                     for m in models}),
                               out / "test_dice_matrix.png"))
    groups = [(f"{m} model", pooled_cases(run.per_case(m), classes), "cases") for m in models if run.per_case(m)]
    if groups:
        fig = figure_case_spread(groups, classes, title=f"{run.name}: Dice per test case ({run.setting})")
        written.append(save_figure(fig, out / "case_dice_spread.png"))
    last_val = next((r for r in reversed(run.body.get("history", [])) if "val_dice_click1" in r), None)
    if last_val:
        curves = click_curves(last_val, "val", classes)
        fig = figure_click_curves(curves, title=f"{run.name}: validation Dice vs clicks, epoch {last_val['epoch']}")
        written.append(save_figure(fig, out / "dice_vs_clicks.png"))
    md = [f"# Report: {run.name}", "", f"{run.setting}, {run.schedule}, {run.training_cases or 'n/a'} training "
          f"case(s); best validation epoch {best or 'none'}.", "", "## Test cases", "",
          render_table({m: run.scores(m) for m in models}, classes), "", *figure_list(out, written)]
    (out / "report.md").write_text("\n".join(md) + "\n")
    return [out / "report.md", *written]


def _heatmap_panels(matrix: dict[str, dict[str, SiteScore]], classes) -> dict[str, dict[str, dict[str, float]]]:
    panels = {name: {m: {s: c.dice.get(name) for s, c in sites.items()} for m, sites in matrix.items()}
              for name in classes}
    if len(classes) > 1:
        panels["mean over classes"] = {m: {s: c.mean for s, c in sites.items()} for m, sites in matrix.items()}
    return panels


FIGURES = {
    "training_loss.png": "training loss per round, per site and all sites",
    "validation_dice.png": "the global model's mean validation Dice per round, per site and all sites",
    "validation_dice_per_class.png": "validation Dice of each class per round (or epoch), per site",
    "cross_site_dice.png": "the cross-site matrix: each model's Dice on each site's test cases, per class",
    "test_dice_matrix.png": "the final and best models' Dice on each site's test cases, per class",
    "case_dice_spread.png": "Dice per test case, models side by side (box and cases)",
    "dice_vs_clicks.png": "Dice after 1, 5, 10, 15 clicks, per object and mean",
}


def figure_list(out: Path, written: list[Path]) -> list[str]:
    """The report's "Figures" section: every PNG in ``out``, with what it shows."""
    names = sorted({p.name for p in written} | {p.name for p in Path(out).glob("*.png")})
    if not names:
        return []
    lines = ["## Figures", ""]
    for name in names:
        what = FIGURES.get(name) or ("axial, coronal and sagittal slices of a test case: reference and predicted "
                                     "masks over the scan" if name.startswith("overlay_") else "")
        lines.append(f"- `{name}`" + (f": {what}" if what else ""))
    return lines + [""]
