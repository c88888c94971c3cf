"""Dice results per model and site: pooling across sites, tables and JSON shared by every runner."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from fedseg.engine.metrics import DiceScores, metric_key

POOLED = "pooled"


@dataclass(frozen=True)
class SiteScore:
    """One model scored on one site's cases: per-class mean Dice, cases per class, class mean."""

    cases: int
    dice: dict[str, float]
    counts: dict[str, int]
    false_positives: dict[str, int] | None = None

    @property
    def mean(self) -> float:
        finite = [v for v in self.dice.values() if not math.isnan(v)]
        return sum(finite) / len(finite) if finite else float("nan")

    @staticmethod
    def from_scores(scores: DiceScores) -> "SiteScore":
        return SiteScore(scores.n_cases, scores.per_class(), scores.counts(), scores.false_positives())

    @staticmethod
    def from_metrics(metrics: Mapping[str, float], prefix: str, class_names: tuple[str, ...]) -> "SiteScore":
        """Rebuild from flat metrics as :meth:`DiceScores.as_metrics` wrote them (e.g. NVFlare results)."""
        dice, counts, fps = {}, {}, {}
        for name in class_names:
            key = metric_key(name)
            dice[name] = float(metrics.get(f"{prefix}_dice_{key}", float("nan")))
            counts[name] = int(metrics.get(f"{prefix}_n_{key}", metrics.get(f"{prefix}_cases", 0)))
            fps[name] = int(metrics.get(f"{prefix}_fp_{key}", 0))
        return SiteScore(int(metrics.get(f"{prefix}_cases", 0)), dice, counts, fps)

    def to_json(self) -> dict:
        body = {"cases": self.cases, "mean": _clean(self.mean), "dice": {k: _clean(v) for k, v in self.dice.items()},
                "counts": self.counts}
        if self.false_positives is not None:
            body["false_positive_cases"] = self.false_positives
        return body


def pool(scores: list[SiteScore]) -> SiteScore:
    """Case-weighted pooling: equal to scoring all sites' cases together."""
    names = list(scores[0].dice) if scores else []
    dice, counts = {}, {}
    for name in names:
        n = sum(s.counts[name] for s in scores if not math.isnan(s.dice[name]))
        total = sum(s.dice[name] * s.counts[name] for s in scores if not math.isnan(s.dice[name]))
        dice[name], counts[name] = (total / n if n else float("nan")), n
    fps = None
    if all(s.false_positives is not None for s in scores):
        fps = {name: sum(s.false_positives[name] for s in scores) for name in names}
    return SiteScore(sum(s.cases for s in scores), dice, counts, fps)


def _clean(v: float):
    return None if isinstance(v, float) and math.isnan(v) else round(v, 4)


def with_pooled(by_site: Mapping[str, SiteScore]) -> dict[str, SiteScore]:
    out = dict(by_site)
    if len(by_site) > 1:
        out[POOLED] = pool(list(by_site.values()))
    return out


def render_table(models: Mapping[str, Mapping[str, SiteScore]], class_names: tuple[str, ...]) -> str:
    """A Markdown table: one row per (model, site), a column per class and their mean."""
    head = ["model", "site", "cases", *class_names, "mean"]
    rows = [head, ["---"] * len(head)]
    for model, sites in models.items():
        for site, score in sites.items():
            values = [f"{score.dice[c]:.4f}" if not math.isnan(score.dice[c]) else "n/a" for c in class_names]
            mean = f"{score.mean:.4f}" if not math.isnan(score.mean) else "n/a"
            rows.append([model, site, str(score.cases), *values, mean])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows)


def models_to_json(models: Mapping[str, Mapping[str, SiteScore]]) -> dict:
    return {m: {s: score.to_json() for s, score in sites.items()} for m, sites in models.items()}


def write_json(path: Path, body: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2, allow_nan=False) + "\n")
    return path


__all__ = ["SiteScore", "pool", "with_pooled", "render_table", "models_to_json", "write_json", "POOLED"]
