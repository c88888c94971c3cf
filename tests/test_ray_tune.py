"""``fedseg tune``: a small but real Ray Tune search on the tiny spleen phantoms."""

import json

import pytest

from fedseg.cli import main
from fedseg.ray.tune import LR_RANGE, NUM_SAMPLES_CHOICES, WEIGHT_DECAY_CHOICES
from fedseg.tasks import get_task

pytestmark = pytest.mark.slow
TRIALS, EPOCHS = 3, 3


@pytest.fixture(scope="module")
def tuned(spleen_site, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune")
    code = main(["tune", "--task", "spleen", "--variant", "tiny", "--site-config", str(spleen_site),
                 "--trials", str(TRIALS), "--epochs", str(EPOCHS), "--grace-epochs", "1", "--out", str(out)])
    return code, json.loads((out / "tune_results.json").read_text())


def test_tune_tries_the_card_first_and_searches_the_declared_space(tuned):
    code, body = tuned
    assert code == 0
    trials = body["trials"]
    assert len(trials) == TRIALS
    spec = get_task("spleen", "tiny")
    assert trials[0]["config"] == {"lr": spec.optimizer.lr, "num_samples": spec.num_samples,
                                   "weight_decay": spec.optimizer.weight_decay}
    for t in trials:
        c = t["config"]
        assert spec.optimizer.lr * LR_RANGE[0] <= c["lr"] <= spec.optimizer.lr * LR_RANGE[1]
        assert c["num_samples"] in NUM_SAMPLES_CHOICES and c["weight_decay"] in WEIGHT_DECAY_CHOICES
        # every trial trained and was scored after each epoch it ran (ASHA may end it early)
        assert 1 <= t["epochs"] <= EPOCHS and len(t["val_dice_by_epoch"]) == t["epochs"]
        assert t["stopped_early"] == (t["epochs"] < EPOCHS)
    assert len({json.dumps(t["config"], sort_keys=True) for t in trials}) == TRIALS


def test_tune_reports_the_best_trial_and_its_validation_dice(tuned):
    _, body = tuned
    best = max(body["trials"], key=lambda t: t["best_val_dice"])
    assert body["best"] == {"config": best["config"], "val_dice": best["best_val_dice"], "epoch": best["best_epoch"]}
    assert body["best"]["val_dice"] == pytest.approx(max(best["val_dice_by_epoch"]), abs=1e-4)
    assert best["val_dice_by_epoch"][best["best_epoch"] - 1] == pytest.approx(best["best_val_dice"], abs=1e-4)
    assert body["validation_cases"] == 2 and body["scheduler"].startswith("ASHA")
