"""Liver + tumour CT and prostate T2 + ADC MRI: phantoms, transforms, per-class metrics, refusals."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import make_site
from fedseg.engine import Runtime, SegmentationEngine
from fedseg.engine.metrics import DiceScores, case_dice
from fedseg.errors import DataError
from fedseg.site_config import load_site_config
from fedseg.site_data import open_site_data
from fedseg.tasks import get_task
from fedseg.transforms import eval_transforms, train_transforms


def _first(root):
    entry = json.loads((root / "dataset.json").read_text())["training"][0]
    return {k: str(root / v) for k, v in entry.items()}


def test_liver_phantoms_have_liver_and_some_tumours(liver_dataset):
    info = json.loads((liver_dataset / "dataset.json").read_text())
    assert info["labels"] == {"0": "background", "1": "liver", "2": "tumour"}
    tumour_cases = 0
    for entry in info["training"]:
        lbl = np.asarray(nib.load(str(liver_dataset / entry["label"])).dataobj)
        img = np.asarray(nib.load(str(liver_dataset / entry["image"])).dataobj).astype(float)
        assert set(np.unique(lbl)) <= {0, 1, 2} and (lbl == 1).sum() > 10_000
        if (lbl == 2).any():
            tumour_cases += 1
            assert img[lbl == 2].mean() < img[lbl == 1].mean()  # hypo-dense on average
    assert 1 <= tumour_cases < len(info["training"]) or tumour_cases == len(info["training"])


def test_prostate_phantoms_are_4d_t2_adc_with_msd_zone_labels(prostate_dataset):
    info = json.loads((prostate_dataset / "dataset.json").read_text())
    assert info["modality"] == {"0": "T2", "1": "ADC"} and info["labels"] == {"0": "background", "1": "PZ", "2": "TZ"}
    assert info["tensorImageSize"] == "4D"
    entry = info["training"][0]
    img, lbl = nib.load(str(prostate_dataset / entry["image"])), nib.load(str(prostate_dataset / entry["label"]))
    assert img.ndim == 4 and img.shape[3] == 2 and lbl.shape == img.shape[:3]
    zooms = img.header.get_zooms()[:3]
    assert zooms[0] < 0.9 and zooms[2] >= 3.0  # prostate-MRI anisotropy
    data, zones = np.asarray(img.dataobj).astype(float), np.asarray(lbl.dataobj)
    t2, adc = data[..., 0], data[..., 1]
    # Peripheral zone: brighter T2 and higher ADC than the transition zone.
    assert t2[zones == 1].mean() > t2[zones == 2].mean() and adc[zones == 1].mean() > adc[zones == 2].mean()


def test_liver_transforms_channels_patch_and_window(liver_dataset):
    spec = get_task("liver", "tiny")
    samples = train_transforms(spec, seed=0)(_first(liver_dataset))
    assert len(samples) == spec.num_samples
    for s in samples:
        assert tuple(s["image"].shape) == (1, *spec.patch_size)
        assert -0.11 <= float(s["image"].min()) and float(s["image"].max()) <= 1.11
        assert set(torch.unique(s["label"]).tolist()) <= {0, 1, 2}
    full = eval_transforms(spec)(_first(liver_dataset))
    assert float(full["image"].min()) == 0.0 and float(full["image"].max()) == 1.0


def test_prostate_transforms_two_channels_zscored(prostate_dataset):
    spec = get_task("prostate", "tiny")
    samples = train_transforms(spec, seed=0)(_first(prostate_dataset))
    assert all(tuple(s["image"].shape) == (2, *spec.patch_size) for s in samples)
    image = eval_transforms(spec)(_first(prostate_dataset))["image"]
    assert image.shape[0] == 2
    for channel in image:
        inside = channel[channel != 0]
        assert abs(float(inside.mean())) < 0.05 and abs(float(inside.std()) - 1.0) < 0.05


def test_class_names_come_from_dataset_json(prostate_dataset, tmp_path):
    info = json.loads((prostate_dataset / "dataset.json").read_text())
    info["labels"] = {"0": "background", "1": "peripheral zone", "2": "transition zone"}
    (prostate_dataset / "dataset.json").write_text(json.dumps(info))
    try:
        site = load_site_config(make_site(tmp_path, "site-1", "prostate", prostate_dataset,
                                          prostate_dataset / "splits" / "site-1.json"))
        spec = get_task("prostate", "tiny")
        data = open_site_data(spec, site)
        assert data.class_names == ("background", "peripheral zone", "transition zone")
        engine = SegmentationEngine(spec, Runtime.create("cpu"), class_names=data.class_names)
        metrics = engine.evaluate(engine.eval_data(data.items("test"))).as_metrics("val")
        assert {"val_dice_peripheral_zone", "val_dice_transition_zone", "val_dice"} <= set(metrics)
    finally:
        info["labels"] = {"0": "background", "1": "PZ", "2": "TZ"}
        (prostate_dataset / "dataset.json").write_text(json.dumps(info))


def _maps(label, pred):
    return torch.tensor(pred)[None, None], torch.tensor(label)[None, None]


def test_empty_tumour_rule():
    liver_only = [[1, 1, 0, 0], [1, 1, 0, 0]]
    with_tumour = [[1, 2, 0, 0], [1, 1, 0, 0]]
    # No tumour in label or prediction: left out of the tumour mean, not a false positive.
    dice, fp = case_dice(*_maps(liver_only, liver_only), 3, "nan")
    assert dice[0] == 1.0 and np.isnan(dice[1]) and fp == [False, False]
    # Tumour predicted where the label has none: still left out of the Dice mean, but counted.
    dice, fp = case_dice(*_maps(liver_only, with_tumour), 3, "nan")
    assert np.isnan(dice[1]) and fp == [False, True]
    # Under the alternative rule the same two cases score 1 and 0.
    assert case_dice(*_maps(liver_only, liver_only), 3, "one")[0][1] == 1.0
    assert case_dice(*_maps(liver_only, with_tumour), 3, "one")[0][1] == 0.0
    scores = DiceScores(("liver", "tumour"))
    scores.add(*case_dice(*_maps(liver_only, with_tumour), 3, "nan"))
    scores.add(*case_dice(*_maps(with_tumour, with_tumour), 3, "nan"))
    assert scores.per_class()["tumour"] == 1.0 and scores.counts()["tumour"] == 1
    assert scores.false_positives() == {"liver": 0, "tumour": 1}
    assert get_task("liver").empty_class_dice == "nan"


def test_3d_file_for_prostate_is_refused_before_training(prostate_dataset, tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    for name in ("dataset.json", "splits"):
        (root / name).symlink_to(prostate_dataset / name)
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir()
        for f in (prostate_dataset / sub).iterdir():
            (root / sub / f.name).symlink_to(f)
    entry = json.loads((root / "splits" / "site-1.json").read_text())["training"][0]
    src = nib.load(str(prostate_dataset / entry["image"]))
    (root / entry["image"]).unlink()
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj)[..., 0], src.affine), str(root / entry["image"]))
    # The root links to the shared fixture's files, outside it: allowed (with a warning) by the site.
    site = load_site_config(make_site(tmp_path, "site-1", "prostate", root, root / "splits" / "site-1.json",
                                      symlinks_outside_root="warn"))
    with pytest.raises(DataError, match=r"image has shape \(\d+, \d+, \d+\); task 'prostate' needs 4D with 2 channels"):
        open_site_data(get_task("prostate", "tiny"), site)
    from fedseg.checkpoint import save_model
    from fedseg.infer import Predictor
    from fedseg.networks import build_network

    spec = get_task("prostate", "tiny")
    model = save_model(tmp_path / "m.pt", build_network(spec).state_dict(), spec)
    with pytest.raises(DataError, match="needs 4D with 2 channels"):
        Predictor(spec, model, Runtime.create("cpu")).segment(root / entry["image"], tmp_path / "mask.nii.gz")


def test_multiclass_mask_on_input_grid(prostate_dataset, tmp_path):
    from fedseg.checkpoint import save_model
    from fedseg.infer import Predictor
    from fedseg.networks import build_network

    spec = get_task("prostate", "tiny")
    model = save_model(tmp_path / "m.pt", build_network(spec).state_dict(), spec)
    image = _first(prostate_dataset)["image"]
    out = Predictor(spec, model, Runtime.create("cpu")).segment(image, tmp_path / "mask.nii.gz")
    src, mask = nib.load(image), nib.load(str(out))
    assert mask.shape == src.shape[:3] and np.allclose(mask.affine, src.affine)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}
