import pickle

import pytest
import torch

from fedseg.checkpoint import load_model, save_model
from fedseg.errors import CheckpointError
from fedseg.networks import build_network
from fedseg.tasks import get_task


class Sneaky:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_round_trip_and_nvflare_layout(tmp_path):
    spec = get_task("spleen", "tiny")
    weights = build_network(spec).state_dict()
    path = save_model(tmp_path / "m.pt", weights, spec, epoch=3)
    loaded = load_model(path, spec)
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    # NVFlare's persistor writes {"model": state_dict, ...}.
    torch.save({"model": weights, "train_conf": {"train": {}}}, tmp_path / "FL_global_model.pt")
    assert load_model(tmp_path / "FL_global_model.pt", spec).keys() == weights.keys()


def test_weights_that_do_not_fit_are_refused_with_every_mismatch(tmp_path):
    tiny, full = get_task("spleen", "tiny"), get_task("spleen")
    path = save_model(tmp_path / "tiny.pt", build_network(tiny).state_dict(), tiny)
    with pytest.raises(CheckpointError) as err:
        load_model(path, full)
    msg = str(err.value)
    assert "does not fit task 'spleen' (full variant)" in msg and "shape" in msg and "mismatch(es)" in msg
    state = build_network(tiny).state_dict()
    state.pop(next(iter(state)))
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="missing .*unexpected extra.weight|unexpected extra.weight"):
        load_model(tmp_path / "edited.pt", tiny)


def test_pickled_code_is_never_executed(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": Sneaky()}, fh)
    with pytest.raises(CheckpointError, match="not a loadable weights-only model file"):
        load_model(path, get_task("spleen", "tiny"))
    assert "code ran" not in capsys.readouterr().out


def test_model_for_another_task_is_refused(tmp_path):
    spec = get_task("spleen", "tiny")
    path = save_model(tmp_path / "m.pt", build_network(spec).state_dict(), spec)
    payload = torch.load(path, weights_only=True)
    payload["task"] = "liver"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="trained for task 'liver'"):
        load_model(path, spec)
