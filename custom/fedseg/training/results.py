"""What a finished ``fedseg train`` run writes, whichever backend trained it.

``final_model.pt`` and ``best_model.pt`` (the epoch with the best mean validation Dice) and
``results.json``: the final and best models' Dice on every site's test cases (pooled when there
are several sites), the per-epoch history and per-case Dice without case names.
"""

from __future__ import annotations

from pathlib import Path

from fedseg.checkpoint import save_model
from fedseg.results import models_to_json, write_json
from fedseg.site_config import SiteConfig
from fedseg.tasks.spec import TaskSpec
from fedseg.training.loop import LoopState


def best_label(best_epoch: int) -> str:
    return f"best (epoch {best_epoch})"


def finite_rows(rows: list[dict]) -> list[dict]:
    """History rows with NaN as ``None`` (JSON has no NaN)."""
    return [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in rows]


def save_run_models(out_dir: Path, spec: TaskSpec, final_weights, state: LoopState) -> None:
    save_model(Path(out_dir) / "final_model.pt", final_weights, spec, epoch=state.epoch)
    if state.best_model is not None:
        save_model(Path(out_dir) / "best_model.pt", state.best_model, spec, epoch=state.best_epoch,
                   val_dice=state.best_val_dice)


def write_run_results(out_dir: Path, spec: TaskSpec, sites: list[SiteConfig], *, backend: str, state: LoopState,
                      epochs: int, seed: int, class_names: tuple[str, ...], models: dict, per_case: dict,
                      training_cases: int, tracking: str | None, wall_time_s: float, **extra) -> Path:
    """``results.json`` of a train run; ``extra`` holds what only one backend has (Ray's workers, timing)."""
    return write_json(Path(out_dir) / "results.json", {
        "task": spec.name, "variant": spec.variant_name, "mode": "pooled" if len(sites) > 1 else "single-site",
        "backend": backend, "sites": [s.site for s in sites], "epochs": epochs, "seed": seed,
        "best_epoch": state.best_epoch, "training_cases": training_cases, "classes": list(class_names[1:]),
        "models": models_to_json(models), "history": finite_rows(state.history), "wall_time_s": round(wall_time_s, 1),
        "tracking": tracking or "tensorboard",
        # Per-case Dice in the order of each site's test list, without case names; it stays with the run.
        "per_case_dice": per_case, **extra,
    })
