"""Job folders are generated from one place; regenerating them must change nothing."""

import filecmp
import json

import pytest

from conftest import REPO
from fedseg.flare.client import parse_args
from fedseg.flare.jobs import COMMITTED, JobSpec, export_all, export_job


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
        # The job stays thin: only the client stub is shipped.
        assert _files(root / "app" / "custom") == [__import__("pathlib").Path("fedseg_client.py")]
        args = json.loads(client)["executors"][0]["executor"]["args"]["task_script_args"]
        parsed = parse_args(args.split())
        assert parsed.task == job.task and parsed.local_epochs == job.local_epochs


def test_best_model_is_selected_by_validation_dice():
    server = json.loads((REPO / "jobs/spleen_fedavg/app/config/config_fed_server.json").read_text())
    selector = next(c for c in server["components"] if c["path"].endswith("IntimeModelSelector"))
    assert selector["args"]["key_metric"] == "val_dice"
    workflows = [w["path"].rsplit(".", 1)[-1] for w in server["workflows"]]
    assert workflows == ["ConsortiumFedAvg", "CrossSiteModelEval"]


def test_every_site_trains_and_failures_are_tolerated_down_to_the_minimum():
    server = json.loads((REPO / "jobs/spleen_fedavg/app/config/config_fed_server.json").read_text())
    controller = server["workflows"][0]["args"]
    assert controller["num_clients"] == 0 and controller["min_clients"] == 2 and controller["ignore_result_error"]
    guard = server["task_result_filters"][0]
    assert guard["tasks"] == ["train"] and guard["filters"][0]["path"] == "fedseg.flare.guard.UpdateGuard"
    assert json.loads((REPO / "jobs/spleen_fedavg/meta.json").read_text())["min_clients"] == 2


def test_fedprox_and_fedopt_jobs_use_nvflares_own_recipes(tmp_path):
    from fedseg import cli
    from fedseg.flare.jobs import ALGORITHMS, job_for

    assert cli.ALGORITHMS == ALGORITHMS
    prox = json.loads((export_job(job_for("spleen", "fedprox"), tmp_path) / "app/config/config_fed_server.json").read_text())
    controller = prox["workflows"][0]["args"]
    assert prox["workflows"][0]["path"].endswith("ConsortiumFedAvg") and controller["fedprox_mu"] == 0.01
    opt = json.loads((export_job(job_for("spleen", "fedopt"), tmp_path) / "app/config/config_fed_server.json").read_text())
    components = {c["id"]: c for c in opt["components"]}
    assert components["shareable_generator"]["path"].endswith("PTFedOptModelShareableGenerator")
    assert components["shareable_generator"]["args"]["optimizer_args"]["args"] == {"lr": 1.0, "momentum": 0.6}
    assert components["model_selector"]["args"]["key_metric"] == "val_dice"
    client = json.loads((tmp_path / "spleen_fedopt/app/config/config_fed_client.json").read_text())
    assert '"params_transfer_type": "DIFF"' in json.dumps(client) or "DIFF" in json.dumps(client)
    with pytest.raises(ValueError, match="fedavg and fedprox"):
        JobSpec("spleen", algorithm="fedopt", initial_model="/srv/m.pt", start_round=3)
