"""Job folders are generated from one place; regenerating them must change nothing."""

import filecmp
import importlib
import json

import pytest

from conftest import REPO
from fedseg.flare.client import parse_args
from fedseg.flare.jobs import ALGORITHMS, COMMITTED, JobSpec, export_all, export_job


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def test_committed_jobs_match_the_generator(tmp_path):
    export_all(tmp_path)
    committed = REPO / "jobs"
    for job in COMMITTED:
        fresh, old = tmp_path / job.name, committed / job.name
        assert _files(fresh) == _files(old), f"{job.name}: files differ; run `fedseg jobs export`"
        for rel in _files(fresh):
            assert filecmp.cmp(fresh / rel, old / rel, shallow=False), f"{job.name}/{rel} drifted"
    assert sorted(p.name for p in committed.iterdir() if p.is_dir()) == sorted(j.name for j in COMMITTED)


def test_jobs_name_the_task_not_the_network_nor_paths():
    for job in COMMITTED:
        root = REPO / "jobs" / job.name
        server = json.loads((root / "app/config/config_fed_server.json").read_text())
        client = (root / "app/config/config_fed_client.json").read_text()
        components = {c["id"]: c for c in server["components"]}
        model = components["persistor"]["args"]["model"]
        if isinstance(model, str):  # FedOpt names a separate "model" component
            model = {k: components[model][k] for k in ("path", "args")}
        assert model == {"path": "fedseg.networks.TaskNetwork", "args": {"task": job.task, "variant": job.variant}}
        text = json.dumps(server) + client
        assert "channels" not in text and "/work/" not in text and "/tmp/" not in text
        # The job stays thin: no code at all, the sites run the fedseg they installed.
        assert not (root / "app" / "custom").exists()
        executor = json.loads(client)["executors"][0]["executor"]
        assert executor["path"] == "fedseg.flare.executor.InstalledClientExecutor"
        args = executor["args"]["task_script_args"]
        parsed = parse_args(args.split())
        assert parsed.task == job.task and parsed.local_epochs == job.local_epochs


def test_best_model_is_selected_by_validation_dice():
    server = json.loads((REPO / "jobs/spleen_fedavg/app/config/config_fed_server.json").read_text())
    selector = next(c for c in server["components"] if c["path"].endswith("IntimeModelSelector"))
    assert selector["args"]["key_metric"] == "val_dice"
    workflows = [w["path"].rsplit(".", 1)[-1] for w in server["workflows"]]
    assert workflows == ["ConsortiumFedAvg", "ConsortiumCrossSiteEval"]


def test_every_site_trains_and_failures_are_tolerated_down_to_the_minimum():
    server = json.loads((REPO / "jobs/spleen_fedavg/app/config/config_fed_server.json").read_text())
    controller = server["workflows"][0]["args"]
    assert controller["num_clients"] == 0 and controller["min_clients"] == 2 and controller["ignore_result_error"]
    guard = server["task_result_filters"][0]
    assert guard["tasks"] == ["train"] and guard["filters"][0]["path"] == "fedseg.flare.guard.UpdateGuard"
    assert json.loads((REPO / "jobs/spleen_fedavg/meta.json").read_text())["min_clients"] == 2


def _server_and_client(job_dir):
    return (json.loads((job_dir / "app/config/config_fed_server.json").read_text()),
            json.loads((job_dir / "app/config/config_fed_client.json").read_text()))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_has_the_same_deadlines_heartbeats_and_bounded_cross_site_evaluation(tmp_path, algorithm):
    from fedseg.flare.jobs import DEADLINES, job_for

    job = job_for("spleen", algorithm).with_overrides(round_timeout=300, straggler_grace=20, heartbeat_timeout=30)
    server, client = _server_and_client(export_job(job, tmp_path))
    controller, cse = server["workflows"]
    module, _, cls = controller["path"].rpartition(".")
    from fedseg.flare.controller import ConsortiumRounds

    assert issubclass(getattr(importlib.import_module(module), cls), ConsortiumRounds)  # fedseg's round rules
    assert (controller["args"]["round_timeout"], controller["args"]["straggler_grace"]) == (300, 20)
    assert cse["path"] == "fedseg.flare.cross_site.ConsortiumCrossSiteEval"
    assert cse["args"]["submit_model_timeout"] == 300 and cse["args"]["validation_timeout"] == 300
    liveness = next(c for c in server["components"] if c["id"] == "fedseg_liveness")
    assert liveness["path"] == "fedseg.flare.liveness.SiteLiveness" and liveness["args"]["heartbeat_timeout"] == 30
    assert any(c["path"] == "fedseg.flare.liveness.SiteHeartbeat" for c in client["components"])
    # The defaults come from the variant.
    default, _ = _server_and_client(export_job(job_for("spleen", algorithm), tmp_path / "default"))
    assert default["workflows"][0]["args"]["round_timeout"] == DEADLINES["tiny"].round


def test_fedprox_and_fedopt_jobs_use_nvflares_own_controllers(tmp_path):
    from fedseg.flare.jobs import job_for, resumed

    prox, _ = _server_and_client(export_job(job_for("spleen", "fedprox"), tmp_path))
    assert prox["workflows"][0]["path"].endswith("ConsortiumFedAvg") and prox["workflows"][0]["args"]["fedprox_mu"] == 0.01
    opt, client = _server_and_client(export_job(job_for("spleen", "fedopt"), tmp_path))
    controller = opt["workflows"][0]
    # NVFlare's ModelController FedOpt (not FedOptRecipe's ScatterAndGather), so it shares the round rules.
    assert controller["path"] == "fedseg.algorithms.fedopt.ConsortiumFedOpt"
    assert controller["args"]["optimizer_args"]["args"] == {"lr": 1.0, "momentum": 0.6}
    assert controller["args"]["source_model"]["args"] == {"task": "spleen", "variant": "tiny", "norm": "batch"}
    assert "DIFF" in json.dumps(client)
    assert {c["id"]: c for c in opt["components"]}["model_selector"]["args"]["key_metric"] == "val_dice"
    # FedOpt resumes like the others now.
    job = JobSpec("spleen", algorithm="fedopt", initial_model="/srv/m.pt", start_round=3, num_rounds=2)
    resumed_server, _ = _server_and_client(export_job(job, tmp_path / "resumed"))
    assert resumed_server["workflows"][0]["args"]["start_round"] == 3
    assert resumed is not None


def test_deadlines_are_validated():
    with pytest.raises(ValueError, match="round_timeout"):
        JobSpec("spleen", round_timeout=0)
    with pytest.raises(ValueError, match="straggler_grace"):
        JobSpec("spleen", straggler_grace=-1)


def _zip_job(job_dir) -> bytes:
    """The job folder as the admin client uploads it: a zip with directory entries."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(job_dir.rglob("*")):
            rel = f"{job_dir.name}/{path.relative_to(job_dir).as_posix()}"
            if path.is_dir():
                zf.writestr(rel + "/", b"")
            else:
                zf.write(path, rel)
        zf.writestr(f"{job_dir.name}/", b"")
    return buf.getvalue()


def test_thin_jobs_are_not_byoc_and_bundled_ones_are(tmp_path):
    """NVFlare's own job validator: a site needs no BYOC right to run a committed job."""
    from nvflare.private.fed.server.job_meta_validator import JobMetaValidator

    for job in COMMITTED:
        valid, error, meta = JobMetaValidator().validate(job.name, _zip_job(REPO / "jobs" / job.name))
        assert valid, error
        assert not meta.get("byoc"), f"{job.name} would need the BYOC right"  # the key is absent when False
    bundled = export_job(JobSpec("spleen", num_rounds=2), tmp_path, bundle_code=True)
    valid, error, meta = JobMetaValidator().validate(bundled.name, _zip_job(bundled))
    assert valid, error
    assert meta.get("byoc") is True


def test_the_installed_client_executor_runs_the_sites_own_fedseg():
    import fedseg.flare.client
    from fedseg.flare.executor import InstalledClientExecutor

    executor = InstalledClientExecutor("--task spleen")
    assert executor._build_backend_context().task_script_path == fedseg.flare.client.__file__


def test_the_installed_client_executor_polls_its_trainer_often():
    """NVFlare 2.9's in-process executor and trainer look for each other's message every 0.5 s, a wait each
    site paid twice a round; the installed executor shortens it (and fails here if NVFlare renames it)."""
    from nvflare.app_common.executors.client_api import in_process_backend

    from fedseg.flare.executor import RESULT_POLL_INTERVAL_S, InstalledClientExecutor

    InstalledClientExecutor("--task spleen")
    assert in_process_backend._RESULT_POLL_INTERVAL == RESULT_POLL_INTERVAL_S < 0.5
