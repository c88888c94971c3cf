"""Bad data stops a run before training, with an error naming the file and the problem."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from conftest import make_site
from fedseg.engine import Runtime
from fedseg.errors import DataError
from fedseg.runners.local import run_local
from fedseg.site_config import load_site_config
from fedseg.tasks import get_task


@pytest.fixture
def broken(spleen_dataset, tmp_path):
    """A private copy of the phantom dataset, and a function that breaks one training case and runs."""
    root = tmp_path / "data"
    shutil.copytree(spleen_dataset, root)
    datalist = root / "splits" / "site-1.json"
    lists = json.loads(datalist.read_text())
    first = lists["training"][0]

    def run():
        site = load_site_config(make_site(tmp_path, "site-1", "spleen", root, datalist))
        out = tmp_path / "run"
        with pytest.raises(DataError) as err:
            run_local(get_task("spleen", "tiny"), [site], out, epochs=1, runtime=Runtime.create("cpu"))
        assert not (out / "final_model.pt").exists() and not (out / "best_model.pt").exists()
        return str(err.value)

    return root, datalist, lists, first, run


def _rewrite(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))


def test_missing_file(broken):
    root, datalist, lists, first, run = broken
    (root / first["image"]).unlink()
    msg = run()
    assert first["image"] in msg and "file not found" in msg


def test_unreadable_file(broken):
    root, datalist, lists, first, run = broken
    (root / first["label"]).write_text("this is not an image")
    msg = run()
    assert first["label"].split("/")[-1] in msg and ("not a NIfTI" in msg or "corrupt" in msg)


def test_shape_mismatch(broken):
    root, datalist, lists, first, run = broken
    lbl = nib.load(str(root / first["label"]))
    _rewrite(root / first["label"], np.asarray(lbl.dataobj)[:-3], lbl.affine)
    msg = run()
    assert first["label"].split("/")[-1] in msg and "differs from image shape" in msg


def test_affine_mismatch(broken):
    root, datalist, lists, first, run = broken
    lbl = nib.load(str(root / first["label"]))
    affine = lbl.affine.copy()
    affine[0, 3] += 5.0
    _rewrite(root / first["label"], np.asarray(lbl.dataobj), affine)
    msg = run()
    assert first["label"].split("/")[-1] in msg and "affine differs" in msg


def test_label_value_not_in_task(broken):
    root, datalist, lists, first, run = broken
    lbl = nib.load(str(root / first["label"]))
    data = np.asarray(lbl.dataobj).copy()
    data[data == 1] = 7
    _rewrite(root / first["label"], data, lbl.affine)
    msg = run()
    assert first["label"].split("/")[-1] in msg and "label values 7 are not among" in msg


def test_all_problems_reported_together(broken):
    root, datalist, lists, first, run = broken
    (root / first["image"]).unlink()
    second = lists["training"][1]
    (root / second["label"]).write_text("garbage")
    msg = run()
    assert "2 problem(s)" in msg and first["image"] in msg and second["label"].split("/")[-1] in msg


def test_path_outside_data_root(broken):
    root, datalist, lists, first, run = broken
    lists["training"][0] = {"image": "../../etc/passwd", "label": first["label"]}
    datalist.write_text(json.dumps(lists))
    assert "leaves the data root" in run()
