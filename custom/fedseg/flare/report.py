"""``fedseg report``: turn a finished job's server workspace into tables, JSON and plots.

Works on a simulator run folder or workspace, a POC/production result downloaded with
``nvflare job download``, or the server's job folder itself. It writes ``report.md``,
``report.json`` and the figures (see :data:`fedseg.runners.report.FIGURES`), and puts the
single-site and centralized runs it finds (or is given) next to the federated figures, each
labelled by its own run folder's name with its training schedule and number of training cases.

Per-case Dice never reaches the server: the federated models' spread comes from the run folder's
``results.json`` when whoever ran the job also holds the images (``fedseg simulate``), and is
otherwise shown as one point per site (the per-site means the sites did send).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from fedseg.engine.metrics import metric_key
from fedseg.errors import FedsegError
from fedseg.flare.results import BEST_MODEL, FINAL_MODEL, JobResults, read_job_results
from fedseg.results import SiteScore, models_to_json, render_table, write_json
from fedseg.runners.report import LocalRun, figure_list, find_local_runs, pooled_cases, read_local_run

_DICE_KEY = re.compile(r"^test_dice_(?!.*_n_)(.+)$")


@dataclass
class Report:
    job_dir: Path
    class_names: tuple[str, ...]
    matrix: dict[str, dict[str, SiteScore]]
    rounds: list[dict]
    best_round: int | None
    compared: list[ComparedRun] = field(default_factory=list)
    federation: dict | None = None  # fedseg_federation.json: who took part in each round, how the job ended
    click_curves: dict[str, dict[int, float]] = field(default_factory=dict)  # Deepgrow: final model, per object
    figures: list[Path] = field(default_factory=list)  # written by write_report

    @property
    def comparison(self) -> dict[str, dict[str, SiteScore]]:
        """The compared runs' test scores by label (empty when there is nothing to compare)."""
        return {run.label: run.scores for run in self.compared} if len(self.compared) > 1 else {}

    @property
    def sites(self) -> list[str]:
        return sorted({s for r in self.rounds for s in r["sites"]})

    def markdown(self) -> str:
        parts = [f"# Report: {self.job_dir}", "",
                 "## Cross-site evaluation (test cases of each site)", "", render_table(self.matrix, self.class_names),
                 "", f"Best global model: round {self.best_round} (the global model sent out in that round "
                     "scored the best mean validation Dice)." if self.best_round is not None else
                 "No best global model was selected (a 1-round job never selects one).", ""]
        if self.rounds:
            head = ["round", *(f"{s} val Dice" for s in self.sites), "all sites val Dice", "train loss"]
            rows = [head, ["---"] * len(head)]
            for r in self.rounds:
                rows.append([str(r["round"]), *(_fmt(r["sites"].get(s, {}).get("val_dice")) for s in self.sites),
                             _fmt(r["all"].get("val_dice")), _fmt(r["all"].get("train_loss"))])
            parts += ["## Global model per round (validation cases, scored before local training)", "",
                      *("| " + " | ".join(row) + " |" for row in rows), ""]
        parts += self._participation()
        if self.comparison:
            parts += ["## Federated, centralized and single-site (test cases)", "",
                      "Each run by its own folder name, with what it trained on.", "",
                      comparison_table(self.compared, self.class_names), ""]
        if self.click_curves:
            clicks = sorted({n for c in self.click_curves.values() for n in c})
            parts += ["## Final global model: test Dice after N clicks", "",
                      "| object | " + " | ".join(map(str, clicks)) + " |", "|---" * (len(clicks) + 1) + "|",
                      *(f"| {name} | " + " | ".join(_fmt(curve.get(n)) for n in clicks) + " |"
                        for name, curve in self.click_curves.items()), ""]
        return "\n".join(parts)

    def _participation(self) -> list[str]:
        """Rounds in which a site did not contribute, late updates, skipped cross-site cells, how training ended."""
        if not self.federation:
            return []
        ended = self.federation.get("ended") or {}
        lines = ["## Participation", "", f"Training ended: {ended.get('reason', 'unknown')}"
                 + (f" ({ended['message']})" if ended.get("message") and ended.get("reason") != "completed" else ""), ""]
        rows = [r for r in self.federation.get("rounds", [])
                if any(r.get(k) for k in ("missed", "withheld", "failed", "left", "cut_short"))]
        if rows:
            lines += ["| round | sent to | averaged | missed | withheld | failed | left | closed because |",
                      "|---|---|---|---|---|---|---|---|"]
            for r in rows:
                lines.append("| " + " | ".join([str(r["round"]), ", ".join(r["sent_to"]), ", ".join(r["delivered"]),
                                                ", ".join(r.get("missed", [])), ", ".join(r.get("withheld", {})),
                                                ", ".join(r.get("failed", [])), ", ".join(r.get("left", {})),
                                                r.get("closed_because", "")]) + " |")
            lines.append("")
        else:
            lines += ["Every site contributed to every round.", ""]
        for late in self.federation.get("late_updates", []):
            lines.append(f"- update from {late['site']} for round {late['round']} arrived during round "
                         f"{late['arrived_in_round']}: refused")
        cse = self.federation.get("cross_site") or {}
        for site, why in sorted((cse.get("skipped") or {}).items()):
            lines.append(f"- cross-site evaluation skipped {site} ({why}): its cells are missing")
        for site in cse.get("stopped_waiting_for") or []:
            lines.append(f"- cross-site evaluation stopped waiting for {site} (silent): some of its cells are missing")
        return lines + [""]

    def to_json(self) -> dict:
        return {"job_dir": str(self.job_dir), "classes": list(self.class_names), "best_round": self.best_round,
                "cross_site": models_to_json(self.matrix), "rounds": _finite(self.rounds),
                "comparison": models_to_json(self.comparison), "federation": self.federation,
                "compared_runs": [{"label": r.label, "setting": r.setting, "schedule": r.schedule,
                                   "training_cases": r.training_cases} for r in self.compared],
                "click_curves": {k: {str(n): v for n, v in c.items()} for k, c in self.click_curves.items()}}


@dataclass
class ComparedRun:
    """One row group of the comparison: a model of a run, labelled by the run's own name."""

    label: str
    setting: str
    schedule: str
    training_cases: int | None
    scores: dict[str, SiteScore]
    per_case: dict[str, dict[str, list]] | None = None  # site -> class -> Dice per case; None: not known here


def comparison_table(runs: list[ComparedRun], class_names: tuple[str, ...]) -> str:
    """Markdown: one row per run and site, with the run's setting, schedule and training cases."""
    head = ["run", "setting", "training", "training cases", "site", "cases", *class_names, "mean"]
    rows = [head, ["---"] * len(head)]
    for run in runs:
        for site, score in run.scores.items():
            rows.append([run.label, run.setting, run.schedule,
                         "n/a" if run.training_cases is None else str(run.training_cases), site, str(score.cases),
                         *(_fmt(score.dice.get(c)) for c in class_names), _fmt(score.mean)])
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _finite(value):
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _class_names(results: JobResults, near: Path) -> tuple[str, ...]:
    """Class names from a results.json next to the run, else from the metric keys themselves."""
    for folder in [near, *near.parents][:5]:
        candidate = folder / "results.json"
        if candidate.is_file():
            classes = json.loads(candidate.read_text()).get("classes")
            if classes:
                return tuple(classes)
    keys = []
    for per_model in results.cross_site.values():
        for metrics in per_model.values():
            keys += [m.group(1) for k in metrics if (m := _DICE_KEY.match(k)) and not k.startswith("test_dice_fp")]
    # Deepgrow's Dice-after-N-clicks keys (..._click5) are a curve, not classes.
    names = [k for k in dict.fromkeys(keys) if not k.startswith(("n_", "fp_", "click")) and not re.search(r"_click\d+$", k)]
    if not names:
        raise FedsegError(f"{results.job_dir}: no per-class Dice in the cross-site results")
    return tuple(names)


def _model_label(model: str, best_round: int | None) -> str:
    if model == FINAL_MODEL:
        return "final global"
    if model == BEST_MODEL:
        return f"best global (round {best_round})"
    return f"{model} local"


def _rounds(results: JobResults) -> list[dict]:
    out = []
    for r in results.rounds:
        sites = {s["name"]: {m["name"]: m["value"] for m in s["metrics"]} for s in r.get("sites", [])}
        everyone = {m["name"]: m["value"] for m in r.get("aggregated_metrics", [])}
        out.append({"round": r["round"], "sites": sites, "all": everyone})
    return out


def _run_record(path: Path) -> tuple[Path | None, dict]:
    """The run folder holding the federated run's ``results.json`` (up to 4 levels up), and its content."""
    for folder in [path, *path.parents][:5]:
        if (folder / "results.json").is_file():
            try:
                return folder, json.loads((folder / "results.json").read_text())
            except ValueError:
                return folder, {}
    return None, {}


def _federated_runs(results: JobResults, matrix: dict, run_dir: Path | None, record: dict) -> list[ComparedRun]:
    """The final and best global models as comparison rows, with per-case values where the run has them."""
    name = run_dir.name if run_dir is not None else results.job_dir.name
    rounds, epochs = record.get("rounds"), record.get("local_epochs")
    schedule = f"{rounds} rounds x {epochs} local epochs" if rounds and epochs else "n/a"
    cases = record.get("training_cases")
    setting = f"federated ({record.get('algorithm', 'fedavg')}, {len(results.sites)} sites)"
    per_case = record.get("per_case_dice") or {}
    runs = [ComparedRun(f"{name}: final global", setting, schedule, sum(cases.values()) if cases else None,
                        matrix.get("final global", {}), per_case.get("final"))]
    if BEST_MODEL in results.model_names():
        key = f"best (round {results.best_round})"
        runs.append(ComparedRun(f"{name}: best global (round {results.best_round})", setting, schedule,
                                sum(cases.values()) if cases else None,
                                matrix[_model_label(BEST_MODEL, results.best_round)], per_case.get(key)))
    return runs


def _local_rows(runs: list[LocalRun]) -> list[ComparedRun]:
    """Each run's final model; two runs of one name (in different folders) are told apart by their parent."""
    names = [r.name for r in runs]
    rows = []
    for run in runs:
        label = run.name if names.count(run.name) == 1 else f"{run.path.parent.name}/{run.name}"
        rows.append(ComparedRun(f"{label}: final", run.setting, run.schedule, run.training_cases, run.scores("final"),
                                run.per_case("final")))
    return rows


def build_report(path: Path, compare: list[Path] | None = None) -> Report:
    """Read a finished job (and the runs to compare) into a :class:`Report`.

    ``compare``: ``fedseg train`` run folders; by default the newest single-site and centralized
    runs of the same task and variant beside the federated run folder.
    """
    path = Path(path).resolve()
    results = read_job_results(path)
    names = _class_names(results, path)
    matrix = {_model_label(m, results.best_round): results.scores(m, names) for m in results.model_names()}
    run_dir, record = _run_record(path)
    report = Report(results.job_dir, names, matrix, _rounds(results), results.best_round,
                    federation=results.federation, click_curves=results.click_curves(FINAL_MODEL, names))
    if compare:
        local = [read_local_run(Path(c)) for c in compare]
    else:
        found = find_local_runs(run_dir.parent if run_dir else path.parent, record.get("task"), record.get("variant"))
        local = [r for r in found if tuple(r.body.get("classes", names)) == names]  # the same task's classes only
    report.compared = _federated_runs(results, matrix, run_dir, record) + _local_rows(local)
    return report


def write_figures(report: Report, out: Path) -> list[Path]:
    """Every figure the report has data for; returns the files written."""
    from fedseg.plots import (figure_case_spread, figure_class_curves, figure_click_curves, figure_heatmap,
                              figure_rounds, save_figure)

    written = []
    if report.rounds:
        for key, name in (("train_loss", "training_loss.png"), ("val_dice", "validation_dice.png")):
            written.append(save_figure(figure_rounds(report.rounds, report.sites, key, report.best_round), out / name))
        steps = [r["round"] for r in report.rounds]
        series = {site: {c: [r["sites"].get(site, {}).get(f"val_dice_{metric_key(c)}") for r in report.rounds]
                         for c in report.class_names} for site in report.sites}
        series["all sites (weighted)"] = {c: [r["all"].get(f"val_dice_{metric_key(c)}") for r in report.rounds]
                                          for c in report.class_names}
        fig = figure_class_curves(steps, series, report.class_names, xlabel="round", mark=report.best_round,
                                  mark_label=f"best round {report.best_round}",
                                  title="Global model validation Dice per class, per round and site")
        written.append(save_figure(fig, out / "validation_dice_per_class.png"))
    panels = {c: {m: {s: v.dice.get(c) for s, v in sites.items()} for m, sites in report.matrix.items()}
              for c in report.class_names}
    if len(report.class_names) > 1:
        panels["mean over classes"] = {m: {s: v.mean for s, v in sites.items()} for m, sites in report.matrix.items()}
    cases = {m: {s: v.cases for s, v in sites.items()} for m, sites in report.matrix.items()}
    written.append(save_figure(figure_heatmap(panels, title="Cross-site evaluation: Dice of each model on each "
                                                            "site's test cases", cases=cases),
                               out / "cross_site_dice.png"))
    groups, means_only = [], False
    for run in report.compared:
        if run.per_case:
            groups.append((run.label, pooled_cases(run.per_case, report.class_names), "cases"))
        else:
            means_only = True
            groups.append((run.label, {c: [v.dice.get(c) for s, v in run.scores.items() if s != "pooled"]
                                       for c in report.class_names}, "site means"))
    note = ("diamonds: one per site, the per-site mean the sites sent; their per-case values stay at the sites "
            "(fedseg evaluate at a site draws its own)") if means_only else ""
    written.append(save_figure(figure_case_spread(groups, report.class_names, note=note,
                                                  title="Dice per test case, all sites' test cases"),
                               out / "case_dice_spread.png"))
    if report.click_curves:
        fig = figure_click_curves(report.click_curves, title="Final global model: test Dice vs clicks, all sites")
        written.append(save_figure(fig, out / "dice_vs_clicks.png"))
    return written


def write_report(path: Path, out_dir: Path | None = None, compare: list[Path] | None = None) -> tuple[Report, Path]:
    """Write ``report.md``, ``report.json`` and the figures (listed in ``report.figures``) to ``out_dir``."""
    report = build_report(path, compare)
    out = Path(out_dir or path)
    out.mkdir(parents=True, exist_ok=True)
    report.figures = write_figures(report, out)
    (out / "report.md").write_text(report.markdown() + "\n" + "\n".join(figure_list(out, report.figures)) + "\n")
    write_json(out / "report.json", report.to_json())
    return report, out
