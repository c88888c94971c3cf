"""The commands a user types, run in-process."""

import json

import nibabel as nib
import pytest

from conftest import make_site
from fedseg.cli import main
from fedseg.data.split import split_dataset


@pytest.fixture(scope="module")
def two_sites(spleen_dataset, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two")
    splits = split_dataset(spleen_dataset, 2, tmp / "splits", seed=3)
    return [make_site(tmp, f"site-{k}", "spleen", spleen_dataset, splits[f"site-{k}"]) for k in (1, 2)]


def test_synth_and_split_commands(tmp_path, capsys):
    assert main(["data", "synth", "--task", "spleen", "--out", str(tmp_path / "d"), "--cases", "3", "--seed", "9"]) == 0
    assert (tmp_path / "d" / "imagesTr" / "spleen_2.nii.gz").is_file()
    assert main(["data", "split", "--dataset", str(tmp_path / "d"), "--sites", "1", "--out", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / "site-All.json").read_text())["test"]
    assert "site-All" in capsys.readouterr().out


def test_single_site_and_pooled_training_report_the_same_test_lists(two_sites, tmp_path, capsys):
    args = ["train", "--task", "spleen", "--variant", "tiny", "--epochs", "1", "--val-every", "1", "--device", "cpu"]
    assert main(args + ["--site-config", str(two_sites[0]), "--out", str(tmp_path / "one")]) == 0
    assert main(args + ["--pooled", *map(str, two_sites), "--out", str(tmp_path / "all")]) == 0
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    pooled = json.loads((tmp_path / "all" / "results.json").read_text())
    assert one["mode"] == "single-site" and pooled["mode"] == "pooled"
    assert set(one["models"]["final"]) == {"site-1"}
    assert set(pooled["models"]["final"]) == {"site-1", "site-2", "pooled"}
    assert pooled["models"]["final"]["site-1"]["cases"] == one["models"]["final"]["site-1"]["cases"]
    assert (tmp_path / "all" / "final_model.pt").is_file() and (tmp_path / "all" / "best_model.pt").is_file()
    assert "| final" in capsys.readouterr().out


def test_infer_command_detects_the_variant(trained_spleen, real_ct, tmp_path):
    _, _, model = trained_spleen
    out = tmp_path / "mask.nii.gz"
    assert main(["infer", "--task", "spleen", "--model", str(model), "--image", str(real_ct), "--out", str(out)]) == 0
    assert nib.load(str(out)).shape == nib.load(str(real_ct)).shape


def test_errors_are_one_clear_line_and_exit_2(tmp_path, capsys):
    code = main(["data", "check", "--task", "spleen", "--site-config", str(tmp_path / "nope.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and "nope.yaml not found" in err and "Traceback" not in err


def test_data_check_lists_problems_and_fails(two_sites, tmp_path, capsys):
    assert main(["data", "check", "--task", "spleen", "--site-config", str(two_sites[0])]) == 0
    assert "0 fatal problem(s)" in capsys.readouterr().out
