"""A Ray-backed FL site in the NVFlare simulator: site-1 trains on its own Ray (2 CPU workers), site-2 locally."""

import json

import pytest
import torch

from fedseg.data.split import split_dataset
from conftest import assert_global_is_case_weighted_average
from fedseg.data.synth import synthesize
from fedseg.engine import Runtime, SegmentationEngine
from fedseg.flare.jobs import JobSpec, export_job
from fedseg.flare.simulate import run_simulator
from fedseg.site_config import write_site_config
from fedseg.tasks import get_task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_sim")
    data = root / "data"
    synthesize("spleen", data, cases=12, seed=2, workers=2)
    # shares 1:2 -> site-1 (Ray, 2 workers) trains on 2 cases, site-2 (local) on 4.
    splits = split_dataset(data, 2, data / "splits", seed=0, shares=[1, 2])
    configs = root / "site_configs"
    common = {"device": "cpu", "num_threads": 1, "cache_rate": 1.0, "num_workers": 0}
    write_site_config(configs / "site-1.yaml", "site-1", {"spleen": (data, splits["site-1"])}, **common,
                      backend="ray", ray={"workers": 2})
    write_site_config(configs / "site-2.yaml", "site-2", {"spleen": (data, splits["site-2"])}, **common)
    # One round keeps the test short: each Ray round is a fit() with ~20 s of start-up.
    job_dir = export_job(JobSpec("spleen", num_rounds=1, local_epochs=1), root / "job")
    workspace = root / "workspace"
    run_simulator(job_dir, workspace, 2, site_config_dir=configs, log_path=root / "simulator.log")
    n = [len(json.loads(splits[f"site-{k}"].read_text())["training"]) for k in (1, 2)]
    return workspace, n, (root / "simulator.log").read_text()


def test_the_ray_site_trained_on_its_ray_workers(mixed):
    _, _, log = mixed
    assert "fedseg site-1: Ray round 1 on 2 worker(s)" in log
    assert "fedseg site-2: Ray round" not in log
    assert "Disassembly of" not in log  # Ray's bytecode dump kept out of the site log


def test_fedavg_averages_the_ray_site_with_the_local_one_by_training_cases(mixed):
    ws, n, _ = mixed
    assert n == [2, 4]
    # site-1 (on Ray) sent its 2 training cases as the weight of its update
    assert_global_is_case_weighted_average(ws, n, local_round=0)


def test_the_ray_site_started_from_the_global_model(mixed):
    """Both sites took one step from the same global weights, so their models are nearly equal,
    while a network initialised on its own is far from either."""
    ws, _, _ = mixed
    local = [torch.load(ws / f"site-{k}" / "fedseg" / "spleen_local_model.pt", weights_only=True)["state_dict"]
             for k in (1, 2)]
    fresh = SegmentationEngine(get_task("spleen", "tiny"), Runtime.create("cpu"), seed=123).get_weights()
    params = [k for k in local[0] if "running" not in k and local[0][k].dtype.is_floating_point]

    def dist(a, b):
        return sum(float((a[k].double() - b[k].double()).norm()) ** 2 for k in params) ** 0.5

    assert dist(local[0], local[1]) < 0.1 * dist(local[0], fresh)
