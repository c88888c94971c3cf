import json

import pytest

from fedseg.data.split import split_dataset
from fedseg.tasks import phantom_labels
from fedseg.data.msd import write_dataset_json
from fedseg.errors import DataError


@pytest.fixture
def fake_dataset(tmp_path):
    # Split reads only dataset.json, so a listing is enough.
    items = [{"image": f"imagesTr/c_{i}.nii.gz", "label": f"labelsTr/c_{i}.nii.gz"} for i in range(24)]
    write_dataset_json(tmp_path, name="x", description="x", modalities=("CT",), labels=phantom_labels("spleen"),
                       training=items)
    return tmp_path


def _load(path):
    return json.loads(path.read_text())


def _images(datalist):
    return [e["image"] for s in ("training", "validation", "test") for e in datalist[s]]


def test_sites_are_disjoint_and_cover_the_dataset(fake_dataset, tmp_path):
    written = split_dataset(fake_dataset, 3, tmp_path / "splits", seed=5)
    per_site = [_images(_load(written[f"site-{k}"])) for k in (1, 2, 3)]
    flat = [x for site in per_site for x in site]
    assert len(flat) == len(set(flat)) == 24
    for site in per_site:
        lists = _load(written["site-1"])
        assert lists["training"] and lists["validation"] and lists["test"]
    pooled = _load(written["site-All"])
    assert sorted(_images(pooled)) == sorted(flat)
    # Paths stay relative to the dataset root, without MSD's "./" prefix.
    assert all(not p.startswith(("/", "./")) for p in flat)


def test_split_is_deterministic_and_seed_dependent(fake_dataset, tmp_path):
    a = split_dataset(fake_dataset, 2, tmp_path / "a", seed=1)
    b = split_dataset(fake_dataset, 2, tmp_path / "b", seed=1)
    c = split_dataset(fake_dataset, 2, tmp_path / "c", seed=2)
    assert a["site-1"].read_text() == b["site-1"].read_text()
    assert _images(_load(a["site-1"])) != _images(_load(c["site-1"]))


def test_shares_give_unequal_sites(fake_dataset, tmp_path):
    written = split_dataset(fake_dataset, 2, tmp_path / "s", seed=0, shares=[1, 2])
    assert len(_images(_load(written["site-1"]))) == 8
    assert len(_images(_load(written["site-2"]))) == 16


def test_too_many_sites_for_the_cases_is_refused(fake_dataset, tmp_path):
    with pytest.raises(DataError, match="cannot give each of 9 sites"):
        split_dataset(fake_dataset, 9, tmp_path / "x")
