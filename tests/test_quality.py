"""The quality measurement's machinery: bootstrap intervals, paired differences, the summary, and (slow) one
smallest real run of centralized and FedAvg from the same initial weights. No Dice figure is asserted."""

from __future__ import annotations

import json
import math
import re
import sys

import numpy as np
import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO))

from bench.quality import Plan, _site_models, run_plan, summarize, table  # noqa: E402
from bench.stats import interval, paired_difference  # noqa: E402
from fedseg.checkpoint import load_model  # noqa: E402
from fedseg.networks import NORM_LAYERS  # noqa: E402
from fedseg.tasks import get_task  # noqa: E402


def test_the_interval_covers_the_mean_and_narrows_with_more_cases():
    rng = np.random.default_rng(0)
    few = {s: list(rng.normal(0.8, 0.1, 5)) for s in range(3)}
    many = {s: list(rng.normal(0.8, 0.1, 200)) for s in range(3)}
    a, b = interval(few, resamples=500), interval(many, resamples=500)
    assert a.low < a.mean < a.high and b.low < b.mean < b.high
    assert (b.high - b.low) < (a.high - a.low)
    assert (a.n_seeds, a.n_cases) == (3, 15)
    # Missing values (a case without the class) are left out, not counted as 0.
    assert interval({0: [1.0, None, float("nan")]}, resamples=50).mean == 1.0


def test_a_paired_difference_is_tighter_than_the_two_intervals_and_has_the_right_sign():
    rng = np.random.default_rng(1)
    hardness = {s: rng.uniform(0.3, 0.95, 30) for s in range(3)}  # the same cases are hard for both
    central = {s: list(h) for s, h in hardness.items()}
    fed = {s: list(h - 0.05 + rng.normal(0, 0.01, 30)) for s, h in hardness.items()}
    d = paired_difference(fed, central, resamples=1000)
    assert d.high < 0 and d.low < d.mean < d.high and d.mean == pytest.approx(-0.05, abs=0.01)
    spread = interval(central, resamples=1000)
    assert (d.high - d.low) < (spread.high - spread.low) / 3
    with pytest.raises(ValueError, match="same cases in the same order"):
        paired_difference({0: [0.1, 0.2]}, {0: [0.1]})


def test_the_summary_gives_every_method_its_intervals_and_difference_to_centralized():
    rng = np.random.default_rng(2)

    def method(offset):
        return {s: {"site-1": list(0.8 + offset + rng.normal(0, 0.02, 4)),
                    "site-2": list(0.7 + offset + rng.normal(0, 0.02, 4))} for s in (0, 1, 2)}

    scores = {"scanner2": {"centralized": method(0.0), "fedavg": method(-0.1)}}
    plan = Plan(splits=("scanner2",), methods=("centralized", "fedavg"), resamples=300)
    summary = summarize(scores, plan)["scanner2"]
    assert set(summary) == {"centralized", "fedavg"} and "minus_centralized" not in summary["centralized"]
    row = summary["fedavg"]
    assert set(row["sites"]) == {"site-1", "site-2"} and row["pooled"]["cases"] == 24
    assert row["minus_centralized"]["ci95"][1] < 0 < 1 - row["share_of_centralized"]
    assert "| scanner2 | fedavg |" in table({"scanner2": summary})


@pytest.mark.parametrize("bad, message", [
    (dict(methods=("fedavg",)), "needs the centralized method"),
    (dict(splits=("nowhere",)), "unknown split 'nowhere'"),
    (dict(methods=("centralized", "fedavg_1epoch"), rounds=3, local_epochs=1), None),
])
def test_a_plan_is_checked(bad, message):
    if message is None:
        assert Plan(**bad).epochs == 3
        return
    with pytest.raises(ValueError, match=message):
        Plan(**bad)


@pytest.mark.slow
def test_the_smallest_real_measurement_scores_every_method_on_the_same_cases(tmp_path):
    # One seed: the bootstrap over seeds is checked above on made-up scores; this checks the real runs.
    plan = Plan(splits=("scanner2",), methods=("centralized", "fedavg", "ditto", "fedbn"), seeds=(0,), rounds=1,
                local_epochs=1, train_cases=2, val_cases=1, test_cases=2, resamples=100)
    result = run_plan(plan, tmp_path)
    scores = result["scores"]["scanner2"]
    # The sites' own models are scored too (Ditto's personalised ones, FedBN's local ones with the
    # site's own normalization layers): each on its own site, and each site by the other's.
    own_models = {"ditto_personal_own", "ditto_personal_others", "fedbn_local_own", "fedbn_local_others"}
    assert own_models <= set(result["summary"]["scanner2"])
    assert "fedbn" not in scores  # its server model lacks normalization layers of its own: not scored
    for method in ("centralized", "fedavg", "ditto", *sorted(own_models)):
        for seed in (0,):
            assert {site: len(v) for site, v in scores[method][seed].items()} == {"site-1": 2, "site-2": 2}
    # FedBN: the server never received a normalization layer (its model keeps the initial ones) while
    # every other layer was averaged; each site's model holds normalization statistics of its own.
    spec = get_task("spleen", "tiny")
    start = load_model(tmp_path / "scanner2" / "initial_seed0.pt", spec)
    run = tmp_path / "scanner2" / "fedbn" / "seed0"
    server = load_model(next(run.glob("workspace/*/server/simulate_job/app_server/FL_global_model.pt")), spec)
    sites = [load_model(m, spec) for m in _site_models(run, {"site-1": None, "site-2": None}, spec, "local").values()]
    norm = [k for k in start if re.search(NORM_LAYERS, k) and k.endswith("running_mean")]
    other = [k for k in start if not re.search(NORM_LAYERS, k) and k.endswith("weight")]
    assert norm and other
    assert all(torch.equal(server[k], start[k]) for k in norm)
    # Both sites trained the same steps on the same number of cases: the server's layers are their mean.
    assert all(torch.allclose(server[k], (sites[0][k] + sites[1][k]) / 2, atol=1e-6) for k in other)
    assert not all(torch.equal(server[k], start[k]) for k in other)
    assert not torch.equal(sites[0][norm[0]], sites[1][norm[0]])
    row = result["summary"]["scanner2"]["fedavg"]
    assert row["pooled"]["seeds"] == 1 and row["pooled"]["cases"] >= 1
    assert all(math.isfinite(x) for x in row["minus_centralized"]["ci95"])
    # Both methods of a seed started from the one saved initial model.
    assert sorted(p.name for p in (tmp_path / "scanner2").glob("initial_seed*.pt")) == ["initial_seed0.pt"]
    # The round each federated run's global model first reached a validation Dice bar, from the server's records.
    from bench.quality import rounds_to_bar

    federated = ("fedavg", "ditto", "fedbn")
    assert rounds_to_bar(tmp_path, plan, 0.0) == {"scanner2": {m: {0: 0} for m in federated}}
    assert rounds_to_bar(tmp_path, plan, 1.01) == {"scanner2": {m: {0: None} for m in federated}}
    # A second call reuses every finished run (scores are cached per split, method and seed) and the
    # split itself: its files are not rewritten under a measurement that may be reading them.
    site_files = {f: f.stat().st_mtime_ns for f in (tmp_path / "scanner2" / "lists").rglob("*.nii.gz")}
    again = run_plan(plan, tmp_path)
    assert again["scores"] == result["scores"]
    assert site_files and {f: f.stat().st_mtime_ns for f in site_files} == site_files


def test_a_lever_that_changes_the_network_gets_its_own_seeded_start(tmp_path):
    from bench.quality import METHODS, Plan, _initial_model
    from fedseg.checkpoint import load_initial_model

    plan = Plan(seeds=(0,))
    card = _initial_model(plan, 0, tmp_path, METHODS["fedavg"])
    assert _initial_model(plan, 0, tmp_path, METHODS["fedavg_augscanner"]) == card  # same network, same start
    instance = _initial_model(plan, 0, tmp_path, METHODS["fedavg_instancenorm"])
    assert instance != card
    weights = load_initial_model(instance, METHODS["centralized_instancenorm"].spec(plan))
    assert not any("running_mean" in k for k in weights)
    with pytest.raises(Exception, match=instance.name):  # the card's batch-norm network does not take it
        load_initial_model(instance, METHODS["fedavg"].spec(plan))


def test_a_pretrained_start_is_one_model_trained_on_other_phantoms(tmp_path, monkeypatch):
    from bench import quality
    from fedseg.checkpoint import load_initial_model, save_seeded_model

    monkeypatch.setitem(quality.PRETRAIN, "cases", 2)  # a smaller run of the same code
    monkeypatch.setitem(quality.PRETRAIN, "iterations", 2)
    plan = quality.Plan(seeds=(0, 1))
    method = quality.METHODS["fedavg_pretrained"]
    first = quality._initial_model(plan, 0, tmp_path, method)
    assert quality._initial_model(plan, 1, tmp_path, method) == first  # every seed starts from it
    info = json.loads(next(tmp_path.glob("pretrain_phantoms_*/dataset.json")).read_text())
    assert len(info["training"]) == 2
    # Trained, not only another seed's network: it differs from the untrained network of its own seed.
    spec = method.spec(plan)
    untrained = load_initial_model(save_seeded_model(tmp_path / "untrained.pt", spec, quality.PRETRAIN["seed"]), spec)
    trained = load_initial_model(first, spec)
    assert any(not torch.equal(untrained[k], trained[k]) for k in untrained)
    monkeypatch.setitem(quality.PRETRAIN, "iterations", 3)  # other settings: another model, not the cached one
    assert quality._initial_model(plan, 0, tmp_path, method) != first
