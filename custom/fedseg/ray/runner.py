"""``fedseg train --backend ray``: the local runner's run, data-parallel on Ray Train.

Same inputs, outputs and figures as :func:`fedseg.runners.local.run_local` (``best_model.pt``,
``final_model.pt``, ``results.json`` with the final and best models' Dice on every site's test
cases, pooled when there are several sites), with N workers under Ray Train's ``TorchTrainer``:
each worker trains on its shard of the (pooled) training cases, DDP averages the gradients
(gloo on CPU, NCCL on whole GPUs), validation and test scoring are sharded and gathered.

A checkpoint is written after every epoch under ``<run>/ray_results/<run name>/``. A worker that
dies is restarted with the whole worker group from the last checkpoint (``FailureConfig``);
``--resume RUN_DIR`` starts a new ``fit()`` under the same run name, and Ray Train hands the
workers the last checkpoint again. ``<run>/ray_run.json`` records the run name and the settings
a resume must repeat.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fedseg.checkpoint import save_model
from fedseg.engine import DiceScores
from fedseg.errors import CheckpointError, ConfigError, FedsegError, NonFiniteLossError
from fedseg.ray import require_ray
from fedseg.ray.cluster import RayCluster
from fedseg.ray.common import FAULT_ENV, DEFAULT_OBJECT_STORE_MB, Fault, steps_per_epoch
from fedseg.ray.worker import SCORES_FILE, STATE_FILE, WorkerNonFiniteLoss, run_loop
from fedseg.results import SiteScore, models_to_json, with_pooled, write_json
from fedseg.runners.local import LocalRunResult, check_same_classes
from fedseg.site_config import SiteConfig
from fedseg.site_data import open_site_data
from fedseg.site_eval import per_case_json
from fedseg.tasks.spec import TaskSpec
from fedseg.tracking import history_scalars, open_tracker

log = logging.getLogger("fedseg")

MANIFEST = "ray_run.json"
STORAGE = "ray_results"
# Settings a resumed run must share with the stopped one: they fix the network, the optimizer,
# the data and the learning-rate schedule the checkpoint belongs to.
_MUST_MATCH = {"task": "--task", "variant": "--variant", "optimizer": "--optimizer", "seed": "--seed",
               "epochs": "--epochs", "sites": "--site-config/--pooled"}


@dataclass
class RayRunResult(LocalRunResult):
    """:class:`LocalRunResult` plus what only a Ray run has."""

    workers: int = 1
    restarts: list[dict] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)


def _manifest(run_dir: Path, resume: bool, spec: TaskSpec, sites: list[SiteConfig], *, seed: int, epochs: int,
              val_every: int, workers: int) -> dict:
    """The run's record: a new one for a new run, the stopped run's (checked against these settings) on resume."""
    path = run_dir / MANIFEST
    current = {"task": spec.name, "variant": spec.variant_name, "optimizer": spec.optimizer.name, "seed": seed,
               "epochs": epochs, "sites": [s.site for s in sites]}
    if not resume:
        body = {"name": f"fedseg-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}", **current,
                "val_every": val_every, "workers": workers, "site_configs": [str(s.path) for s in sites]}
        run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(body, indent=2) + "\n")
        return body
    if not path.is_file():
        raise CheckpointError(f"--resume {run_dir}: no Ray run to continue there ({MANIFEST} is missing)")
    body = json.loads(path.read_text())
    wrong = [f"{flag} {current[k]!r} (the run has {body.get(k)!r})" for k, flag in _MUST_MATCH.items()
             if body.get(k) != current[k]]
    if wrong:
        raise ConfigError(f"--resume {run_dir}: settings differ from the stopped run: {'; '.join(wrong)}. "
                          "Repeat the run's own settings, or start a new run.")
    if (run_dir / STORAGE / body["name"] / "checkpoint_manager_snapshot.json").is_file():
        log.info("fedseg ray: resuming run %s from its last checkpoint", body["name"])
    else:
        log.warning("fedseg ray: run %s has no checkpoint yet; it starts again from epoch 1", body["name"])
    return body


def run_ray(spec: TaskSpec, sites: list[SiteConfig], out_dir: Path, *, epochs: int, val_every: int = 1,
            seed: int = 0, workers: int = 2, gpus_per_worker: float = 0.0, address: str | None = None,
            resume: str | Path | None = None, max_failures: int = 3,
            object_store_mb: int = DEFAULT_OBJECT_STORE_MB, tracking: str | None = None) -> RayRunResult:
    """Train on the pooled training cases of ``sites`` with ``workers`` Ray workers; write what ``run_local`` writes.

    ``resume`` is a run folder to continue (results then go there, not to ``out_dir``).
    ``tracking`` as for ``run_local``: the driver writes every epoch of the run's history once it ends.
    ``max_failures``: worker-group restarts from the last checkpoint before the run gives up.
    Without ``address`` a local Ray is started for the run and shut down at its end.
    """
    start = time.perf_counter()
    for name, value, least in (("--epochs", epochs, 1), ("--val-every", val_every, 1), ("--workers", workers, 1)):
        if value < least:
            raise ConfigError(f"{name} must be at least {least}, got {value}")
    run_dir = Path(resume if resume is not None else out_dir).resolve()
    data = [open_site_data(spec, s) for s in sites]
    class_names = check_same_classes(data)
    train_items = [it for d in data for it in d.items("training")]
    if len(train_items) < workers:
        raise ConfigError(f"--workers {workers} is more than the {len(train_items)} training case(s): "
                          "every worker needs at least one")
    manifest = _manifest(run_dir, resume is not None, spec, sites, seed=seed, epochs=epochs, val_every=val_every,
                         workers=workers)
    fault = os.environ.get(FAULT_ENV)
    Fault.parse(fault)  # a malformed test fault fails here, not in every worker
    timing: dict[str, float] = {}
    with RayCluster(address, run_dir, object_store_mb=object_store_mb) as cluster:
        plan = cluster.plan(workers, gpus_per_worker)
        timing["ray_init_s"] = round(cluster.init_s, 2)
        cfg = {
            "spec": spec, "class_names": list(class_names), "seed": seed, "run_id": uuid.uuid4().hex,
            "use_gpu": plan.use_gpu,
            "runtime": {"threads": plan.cpus_per_worker, "num_workers": sites[0].num_workers,
                        "cache_rate": sites[0].cache_rate, "precision": sites[0].precision},
            "train_items": train_items, "val_items": [it for d in data for it in d.items("validation")],
            "test_items": {d.site.site: d.items("test") for d in data},
            "epochs": epochs, "val_every": val_every,
            "steps_per_epoch": steps_per_epoch(len(train_items), workers, spec.batch_size),
            "fault": fault, "fault_dir": str(run_dir),
        }
        log.info("fedseg ray: %d worker(s) x %d CPU%s (%s), %d training case(s), %d step(s) per epoch; run %s",
                 workers, plan.cpus_per_worker, f" + {gpus_per_worker:g} GPU" if plan.use_gpu else "",
                 plan.backend, len(train_items), cfg["steps_per_epoch"], manifest["name"])
        fit_start = time.time()
        checkpoint = fit_on_workers(run_loop, cfg, plan, run_dir, manifest["name"], max_failures,
                                    on_failure=f"Its last checkpoint is kept: continue with --resume {run_dir}")
        timing["fit_s"] = round(time.time() - fit_start, 2)
    with checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
        raw_scores = json.loads((Path(d) / SCORES_FILE).read_text())
    restarts = list(state["restarts"])
    this_fit = [r for r in restarts if r["time"] >= fit_start]
    if not any(r["kind"] == "resume" for r in this_fit):  # a resumed fit's start-up is not the first worker's
        timing["fit_to_first_worker_s"] = round(state["first_worker_start"] - fit_start, 2)
    out = run_dir
    best_epoch, best_dice = int(state["best_epoch"]), float(state["best_val_dice"])
    if state["best_model"] is not None:
        save_model(out / "best_model.pt", state["best_model"], spec, epoch=best_epoch, val_dice=best_dice)
    save_model(out / "final_model.pt", state["model"], spec, epoch=int(state["epoch"]))
    models = {"final": _site_scores(raw_scores["final"], class_names)}
    if best_epoch and raw_scores["best"]:
        models[f"best (epoch {best_epoch})"] = _site_scores(raw_scores["best"], class_names)
    wall = time.perf_counter() - start
    timing["wall_time_s"] = round(wall, 2)
    history = [{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()} for row in state["history"]]
    _track(tracking, out, manifest["name"], history, {
        "task": spec.name, "variant": spec.variant_name, "sites": ",".join(s.site for s in sites), "epochs": epochs,
        "seed": seed, "training_cases": len(train_items), "backend": "ray", "workers": workers})
    write_json(out / "results.json", {
        "task": spec.name, "variant": spec.variant_name, "mode": "pooled" if len(sites) > 1 else "single-site",
        "backend": "ray", "sites": [s.site for s in sites], "epochs": epochs, "seed": seed, "best_epoch": best_epoch,
        "classes": list(class_names[1:]), "models": models_to_json(models), "history": history,
        "wall_time_s": round(wall, 1), "workers": workers, "gpus_per_worker": gpus_per_worker,
        "steps_per_epoch": cfg["steps_per_epoch"], "ray_run": manifest["name"],
        "restarts": [{k: r[k] for k in ("kind", "from_epoch")} for r in restarts], "timing": timing,
        "training_cases": len(train_items), "tracking": tracking or "tensorboard",
        "per_case_dice": {key: _per_case(raw_scores[raw], class_names) for key, raw in
                          (("final", "final"), (f"best (epoch {best_epoch})", "best")) if key in models},
    })
    return RayRunResult(models, best_epoch, best_dice, class_names, wall, out, workers=workers,
                        restarts=[{k: r[k] for k in ("kind", "from_epoch")} for r in restarts], timing=timing)


def fit_on_workers(loop, cfg: dict, plan, run_dir: Path, name: str, max_failures: int, *, on_failure: str = ""):
    """Run ``loop`` on the workers under ``run_dir/ray_results/name``; return the last checkpoint.

    A failure that outlives ``max_failures`` restarts becomes a :class:`FedsegError` naming the
    failing rank and its error, followed by ``on_failure`` (what the user can do next).
    """
    require_ray()
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        loop, train_loop_config=cfg,
        scaling_config=ScalingConfig(num_workers=plan.workers, use_gpu=plan.use_gpu,
                                     resources_per_worker=plan.resources()),
        torch_config=TorchConfig(backend=plan.backend),
        run_config=RunConfig(name=name, storage_path=str(run_dir / STORAGE),
                             failure_config=FailureConfig(max_failures=max_failures),
                             # Two are enough to resume; each holds the model, optimizer and best model.
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             # Ray Train logs every report at INFO; fedseg logs its own epoch lines.
                             logging_config=LoggingConfig(log_level="WARNING")),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray raises TrainingFailedError subclasses, and others on start-up
        non_finite = _non_finite(exc)
        if non_finite is not None:  # the caller's to handle (an FL site withholds its update)
            raise non_finite from exc
        raise FedsegError(f"the Ray run failed (restarts allowed: {max_failures}): {_first_line(exc)}"
                          + (f". {on_failure}" if on_failure else "")) from exc
    if result.checkpoint is None:
        raise FedsegError(f"the Ray run {name} ended without a checkpoint; see the worker logs above")
    return result.checkpoint


def _non_finite(exc: BaseException) -> NonFiniteLossError | None:
    """The :class:`NonFiniteLossError` a worker raised, if that is why the run failed."""
    for err in (getattr(exc, "worker_failures", None) or {}).values():
        # Ray re-raises a worker's error as a subclass of its type (or wraps it, on older paths).
        for candidate in (err, getattr(err, "cause", None), err.__cause__):
            if isinstance(candidate, (WorkerNonFiniteLoss, NonFiniteLossError)):
                return NonFiniteLossError(candidate.epoch, candidate.iteration, candidate.value)
    return None


def _first_line(exc: BaseException) -> str:
    failures = getattr(exc, "worker_failures", None)
    if failures:
        rank, err = sorted(failures.items())[0]
        return f"rank {rank}: {type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _track(kind: str | None, run_dir: Path, name: str, history: list[dict], params: dict) -> None:
    """Hand the finished run's history to the tracker (the workers have none; one pass keeps steps in order)."""
    tracker = open_tracker(kind, run_dir, name, params)
    try:
        for row in history:
            tracker.log_scalars(history_scalars(row), step=int(row["epoch"]))
    finally:
        tracker.close()


def _per_case(raw: dict, class_names: tuple[str, ...]) -> dict[str, dict[str, list]]:
    """Per-case Dice per site, as ``run_local`` records it (no case names)."""
    out = {}
    for site, rows in raw.items():
        scores = DiceScores(class_names[1:])
        for dice, fp in zip(rows["per_case"], rows["false_positive"]):
            scores.add(dice, fp)
        out[site] = per_case_json(scores)
    return out


def _site_scores(raw: dict, class_names: tuple[str, ...]) -> dict[str, SiteScore]:
    by_site = {}
    for site, rows in raw.items():
        scores = DiceScores(class_names[1:])
        for dice, fp in zip(rows["per_case"], rows["false_positive"]):
            scores.add(dice, fp)
        by_site[site] = SiteScore.from_scores(scores)
    return with_pooled(by_site)
