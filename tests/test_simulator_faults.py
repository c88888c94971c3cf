"""Faults in a real simulator run: a crashing site, a site whose loss goes NaN, too few sites left."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedseg.data.synth import synthesize
from fedseg.flare.jobs import JobSpec
from fedseg.flare.simulate import simulate

pytestmark = pytest.mark.slow
FAULT_CLIENT = Path(__file__).parent / "faults" / "fault_client.py"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    synthesize("spleen", root / "data", cases=9, seed=5, workers=2)
    return root / "data"


def _run(data, tmp_path, monkeypatch, fault, sites, min_clients=2):
    monkeypatch.setenv("FEDSEG_TEST_FAULT", fault)
    job = JobSpec("spleen", num_rounds=3, local_epochs=1, min_clients=min_clients)
    return simulate(job, n_sites=sites, data_dir=data, run_dir=tmp_path / "run", cases=9, client_script=FAULT_CLIENT)


def _log(tmp_path):
    return (tmp_path / "run" / "simulator.log").read_text()


@pytest.fixture(scope="module")
def crash_and_nan(data, tmp_path_factory):
    """One 3-site run in which site-2 crashes and site-3's loss turns NaN from round 1 on (site-1 carries on)."""
    tmp_path = tmp_path_factory.mktemp("crash_and_nan")
    with pytest.MonkeyPatch.context() as monkeypatch:
        result = _run(data, tmp_path, monkeypatch, "site-2:raise:1,site-3:nan:1", sites=3, min_clients=1)
    return result, tmp_path


def test_a_crashing_site_does_not_stop_the_job(crash_and_nan):
    result, tmp_path = crash_and_nan
    assert result.failed_sites == ["site-2", "site-3"]  # site-3 withheld its updates: it failed rounds too
    rounds = result.results.rounds
    # From round 1 on only site-1's updates are averaged: site-2 crashed, site-3 withheld its NaN updates.
    averaged = [sorted(s["name"] for s in r["sites"]) for r in rounds]
    assert averaged == [["site-1", "site-2", "site-3"], ["site-1"], ["site-1"]]
    log = _log(tmp_path)
    assert "fedseg: round 1: no usable update from site-2, site-3; averaging site-1" in log
    assert set(result.models["final"]) == {"site-1", "site-3", "pooled"}
    assert json.loads((tmp_path / "run" / "results.json").read_text())["failed_sites"] == ["site-2", "site-3"]


def test_a_nan_site_is_left_out_and_the_global_model_stays_finite(crash_and_nan):
    result, tmp_path = crash_and_nan
    log = _log(tmp_path)
    for r in (1, 2):
        assert f"fedseg: update from site-3 in round {r} excluded from the average: non-finite loss" in log
    state = torch.load(result.workspace / "server/simulate_job/app_server/FL_global_model.pt", weights_only=True)
    assert all(np.isfinite(np.asarray(v)).all() for v in state["model"].values())
    # site-3 is still alive: it scores every model in cross-site evaluation (the crashed site-2 does not).
    assert sorted(result.results.cross_site) == ["site-1", "site-3"]


def test_the_job_stops_cleanly_when_fewer_sites_than_its_minimum_remain(data, tmp_path, monkeypatch):
    result = _run(data, tmp_path, monkeypatch, "site-2:raise:1", sites=2)
    ended = result.results.ended
    assert ended["reason"] == "too_few_sites" and ended["sites"] == ["site-2"] and ended["round"] == 1
    assert "fewer than the job's minimum of 2" in _log(tmp_path)
    # Not a panic: the round-0 global model is kept and the remaining site still scores it.
    assert (result.workspace / "server/simulate_job/app_server/FL_global_model.pt").is_file()
    assert result.results.sites == ["site-1"]
    body = json.loads((tmp_path / "run" / "results.json").read_text())
    assert body["ended"]["reason"] == "too_few_sites" and "site-2" in body["failed_sites"]
