"""A local NVFlare POC deployment, driven the way a consortium's admin drives a real one.

``nvflare poc prepare`` provisions a server, the sites and admin users on loopback; each site gets
its fedseg YAML in its own startup kit (``<kit>/local/fedseg_site.yaml``), the system is started
with ``nvflare poc start``, jobs go in with ``nvflare job submit`` or the FLARE API's
``Session.submit_job``, and results come back with ``nvflare job download``. Everything lives in
one scratch folder (``HOME`` and ``NVFLARE_POC_WORKSPACE`` point into it) and :meth:`stop` stops
every process the deployment started, also after a failure.

On a host without GPUs, each site's ``local/resources.json`` declares GPUs with NVFlare's
``GPUResourceManager(ignore_host=True)``, so jobs whose ``meta.json`` asks for GPUs are still
scheduled; training then runs on the CPU.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from fedseg.errors import FedsegError
from fedseg.flare.jobs import JobSpec
from fedseg.flare.results import JobResults
from fedseg.flare.simulate import nvflare_command
from fedseg.site_config import ENV_DIR, KIT_FILE, write_site_config

log = logging.getLogger("fedseg")
ADMIN = "admin@nvidia.com"
PROJECT = "example_project"


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

    def _nvflare(self, *args: str, timeout: float = 120) -> str:
        # `nvflare poc start` launches the services with the Python that runs the CLI itself.
        cmd = [str(self.python_bin / "python3"), "-m", "nvflare.cli"] if self.python_bin else nvflare_command()
        cmd += list(args)
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if proc.returncode != 0:
            raise FedsegError(f"`nvflare {' '.join(args)}` failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout + proc.stderr

    # Lifecycle ----------------------------------------------------------------------------------
    def prepare(self) -> None:
        (self.root / "home").mkdir(parents=True, exist_ok=True)
        self._nvflare("poc", "prepare", "-n", str(len(self.sites)), "--force")
        for site in self.sites:
            self._declare_gpus(site)

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
        self._nvflare("poc", "start", timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:  # the server takes a few seconds to accept admin connections
            try:
                self._nvflare("job", "list", timeout=60)
                return
            except (FedsegError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    raise FedsegError(f"POC server did not come up within {timeout:.0f} s; see {self.root}") from None
                time.sleep(3)

    def stop(self) -> None:
        """Stop the system, then end any process still running from this deployment's folder."""
        if self.started:
            try:
                self._nvflare("poc", "stop", timeout=120)
            except (FedsegError, subprocess.TimeoutExpired) as exc:
                log.warning("nvflare poc stop failed (%s); killing the POC processes", exc)
        self.started = False
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.processes()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if pids:
                time.sleep(3)

    def processes(self) -> list[int]:
        """Processes whose command line mentions this deployment's workspace."""
        marker, found = str(self.workspace).encode(), []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if marker in (entry / "cmdline").read_bytes():
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

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

    def wait(self, job_id: str, timeout: float = 1800) -> str:
        """Wait for the job to end; return its final status (e.g. ``FINISHED:COMPLETED``)."""
        self._nvflare("job", "wait", job_id, "--timeout", str(int(timeout)), timeout=timeout + 60)
        meta = self._nvflare("job", "meta", job_id)
        match = re.search(r"(FINISHED:[A-Z_]+|FAILED|ABORTED)", meta)
        return match.group(1) if match else meta.strip()

    def download(self, job_id: str, out: Path) -> Path:
        self._nvflare("job", "download", job_id, "-o", str(out), "--force")
        target = Path(out) / job_id
        return target if target.exists() else Path(out)


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
            seed: int = 0, python_bin: Path | None = None, via: str = "cli", timeout: float = 1800) -> PocRun:
    """Provision, start, give every site its YAML, submit ``job_dir``, wait, download, report, stop."""
    from fedseg.data.msd import read_dataset_info
    from fedseg.flare.simulate import failed_sites, prepare_sites, record_results, summarize
    from fedseg.site_config import load_site_config

    start = time.perf_counter()
    task = job.task
    run_dir = Path(run_dir).resolve()
    config_dir = prepare_sites(task, data_dir, n_sites, run_dir, cases=cases, seed=seed)
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
        status = poc.wait(job_id, timeout)
        result_dir = poc.download(job_id, run_dir / "download")
    class_names = read_dataset_info(data_dir).foreground_labels
    results, models = summarize(result_dir, class_names)
    failed = failed_sites(results, n_sites)
    wall = time.perf_counter() - start
    record_results(run_dir, job, n_sites, class_names, results, models, failed, wall_time_s=round(wall, 1),
                   job_dir=str(job_dir), job_id=job_id, status=status, submitted_via=via, result_dir=str(result_dir))
    return PocRun(status, job_id, results, models, failed, result_dir, wall)
