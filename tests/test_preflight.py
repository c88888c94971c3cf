"""Fault injection: bad input is refused before training, each with its own kind of error.

Every case breaks one thing in a private copy of a phantom dataset (files are linked, the broken
one is replaced), then checks (1) the data check reports exactly that kind, naming the file, and
(2) a training run stops before training with nothing written.
"""

import gzip
import json
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hostile_data import HOSTILE, Broken, break_empty_validation, gzip_bomb
from fedseg.cli import main
from fedseg.data.checks import check_case, check_data
from fedseg.data.datalist import Case
from fedseg.data.problems import ProblemReport
from fedseg.engine import Runtime
from fedseg.errors import ConfigError, DataError
from fedseg.runners.local import run_local
from fedseg.site_config import load_site_config
from fedseg.site_data import open_site_data
from fedseg.tasks import get_task


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


def test_symlinks_inside_the_root_are_fine(spleen_dataset, tmp_path):
    b = Broken(spleen_dataset, tmp_path, "spleen")
    store = b.root / "store"
    store.mkdir()
    path = b.path("image")
    path.rename(store / path.name)
    path.symlink_to(Path("..") / "store" / path.name)
    _, _, report = check_data(get_task("spleen", "tiny"), b.root, b.datalist)
    assert report.problems == [] and report.cases_checked == 10


def test_symlink_leaving_the_root_is_refused_unless_the_site_allows_it(spleen_dataset, tmp_path):
    b = Broken(spleen_dataset, tmp_path, "spleen", keep=1)
    path = b.path("image")
    path.unlink()
    path.symlink_to(spleen_dataset / b.case["image"])
    with pytest.raises(DataError, match=r"\[symlink_escapes_root\]"):
        open_site_data(get_task("spleen", "tiny"), load_site_config(b.site_yaml()))
    site = load_site_config(b.site_yaml(symlinks_outside_root="warn"))
    data = open_site_data(get_task("spleen", "tiny"), site)
    assert [(p.kind, p.fatal) for p in data.report.problems] == [("symlink_escapes_root", False)]


def test_training_only_site_may_have_no_validation_cases(spleen_dataset, tmp_path):
    b = Broken(spleen_dataset, tmp_path, "spleen", keep=1)
    break_empty_validation(b)
    with pytest.raises(DataError, match=r"\[empty_split\].*'validation' lists no cases.*training_only: true"):
        open_site_data(get_task("spleen", "tiny"), load_site_config(b.site_yaml()))
    data = open_site_data(get_task("spleen", "tiny"), load_site_config(b.site_yaml(training_only=True)))
    assert data.report.problems == [] and data.items("validation") == []


@pytest.mark.timeout(60)  # a FIFO that were opened would block forever
@pytest.mark.parametrize("breaker", HOSTILE, ids=[c.__name__.removeprefix("break_") for c in HOSTILE])
def test_hostile_input_is_reported_with_its_kind(breaker, spleen_dataset, tmp_path):
    b = Broken(spleen_dataset, tmp_path, "spleen", keep=2)
    expect = breaker(b)
    _, _, report = check_data(get_task("spleen", "tiny"), b.root, b.datalist)
    assert report.kinds() == {expect.kind: expect.count}, report.render()
    assert all(p.fatal == expect.fatal for p in report.problems), report.render()
    assert all(expect.file.name in p.file for p in report.problems), report.render()
    assert "Traceback" not in report.render()
    # What leaves the site names kinds and counts only.
    assert expect.file.name not in report.summary() and str(b.root) not in report.summary()
    assert f"{expect.kind} x{expect.count}" in report.summary()


def test_gzip_bomb_is_read_in_bounded_memory(spleen_dataset, tmp_path):
    # 512^3 int16 zeros: about 260 KB on disk, 268 MB inflated; within the size limit, so it is
    # streamed through (never held whole) and refused for what it holds.
    b = Broken(spleen_dataset, tmp_path, "spleen", keep=1)
    path = b.path("image")
    path.unlink()
    gzip_bomb(path)
    assert path.stat().st_size < 600_000
    tracemalloc.start()
    try:
        _, _, report = check_data(get_task("spleen", "tiny"), b.root, b.datalist)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.kinds() == {"constant_image": 1}, report.render()
    assert peak < 96 * 2**20, f"the check allocated {peak / 2**20:.0f} MiB"


def test_qform_disagreeing_with_sform_is_a_warning(spleen_dataset, tmp_path):
    b = Broken(spleen_dataset, tmp_path, "spleen", keep=1)
    data, affine = b.original("image")
    img = nib.Nifti1Image(data, affine)
    shifted = affine.copy()
    shifted[:3, 3] += 5.0
    img.set_qform(shifted, code=1)
    img.set_sform(affine, code=1)
    path = b.path("image")
    path.unlink()
    nib.save(img, str(path))
    _, _, report = check_data(get_task("spleen", "tiny"), b.root, b.datalist)
    assert [(p.kind, p.fatal) for p in report.problems] == [("qform_sform_mismatch", False)], report.render()
    assert path.name in report.problems[0].file


def test_class_name_other_than_the_tasks_is_a_warning(liver_dataset, tmp_path):
    # MSD Task03 calls label 2 "cancer"; fedseg's liver task calls it "tumour": same class, other word.
    b = Broken(liver_dataset, tmp_path, "liver", keep=1)
    path, info = b.dataset_json()
    info["labels"]["2"] = "cancer"
    path.write_text(json.dumps(info))
    _, _, report = check_data(get_task("liver", "tiny"), b.root, b.datalist)
    assert [(p.kind, p.fatal) for p in report.problems] == [("class_name_mismatch", False)], report.render()


def test_prostate_zones_swapped_in_dataset_json_are_refused(prostate_dataset, tmp_path):
    b = Broken(prostate_dataset, tmp_path, "prostate", keep=1)
    path, info = b.dataset_json()
    info["labels"] = {"0": "background", "1": "TZ", "2": "PZ"}
    path.write_text(json.dumps(info))
    _, _, report = check_data(get_task("prostate", "tiny"), b.root, b.datalist)
    assert report.kinds() == {"class_names_swapped": 2}, report.render()
    assert "label 1 is named 'TZ', which is label 2" in report.fatal[0].message


def test_an_unforeseen_error_is_a_named_problem_not_a_traceback(spleen_dataset, tmp_path):
    b = Broken(spleen_dataset, tmp_path, "spleen", keep=1)
    report = ProblemReport()
    # a label "path" that is not a path at all: no check foresees it
    check_case(Case(b.path("image"), b"\xff\xfe", "x"), get_task("spleen", "tiny"), "training", report)
    assert [p.kind for p in report.problems] == ["unexpected_error"], report.render()
    assert "TypeError" in report.problems[0].message and "Traceback" not in report.render()


def test_size_limit_comes_from_the_site_yaml(spleen_dataset, tmp_path):
    b = Broken(spleen_dataset, tmp_path, "spleen", keep=1)
    path = b.site_yaml()
    path.write_text(path.read_text().replace("datalist:", "max_voxels: 1000\n    datalist:", 1))
    site = load_site_config(path)
    assert site.datasets["spleen"].max_voxels == 1000
    with pytest.raises(DataError, match=r"\[too_large\].*limit for task 'spleen' is 1,000"):
        open_site_data(get_task("spleen", "tiny"), site)
    path.write_text(path.read_text().replace("max_voxels: 1000", "max_voxels: many"))
    with pytest.raises(ConfigError, match="'max_voxels' must be a whole number"):
        load_site_config(path)
