"""Restarting a stopped federated job from its last global model, and the privacy options."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fedseg.data.synth import synthesize
from fedseg.flare.client import weights_norm
from fedseg.flare.jobs import JobSpec
from fedseg.flare.simulate import resume_run, simulate
from fedseg.networks import NORM_LAYERS
from fedseg.tasks import get_task

pytestmark = pytest.mark.slow
FAULT_CLIENT = Path(__file__).parent / "faults" / "fault_client.py"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume") / "data"
    synthesize("spleen", root, cases=8, seed=7, workers=2)
    return root


def _history(workspace: Path, site: str) -> list[dict]:
    lines = (workspace / site / "fedseg" / "spleen_rounds.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_a_stopped_job_restarts_from_its_last_global_model(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    job = JobSpec("spleen", num_rounds=4, local_epochs=1)
    monkeypatch.setenv("FEDSEG_TEST_FAULT", "site-2:raise:2")  # both sites needed: the job stops in round 2
    stopped = simulate(job, n_sites=2, data_dir=data, run_dir=run, cases=8, client_script=FAULT_CLIENT,
                       report=False)
    assert not stopped.results.finished and stopped.results.ended["round"] == 2
    saved = torch.load(stopped.workspace / "server/simulate_job/app_server/FL_global_model.pt", weights_only=True)
    assert saved["meta_props"]["current_round"] == 1
    monkeypatch.delenv("FEDSEG_TEST_FAULT")

    result = resume_run(run)
    assert [r["round"] for r in result.results.rounds] == [2, 3]
    first = _history(result.workspace, "site-1")[0]
    assert first["round"] == 2
    # The resumed run started from exactly the saved model ...
    assert math.isclose(first["global_weights_norm"], weights_norm(saved["model"]), rel_tol=1e-6)
    # ... and picked up the learning-rate schedule where the stopped run left it.
    assert first["learning_rate"] < 0.7 * get_task("spleen", "tiny").optimizer.lr
    final = torch.load(result.workspace / "server/simulate_job/app_server/FL_global_model.pt", weights_only=True)
    assert final["meta_props"]["current_round"] == 3
    assert set(result.models["final"]) == {"site-1", "site-2", "pooled"}


def test_exclude_keeps_normalization_layers_at_each_site(data, tmp_path):
    job = JobSpec("spleen", num_rounds=2, local_epochs=1, privacy="exclude")
    result = simulate(job, n_sites=2, data_dir=data, run_dir=tmp_path / "run", cases=8, report=False)
    ws = result.workspace
    glob = torch.load(ws / "server/simulate_job/app_server/FL_global_model.pt", weights_only=True)["model"]
    local = [torch.load(ws / f"site-{k}/fedseg/spleen_local_model.pt", weights_only=True)["state_dict"] for k in (1, 2)]
    import re

    norm = [k for k in glob if re.search(NORM_LAYERS, k) and k.endswith("running_mean")]
    conv = [k for k in glob if k.endswith("conv.weight")]
    assert norm and conv
    # The server never saw normalization statistics: they are still at their initial value (zeros) ...
    assert all(np.allclose(np.asarray(glob[k]), 0.0) for k in norm)
    # ... while each site trained its own, and they differ between sites.
    assert any(not torch.allclose(local[0][k], local[1][k]) for k in norm)
    assert all(not np.allclose(np.asarray(glob[k]), 0.0) for k in conv[:3])
    assert set(result.models["final"]) == {"site-1", "site-2", "pooled"}


@pytest.fixture(scope="module")
def percentile_from_pretrained(data, tmp_path_factory):
    """One job for two behaviours: percentile privacy on the updates, and a given starting model."""
    from fedseg.checkpoint import save_model
    from fedseg.networks import build_network

    tmp_path = tmp_path_factory.mktemp("percentile_pretrained")
    spec = get_task("spleen", "tiny")
    torch.manual_seed(123)
    pretrained = build_network(spec).state_dict()
    model = save_model(tmp_path / "pretrained.pt", pretrained, spec)
    job = JobSpec("spleen", num_rounds=2, local_epochs=1, privacy="percentile")
    result = simulate(job, n_sites=2, data_dir=data, run_dir=tmp_path / "run", cases=8, initial_weights=model)
    return job, result, pretrained, tmp_path / "run"


def test_percentile_privacy_runs_on_weight_differences(percentile_from_pretrained):
    job, result, _, run = percentile_from_pretrained
    log = (run / "simulator.log").read_text()
    assert "cutoff" in log  # NVFlare's PercentilePrivacy ran on every update
    # ... and the server's update guard (in the job) let every site's weight differences into the average.
    server = (run / "job" / job.name / "app/config/config_fed_server.json").read_text()
    assert "fedseg.flare.guard.UpdateGuard" in server and "excluded from the average" not in log
    cfg = json.loads((run / "job" / job.name / "app/config/config_fed_client.json").read_text())
    assert cfg["executors"][0]["executor"]["args"].get("params_transfer_type") == "DIFF"
    assert set(result.models["final"]) == {"site-1", "site-2", "pooled"}


def test_a_job_starts_from_a_given_model(percentile_from_pretrained):
    """The server's first global model is the pretrained one, as each site received it in round 0."""
    _, result, pretrained, _ = percentile_from_pretrained
    first = _history(result.workspace, "site-1")[0]
    assert first["round"] == 0 and math.isclose(first["global_weights_norm"], weights_norm(pretrained), rel_tol=1e-6)
