"""The benchmark suite's machinery on the smallest settings: fields present, values sane (no timings asserted)."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO))  # bench/ lives at the repository root, outside the installed package

from bench.common import markdown_table, settings_for  # noqa: E402
from fedseg.engine.runtime import cpu_has_native_bf16  # noqa: E402
from bench.fl_overhead import fedavg  # noqa: E402
from bench.flsim import TreeMonitor, parse_timeline  # noqa: E402
from bench.run import run_all, write_report  # noqa: E402


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def report(spleen_dataset, tmp_path_factory) -> dict:
    from fedseg.data.datalist import parse_datalist

    datalist, _ = parse_datalist(spleen_dataset / "splits" / "site-1.json", spleen_dataset)
    items = {s: datalist.items(s) for s in ("training", "validation", "test")}
    work = tmp_path_factory.mktemp("bench")
    body = run_all(settings_for("test"), ["throughput", "time_to_dice", "inference", "aggregation"], work, items=items)
    torch.set_num_threads(2)  # the suite's default (conftest), whatever the sections set
    # Through the file, as a reader of runs/bench.json gets it (strict JSON: no NaN).
    return json.loads(write_report(body, work / "bench.json").read_text())


def test_report_describes_the_machine_and_has_no_errors(report):
    assert report["errors"] == {}
    machine = report["machine"]
    for key in ("cpu_count", "torch", "monai", "nvflare", "device", "gpu", "cpu_model", "cpu_flags",
                "torch_cpu_capability", "native_bf16", "auto_precision_cpu"):
        assert key in machine
    assert machine["device"] == "cpu" and machine["cpu_count"] >= 1
    assert machine["native_bf16"] == cpu_has_native_bf16()
    assert report["table"].startswith("| comparison")
    assert [g["target"] for g in report["acceptance"]] == [">= 1.5", ">= 2"]  # no FL section in this run


def test_training_throughput_fields(report):
    r = report["results"]["throughput"]
    for loop in ("fedseg", "tutorial"):
        assert _positive(r[loop]["samples_per_s"])
        assert r[loop]["samples"] == r[loop]["iterations"] * r["patches_per_iteration"]
        assert 0.0 <= r[loop]["data_wait_fraction"] <= 1.0
    # One epoch each over the same training cases: the same number of steps.
    assert r["fedseg"]["iterations"] == r["tutorial"]["iterations"] > 0
    assert r["fedseg_runtime"]["memory_format"] == "torch.channels_last_3d"  # the CPU default the bench times
    assert _positive(r["ratio_fedseg_over_tutorial"])


def test_time_to_dice_ran_the_device_cache_path(report):
    r = report["results"]["time_to_dice"]
    # The GPU levers (cache on the device, crops there, ThreadDataLoader) forced on the CPU: the path runs.
    assert r["device_cache"] and r["loader"] == "ThreadDataLoader"
    assert r["iterations"] >= 1 and len(r["curve"]) >= 1 and 0.0 <= r["best_val_dice"] <= 1.0
    assert _positive(r["train_patches_per_s"])


def test_inference_fields_and_dice_agreement(report):
    r = report["results"]["inference"]
    for way in ("fedseg", "monai_same_settings", "monai_defaults"):
        assert _positive(r[way]["volumes_per_s"]) and r[way]["volumes"] == r["volumes"] == 2
        assert all(0.0 <= d <= 1.0 for d in r[way]["dice_per_volume"])
    assert _positive(r["ratio_fedseg_over_monai_same_settings"])
    assert r["dice_difference"] == pytest.approx(abs(r["fedseg"]["dice"] - r["monai_same_settings"]["dice"]))
    assert r["dice_agree"] == (r["dice_difference"] <= r["dice_tolerance"])


def test_aggregation_matches_the_naive_average(report):
    r = report["results"]["aggregation"]
    assert [row["k"] for row in r["by_k"]] == [1, 2]
    for row in r["by_k"]:
        assert row["max_abs_difference"] < 1e-5
        assert _positive(row["in_time_peak_mb"]) and _positive(row["keep_all_peak_mb"])
        assert row["in_time_s"] >= 0 and row["keep_all_s"] >= 0


def test_fedavg_reference_average_weighs_by_cases():
    a = {"w": torch.zeros(2), "n": torch.tensor(2)}
    b = {"w": torch.ones(2), "n": torch.tensor(4)}
    out = fedavg([(a, 1), (b, 3)])
    assert torch.allclose(out["w"], torch.full((2,), 0.75)) and out["n"].dtype == torch.int64


def test_simulator_timeline_from_its_log(tmp_path):
    log = tmp_path / "simulator.log"
    log.write_text("2026-01-01 10:00:05,000 - INFO - \n      Round 0 started.\n"
                   "2026-01-01 10:00:15,500 - INFO - \n      Round 1 started.\n"
                   "2026-01-01 10:00:18,500 - INFO - \n      Finished FedAvg.\n")
    from datetime import datetime

    launched = datetime(2026, 1, 1, 10, 0, 0).timestamp()
    t = parse_timeline(log, launched, launched + 20)
    assert t["parsed"] and t["startup_s"] == pytest.approx(5.0)
    assert t["round_s"] == pytest.approx([10.5, 3.0]) and t["shutdown_s"] == pytest.approx(1.5)


def test_server_is_the_parent_of_the_simulator_workers():
    monitor = TreeMonitor()
    monitor.info = {10: ("nvflare simulator job", 1), 11: ("nvflare simulator job", 10),
                    12: ("python -m nvflare.private.fed.app.simulator.simulator_worker --client site-1", 11)}
    monitor.peak = {10: 2**20, 11: 300 * 2**20, 12: 500 * 2**20}
    summary = monitor.summary()
    assert summary["server_peak_rss_mb"] == pytest.approx(300) and summary["client_peak_rss_mb"] == [500]


def test_markdown_table_and_settings():
    text = markdown_table(["a", "b"], [[1.23456, None], ["x", float("nan")]])
    assert text.splitlines()[2] == "| 1.23 | n/a |"
    quick, full = settings_for("quick"), settings_for("full")
    assert quick.variant == "tiny" and full.variant == "full" and full.device == "auto"
    with pytest.raises(ValueError):
        settings_for("huge")
