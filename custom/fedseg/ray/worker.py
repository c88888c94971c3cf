"""What runs inside each Ray Train worker: the one engine and run loop, one shard of the cases, DDP.

Two entry points share the set-up:

* :func:`run_loop` (``fedseg train --backend ray``): :func:`fedseg.training.loop.run_epochs` with
  a checkpoint after each epoch (model, optimizer, scaler and the loop state), sharded
  validation, and at the end the final and best models scored on every site's test cases.
* :func:`round_loop` (one FL round of a ``backend: ray`` site): the same loop from the received
  weights with the algorithm's hooks; every worker hands back its weights for the driver to
  average, rank 0 also the optimizer state and what the hooks returned.

Ray only launches these and carries checkpoints; the data-parallel pieces are
:mod:`fedseg.engine.distributed`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import torch

from fedseg.engine import Runtime, SegmentationEngine
from fedseg.engine.distributed import ShardedEval, mean_across, reseed, shard, wrap_ddp
from fedseg.engine.metrics import DiceScores
from fedseg.errors import NonFiniteLossError
from fedseg.ray.common import Fault
from fedseg.ray.config import WorkerConfig
from fedseg.training.loop import LoopState, run_epochs

log = logging.getLogger("fedseg")

STATE_FILE = "state.pt"
SCORES_FILE = "test_scores.json"
ROUND_FILE = "round.pt"


def weights_file(rank: int) -> str:
    return f"weights_rank{rank}.pt"


class WorkerNonFiniteLoss(RuntimeError):
    """A worker's :class:`NonFiniteLossError` in a form Ray can carry back to the driver.

    Ray re-creates worker errors by unpickling, and ``NonFiniteLossError``'s constructor does not
    accept its own pickled arguments; the driver turns this back into a ``NonFiniteLossError``.
    """

    def __init__(self, epoch: int, iteration: int, value: float):
        super().__init__(f"non-finite loss ({value}) at epoch {epoch}, iteration {iteration}: training stopped")
        self.epoch, self.iteration, self.value = epoch, iteration, value

    def __reduce__(self):
        return (WorkerNonFiniteLoss, (self.epoch, self.iteration, self.value))


def epochs_on_worker(engine: SegmentationEngine, train, **kwargs) -> LoopState:
    """:func:`run_epochs` with a non-finite loss re-raised as :class:`WorkerNonFiniteLoss`."""
    try:
        return run_epochs(engine, train, **kwargs)
    except NonFiniteLossError as exc:
        raise WorkerNonFiniteLoss(exc.epoch, exc.iteration, exc.value) from None


class InjectedStop(RuntimeError):
    """Raised by the ``stop`` test fault: the whole run stops, as after a crash of the job."""


# Set-up ---------------------------------------------------------------------------------------------
def _worker_logging() -> None:
    # Ray worker processes start without logging handlers; fedseg's progress lines would be lost.
    logger = logging.getLogger("fedseg")
    if not logger.handlers and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                            datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO)


def setup(cfg: WorkerConfig) -> tuple[int, int, SegmentationEngine]:
    """This worker's rank, the world size and a fresh engine on the worker's device."""
    import ray.train
    import ray.train.torch

    _worker_logging()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = "cpu"
    if cfg.use_gpu:
        dev = ray.train.torch.get_device()
        torch.cuda.set_device(dev)  # NCCL collectives (all_gather_object) use the current device
        device = str(dev)
    rt = cfg.runtime
    runtime = Runtime.create(device, precision=rt.precision, num_threads=rt.threads, num_workers=rt.num_workers,
                             cache_rate=rt.cache_rate)
    engine = SegmentationEngine(cfg.spec, runtime, class_names=tuple(cfg.class_names), seed=cfg.seed)
    return rank, world, engine


# Faults (tests only) --------------------------------------------------------------------------------
def _once(cfg: WorkerConfig, fault: Fault) -> bool:
    """True the first time this fault fires for the run folder (a marker file records it)."""
    marker = Path(cfg.fault_dir) / f".fault-{fault.kind}-{fault.epoch}-{fault.rank}"
    if marker.exists():
        return False
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(os.getpid()))
    return True


def maybe_kill(cfg: WorkerConfig, epoch: int, rank: int) -> None:
    fault = Fault.parse(cfg.fault)
    if fault and fault.kind == "kill" and fault.epoch == epoch and fault.rank == rank and _once(cfg, fault):
        log.warning("fedseg ray: test fault: rank %d is killed one second into epoch %d", rank, epoch)
        # SIGKILL from a timer lands mid-step, like the OOM killer: no Python clean-up runs.
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGKILL)).start()


def maybe_stop(cfg: WorkerConfig, epoch: int) -> None:
    fault = Fault.parse(cfg.fault)
    if fault and fault.kind == "stop" and fault.epoch == epoch:
        raise InjectedStop(f"test fault: run stopped after epoch {epoch}")


# fedseg train --backend ray -------------------------------------------------------------------------
def restore(engine: SegmentationEngine, cfg: WorkerConfig) -> tuple[LoopState, dict]:
    """The loop state and run record from Ray's latest checkpoint (a restart after a failure, or
    ``--resume``), or fresh ones.

    ``ray.train.get_checkpoint()`` covers both: within a run, after a worker died; and in a new
    ``fit()`` with the same run name and storage, where Ray Train reads its checkpoint snapshot.
    """
    import ray.train

    record = {"restarts": [], "run_id": cfg.run.run_id, "first_worker_start": None}
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return LoopState(), record
    with ckpt.as_directory() as d:
        saved = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    engine.set_weights(saved["model"])
    engine.optimizer.load_state_dict(saved["optimizer"])
    if engine.scaler.is_enabled() and saved.get("scaler"):
        engine.scaler.load_state_dict(saved["scaler"])
    kind = "restart" if saved["run_id"] == cfg.run.run_id else "resume"
    record = {"restarts": list(saved["restarts"]) + [{"kind": kind, "from_epoch": int(saved["epoch"]),
                                                       "time": time.time()}],
              "run_id": cfg.run.run_id, "first_worker_start": saved["first_worker_start"]}
    return LoopState.from_dict(saved), record


def _report(engine: SegmentationEngine, state: LoopState, record: dict, metrics: dict, rank: int, name: str,
            scores: dict | None = None) -> None:
    """Every worker reports (it is a barrier); rank 0 attaches the checkpoint."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        payload = {**state.as_dict(), **record, "model": engine.get_weights(),
                   "optimizer": engine.optimizer.state_dict(), "scaler": engine.scaler.state_dict()}
        torch.save(payload, Path(d) / STATE_FILE)
        if scores is not None:
            (Path(d) / SCORES_FILE).write_text(json.dumps(scores))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d), checkpoint_dir_name=name)


def _rows(scores: DiceScores) -> dict:
    return {"per_case": scores.per_case, "false_positive": scores.false_positive}


def run_loop(config: dict) -> None:
    """Train ``cfg.run.epochs`` epochs in all, continuing from the last checkpoint if there is one."""
    started = time.time()
    cfg: WorkerConfig = config["cfg"]
    rank, world, engine = setup(cfg)
    state, record = restore(engine, cfg)
    if record["first_worker_start"] is None:
        record["first_worker_start"] = started
    wrap_ddp(engine, world)
    train = engine.train_data(shard(cfg.train_items, rank, world))
    val = ShardedEval(engine, cfg.run.val_items, rank, world)
    epochs = cfg.run.epochs
    attempt = len(record["restarts"])
    if state.epoch:
        log.info("fedseg ray rank %d: continuing after epoch %d of %d", rank, state.epoch, epochs)

    def before_epoch(e: int) -> None:
        maybe_kill(cfg, e + 1, rank)
        reseed(train, cfg.seed, rank, e)

    def after_epoch(st: LoopState, row: dict, _scores) -> None:
        _report(engine, st, record, {k: v for k, v in row.items() if isinstance(v, (int, float))}, rank,
                f"epoch_{st.epoch:04d}-{attempt}")
        maybe_stop(cfg, st.epoch)

    state = epochs_on_worker(engine, train, epochs=epochs, state=state, steps_per_epoch=cfg.steps_per_epoch,
                             validate=lambda: val.scores("validation"), val_every=cfg.run.val_every,
                             before_epoch=before_epoch, after_epoch=after_epoch,
                             reduce_loss=lambda v: mean_across(engine, v, world), label=f"fedseg ray rank {rank}",
                             log_epochs=rank == 0)
    # The final and best models on each site's test cases, scored here so the driver needs no data or GPU.
    final = engine.get_weights()
    scores = {"final": {}, "best": {}}
    for site, items in cfg.run.test_items.items():
        ev = ShardedEval(engine, items, rank, world)
        scores["final"][site] = _rows(ev.scores(f"test {site}", weights=final))
        if state.best_model is not None:
            scores["best"][site] = _rows(ev.scores(f"test {site} (best)", weights=state.best_model))
    engine.set_weights(final)
    _report(engine, state, record, {"epoch": state.epoch, "final": 1}, rank, f"final-{attempt}", scores)


# One FL round of a backend: ray site ----------------------------------------------------------------
def round_loop(config: dict) -> None:
    """Train from the received weights; every worker saves its weights for the driver to average."""
    import ray.train

    cfg: WorkerConfig = config["cfg"]
    r = cfg.round
    rank, world, engine = setup(cfg)
    engine.set_weights(r.weights)
    if r.optimizer:
        engine.optimizer.load_state_dict(r.optimizer)
    # Built before DDP wraps the model: every worker corrects its own replica the same way, so they stay equal.
    hooks = r.hooks.build(engine) if r.hooks else None
    wrap_ddp(engine, world)
    train = engine.train_data(shard(cfg.train_items, rank, world))
    state = epochs_on_worker(engine, train, epochs=r.epochs, steps_per_epoch=cfg.steps_per_epoch,
                             progress=r.progress, hooks=hooks, before_epoch=lambda e: reseed(train, cfg.seed, rank, e),
                             reduce_loss=lambda v: mean_across(engine, v, world),
                             label=f"fedseg {r.label} ray rank {rank}")
    extras = r.hooks.finish(engine) if r.hooks else {}
    with tempfile.TemporaryDirectory() as d:
        # Distinct file names per rank: Ray merges all workers' checkpoint folders into one.
        torch.save(engine.get_weights(), Path(d) / weights_file(rank))
        if rank == 0:
            torch.save({"optimizer": engine.optimizer.state_dict(), "losses": state.epoch_losses,
                        "learning_rate": state.learning_rate, "iterations": state.iterations, "world": world,
                        "extras": extras}, Path(d) / ROUND_FILE)
        losses = state.epoch_losses
        ray.train.report({"train_loss": losses[-1] if losses else float("nan")},
                         checkpoint=ray.train.Checkpoint.from_directory(d))
