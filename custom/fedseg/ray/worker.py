"""What runs inside each Ray Train worker: the one engine, one shard of the cases, DDP across workers.

Two loops share the set-up:

* :func:`run_loop` (``fedseg train --backend ray``): epochs with a checkpoint after each (model,
  optimizer, scaler, epoch, best Dice and its weights, history), sharded validation, and at the
  end the final and best models scored on every site's test cases.
* :func:`round_loop` (one FL round of a ``backend: ray`` site): start from the received weights,
  train the round's epochs, and hand back every worker's weights for the driver to average.

Validation and test scoring are sharded: each worker scores every ``world``-th case and the
per-case Dice rows are gathered on all workers. Dice is computed per case and averaged over
cases, so this gives exactly the figures of one process scoring all cases, in 1/world the time,
and no worker sits idle at a barrier while rank 0 works alone.
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
import torch.distributed as dist

from fedseg.engine import DiceScores, Runtime, SegmentationEngine
from fedseg.engine.data import EvalData, TrainData
from fedseg.errors import NonFiniteLossError
from fedseg.ray.common import Fault, shard
from fedseg.transforms import seed_from

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


def train_steps(engine: SegmentationEngine, data: TrainData, **kwargs):
    """``engine.train`` with a non-finite loss re-raised as :class:`WorkerNonFiniteLoss`."""
    try:
        return engine.train(data, **kwargs)
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


def setup(cfg: dict) -> tuple[int, int, SegmentationEngine]:
    """This worker's rank, the world size and a fresh engine on the worker's device."""
    import ray.train
    import ray.train.torch

    _worker_logging()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = "cpu"
    if cfg["use_gpu"]:
        dev = ray.train.torch.get_device()
        torch.cuda.set_device(dev)  # NCCL collectives (all_gather_object) use the current device
        device = str(dev)
    rt = cfg["runtime"]
    runtime = Runtime.create(device, precision=rt.get("precision", "auto"), num_threads=rt["threads"],
                             num_workers=rt["num_workers"], cache_rate=rt["cache_rate"])
    engine = SegmentationEngine(cfg["spec"], runtime, class_names=tuple(cfg["class_names"]), seed=cfg["seed"])
    return rank, world, engine


def wrap_ddp(engine: SegmentationEngine, world: int) -> None:
    """Train through DDP when there is more than one worker (one worker: the bare network)."""
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        dev = engine.runtime.device
        engine.wrap_model(lambda m: DistributedDataParallel(m, device_ids=[dev.index] if dev.type == "cuda" else None))


def reseed(data: TrainData, seed: int, rank: int, epoch: int) -> None:
    """Shuffling and augmentation drawn from (seed, rank, epoch): a restarted epoch draws the same patches."""
    if data.loader.generator is not None:
        data.loader.generator.manual_seed(seed_from(seed, rank, epoch))
    transform = getattr(data.loader.dataset, "transform", None)
    if hasattr(transform, "set_random_state"):
        transform.set_random_state(seed=seed_from(seed, rank, epoch, 1))


def mean_across(engine: SegmentationEngine, value: float, world: int) -> float:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=engine.runtime.device)
    dist.all_reduce(t)
    return float(t.item()) / world


def epoch_loss(losses: list[float]) -> float:
    """One number per epoch even when a small shard's loader was passed more than once."""
    return sum(losses) / len(losses) if losses else float("nan")


# Sharded evaluation ---------------------------------------------------------------------------------
class ShardedEval:
    """One worker's share of a list of cases, preprocessed once; :meth:`scores` gathers all shares."""

    def __init__(self, engine: SegmentationEngine, items: list[dict], rank: int, world: int):
        self.engine, self.world = engine, world
        self.indices = list(range(rank, len(items), world))
        self.data: EvalData | None = engine.eval_data([items[i] for i in self.indices]) if self.indices else None

    def scores(self, label: str, weights=None) -> DiceScores:
        engine = self.engine
        if weights is not None:
            engine.set_weights(weights)
        rows = []
        if self.data is not None:
            local = engine.evaluate(self.data, label=label)
            rows = list(zip(self.indices, local.per_case, local.false_positive))
        if self.world > 1:
            gathered: list = [None] * self.world
            dist.all_gather_object(gathered, rows)
            rows = sorted((r for part in gathered for r in part), key=lambda r: r[0])
        out = DiceScores(engine.class_names[1:])
        for _, dice, fp in rows:
            out.add(list(dice), list(fp))
        return out


# Faults (tests only) --------------------------------------------------------------------------------
def _once(cfg: dict, fault: Fault) -> bool:
    """True the first time this fault fires for the run folder (a marker file records it)."""
    marker = Path(cfg["fault_dir"]) / f".fault-{fault.kind}-{fault.epoch}-{fault.rank}"
    if marker.exists():
        return False
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(os.getpid()))
    return True


def maybe_kill(cfg: dict, epoch: int, rank: int) -> None:
    fault = Fault.parse(cfg.get("fault"))
    if fault and fault.kind == "kill" and fault.epoch == epoch and fault.rank == rank and _once(cfg, fault):
        log.warning("fedseg ray: test fault: rank %d is killed one second into epoch %d", rank, epoch)
        # SIGKILL from a timer lands mid-step, like the OOM killer: no Python clean-up runs.
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGKILL)).start()


def maybe_stop(cfg: dict, epoch: int) -> None:
    fault = Fault.parse(cfg.get("fault"))
    if fault and fault.kind == "stop" and fault.epoch == epoch:
        raise InjectedStop(f"test fault: run stopped after epoch {epoch}")


# fedseg train --backend ray -------------------------------------------------------------------------
def _fresh_state(cfg: dict) -> dict:
    return {"epoch": 0, "best_val_dice": -1.0, "best_epoch": 0, "best_model": None, "history": [],
            "restarts": [], "run_id": cfg["run_id"], "first_worker_start": None}


def restore(engine: SegmentationEngine, cfg: dict) -> dict:
    """The run's state from Ray's latest checkpoint (a restart after a failure, or ``--resume``), or a fresh one.

    ``ray.train.get_checkpoint()`` covers both: within a run, after a worker died; and in a new
    ``fit()`` with the same run name and storage, where Ray Train reads its checkpoint snapshot.
    """
    import ray.train

    state = _fresh_state(cfg)
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return state
    with ckpt.as_directory() as d:
        saved = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    engine.set_weights(saved["model"])
    engine.optimizer.load_state_dict(saved["optimizer"])
    if engine.scaler.is_enabled() and saved.get("scaler"):
        engine.scaler.load_state_dict(saved["scaler"])
    state.update({k: saved[k] for k in ("epoch", "best_val_dice", "best_epoch", "best_model", "history",
                                         "restarts", "first_worker_start")})
    kind = "restart" if saved["run_id"] == cfg["run_id"] else "resume"
    state["restarts"] = list(state["restarts"]) + [{"kind": kind, "from_epoch": int(saved["epoch"]),
                                                    "time": time.time()}]
    return state


def _report(engine: SegmentationEngine, state: dict, metrics: dict, rank: int, name: str,
            scores: dict | None = None) -> None:
    """Every worker reports (it is a barrier); rank 0 attaches the checkpoint."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        payload = {**state, "model": engine.get_weights(), "optimizer": engine.optimizer.state_dict(),
                   "scaler": engine.scaler.state_dict()}
        torch.save(payload, Path(d) / STATE_FILE)
        if scores is not None:
            (Path(d) / SCORES_FILE).write_text(json.dumps(scores))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d), checkpoint_dir_name=name)


def _rows(scores: DiceScores) -> dict:
    return {"per_case": scores.per_case, "false_positive": scores.false_positive}


def run_loop(cfg: dict) -> None:
    """Train ``cfg["epochs"]`` epochs in all, continuing from the last checkpoint if there is one."""
    started = time.time()
    rank, world, engine = setup(cfg)
    state = restore(engine, cfg)
    if state["first_worker_start"] is None:
        state["first_worker_start"] = started
    wrap_ddp(engine, world)
    train = engine.train_data(shard(cfg["train_items"], rank, world))
    val = ShardedEval(engine, cfg["val_items"], rank, world)
    epochs, val_every, steps = cfg["epochs"], cfg["val_every"], cfg["steps_per_epoch"]
    attempt = len(state["restarts"])
    if state["epoch"]:
        log.info("fedseg ray rank %d: continuing after epoch %d of %d", rank, state["epoch"], epochs)
    while state["epoch"] < epochs:
        done = state["epoch"]
        maybe_kill(cfg, done + 1, rank)
        reseed(train, cfg["seed"], rank, done)
        t0 = time.perf_counter()
        result = train_steps(engine, train, iterations=steps, progress=(done / epochs, (done + 1) / epochs),
                             label=f"fedseg ray rank {rank} epoch {done + 1}/{epochs}")
        seconds = time.perf_counter() - t0
        done += 1
        row = {"epoch": done, "train_loss": mean_across(engine, epoch_loss(result.epoch_losses), world),
               "learning_rate": result.learning_rate, "seconds": round(seconds, 3)}
        if done % val_every == 0 or done == epochs:
            scores = val.scores("validation")
            row.update(scores.as_metrics("val"))
            if scores.mean > state["best_val_dice"]:
                state["best_val_dice"], state["best_epoch"] = scores.mean, done
                state["best_model"] = engine.get_weights()
            if rank == 0:
                log.info("fedseg ray: epoch %d/%d loss %.4f val_dice %.4f", done, epochs, row["train_loss"],
                         scores.mean)
        state["history"] = list(state["history"]) + [row]
        state["epoch"] = done
        _report(engine, state, {k: v for k, v in row.items() if isinstance(v, (int, float))}, rank,
                f"epoch_{done:04d}-{attempt}")
        maybe_stop(cfg, done)
    # The final and best models on each site's test cases, scored here so the driver needs no data or GPU.
    final = engine.get_weights()
    scores = {"final": {}, "best": {}}
    for site, items in cfg["test_items"].items():
        ev = ShardedEval(engine, items, rank, world)
        scores["final"][site] = _rows(ev.scores(f"test {site}", weights=final))
        if state["best_model"] is not None:
            scores["best"][site] = _rows(ev.scores(f"test {site} (best)", weights=state["best_model"]))
    engine.set_weights(final)
    _report(engine, state, {"epoch": state["epoch"], "final": 1}, rank, f"final-{attempt}", scores)


# One FL round of a backend: ray site ----------------------------------------------------------------
def round_loop(cfg: dict) -> None:
    """Train from the received weights; every worker saves its weights for the driver to average."""
    import ray.train

    rank, world, engine = setup(cfg)
    engine.set_weights(cfg["weights"])
    if cfg.get("optimizer"):
        engine.optimizer.load_state_dict(cfg["optimizer"])
    wrap_ddp(engine, world)
    train = engine.train_data(shard(cfg["train_items"], rank, world))
    epochs, steps = cfg["epochs"], cfg["steps_per_epoch"]
    start, end = cfg["progress"] if cfg["progress"] is not None else (0.0, 0.0)
    losses, lr = [], 0.0
    for e in range(epochs):
        reseed(train, cfg["seed"], rank, e)
        progress = (start + (end - start) * e / epochs, start + (end - start) * (e + 1) / epochs) \
            if cfg["progress"] is not None else None
        result = train_steps(engine, train, iterations=steps, progress=progress,
                             label=f"fedseg {cfg['label']} ray rank {rank} epoch {e + 1}/{epochs}")
        losses.append(mean_across(engine, epoch_loss(result.epoch_losses), world))
        lr = result.learning_rate
    with tempfile.TemporaryDirectory() as d:
        # Distinct file names per rank: Ray merges all workers' checkpoint folders into one.
        torch.save(engine.get_weights(), Path(d) / weights_file(rank))
        if rank == 0:
            torch.save({"optimizer": engine.optimizer.state_dict(), "losses": losses, "learning_rate": lr,
                        "iterations": steps * epochs, "world": world}, Path(d) / ROUND_FILE)
        ray.train.report({"train_loss": losses[-1] if losses else float("nan")},
                         checkpoint=ray.train.Checkpoint.from_directory(d))
