"""A real NVFlare POC deployment on loopback: provision, start, submit (CLI and FLARE API), download, report.

Everything runs in scratch folders (HOME and NVFLARE_POC_WORKSPACE point there) and every process the
deployment started is stopped at the end, also when a test fails.
"""

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO
from fedseg.data.synth import synthesize
from fedseg.flare.jobs import JobSpec, export_job
from fedseg.flare.poc import ADMIN, PocDeployment, run_poc
from fedseg.flare.report import write_report
from fedseg.flare.results import BEST_MODEL, FINAL_MODEL, read_job_results
from fedseg.flare.simulate import prepare_sites
from fedseg.site_config import load_site_config

pytestmark = pytest.mark.slow
SITES = ["site-1", "site-2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("poc") / "data"
    synthesize("spleen", root, cases=8, seed=8, workers=2)
    return root


def _complete(result_dir: Path) -> None:
    """Every round averaged both sites, and every site scored every model."""
    results = read_job_results(result_dir)
    assert results.rounds, "no round metrics"
    for r in results.rounds:
        assert sorted(s["name"] for s in r["sites"]) == SITES, f"round {r['round']} lacks a site's update"
    assert sorted(results.cross_site) == SITES
    for site, per_model in results.cross_site.items():
        assert {FINAL_MODEL, BEST_MODEL, *SITES} <= set(per_model), f"{site}: incomplete cross-site row"
        assert 0.0 <= per_model[FINAL_MODEL]["test_dice_spleen"] <= 1.0


def _committed_job_with_rounds(name: str, rounds: int, out: Path) -> Path:
    """A copy of the committed job folder ``name`` that differs from it in ``num_rounds`` only (a shorter run)."""
    import shutil

    job = shutil.copytree(REPO / "jobs" / name, out / name)
    server = job / "app" / "config" / "config_fed_server.json"
    config = json.loads(server.read_text())
    [workflow] = [w for w in config["workflows"] if "num_rounds" in w.get("args", {})]
    workflow["args"]["num_rounds"] = rounds
    server.write_text(json.dumps(config, indent=2))
    return job


def test_committed_job_via_cli_and_a_job_via_the_flare_api_where_byoc_is_forbidden(data, tmp_path):
    configs = prepare_sites("spleen", data, 2, tmp_path, cases=8, seed=0)
    short = export_job(JobSpec("spleen", num_rounds=2, local_epochs=1), tmp_path / "jobs")
    bundled = export_job(JobSpec("spleen", num_rounds=2, local_epochs=1), tmp_path / "bundled", bundle_code=True)
    with PocDeployment(tmp_path / "deployment", 2) as poc:
        poc.prepare()
        poc.forbid_byoc()  # thin jobs need no right to run code; bundled ones are refused
        for site in SITES:
            task = load_site_config(configs / f"{site}.yaml").task_data("spleen")
            poc.place_site_config(site, {"spleen": (task.data_root, task.datalist)}, device="cpu", num_threads=1)
        # Every kit points at this deployment's own free port, not NVFlare's default 8002 that any other
        # POC on the machine would share; the jobs below ran through it.
        assert poc.port and poc.port != 8002
        assert f"localhost:{poc.port}" in (poc.kit("site-1") / "startup" / "fed_client.json").read_text()
        assert json.loads((poc.kit(ADMIN) / "startup" / "fed_admin.json").read_text())["admin"]["port"] == poc.port
        poc.start()
        # NVFlare checks the BYOC right when it deploys a job's apps: the bundled job never runs.
        refused = poc.submit(bundled)
        assert poc.wait(refused, timeout=600) != "FINISHED:COMPLETED"
        assert "BYOC not permitted" in "\n".join(p.read_text() for p in poc.kit("server").rglob("log.txt"))
        cli_job = poc.submit(_committed_job_with_rounds("spleen_fedavg", 3, tmp_path / "committed"))
        assert poc.wait(cli_job, timeout=1200) == "FINISHED:COMPLETED"
        api_job = poc.submit_api(short)
        assert poc.wait(api_job, timeout=600) == "FINISHED:COMPLETED"
        downloads = [poc.download(j, tmp_path / "download") for j in (cli_job, api_job)]
        site_log = "\n".join(p.read_text() for p in poc.kit("site-1").rglob("log.txt"))
    assert poc.processes() == [], "POC processes are still running"
    # Sites read their YAML from their own startup kit, not from the repository, and ran the installed fedseg.
    assert "site config from the site's startup kit (local/fedseg_site.yaml)" in site_log
    assert "fedseg.flare.executor" in site_log or "fedseg/flare/client.py" in site_log
    for result_dir in downloads:
        _complete(result_dir)
    assert len(read_job_results(downloads[0]).rounds) == 3  # the committed job, its round count lowered
    report, out = write_report(downloads[0], tmp_path / "report")
    assert "final global" in report.markdown() and (out / "validation_dice.png").stat().st_size > 10_000
    assert json.loads((out / "report.json").read_text())["best_round"] is not None


def _python_without_fedseg(tmp: Path) -> Path:
    """A venv that sees this environment's packages (nvflare, torch, MONAI) but not fedseg.

    Its .pth adds our site-packages as a plain path, so .pth files there (fedseg's editable install)
    are not processed.
    """
    env = tmp / "no-fedseg"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(env)], check=True)
    site = next((env / "lib").glob("python3*/site-packages"))
    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    (site / "deps.pth").write_text("\n".join(paths) + "\n")
    return env / "bin"


def test_bundled_job_runs_where_fedseg_is_not_installed(data, tmp_path):
    python = _python_without_fedseg(tmp_path)
    probe = subprocess.run([str(python / "python3"), "-c", "import fedseg"], capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'fedseg'" in probe.stderr
    ok = subprocess.run([str(python / "python3"), "-c", "import nvflare, torch, monai, nibabel"])
    assert ok.returncode == 0
    job = JobSpec("spleen", num_rounds=2, local_epochs=1)
    job_dir = export_job(job, tmp_path / "jobs", bundle_code=True)
    assert (job_dir / "app" / "custom" / "fedseg" / "flare" / "client.py").is_file()
    run = run_poc(job, job_dir, n_sites=2, data_dir=data, run_dir=tmp_path / "run", cases=8, python_bin=python)
    assert run.status == "FINISHED:COMPLETED"
    _complete(run.result_dir)
    # The sites ran fedseg from the job's own app/custom folder.
    # The job's own log sits under site-1/<job id>/, next to the client process's log.
    site_log = "\n".join(p.read_text() for p in (tmp_path / "run" / "deployment").rglob("log.txt")
                         if "site-1" in p.parts)
    assert "/app_site-1/custom/fedseg" in site_log
    assert (tmp_path / "run" / "report.md").is_file() and (tmp_path / "run" / "training_loss.png").is_file()


def test_a_killed_server_loses_at_most_one_round_and_the_job_resumes_with_its_schedule(data, tmp_path):
    """SIGKILL the server's processes mid-job; NVFlare restarts the server but not the job; `fedseg poc --resume`."""
    import signal
    import threading
    import time

    from fedseg.flare.jobs import saved_round
    from fedseg.flare.poc import ServerLost, resume_poc
    from fedseg.tasks import get_task

    job = JobSpec("spleen", num_rounds=6, local_epochs=1, heartbeat_timeout=30, straggler_grace=10,
                  round_timeout=300)
    killed = {}

    def kill_server_in_round_3(poc, job_id):
        def watch():
            log = poc.kit("server") / job_id / "log.txt"
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and "Round 3 started" not in (log.read_text() if log.is_file() else ""):
                time.sleep(0.5)
            victims = poc.server_processes()  # recorded by this deployment, in its own server kit
            killed["pids"] = [p.pid for p in victims if "python" in " ".join(p.cmdline())]
            for proc in victims:
                if proc.pid in killed["pids"]:
                    proc.send_signal(signal.SIGKILL)
        threading.Thread(target=watch, daemon=True).start()

    run_dir = tmp_path / "run"
    job_dir = export_job(job, tmp_path / "jobs")
    with pytest.raises(ServerLost, match="fedseg poc --resume"):
        run_poc(job, job_dir, n_sites=2, data_dir=data, run_dir=run_dir, cases=8, on_submitted=kill_server_in_round_3,
                timeout=900)
    assert killed.get("pids"), "the server was never killed"
    lost_job = json.loads((run_dir / "run.json").read_text())["job_id"]
    saved = run_dir / "deployment" / "poc" / "example_project" / "prod_00" / "server" / lost_job / "app_server"
    last = saved_round(saved / "FL_global_model.pt")
    assert last >= 2  # the kill came in round 3: at most that round's work is lost

    run = resume_poc(run_dir, timeout=900)
    assert run.status == "FINISHED:COMPLETED" and run.results.finished
    rounds = [r["round"] for r in run.results.rounds]
    n = job.num_rounds
    assert rounds == list(range(last + 1, n)), rounds
    # The learning-rate schedule goes on where it was: the first resumed round r of n trains at the cosine
    # schedule's rates between r/n and (r+1)/n of the run (a restarted schedule would be back near the top).
    spec = get_task("spleen", "tiny")
    first = run.results.rounds[0]
    reported = {m["name"]: m["value"] for m in first["aggregated_metrics"]}["learning_rate"]
    r = last + 1
    assert spec.lr_at((r + 1) / n) * 0.999 <= reported <= spec.lr_at(r / n) * 1.001, (reported, r)
    assert reported < 0.9 * spec.lr_at(0.0)
