"""Chaos against real processes: kill, stop or cut off a site's client mid-job and assert the end state.

Each test runs ``fedseg simulate`` as a child process (the demo's own command) and hurts site-2's
simulator worker, found among this test's own descendants by its client name and the test's own
workspace path (bench/chaos.py). Detection speed is a benchmark figure (``python bench/chaos.py``);
here only how the run ended is asserted: that it ended, with which models and whom it names.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))  # bench/ lives at the repository root, outside the installed package

from bench.chaos import FAULTS, make_data, rounds_lost, run_scenario  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("chaos"))


def _run(name, data, tmp_path):
    outcome = run_scenario(FAULTS[name], data, tmp_path)
    assert outcome.fault_at is not None, outcome.stdout_tail  # the fault really happened
    assert outcome.exit_code is not None, outcome.stdout_tail  # fedseg simulate ended by itself
    # The scenarios run with --no-report: the results are recorded, the pictures and report.md are not.
    run_dir = tmp_path / name
    assert (run_dir / "results.json").is_file() and not (run_dir / "report.md").exists()
    assert not list(run_dir.glob("*.png")) and "no report (--no-report)" in outcome.stdout_tail
    return outcome


def _continued_without_site2(outcome) -> None:
    assert outcome.exit_code == 0, outcome.stdout_tail
    assert outcome.ended["reason"] == "completed"
    assert outcome.final_model and outcome.best_model
    assert rounds_lost(outcome) >= 1
    # Every round after the loss was averaged over site-1 alone, and nothing from site-2 after it died.
    assert outcome.participation["site-1"]["delivered"] == list(range(FAULTS[outcome.fault].rounds))
    assert "site-1" in outcome.matrix_sites


def test_demo_ends_nonzero_naming_the_site_when_a_site_of_a_two_site_minimum_dies(data, tmp_path):
    outcome = _run("kill_training_min2", data, tmp_path)
    assert outcome.exit_code == 1, outcome.stdout_tail
    assert outcome.ended["reason"] == "too_few_sites" and outcome.ended["sites"] == ["site-2"]
    assert "ERROR: training stopped before its last round" in outcome.stdout_tail and "site-2" in outcome.stdout_tail
    # The last global model is kept and the remaining site still scores it.
    assert outcome.final_model and outcome.matrix_sites == ["site-1"]
    assert outcome.cross_site["skipped"] == {"site-2": "too_few_sites"}


def test_a_site_killed_while_sending_its_update_is_left_out_and_the_job_completes(data, tmp_path):
    outcome = _run("kill_upload", data, tmp_path)
    _continued_without_site2(outcome)
    assert outcome.matrix_sites == ["site-1"] and "site-2" in outcome.cross_site["skipped"]
    assert 2 in outcome.participation["site-2"].get("missed", [])


def test_a_site_killed_during_cross_site_evaluation_is_not_waited_for(data, tmp_path):
    outcome = _run("kill_cross_site", data, tmp_path)
    assert outcome.exit_code == 0 and outcome.ended["reason"] == "completed", outcome.stdout_tail
    assert outcome.participation["site-2"]["delivered"] == list(range(FAULTS["kill_cross_site"].rounds))  # whole
    assert outcome.cross_site["stopped_waiting_for"] == ["site-2"]
    assert "site-1" in outcome.matrix_sites


def _rounds_trained(run_dir, site: str) -> set[int]:
    """Rounds whose update ``site`` finished and sent, from its own log lines in the simulator log."""
    log = run_dir / "simulator.log"
    return {int(m.group(1)) for m in re.finditer(rf"fedseg {site} round (\d+): global model val_dice", log.read_text())}


def _server_lines(run_dir) -> str:
    """fedseg's own lines from the simulator log: what the server decided, round by round."""
    log = (run_dir / "simulator.log").read_text(errors="replace").splitlines()
    return "\n".join(line for line in log if "fedseg: " in line)[-6000:]


@pytest.mark.parametrize("fault", ["stop_resume", "network_cut"])
def test_a_site_that_comes_back_is_sent_the_next_round_and_its_late_update_is_refused(data, tmp_path, fault):
    outcome = _run(fault, data, tmp_path)
    assert outcome.exit_code == 0 and outcome.ended["reason"] == "completed", outcome.stdout_tail
    site2 = outcome.participation["site-2"]
    lost = sorted(set(site2.get("missed", []) + site2.get("withheld", []) + site2.get("failed", [])))
    assert lost, site2
    rejoined = any(r > lost[-1] for r in site2["delivered"])
    assert rejoined, f"site-2 never rejoined: {site2}\n{_server_lines(tmp_path / fault)}"
    # An update for a closed round is never averaged into a later one: every round the server counts
    # site-2 in is a round site-2 trained for.
    trained = _rounds_trained(tmp_path / fault, "site-2")
    assert set(site2["delivered"]) <= trained, (site2, trained)
    if fault == "stop_resume":  # the stopped site did finish its round-2 update, late: it was not used
        assert lost[0] in trained and lost[0] not in site2["delivered"]
    for late in outcome.late_updates:
        assert late["site"] == "site-2" and late["round"] != late["arrived_in_round"]
    assert sorted(outcome.matrix_sites) == ["site-1", "site-2"]


def test_a_site_whose_data_disappears_says_so_leaves_and_names_no_file(data, tmp_path):
    outcome = _run("data_removed", data, tmp_path)
    assert outcome.exit_code == 0 and outcome.ended["reason"] == "completed", outcome.stdout_tail
    left = outcome.participation["site-2"]["left"]
    assert left and max(outcome.participation["site-2"]["delivered"]) < left[0]  # never trained on after
    reason = outcome.cross_site["skipped"]["site-2"]
    assert "data changed since the check" in reason and "missing_file x1" in reason
    # The file's name stays at the site: in no log line (site logs included) and nothing the server keeps.
    name = Path(outcome.removed_file).name
    run_dir = tmp_path / "data_removed"
    for path in [run_dir / "simulator.log", run_dir / "results.json",
                 *(run_dir / "workspace").glob("*/server/**/*.json")]:
        assert name not in path.read_text(errors="replace"), path
    reports = list(run_dir.rglob("reports/data_changed.txt"))  # beside the sites' YAMLs, in the run folder
    assert reports and name in reports[0].read_text()  # ... but the site's own report lists it
