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


def test_body_crop_gives_the_uncropped_mask_on_the_input_grid(predictor, trained_spleen, real_ct):
    """Resampling only the body's part of the training grid gives the network the very image, and the mask, of
    the whole-volume path, on the input's grid, while interpolating fewer voxels."""
    import torch

    _, data, model_path = trained_spleen
    whole = Predictor(get_task("spleen", "tiny"), model_path, Runtime.create("cpu", num_threads=2), body_crop=False)
    cases = [real_ct] + [c.image for c in data.datalist.cases("validation") + data.datalist.cases("test")]
    smaller = 0
    for path in cases:
        image = predictor.loader(str(path))
        oriented = predictor.orient({"image": image})["image"]
        (_, part), (_, full) = predictor.resampling_grid(oriented), whole.resampling_grid(oriented)
        smaller += int(np.prod(part) < np.prod(full))
        ours, theirs = predictor.network_image(image), whole.network_image(image)
        assert ours.shape == theirs.shape and torch.allclose(ours.affine, theirs.affine, atol=1e-6)
        assert torch.allclose(ours.as_tensor(), theirs.as_tensor(), atol=1e-6)
        fast, slow = predictor.mask(path), whole.mask(path)
        assert fast.shape == slow.shape == tuple(nib.load(str(path)).shape[:3])
        print(f"{path.name}: resampled {part} of {full}; voxel agreement {(fast == slow).mean():.6f}")
        assert (fast == slow).mean() >= 0.99999, path.name  # the same mask, up to float rounding
    assert smaller >= len(cases) - 1  # the crop really skipped air (the small real CT is nearly all body)


def test_several_files_read_ahead_give_the_masks_of_one_at_a_time(predictor, trained_spleen, real_ct, tmp_path):
    """``segment_files`` reads the next file while the model runs: the same masks, in order, and a file that
    went away after the check is named, after the masks before it were written."""
    import shutil

    _, data, _ = trained_spleen
    images = [real_ct] + [c.image for c in data.datalist.cases("test")[:2]]
    pairs = [(img, tmp_path / f"m{k}.nii.gz") for k, img in enumerate(images)]
    written = list(predictor.segment_files(pairs))
    assert written == [out for _, out in pairs]
    for img, out in pairs:
        assert np.array_equal(np.asarray(nib.load(str(out)).dataobj), predictor.mask(img))
    gone = tmp_path / "gone.nii.gz"
    shutil.copy(real_ct, gone)
    later = predictor.segment_files([(real_ct, tmp_path / "a.nii.gz"), (gone, tmp_path / "b.nii.gz")])
    gone.unlink()  # the generator has not started: both reads come after this
    with pytest.raises(DataError, match=r"gone.nii.gz: could not be read for inference"):
        list(later)
    assert (tmp_path / "a.nii.gz").exists() and not (tmp_path / "b.nii.gz").exists()
