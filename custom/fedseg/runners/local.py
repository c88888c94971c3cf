"""Single-site and centralized (pooled) training without NVFlare.

Both train one engine on the training cases of the given sites (one site: that site alone;
several: their union, the centralized baseline), select the best epoch on the pooled validation
cases, and score the final and best models on each site's own test cases, so the figures sit
next to the federated run's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from fedseg.checkpoint import load_model, save_model
from fedseg.engine import Runtime, SegmentationEngine
from fedseg.results import SiteScore, models_to_json, render_table, with_pooled, write_json
from fedseg.site_config import SiteConfig
from fedseg.site_data import SiteData, open_site_data
from fedseg.site_eval import per_case_json
from fedseg.tasks.spec import TaskSpec
from fedseg.tracking import history_scalars, open_tracker

log = logging.getLogger("fedseg")


@dataclass
class LocalRunResult:
    models: dict[str, dict[str, SiteScore]]
    best_epoch: int
    best_val_dice: float
    class_names: tuple[str, ...]
    wall_time_s: float
    out_dir: Path

    def table(self) -> str:
        return render_table(self.models, self.class_names[1:])


def check_same_classes(sites: list[SiteData]) -> tuple[str, ...]:
    names = {s.class_names for s in sites}
    if len(names) > 1:
        raise ValueError(f"sites disagree on class names {sorted(names)}; their dataset.json files must match")
    return sites[0].class_names


def run_local(spec: TaskSpec, sites: list[SiteConfig], out_dir: Path, *, epochs: int, val_every: int = 1,
              seed: int = 0, runtime: Runtime | None = None, tracking: str | None = None,
              init_weights: Mapping[str, torch.Tensor] | None = None) -> LocalRunResult:
    """Train on the pooled training cases of ``sites``; write models and ``results.json`` to ``out_dir``.

    ``init_weights`` (from :func:`fedseg.checkpoint.load_initial_model`) replaces the seeded random
    start: a pretrained start.

    ``tracking`` (``tensorboard``, ``mlflow``, ``none``; default TensorBoard when installed) receives
    the training loss, learning rate and validation metrics at every validation, stepped by epoch.
    """
    for name, value in (("epochs", epochs), ("val_every", val_every)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    start = time.perf_counter()
    runtime = runtime or Runtime.for_site(sites[0])
    data = [open_site_data(spec, s) for s in sites]
    class_names = check_same_classes(data)
    engine = SegmentationEngine(spec, runtime, class_names=class_names, seed=seed)
    if init_weights is not None:
        engine.set_weights(init_weights)
    train_items = [it for d in data for it in d.items("training")]
    train = engine.train_data(train_items)
    val = engine.eval_data([it for d in data for it in d.items("validation")])
    out_dir = Path(out_dir)
    mode = "pooled" if len(sites) > 1 else "single-site"
    tracker = open_tracker(tracking, out_dir, out_dir.name, {
        "task": spec.name, "variant": spec.variant_name, "mode": mode, "sites": ",".join(s.site for s in sites),
        "epochs": epochs, "seed": seed, "training_cases": len(train_items), "backend": "local"})
    best_dice, best_epoch, history = -1.0, 0, []
    done = 0
    try:
        while done < epochs:
            chunk = min(val_every, epochs - done)
            result = engine.train(train, epochs=chunk, progress=(done / epochs, (done + chunk) / epochs),
                                  label=f"epoch {done + 1}-{done + chunk}/{epochs}")
            done += chunk
            scores = engine.evaluate(val, label="validation")
            row = {"epoch": done, "train_loss": result.final_loss, "learning_rate": result.learning_rate,
                   **scores.as_metrics("val")}
            history.append(row)
            tracker.log_scalars(history_scalars(row), step=done)
            log.info("epoch %d/%d loss %.4f val_dice %.4f", done, epochs, result.final_loss, scores.mean)
            if scores.mean > best_dice:
                best_dice, best_epoch = scores.mean, done
                save_model(out_dir / "best_model.pt", engine.get_weights(), spec, epoch=done, val_dice=scores.mean)
    finally:
        tracker.close()
    final = engine.get_weights()
    save_model(out_dir / "final_model.pt", final, spec, epoch=done)
    models, per_case = {}, {}
    models["final"], per_case["final"] = _score_sites(engine, data, final)
    if best_epoch:
        key = f"best (epoch {best_epoch})"
        models[key], per_case[key] = _score_sites(engine, data, load_model(out_dir / "best_model.pt", spec))
    wall = time.perf_counter() - start
    run = LocalRunResult(models, best_epoch, best_dice, class_names, wall, out_dir)
    write_json(out_dir / "results.json", {
        "task": spec.name, "variant": spec.variant_name, "mode": mode, "backend": "local",
        "sites": [s.site for s in sites], "epochs": epochs, "seed": seed, "best_epoch": best_epoch,
        "training_cases": len(train_items), "classes": list(class_names[1:]), "models": models_to_json(models),
        "history": _finite(history), "wall_time_s": round(wall, 1), "tracking": tracking or "tensorboard",
        # Per-case Dice in the order of each site's test list, without case names; it stays with the run.
        "per_case_dice": per_case,
    })
    return run


def _score_sites(engine: SegmentationEngine, data: list[SiteData], weights
                 ) -> tuple[dict[str, SiteScore], dict[str, dict[str, list]]]:
    by_site, per_case = {}, {}
    for d in data:
        test = engine.eval_data(d.items("test"))
        scores = engine.evaluate(test, weights=weights, label=f"test {d.site.site}")
        by_site[d.site.site] = SiteScore.from_scores(scores)
        per_case[d.site.site] = per_case_json(scores)
    return with_pooled(by_site), per_case


def _finite(rows: list[dict]) -> list[dict]:
    return [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in rows]
