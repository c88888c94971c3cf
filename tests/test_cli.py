"""The commands a user types, run in-process."""

import json

import nibabel as nib
import pytest

from conftest import make_site
from test_tracking import read_tensorboard
from fedseg.cli import main
from fedseg.data.split import split_dataset
from fedseg.site_config import load_site_config


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
    # What the report and the comparison rows need, and nothing that names a case.
    site_1 = json.loads(load_site_config(two_sites[0]).task_data("spleen").datalist.read_text())
    assert one["training_cases"] == len(site_1["training"]) > 0
    assert pooled["training_cases"] > one["training_cases"]
    per_case = pooled["per_case_dice"]["final"]
    assert set(per_case) == {"site-1", "site-2"}
    assert len(per_case["site-1"]["spleen"]) == one["models"]["final"]["site-1"]["cases"]
    assert "spleen_" not in json.dumps(pooled["per_case_dice"])
    # TensorBoard events from a local run, read back: the same names the federated clients send.
    scalars = read_tensorboard(tmp_path / "one" / "tb_events")
    assert [step for step, _ in scalars["val_dice_spleen"]] == [1] and {"train_loss", "learning_rate"} <= set(scalars)
    # The end of the run: its report, figures and overlays of a few test cases.
    for name in ("report.md", "validation_dice_per_class.png", "test_dice_matrix.png", "case_dice_spread.png",
                 "overlay_best_site-1_case1.png"):
        assert (tmp_path / "one" / name).is_file(), name


def test_train_writes_a_new_run_folder_each_time(two_sites, tmp_path, monkeypatch, capsys):
    """The folder logic alone (a stand-in for the training): new folders by default, a used --out refused."""
    import fedseg.cli
    import fedseg.runners.local
    from fedseg.runners.local import LocalRunResult

    def fake_run(spec, sites, out, **kwargs):
        (out / "results.json").write_text("{}")
        return LocalRunResult({}, 1, 0.5, ("background", "spleen"), 1.0, out)

    monkeypatch.setattr(fedseg.runners.local, "run_local", fake_run)
    monkeypatch.setattr(fedseg.cli, "_local_figures", lambda *a, **k: [])
    monkeypatch.chdir(tmp_path)
    args = ["train", "--task", "spleen", "--variant", "tiny", "--epochs", "1", "--site-config", str(two_sites[0])]
    assert main(args) == 0 and main(args) == 0
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(r.name.startswith("spleen_site-1_local_") for r in runs)
    assert f"run folder: runs/{runs[0].name}" in capsys.readouterr().out
    assert main(args + ["--out", str(runs[0])]) == 2  # used: refused
    assert "not empty" in capsys.readouterr().err
    assert main(args + ["--out", str(runs[0]), "--overwrite"]) == 0
    assert main(args + ["--out", "runs/new_one"]) == 0 and (tmp_path / "runs" / "new_one" / "results.json").is_file()


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
