"""Fault injection: bad input is refused before training, each with its own kind of error.

Every case breaks one thing in a private copy of a phantom dataset (files are linked, the broken
one is replaced), then checks (1) the data check reports exactly that kind, naming the file, and
(2) a training run stops before training with nothing written.
"""

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import make_site
from fedseg.cli import main
from fedseg.data.checks import check_data
from fedseg.engine import Runtime
from fedseg.errors import ConfigError, DataError
from fedseg.runners.local import run_local
from fedseg.site_config import load_site_config
from fedseg.tasks import get_task


class Broken:
    """A linked copy of a dataset whose first training case can be broken in place."""

    def __init__(self, source: Path, tmp: Path, task: str):
        self.root, self.tmp, self.task = tmp / "data", tmp, task
        for path in source.rglob("*"):
            target = self.root / path.relative_to(source)
            if path.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            elif path.suffix == ".json":
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(path)
        self.datalist = self.root / "splits" / "site-1.json"
        self.lists = json.loads(self.datalist.read_text())
        self.case = self.lists["training"][0]

    def path(self, key: str) -> Path:
        return self.root / self.case[key]

    def replace(self, key: str, data=None, affine=None, raw: bytes | None = None) -> Path:
        path = self.path(key)
        src = nib.load(str(path))
        data = np.asarray(src.dataobj) if data is None and raw is None else data
        path.unlink()
        if raw is not None:
            path.write_bytes(raw)
        else:
            nib.save(nib.Nifti1Image(data, src.affine if affine is None else affine), str(path))
        return path

    def original(self, key: str):
        img = nib.load(str(self.path(key)))
        return np.asarray(img.dataobj), img.affine

    def write_datalist(self):
        self.datalist.write_text(json.dumps(self.lists))

    def site_yaml(self, **extra) -> Path:
        return make_site(self.tmp, "site-1", self.task, self.root, self.datalist, **extra)


def _gz(path: Path) -> bytes:
    return path.resolve().read_bytes()


def corrupt_gzip(b):
    raw = bytearray(_gz(b.path("image")))
    raw[300:600] = bytes(x ^ 0xFF for x in raw[300:600])
    return b.replace("image", raw=bytes(raw)), "corrupt_file"


def truncated(b):
    raw = _gz(b.path("image"))
    return b.replace("image", raw=raw[: len(raw) // 2]), "truncated_file"


def text_named_nifti(b):
    return b.replace("image", raw=b"Patient: DOE^JOHN, see report\n"), "not_nifti"


def image_2d_for_3d_task(b):
    data, _ = b.original("image")
    return b.replace("image", data=data[:, :, 0]), "wrong_dimensions"


def shape_mismatch(b):
    data, _ = b.original("label")
    return b.replace("label", data=data[:-4]), "grid_mismatch"


def affine_mismatch(b):
    data, affine = b.original("label")
    shifted = affine.copy()
    shifted[:3, 3] += 7.5
    return b.replace("label", data=data, affine=shifted), "grid_mismatch"


def label_value_7(b):
    data, _ = b.original("label")
    data = data.copy()
    data[data == 1] = 7
    return b.replace("label", data=data), "bad_label_values"


def nan_voxels(b):
    data, _ = b.original("image")
    data = data.astype(np.float32)
    data[10:12, 10:12, :] = np.nan
    return b.replace("image", data=data), "non_finite_voxels"


def zero_spacing(b):
    # Zero the slice axis of the stored sform (srow_z), as broken converters do; nibabel still loads it.
    raw = bytearray(gzip.decompress(_gz(b.path("image"))))
    raw[312:324] = np.zeros(3, np.float32).tobytes()
    return b.replace("image", raw=gzip.compress(bytes(raw))), "bad_spacing"


def missing_file(b):
    path = b.path("label")
    path.unlink()
    return path, "missing_file"


def path_traversal(b):
    b.lists["training"][0] = {"image": "../../../etc/passwd", "label": b.case["label"]}
    b.write_datalist()
    return b.datalist, "path_escapes_root"


def absolute_path_outside_root(b):
    b.lists["training"][0] = {"image": "/etc/hostname", "label": b.case["label"]}
    b.write_datalist()
    return b.datalist, "absolute_path"


def empty_datalist(b):
    b.lists["training"] = []
    b.write_datalist()
    return b.datalist, "empty_split"


def label_count_mismatch(b):
    info_path = b.root / "dataset.json"
    info = json.loads(info_path.read_text())
    info["labels"]["2"] = "kidney"
    info_path.write_text(json.dumps(info))
    return info_path, "label_count_mismatch"


CASES = [corrupt_gzip, truncated, text_named_nifti, image_2d_for_3d_task, shape_mismatch, affine_mismatch,
         label_value_7, nan_voxels, zero_spacing, missing_file, path_traversal, absolute_path_outside_root,
         empty_datalist, label_count_mismatch]


def _refused_before_training(site_yaml: Path, task: str, tmp: Path) -> str:
    out = tmp / "run"
    with pytest.raises(DataError) as err:
        run_local(get_task(task, "tiny"), [load_site_config(site_yaml)], out, epochs=1, runtime=Runtime.create("cpu"))
    assert not any(out.glob("*.pt")), "a model was written although the data was refused"
    return str(err.value)


@pytest.mark.parametrize("breaker", CASES, ids=[c.__name__ for c in CASES])
def test_bad_spleen_input_is_refused_with_its_kind(breaker, spleen_dataset, tmp_path):
    b = Broken(spleen_dataset, tmp_path, "spleen")
    named, kind = breaker(b)
    _, _, report = check_data(get_task("spleen", "tiny"), b.root, b.datalist)
    fatal = report.fatal
    assert [p.kind for p in fatal] == [kind], report.render()
    assert Path(fatal[0].file).name == named.name or named.name in fatal[0].file
    assert report.kinds() == {kind: 1}
    message = _refused_before_training(b.site_yaml(), "spleen", tmp_path)
    assert f"[{kind}]" in message and named.name in message


def test_3d_image_for_the_two_channel_prostate_task(prostate_dataset, tmp_path):
    b = Broken(prostate_dataset, tmp_path, "prostate")
    data, _ = b.original("image")
    named = b.replace("image", data=data[..., 0])
    _, _, report = check_data(get_task("prostate", "tiny"), b.root, b.datalist)
    assert [p.kind for p in report.fatal] == ["wrong_dimensions"]
    assert "needs 4D with 2 channels" in report.fatal[0].message
    assert named.name in _refused_before_training(b.site_yaml(), "prostate", tmp_path)


def test_unknown_yaml_key_is_refused_before_anything_runs(spleen_dataset, tmp_path):
    b = Broken(spleen_dataset, tmp_path, "spleen")
    path = b.site_yaml()
    path.write_text(path.read_text() + "learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'; allowed keys"):
        load_site_config(path)
    assert main(["data", "check", "--task", "spleen", "--site-config", str(path)]) == 2


def test_every_problem_is_reported_at_once_and_check_exits_non_zero(spleen_dataset, tmp_path, capsys):
    b = Broken(spleen_dataset, tmp_path, "spleen")
    corrupt_gzip(b)
    b.case = b.lists["training"][1]
    label_value_7(b)
    b.case = b.lists["validation"][0]
    missing_file(b)
    code = main(["data", "check", "--task", "spleen", "--site-config", str(b.site_yaml())])
    out = capsys.readouterr().out
    assert code == 1
    assert "3 fatal problem(s)" in out and "corrupt_file x1" in out and "bad_label_values x1" in out
    assert "missing_file x1" in out


def test_warnings_do_not_stop_training(spleen_dataset, tmp_path):
    b = Broken(spleen_dataset, tmp_path, "spleen")
    data, _ = b.original("label")
    b.replace("label", data=np.zeros_like(data))  # empty training label
    b.case = b.lists["training"][1]
    image, _ = b.original("image")
    b.replace("image", data=(image.astype(np.float32) / 1000.0))  # not HU any more
    _, _, report = check_data(get_task("spleen", "tiny"), b.root, b.datalist)
    assert report.fatal == [] and sorted(p.kind for p in report.warnings) == ["empty_label", "implausible_intensity"]


def test_symlinked_data_roots_are_fine(spleen_dataset, tmp_path):
    b = Broken(spleen_dataset, tmp_path, "spleen")  # every image is a symlink into another folder
    _, _, report = check_data(get_task("spleen", "tiny"), b.root, b.datalist)
    assert report.problems == [] and report.cases_checked == 10
