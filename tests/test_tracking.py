"""Tracking outside NVFlare (fedseg train) and the job option: written metrics are read back."""

import json

import pytest

from fedseg.cli import main
from fedseg.errors import FedsegError
from fedseg.tracking import history_scalars, open_tracker

ROWS = [{"epoch": 2, "train_loss": 0.9, "learning_rate": 0.002, "val_dice": 0.3, "val_dice_spleen": 0.3, "seconds": 4.0},
        {"epoch": 4, "train_loss": 0.7, "learning_rate": 0.001, "val_dice": 0.5, "val_dice_spleen": 0.5,
         "val_dice_nan": None}]


def read_tensorboard(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files under ``folder``: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_read_back(tmp_path):
    tracker = open_tracker("tensorboard", tmp_path, "run", {})
    for row in ROWS:
        tracker.log_scalars(history_scalars(row), step=row["epoch"])
    tracker.close()
    scalars = read_tensorboard(tmp_path / "tb_events")
    assert scalars["val_dice_spleen"] == [(2, 0.3), (4, 0.5)]
    assert scalars["learning_rate"] == [(2, 0.002), (4, 0.001)]
    assert "seconds" not in scalars and "epoch" not in scalars and "val_dice_nan" not in scalars


def test_mlflow_run_read_back(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = open_tracker("mlflow", tmp_path, "spleen_site-1_local_x", {"task": "spleen", "epochs": 4})
    for row in ROWS:
        tracker.log_scalars(history_scalars(row), step=row["epoch"])
    tracker.close()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(tracker.run_id)
    assert run.info.run_name == "spleen_site-1_local_x" and run.info.status == "FINISHED"
    assert run.data.params == {"task": "spleen", "epochs": "4"}
    assert [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "val_dice")] == [(2, 0.3), (4, 0.5)]


def test_unknown_tracking_is_refused(tmp_path):
    with pytest.raises(FedsegError, match="unknown tracking 'wandb'"):
        open_tracker("wandb", tmp_path, "run")


def test_job_export_with_mlflow_tracking(tmp_path):
    pytest.importorskip("mlflow")
    assert main(["jobs", "export", "--task", "spleen", "--tracking", "mlflow", "--out", str(tmp_path)]) == 0
    server = json.loads((tmp_path / "spleen_fedavg" / "app" / "config" / "config_fed_server.json").read_text())
    paths = [c.get("path", "") for c in server["components"]]
    assert any(p.endswith("MLflowReceiver") for p in paths) and not any(p.endswith("TBAnalyticsReceiver") for p in paths)
    assert main(["jobs", "export", "--task", "spleen", "--out", str(tmp_path)]) == 0
    server = json.loads((tmp_path / "spleen_fedavg" / "app" / "config" / "config_fed_server.json").read_text())
    assert any(c.get("path", "").endswith("TBAnalyticsReceiver") for c in server["components"])
