"""Liver and prostate, federated end to end in the NVFlare simulator (2 sites, 2 rounds)."""

import json

import pytest

from pathlib import Path

from fedseg.data.synth import ABDOMEN_ORGANS, synthesize
from fedseg.flare.jobs import JobSpec
from fedseg.flare.simulate import simulate

pytestmark = pytest.mark.slow

CLASSES = {"liver": ["liver", "tumour"], "prostate": ["PZ", "TZ"]}
FAULT_CLIENT = Path(__file__).parent / "faults" / "fault_client.py"


@pytest.mark.parametrize("task", ["liver", "prostate"])
def test_two_site_federated_run_reports_every_class(task, tmp_path):
    synthesize(task, tmp_path / "data", cases=8, seed=3, workers=2)
    job = JobSpec(task, num_rounds=2, local_epochs=1)
    result = simulate(job, n_sites=2, data_dir=tmp_path / "data", run_dir=tmp_path / "run", cases=8)
    body = json.loads((tmp_path / "run" / "results.json").read_text())
    assert body["classes"] == CLASSES[task]
    for model in body["models"].values():
        assert set(model) == {"site-1", "site-2", "pooled"}
        for cell in model.values():
            assert set(cell["dice"]) == set(CLASSES[task])
            assert "false_positive_cases" in cell
    header = result.table().splitlines()[0]
    assert all(name in header for name in CLASSES[task])
    for site in result.results.cross_site.values():
        for metrics in site.values():
            assert all(f"test_dice_{c.lower()}" in metrics for c in CLASSES[task])


def test_deepgrow_federated_round_reports_dice_after_n_clicks_per_organ(tmp_path):
    synthesize("deepgrow2d", tmp_path / "data", cases=6, seed=5, workers=2)
    job = JobSpec("deepgrow2d", num_rounds=1, local_epochs=1)  # one round: its validation clicks 1-15 times per organ
    result = simulate(job, n_sites=2, data_dir=tmp_path / "data", run_dir=tmp_path / "run", cases=6)
    body = json.loads((tmp_path / "run" / "results.json").read_text())
    assert body["classes"] == list(ABDOMEN_ORGANS)
    curve = body["click_curve"]["final"]
    assert sorted(map(int, curve)) == [1, 5, 10, 15] and all(0.0 <= v <= 1.0 for v in curve.values())
    for site, per_model in result.results.cross_site.items():
        metrics = per_model["SRV_FL_global_model.pt"]
        assert all(f"test_dice_{organ}_click{n}" in metrics for organ in ("spleen", "liver") for n in (1, 15))
    # Global validation of the received model each round, with the curve in it.
    assert result.results.rounds and all(any(m["name"] == "val_dice_click1" for m in r["aggregated_metrics"])
                                         for r in result.results.rounds)
    assert "| clicks | 1 | 5 | 10 | 15 |" in result.table()


@pytest.mark.parametrize("algorithm", ["fedprox", "fedopt"])
def test_fedprox_and_fedopt_jobs_run_end_to_end_and_tolerate_a_failing_site_alike(algorithm, tmp_path, monkeypatch):
    """FedOpt runs on the same fault-tolerant controller as FedAvg: a site failing mid-job is left out."""
    synthesize("spleen", tmp_path / "data", cases=8, seed=3, workers=2)
    job = JobSpec("spleen", algorithm=algorithm, num_rounds=3, local_epochs=1, min_clients=1)
    script = None
    if algorithm == "fedopt":
        monkeypatch.setenv("FEDSEG_TEST_FAULT", "site-2:raise:1")
        script = FAULT_CLIENT
    result = simulate(job, n_sites=2, data_dir=tmp_path / "data", run_dir=tmp_path / "run", cases=8,
                      client_script=script, report=False)
    log = (tmp_path / "run" / "simulator.log").read_text()
    assert ("FedProx's proximal term, mu 0.01" in log) == (algorithm == "fedprox")
    assert result.results.finished and result.best_round is not None  # best-model selection reads val_dice
    final = result.models["final"]
    if algorithm == "fedprox":
        assert set(final) == {"site-1", "site-2", "pooled"} and final["pooled"].cases == 2
    else:
        assert "FedOpt" in log and "server model update round 2" in log  # the server optimizer stepped
        assert result.failed_sites == ["site-2"] and 1 in result.results.participation()["site-2"]["failed"]
        assert "fedseg: round 1: no usable update from site-2; averaging site-1" in log
