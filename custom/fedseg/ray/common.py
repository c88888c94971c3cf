"""Plain helpers of the Ray backend that need no Ray: temporary folders, worker planning, test faults.

Kept free of ray imports so that they can be tested, and used by the driver, without a cluster.
(Sharding, step counts and weight averaging need only torch: :mod:`fedseg.engine.distributed`.)
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from fedseg.errors import ConfigError

# Ray puts Unix sockets at <temp dir>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store and
# refuses paths over 107 bytes; the session part takes up to ~64, so the temp dir must stay short.
MAX_TEMP_DIR_CHARS = 40
# The object store holds the configs (weights) sent to workers; Ray's default is 30% of RAM.
DEFAULT_OBJECT_STORE_MB = 512
FAULT_ENV = "FEDSEG_RAY_FAULT"
# Ray Train's controller takes a worker's report off its one-slot queue only when it polls the workers
# (every 2 s by default), and the worker's next report waits for that: about 1 s lost per epoch when
# epochs are short (measured: 12 tiny epochs 60 s -> 44 s). Polling 4 times a second costs a few RPCs.
POLL_ENV, POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25"


def temp_dir_for(run_dir: Path) -> tuple[Path, bool]:
    """Where a local Ray keeps its temporary files: ``<run_dir>/ray_tmp`` when that path is short
    enough for Ray's sockets, else a fresh folder under /tmp. Returns the folder and whether it is
    such a stand-in (to be removed at shutdown).
    """
    inside = (Path(run_dir) / "ray_tmp").resolve()
    if len(str(inside)) <= MAX_TEMP_DIR_CHARS:
        inside.mkdir(parents=True, exist_ok=True)
        return inside, False
    base = "/tmp" if os.path.isdir("/tmp") else None
    return Path(tempfile.mkdtemp(prefix="fedseg-ray-", dir=base)), True


@dataclass(frozen=True)
class WorkerPlan:
    """Resources each Ray worker asks for, and the torch threads it uses."""

    workers: int
    cpus_per_worker: int
    gpus_per_worker: float

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    @property
    def backend(self) -> str:
        # NCCL cannot put two ranks on one GPU; with fractional GPUs use gloo (it handles CUDA tensors).
        return "nccl" if self.gpus_per_worker >= 1 else "gloo"

    def resources(self) -> dict[str, float]:
        res: dict[str, float] = {"CPU": self.cpus_per_worker}
        if self.use_gpu:
            res["GPU"] = self.gpus_per_worker
        return res


def plan_workers(workers: int, gpus_per_worker: float, cluster: Mapping[str, float], *,
                 workers_setting: str = "--workers", gpus_setting: str = "--gpus-per-worker") -> WorkerPlan:
    """Check that ``workers`` fit the cluster (Ray would otherwise wait for them forever) and split its CPUs.

    ``cluster`` is ``ray.cluster_resources()``; error messages name the settings as the user wrote them.
    """
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"{workers_setting} must be a whole number >= 1, got {workers!r}")
    if gpus_per_worker < 0:
        raise ConfigError(f"{gpus_setting} must be >= 0, got {gpus_per_worker}")
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    if workers > cpus:
        raise ConfigError(f"{workers_setting} {workers} needs {workers} CPUs (one per worker) but the Ray cluster "
                          f"has {cpus:g}; lower {workers_setting} or add nodes")
    if gpus_per_worker > 0 and workers * gpus_per_worker > gpus + 1e-9:
        raise ConfigError(f"{workers_setting} {workers} x {gpus_setting} {gpus_per_worker:g} needs "
                          f"{workers * gpus_per_worker:g} GPUs but the Ray cluster has {gpus:g}")
    return WorkerPlan(workers, max(1, int(cpus // workers)), float(gpus_per_worker))


@dataclass(frozen=True)
class Fault:
    """A fault injected on purpose by the tests (``FEDSEG_RAY_FAULT``), read by the driver and sent on.

    ``kill:E:R``: worker R kills itself (SIGKILL) one second into epoch E, once per run folder.
    ``stop:E``: every worker raises after checkpointing epoch E (the run stops; resume continues it).
    """

    kind: str
    epoch: int
    rank: int = 0

    @staticmethod
    def parse(text: str | None) -> "Fault | None":
        if not text:
            return None
        parts = text.split(":")
        try:
            if parts[0] == "kill" and len(parts) == 3:
                return Fault("kill", int(parts[1]), int(parts[2]))
            if parts[0] == "stop" and len(parts) == 2:
                return Fault("stop", int(parts[1]))
        except ValueError:
            pass
        raise ConfigError(f"{FAULT_ENV}={text!r}: expected kill:EPOCH:RANK or stop:EPOCH")
