import json

import nibabel as nib
import numpy as np
import pytest

from fedseg.data.phantoms.abdomen import ORGANS, synth_abdomen
from fedseg.data.phantoms.nifti import reorient_from_ras


def test_same_seed_same_phantom_and_seeds_differ():
    a, b, c = synth_abdomen(3), synth_abdomen(3), synth_abdomen(4)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.organs, b.organs)
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_intensities_calibrated_against_the_real_ct(seed):
    ph = synth_abdomen(seed)
    img = ph.image.astype(np.float32)
    spleen, liver = img[ph.organs == ORGANS["spleen"]], img[ph.organs == ORGANS["liver"]]
    # Real CT (tests/data/real/README.md): spleen 32.8 +- 16.8 HU, liver 45.3 +- 15.2 HU.
    assert 23 < spleen.mean() < 43
    assert 35 < liver.mean() < 58
    assert liver.mean() - spleen.mean() > 5
    assert 10 < spleen.std() < 25
    assert img.min() >= -1024 and img.max() > 300  # air and bone present
    assert ph.image.dtype == np.int16


def test_anatomy_is_where_it_belongs():
    for seed in range(4):
        ph = synth_abdomen(seed)
        idx = np.argwhere(ph.organs == ORGANS["spleen"])
        spleen_x = ph.grid.origin[0] + idx[:, 0].mean() * ph.grid.spacing[0]
        liver_x = ph.grid.origin[0] + np.argwhere(ph.organs == ORGANS["liver"])[:, 0].mean() * ph.grid.spacing[0]
        # RAS: the spleen is on the patient's left (smaller x), the liver on the right.
        assert spleen_x < liver_x - 60
        assert 20_000 * 1.0 < (ph.organs == ORGANS["spleen"]).sum() * np.prod(ph.grid.spacing)  # > 20 mL


def test_organ_size_position_and_spacing_vary():
    phantoms = [synth_abdomen(s) for s in range(6)]
    volumes = [(p.organs == ORGANS["spleen"]).sum() * np.prod(p.grid.spacing) for p in phantoms]
    spacings = {p.grid.spacing for p in phantoms}
    shapes = {p.grid.shape for p in phantoms}
    assert max(volumes) / min(volumes) > 1.5
    assert len(spacings) == 6 and len(shapes) == 6


def test_reorientation_keeps_world_positions():
    data = np.zeros((4, 5, 6), dtype=np.uint8)
    data[1, 2, 3] = 1
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = (10, 20, 30)
    world = affine @ [1, 2, 3, 1]
    for codes in ("LPS", "LAS", "RAS"):
        out, aff = reorient_from_ras(data, affine, codes)
        assert nib.aff2axcodes(aff) == tuple(codes)
        voxel = np.argwhere(out == 1)[0]
        assert np.allclose(aff @ [*voxel, 1], world)


def test_synth_writes_msd_layout(spleen_dataset):
    info = json.loads((spleen_dataset / "dataset.json").read_text())
    assert info["labels"] == {"0": "background", "1": "spleen"} and info["modality"] == {"0": "CT"}
    assert info["numTraining"] == 10 and len(info["training"]) == 10
    orientations = set()
    for entry in info["training"]:
        img = nib.load(str(spleen_dataset / entry["image"]))
        lbl = nib.load(str(spleen_dataset / entry["label"]))
        assert img.shape == lbl.shape and np.allclose(img.affine, lbl.affine)
        assert img.get_data_dtype() == np.int16 and lbl.get_data_dtype() == np.uint8
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        # Header spacing equals the affine's column norms.
        assert np.allclose(img.header.get_zooms(), np.linalg.norm(img.affine[:3, :3], axis=0))
        assert set(np.unique(np.asarray(lbl.dataobj))) <= {0, 1}
        assert np.asarray(lbl.dataobj).any()
        orientations.add(nib.aff2axcodes(img.affine))
    assert len(orientations) >= 2  # not every case stored RAS
