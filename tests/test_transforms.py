import nibabel as nib
import numpy as np
import torch

from conftest import REAL
from fedseg.tasks import get_task
from fedseg.transforms import eval_transforms, train_transforms


def _real_item():
    return {"image": str(REAL / "ct.nii.gz"), "label": str(REAL / "spleen_label.nii.gz")}


def test_eval_preprocessing_on_the_real_ct():
    spec = get_task("spleen")
    item = eval_transforms(spec, track_meta=True)(_real_item())
    img, lbl = item["image"], item["label"]
    assert img.shape[0] == 1 and img.shape[1:] == lbl.shape[1:]
    assert nib.aff2axcodes(img.affine.numpy()) == ("R", "A", "S")
    assert np.allclose(np.linalg.norm(img.affine.numpy()[:3, :3], axis=0), spec.spacing, atol=1e-4)
    # Window -57..164 HU scaled to 0..1 and clipped.
    assert float(img.min()) == 0.0 and float(img.max()) == 1.0
    # Resampling 3 mm -> 1.5 x 1.5 x 2 mm keeps the spleen's physical volume (9452 voxels of 27 mm^3).
    spleen_ml = float((lbl > 0).sum()) * 1.5 * 1.5 * 2.0 / 1000
    assert abs(spleen_ml - 9452 * 27 / 1000) / (9452 * 27 / 1000) < 0.05
    # The foreground crop removed air around the body.
    src = nib.load(str(REAL / "ct.nii.gz"))
    full_extent = np.array(src.shape) * 3.0
    assert np.all(np.array(img.shape[1:]) * np.array(spec.spacing) <= full_extent + 3)


def test_train_transforms_give_patches_with_foreground():
    spec = get_task("spleen", "tiny")
    samples = train_transforms(spec, seed=0)(_real_item())
    assert len(samples) == spec.num_samples
    fg = 0
    for s in samples:
        assert tuple(s["image"].shape) == (1, *spec.patch_size)
        assert s["image"].dtype == torch.float32
        # Intensity shift of up to 0.1 on top of the 0..1 window.
        assert -0.11 <= float(s["image"].min()) and float(s["image"].max()) <= 1.11
        fg += int(s["label"].sum() > 0)
    assert fg >= 1  # crops are centred on foreground half the time


def test_train_transforms_are_seeded():
    spec = get_task("spleen", "tiny")
    a = train_transforms(spec, seed=3)(_real_item())
    b = train_transforms(spec, seed=3)(_real_item())
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))
