"""``fedseg report``: turn a finished job's server workspace into tables, JSON and plots.

Works on a simulator run folder or workspace, a POC/production result downloaded with
``nvflare job download``, or the server's job folder itself. It writes ``report.md``,
``report.json``, ``training_loss.png`` and ``validation_dice.png``, and puts the single-site and
centralized runs it finds next to the federated figures.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from fedseg.errors import FedsegError
from fedseg.flare.results import BEST_MODEL, FINAL_MODEL, JobResults, read_job_results
from fedseg.results import POOLED, SiteScore, models_to_json, render_table, with_pooled, write_json

_DICE_KEY = re.compile(r"^test_dice_(?!.*_n_)(.+)$")


@dataclass
class Report:
    job_dir: Path
    class_names: tuple[str, ...]
    matrix: dict[str, dict[str, SiteScore]]
    rounds: list[dict]
    best_round: int | None
    comparison: dict[str, dict[str, SiteScore]] = field(default_factory=dict)
    federation: dict | None = None  # fedseg_federation.json: who took part in each round, how the job ended

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
                      render_table(self.comparison, self.class_names), ""]
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
                "comparison": models_to_json(self.comparison), "federation": self.federation}


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


def _local_runs(task_dir: Path, task: str | None) -> dict[str, Path]:
    """Single-site and centralized runs (``fedseg train``) beside the federated run, by setting name."""
    found = {}
    for results in sorted(task_dir.glob("*/results.json")):
        body = json.loads(results.read_text())
        if body.get("mode") in ("single-site", "pooled") and (task is None or body.get("task") == task):
            label = "centralized" if body["mode"] == "pooled" else f"{'+'.join(body['sites'])} alone"
            found[label] = results
    return found


def build_report(path: Path, compare: list[Path] | None = None) -> Report:
    results = read_job_results(path)
    names = _class_names(results, Path(path).resolve())
    matrix = {_model_label(m, results.best_round): results.scores(m, names) for m in results.model_names()}
    report = Report(results.job_dir, names, matrix, _rounds(results), results.best_round,
                    federation=results.federation)
    fed = {"federated, final": matrix.get("final global", {})}
    if BEST_MODEL in results.model_names():
        fed["federated, best"] = matrix[_model_label(BEST_MODEL, results.best_round)]
    runs = {p.parent.name: p / "results.json" if p.is_dir() else p for p in (compare or [])}
    if not compare:
        task = _task_of(Path(path).resolve())
        runs = _local_runs(_runs_root(Path(path).resolve()), task)
    for label, results_file in runs.items():
        body = json.loads(Path(results_file).read_text())
        final = body["models"]["final"]
        fed[label] = with_pooled({s: SiteScore(c["cases"], {k: (v if v is not None else float("nan"))
                                                             for k, v in c["dice"].items()}, c["counts"])
                                  for s, c in final.items() if s != POOLED})
    report.comparison = fed if len(fed) > 1 else {}
    return report


def _task_of(path: Path) -> str | None:
    for folder in [path, *path.parents][:5]:
        if (folder / "results.json").is_file():
            return json.loads((folder / "results.json").read_text()).get("task")
    return None


def _runs_root(path: Path) -> Path:
    """The folder holding sibling runs: the parent of the run folder that has results.json."""
    for folder in [path, *path.parents][:5]:
        if (folder / "results.json").is_file():
            return folder.parent
    return path.parent


def plot(report: Report, out_dir: Path) -> list[Path]:
    """Training loss and validation Dice per round, per site and for all sites, as in the cards' graphs."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise FedsegError("plots need matplotlib: pip install 'fedseg[report]'") from None
    written = []
    for key, title, name in (("train_loss", "Training loss per round", "training_loss.png"),
                             ("val_dice", "Global model validation Dice per round", "validation_dice.png")):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        rounds = [r["round"] for r in report.rounds]
        for site in report.sites:
            ax.plot(rounds, [r["sites"].get(site, {}).get(key, float("nan")) for r in report.rounds],
                    marker="o", ms=3, lw=1, label=site)
        ax.plot(rounds, [r["all"].get(key, float("nan")) for r in report.rounds], color="black", lw=2,
                label="all sites (weighted)")
        if key == "val_dice" and report.best_round is not None:
            ax.axvline(report.best_round, color="grey", ls="--", lw=1, label=f"best round {report.best_round}")
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("training loss (the task's loss)" if key == "train_loss" else "mean Dice (foreground classes)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(out_dir) / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_report(path: Path, out_dir: Path | None = None, compare: list[Path] | None = None) -> tuple[Report, Path]:
    report = build_report(path, compare)
    out = Path(out_dir or path)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(report.markdown() + "\n")
    write_json(out / "report.json", report.to_json())
    plot(report, out)
    return report, out
