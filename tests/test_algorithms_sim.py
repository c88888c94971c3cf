"""SCAFFOLD and Ditto end to end in the NVFlare simulator, with one site on its own Ray and one local.

Each runs 2 rounds x 1 local epoch on 8 phantoms (site-1: 2 Ray workers, site-2: in process) through
``fedseg simulate`` (NVFlare's SimEnv), then checks what only that algorithm does.
"""

import json

import pytest
import torch

from fedseg.data.synth import synthesize
from fedseg.flare.jobs import JobSpec
from fedseg.flare.simulate import simulate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("algorithms")
    synthesize("spleen", root / "data", cases=8, seed=6, workers=2)
    return root / "data"


def _run(algorithm, data, tmp_path):
    job = JobSpec("spleen", algorithm=algorithm, num_rounds=2, local_epochs=1)
    result = simulate(job, n_sites=2, data_dir=data, run_dir=tmp_path / "run", cases=8,
                      site_backends={"site-1": "ray"})
    log = (tmp_path / "run" / "simulator.log").read_text()
    record = json.loads(next(result.workspace.glob("server/*/app_server/fedseg_federation.json")).read_text())
    # Both sites, the Ray one included, delivered every round, and the cross-site matrix is whole.
    assert [sorted(r["delivered"]) for r in record["rounds"]] == [["site-1", "site-2"]] * 2
    assert result.results.finished and not result.failed_sites and not result.results.missing()
    assert "fedseg site-1: Ray round" in log and "fedseg site-2: Ray round" not in log
    return result, log, record


def test_scaffold_sends_and_averages_control_variates(data, tmp_path):
    result, log, record = _run("scaffold", data, tmp_path)
    assert "algorithm scaffold" in log
    norms = [r["scaffold_control_difference_norm"] for r in record["rounds"]]
    assert all(n > 0 for n in norms)  # every round's sites moved their controls
    assert "no SCAFFOLD control difference" not in log and "excluded from the average" not in log


def test_ditto_trains_a_personal_model_and_scores_it_across_sites(data, tmp_path):
    result, log, _ = _run("ditto", data, tmp_path)
    for k in (1, 2):
        site = result.workspace / f"site-{k}" / "fedseg"
        rounds = [json.loads(line) for line in (site / "spleen_rounds.jsonl").read_text().splitlines()]
        assert all("val_dice_personal" in r and "val_dice" in r for r in rounds)
        personal = torch.load(site / "spleen_personal_model.pt", weights_only=True)["state_dict"]
        local = torch.load(site / "spleen_local_model.pt", weights_only=True)["state_dict"]
        assert any(not torch.equal(personal[n], local[n]) for n in personal)
    # Every site's personalised model (its "local" model) is scored on every site's test cases.
    assert {"site-1", "site-2"} <= set(result.results.model_names())
    # site-1's personalised phase ran on Ray as well: two fit() calls per round.
    assert "fedseg site-1: Ray round 4 on 2 worker(s)" in log
