"""End to end in the NVFlare simulator: 2 sites of unequal size, FedAvg, global Dice, cross-site matrix."""

import json

import pytest

from conftest import assert_global_is_case_weighted_average
from fedseg.data.synth import synthesize
from fedseg.flare.jobs import JobSpec
from fedseg.flare.simulate import simulate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    synthesize("spleen", root / "data", cases=12, seed=2, workers=2)
    job = JobSpec("spleen", num_rounds=2, local_epochs=1)
    # shares 1:2 -> site-1 trains on 2 cases, site-2 on 4.
    result = simulate(job, n_sites=2, data_dir=root / "data", run_dir=root / "run", cases=12, shares=[1, 2])
    return result, root / "run"


def test_fedavg_weights_sites_by_training_cases(sim):
    result, run = sim
    ws = result.workspace
    n = [len(json.loads((run.parent / "data" / "splits" / f"site-{k}.json").read_text())["training"]) for k in (1, 2)]
    assert n == [2, 4]
    assert_global_is_case_weighted_average(ws, n, local_round=1)


def test_results_table_and_cross_site_matrix(sim):
    result, run = sim
    body = json.loads((run / "results.json").read_text())
    assert body["classes"] == ["spleen"] and body["best_round"] == 1
    final = body["models"]["final"]
    assert set(final) == {"site-1", "site-2", "pooled"}
    assert final["pooled"]["cases"] == final["site-1"]["cases"] + final["site-2"]["cases"] == 3
    for cell in final.values():
        assert 0.0 <= cell["dice"]["spleen"] <= 1.0
    matrix = result.results.cross_site
    assert sorted(matrix) == ["site-1", "site-2"] and result.failed_sites == [] and body["failed_sites"] == []
    assert result.results.missing() == []
    for site in matrix.values():
        assert set(site) == {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", "site-1", "site-2"}
        for metrics in site.values():
            assert "test_dice_spleen" in metrics and "test_cases" in metrics
    assert "| final" in result.table() and "| pooled" in result.table()


def test_every_round_scores_the_global_model_on_each_site(sim):
    result, _ = sim
    rounds = result.results.rounds
    assert [r["round"] for r in rounds] == [0, 1]
    for r in rounds:
        names = {s["name"] for s in r["sites"]}
        assert names == {"site-1", "site-2"}
        for s in r["sites"]:
            keys = {m["name"] for m in s["metrics"]}
            assert {"val_dice", "val_dice_spleen", "train_loss"} <= keys


def test_nothing_leaves_a_site_that_names_a_case(sim):
    result, run = sim
    sent = (result.results.job_dir / "metrics" / "round_metrics.jsonl").read_text()
    sent += (result.results.job_dir / "cross_site_val" / "cross_val_results.json").read_text()
    assert "spleen_" not in sent and ".nii" not in sent and "imagesTr" not in sent


def test_report_tables_plots_and_tracking(sim):
    result, run = sim
    report = json.loads((run / "report.json").read_text())
    assert set(report["cross_site"]) == {"final global", "best global (round 1)", "site-1 local", "site-2 local"}
    assert [r["round"] for r in report["rounds"]] == [0, 1]
    assert set(report["rounds"][1]["sites"]) == {"site-1", "site-2"}
    md = (run / "report.md").read_text()
    assert "## Cross-site evaluation" in md and "| site-2 local" in md
    for png in ("training_loss.png", "validation_dice.png", "validation_dice_per_class.png", "cross_site_dice.png",
                "case_dice_spread.png"):
        assert (run / png).stat().st_size > 10_000
    # Per-case Dice of the global models, scored where the data is (this machine), by position, no names.
    body = json.loads((run / "results.json").read_text())
    assert set(body["per_case_dice"]) == {"final", "best (round 1)"}
    assert [len(body["per_case_dice"]["final"][s]["spleen"]) for s in ("site-1", "site-2")] == [1, 2]
    assert body["training_cases"] == {"site-1": 2, "site-2": 4}
    assert body["overlays"] and all((run / name).stat().st_size > 30_000 for name in body["overlays"])
    # TensorBoard events from every site reached the server through NVFlare's tracking.
    events = list((result.workspace / "server" / "simulate_job").rglob("events.out.tfevents*"))
    assert {p.parent.name for p in events} >= {"site-1", "site-2"}
