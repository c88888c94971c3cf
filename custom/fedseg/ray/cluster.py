"""Connecting to Ray: a site's cluster by address, or a local one confined to the run folder."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from fedseg.ray import require_ray
from fedseg.ray.common import DEFAULT_OBJECT_STORE_MB, WorkerPlan, plan_workers, temp_dir_for

log = logging.getLogger("fedseg")


class RayCluster:
    """The Ray this process trains on; a context manager.

    * ``address`` given (``ray://host:port``, ``auto``, ``host:port``): connect to that cluster;
      leaving only disconnects.
    * no address: start a local Ray with a bounded object store, temporary files under
      ``<run_dir>/ray_tmp`` (or a short stand-in under /tmp when that path is too long for Ray's
      sockets) and the dashboard (Ray Train's clean-up actor queries its state API); leaving
      shuts it down.
    * Ray already initialised in this process (a notebook, a test session): use it as it is and
      leave it running.
    """

    def __init__(self, address: str | None, run_dir: Path, *, object_store_mb: int = DEFAULT_OBJECT_STORE_MB,
                 num_cpus: int | None = None):
        self.address, self.run_dir = address, Path(run_dir)
        self.object_store_mb, self.num_cpus = object_store_mb, num_cpus
        self.owned = False
        self.temp_dir: Path | None = None
        self._remove_temp = False
        self.init_s = 0.0

    def start(self) -> "RayCluster":
        ray = require_ray()
        start = time.perf_counter()
        if ray.is_initialized():
            log.info("fedseg ray: using the Ray already running in this process")
        elif self.address:
            log.info("fedseg ray: connecting to the Ray cluster at %s", self.address)
            ray.init(address=self.address, logging_level=logging.WARNING)
            self.owned = True
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.temp_dir, self._remove_temp = temp_dir_for(self.run_dir)
            if self._remove_temp:
                log.info("fedseg ray: %s is too long a path for Ray's sockets; its temporary files go to %s "
                         "(removed at the end)", self.run_dir / "ray_tmp", self.temp_dir)
            ray.init(num_cpus=self.num_cpus or os.cpu_count() or 1,
                     object_store_memory=self.object_store_mb * 1024 * 1024,
                     _temp_dir=str(self.temp_dir), logging_level=logging.WARNING)
            self.owned = True
        self.init_s = time.perf_counter() - start
        return self

    def resources(self) -> dict[str, float]:
        return dict(require_ray().cluster_resources())

    def plan(self, workers: int, gpus_per_worker: float, **setting_names: str) -> WorkerPlan:
        """Per-worker resources for ``workers`` on this cluster (see :func:`plan_workers`)."""
        return plan_workers(workers, gpus_per_worker, self.resources(), **setting_names)

    def shutdown(self) -> None:
        if self.owned:
            require_ray().shutdown()
            self.owned = False
        if self._remove_temp and self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self._remove_temp = False

    def __enter__(self) -> "RayCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()
