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

from fedseg.backends import TrainOptions
from fedseg.engine import DiceScores
from fedseg.engine.distributed import steps_per_epoch
from fedseg.errors import CheckpointError, ConfigError, FedsegError, NonFiniteLossError
from fedseg.ray import require_ray
from fedseg.ray.cluster import RayCluster
from fedseg.ray.common import FAULT_ENV, DEFAULT_OBJECT_STORE_MB, POLL_ENV, POLL_S, Fault
from fedseg.ray.config import RunSettings, WorkerConfig, WorkerRuntime
from fedseg.ray.worker import SCORES_FILE, STATE_FILE, WorkerNonFiniteLoss, run_loop
from fedseg.results import SiteScore, with_pooled
from fedseg.runners.local import LocalRunResult, check_same_classes
from fedseg.site_config import SiteConfig
from fedseg.site_data import open_site_data
from fedseg.site_eval import per_case_json
from fedseg.tasks.spec import TaskSpec
from fedseg.tracking import history_scalars, open_tracker
from fedseg.training.loop import LoopState
from fedseg.training.results import best_label, finite_rows, save_run_models, write_run_results

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
        cfg = WorkerConfig(
            spec=spec, class_names=tuple(class_names), seed=seed, use_gpu=plan.use_gpu,
            runtime=WorkerRuntime(threads=plan.cpus_per_worker, num_workers=sites[0].num_workers,
                                  cache_rate=sites[0].cache_rate, precision=sites[0].precision),
            train_items=train_items, steps_per_epoch=steps_per_epoch(len(train_items), workers, spec.batch_size),
            run=RunSettings(run_id=uuid.uuid4().hex, epochs=epochs, val_every=val_every,
                            val_items=[it for d in data for it in d.items("validation")],
                            test_items={d.site.site: d.items("test") for d in data}),
            fault=fault, fault_dir=str(run_dir))
        log.info("fedseg ray: %d worker(s) x %d CPU%s (%s), %d training case(s), %d step(s) per epoch; run %s",
                 workers, plan.cpus_per_worker, f" + {gpus_per_worker:g} GPU" if plan.use_gpu else "",
                 plan.backend, len(train_items), cfg.steps_per_epoch, manifest["name"])
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
    loop = LoopState.from_dict(state)
    save_run_models(run_dir, spec, state["model"], loop)
    models, per_case = {}, {}
    models["final"], per_case["final"] = _scored(raw_scores["final"], class_names)
    if loop.best_epoch and raw_scores["best"]:
        key = best_label(loop.best_epoch)
        models[key], per_case[key] = _scored(raw_scores["best"], class_names)
    wall = time.perf_counter() - start
    timing["wall_time_s"] = round(wall, 2)
    _track(tracking, run_dir, manifest["name"], finite_rows(loop.history), {
        "task": spec.name, "variant": spec.variant_name, "sites": ",".join(s.site for s in sites), "epochs": epochs,
        "seed": seed, "training_cases": len(train_items), "backend": "ray", "workers": workers})
    kept = [{k: r[k] for k in ("kind", "from_epoch")} for r in restarts]
    write_run_results(run_dir, spec, sites, backend="ray", state=loop, epochs=epochs, seed=seed,
                      class_names=class_names, models=models, per_case=per_case, training_cases=len(train_items),
                      tracking=tracking, wall_time_s=wall, workers=workers, gpus_per_worker=gpus_per_worker,
                      steps_per_epoch=cfg.steps_per_epoch, ray_run=manifest["name"], restarts=kept, timing=timing)
    return RayRunResult(models, loop.best_epoch, loop.best_val_dice, class_names, wall, run_dir, workers=workers,
                        restarts=kept, timing=timing)


def run_backend(spec: TaskSpec, sites: list[SiteConfig], out_dir: Path, options: TrainOptions) -> RayRunResult:
    """The ``ray`` backend's ``fedseg train``: :func:`run_ray` with the command's Ray settings."""
    if options.init_weights is not None:
        raise FedsegError("--init starts a local run (--backend local); a Ray run starts from random weights")
    return run_ray(spec, sites, out_dir, epochs=options.epochs, val_every=options.val_every, seed=options.seed,
                   workers=options.workers, gpus_per_worker=options.gpus_per_worker, address=options.address,
                   resume=options.resume, tracking=options.tracking)


def fit_on_workers(loop, cfg: WorkerConfig, plan, run_dir: Path, name: str, max_failures: int, *, on_failure: str = ""):
    """Run ``loop`` on the workers under ``run_dir/ray_results/name``; return the last checkpoint.

    A failure that outlives ``max_failures`` restarts becomes a :class:`FedsegError` naming the
    failing rank and its error, followed by ``on_failure`` (what the user can do next).
    """
    require_ray()
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        loop, train_loop_config={"cfg": cfg},
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
    os.environ.setdefault(POLL_ENV, POLL_S)  # read by the controller fit() starts (a user's setting wins)
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


def _scored(raw: dict, class_names: tuple[str, ...]) -> tuple[dict[str, SiteScore], dict[str, dict[str, list]]]:
    """Scores per site (pooled too) and per-case Dice per site, from the workers' gathered rows."""
    by_site, per_case = {}, {}
    for site, rows in raw.items():
        scores = DiceScores(class_names[1:])
        for dice, fp in zip(rows["per_case"], rows["false_positive"]):
            scores.add(dice, fp)
        by_site[site] = SiteScore.from_scores(scores)
        per_case[site] = per_case_json(scores)
    return with_pooled(by_site), per_case
