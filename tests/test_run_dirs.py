"""Runs never clobber each other, and numbers that make no sense are refused in one line."""

import re

import pytest

from fedseg.cli import main
from fedseg.errors import FedsegError
from fedseg.run_dirs import claim_run_dir, new_run_dir


def test_new_run_folders_are_named_and_never_shared(tmp_path):
    first = new_run_dir("spleen", "site-1", "local", root=tmp_path)
    second = new_run_dir("spleen", "site-1", "local", root=tmp_path)
    assert first != second and first.is_dir() and second.is_dir()
    assert re.fullmatch(r"spleen_site-1_local_\d{8}-\d{6}", first.name)
    # Within the same second a counter is added; a second later the time differs.
    assert second.name == f"{first.name}-2" or re.fullmatch(r"spleen_site-1_local_\d{8}-\d{6}", second.name)


def test_a_non_empty_folder_is_refused_unless_overwrite(tmp_path):
    run = tmp_path / "run"
    assert claim_run_dir(run, overwrite=False) == run and run.is_dir()  # missing: made
    assert claim_run_dir(run, overwrite=False) == run  # empty: fine
    (run / "results.json").write_text("{}")
    (run / "notes.txt").write_text("mine")
    (run / "tb_events").mkdir()
    with pytest.raises(FedsegError, match=r"--out .*run: folder exists and is not empty.*--overwrite"):
        claim_run_dir(run, overwrite=False)
    claim_run_dir(run, overwrite=True, replaced=("results.json", "tb_events", "*.png"))
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]  # only the run's own outputs were removed
    (tmp_path / "file").write_text("x")
    with pytest.raises(FedsegError, match="is a file, not a folder"):
        claim_run_dir(tmp_path / "file", overwrite=True)


@pytest.mark.parametrize("argv, flag", [
    (["train", "--task", "spleen", "--site-config", "s.yaml", "--epochs", "0"], "--epochs: must be at least 1, got 0"),
    (["train", "--task", "spleen", "--site-config", "s.yaml", "--val-every", "-2"], "--val-every: must be at least 1"),
    (["train", "--task", "spleen", "--site-config", "s.yaml", "--backend", "ray", "--workers", "0"], "--workers"),
    (["train", "--task", "spleen", "--site-config", "s.yaml", "--gpus-per-worker", "-1"], "--gpus-per-worker"),
    (["simulate", "--rounds", "-1"], "--rounds: must be at least 1, got -1"),
    (["simulate", "--sites", "0"], "--sites: must be at least 1, got 0"),
    (["simulate", "--local-epochs", "0"], "--local-epochs"),
    (["simulate", "--cases", "0"], "--cases"),
    (["simulate", "--round-timeout", "0"], "--round-timeout"),
    (["poc", "--sites", "0"], "--sites"),
    (["jobs", "export", "--rounds", "0"], "--rounds"),
    (["data", "synth", "--task", "spleen", "--out", "d", "--cases", "zero"], "expected a whole number, got 'zero'"),
    (["data", "split", "--dataset", "d", "--sites", "0", "--out", "s"], "--sites"),
    (["tune", "--task", "spleen", "--site-config", "s.yaml", "--trials", "0"], "--trials"),
    (["evaluate", "--task", "spleen", "--model", "m", "--site-config", "s.yaml", "--overlays", "-1"], "--overlays"),
    (["infer", "--task", "spleen", "--model", "m", "--image", "i", "--out", "o", "--threads", "0"], "--threads"),
])
def test_invalid_numbers_are_refused_in_one_line(argv, flag, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert flag in err and len(err.strip().splitlines()) == 1, err


def test_train_refuses_a_used_out_folder(spleen_site, tmp_path, capsys):
    out = tmp_path / "earlier_run"
    out.mkdir()
    (out / "results.json").write_text("{}")
    code = main(["train", "--task", "spleen", "--variant", "tiny", "--site-config", str(spleen_site),
                 "--out", str(out), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "earlier_run: folder exists and is not empty" in err and "--overwrite" in err
    assert (out / "results.json").read_text() == "{}"


def test_simulate_refuses_a_used_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text("{}")
    code = main(["simulate", "--task", "spleen", "--sites", "2", "--run-dir", str(run), "--data", str(tmp_path / "d")])
    assert code == 2 and "--run-dir" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before synthesizing anything
