"""Liver and prostate, federated end to end in the NVFlare simulator (2 sites, 2 rounds)."""

import json

import pytest

from fedseg.data.synth import synthesize
from fedseg.flare.jobs import JobSpec
from fedseg.flare.simulate import simulate

pytestmark = pytest.mark.slow

CLASSES = {"liver": ["liver", "tumour"], "prostate": ["PZ", "TZ"]}


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
