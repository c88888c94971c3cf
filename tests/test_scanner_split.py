"""``fedseg data split --mode scanner``: sites differ as their scanner profiles say, and nothing else changes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedseg.cli import main
from fedseg.data.checks import check_data
from fedseg.data.scanner import ScannerProfile, scanner_split, site_profiles
from fedseg.tasks import get_task

PROFILES = [
    ScannerProfile(gain=1.0, offset=-50.0, noise_std=0.0, slice_mm=2.0, fov=1.0),
    ScannerProfile(gain=1.0, offset=50.0, noise_std=40.0, slice_mm=5.0, fov=0.8),
]


def _lists(out: Path, site: str) -> dict:
    return json.loads((out / f"{site}.json").read_text())


def _cases(out: Path, site: str) -> list[dict]:
    lists = _lists(out, site)
    return [c for s in ("training", "validation", "test") for c in lists[s]]


def _spleen_voxels(out: Path, case: dict) -> np.ndarray:
    image = np.asarray(nib.load(str(out / case["image"])).dataobj, dtype=np.float32)
    label = np.asarray(nib.load(str(out / case["label"])).dataobj)
    return image[label == 1]


def _centre(img) -> np.ndarray:
    return (img.affine @ np.append((np.asarray(img.shape[:3]) - 1) / 2.0, 1.0))[:3]


@pytest.fixture(scope="module")
def split(spleen_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scanner")
    scanner_split(spleen_dataset, 2, out, seed=3, profiles=PROFILES)
    return out


def test_sites_differ_as_configured(split, spleen_dataset):
    source_names = {Path(c["image"]).name for s in ("site-1", "site-2") for c in _cases(split, s)}
    assert len(source_names) == 10  # every source case once
    stats = {}
    for site, profile in zip(("site-1", "site-2"), PROFILES):
        shifts, widening = [], []
        for case in _cases(split, site):
            img, lab = nib.load(str(split / case["image"])), nib.load(str(split / case["label"]))
            assert np.allclose(img.affine, lab.affine) and img.shape == lab.shape
            assert np.linalg.norm(img.affine[:3, 2]) == pytest.approx(profile.slice_mm, abs=1e-3)
            source = nib.load(str(spleen_dataset / Path(case["image"]).relative_to(site)))
            assert img.shape[:2] == tuple(max(1, round(n * profile.fov)) for n in source.shape[:2])
            # Crop and resampling keep the anatomy where it was: the volume's centre stays put in the world.
            assert np.allclose(_centre(img), _centre(source), atol=profile.slice_mm)
            # Paired with the case's own source: the phantoms' spleens differ by contrast phase (30-160 HU).
            voxels = _spleen_voxels(split, case)
            original = _spleen_voxels(spleen_dataset, {k: str(Path(case[k]).relative_to(site))
                                                       for k in ("image", "label")})
            shifts.append(np.median(voxels) - np.median(original))
            widening.append(voxels.std() - original.std())
        stats[site] = (np.median(shifts), np.median(widening))
    # The offsets move each case's spleen by the site's offset; the added noise widens it.
    for site, profile in zip(("site-1", "site-2"), PROFILES):
        assert stats[site][0] == pytest.approx(profile.offset, abs=10.0), (site, stats)
    assert stats["site-2"][1] > stats["site-1"][1] + 15.0, stats


def test_no_case_in_two_sites_and_pooled_list_is_the_union(split):
    one, two = ({c["image"] for c in _cases(split, s)} for s in ("site-1", "site-2"))
    assert not {Path(p).name for p in one} & {Path(p).name for p in two}
    pooled = _lists(split, "site-All")
    assert {c["image"] for s in ("training", "validation", "test") for c in pooled[s]} == one | two
    info = json.loads((split / "dataset.json").read_text())
    assert len(info["training"]) == 10
    assert json.loads((split / "scanners.json").read_text())["sites"]["site-2"]["offset"] == 50.0


def test_rewritten_sites_pass_the_data_check(split):
    spec = get_task("spleen", "tiny")
    for site in ("site-1", "site-2"):
        _, _, report = check_data(spec, split, split / f"{site}.json")
        assert not report.fatal, report.render()


def test_deterministic_and_seed_dependent(spleen_dataset, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 1), (b, 1), (c, 2)):
        assert main(["data", "split", "--dataset", str(spleen_dataset), "--sites", "2", "--out", str(out),
                     "--mode", "scanner", "--seed", str(seed)]) == 0
    assert (a / "site-1.json").read_text() == (b / "site-1.json").read_text()
    assert (a / "scanners.json").read_text().replace(str(a), "") == (b / "scanners.json").read_text().replace(str(b), "")
    for case in _cases(a, "site-2"):
        assert np.array_equal(np.asarray(nib.load(str(a / case["image"])).dataobj),
                              np.asarray(nib.load(str(b / case["image"])).dataobj))
    assert json.loads((a / "scanners.json").read_text())["sites"] != json.loads((c / "scanners.json").read_text())["sites"]


def test_default_profiles_always_differ_between_sites():
    profiles = site_profiles(4, seed=0)
    for field in ("gain", "offset", "noise_std", "slice_mm", "fov"):
        assert len({getattr(p, field) for p in profiles}) == 4, field
    assert site_profiles(4, seed=0) == profiles
    mr = site_profiles(3, seed=0, ct=False)
    assert all(p.offset == 0.0 and p.noise_std <= 0.05 for p in mr)


def test_scanner_split_refuses_to_overwrite_its_source(spleen_dataset):
    with pytest.raises(ValueError, match="new folder"):
        scanner_split(spleen_dataset, 2, spleen_dataset)
