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


@pytest.mark.parametrize("content, reason", [
    (b"hello, this is a note\n", "it is a text file"),
    (b'{"weights": []}', r"it is a text file \(JSON\?\)"),
    (b"", "it is empty"),
    (bytes(range(7, 250)) * 3, "its contents are not a PyTorch file"),
])
def test_files_that_are_not_models_are_named_as_such(tmp_path, content, reason):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"model.pt: not a model file: {reason}"):
        load_model(path, get_task("spleen", "tiny"))


def test_an_image_given_as_model_is_named(tmp_path, real_ct):
    import gzip

    with pytest.raises(CheckpointError, match=r"ct.nii.gz: not a model file: it is gzip-compressed data \(a .nii.gz image\?\)"):
        load_model(real_ct, get_task("spleen", "tiny"))
    plain = tmp_path / "ct.nii"
    plain.write_bytes(gzip.decompress(real_ct.read_bytes()))
    with pytest.raises(CheckpointError, match="ct.nii: not a model file: it is a NIfTI image"):
        load_model(plain, get_task("spleen", "tiny"))
    with pytest.raises(CheckpointError, match="not a model file: it is a folder"):
        load_model(tmp_path, get_task("spleen", "tiny"))


# A pretrained start ------------------------------------------------------------------------------
def _bundle(root, weights, prefix=""):
    """A MONAI bundle folder as the Model Zoo ships it: configs/ and models/model.pt (a bare state dict)."""
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "metadata.json").write_text("{}")
    (root / "models").mkdir()
    torch.save({prefix + k: v for k, v in weights.items()}, root / "models" / "model.pt")
    return root


@pytest.mark.parametrize("prefix", ["", "module."])
def test_a_monai_bundle_whose_network_matches_the_full_spleen_task_is_a_starting_point(tmp_path, prefix):
    from monai.networks.nets import UNet

    from fedseg.checkpoint import load_initial_model

    # The Model Zoo's spleen_ct_segmentation network, as its inference.json declares it.
    zoo = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(16, 32, 64, 128, 256),
               strides=(2, 2, 2, 2), num_res_units=2, norm="batch").state_dict()
    bundle = _bundle(tmp_path / "spleen_ct_segmentation", zoo, prefix)
    for given in (bundle, bundle / "models" / "model.pt"):
        state = load_initial_model(given, get_task("spleen"))
        assert state.keys() == zoo.keys() and all(torch.equal(state[k], zoo[k]) for k in zoo)


def test_a_starting_point_that_does_not_fit_is_refused_with_the_mismatches(tmp_path):
    from fedseg.checkpoint import load_initial_model

    tiny = build_network(get_task("spleen", "tiny")).state_dict()
    bundle = _bundle(tmp_path / "b", tiny)
    with pytest.raises(CheckpointError, match=r"does not fit task 'spleen' \(full variant\); \d+ mismatch"):
        load_initial_model(bundle, get_task("spleen"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a MONAI bundle"):
        load_initial_model(tmp_path / "empty", get_task("spleen"))
    liver = save_model(tmp_path / "liver.pt", build_network(get_task("liver", "tiny")).state_dict(),
                       get_task("liver", "tiny"))
    with pytest.raises(CheckpointError, match="trained for task 'liver'"):
        load_initial_model(liver, get_task("spleen", "tiny"))


def test_a_job_exported_with_an_initial_model_ships_it_for_the_servers_persistor(tmp_path):
    import json

    from fedseg.flare.jobs import SHIPPED_INITIAL_MODEL, JobSpec, export_job

    spec = get_task("spleen", "tiny")
    weights = build_network(spec).state_dict()
    model = save_model(tmp_path / "pretrained.pt", weights, spec)
    job_dir = export_job(JobSpec("spleen", num_rounds=2), tmp_path / "jobs", initial_weights=model)
    server = json.loads((job_dir / "app/config/config_fed_server.json").read_text())
    persistor = next(c for c in server["components"] if c["id"] == "persistor")
    assert persistor["args"]["source_ckpt_file_full_name"] == SHIPPED_INITIAL_MODEL
    shipped = torch.load(job_dir / "app" / "custom" / SHIPPED_INITIAL_MODEL, weights_only=True)["model"]
    assert all(torch.equal(shipped[k], weights[k]) for k in weights)
    wrong = save_model(tmp_path / "full.pt", build_network(get_task("spleen")).state_dict(), get_task("spleen"))
    with pytest.raises(CheckpointError, match="does not fit"):
        export_job(JobSpec("spleen", num_rounds=2), tmp_path / "jobs2", initial_weights=wrong)


def test_train_init_starts_from_the_given_model_and_refuses_one_that_does_not_fit(trained_spleen, spleen_site,
                                                                                   tmp_path, capsys):
    import json

    from fedseg.cli import main

    engine, data, model = trained_spleen
    trained = engine.evaluate(engine.eval_data(data.items("validation"))).mean
    args = ["train", "--task", "spleen", "--variant", "tiny", "--site-config", str(spleen_site), "--epochs", "1",
            "--val-every", "1", "--tracking", "none"]
    assert main([*args, "--init", str(model), "--out", str(tmp_path / "pre")]) == 0
    assert main([*args, "--out", str(tmp_path / "scratch")]) == 0
    pre, scratch = (json.loads((tmp_path / run / "results.json").read_text())["history"][0]["val_dice"]
                    for run in ("pre", "scratch"))
    # One epoch from the trained model keeps most of its Dice; one epoch from random weights has little.
    assert pre > max(trained - 0.2, scratch + 0.2), (trained, pre, scratch)
    wrong = save_model(tmp_path / "full.pt", build_network(get_task("spleen")).state_dict(), get_task("spleen"))
    assert main([*args, "--init", str(wrong), "--out", str(tmp_path / "refused")]) == 2
    assert "does not fit" in capsys.readouterr().err and not (tmp_path / "refused").exists()
