"""An FL site's local trainer on the site's own Ray cluster (``backend: ray`` in the site YAML).

Each round's local training runs as one Ray Train ``fit()`` of :func:`fedseg.ray.worker.round_loop`
with ``ray.workers`` workers: every worker starts from the global weights NVFlare sent, trains on
its shard of the site's training cases (DDP averages gradients), and saves its final weights; the
trainer returns their average (parameters agree across workers after DDP; the BatchNorm running
statistics, which each worker gathers on its own shard, are what the average actually mixes) and
the site's number of training cases, which FedAvg uses as the update's weight. The optimizer state
is carried from round to round, as :class:`fedseg.runners.site.LocalSiteTrainer` keeps it.

Validation and cross-site evaluation run in the client process (a few cases each; a ``fit()``
costs far more), with the same engine code as a local site.
"""

from __future__ import annotations

import logging
import shutil
import threading
import uuid
from pathlib import Path
from typing import Callable, Mapping, TypeVar

import torch

from fedseg.engine import DiceScores, Runtime, TrainResult
from fedseg.engine.distributed import all_finite, average_weights, steps_per_epoch
from fedseg.engine.engine import to_state_dict
from fedseg.engine.hooks import RoundHooks
from fedseg.errors import ConfigError, FedsegError, NonFiniteLossError
from fedseg.ray import require_ray
from fedseg.ray.cluster import RayCluster
from fedseg.ray.common import WorkerPlan
from fedseg.ray.config import RoundSettings, WorkerConfig, WorkerRuntime
from fedseg.ray.runner import STORAGE, fit_on_workers
from fedseg.ray.worker import ROUND_FILE, round_loop, weights_file
from fedseg.runners.site import GLOBAL, LocalSiteTrainer
from fedseg.site_data import SiteData
from fedseg.transforms import seed_from

log = logging.getLogger("fedseg")
T = TypeVar("T")


class RoundTimeout(FedsegError):
    """A Ray round outlived the site's ``ray.round_timeout_s``; the site withholds that round's update."""


def in_own_thread(fn: Callable[[], T], timeout_s: float, on_timeout: Callable[[], None]) -> T:
    """Run ``fn`` in a fresh thread and return its result (or raise its error) here.

    After ``timeout_s`` seconds ``on_timeout`` is called (it must make ``fn`` end, e.g. stop the
    Ray cluster), the thread gets a minute more, and :class:`RoundTimeout` is raised.

    NVFlare's in-process client turns ``print`` in the client's thread into log lines and drops
    ``file=``; Ray's function export prints ``dis.dis(..., file=StringIO)``, which then floods the
    site log with about 12,000 lines of bytecode per round. A fresh thread prints normally.
    Never start Ray itself this way: its head processes are killed when the starting thread ends.
    """
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="fedseg-ray", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        on_timeout()
        thread.join(60)
        raise RoundTimeout(f"the Ray round did not finish within {timeout_s:g} s (ray.round_timeout_s)")
    if "error" in box:
        raise box["error"]
    return box["value"]


class RaySiteTrainer:
    """The :class:`fedseg.runners.site.SiteTrainer` of a site that trains on Ray.

    ``work_dir`` (default ``./fedseg/ray``, i.e. inside the NVFlare client's workspace) holds the
    local Ray's temporary files and each round's checkpoints (removed once read).
    ``max_failures``: restarts of a round whose worker died (the round starts again from the
    received weights).
    """

    def __init__(self, data: SiteData, runtime: Runtime, seed: int = 0, *, work_dir: Path | None = None,
                 max_failures: int = 1):
        require_ray()  # a site without Ray installed fails at start, not in its first round
        self.data, self.runtime, self.seed, self.max_failures = data, runtime, seed, max_failures
        self.settings = data.site.ray
        self.work_dir = Path(work_dir or Path.cwd() / "fedseg" / "ray").resolve()
        where = f"site {data.site.site!r} ({data.site.path})"
        self._names = {"workers_setting": f"ray.workers of {where}",
                       "gpus_setting": f"ray.gpus_per_worker of {where}"}
        self.n_train = len(data.items("training"))
        if self.n_train < self.settings.workers:
            raise ConfigError(f"ray.workers {self.settings.workers} of {where} is more than its {self.n_train} "
                              "training case(s): every worker needs at least one")
        self._local = LocalSiteTrainer(data, runtime, seed=seed)  # evaluation stays in this process
        self._cluster: RayCluster | None = None
        self._plan: WorkerPlan | None = None
        self._rounds = 0
        self._optimizer_states: dict[str, dict] = {}  # per slot (fedseg.runners.site.SiteTrainer)

    def _start(self) -> WorkerPlan:
        if self._cluster is None:
            # Started once and kept for all rounds: ray.init costs seconds; each round is a new fit().
            self._cluster = RayCluster(self.settings.address, self.work_dir).start()
            self._plan = self._cluster.plan(self.settings.workers, self.settings.gpus_per_worker, **self._names)
        return self._plan

    def train(self, weights: Mapping, epochs: int, progress: tuple[float, float] | None = None,
              hooks: RoundHooks | None = None, slot: str = GLOBAL) -> TrainResult:
        """Train from ``weights`` for ``epochs`` on the site's Ray workers; return their averaged weights.

        ``hooks`` are built on every worker (each corrects its own DDP replica alike); what they
        hand back comes from rank 0.
        """
        weights = to_state_dict(weights)
        if not all_finite(weights):
            # Every worker would stop at the first step; refuse before paying for a fit().
            raise NonFiniteLossError(0, 0, float("nan"))
        # In the caller's thread: Ray's head processes die with the thread that started them (PDEATHSIG).
        plan = self._start()
        self._rounds += 1
        site = self.data.site
        name = f"round-{self._rounds:04d}-{uuid.uuid4().hex[:6]}"  # a fresh name: never restore an older round
        cfg = WorkerConfig(
            spec=self.data.spec, class_names=tuple(self.data.class_names), seed=seed_from(self.seed, self._rounds),
            use_gpu=plan.use_gpu,
            runtime=WorkerRuntime(threads=plan.cpus_per_worker, num_workers=site.num_workers,
                                  cache_rate=site.cache_rate, precision=site.precision),
            train_items=self.data.items("training"),
            steps_per_epoch=steps_per_epoch(self.n_train, plan.workers, self.data.spec.batch_size),
            round=RoundSettings(weights=weights, optimizer=self._optimizer_states.get(slot), epochs=epochs,
                                progress=progress, label=site.site if slot == GLOBAL else f"{site.site} {slot}",
                                hooks=hooks))
        checkpoint = in_own_thread(
            lambda: fit_on_workers(round_loop, cfg, plan, self.work_dir, name, self.max_failures,
                                   on_failure=f"site {site.site} withholds this round's update"),
            self.settings.round_timeout_s, self._stop_cluster)
        with checkpoint.as_directory() as d:
            states = [torch.load(Path(d) / weights_file(r), map_location="cpu", weights_only=True)
                      for r in range(plan.workers)]
            info = torch.load(Path(d) / ROUND_FILE, map_location="cpu", weights_only=True)
        shutil.rmtree(self.work_dir / STORAGE / name, ignore_errors=True)  # read; keep the disk bounded
        self._optimizer_states[slot] = info["optimizer"]
        log.info("fedseg %s: Ray round %d on %d worker(s): %d step(s), loss %.4f", site.site, self._rounds,
                 plan.workers, info["iterations"], info["losses"][-1] if info["losses"] else float("nan"))
        return TrainResult(average_weights(states), self.n_train, int(info["iterations"]), list(info["losses"]),
                           float(info["learning_rate"]), dict(info.get("extras") or {}))

    def _stop_cluster(self) -> None:
        """End a round that outlived its bound: stopping Ray ends its workers; the next round starts a new one."""
        log.error("fedseg %s: the Ray round outlived ray.round_timeout_s (%g s); stopping the site's Ray",
                  self.data.site.site, self.settings.round_timeout_s)
        if self._cluster is not None:
            self._cluster.shutdown()
            self._cluster, self._plan = None, None

    def evaluate(self, weights: Mapping, split: str) -> DiceScores:
        return self._local.evaluate(weights, split)

    def close(self) -> None:
        self._local.close()
        if self._cluster is not None:
            self._cluster.shutdown()
            self._cluster = None
