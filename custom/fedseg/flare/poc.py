"""A local NVFlare POC deployment, driven the way a consortium's admin drives a real one.

``nvflare poc prepare`` provisions a server, the sites and admin users on loopback; each site gets
its fedseg YAML in its own startup kit (``<kit>/local/fedseg_site.yaml``), the system is started
with ``nvflare poc start``, jobs go in with ``nvflare job submit`` or the FLARE API's
``Session.submit_job``, and results come back with ``nvflare job download``. Everything lives in
one scratch folder (``HOME`` and ``NVFLARE_POC_WORKSPACE`` point into it, and so do the server's
job store and snapshot store, which NVFlare's POC template puts in a shared ``/tmp/nvflare``) and
:meth:`stop` stops every process the deployment started, also after a failure: ``nvflare poc
start`` runs in a session of its own, and every process of that session and its descendants
(NVFlare starts job processes in sessions of their own) is recorded while the deployment runs.
Nothing is found by matching command lines, so a deployment never stops another run's processes.

On a host without GPUs, each site's ``local/resources.json`` declares GPUs with NVFlare's
``GPUResourceManager(ignore_host=True)``, so jobs whose ``meta.json`` asks for GPUs are still
scheduled; training then runs on the CPU.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fedseg.errors import FedsegError
from fedseg.flare.jobs import JobSpec
from fedseg.flare.results import JobResults
from fedseg.flare.simulate import nvflare_command
from fedseg.procs import ProcessTree
from fedseg.site_config import ENV_DIR, KIT_FILE, write_site_config

log = logging.getLogger("fedseg")
ADMIN = "admin@nvidia.com"
PROJECT = "example_project"
# PocDeployment.wait's answer when the server died under a running job (NVFlare restarts the
# server, not the job): resume it from its last global model with `fedseg poc --resume`.
SERVER_LOST = "SERVER_LOST"


class PocDeployment:
    """One POC system in ``root``; use as a context manager so that it is always stopped."""

    def __init__(self, root: Path, n_sites: int, *, python_bin: Path | None = None, gpus_per_site: int = 1,
                 gpu_mem_gib: int = 16):
        self.root = Path(root).resolve()
        self.sites = [f"site-{k}" for k in range(1, n_sites + 1)]
        self.workspace = self.root / "poc"
        self.python_bin = python_bin
        self.gpus_per_site, self.gpu_mem_gib = gpus_per_site, gpu_mem_gib
        self.started = False
        self.port: int | None = None  # the server's (sites and admin), chosen free by prepare()
        self._trees: list[ProcessTree] = []  # one per `nvflare poc start`: its session, recorded

    # Environment and commands -------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """Scratch HOME and POC workspace; ``python_bin`` also first on PATH for the kits' scripts."""
        env = dict(os.environ, HOME=str(self.root / "home"), NVFLARE_POC_WORKSPACE=str(self.workspace),
                   PYTHONUNBUFFERED="1")
        env.pop(ENV_DIR, None)  # sites must find their YAML in their own kit, as in a real deployment
        if self.python_bin is not None:
            env["PATH"] = f"{self.python_bin}{os.pathsep}{env.get('PATH', '')}"
        return env

    def kit(self, participant: str) -> Path:
        return self.workspace / PROJECT / "prod_00" / participant

    def _nvflare_cmd(self, *args: str) -> list[str]:
        # `nvflare poc start` launches the services with the Python that runs the CLI itself.
        cmd = [str(self.python_bin / "python3"), "-m", "nvflare.cli"] if self.python_bin else nvflare_command()
        return cmd + list(args)

    def _nvflare(self, *args: str, timeout: float = 120) -> str:
        proc = subprocess.run(self._nvflare_cmd(*args), env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=self.root)
        if proc.returncode != 0:
            raise FedsegError(f"`nvflare {' '.join(args)}` failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout + proc.stderr

    def _start_services(self, *args: str, timeout: float) -> None:
        """``nvflare poc start ARGS`` in a session of its own, whose processes are recorded from now on."""
        proc = subprocess.Popen(self._nvflare_cmd("poc", "start", *args), env=self.env, cwd=self.root, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self._trees.append(ProcessTree(proc.pid, session=True))
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise FedsegError(f"`nvflare poc start {' '.join(args)}` did not return within {timeout:.0f} s") from None
        self.observe()
        if proc.returncode != 0:
            raise FedsegError(f"`nvflare poc start {' '.join(args)}` failed ({proc.returncode}):\n{out}")

    # Lifecycle ----------------------------------------------------------------------------------
    def prepare(self) -> None:
        (self.root / "home").mkdir(parents=True, exist_ok=True)
        self._nvflare("poc", "prepare", "-n", str(len(self.sites)), "--force")
        self._own_port()
        self._private_server_storage()
        for site in self.sites:
            self._declare_gpus(site)
        self._site_policies()

    def _own_port(self) -> None:
        """Provision again on a free port: NVFlare's POC default, 8002 for both the sites and the admin, is
        the same for every POC on the machine, so a second one would fail to start or reach the first's server."""
        import yaml
        from nvflare.fuel.utils.network_utils import get_open_ports

        # `poc prepare -i` refuses a project file inside the workspace it replaces.
        project = self.root / "project.yml"
        config = yaml.safe_load((self.workspace / "project.yml").read_text())
        [server] = [p for p in config["participants"] if p.get("type") == "server"]
        server["fed_learn_port"] = self.port = get_open_ports(1)[0]
        project.write_text(yaml.safe_dump(config, sort_keys=False))
        self._nvflare("poc", "prepare", "-i", str(project), "--force")

    def _site_policies(self) -> None:
        """What a careful consortium sets: fedseg's classes allowed (so thin jobs need no BYOC right), and
        no log streaming from the sites (a site's log never travels to the server)."""
        from fedseg.flare.allow_list import allow_classes, committed_job_classes

        classes = committed_job_classes()
        for participant in ["server", *self.sites]:
            path = allow_classes(self.kit(participant) / "local", classes)
            if participant != "server":
                resources = json.loads(path.read_text())
                resources["allow_log_streaming"] = False
                path.write_text(json.dumps(resources, indent=2))

    def _private_server_storage(self) -> None:
        """Keep the server's job store and snapshots in this deployment (NVFlare's POC default is /tmp/nvflare)."""
        local = self.kit("server") / "local"
        resources = json.loads((local / "resources.json.default").read_text())
        for component in resources.get("components", []):
            if component.get("id") == "job_manager":
                component["args"]["uri_root"] = str(self.root / "jobs-storage")
        snapshot = resources.get("snapshot_persistor", {}).get("args", {}).get("storage", {}).get("args")
        if snapshot is not None:
            snapshot["root_dir"] = str(self.root / "snapshot-storage")
        (local / "resources.json").write_text(json.dumps(resources, indent=2))

    def forbid_byoc(self) -> None:
        """An authorization policy under which nobody may submit jobs that bring their own code.

        The project admin keeps every other right; thin fedseg jobs still run (their classes are
        allowed, see :meth:`prepare`), jobs exported with ``--bundle-code`` are refused.
        """
        rights = {right: "any" for right in ("submit_job", "clone_job", "manage_job", "download_job", "view",
                                              "operate", "shell_commands")}
        policy = {"format_version": "1.0", "permissions": {"project_admin": {**rights, "byoc": "none"},
                                                            "org_admin": {**rights, "byoc": "none"},
                                                            "lead": {**rights, "byoc": "none"},
                                                            "member": {"view": "any"}}}
        for participant in ["server", *self.sites]:
            (self.kit(participant) / "local" / "authorization.json").write_text(json.dumps(policy, indent=2))

    def _declare_gpus(self, site: str) -> None:
        """On a host without GPUs, let the site offer GPUs for scheduling and hand out none (POC only)."""
        from nvflare.fuel.utils.gpu_utils import get_host_gpu_ids

        if get_host_gpu_ids():
            return  # real GPUs: NVFlare's defaults manage them
        local = self.kit(site) / "local"
        resources = json.loads((local / "resources.json.default").read_text())
        for component in resources.get("components", []):
            if component.get("id") == "resource_manager":
                component["args"].update(num_of_gpus=self.gpus_per_site, mem_per_gpu_in_GiB=self.gpu_mem_gib,
                                         ignore_host=True)
            elif component.get("id") == "resource_consumer":
                component["path"] = "nvflare.app_common.resource_consumers.passthrough_resource_consumer." \
                                    "PassthroughResourceConsumer"
        (local / "resources.json").write_text(json.dumps(resources, indent=2))

    def place_site_config(self, site: str, datasets: dict[str, tuple[Path, Path]], **settings) -> Path:
        """Write the site's fedseg YAML into its own startup kit, where its client looks first."""
        return write_site_config(self.kit(site) / KIT_FILE, site, datasets, **settings)

    def start(self, timeout: float = 180) -> None:
        self.started = True
        self._start_services(timeout=timeout)
        self._wait_for_server(timeout)

    def _wait_for_server(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:  # the server takes a few seconds to accept admin connections
            try:
                self._nvflare("job", "list", timeout=60)
                self.observe()
                return
            except (FedsegError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    raise FedsegError(f"POC server did not come up within {timeout:.0f} s; see {self.root}") from None
                time.sleep(3)

    def observe(self) -> None:
        """Record the processes started so far (call it now and then: job processes come and go)."""
        for tree in self._trees:
            tree.observe()

    def server_processes(self) -> list:
        """The server's own processes (its parent and its job processes) among those this deployment started."""
        self.observe()
        marker = str(self.kit("server"))
        return [p for tree in self._trees for p in tree.alive() if any(marker in part for part in _cmdline(p))]

    def restart_server(self, timeout: float = 180) -> None:
        """Start the server again (``nvflare poc start -p server``) after it died; the sites reconnect."""
        self._start_services("-p", "server", timeout=timeout)
        self._wait_for_server(timeout)

    def stop(self) -> None:
        """Stop the system, then every process this deployment started that is still running."""
        if self.started:
            try:
                self._nvflare("poc", "stop", timeout=120)
            except (FedsegError, subprocess.TimeoutExpired) as exc:
                log.warning("nvflare poc stop failed (%s); stopping the POC processes", exc)
        self.started = False
        for tree in self._trees:
            tree.stop(grace=5.0)

    def processes(self) -> list[int]:
        """Process ids of everything this deployment started that is still running."""
        self.observe()
        return sorted({p.pid for tree in self._trees for p in tree.alive()})

    def __enter__(self) -> "PocDeployment":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # Jobs ---------------------------------------------------------------------------------------
    def submit(self, job_dir: Path) -> str:
        """Submit with the admin command line (``nvflare job submit``); return the job id."""
        out = self._nvflare("job", "submit", "-j", str(job_dir))
        match = re.search(r"job_id:\s*(\S+)", out)
        if not match:
            raise FedsegError(f"no job id in the output of nvflare job submit:\n{out}")
        return match.group(1)

    def submit_api(self, job_dir: Path) -> str:
        """Submit through the FLARE API (``Session.submit_job``) as the project admin."""
        from nvflare.fuel.flare_api.flare_api import new_secure_session

        session = new_secure_session(ADMIN, str(self.kit(ADMIN)), timeout=60)
        try:
            return session.submit_job(str(job_dir))
        finally:
            session.close()

    def job_status(self, job_id: str) -> str:
        meta = self._nvflare("job", "meta", job_id, timeout=60)
        match = re.search(r"(FINISHED:[A-Z_]+|FAILED|ABORTED|RUNNING|SUBMITTED|DISPATCHED)", meta)
        return match.group(1) if match else meta.strip()

    def wait(self, job_id: str, timeout: float = 1800, lost_after: float = 20, start_grace: float = 60) -> str:
        """Wait for the job to end; return its final status (e.g. ``FINISHED:COMPLETED``).

        Returns :data:`SERVER_LOST` when the server's process for this job is gone while NVFlare
        still lists the job as running (a killed or crashed server: NVFlare restarts the server but
        not the job): ``lost_after`` seconds after it was last seen, or ``start_grace`` seconds if it
        was never seen (a job process takes a while to start). Raises after ``timeout`` seconds.
        """
        deadline, gone_since, seen = time.monotonic() + timeout, None, False
        while time.monotonic() < deadline:
            try:
                status = self.job_status(job_id)
            except (FedsegError, subprocess.TimeoutExpired):
                status = "UNREACHABLE"  # the server is down or restarting
            if status.startswith(("FINISHED", "FAILED", "ABORTED")):
                return status
            running = self.job_process(job_id) is not None
            seen = seen or running
            if status in ("RUNNING", "UNREACHABLE") and not running:
                gone_since = gone_since or time.monotonic()
                # A job that ends normally is marked finished within a few seconds of its process exiting.
                if time.monotonic() - gone_since > (lost_after if seen else start_grace):
                    return SERVER_LOST
            else:
                gone_since = None
            time.sleep(3)
        raise FedsegError(f"job {job_id} did not end within {timeout:.0f} s; see {self.kit('server')}")

    def job_process(self, job_id: str):
        """The server's process running ``job_id``, among those this deployment started (None if gone)."""
        return next((p for p in self.server_processes() if job_id in _cmdline(p)), None)

    def saved_global_model(self, job_id: str) -> Path:
        """The last global model the server saved for ``job_id`` (in its own workspace)."""
        return self.kit("server") / job_id / "app_server" / "FL_global_model.pt"

    def abort(self, job_id: str) -> None:
        self._nvflare("job", "abort", job_id, "--force", timeout=120)

    def download(self, job_id: str, out: Path) -> Path:
        self._nvflare("job", "download", job_id, "-o", str(out), "--force")
        target = Path(out) / job_id
        return target if target.exists() else Path(out)


def _cmdline(proc) -> list[str]:
    try:
        return proc.cmdline()
    except Exception:  # gone, or a zombie
        return []


@dataclass
class PocRun:
    status: str
    job_id: str
    results: JobResults
    models: dict
    failed_sites: list[str]
    result_dir: Path
    wall_time_s: float


def run_poc(job: JobSpec, job_dir: Path, *, n_sites: int, data_dir: Path, run_dir: Path, cases: int = 30,
            seed: int = 0, python_bin: Path | None = None, via: str = "cli", timeout: float = 1800,
            on_submitted=None) -> PocRun:
    """Provision, start, give every site its YAML, submit ``job_dir``, wait, download, report, stop.

    When the server dies under the job, the run ends with status :data:`SERVER_LOST`; the
    deployment folder and ``run.json`` stay, and :func:`resume_poc` continues the job.
    """
    from fedseg.flare.simulate import prepare_sites
    from fedseg.site_config import load_site_config

    start = time.perf_counter()
    task = job.task
    run_dir = Path(run_dir).resolve()
    config_dir = prepare_sites(task, data_dir, n_sites, run_dir, cases=cases, seed=seed)
    (run_dir / "run.json").write_text(json.dumps({"job": asdict(job), "sites": n_sites, "data": str(Path(data_dir).resolve()),
                                                  "job_dir": str(job_dir), "python_bin": str(python_bin or "")}, indent=2))
    with PocDeployment(run_dir / "deployment", n_sites, python_bin=python_bin) as poc:
        poc.prepare()
        for site in poc.sites:
            cfg = load_site_config(config_dir / f"{site}.yaml")
            data = cfg.task_data(task)
            poc.place_site_config(site, {task: (data.data_root, data.datalist)}, device=cfg.device,
                                  num_threads=cfg.num_threads, cache_rate=cfg.cache_rate, num_workers=cfg.num_workers)
        poc.start()
        job_id = poc.submit(job_dir) if via == "cli" else poc.submit_api(job_dir)
        log.info("submitted %s as job %s (%s)", job_dir, job_id, via)
        if on_submitted is not None:  # a hook for tests that hurt the running system
            on_submitted(poc, job_id)
        return _finish(poc, job, job_dir, job_id, via=via, n_sites=n_sites, data_dir=Path(data_dir), run_dir=run_dir,
                       start=start, timeout=timeout)


def resume_poc(run_dir: Path, *, timeout: float = 1800) -> PocRun:
    """Continue a POC job whose server died, from the last global model the server saved.

    Starts the run's deployment again (the server too, if it is down), aborts the job NVFlare
    still lists as running, exports the rest of the job starting at the round after the saved one
    (the learning-rate schedule continues where it was) and runs it to the end.
    """
    from fedseg.flare.jobs import export_job, resumed

    start = time.perf_counter()
    run_dir = Path(run_dir).resolve()
    record = run_dir / "run.json"
    if not record.is_file():
        raise FedsegError(f"{run_dir}: not a fedseg poc run folder (no run.json)")
    info = json.loads(record.read_text())
    job, lost_job = JobSpec(**{**info["job"], "site_gpus": tuple(map(tuple, info["job"]["site_gpus"]))}), info.get("job_id")
    if not lost_job:
        raise FedsegError(f"{run_dir}: run.json names no submitted job to resume")
    python_bin = Path(info["python_bin"]) if info.get("python_bin") else None
    with PocDeployment(run_dir / "deployment", info["sites"], python_bin=python_bin) as poc:
        poc.start()
        saved = poc.saved_global_model(lost_job)
        if not saved.is_file():
            raise FedsegError(f"{saved}: job {lost_job} saved no global model, so there is nothing to resume from")
        kept = run_dir / f"resume_from_{lost_job}.pt"
        kept.write_bytes(saved.read_bytes())
        try:
            poc.abort(lost_job)
        except FedsegError as exc:  # already ended in NVFlare's books
            log.info("job %s could not be aborted (%s)", lost_job, str(exc).splitlines()[0])
        rest = resumed(job, kept)
        job_dir = export_job(rest, run_dir / "job_resumed", bundle_code=bool(python_bin))
        job_id = poc.submit(job_dir)
        log.info("resumed job %s as job %s at round %d", lost_job, job_id, rest.start_round)
        return _finish(poc, rest, job_dir, job_id, via="cli", n_sites=info["sites"], data_dir=Path(info["data"]),
                       run_dir=run_dir, start=start, timeout=timeout)


def _finish(poc: PocDeployment, job: JobSpec, job_dir: Path, job_id: str, *, via: str, n_sites: int, data_dir: Path,
            run_dir: Path, start: float, timeout: float) -> PocRun:
    """Wait for the job, download and record its results (or record that the server was lost)."""
    from fedseg.data.msd import read_dataset_info
    from fedseg.flare.simulate import failed_sites, record_results, summarize

    record = run_dir / "run.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "job_id": job_id}, indent=2))
    status = poc.wait(job_id, timeout)
    if status == SERVER_LOST:
        saved = poc.saved_global_model(job_id)
        raise ServerLost(f"the NVFlare server stopped while running job {job_id}; the last global model it saved is "
                         f"{saved if saved.is_file() else 'none'}. Continue with: fedseg poc --resume {run_dir}")
    result_dir = poc.download(job_id, run_dir / "download")
    class_names = read_dataset_info(data_dir).foreground_labels
    results, models = summarize(result_dir, class_names)
    failed = failed_sites(results, n_sites)
    wall = time.perf_counter() - start
    record_results(run_dir, job, n_sites, class_names, results, models, failed, wall_time_s=round(wall, 1),
                   job_dir=str(job_dir), job_id=job_id, status=status, submitted_via=via, result_dir=str(result_dir))
    return PocRun(status, job_id, results, models, failed, result_dir, wall)


class ServerLost(FedsegError):
    """The server died under a running job; the message says how to resume it."""
