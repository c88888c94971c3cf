"""Experiment tracking for runs outside NVFlare (``fedseg train``, local and Ray backends).

The same metric names as the federated clients send through NVFlare's ``SummaryWriter``
(``train_loss``, ``learning_rate``, ``val_dice``, ``val_dice_<class>``...), stepped by epoch:

* ``tensorboard``: event files in ``<run>/tb_events/`` (``tensorboard --logdir runs``), written
  with PyTorch's ``SummaryWriter``;
* ``mlflow``: one MLflow run per fedseg run in a local store, ``sqlite:///<run>/mlflow.db``
  (``mlflow ui --backend-store-uri sqlite:///<run>/mlflow.db``), or ``MLFLOW_TRACKING_URI`` when set.
  MLflow 3 refuses its old plain-folder store unless told otherwise; a SQLite file is what it and
  NVFlare's own ``MLflowReceiver`` use by default.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Mapping, Protocol

from fedseg.errors import FedsegError

log = logging.getLogger("fedseg")

TRACKERS = ("tensorboard", "mlflow", "none")
TB_DIR = "tb_events"
MLFLOW_DB = "mlflow.db"
MLFLOW_EXPERIMENT = "fedseg"


class Tracker(Protocol):
    def log_scalars(self, values: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class NoTracker:
    """``--tracking none``."""

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        return None

    def close(self) -> None:
        return None


class TensorBoardTracker:
    """Scalars as TensorBoard event files under ``<run>/tb_events``."""

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise FedsegError("--tracking tensorboard needs the tensorboard package: pip install 'fedseg[report]'") from None
        self.log_dir = Path(run_dir) / TB_DIR
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        for key, value in _finite(values).items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowTracker:
    """One MLflow run (experiment ``fedseg``) with the run's settings as parameters."""

    def __init__(self, run_dir: Path, run_name: str, params: Mapping[str, object]):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise FedsegError("--tracking mlflow needs MLflow: pip install 'fedseg[mlflow]'") from None
        run_dir = Path(run_dir).resolve()
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir / MLFLOW_DB}"
        self.client = MlflowClient(tracking_uri=self.uri)
        experiment = self.client.get_experiment_by_name(MLFLOW_EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            MLFLOW_EXPERIMENT, artifact_location=(run_dir / "mlartifacts").as_uri())
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        for key, value in params.items():
            self.client.log_param(self.run_id, key, value)

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in _finite(values).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def open_tracker(kind: str | None, run_dir: Path, run_name: str, params: Mapping[str, object] | None = None
                 ) -> Tracker:
    """The tracker ``kind`` names; ``None`` means TensorBoard if installed (a warning and none otherwise).

    Raises:
        FedsegError: an unknown kind, or the package an explicitly asked-for kind needs is missing.
    """
    if kind is None:
        try:
            return TensorBoardTracker(run_dir)
        except FedsegError as exc:
            log.warning("fedseg: no experiment tracking for this run: %s", exc)
            return NoTracker()
    if kind == "tensorboard":
        return TensorBoardTracker(run_dir)
    if kind == "mlflow":
        return MLflowTracker(run_dir, run_name, params or {})
    if kind == "none":
        return NoTracker()
    raise FedsegError(f"unknown tracking {kind!r}; choose one of {', '.join(TRACKERS)}")


def history_scalars(row: Mapping[str, object]) -> dict[str, float]:
    """The numbers of a results.json history row worth tracking (the step, ``epoch``, left out)."""
    return {k: float(v) for k, v in row.items()
            if k not in ("epoch", "seconds") and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _finite(values: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
