"""Recipe levers: declared alternatives to parts of a card's recipe, set per run or job, the same everywhere."""

import json

import pytest
import torch

from fedseg.flare.jobs import JobSpec, export_job
from fedseg.networks import TaskNetwork, build_network
from fedseg.tasks import get_task
from fedseg.transforms import augmentation


def test_unknown_levers_and_choices_are_refused_naming_what_is_allowed():
    spec = get_task("spleen", "tiny")
    with pytest.raises(ValueError, match=r"unknown recipe lever 'optimiser'; choose from augment, norm"):
        spec.with_levers({"optimiser": "adam"})
    with pytest.raises(ValueError, match=r"recipe lever 'norm' has no choice 'group'; choose from batch, instance"):
        spec.with_levers({"norm": "group"})
    assert spec.with_levers({"augment": "card", "norm": "batch"}) == spec  # the card's own choices change nothing


def test_scanner_augmentation_covers_the_scanner_profiles_in_network_units():
    card = get_task("spleen", "tiny")
    spec = card.with_levers({"augment": "scanner"})
    names = [type(t).__name__ for t in augmentation(spec)]
    for added in ("RandScaleIntensityd", "RandGaussianNoised", "RandGaussianSmoothd", "RandAdjustContrastd"):
        assert added in names and added not in [type(t).__name__ for t in augmentation(card)]
    width = card.intensity.a_max - card.intensity.a_min  # the CT window in HU
    assert spec.augment.shift_offset * width == pytest.approx(40.0)  # the profiles' +-40 HU offset
    assert spec.augment.noise_std * width == pytest.approx(30.0)  # and their noise of up to 30 HU
    assert spec.levers == (("augment", "scanner"),)


def test_instance_norm_changes_the_network_on_both_sides_of_a_job(tmp_path):
    spec = get_task("spleen", "tiny", levers={"norm": "instance"})
    net = build_network(spec)
    assert not any("running_mean" in k for k in net.state_dict())
    server = TaskNetwork("spleen", "tiny", norm="instance")
    assert list(server.state_dict()) == list(net.state_dict())
    job = JobSpec("spleen", recipe=(("norm", "instance"), ("augment", "scanner")))
    assert job.name == "spleen_fedavg_augment-scanner_norm-instance"
    d = export_job(job, tmp_path)
    server_cfg = json.loads((d / "app/config/config_fed_server.json").read_text())
    persistor = next(c for c in server_cfg["components"] if c["id"] == "persistor")
    assert persistor["args"]["model"]["args"] == {"task": "spleen", "variant": "tiny", "norm": "instance"}
    client = (d / "app/config/config_fed_client.json").read_text()
    assert "--recipe augment=scanner --recipe norm=instance" in client
    with pytest.raises(ValueError, match="unknown recipe lever"):
        JobSpec("spleen", recipe=(("colour", "red"),))


def test_a_model_file_records_its_levers(tmp_path):
    from fedseg.checkpoint import load_model, save_model

    spec = get_task("spleen", "tiny", levers={"norm": "instance"})
    path = save_model(tmp_path / "m.pt", build_network(spec).state_dict(), spec)
    assert torch.load(path, weights_only=True)["recipe"] == [["norm", "instance"]]
    load_model(path, spec)
    with pytest.raises(Exception, match="m.pt"):  # the card's batch-norm network does not take it
        load_model(path, get_task("spleen", "tiny"))


def test_half_batch_takes_twice_the_steps_per_epoch(spleen_site):
    from fedseg.engine import Runtime, SegmentationEngine
    from fedseg.site_config import load_site_config
    from fedseg.site_data import open_site_data

    card = get_task("spleen", "tiny")
    half = card.with_levers({"batch": "half"})
    assert (card.batch_size, half.batch_size) == (2, 1) and half.levers == (("batch", "half"),)
    items = open_site_data(card, load_site_config(spleen_site)).items("training")
    steps = [SegmentationEngine(s, Runtime.create("cpu", num_threads=1)).train_data(items).batches_per_epoch
             for s in (card, half)]
    assert steps == [len(items) // 2, len(items)]


def test_per_case_intensity_cancels_a_scanners_gain_and_offset(tmp_path):
    import nibabel as nib
    import numpy as np

    from fedseg.bundle import preprocessing_config
    from fedseg.transforms import eval_transforms

    rng = np.random.default_rng(0)
    tissue = np.full((40, 40, 20), -1000.0, np.float32)  # air around a block of soft tissue
    tissue[8:32, 8:32, 4:16] = rng.uniform(0, 100, (24, 24, 12))
    affine = np.diag([3.0, 3.0, 4.0, 1.0])  # already on the tiny variant's grid
    paths = []
    for name, volume in (("a", tissue), ("b", np.where(tissue > -500, tissue * 1.1 + 10, tissue))):
        paths.append(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(volume.astype(np.float32), affine), str(paths[-1]))
    card = get_task("spleen", "tiny")
    case = card.with_levers({"intensity": "case"})
    assert case.levers == (("intensity", "case"),) and case.intensity.per_case
    ours = [eval_transforms(case, with_label=False)({"image": str(p)})["image"] for p in paths]
    theirs = [eval_transforms(card, with_label=False)({"image": str(p)})["image"] for p in paths]
    assert (theirs[0] - theirs[1]).abs().max() > 0.03  # the card's window keeps the scanner's difference
    assert (ours[0] - ours[1]).abs().max() < 1e-4
    body = ours[0][ours[0] != 0]
    assert abs(float(body.mean())) < 1e-4 and abs(float(body.std()) - 1) < 1e-2
    # The bundle's inference config does the same.
    assert preprocessing_config(case)[-2] == {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True}
    assert all(step["_target_"] != "NormalizeIntensityd" for step in preprocessing_config(card))
    with pytest.raises(ValueError, match="intensity=case applies to a CT window; task 'prostate'"):
        get_task("prostate", "tiny", levers={"intensity": "case"})


def test_per_case_intensity_still_crops_around_organs_darker_than_the_case_mean():
    import numpy as np
    import torch
    from monai import transforms as mt

    from fedseg.transforms import augmentation

    # A z-scored case: the liver is the darker tissue, below 0, the tumour darker still; both far
    # enough inside that a patch can be centred on them.
    image = torch.zeros((1, 128, 128, 96))
    image[0, 8:120, 8:120, 4:92] = 1.0
    image[0, 64:120, 8:120, 4:92] = -0.8
    label = torch.zeros((1, 128, 128, 96), dtype=torch.uint8)
    label[0, 70:114, 20:108, 10:86] = 1
    label[0, 86:96, 58:68, 42:52] = 2
    image[label > 1] = -1.5
    spec = get_task("liver", "tiny", levers={"intensity": "case"})
    centres = []
    crop = mt.Compose(augmentation(spec)[:2])  # the pad and the random crop
    crop.set_random_state(seed=0)
    for _ in range(20):
        for patch in crop({"image": image, "label": label}):
            c = tuple(s // 2 for s in patch["label"].shape[1:])
            centres.append(int(patch["label"][(0, *c)]))
    counts = np.bincount(centres, minlength=3)
    # Every class is sampled as the recipe's ratios ask (1:1:2), none silently dropped.
    assert counts[1] > 0.1 * counts.sum() and counts[2] > 0.3 * counts.sum(), counts
