import nibabel as nib
import numpy as np
import pytest

from fedseg.data.phantoms.nifti import reorient_from_ras
from fedseg.engine import Runtime
from fedseg.errors import DataError
from fedseg.infer import Predictor
from fedseg.tasks import get_task


@pytest.fixture(scope="module")
def predictor(trained_spleen):
    _, _, model_path = trained_spleen
    return Predictor(get_task("spleen", "tiny"), model_path, Runtime.create("cpu", num_threads=2))


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def test_mask_on_the_real_ct_grid(predictor, real_ct, tmp_path):
    out = predictor.segment(real_ct, tmp_path / "mask.nii.gz")
    src, mask = nib.load(str(real_ct)), nib.load(str(out))
    assert mask.shape == src.shape == (122, 101, 30)
    assert np.allclose(mask.affine, src.affine)
    assert mask.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}


def test_mask_follows_input_orientation(predictor, trained_spleen, tmp_path):
    _, data, _ = trained_spleen
    case = data.datalist.cases("test")[0]
    img, lbl = nib.load(str(case.image)), nib.load(str(case.label))
    # Store the same scan in a different orientation: the mask must follow it voxel for voxel.
    ras = nib.as_closest_canonical(img)
    flipped, affine = reorient_from_ras(np.asarray(ras.dataobj), ras.affine, "LPI")
    other = tmp_path / "lpi.nii.gz"
    nib.save(nib.Nifti1Image(flipped, affine), str(other))
    m1 = np.asarray(nib.load(str(predictor.segment(case.image, tmp_path / "m1.nii.gz"))).dataobj)
    m2_img = nib.load(str(predictor.segment(other, tmp_path / "m2.nii.gz")))
    m2_ras = np.asarray(nib.as_closest_canonical(m2_img).dataobj)
    m1_ras = np.asarray(nib.as_closest_canonical(nib.Nifti1Image(m1, img.affine)).dataobj)
    assert _dice(m1_ras > 0, m2_ras > 0) > 0.95
    # And the mask lies on the spleen in the input's own grid.
    assert _dice(m1 > 0, np.asarray(lbl.dataobj) > 0) > 0.6


def test_input_the_task_cannot_use_is_refused(predictor, tmp_path):
    bad = tmp_path / "scan.nii.gz"
    bad.write_text("not an image")
    with pytest.raises(DataError, match=r"scan.nii.gz: image is named .gz but holds text"):
        predictor.segment(bad, tmp_path / "out.nii.gz")
    two_d = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.int16), np.eye(4)), str(two_d))
    with pytest.raises(DataError, match="slice.nii.gz: image has shape \\(8, 8\\); task 'spleen' needs 3D"):
        predictor.segment(two_d, tmp_path / "out.nii.gz")


def _agreement(a, b):
    return float((a == b).mean())


def test_body_crop_gives_the_uncropped_mask_on_the_input_grid(predictor, trained_spleen, real_ct):
    """Cropping air away before preprocessing changes the mask by at most a few boundary voxels."""
    _, data, model_path = trained_spleen
    whole = Predictor(get_task("spleen", "tiny"), model_path, Runtime.create("cpu", num_threads=2), body_crop=False)
    cases = [real_ct] + [c.image for c in data.datalist.cases("validation") + data.datalist.cases("test")]
    cropped_some = False
    for path in cases:
        image = predictor.loader(str(path))
        box = predictor.body_box(image)
        assert box is not None
        cropped_some |= any(s.stop - s.start < n for s, n in zip(box, image.shape[1:]))
        fast, slow = predictor.mask(path), whole.mask(path)
        assert fast.shape == slow.shape == tuple(nib.load(str(path)).shape[:3])
        print(f"{path.name}: box {[(s.start, s.stop) for s in box]} of {tuple(image.shape[1:])}; voxel agreement "
              f"{_agreement(fast, slow):.6f}, Dice of the two masks {_dice(fast > 0, slow > 0):.4f}")
        assert _agreement(fast, slow) >= AGREEMENT, path.name
        if slow.any():
            assert _dice(fast > 0, slow > 0) >= MASK_DICE, path.name
    assert cropped_some  # the crop really removed air somewhere, so the comparison means something


AGREEMENT = 0.999  # share of voxels with the same class, cropped vs uncropped path (measured: see README)
MASK_DICE = 0.98
