"""SCAFFOLD and Ditto end to end in the NVFlare simulator, with one site on its own Ray and one local.

Each runs 1 local epoch a round (site-1: 2 Ray workers, site-2: in process) through ``fedseg simulate``
(NVFlare's SimEnv): SCAFFOLD 2 rounds (the second is the first with non-zero global controls), Ditto 1
(every Ray round costs about 25 s of worker start-up, and Ditto's personal phase is a second one). Then
checks what every algorithm must do with a Ray site (deliver every round, be averaged by training cases,
start from the global model) and what only that algorithm does.
"""

import json

import pytest
import torch

from conftest import assert_global_is_case_weighted_average
from fedseg.data.synth import synthesize
from fedseg.engine import Runtime, SegmentationEngine
from fedseg.flare.jobs import JobSpec
from fedseg.flare.simulate import simulate
from fedseg.tasks import get_task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("algorithms")
    synthesize("spleen", root / "data", cases=12, seed=6, workers=2)
    return root / "data"


def _run(algorithm, data, tmp_path, shares=None, rounds=2):
    job = JobSpec("spleen", algorithm=algorithm, num_rounds=rounds, local_epochs=1)
    result = simulate(job, n_sites=2, data_dir=data, run_dir=tmp_path / "run", cases=12, shares=shares,
                      site_backends={"site-1": "ray"}, report=False)
    log = (tmp_path / "run" / "simulator.log").read_text()
    record = json.loads(next(result.workspace.glob("server/*/app_server/fedseg_federation.json")).read_text())
    # Both sites, the Ray one included, delivered every round, and the cross-site matrix is whole.
    assert [sorted(r["delivered"]) for r in record["rounds"]] == [["site-1", "site-2"]] * rounds
    assert result.results.finished and not result.failed_sites and not result.results.missing()
    assert "fedseg site-1: Ray round" in log and "fedseg site-2: Ray round" not in log
    return result, log, record


def test_scaffold_with_a_ray_site_averages_weights_by_cases_and_control_variates(data, tmp_path):
    # shares 1:2 -> site-1 (Ray, 2 workers) trains on 2 cases, site-2 (local) on 4.
    result, log, record = _run("scaffold", data, tmp_path, shares=[1, 2])
    ws = result.workspace
    assert "algorithm scaffold" in log and "Disassembly of" not in log  # Ray's bytecode dump kept out of the log
    norms = [r["scaffold_control_difference_norm"] for r in record["rounds"]]
    assert all(n > 0 for n in norms)  # every round's sites moved their controls
    assert "no SCAFFOLD control difference" not in log and "excluded from the average" not in log
    # The weights are averaged as FedAvg's, by training cases: site-1's 2 (sent by the Ray trainer) and site-2's 4.
    assert result.results.federation is not None
    assert_global_is_case_weighted_average(ws, [2, 4], local_round=1)
    # Both sites started round 1 from the same global model: their models are near each other, far from a fresh one.
    local = [torch.load(ws / f"site-{k}" / "fedseg" / "spleen_local_model.pt", weights_only=True)["state_dict"]
             for k in (1, 2)]
    fresh = SegmentationEngine(get_task("spleen", "tiny"), Runtime.create("cpu"), seed=123).get_weights()
    params = [k for k in local[0] if "running" not in k and local[0][k].dtype.is_floating_point]

    def dist(a, b):
        return sum(float((a[k].double() - b[k].double()).norm()) ** 2 for k in params) ** 0.5

    assert dist(local[0], local[1]) < 0.1 * dist(local[0], fresh)


def test_ditto_trains_a_personal_model_and_scores_it_across_sites(data, tmp_path):
    result, log, _ = _run("ditto", data, tmp_path, rounds=1)
    for k in (1, 2):
        site = result.workspace / f"site-{k}" / "fedseg"
        rounds = [json.loads(line) for line in (site / "spleen_rounds.jsonl").read_text().splitlines()]
        assert all("val_dice_personal" in r and "val_dice" in r for r in rounds)
        personal = torch.load(site / "spleen_personal_model.pt", weights_only=True)["state_dict"]
        local = torch.load(site / "spleen_local_model.pt", weights_only=True)["state_dict"]
        assert any(not torch.equal(personal[n], local[n]) for n in personal)
    # Every site's personalised model (its "local" model) is scored on every site's test cases.
    assert {"site-1", "site-2"} <= set(result.results.model_names())
    # site-1's personalised phase ran on Ray as well: two fit() calls in the round.
    assert "fedseg site-1: Ray round 2 on 2 worker(s)" in log
