"""``fedseg tune --federated``: two trials, each a real NVFlare simulator job, end to end."""

import json
from pathlib import Path

import psutil
import pytest

from fedseg.cli import main
from fedseg.flare.jobs import JobSpec
from fedseg.flare.results import round_records
from fedseg.ray.fed_tune import (Federation, card_config, global_val_dice, local_epoch_choices, search_space,
                                 SEARCHED_LEVERS, trial_job, trial_setting)
from fedseg.tasks.spec import DEFAULTS

TRIALS, EPOCHS = 2, 4
FED = Federation("spleen", "tiny", {"site-1": "s1.yaml"}, "data", "init.pt", 12, 0, "trials")


def test_the_search_space_comes_from_the_algorithm_registry_and_the_card_is_the_committed_job():
    pytest.importorskip("ray")
    space = search_space(("fedavg", "fedprox", "fedopt"), EPOCHS)
    assert set(space) == {"algorithm", "local_epochs", "augment", "batch", "fedprox.mu", "fedopt.server_lr",
                          "fedopt.server_momentum"}
    assert local_epoch_choices(EPOCHS) == [1, 2] and local_epoch_choices(12) == [1, 2, 3, 4, 6]
    card = trial_setting(card_config("spleen", ("fedavg", "fedprox"), 12))
    # spleen's committed schedule: 6 local epochs per round, FedAvg, the card's augmentation and batch
    assert card == {"algorithm": "fedavg", "options": {}, "local_epochs": 6, "augment": "card", "batch": "card"}
    half = trial_job(FED, {**card, "batch": "half"})
    assert dict(half.recipe) == {"batch": "half"}  # the job keeps only the levers that differ from the card
    prox = trial_setting({**card_config("spleen", ("fedprox",), 12), "algorithm": "fedprox"})
    assert prox["options"] == {"mu": 0.01}


def _server_job(run: Path, ran: dict) -> Path:
    """A trial's server job folder (SimEnv's layout under the trial's run folder)."""
    return run / "workspace" / JobSpec(**ran).name / "server" / "simulate_job"


def first_round_dice(out: Path) -> float:
    """Round 0's global validation Dice (the seeded start) of the first trial that has one."""
    for run in sorted((out / "trials").iterdir()):
        ran = json.loads((run / "run.json").read_text())["job"]
        records = round_records(_server_job(run, ran))
        if records:
            return global_val_dice(records[0])
    raise AssertionError("no trial recorded a round")


@pytest.mark.slow
def test_federated_tune_runs_simulator_jobs_as_trials_and_leaves_no_process(spleen_dataset, tmp_path):
    out = tmp_path / "fedtune"
    code = main(["tune", "--federated", "--task", "spleen", "--variant", "tiny", "--sites", "2",
                 "--data", str(spleen_dataset), "--algorithms", "fedavg", "fedprox", "--trials", str(TRIALS),
                 "--epochs", str(EPOCHS), "--grace-epochs", "1", "--out", str(out)])
    assert code == 0
    body = json.loads((out / "tune_results.json").read_text())
    trials = body["trials"]
    assert len(trials) == TRIALS and body["federated"] and body["sites"] == ["site-1", "site-2"]
    assert trials[0]["setting"] == body["card"] == {"algorithm": "fedavg", "options": {}, "local_epochs": 2,
                                                    "augment": "card", "batch": "card"}
    for t in trials:
        assert "error" not in t, t
        le = t["setting"]["local_epochs"]
        # one report per round, each after that many more epochs; ASHA may end a trial after a round
        assert t["epochs_by_round"] == [le * (k + 1) for k in range(t["rounds"])]
        assert len(t["val_dice_by_round"]) == t["rounds"] >= 1
        assert all(0.0 <= d <= 1.0 for d in t["val_dice_by_round"])
        # Each trial ran its own NVFlare job, with its setting, from the one seeded start; what it
        # reported for a round is what the server recorded for that round's global model.
        run = Path(t["run_dir"])
        assert run.parent == out / "trials"
        ran = json.loads((run / "run.json").read_text())["job"]
        assert (ran["algorithm"], ran["local_epochs"], ran["num_rounds"]) == (t["setting"]["algorithm"], le,
                                                                              EPOCHS // le)
        assert dict(ran["algorithm_options"]) == t["setting"]["options"]
        assert dict(map(tuple, ran["recipe"])) == {lever: t["setting"][lever] for lever in SEARCHED_LEVERS
                                                   if t["setting"][lever] != DEFAULTS[lever]}
        assert (run / "job" / JobSpec(**ran).name / "meta.json").is_file()
        recorded = {r["round"]: global_val_dice(r) for r in round_records(_server_job(run, ran))}
        assert recorded[0] == pytest.approx(first_round_dice(out)), "every trial started from the same model"
        for k, dice in enumerate(t["val_dice_by_round"][: ran["num_rounds"] - 1], start=1):
            assert dice == pytest.approx(recorded[k], abs=1e-4)
    best = max(trials, key=lambda t: t["best_val_dice"])
    assert body["best"] == {"setting": best["setting"], "val_dice": best["best_val_dice"],
                            "epochs": best["best_epochs"]}
    assert (out / "initial_seed0.pt").is_file()
    # Nothing this run started is left: no process names the run's folder.
    left = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(out) in part for part in proc.info["cmdline"] or []):
                left.append(proc.pid)
        except psutil.Error:
            continue
    assert not left, f"processes left running: {left}"
