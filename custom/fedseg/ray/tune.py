"""``fedseg tune``: a Ray Tune search over a task's learning rate, crops per volume and weight decay.

Each trial trains the one engine on the site's training cases (one process, one CPU or GPU
share) and reports the validation Dice after every epoch; ASHA stops the weaker half of the
trials at each rung (after ``grace_epochs``, twice that, ...), so most of the budget goes to the
promising ones. The first trial is always the task card's own setting, so the search reports
whether it beat the recipe. All trials share the seed: the same initial weights and data
order, so their differences come from the settings.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

from fedseg.engine import Runtime, SegmentationEngine
from fedseg.errors import ConfigError, NonFiniteLossError
from fedseg.ray import require_ray
from fedseg.ray.cluster import RayCluster
from fedseg.results import write_json
from fedseg.site_config import SiteConfig
from fedseg.site_data import open_site_data
from fedseg.tasks.spec import TaskSpec
from fedseg.training.loop import run_epochs

log = logging.getLogger("fedseg")

# Searched: the learning rate over a decade around the card's (log-uniform), random crops per
# volume (more crops: fewer, less noisy steps per second of compute) and weight decay.
LR_RANGE = (0.1, 3.0)
NUM_SAMPLES_CHOICES = (2, 4, 8)
WEIGHT_DECAY_CHOICES = (0.0, 1e-5, 1e-4)


@dataclass
class TuneResult:
    best_config: dict
    best_val_dice: float
    best_epoch: int
    trials: list[dict]
    wall_time_s: float
    out_dir: Path

    def table(self) -> str:
        """A Markdown table of the trials, best first."""
        head = ["trial", "lr", "num_samples", "weight_decay", "epochs", "best val Dice", "at epoch"]
        rows = [head, ["---"] * len(head)]
        for t in sorted(self.trials, key=lambda t: -t["best_val_dice"]):
            c = t["config"]
            rows.append([t["trial"], f"{c['lr']:.2e}", str(c["num_samples"]), f"{c['weight_decay']:g}",
                         f"{t['epochs']}{' (stopped)' if t['stopped_early'] else ''}", f"{t['best_val_dice']:.4f}",
                         str(t["best_epoch"])])
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        return "\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows)


def tuned_spec(spec: TaskSpec, config: dict) -> TaskSpec:
    """``spec`` with a trial's settings."""
    return replace(spec, optimizer=replace(spec.optimizer, lr=float(config["lr"]),
                                           weight_decay=float(config["weight_decay"])),
                   num_samples=int(config["num_samples"]))


def card_config(spec: TaskSpec) -> dict:
    return {"lr": spec.optimizer.lr, "num_samples": spec.num_samples, "weight_decay": spec.optimizer.weight_decay}


def trial(config: dict, *, spec: TaskSpec, class_names: tuple[str, ...], train_items: list[dict],
          val_items: list[dict], epochs: int, seed: int, device: str, threads: int, cache_rate: float) -> None:
    """One trial: train ``epochs`` epochs (cosine schedule over them), report validation Dice after each."""
    from ray import tune

    logging.getLogger("fedseg").setLevel(logging.WARNING)  # Tune prints the trial table; keep workers quiet
    runtime = Runtime.create(device, num_threads=threads, cache_rate=cache_rate)
    engine = SegmentationEngine(tuned_spec(spec, config), runtime, class_names=class_names, seed=seed)
    train, val = engine.train_data(train_items), engine.eval_data(val_items)

    def report(state, row, scores) -> None:
        dice = scores.mean if scores is not None else float("nan")
        tune.report({"val_dice": 0.0 if math.isnan(dice) else dice, "train_loss": row["train_loss"],
                     "epoch": state.epoch, "diverged": 0})

    current = [0]
    try:
        run_epochs(engine, train, epochs=epochs, validate=lambda: engine.evaluate(val), after_epoch=report,
                   before_epoch=lambda e: current.__setitem__(0, e + 1), keep_best=False, label="fedseg tune")
    except NonFiniteLossError:
        # A learning rate that diverges is a result, not a crash: score it 0 and end the trial.
        tune.report({"val_dice": 0.0, "train_loss": float("nan"), "epoch": current[0], "diverged": 1})


def check_budget(trials: int, epochs: int, grace_epochs: int, *, least_epochs: int = 1) -> None:
    """Refuse a search budget that cannot run, naming the command-line option."""
    for name, value, least in (("--trials", trials, 1), ("--epochs", epochs, least_epochs),
                               ("--grace-epochs", grace_epochs, 1)):
        if value < least:
            raise ConfigError(f"{name} must be at least {least}, got {value}")
    if grace_epochs > epochs:
        raise ConfigError(f"--grace-epochs {grace_epochs} must not exceed --epochs {epochs}")


def run_tune(spec: TaskSpec, site: SiteConfig, out_dir: Path, *, trials: int, epochs: int, grace_epochs: int = 2,
             seed: int = 0, address: str | None = None, gpus_per_trial: float = 0.0) -> TuneResult:
    """Search ``trials`` settings for ``epochs`` epochs at most each; write ``tune_results.json`` to ``out_dir``."""
    start = time.perf_counter()
    check_budget(trials, epochs, grace_epochs)
    data = open_site_data(spec, site)
    train_items, val_items = data.items("training"), data.items("validation")
    if not val_items:
        raise ConfigError(f"site {site.site!r} ({site.path}): tuning needs validation cases; its datalist has none")
    out_dir = Path(out_dir).resolve()
    require_ray()
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    lr = spec.optimizer.lr
    space = {"lr": tune.loguniform(lr * LR_RANGE[0], lr * LR_RANGE[1]),
             "num_samples": tune.choice(list(NUM_SAMPLES_CHOICES)),
             "weight_decay": tune.choice(list(WEIGHT_DECAY_CHOICES))}
    with RayCluster(address, out_dir) as cluster:
        resources = cluster.resources()
        if gpus_per_trial > resources.get("GPU", 0):
            raise ConfigError(f"--gpus-per-trial {gpus_per_trial:g} but the Ray cluster has "
                              f"{resources.get('GPU', 0):g} GPUs")
        per_trial = {"cpu": 1, **({"gpu": gpus_per_trial} if gpus_per_trial else {})}
        fn = tune.with_parameters(
            trial, spec=spec, class_names=data.class_names, train_items=train_items, val_items=val_items,
            epochs=epochs, seed=seed, device="cuda" if gpus_per_trial else "cpu", threads=1,
            cache_rate=site.cache_rate)
        tuner = tune.Tuner(
            tune.with_resources(fn, per_trial),
            param_space=space,
            tune_config=tune.TuneConfig(
                metric="val_dice", mode="max", num_samples=trials,
                scheduler=ASHAScheduler(max_t=epochs, grace_period=grace_epochs, reduction_factor=2),
                # The card's own setting first, so the search says whether it beat the recipe.
                # Concurrency follows the cluster: one CPU (and GPU share) per trial.
                search_alg=BasicVariantGenerator(points_to_evaluate=[card_config(spec)], random_state=seed)),
            run_config=tune.RunConfig(name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
                                      storage_path=str(out_dir / "tune"), verbose=0),
        )
        grid = tuner.fit()
    rows = []
    for i, r in enumerate(grid):
        history = r.metrics_dataframe
        if r.error is not None or history is None or history.empty:
            rows.append({"trial": f"{i}", "config": _plain(r.config), "epochs": 0, "best_val_dice": 0.0,
                         "best_epoch": 0, "stopped_early": False, "error": str(r.error).splitlines()[0][:200]})
            continue
        best_row = history.loc[history["val_dice"].idxmax()]
        epochs_run = int(history["epoch"].max())
        diverged = "diverged" in history and bool(history["diverged"].max())
        rows.append({"trial": f"{i}", "config": _plain(r.config), "epochs": epochs_run,
                     "best_val_dice": float(best_row["val_dice"]), "best_epoch": int(best_row["epoch"]),
                     "stopped_early": epochs_run < epochs and not diverged, "diverged": diverged,
                     "val_dice_by_epoch": [round(float(v), 4) for v in history["val_dice"]]})
    ok = [t for t in rows if t["epochs"]]
    if not ok:
        raise ConfigError(f"no tuning trial finished an epoch; see the trial errors in {out_dir / 'tune'}")
    best = max(ok, key=lambda t: t["best_val_dice"])
    wall = time.perf_counter() - start
    result = TuneResult(best["config"], best["best_val_dice"], best["best_epoch"], rows, wall, out_dir)
    write_json(out_dir / "tune_results.json", {
        "task": spec.name, "variant": spec.variant_name, "site": site.site, "trials": rows,
        "best": {"config": best["config"], "val_dice": best["best_val_dice"], "epoch": best["best_epoch"]},
        "card": card_config(spec), "epochs": epochs, "grace_epochs": grace_epochs, "seed": seed,
        "search_space": {"lr": [lr * LR_RANGE[0], lr * LR_RANGE[1]], "num_samples": list(NUM_SAMPLES_CHOICES),
                         "weight_decay": list(WEIGHT_DECAY_CHOICES)},
        "scheduler": "ASHA (reduction factor 2)", "validation_cases": len(val_items),
        "wall_time_s": round(wall, 1),
    })
    return result


def _plain(config: dict) -> dict:
    return {"lr": float(config["lr"]), "num_samples": int(config["num_samples"]),
            "weight_decay": float(config["weight_decay"])}
