"""fedseg infer: outputs checked before inference, several inputs with one model load, windows as progress."""

import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from fedseg.cli import main
from fedseg.engine import Runtime
from fedseg.errors import FedsegError
from fedseg.infer import Predictor, plan_outputs, sliding_windows, window_progress
from fedseg.tasks import get_task


@pytest.fixture
def image(tmp_path, real_ct):
    return shutil.copyfile(real_ct, tmp_path / "ct.nii.gz")


def test_a_folder_receives_one_mask_per_input(tmp_path, image):
    other = shutil.copyfile(image, tmp_path / "other.nii")
    pairs = plan_outputs([image, other], str(tmp_path / "masks") + "/")
    assert [t.name for _, t in pairs] == ["ct_mask.nii.gz", "other_mask.nii.gz"]
    existing = tmp_path / "existing"
    existing.mkdir()
    assert plan_outputs([image], existing)[0][1] == existing / "ct_mask.nii.gz"  # an existing folder, no slash


@pytest.mark.parametrize("out, message", [
    ("o.png", r"o.png: unsupported output type '.png'; give a .nii.gz or .nii file, or a folder ending in /"),
    ("mask", r"unsupported output type '\(no extension\)'"),
    ("mask.dcm", r"\.dcm, a DICOM SEG, needs a DICOM series folder as --image"),
])
def test_unsupported_outputs_are_refused(tmp_path, image, out, message):
    with pytest.raises(FedsegError, match=message):
        plan_outputs([image], tmp_path / out)


def test_unwritable_places_are_refused(tmp_path, image):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(FedsegError, match="a_file is a file, so no folder can be made there"):
        plan_outputs([image], blocker / "sub" / "mask.nii.gz")
    (tmp_path / "masks" / "ct_mask.nii.gz").mkdir(parents=True)
    with pytest.raises(FedsegError, match="ct_mask.nii.gz: is a folder, not a file"):
        plan_outputs([image], tmp_path / "masks")
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(FedsegError, match="permission denied"):
            plan_outputs([image], locked / "mask.nii.gz")


def test_several_inputs_need_a_folder_and_distinct_names(tmp_path, image):
    with pytest.raises(FedsegError, match="2 inputs need a folder"):
        plan_outputs([image, image], tmp_path / "mask.nii.gz")
    twin = tmp_path / "sub"
    twin.mkdir()
    shutil.copyfile(image, twin / "ct.nii.gz")
    with pytest.raises(FedsegError, match="several inputs would write .*ct_mask.nii.gz"):
        plan_outputs([image, twin / "ct.nii.gz"], str(tmp_path / "out") + "/")
    with pytest.raises(FedsegError, match="--image: not found: .*nope.nii.gz"):
        plan_outputs([tmp_path / "nope.nii.gz"], tmp_path / "m.nii.gz")


def test_cli_refuses_a_bad_output_before_reading_the_model(tmp_path, image, capsys):
    model = tmp_path / "never_read.pt"  # does not even exist: the output is refused first
    code = main(["infer", "--task", "spleen", "--model", str(model), "--image", str(image), "--out", str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    assert code == 2 and "unsupported output type '.png'" in err and len(err.strip().splitlines()) == 1


def test_cli_names_a_file_that_is_not_a_model(tmp_path, image, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    code = main(["infer", "--task", "spleen", "--model", str(notes), "--image", str(image),
                 "--out", str(tmp_path / "m.nii.gz")])
    err = capsys.readouterr().err
    assert code == 2 and "notes.txt: not a model file: it is a text file" in err and "KeyError" not in err


def test_several_images_one_model_load(trained_spleen, tmp_path, image, monkeypatch, capsys):
    _, _, model = trained_spleen
    small = tmp_path / "small.nii.gz"
    ct = nib.load(str(image))
    nib.save(nib.Nifti1Image(np.asarray(ct.dataobj)[20:100, 20:90, :], ct.affine), str(small))
    loads = []
    real_init = Predictor.__init__
    monkeypatch.setattr(Predictor, "__init__", lambda self, *a, **k: (loads.append(1), real_init(self, *a, **k))[1])
    code = main(["infer", "--task", "spleen", "--model", str(model), "--image", str(image), str(small),
                 "--out", str(tmp_path / "masks") + "/", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0 and len(loads) == 1
    for name, shape in (("ct_mask.nii.gz", ct.shape), ("small_mask.nii.gz", (80, 70, ct.shape[2]))):
        assert nib.load(str(tmp_path / "masks" / name)).shape == shape
        assert name in out
    assert "[2/2]" in out


def test_window_progress_counts_every_network_call(trained_spleen, real_ct):
    _, _, model = trained_spleen
    spec = get_task("spleen", "tiny")
    predictor = Predictor(spec, model, Runtime.create("cpu", num_threads=2))
    item = predictor.preprocess({"image": str(real_ct)})["image"]
    shape = tuple(item.shape[1:])
    with window_progress(predictor.engine.network, shape, spec, "segment") as progress:
        predictor.engine.predict_logits(item)
    assert progress.step == progress.total == sliding_windows(shape, spec) > 1
    assert not predictor.engine.network._forward_hooks  # the counting hook is gone afterwards


def test_overlays_show_reference_and_prediction(trained_spleen, tmp_path):
    import matplotlib.image as mpimg

    from fedseg.site_eval import write_overlays

    _, data, model = trained_spleen
    written = write_overlays(get_task("spleen", "tiny"), model, [data], tmp_path, Runtime.create("cpu", num_threads=2),
                             model_label="final", max_cases=2)
    assert [p.name for p in written] == ["overlay_final_site-1_case1.png", "overlay_final_site-1_case2.png"]
    for path in written:
        pixels = mpimg.imread(str(path))
        assert path.stat().st_size > 30_000 and pixels.shape[1] > 1000 and pixels[..., :3].std() > 0.1



def test_evaluate_at_a_site_writes_per_case_scores_spread_and_overlays(spleen_site, tmp_path, capsys):
    """fedseg evaluate: what a site draws from a downloaded global model; per-case values carry no names."""
    import json

    from fedseg.checkpoint import save_model
    from fedseg.networks import build_network

    spec = get_task("spleen", "tiny")
    model = save_model(tmp_path / "FL_global_model.pt", build_network(spec).state_dict(), spec)
    out = tmp_path / "eval"
    assert main(["evaluate", "--task", "spleen", "--model", str(model), "--site-config", str(spleen_site),
                 "--out", str(out), "--overlays", "1", "--device", "cpu"]) == 0
    body = json.loads((out / "evaluation.json").read_text())
    assert body["site"] == "site-1" and len(body["per_case_dice"]["site-1"]["spleen"]) == 2  # the 2 test cases
    assert "spleen_" not in json.dumps(body["per_case_dice"]) and ".nii" not in json.dumps(body["per_case_dice"])
    assert sorted(p.name for p in out.glob("*.png")) == ["case_dice_spread.png", "overlay_FL_global_model_site-1_case1.png"]
    assert "site-1 spleen: 2 case(s)" in capsys.readouterr().out
