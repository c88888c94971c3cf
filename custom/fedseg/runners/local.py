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

from fedseg.backends import TrainOptions
from fedseg.engine import Runtime, SegmentationEngine
from fedseg.errors import FedsegError
from fedseg.results import SiteScore, render_table, with_pooled
from fedseg.site_config import SiteConfig
from fedseg.site_data import SiteData, open_site_data
from fedseg.site_eval import per_case_json
from fedseg.tasks.spec import TaskSpec
from fedseg.tracking import history_scalars, open_tracker
from fedseg.training.loop import run_epochs
from fedseg.training.results import best_label, save_run_models, write_run_results

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
    the training loss and learning rate every epoch and the validation metrics at every validation.
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
    try:
        state = run_epochs(engine, train, epochs=epochs, val_every=val_every,
                           validate=lambda: engine.evaluate(val, label="validation"),
                           after_epoch=lambda st, row, _: tracker.log_scalars(history_scalars(row), step=st.epoch),
                           label="fedseg train", log_epochs=True)
    finally:
        tracker.close()
    final = engine.get_weights()
    save_run_models(out_dir, spec, final, state)
    models, per_case = {}, {}
    models["final"], per_case["final"] = _score_sites(engine, data, final)
    if state.best_model is not None:
        key = best_label(state.best_epoch)
        models[key], per_case[key] = _score_sites(engine, data, state.best_model)
    wall = time.perf_counter() - start
    write_run_results(out_dir, spec, sites, backend="local", state=state, epochs=epochs, seed=seed,
                      class_names=class_names, models=models, per_case=per_case, training_cases=len(train_items),
                      tracking=tracking, wall_time_s=wall)
    return LocalRunResult(models, state.best_epoch, state.best_val_dice, class_names, wall, out_dir)


def run_backend(spec: TaskSpec, sites: list[SiteConfig], out_dir: Path, options: TrainOptions) -> LocalRunResult:
    """The ``local`` backend's ``fedseg train``: :func:`run_local` with the site's runtime."""
    if options.resume is not None:
        raise FedsegError("--resume continues a stopped Ray run: add --backend ray")
    runtime = Runtime.for_site(sites[0], device=options.device, num_threads=options.threads,
                               precision=options.precision)
    return run_local(spec, sites, out_dir, epochs=options.epochs, val_every=options.val_every, seed=options.seed,
                     runtime=runtime, tracking=options.tracking, init_weights=options.init_weights)


def _score_sites(engine: SegmentationEngine, data: list[SiteData], weights
                 ) -> tuple[dict[str, SiteScore], dict[str, dict[str, list]]]:
    by_site, per_case = {}, {}
    for d in data:
        test = engine.eval_data(d.items("test"))
        scores = engine.evaluate(test, weights=weights, label=f"test {d.site.site}")
        by_site[d.site.site] = SiteScore.from_scores(scores)
        per_case[d.site.site] = per_case_json(scores)
    return with_pooled(by_site), per_case
