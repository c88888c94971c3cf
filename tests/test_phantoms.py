import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import ConvexHull

from fedseg.cli import main
from fedseg.data.checks import check_data
from fedseg.data.phantoms.abdomen import ORGANS, PhantomOptions, synth_abdomen
from fedseg.data.phantoms.organs import SPLEEN_NORMAL_ML, SPLENOMEGALY_SHARE, spleen_volume_ml
from fedseg.data.phantoms.nifti import reorient_from_ras
from fedseg.data.phantoms.phases import (ARCIFORM_HU, DEFAULT_PHASE_MIX, ENHANCING, PHASES, assign_phases,
                                          parse_phase_mix, phase_hu, randomised_hu)
from fedseg.tasks import get_task


def test_same_seed_same_phantom_and_seeds_differ():
    a, b, c = synth_abdomen(3), synth_abdomen(3), synth_abdomen(4)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.organs, b.organs)
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_intensities_calibrated_against_the_real_ct(seed):
    # The real CT is non-contrast: so are the phantoms compared with it.
    ph = synth_abdomen(seed, PhantomOptions(phase="non-contrast"))
    img = ph.image.astype(np.float32)
    spleen, liver = img[ph.organs == ORGANS["spleen"]], img[ph.organs == ORGANS["liver"]]
    # Real CT (tests/data/real/README.md): spleen 32.8 +- 16.8 HU, liver 45.3 +- 15.2 HU; the
    # non-contrast ranges (phases.ENHANCING) span it and the textbook values (spleen up to 45 HU).
    assert 23 < spleen.mean() < 48
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


def test_spleen_volumes_follow_the_literature():
    """Normal adult spleens (107-315 mL, mean 215) and a share of enlarged ones, as in the Decathlon's patients."""
    rng = np.random.default_rng(0)
    drawn = np.array([spleen_volume_ml(rng) for _ in range(4000)])
    mean, _, lo, hi = SPLEEN_NORMAL_ML
    normal = drawn[drawn <= hi]
    assert abs(normal.mean() - mean) < 10 and normal.min() >= lo
    assert abs((drawn > hi).mean() - SPLENOMEGALY_SHARE) < 0.03
    # What the phantoms hold after the hilum, the wall and the scan range cut the drawn shape.
    phantoms = [synth_abdomen(s, PhantomOptions(inplane_spacing=(2.8, 3.2), slice_thickness=(4.0,))) for s in range(8)]
    ml = np.array([(p.organs == ORGANS["spleen"]).sum() * np.prod(p.grid.spacing) / 1000 for p in phantoms])
    assert 60 < ml.min() and ml.max() < 1300
    assert (ml > hi).any() and (ml < hi).any()


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


# Contrast phases ------------------------------------------------------------------------------------
# Coarse grids keep these fast. Organ HU is measured inside each mask eroded by one voxel in plane,
# away from the partial volume at its border (which the phantoms draw on purpose).
COARSE = dict(inplane_spacing=(2.8, 3.2), slice_thickness=(4.0, 5.0))
PHASE_SEEDS = (0, 1)
# Noise, texture and intra-organ vessels move an organ's mean by a few HU around its drawn value.
TOLERANCE_HU = 10.0


@pytest.fixture(scope="module")
def by_phase():
    """The same two anatomies (seeds) drawn in every phase: {(phase, seed): phantom}."""
    return {(phase, seed): synth_abdomen(seed, PhantomOptions(phase=phase, **COARSE))
            for phase in PHASES for seed in PHASE_SEEDS}


def _interior(ph, organ: str) -> np.ndarray:
    structure = ndimage.generate_binary_structure(3, 1)
    structure[:, :, 0] = structure[:, :, 2] = False
    inner = ndimage.binary_erosion(ph.organs == ORGANS[organ], structure)
    assert inner.sum() > 20, organ
    return ph.image[inner].astype(np.float32)


@pytest.mark.parametrize("phase", PHASES)
def test_each_phase_puts_organ_hu_in_its_documented_range(by_phase, phase):
    for seed in PHASE_SEEDS:
        ph = by_phase[phase, seed]
        assert ph.params["phase"] == phase and not ph.params["randomised"]
        for organ, tissue in (("spleen", "spleen"), ("liver", "liver"), ("aorta", "artery")):
            lo, hi = ENHANCING[phase][tissue]
            mean = float(_interior(ph, organ).mean())
            assert lo - TOLERANCE_HU < mean < hi + TOLERANCE_HU, (phase, seed, organ, round(mean, 1), (lo, hi))


def test_phases_differ_as_the_literature_says(by_phase):
    for seed in PHASE_SEEDS:
        mean = {(p, o): float(_interior(by_phase[p, seed], o).mean()) for p in PHASES
                for o in ("spleen", "liver", "aorta")}
        # Unenhanced: spleen below liver, blood near soft tissue.
        assert mean["non-contrast", "liver"] > mean["non-contrast", "spleen"] + 3
        assert mean["non-contrast", "aorta"] < 70
        # Late arterial: aorta above 250 HU, spleen far brighter than the barely enhanced liver.
        assert mean["arterial", "aorta"] > 250
        assert mean["arterial", "spleen"] > mean["arterial", "liver"] + 20
        # Portal-venous: spleen and liver well enhanced, aorta down from its arterial peak.
        # (drawn from 95-145 and 85-130 HU; vessels, texture and blur move an interior mean by a few HU)
        assert mean["portal-venous", "spleen"] > 90 and mean["portal-venous", "liver"] > 80
        assert mean["portal-venous", "aorta"] < mean["arterial", "aorta"] - 50
        # Delayed: everything washing out towards equilibrium.
        assert mean["delayed", "aorta"] < mean["portal-venous", "aorta"]
        assert abs(mean["delayed", "spleen"] - mean["delayed", "liver"]) < 35
        for organ in ("spleen", "liver"):
            assert mean["portal-venous", organ] > mean["non-contrast", organ] + 40
    # Over many cases, portal-venous spleen and liver average well above 100 HU.
    rng = np.random.default_rng(0)
    draws = [phase_hu(rng, "portal-venous") for _ in range(500)]
    for organ in ("spleen", "liver"):
        assert np.mean([d[organ] for d in draws]) > 105


def test_arterial_spleen_is_heterogeneous(by_phase):
    for seed in PHASE_SEEDS:
        arterial = _interior(by_phase["arterial", seed], "spleen").std()
        venous = _interior(by_phase["portal-venous", seed], "spleen").std()
        # Arciform bands, homogeneous later: the bands (tanh of a sine, amplitude ARCIFORM_HU) add a
        # variance of at least (0.8 x amplitude)^2; blur and the eroded interior keep most of it.
        assert arterial ** 2 - venous ** 2 > (0.7 * ARCIFORM_HU[0]) ** 2, (seed, arterial, venous)


def test_anatomy_is_the_same_in_every_phase(by_phase):
    for seed in PHASE_SEEDS:
        first = by_phase[PHASES[0], seed]
        for phase in PHASES[1:]:
            assert np.array_equal(by_phase[phase, seed].organs, first.organs)


def test_spleen_lies_against_the_left_posterolateral_wall(by_phase):
    for seed in PHASE_SEEDS:
        ph = by_phase["portal-venous", seed]
        body = ph.image > -500
        # Distance (mm) from each voxel to the outside of the body, in plane.
        depth = np.stack([ndimage.distance_transform_edt(body[..., k], sampling=ph.grid.spacing[:2])
                          for k in range(body.shape[2])], axis=-1)
        spleen = ph.organs == ORGANS["spleen"]
        assert depth[spleen].min() < 60  # skin, fat, wall muscle and diaphragm only: the spleen hugs the wall
        aorta = np.argwhere(ph.organs == ORGANS["aorta"]).mean(axis=0)
        centre = np.argwhere(spleen).mean(axis=0)
        assert centre[0] < aorta[0]  # RAS: left of the aorta
        # Its hilum faces the midline: a crescent, clearly short of its convex hull.
        points = np.argwhere(spleen) * np.asarray(ph.grid.spacing)
        assert spleen.sum() * np.prod(ph.grid.spacing) < 0.9 * ConvexHull(points).volume


def test_liver_has_a_left_lobe_across_the_midline(by_phase):
    for seed in PHASE_SEEDS:
        ph = by_phase["portal-venous", seed]
        liver = np.argwhere(ph.organs == ORGANS["liver"])
        aorta_x = np.argwhere(ph.organs == ORGANS["aorta"])[:, 0].mean()
        assert liver[:, 0].min() < aorta_x  # RAS: some liver lies left of the aorta


def test_randomised_appearance_breaks_the_intensity_order():
    options = PhantomOptions(randomise=1.0, **COARSE)
    drawn = [synth_abdomen(seed, options).params for seed in range(2)]
    assert all(p["randomised"] for p in drawn)
    # Spleen above the liver in some cases and below it in others: no intensity rule to learn
    # (the draws themselves: 40 of them, where 6 phantoms would show one order with p = 1/32).
    rng = np.random.default_rng(0)
    above = [hu["spleen"] > hu["liver"] for hu in (randomised_hu(rng) for _ in range(40))]
    assert 10 <= sum(above) <= 30


def test_phase_mix_parsing():
    assert parse_phase_mix("portal-venous=0.7,arterial=0.1,delayed=0.1,non-contrast=0.1") == pytest.approx(DEFAULT_PHASE_MIX)
    assert parse_phase_mix("arterial") == {"non-contrast": 0.0, "arterial": 1.0, "portal-venous": 0.0, "delayed": 0.0}
    assert parse_phase_mix("arterial=2, delayed=2")["delayed"] == 0.5  # shares are normalised
    for bad, message in (("venous=1", "unknown phase 'venous'"), ("arterial=x", "must be a number"),
                         ("arterial=-1", ">= 0"), ("arterial=0", "sum to 0"), ("", "empty"),
                         ("arterial=1,arterial=2", "twice")):
        with pytest.raises(ValueError, match=message):
            parse_phase_mix(bad)


def test_phases_are_dealt_in_proportion_and_in_seeded_order():
    phases = assign_phases(20, DEFAULT_PHASE_MIX, seed=0)
    assert {p: phases.count(p) for p in PHASES} == {"portal-venous": 14, "arterial": 2, "delayed": 2,
                                                     "non-contrast": 2}
    assert assign_phases(20, DEFAULT_PHASE_MIX, seed=0) == phases != assign_phases(20, DEFAULT_PHASE_MIX, seed=1)
    assert set(assign_phases(3, {"arterial": 1, "delayed": 1}, seed=0)) == {"arterial", "delayed"}


def test_default_dataset_is_mostly_portal_venous_and_passes_the_data_check(spleen_dataset):
    record = json.loads((spleen_dataset / "phantoms.json").read_text())
    phases = [case["phase"] for case in record["cases"].values()]
    assert len(phases) == 10 and phases.count("portal-venous") == 7
    assert {"arterial", "delayed", "non-contrast"} <= set(phases)
    _, _, report = check_data(get_task("spleen", "tiny"), spleen_dataset, spleen_dataset / "splits" / "site-1.json")
    assert not report.problems, report.render()


def test_synth_phase_option(tmp_path, capsys):
    out = tmp_path / "arterial"
    assert main(["data", "synth", "--task", "liver", "--out", str(out), "--cases", "2", "--seed", "5",
                 "--phases", "arterial=1"]) == 0
    record = json.loads((out / "phantoms.json").read_text())
    assert record["phase_mix"] == "arterial=1"
    assert [c["phase"] for c in record["cases"].values()] == ["arterial", "arterial"]
    assert all(c["hu_aorta"] >= 250 for c in record["cases"].values())
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "synth", "--task", "spleen", "--out", str(tmp_path / "x"), "--phases", "venous=1"])
    assert exit_info.value.code == 2
    assert "unknown phase 'venous'" in capsys.readouterr().err
    assert main(["data", "synth", "--task", "prostate", "--out", str(tmp_path / "mr"), "--cases", "1",
                 "--phases", "arterial"]) == 2
    assert "MR phantoms" in capsys.readouterr().err
